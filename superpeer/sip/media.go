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

// MediaRelay anchors a call's media in a relay, for endpoints that do not
// do ICE and so cannot find a path across two NATs themselves. The daemon
// backs it with the superpeer's TURN relay (allocations whose relayed
// addresses the far side can reach); UDPRelay is a plain UDP one.
type MediaRelay interface {
	// Anchor relays stream number stream of callID for the endpoint of leg
	// at endpoint (its address in the SDP it sent). It returns the address
	// to show the other leg instead: what the other leg sends there reaches
	// endpoint, and what endpoint sends to the address it was shown for
	// the other leg reaches the other leg. Anchoring the same stream and
	// leg again (a re-INVITE) moves the endpoint and returns the same
	// address.
	Anchor(ctx context.Context, callID string, stream int, leg Leg, endpoint netip.AddrPort) (netip.AddrPort, error)
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
	_, ok := t.calls[c.id]
	delete(t.calls, c.id)
	t.mu.Unlock()
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

func (s *Server) anchorBody(ctx context.Context, c *callState, leg Leg, body []byte) ([]byte, bool) {
	if c == nil || len(body) == 0 || hasICE(body) {
		return nil, false
	}
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	out, err := rewriteSDP(body, func(stream int, ep netip.AddrPort) (netip.AddrPort, error) {
		return s.media.Anchor(actx, c.id, stream, leg, ep)
	})
	if err != nil {
		s.log.Info("sip: media not anchored", "call", c.id, "leg", leg, "err", err)
		return nil, false
	}
	return out, true
}

// anchorRequest rewrites the SDP of a request going to h.
func (s *Server) anchorRequest(ctx context.Context, c *callState, fwd *sip.Request, _ hop) {
	if c == nil || !isSDP(fwd) {
		return
	}
	if out, ok := s.anchorBody(ctx, c, c.legOfRequest(fwd), fwd.Body()); ok {
		fwd.SetBody(out)
	}
}

// anchorResponse rewrites the SDP of a response to req.
func (s *Server) anchorResponse(c *callState, req *sip.Request, res *sip.Response) {
	if c == nil || len(res.Body()) == 0 || !isSDPType(res.GetHeader("Content-Type")) {
		return
	}
	leg := LegCallee
	if c.legOfRequest(req) == LegCallee {
		leg = LegCaller
	}
	if out, ok := s.anchorBody(s.ctx, c, leg, res.Body()); ok {
		res.SetBody(out)
	}
}

// anchorAck rewrites an SDP answer carried in an ACK (late offer).
func (s *Server) anchorAck(fwd *sip.Request) {
	s.calls.mu.Lock()
	c := s.calls.calls[callIDOf(fwd)]
	s.calls.mu.Unlock()
	s.anchorRequest(s.ctx, c, fwd, hop{})
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

// UDPRelay is a MediaRelay of plain UDP sockets on one address, opened
// through a transport.Net: each anchored stream gets a pair of sockets,
// one shown to each leg. It latches onto the address each leg really
// sends from (symmetric RTP), so endpoints behind a NAT work. It is the
// relay for calls within a site and for tests; across NATs the daemon uses
// TURN allocations instead.
type UDPRelay struct {
	net transport.Net
	ip  netip.Addr

	mu       sync.Mutex // guards following
	sessions map[string]map[int]*relayStream
	closed   bool

	// Packets counts relayed packets per direction.
	ToCallee, ToCaller atomic.Uint64
}

// relayStream relays one media stream: shown[LegCaller] is the socket
// shown to the callee in place of the caller, and the socket the callee's
// packets come in on; shown[LegCallee] the other way round.
type relayStream struct {
	shown [2]net.PacketConn
	mu    sync.Mutex // guards following
	ep    [2]netip.AddrPort
	wg    sync.WaitGroup
}

// NewUDPRelay returns a relay whose sockets are opened through n on ip.
func NewUDPRelay(n transport.Net, ip netip.Addr) *UDPRelay {
	return &UDPRelay{net: n, ip: ip, sessions: map[string]map[int]*relayStream{}}
}

// Anchor implements MediaRelay.
func (r *UDPRelay) Anchor(_ context.Context, callID string, stream int, leg Leg, endpoint netip.AddrPort) (netip.AddrPort, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return netip.AddrPort{}, net.ErrClosed
	}
	streams := r.sessions[callID]
	if streams == nil {
		streams = map[int]*relayStream{}
		r.sessions[callID] = streams
	}
	rs := streams[stream]
	if rs == nil {
		rs = &relayStream{}
		for i := range rs.shown {
			pc, err := r.net.ListenPacket("udp4", netip.AddrPortFrom(r.ip, 0).String())
			if err != nil {
				for _, c := range rs.shown[:i] {
					c.Close()
				}
				return netip.AddrPort{}, fmt.Errorf("opening a relay socket on %v: %w", r.ip, err)
			}
			rs.shown[i] = pc
		}
		streams[stream] = rs
		for l := range rs.shown {
			rs.wg.Add(1)
			go r.pump(rs, Leg(l))
		}
	}
	rs.mu.Lock()
	rs.ep[leg] = endpoint
	rs.mu.Unlock()
	return addrPortOf(rs.shown[leg].LocalAddr()), nil
}

// pump moves packets arriving on shown[from] (sent by the other leg) to
// the endpoint of leg from, sending from shown[other].
func (r *UDPRelay) pump(rs *relayStream, from Leg) {
	defer rs.wg.Done()
	other := 1 - from
	buf := make([]byte, 1500)
	for {
		n, src, err := rs.shown[from].ReadFrom(buf)
		if err != nil {
			return
		}
		rs.mu.Lock()
		rs.ep[other] = addrPortOf(src) // latch: the other leg sends from here
		dst := rs.ep[from]
		rs.mu.Unlock()
		if !dst.IsValid() {
			continue
		}
		if _, err := rs.shown[other].WriteTo(buf[:n], net.UDPAddrFromAddrPort(dst)); err == nil {
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
		for _, c := range rs.shown {
			c.Close()
		}
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
