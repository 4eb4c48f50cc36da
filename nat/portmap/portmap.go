package portmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pion/transport/v5"

	"github.com/superpeer/superpeer/nat/clock"
)

// Protocol is a port-mapping protocol.
type Protocol string

// The protocols a gateway may speak.
const (
	UPnP Protocol = "upnp"
	PMP  Protocol = "pmp"
	PCP  Protocol = "pcp"
)

// Mapping is a port forwarded by the gateway: one implementation per
// protocol.
type Mapping interface {
	Protocol() Protocol
	// Internal is the LAN socket the gateway forwards to.
	Internal() netip.AddrPort
	// External is where the Internet reaches it.
	External() netip.AddrPort
	// GoodUntil is when the lease ends; zero for a permanent mapping.
	GoodUntil() time.Time
	// RenewAfter is when to renew: half the lease, or the refresh time of
	// a permanent mapping (re-added in case the router lost it).
	RenewAfter() time.Time
	// Release asks the gateway to remove the mapping.
	Release(ctx context.Context) error
}

// NoMappingError says the gateway gave no mapping; callers branch on it
// (errors.As) to try another protocol or fall back to keepalives.
type NoMappingError struct {
	Protocol Protocol
	Gateway  netip.Addr
	// Code is the protocol's result code: the UPnP errorCode (718, 725,
	// 402...), the NAT-PMP or PCP result code; zero when the gateway did
	// not answer with one.
	Code int
	// Reason says what went wrong, for people.
	Reason string
	Err    error
}

func (e *NoMappingError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "no port mapping via %s at %v", e.Protocol, e.Gateway)
	if e.Code != 0 {
		fmt.Fprintf(&b, ": %d", e.Code)
	} else if e.Reason != "" || e.Err != nil {
		b.WriteString(":")
	}
	if e.Reason != "" {
		b.WriteString(" " + e.Reason)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, " (%v)", e.Err)
	}
	return b.String()
}

func (e *NoMappingError) Unwrap() error { return e.Err }

// ErrNoGateway means no default gateway was found to ask.
var ErrNoGateway = errors.New("portmap: no default gateway")

// Config is the port mapper's one set of knobs.
type Config struct {
	// Net opens every socket: SSDP, HTTP to the IGD, NAT-PMP and PCP.
	Net transport.Net
	// Clock times leases, renewals and verifications. Nil: wall clock.
	Clock clock.Clock
	// Gateway is the router to ask. The zero value reads the default route
	// (Linux /proc/net/route).
	Gateway netip.Addr
	// Protocols are tried in this order. Empty means PCP, NAT-PMP, UPnP:
	// the two one-datagram protocols first.
	Protocols []Protocol
	// Lease is the lifetime asked for. RFC 6886 recommends two hours;
	// leases are renewed at half-life.
	Lease time.Duration
	// PermanentRefresh is how often a permanent mapping (a router that
	// answers 725 OnlyPermanentLeasesSupported) is added again, in case the
	// router lost it.
	PermanentRefresh time.Duration
	// Description labels UPnP mappings in the router's table.
	Description string
	// ProbeTimeout bounds the parallel probe of the three protocols. The
	// gateway is one hop away: it answers within milliseconds or not at
	// all.
	ProbeTimeout time.Duration
	// RequestTimeout bounds one request (a NAT-PMP or PCP exchange with
	// its retransmissions, one SOAP call, the IGD description fetch).
	RequestTimeout time.Duration
	// MaxDescription caps the size of an IGD description or SOAP answer;
	// a larger one is refused. Real ones are a few kilobytes.
	MaxDescription int64
	// VerifyInterval is how often a held mapping is verified end to end.
	VerifyInterval time.Duration
	// RetryInterval is the first wait before asking again after a failure;
	// it doubles up to VerifyInterval.
	RetryInterval time.Duration
	// ExternalAddr, if set, is asked for the site's public address when
	// the gateway reports none (0.0.0.0 or empty), typically by STUN.
	// Without it such a gateway gives no mapping.
	ExternalAddr func(ctx context.Context) (netip.Addr, error)
	// Logger receives one line per mapping made, lost or released.
	// Nil: slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the defaults; Net must still be set.
func DefaultConfig() Config {
	return Config{
		Protocols:        []Protocol{PCP, PMP, UPnP},
		Lease:            2 * time.Hour,
		PermanentRefresh: 20 * time.Minute,
		Description:      "superpeer",
		ProbeTimeout:     2 * time.Second,
		RequestTimeout:   2 * time.Second,
		MaxDescription:   64 << 10,
		VerifyInterval:   5 * time.Minute,
		RetryInterval:    30 * time.Second,
	}
}

// Validate rejects settings that cannot work.
func (c *Config) Validate() error {
	switch {
	case c.Net == nil:
		return errors.New("portmap: Config.Net is nil")
	case c.Lease < 2*time.Second || c.Lease > 7*24*time.Hour:
		return fmt.Errorf("portmap: Lease %v outside [2 s, 7 days]", c.Lease)
	case c.PermanentRefresh < time.Second:
		return fmt.Errorf("portmap: PermanentRefresh %v under 1 s", c.PermanentRefresh)
	case c.ProbeTimeout < 100*time.Millisecond || c.RequestTimeout < 100*time.Millisecond:
		return fmt.Errorf("portmap: ProbeTimeout %v or RequestTimeout %v under 100 ms", c.ProbeTimeout, c.RequestTimeout)
	case c.MaxDescription < 1024:
		return fmt.Errorf("portmap: MaxDescription %d under 1 KiB", c.MaxDescription)
	case c.VerifyInterval < time.Second || c.RetryInterval < 100*time.Millisecond:
		return fmt.Errorf("portmap: VerifyInterval %v or RetryInterval %v too short", c.VerifyInterval, c.RetryInterval)
	case len(c.Description) > 200:
		return errors.New("portmap: Description longer than 200 bytes")
	}
	for _, p := range c.Protocols {
		if p != UPnP && p != PMP && p != PCP {
			return fmt.Errorf("portmap: unknown protocol %q", p)
		}
	}
	return nil
}

// Availability is what the last probe found.
type Availability struct {
	UPnP bool `json:"upnp"`
	PMP  bool `json:"pmp"`
	PCP  bool `json:"pcp"`
	// UPnPService is the IGD service chosen ("WANIPConnection:2").
	UPnPService string `json:"upnp_service,omitempty"`
	// External is the gateway's external address, if it told one.
	External netip.Addr `json:"external"`
	Gateway  netip.Addr `json:"gateway"`
}

func (a Availability) has(p Protocol) bool {
	switch p {
	case UPnP:
		return a.UPnP
	case PMP:
		return a.PMP
	case PCP:
		return a.PCP
	}
	return false
}

// Client asks one gateway for port mappings and keeps the ones it holds.
type Client struct {
	cfg   Config
	net   transport.Net
	clock clock.Clock
	log   *slog.Logger

	// Where the gateway listens; tests move them off the well-known ports.
	ssdpPort uint16
	pmpPort  uint16

	mu       sync.Mutex // guards following
	gw       netip.Addr
	local    netip.Addr
	subnet   netip.Prefix
	probed   bool
	avail    Availability
	igd      *igd
	epochs   map[Protocol]*epoch
	live     map[Mapping]struct{}
	holds    map[*Held]struct{}
	closed   bool
	lastPoke map[Protocol]time.Time
}

// New checks cfg and returns a client; nothing is sent until Probe or Map.
func New(cfg Config) (*Client, error) {
	if len(cfg.Protocols) == 0 {
		cfg.Protocols = DefaultConfig().Protocols
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Client{
		cfg:      cfg,
		net:      cfg.Net,
		clock:    clock.OrReal(cfg.Clock),
		log:      log.With("component", "portmap"),
		ssdpPort: 1900,
		pmpPort:  5351,
		epochs:   map[Protocol]*epoch{PMP: {}, PCP: {}},
		live:     map[Mapping]struct{}{},
		holds:    map[*Held]struct{}{},
		lastPoke: map[Protocol]time.Time{},
	}, nil
}

// route finds the gateway, our address towards it and its subnet.
func (c *Client) route() (gw, local netip.Addr, subnet netip.Prefix, err error) {
	c.mu.Lock()
	gw, local, subnet = c.gw, c.local, c.subnet
	c.mu.Unlock()
	if local.IsValid() {
		return gw, local, subnet, nil
	}
	gw = c.cfg.Gateway
	if !gw.IsValid() {
		if gw, err = defaultGateway(); err != nil {
			return gw, local, subnet, err
		}
	}
	ifs, err := c.net.Interfaces()
	if err != nil {
		return gw, local, subnet, fmt.Errorf("portmap: listing interfaces: %w", err)
	}
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			ones, _ := ipn.Mask.Size()
			p := netip.PrefixFrom(ip, ones).Masked()
			if ip.Is4() == gw.Is4() && p.Contains(gw) {
				c.mu.Lock()
				c.gw, c.local, c.subnet = gw, ip, p
				c.mu.Unlock()
				return gw, ip, p, nil
			}
		}
	}
	return gw, local, subnet, fmt.Errorf("portmap: no interface on the subnet of gateway %v", gw)
}

// defaultGateway reads the IPv4 default route from /proc/net/route.
func defaultGateway() (netip.Addr, error) {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: %v", ErrNoGateway, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[1] != "00000000" {
			continue
		}
		v, err := strconv.ParseUint(fields[2], 16, 32)
		if err != nil || v == 0 {
			continue
		}
		// Little-endian on every architecture Linux prints it from.
		return netip.AddrFrom4([4]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}), nil
	}
	return netip.Addr{}, ErrNoGateway
}

// Probe asks the gateway, in parallel, which protocols it speaks.
func (c *Client) Probe(ctx context.Context) (Availability, error) {
	gw, local, _, err := c.route()
	if err != nil {
		return Availability{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ProbeTimeout)
	defer cancel()
	var wg sync.WaitGroup
	var pmpExt netip.Addr
	var pmpOK, pcpOK bool
	var found *igd
	var upnpErr error
	wg.Go(func() { pmpExt, pmpOK = c.probePMP(ctx) })
	wg.Go(func() { pcpOK = c.probePCP(ctx, local) })
	wg.Go(func() { found, upnpErr = c.probeUPnP(ctx) })
	wg.Wait()
	a := Availability{PMP: pmpOK, PCP: pcpOK, UPnP: found != nil, Gateway: gw}
	if pmpOK && pmpExt.IsValid() && !pmpExt.IsUnspecified() {
		a.External = pmpExt
	}
	if found != nil {
		a.UPnPService = found.name
		if !a.External.IsValid() && found.external.IsValid() {
			a.External = found.external
		}
	} else if upnpErr != nil {
		c.log.Debug("no UPnP IGD", "gateway", gw, "err", upnpErr)
	}
	c.mu.Lock()
	c.probed, c.avail = true, a
	if found != nil {
		c.igd = found
	}
	c.mu.Unlock()
	c.log.Info("gateway probed", "gateway", gw, "upnp", a.UPnP, "pmp", a.PMP, "pcp", a.PCP, "external", a.External)
	return a, nil
}

// Map asks for internal's port to be forwarded with one protocol, the
// external port wanted being the internal one (0: the same as internal).
// The mapping is released on Close unless released before.
func (c *Client) Map(ctx context.Context, proto Protocol, internal netip.AddrPort, external uint16) (Mapping, error) {
	gw, local, _, err := c.route()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, errors.New("portmap: client closed")
	}
	if internal.Port() == 0 {
		return nil, fmt.Errorf("portmap: mapping port 0")
	}
	if external == 0 {
		external = internal.Port()
	}
	internal = netip.AddrPortFrom(local, internal.Port())
	var m Mapping
	switch proto {
	case PMP:
		m, err = c.mapPMP(ctx, internal, external)
	case PCP:
		var nonce [12]byte
		m, err = c.mapPCP(ctx, internal, external, netip.Addr{}, nonce)
	case UPnP:
		m, err = c.mapUPnP(ctx, internal, external, true)
	default:
		return nil, fmt.Errorf("portmap: unknown protocol %q", proto)
	}
	if err != nil {
		return nil, err
	}
	c.track(m)
	c.log.Info("port mapped", "protocol", proto, "gateway", gw, "internal", internal, "external", m.External(), "good_until", m.GoodUntil())
	return m, nil
}

// MapAny tries each protocol the gateway speaks, in the configured order
// (probing first if needed), and returns the first mapping made.
func (c *Client) MapAny(ctx context.Context, internal netip.AddrPort, protos []Protocol, external uint16) (Mapping, error) {
	c.mu.Lock()
	probed, avail := c.probed, c.avail
	c.mu.Unlock()
	if !probed {
		var err error
		if avail, err = c.Probe(ctx); err != nil {
			return nil, err
		}
	}
	if len(protos) == 0 {
		protos = c.cfg.Protocols
	}
	var errs []error
	for _, p := range protos {
		if !avail.has(p) {
			continue
		}
		m, err := c.Map(ctx, p, internal, external)
		if err == nil {
			return m, nil
		}
		errs = append(errs, err)
	}
	// The gateway may have come up, rebooted onto another HTTP port or
	// changed its mind: ask again next time.
	c.mu.Lock()
	c.probed, c.igd = false, nil
	c.mu.Unlock()
	if len(errs) == 0 {
		return nil, &NoMappingError{Protocol: protos[0], Gateway: avail.Gateway, Reason: "the gateway speaks none of " + joinProtos(protos)}
	}
	return nil, errors.Join(errs...)
}

func joinProtos(ps []Protocol) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = string(p)
	}
	return strings.Join(s, ", ")
}

// renew asks again for m's port with m's protocol (and PCP nonce).
func (c *Client) renew(ctx context.Context, m Mapping) (Mapping, error) {
	var n Mapping
	var err error
	switch m := m.(type) {
	case *pmpMapping:
		n, err = c.mapPMP(ctx, m.internal, m.external.Port())
	case *pcpMapping:
		n, err = c.mapPCP(ctx, m.internal, m.external.Port(), m.external.Addr(), m.nonce)
	case *upnpMapping:
		n, err = c.mapUPnP(ctx, m.internal, m.external.Port(), false)
	default:
		return nil, fmt.Errorf("portmap: renewing a %T", m)
	}
	c.untrack(m)
	if err != nil {
		return nil, err
	}
	c.track(n)
	return n, nil
}

func (c *Client) track(m Mapping) {
	c.mu.Lock()
	c.live[m] = struct{}{}
	c.mu.Unlock()
}

func (c *Client) untrack(m Mapping) {
	c.mu.Lock()
	delete(c.live, m)
	c.mu.Unlock()
}

// Close stops every held mapping and releases every mapping still live.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	holds := make([]*Held, 0, len(c.holds))
	for h := range c.holds {
		holds = append(holds, h)
	}
	c.mu.Unlock()
	var errs []error
	for _, h := range holds {
		if err := h.Close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	c.mu.Lock()
	live := make([]Mapping, 0, len(c.live))
	for m := range c.live {
		live = append(live, m)
	}
	c.mu.Unlock()
	for _, m := range live {
		if err := m.Release(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// epochLost is called when a gateway's epoch shows it lost its state:
// every held mapping of that protocol is made again at once.
func (c *Client) epochLost(p Protocol) {
	c.mu.Lock()
	holds := make([]*Held, 0, len(c.holds))
	for h := range c.holds {
		holds = append(holds, h)
	}
	c.mu.Unlock()
	c.log.Warn("gateway lost its mappings (epoch went back)", "protocol", p, "gateway", c.cfg.Gateway)
	for _, h := range holds {
		h.lost(p)
	}
}

// epoch follows a NAT-PMP or PCP server's epoch time, which tells when it
// rebooted and forgot its mappings (RFC 6886 section 3.6, RFC 6887
// section 8.5).
type epoch struct {
	have   bool
	server uint32
	at     time.Time
}

// observe records an answer's epoch; it reports whether the server lost
// its state since the previous answer.
func (e *epoch) observe(p Protocol, server uint32, now time.Time) (lost bool) {
	if e.have {
		clientDelta := now.Sub(e.at).Seconds()
		serverDelta := float64(server) - float64(e.server)
		switch p {
		case PCP:
			lost = float64(server) < float64(e.server)-1 ||
				clientDelta+2 < serverDelta-serverDelta/16 ||
				serverDelta+2 < clientDelta-clientDelta/16
		case PMP:
			lost = float64(server) < float64(e.server)+clientDelta*7/8-2
		}
	}
	e.have, e.server, e.at = true, server, now
	return lost
}

func (c *Client) observeEpoch(p Protocol, server uint32) {
	c.mu.Lock()
	lost := c.epochs[p].observe(p, server, c.clock.Now())
	c.mu.Unlock()
	if lost {
		c.epochLost(p)
	}
}
