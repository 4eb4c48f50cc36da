package sip

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/emiago/sipgo/sip"
)

// CanonicalAOR turns "sip:User@Example.ORG:5060;transport=tcp" into
// "sip:User@example.org": scheme sip, user part as is, host lower case, no
// port or parameters (RFC 3261 section 10.3 step 5).
func CanonicalAOR(s string) (string, error) {
	var u sip.Uri
	if err := sip.ParseUri(s, &u); err != nil {
		return "", fmt.Errorf("parsing AOR %q: %w", s, err)
	}
	if u.User == "" || u.Host == "" {
		return "", fmt.Errorf("AOR %q needs a user and a host", s)
	}
	return "sip:" + u.User + "@" + strings.ToLower(u.Host), nil
}

// aorOf returns the canonical AOR of a URI, mapping our own addresses to
// the primary domain (a phone that registers at "sip:bob@192.168.1.10" is
// bob of the site's domain).
func (s *Server) aorOf(u *sip.Uri) string {
	host := strings.ToLower(u.Host)
	if s.isMyHost(host) {
		host = strings.ToLower(s.cfg.Domains[0])
	}
	return "sip:" + u.User + "@" + host
}

// isLocalDomain reports whether host is one of the site's domains or one
// of this superpeer's addresses.
func (s *Server) isLocalDomain(host string) bool {
	for _, d := range s.cfg.Domains {
		if strings.EqualFold(d, host) {
			return true
		}
	}
	return s.isMyHost(host)
}

// isMyHost reports whether host is an address of this superpeer.
func (s *Server) isMyHost(host string) bool {
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return false
	}
	a = a.Unmap()
	if a == s.advertise {
		return true
	}
	if s.overlay != nil && a == s.overlay.self.Addr() {
		return true
	}
	for _, sk := range s.socks {
		if a == sk.bound.Addr() {
			return true
		}
	}
	return false
}

// isMyURI reports whether u addresses this superpeer (a Route or
// Request-URI that names us): our address, and one of our ports or none.
func (s *Server) isMyURI(u *sip.Uri) bool {
	if !s.isMyHost(u.Host) {
		return false
	}
	if u.Port == 0 {
		return true
	}
	if s.overlay != nil && isOverlayAddr(parseHostAddr(u.Host)) {
		return u.Port == overlayPort
	}
	for _, sk := range s.socks {
		if sk.port == u.Port {
			return true
		}
	}
	return false
}

func parseHostAddr(host string) netip.Addr {
	a, _ := netip.ParseAddr(strings.Trim(host, "[]"))
	return a.Unmap()
}

func (s *Server) inLAN(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range s.cfg.LAN {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// hop is where and how a request or response leaves this superpeer.
type hop struct {
	transport string         // UDP, TCP or TLS, as sipgo names them
	dest      netip.AddrPort // the next hop's address
	local     *socket        // our socket for UDP (its bound address selects it in sipgo's pool)
	overlay   string         // node ID when the hop goes through the Carrier
}

func (h hop) String() string {
	if h.overlay != "" {
		return "overlay:" + h.overlay
	}
	return strings.ToLower(h.transport) + ":" + h.dest.String()
}

var (
	errFlowGone   = errors.New("sip: the flow is gone")
	errNoOverlay  = errors.New("sip: no overlay")
	errNoSocket   = errors.New("sip: no listener for that transport")
	errUnroutable = errors.New("sip: cannot route to that URI")
)

// hopForFlow returns the hop that sends on flow f held by this superpeer.
func (s *Server) hopForFlow(f flowID) (hop, error) {
	switch f.Transport {
	case "udp":
		sk := s.socks["udp"]
		if sk == nil {
			return hop{}, errNoSocket
		}
		return hop{transport: "UDP", dest: f.Remote, local: sk}, nil
	case "tcp", "tls":
		if _, err := s.tp.GetConnection(f.Transport, f.Remote.String()); err != nil {
			return hop{}, fmt.Errorf("%w: %s %v", errFlowGone, f.Transport, f.Remote)
		}
		return hop{transport: strings.ToUpper(f.Transport), dest: f.Remote}, nil
	}
	return hop{}, errUnroutable
}

// hopForOverlay returns the hop to superpeer id through the Carrier.
func (s *Server) hopForOverlay(id string) (hop, error) {
	if s.overlay == nil {
		return hop{}, errNoOverlay
	}
	return hop{transport: "UDP", dest: s.overlay.learn(id), overlay: id}, nil
}

// hopForURI returns the hop to the address in u (a Route or a contact).
func (s *Server) hopForURI(u *sip.Uri) (hop, error) {
	a, err := netip.ParseAddr(strings.Trim(u.Host, "[]"))
	if err != nil {
		return hop{}, fmt.Errorf("%w: %q is not an address (this proxy does not use DNS)", errUnroutable, u.Host)
	}
	a = a.Unmap()
	if isOverlayAddr(a) {
		if id, ok := u.UriParams.Get("sp"); ok && id != "" {
			return s.hopForOverlay(id)
		}
		if s.overlay != nil {
			if id, ok := s.overlay.idOf(netip.AddrPortFrom(a, overlayPort)); ok {
				return s.hopForOverlay(id)
			}
		}
		return hop{}, fmt.Errorf("%w: unknown superpeer %v", errUnroutable, a)
	}
	tr := "udp"
	if t, ok := u.UriParams.Get("transport"); ok {
		tr = strings.ToLower(t)
	}
	if u.Scheme == "sips" {
		tr = "tls"
	}
	port := u.Port
	if port == 0 {
		port = sip.DefaultPort(tr)
	}
	return s.hopForFlow(flowID{Transport: tr, Remote: netip.AddrPortFrom(a, uint16(port))})
}

// viaFor returns our Via for a request leaving on h.
func (s *Server) viaFor(h hop, branch string) *sip.ViaHeader {
	via := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: h.transport, Params: sip.NewParams()}
	switch {
	case h.overlay != "":
		via.Host = "[" + s.overlay.self.Addr().String() + "]"
		via.Port = overlayPort
	default:
		via.Host = s.advertise.String()
		if sk := s.socks[strings.ToLower(h.transport)]; sk != nil {
			via.Port = sk.port
		}
	}
	via.Params.Add("branch", branch)
	via.Params.Add("rport", "")
	return via
}

// route prepares req to leave on h: our Via on top, transport,
// destination, and for UDP the socket to send from.
func (s *Server) route(req *sip.Request, h hop, branch string) {
	req.PrependHeader(s.viaFor(h, branch))
	req.SetTransport(h.transport)
	req.SetDestination(h.dest.String())
	switch {
	case h.overlay != "":
		req.Laddr = sip.Addr{IP: s.overlay.self.Addr().AsSlice(), Port: overlayPort}
	case h.local != nil:
		req.Laddr = sip.Addr{IP: h.local.bound.Addr().AsSlice(), Port: h.local.port}
	default:
		req.Laddr = sip.Addr{}
	}
}

// recordRouteURI is how the far side of h reaches this superpeer back: our
// overlay address with our node ID, or our LAN address with the transport
// and, when the hop is a flow, its token so in-dialog requests use the
// same flow (RFC 5626 section 5.3).
func (s *Server) recordRouteURI(h hop, token string) sip.Uri {
	u := sip.Uri{Scheme: "sip", UriParams: sip.NewParams()}
	if h.overlay != "" {
		u.Host = "[" + s.overlay.self.Addr().String() + "]"
		u.Port = overlayPort
		u.UriParams.Add("lr", "")
		u.UriParams.Add("sp", s.cfg.NodeID)
		return u
	}
	u.User = token
	u.Host = s.advertise.String()
	tr := strings.ToLower(h.transport)
	if sk := s.socks[tr]; sk != nil {
		u.Port = sk.port
	}
	if tr != "udp" {
		u.UriParams.Add("transport", tr)
	}
	u.UriParams.Add("lr", "")
	return u
}

// branchSeq makes branches unique within this process.
var branchSeq atomic.Uint64

// makeBranch returns a branch whose middle part is the loop-detection hash
// of the request (RFC 3261 section 16.6 step 8).
func makeBranch(loop uint64) string {
	return "z9hG4bK-sp" + strconv.FormatUint(loop, 36) + "." + strconv.FormatUint(branchSeq.Add(1), 36)
}

// loopHash hashes what identifies a request regardless of the path it
// took: a request that comes back with the same hash in one of our Via
// entries has looped; one with a different hash is spiralling.
func loopHash(req *sip.Request) uint64 {
	h := fnv.New64a()
	h.Write([]byte(req.Recipient.String()))
	if f := req.From(); f != nil {
		h.Write([]byte(f.Params.GetOr("tag", "")))
	}
	if t := req.To(); t != nil {
		h.Write([]byte(t.Params.GetOr("tag", "")))
	}
	if c := req.CallID(); c != nil {
		h.Write([]byte(c.Value()))
	}
	if c := req.CSeq(); c != nil {
		h.Write([]byte(strconv.FormatUint(uint64(c.SeqNo), 10)))
	}
	for _, pr := range req.GetHeaders("Proxy-Require") {
		h.Write([]byte(pr.Value()))
	}
	return h.Sum64()
}

// looped reports whether req already passed here in the same state.
func (s *Server) looped(req *sip.Request, hash uint64) bool {
	want := "z9hG4bK-sp" + strconv.FormatUint(hash, 36) + "."
	for _, h := range req.GetHeaders("Via") {
		via, ok := h.(*sip.ViaHeader)
		if !ok || !s.isMyHost(via.Host) {
			continue
		}
		if b, _ := via.Params.Get("branch"); strings.HasPrefix(b, want) {
			return true
		}
	}
	return false
}

// upstreamDest is where responses to req go (RFC 3261 section 18.2.2,
// RFC 3581 section 4): the top Via's received and rport, else its
// sent-by.
func upstreamDest(via *sip.ViaHeader, transport string) string {
	host, port := via.Host, via.Port
	if r, ok := via.Params.Get("received"); ok && r != "" {
		host = r
	}
	if r, ok := via.Params.Get("rport"); ok && r != "" {
		if p, err := strconv.Atoi(r); err == nil {
			port = p
		}
	}
	if port == 0 {
		port = sip.DefaultPort(transport)
	}
	return netip.AddrPortFrom(parseHostAddr(host), uint16(port)).String()
}

// fixVia records where the request really came from in its top Via
// (RFC 3261 section 18.2.1, RFC 3581 section 4).
func fixVia(req *sip.Request, src netip.AddrPort) {
	via := req.Via()
	if via == nil || !src.IsValid() {
		return
	}
	if parseHostAddr(via.Host) != src.Addr() {
		via.Params.Add("received", src.Addr().String())
	}
	if r, ok := via.Params.Get("rport"); ok && r == "" {
		via.Params.Add("rport", strconv.Itoa(int(src.Port())))
	}
}

func sourceOf(m interface{ Source() string }) netip.AddrPort {
	ap, _ := netip.ParseAddrPort(m.Source())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
