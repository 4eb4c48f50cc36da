package sip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/pion/transport/v5"

	"github.com/superpeer/superpeer/nat/clock"
)

// Leg names a side of a call.
type Leg int

const (
	// LegCaller is the side that sent the initial INVITE.
	LegCaller Leg = iota
	// LegCallee is the side it was sent to.
	LegCallee
)

func (l Leg) String() string {
	if l == LegCaller {
		return "caller"
	}
	return "callee"
}

// AnchorRequest says what to anchor: one media stream of one leg.
type AnchorRequest struct {
	// CallID is the call's Call-ID.
	CallID string
	// Stream is the index of the media stream (m= line) in the SDP.
	Stream int
	// Leg is the side whose SDP this is: the endpoint at Endpoint.
	Leg Leg
	// Endpoint is the address the endpoint gave for the stream.
	Endpoint netip.AddrPort
	// Remote says the SDP goes to another site: the address returned is
	// used from beyond the NATs and must be reachable there (a TURN
	// allocation's relayed address); otherwise a LAN address will do.
	Remote bool
}

// MediaRelay anchors a call's media in a relay, for endpoints that do not
// do ICE and so cannot find a path across two NATs themselves. The daemon
// backs it with the superpeer's TURN relay (NewSocketRelay with TURN
// allocations for the remote side); NewUDPRelay is a plain UDP one.
type MediaRelay interface {
	// Anchor relays a stream for the endpoint of r.Leg. It returns the
	// address to show the other leg instead of r.Endpoint: what the other
	// leg sends there reaches the endpoint, and what the endpoint sends to
	// the address it was shown for the other leg reaches the other leg.
	// Anchoring the same stream and leg again (a re-INVITE) moves the
	// endpoint and returns the same address.
	Anchor(ctx context.Context, r AnchorRequest) (netip.AddrPort, error)
	// Release frees everything anchored for callID.
	Release(callID string)
}

// hasICE reports whether an SDP body offers ICE (RFC 8839): then the
// endpoints find their own path through the relays they know, and the SDP
// is left alone.
func hasICE(sdp []byte) bool {
	return bytes.Contains(sdp, []byte("a=ice-ufrag")) || bytes.Contains(sdp, []byte("a=candidate"))
}

// rewriteSDP replaces every connection address and media port of an SDP
// body (RFC 4566) with relay addresses from anchor, one per active media
// stream. Streams with port 0 are left as they are; RTCP attributes are
// dropped (RTCP then uses port+1 of the relay, RFC 3605 section 1).
func rewriteSDP(body []byte, anchor func(stream int, endpoint netip.AddrPort) (netip.AddrPort, error)) ([]byte, error) {
	lines := strings.Split(strings.ReplaceAll(string(body), "\r\n", "\n"), "\n")
	sessionAddr := netip.Addr{}
	// First pass: the session-level and per-stream connection addresses.
	type stream struct {
		line int
		port int
		addr netip.Addr
	}
	var streams []stream
	for i, l := range lines {
		switch {
		case strings.HasPrefix(l, "c="):
			a, err := connAddr(l)
			if err != nil {
				return nil, err
			}
			if len(streams) == 0 {
				sessionAddr = a
			} else {
				streams[len(streams)-1].addr = a
			}
		case strings.HasPrefix(l, "m="):
			f := strings.Fields(l[2:])
			if len(f) < 3 {
				return nil, fmt.Errorf("sdp: bad media line %q", l)
			}
			port, err := strconv.Atoi(strings.SplitN(f[1], "/", 2)[0])
			if err != nil || port < 0 || port > 65535 {
				return nil, fmt.Errorf("sdp: bad port in %q", l)
			}
			streams = append(streams, stream{line: i, port: port})
		}
	}
	if len(streams) == 0 {
		return body, nil
	}
	var relayAddr netip.Addr
	relays := make([]netip.AddrPort, len(streams))
	for i, st := range streams {
		if st.port == 0 {
			continue
		}
		a := st.addr
		if !a.IsValid() {
			a = sessionAddr
		}
		if !a.IsValid() {
			return nil, errors.New("sdp: media stream without a connection address")
		}
		r, err := anchor(i, netip.AddrPortFrom(a, uint16(st.port)))
		if err != nil {
			return nil, fmt.Errorf("anchoring media stream %d: %w", i, err)
		}
		relays[i] = r
		relayAddr = r.Addr()
	}
	if !relayAddr.IsValid() {
		return body, nil
	}
	var out strings.Builder
	si := -1
	for i, l := range lines {
		if i == len(lines)-1 && l == "" {
			break
		}
		switch {
		case strings.HasPrefix(l, "m="):
			si++
			if relays[si].IsValid() {
				f := strings.Fields(l[2:])
				f[1] = strconv.Itoa(int(relays[si].Port()))
				l = "m=" + strings.Join(f, " ")
			}
		case strings.HasPrefix(l, "c="):
			r := relayAddr
			if si >= 0 && relays[si].IsValid() {
				r = relays[si].Addr()
			}
			if si < 0 || relays[si].IsValid() {
				l = "c=IN " + ipVersion(r) + " " + r.String()
			}
		case strings.HasPrefix(l, "a=rtcp:"):
			if si >= 0 && relays[si].IsValid() {
				continue
			}
		}
		out.WriteString(l)
		out.WriteString("\r\n")
	}
	return []byte(out.String()), nil
}

func connAddr(l string) (netip.Addr, error) {
	f := strings.Fields(l[2:])
	if len(f) < 3 {
		return netip.Addr{}, fmt.Errorf("sdp: bad connection line %q", l)
	}
	a, err := netip.ParseAddr(strings.SplitN(f[2], "/", 2)[0])
	if err != nil {
		return netip.Addr{}, fmt.Errorf("sdp: connection address in %q: %w", l, err)
	}
	return a.Unmap(), nil
}

func ipVersion(a netip.Addr) string {
	if a.Is4() {
		return "IP4"
	}
	return "IP6"
}

// callState is what the proxy remembers of a call whose media it anchors.
type callState struct {
	id        string
	callerTag string
	limit     clock.Timer // releases the call after MaxCallDuration
}

// callTable holds the calls with anchored media.
type callTable struct {
	mu    sync.Mutex // guards following
	calls map[string]*callState
}

func newCallTable() *callTable { return &callTable{calls: map[string]*callState{}} }

func (t *callTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.calls)
}

func (t *callTable) release(s *Server, c *callState) {
	if c == nil {
		return
	}
	t.mu.Lock()
	cur, ok := t.calls[c.id]
	ok = ok && cur == c
	if ok {
		delete(t.calls, c.id)
	}
	t.mu.Unlock()
	if c.limit != nil {
		c.limit.Stop()
	}
	if ok && s.media != nil {
		s.media.Release(c.id)
	}
}

func (t *callTable) releaseAll() {
	t.mu.Lock()
	t.calls = map[string]*callState{}
	t.mu.Unlock()
}

// wantAnchor decides whether a new call's media is anchored here.
func (s *Server) wantAnchor(req *sip.Request, src netip.AddrPort, targets []target) bool {
	if s.media == nil || !req.IsInvite() {
		return false
	}
	switch s.cfg.Anchor {
	case AnchorAlways:
		return true
	case AnchorRemote:
		if isOverlayAddr(src.Addr()) {
			return true
		}
		for _, t := range targets {
			if t.hop.overlay != "" {
				return true
			}
		}
	}
	return false
}

// startCall registers a new call for anchoring.
func (s *Server) startCall(req *sip.Request, src netip.AddrPort, targets []target) *callState {
	id := callIDOf(req)
	s.calls.mu.Lock()
	defer s.calls.mu.Unlock()
	if c := s.calls.calls[id]; c != nil {
		return c
	}
	if req.To().Params.Has("tag") || !s.wantAnchor(req, src, targets) {
		return nil
	}
	c := &callState{id: id, callerTag: req.From().Params.GetOr("tag", "")}
	c.limit = s.clock.AfterFunc(s.cfg.MaxCallDuration, func() { s.calls.release(s, c) })
	s.calls.calls[id] = c
	return c
}

// legOfRequest says which side sent req.
func (c *callState) legOfRequest(req *sip.Request) Leg {
	if f := req.From(); f != nil && f.Params.GetOr("tag", "") == c.callerTag {
		return LegCaller
	}
	return LegCallee
}

func (s *Server) anchorBody(ctx context.Context, c *callState, leg Leg, remote bool, body []byte) ([]byte, bool) {
	if c == nil || len(body) == 0 || hasICE(body) {
		return nil, false
	}
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	out, err := rewriteSDP(body, func(stream int, ep netip.AddrPort) (netip.AddrPort, error) {
		return s.media.Anchor(actx, AnchorRequest{CallID: c.id, Stream: stream, Leg: leg, Endpoint: ep, Remote: remote})
	})
	if err != nil {
		s.log.Info("sip: media not anchored", "call", c.id, "leg", leg, "err", err)
		return nil, false
	}
	return out, true
}

// anchorRequest rewrites the SDP of a request leaving on h.
func (s *Server) anchorRequest(ctx context.Context, c *callState, fwd *sip.Request, h hop) {
	if c == nil || !isSDP(fwd) {
		return
	}
	if out, ok := s.anchorBody(ctx, c, c.legOfRequest(fwd), h.overlay != "", fwd.Body()); ok {
		fwd.SetBody(out)
	}
}

// anchorResponse rewrites the SDP of a response to req, which goes back
// where req came from.
func (s *Server) anchorResponse(c *callState, req *sip.Request, res *sip.Response) {
	if c == nil || len(res.Body()) == 0 || !isSDPType(res.GetHeader("Content-Type")) {
		return
	}
	leg := LegCallee
	if c.legOfRequest(req) == LegCallee {
		leg = LegCaller
	}
	if out, ok := s.anchorBody(s.ctx, c, leg, isOverlayAddr(sourceOf(req).Addr()), res.Body()); ok {
		res.SetBody(out)
	}
}

// anchorAck rewrites an SDP answer carried in an ACK (late offer).
func (s *Server) anchorAck(fwd *sip.Request, h hop) {
	s.calls.mu.Lock()
	c := s.calls.calls[callIDOf(fwd)]
	s.calls.mu.Unlock()
	s.anchorRequest(s.ctx, c, fwd, h)
}

// finishCall releases the media of a call that failed or ended.
func (s *Server) finishCall(c *callState, res *sip.Response) {
	if c == nil || res == nil {
		return
	}
	cseq := res.CSeq()
	if cseq == nil {
		return
	}
	if cseq.MethodName == sip.BYE || (cseq.MethodName == sip.INVITE && res.StatusCode >= 300) {
		s.calls.release(s, c)
	}
}

func isSDP(r *sip.Request) bool {
	return len(r.Body()) > 0 && isSDPType(r.GetHeader("Content-Type"))
}

func isSDPType(h sip.Header) bool {
	return h != nil && strings.HasPrefix(strings.ToLower(strings.TrimSpace(h.Value())), "application/sdp")
}

// UDPRelay is a MediaRelay that relays each anchored stream between two
// sockets, one shown to each leg, opened by a function it is given. It
// latches onto the address each leg really sends from (symmetric RTP), so
// endpoints behind a NAT work. NewUDPRelay opens plain UDP sockets on one
// address (calls within a site, tests); the daemon passes NewSocketRelay a
// function that opens a TURN allocation when the socket faces another
// site.
type UDPRelay struct {
	open func(ctx context.Context, remote bool) (net.PacketConn, error)

	mu       sync.Mutex // guards following
	sessions map[string]map[int]*relayStream
	closed   bool

	// ToCallee and ToCaller count relayed packets per direction.
	ToCallee, ToCaller atomic.Uint64
}

// relayStream relays one media stream: shown[LegCaller] is the socket
// shown to the callee in place of the caller, on which the callee's
// packets arrive; shown[LegCallee] the other way round.
type relayStream struct {
	mu    sync.Mutex // guards following
	shown [2]net.PacketConn
	ep    [2]netip.AddrPort
	wg    sync.WaitGroup
}

// NewUDPRelay returns a relay whose sockets are opened through n on ip.
func NewUDPRelay(n transport.Net, ip netip.Addr) *UDPRelay {
	return NewSocketRelay(func(context.Context, bool) (net.PacketConn, error) {
		return n.ListenPacket("udp", netip.AddrPortFrom(ip, 0).String())
	})
}

// NewSocketRelay returns a relay whose sockets come from open; remote says
// the socket's address will be used from another site.
func NewSocketRelay(open func(ctx context.Context, remote bool) (net.PacketConn, error)) *UDPRelay {
	return &UDPRelay{open: open, sessions: map[string]map[int]*relayStream{}}
}

// Anchor implements MediaRelay.
func (r *UDPRelay) Anchor(ctx context.Context, req AnchorRequest) (netip.AddrPort, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return netip.AddrPort{}, net.ErrClosed
	}
	streams := r.sessions[req.CallID]
	if streams == nil {
		streams = map[int]*relayStream{}
		r.sessions[req.CallID] = streams
	}
	rs := streams[req.Stream]
	if rs == nil {
		rs = &relayStream{}
		streams[req.Stream] = rs
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.ep[req.Leg] = req.Endpoint
	if rs.shown[req.Leg] == nil {
		pc, err := r.open(ctx, req.Remote)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("opening a relay socket: %w", err)
		}
		rs.shown[req.Leg] = pc
		rs.wg.Add(1)
		go r.pump(rs, req.Leg, pc)
	}
	return addrPortOf(rs.shown[req.Leg].LocalAddr()), nil
}

// pump moves packets arriving on in = shown[from] (sent by the other leg)
// to the endpoint of leg from, sending from shown[other] so the endpoint
// sees them come from the address it sends to.
func (r *UDPRelay) pump(rs *relayStream, from Leg, in net.PacketConn) {
	defer rs.wg.Done()
	other := 1 - from
	buf := make([]byte, 1500)
	for {
		n, src, err := in.ReadFrom(buf)
		if err != nil {
			return
		}
		rs.mu.Lock()
		rs.ep[other] = addrPortOf(src) // latch: the other leg sends from here
		dst, out := rs.ep[from], rs.shown[other]
		rs.mu.Unlock()
		if !dst.IsValid() || out == nil {
			continue // the other leg's answer has not come yet
		}
		if _, err := out.WriteTo(buf[:n], net.UDPAddrFromAddrPort(dst)); err == nil {
			if from == LegCaller {
				r.ToCaller.Add(1)
			} else {
				r.ToCallee.Add(1)
			}
		}
	}
}

// Release implements MediaRelay.
func (r *UDPRelay) Release(callID string) {
	r.mu.Lock()
	streams := r.sessions[callID]
	delete(r.sessions, callID)
	r.mu.Unlock()
	for _, rs := range streams {
		rs.mu.Lock()
		for _, c := range rs.shown {
			if c != nil {
				c.Close()
			}
		}
		rs.mu.Unlock()
		rs.wg.Wait()
	}
}

// Sessions returns how many calls have anchored media.
func (r *UDPRelay) Sessions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sessions)
}

// Close releases every call.
func (r *UDPRelay) Close() error {
	r.mu.Lock()
	r.closed = true
	ids := make([]string, 0, len(r.sessions))
	for id := range r.sessions {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	for _, id := range ids {
		r.Release(id)
	}
	return nil
}
