package portmap

import (
	"bufio"
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/huin/goupnp"
	"github.com/huin/goupnp/dcps/internetgateway2"
	"github.com/huin/goupnp/soap"
)

// UPnP IGD through goupnp's generated clients. goupnp's own discovery and
// fetches use net/http's default client and sockets of their own; here
// SSDP is ours over the transport.Net, and every HTTP request goes through
// an http.Client that dials through the Net, only to the gateway's subnet,
// with size and time limits: an SSDP answer is anyone's on the LAN.

const (
	ssdpGroup = "239.255.255.250"
	// upnpProto must be upper case: some routers refuse "udp".
	upnpProto = "UDP"
	// upnpTries bounds the attempts around 718 ConflictInMappingEntry.
	upnpTries = 5
)

// UPnP error codes routers answer with (WANIPConnection v2, section 2.5).
const (
	upnpInvalidArgs      = 402
	upnpConflict         = 718
	upnpOnlyPermanent    = 725
	upnpExternalWildcard = 716
)

var upnpErrorText = map[int]string{
	402: "Invalid Args",
	501: "Action Failed",
	606: "Action not authorized",
	714: "NoSuchEntryInArray",
	715: "WildCardNotPermittedInSrcIP",
	716: "WildCardNotPermittedInExtPort",
	718: "ConflictInMappingEntry",
	724: "SamePortValuesRequired",
	725: "OnlyPermanentLeasesSupported",
	727: "ExternalPortOnlySupportsWildcard",
	728: "NoPortMapsAvailable",
}

// igdService is what the three goupnp IGD clients have in common.
type igdService interface {
	AddPortMappingCtx(ctx context.Context, remoteHost string, externalPort uint16, protocol string,
		internalPort uint16, internalClient string, enabled bool, description string, leaseSeconds uint32) error
	DeletePortMappingCtx(ctx context.Context, remoteHost string, externalPort uint16, protocol string) error
	GetExternalIPAddressCtx(ctx context.Context) (string, error)
}

// igd is the IGD service chosen on the gateway.
type igd struct {
	svc      igdService
	name     string // "WANIPConnection:2"
	location string
	external netip.Addr // as reported when probed
}

// upnpCode returns the UPnP errorCode of a SOAP fault, or 0.
func upnpCode(err error) int {
	var f *soap.SOAPFaultError
	if errors.As(err, &f) {
		return f.Detail.UPnPError.Errorcode
	}
	return 0
}

// probeUPnP finds the gateway's IGD: SSDP, the description, a service.
func (c *Client) probeUPnP(ctx context.Context) (*igd, error) {
	loc, err := c.discover(ctx)
	if err != nil {
		return nil, err
	}
	return c.openIGD(ctx, loc)
}

// discover sends SSDP M-SEARCH to the multicast group and to the gateway
// itself, and returns the first trustworthy LOCATION: an http URL whose
// host is an address literal on the gateway's subnet, answered from that
// subnet. Answers from the gateway are preferred.
func (c *Client) discover(ctx context.Context) (*url.URL, error) {
	gw, local, subnet, err := c.route()
	if err != nil {
		return nil, err
	}
	conn, err := c.net.ListenPacket("udp4", net.JoinHostPort(local.String(), "0"))
	if err != nil {
		return nil, fmt.Errorf("SSDP socket: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()
	targets := []netip.AddrPort{
		netip.AddrPortFrom(gw, c.ssdpPort),
		netip.AddrPortFrom(netip.MustParseAddr(ssdpGroup), c.ssdpPort),
	}
	var sent bool
	for _, st := range []string{"urn:schemas-upnp-org:device:InternetGatewayDevice:2", "urn:schemas-upnp-org:device:InternetGatewayDevice:1"} {
		msg := "M-SEARCH * HTTP/1.1\r\nHOST: " + ssdpGroup + ":1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: " + st + "\r\n\r\n"
		for _, to := range targets {
			if _, err := conn.WriteTo([]byte(msg), net.UDPAddrFromAddrPort(to)); err == nil {
				sent = true
			}
		}
	}
	if !sent {
		return nil, fmt.Errorf("sending SSDP M-SEARCH towards %v failed", gw)
	}
	var fallback *url.URL
	var refused error
	buf := make([]byte, 2048) // SSDP answers are a few hundred bytes; more is cut
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if fallback != nil {
				return fallback, nil
			}
			if refused != nil {
				return nil, refused
			}
			return nil, fmt.Errorf("no SSDP answer from an IGD at %v: %w", gw, context.Cause(ctx))
		}
		src := from.(*net.UDPAddr).AddrPort()
		loc, err := parseSSDP(buf[:n])
		if err != nil {
			continue
		}
		if err := trustLocation(loc, subnet); err != nil || !subnet.Contains(src.Addr().Unmap()) {
			refused = fmt.Errorf("refusing SSDP LOCATION %q from %v: %v", loc, src, err)
			c.log.Warn("untrusted SSDP answer", "from", src, "location", loc.String(), "err", err)
			continue
		}
		if src.Addr().Unmap() == gw {
			return loc, nil
		}
		if fallback == nil {
			fallback = loc
		}
	}
}

// parseSSDP reads an SSDP answer ("HTTP/1.1 200 OK" and headers) and
// returns its LOCATION.
func parseSSDP(b []byte) (*url.URL, error) {
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(b)), nil)
	if err != nil {
		return nil, fmt.Errorf("SSDP answer: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("SSDP answer status %d", resp.StatusCode)
	}
	st := resp.Header.Get("ST")
	if !strings.Contains(st, "InternetGatewayDevice") && !strings.Contains(st, "WANIPConnection") &&
		!strings.Contains(st, "WANPPPConnection") && !strings.Contains(st, "WANConnectionDevice") {
		return nil, fmt.Errorf("SSDP answer for %q", st)
	}
	loc := resp.Header.Get("LOCATION")
	if loc == "" {
		return nil, errors.New("SSDP answer without LOCATION")
	}
	return url.Parse(loc)
}

// trustLocation accepts only http URLs to an address literal on subnet.
func trustLocation(u *url.URL, subnet netip.Prefix) error {
	if u.Scheme != "http" {
		return fmt.Errorf("scheme %q is not http", u.Scheme)
	}
	if u.User != nil {
		return errors.New("URL carries credentials")
	}
	host, port := u.Hostname(), u.Port()
	a, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("host %q is not an address", host)
	}
	if !subnet.Contains(a.Unmap()) {
		return fmt.Errorf("host %v is off the gateway's subnet %v", a, subnet)
	}
	if port == "" || port == "0" {
		return errors.New("no port")
	}
	return nil
}

// httpClient is the only way to the IGD over HTTP: it dials through the
// Net, only to addresses on subnet, follows no redirect, and caps time and
// size.
func (c *Client) httpClient(subnet netip.Prefix) *http.Client {
	dialer := c.net.CreateDialer(&net.Dialer{Timeout: c.cfg.RequestTimeout})
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil || !subnet.Contains(ap.Addr().Unmap()) {
				return nil, fmt.Errorf("refusing to dial %s: not on the gateway's subnet %v", addr, subnet)
			}
			type result struct {
				c   net.Conn
				err error
			}
			done := make(chan result, 1)
			go func() {
				conn, err := dialer.Dial("tcp4", addr)
				done <- result{conn, err}
			}()
			select {
			case r := <-done:
				return r.c, r.err
			case <-ctx.Done():
				go func() {
					if r := <-done; r.c != nil {
						r.c.Close()
					}
				}()
				return nil, ctx.Err()
			}
		},
		DisableKeepAlives:      true, // one request now and then: nothing to keep
		MaxResponseHeaderBytes: 16 << 10,
		ResponseHeaderTimeout:  c.cfg.RequestTimeout,
	}
	return &http.Client{
		Transport: &cappedTransport{rt: tr, subnet: subnet, max: c.cfg.MaxDescription},
		Timeout:   c.cfg.RequestTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("IGD redirects are not followed")
		},
	}
}

// cappedTransport refuses URLs off the subnet (a description may name any
// control URL) and cuts bodies at max bytes with an error.
type cappedTransport struct {
	rt     http.RoundTripper
	subnet netip.Prefix
	max    int64
}

func (t *cappedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := trustLocation(req.URL, t.subnet); err != nil {
		return nil, fmt.Errorf("refusing IGD URL %s: %w", req.URL, err)
	}
	resp, err := t.rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if resp.ContentLength > t.max {
		resp.Body.Close()
		return nil, fmt.Errorf("IGD answer of %d bytes from %s is over the %d-byte limit", resp.ContentLength, req.URL, t.max)
	}
	resp.Body = &cappedBody{rc: resp.Body, left: t.max, url: req.URL.String()}
	return resp, nil
}

type cappedBody struct {
	rc   io.ReadCloser
	left int64
	url  string
}

func (b *cappedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("IGD answer from %s is over the size limit", b.url)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	if b.left <= 0 && err == nil {
		// Exactly at the limit: one more byte would be too many.
		var one [1]byte
		if m, _ := b.rc.Read(one[:]); m > 0 {
			return n, fmt.Errorf("IGD answer from %s is over the size limit", b.url)
		}
	}
	return n, err
}

func (b *cappedBody) Close() error { return b.rc.Close() }

// openIGD fetches the description at loc and picks a service: IP
// connection v2, then v1, then PPP, preferring one that reports an
// external address.
func (c *Client) openIGD(ctx context.Context, loc *url.URL) (*igd, error) {
	_, _, subnet, err := c.route()
	if err != nil {
		return nil, err
	}
	hc := c.httpClient(subnet)
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching the IGD description %s: %w", loc, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching the IGD description %s: %s", loc, resp.Status)
	}
	root := new(goupnp.RootDevice)
	dec := xml.NewDecoder(resp.Body)
	dec.DefaultSpace = goupnp.DeviceXMLNamespace
	if err := dec.Decode(root); err != nil {
		return nil, fmt.Errorf("reading the IGD description %s: %w", loc, err)
	}
	base := loc
	if root.URLBaseStr != "" {
		if b, err := url.Parse(root.URLBaseStr); err == nil {
			base = b
		}
	}
	root.SetURLBase(base)

	var cands []*igd
	add := func(name string, svc igdService, sc *goupnp.ServiceClient) {
		sc.SOAPClient.HTTPClient = *hc
		cands = append(cands, &igd{svc: svc, name: name, location: loc.String()})
	}
	if cs, err := internetgateway2.NewWANIPConnection2ClientsFromRootDevice(root, loc); err == nil {
		for _, s := range cs {
			add("WANIPConnection:2", s, &s.ServiceClient)
		}
	}
	if cs, err := internetgateway2.NewWANIPConnection1ClientsFromRootDevice(root, loc); err == nil {
		for _, s := range cs {
			add("WANIPConnection:1", s, &s.ServiceClient)
		}
	}
	if cs, err := internetgateway2.NewWANPPPConnection1ClientsFromRootDevice(root, loc); err == nil {
		for _, s := range cs {
			add("WANPPPConnection:1", s, &s.ServiceClient)
		}
	}
	if len(cands) == 0 {
		return nil, fmt.Errorf("IGD at %s has no WANIPConnection or WANPPPConnection service", loc)
	}
	for _, cand := range cands {
		if ip, err := cand.svc.GetExternalIPAddressCtx(ctx); err == nil {
			if a, err := netip.ParseAddr(strings.TrimSpace(ip)); err == nil && !a.IsUnspecified() {
				cand.external = a
				return cand, nil
			}
		}
	}
	return cands[0], nil
}

// mapUPnP adds a mapping through the IGD, working around what real routers
// answer: 725 (only permanent leases: ask for lease 0 and re-add it
// periodically), 402 (some refuse a lease: likewise), 718 (the port is
// taken: another), and no external address (no mapping).
func (c *Client) mapUPnP(ctx context.Context, internal netip.AddrPort, external uint16, fresh bool) (Mapping, error) {
	gw, _, _, _ := c.route()
	fail := func(code int, reason string, err error) error {
		if reason == "" && code != 0 {
			reason = upnpErrorText[code]
		}
		return &NoMappingError{Protocol: UPnP, Gateway: gw, Code: code, Reason: reason, Err: err}
	}
	c.mu.Lock()
	dev := c.igd
	c.mu.Unlock()
	if dev == nil {
		found, err := c.probeUPnP(ctx)
		if err != nil {
			return nil, fail(0, "no IGD", err)
		}
		c.mu.Lock()
		c.igd, dev = found, found
		c.mu.Unlock()
	}
	rctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	ipText, err := dev.svc.GetExternalIPAddressCtx(rctx)
	cancel()
	if err != nil {
		return nil, fail(upnpCode(err), "asking the external address", err)
	}
	ip, _ := netip.ParseAddr(strings.TrimSpace(ipText))
	extIP, err := c.usableExternal(ctx, ip)
	if err != nil {
		return nil, fail(0, "", err)
	}

	lease := uint32(c.cfg.Lease / time.Second)
	port := external
	if port < 1024 {
		port = uint16(1024 + rand.IntN(65536-1024))
	}
	var lastErr error
	var lastCode int
	if v2, ok := dev.svc.(*internetgateway2.WANIPConnection2); ok && fresh {
		// IGD v2 picks a free port itself when ours is taken. Renewals
		// use AddPortMapping: same port, same client, an update.
		rctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
		got, err := v2.AddAnyPortMappingCtx(rctx, "", port, upnpProto, internal.Port(), internal.Addr().String(),
			true, c.cfg.Description, lease)
		cancel()
		if err == nil && got != 0 {
			return c.newUPnPMapping(dev, internal, extIP, got, lease), nil
		}
		// 725, 402 and the rest: the v1 way below handles them.
	}
	for range upnpTries {
		rctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
		err = dev.svc.AddPortMappingCtx(rctx, "", port, upnpProto, internal.Port(), internal.Addr().String(),
			true, c.cfg.Description, lease)
		cancel()
		if err == nil {
			break
		}
		lastErr, lastCode = err, upnpCode(err)
		switch lastCode {
		case upnpOnlyPermanent, upnpInvalidArgs:
			if lease != 0 {
				lease = 0
				continue
			}
		case upnpConflict, upnpExternalWildcard:
			port = uint16(1024 + rand.IntN(65536-1024))
			continue
		}
		break
	}
	if err != nil {
		return nil, fail(lastCode, "", lastErr)
	}
	return c.newUPnPMapping(dev, internal, extIP, port, lease), nil
}

func (c *Client) newUPnPMapping(dev *igd, internal netip.AddrPort, extIP netip.Addr, port uint16, lease uint32) *upnpMapping {
	now := c.clock.Now()
	m := &upnpMapping{c: c, dev: dev, internal: internal, external: netip.AddrPortFrom(extIP, port)}
	if lease == 0 {
		m.renewAfter = now.Add(c.cfg.PermanentRefresh)
	} else {
		life := time.Duration(lease) * time.Second
		m.goodUntil, m.renewAfter = now.Add(life), now.Add(life/2)
	}
	return m
}

type upnpMapping struct {
	c          *Client
	dev        *igd
	internal   netip.AddrPort
	external   netip.AddrPort
	goodUntil  time.Time // zero: permanent
	renewAfter time.Time
}

func (m *upnpMapping) Protocol() Protocol       { return UPnP }
func (m *upnpMapping) Internal() netip.AddrPort { return m.internal }
func (m *upnpMapping) External() netip.AddrPort { return m.external }
func (m *upnpMapping) GoodUntil() time.Time     { return m.goodUntil }
func (m *upnpMapping) RenewAfter() time.Time    { return m.renewAfter }

func (m *upnpMapping) Release(ctx context.Context) error {
	m.c.untrack(m)
	ctx, cancel := context.WithTimeout(ctx, m.c.cfg.RequestTimeout)
	defer cancel()
	if err := m.dev.svc.DeletePortMappingCtx(ctx, "", m.external.Port(), upnpProto); err != nil {
		return fmt.Errorf("releasing UPnP mapping %v -> %v: %w", m.external, m.internal, err)
	}
	return nil
}
