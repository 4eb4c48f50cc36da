package turn

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v4"
)

// guard stands in front of pion on every client listener. On the way in
// it answers, itself, CreatePermission, ChannelBind and Connect requests
// whose peers the policy refuses (403, after checking the request's
// MESSAGE-INTEGRITY: pion answers a refused ChannelBind with 401, which
// sends clients back to their credentials) and TCP allocations asked over
// UDP (400, RFC 6062 section 5.1). On the way out it rate-limits 401
// answers per destination. Everything else passes untouched; ChannelData,
// the hot path, costs one byte test.
type guard struct {
	s     *Server
	local net.Addr // the listener's address: the 5-tuple's destination
	tcp   bool
}

const (
	// Largest STUN message a guard decodes (a client's requests are small).
	maxGuardedMessage = 4096
	// magicCookie marks a STUN message (RFC 8489 section 5).
	magicCookie = 0x2112A442
)

// inbound reports whether pion should see b from src; reply sends an
// answer back to src.
func (g *guard) inbound(b []byte, src net.Addr, reply func([]byte)) bool {
	if len(b) < 20 || b[0]&0xc0 != 0 || len(b) > maxGuardedMessage {
		return true
	}
	var t stun.MessageType
	t.ReadValue(binary.BigEndian.Uint16(b[0:2]))
	if t.Class != stun.ClassRequest {
		return true
	}
	switch t.Method {
	case stun.MethodAllocate:
		if g.tcp {
			return true
		}
	case stun.MethodCreatePermission, stun.MethodChannelBind, stun.MethodConnect:
	default:
		return true
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil {
		return true // pion answers or drops malformed messages itself
	}
	if t.Method == stun.MethodAllocate {
		return g.allocateOverUDP(m, reply)
	}
	return g.peers(m, t.Method, src, reply)
}

// allocateOverUDP refuses an RFC 6062 TCP allocation asked over UDP.
func (g *guard) allocateOverUDP(m *stun.Message, reply func([]byte)) bool {
	v, err := m.Get(stun.AttrRequestedTransport)
	if err != nil || len(v) < 1 || v[0] != 6 { // 6: TCP
		return true
	}
	g.s.refuse(ReasonTCPOverUDP)
	resp, err := stun.Build(
		&stun.Message{TransactionID: m.TransactionID},
		stun.NewType(stun.MethodAllocate, stun.ClassErrorResponse),
		&stun.ErrorCodeAttribute{Code: stun.CodeBadRequest, Reason: []byte("TCP relays need a TCP connection")},
	)
	if err == nil {
		reply(resp.Raw)
	}
	return false
}

// peers checks every XOR-PEER-ADDRESS of a CreatePermission, ChannelBind
// or Connect against the policy and the permission cap.
func (g *guard) peers(m *stun.Message, method stun.Method, src net.Addr, reply func([]byte)) bool {
	var peers []netip.AddrPort
	for _, a := range m.Attributes {
		if a.Type != stun.AttrXORPeerAddress {
			continue
		}
		var pa stun.XORMappedAddress
		one := &stun.Message{TransactionID: m.TransactionID, Attributes: stun.Attributes{a}}
		if err := pa.GetFromAs(one, stun.AttrXORPeerAddress); err != nil {
			return true // pion answers 400
		}
		ip, ok := netip.AddrFromSlice(pa.IP)
		if !ok {
			return true
		}
		peers = append(peers, netip.AddrPortFrom(ip, uint16(pa.Port)))
	}
	if len(peers) == 0 {
		return true
	}
	s := g.s
	key := keyOf(src, g.local)
	r := s.noteRequestedPeers(key, peers)

	reason, phrase := "", ""
	for _, p := range peers {
		var ref *Refusal
		if method == stun.MethodConnect {
			ref = s.policy.Check(p.Addr()) // TCP peers are never other allocations
		} else {
			ref = s.checkPeer(p)
		}
		if ref != nil {
			reason, phrase = ref.Reason, "Forbidden" // the range stays in the log: no map of the LAN for clients
			s.log.Debug("turn: refusing a peer", "client", src, "peer", p.Addr(), "form", ref.Form, "range", ref.Range, "method", method)
			break
		}
	}
	if reason == "" && r != nil && method != stun.MethodConnect {
		fresh := map[netip.Addr]bool{}
		for _, p := range peers {
			if a := p.Addr().Unmap(); !r.permitted(a) {
				fresh[a] = true
			}
		}
		if r.permissionCount()+len(fresh) > s.cfg.PermissionsPerAllocation {
			reason, phrase = ReasonPermissionCap, "Forbidden: permission limit of the allocation reached"
		}
	}
	if reason == "" {
		return true
	}
	integrity, ok := g.authenticated(m)
	if !ok {
		return true // pion answers 401 and counts it
	}
	s.refuse(reason)
	resp, err := stun.Build(
		&stun.Message{TransactionID: m.TransactionID},
		stun.NewType(method, stun.ClassErrorResponse),
		&stun.ErrorCodeAttribute{Code: stun.CodeForbidden, Reason: []byte(phrase)},
		integrity,
	)
	if err == nil {
		reply(resp.Raw)
	}
	return false
}

// authenticated checks m's long-term MESSAGE-INTEGRITY with the key its
// USERNAME gives; the answer must carry the same integrity. It does not
// check the NONCE (pion's, opaque to us): a replayed request gets the
// same refusal again, nothing more.
func (g *guard) authenticated(m *stun.Message) (stun.MessageIntegrity, bool) {
	if !m.Contains(stun.AttrMessageIntegrity) {
		return nil, false
	}
	var u stun.Username
	if err := u.GetFrom(m); err != nil {
		return nil, false
	}
	_, key, err := g.s.verify.key(u.String())
	if err != nil {
		return nil, false
	}
	integrity := stun.MessageIntegrity(key)
	if err := integrity.Check(m); err != nil {
		return nil, false
	}
	return integrity, true
}

// outbound reports whether b may go to dst: 401 answers beyond the rate
// limit of dst's address are dropped.
func (g *guard) outbound(b []byte, dst net.Addr) bool {
	if len(b) < 20 || b[0]&0xc0 != 0 || b[0]&0x01 == 0 || b[1]&0x10 == 0 {
		return true // not a STUN error response
	}
	if errorCode(b) != stun.CodeUnauthorized {
		return true
	}
	if g.s.unauth.allow(addrPortOf(dst).Addr()) {
		return true
	}
	g.s.refuse(ReasonUnauthorizedRateLimited)
	return false
}

// errorCode finds the ERROR-CODE attribute of a STUN message without
// decoding it; 0 when there is none.
func errorCode(b []byte) stun.ErrorCode {
	end := 20 + int(binary.BigEndian.Uint16(b[2:4]))
	if end > len(b) {
		end = len(b)
	}
	for i := 20; i+4 <= end; {
		typ := stun.AttrType(binary.BigEndian.Uint16(b[i : i+2]))
		l := int(binary.BigEndian.Uint16(b[i+2 : i+4]))
		v := i + 4
		if v+l > end {
			return 0
		}
		if typ == stun.AttrErrorCode && l >= 4 {
			return stun.ErrorCode(int(b[v+2]&0x07)*100 + int(b[v+3]))
		}
		i = v + (l+3)&^3
	}
	return 0
}

// responseMethod reports the method of a STUN success response, if b is
// one.
func responseMethod(b []byte) (stun.Method, bool) {
	if len(b) < 20 || b[0]&0xc0 != 0 {
		return 0, false
	}
	var t stun.MessageType
	t.ReadValue(binary.BigEndian.Uint16(b[0:2]))
	return t.Method, t.Class == stun.ClassSuccessResponse
}

// guardedPacketConn is a UDP client listener as pion sees it.
type guardedPacketConn struct {
	net.PacketConn
	g     guard
	batch *batchReader // nil: read one datagram a call
}

func (c *guardedPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		var n int
		var src net.Addr
		var err error
		if c.batch != nil {
			n, src, err = c.batch.ReadFrom(p)
		} else {
			n, src, err = c.PacketConn.ReadFrom(p)
		}
		if err != nil {
			return n, src, err
		}
		if c.g.inbound(p[:n], src, func(b []byte) { c.PacketConn.WriteTo(b, src) }) {
			return n, src, nil
		}
	}
}

func (c *guardedPacketConn) WriteTo(p []byte, dst net.Addr) (int, error) {
	if !c.g.outbound(p, dst) {
		return len(p), nil
	}
	return c.PacketConn.WriteTo(p, dst)
}

// guardedListener is a TCP client listener as pion sees it: at most
// MaxTCPConnections at once, each a guardedConn.
type guardedListener struct {
	net.Listener
	g     guard
	slots chan struct{}
}

func (l *guardedListener) Accept() (net.Conn, error) {
	backoff := 5 * time.Millisecond
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			// pion stops accepting for good on any error: ride out the
			// temporary ones (out of descriptors) here.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, net.ErrClosed) || l.g.s.ctx.Err() != nil {
				return nil, err
			}
			l.g.s.log.Warn("turn: accepting a TCP client", "listener", l.Addr(), "err", err)
			t := l.g.s.clk.NewTimer(backoff)
			select {
			case <-t.C():
			case <-l.g.s.ctx.Done():
				t.Stop()
				return nil, err
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		select {
		case l.slots <- struct{}{}:
		default:
			c.Close()
			l.g.s.refuse(ReasonTCPConnections)
			continue
		}
		return &guardedConn{Conn: c, l: l}, nil
	}
}

// guardedConn frames a TCP client connection into STUN messages and
// ChannelData (RFC 8656 section 12.5) so that the guard sees whole
// requests, and hands pion at most one frame per Read. A connection that
// has no allocation after TCPAuthTimeout, or is silent for
// TCPIdleTimeout, is closed. After a successful ConnectionBind (RFC 6062)
// the connection carries raw peer data and passes through untouched.
type guardedConn struct {
	net.Conn
	l *guardedListener

	// Read side, used by pion's one reading goroutine.
	buf     []byte // read, not yet handed out
	back    []byte // buf's backing array, reused once buf is drained
	pending int    // bytes of the current frame still to hand out

	raw    atomic.Bool
	authed atomic.Bool
	once   sync.Once
}

func (c *guardedConn) Read(p []byte) (int, error) {
	for {
		if c.raw.Load() {
			if len(c.buf) > 0 {
				n := copy(p, c.buf)
				c.buf = c.buf[n:]
				return n, nil
			}
			return c.Conn.Read(p)
		}
		if c.pending > 0 {
			if len(c.buf) == 0 {
				if err := c.fill(); err != nil {
					return 0, err
				}
			}
			n := min(c.pending, len(c.buf), len(p))
			copy(p, c.buf[:n])
			c.buf = c.buf[n:]
			c.pending -= n
			return n, nil
		}
		size, isSTUN, ok := frameSize(c.buf)
		switch {
		case !ok:
			if err := c.fill(); err != nil {
				return 0, err
			}
		case size < 0:
			// Not a TURN frame: let pion see it and drop the connection.
			c.pending = len(c.buf)
		case !isSTUN:
			c.pending = size
		case len(c.buf) < size:
			if err := c.fill(); err != nil {
				return 0, err
			}
		default:
			frame := c.buf[:size]
			if c.l.g.inbound(frame, c.RemoteAddr(), func(b []byte) { c.Conn.Write(b) }) {
				c.pending = size
			} else {
				c.buf = c.buf[size:]
			}
		}
	}
}

// fill reads more of the stream, with the deadline the connection's state
// allows.
func (c *guardedConn) fill() error {
	s := c.l.g.s
	timeout := s.cfg.TCPAuthTimeout
	if c.authed.Load() {
		timeout = s.cfg.TCPIdleTimeout
	}
	if err := c.Conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if len(c.buf) == 0 {
		c.buf = c.back[:0]
	}
	var tmp [4096]byte
	n, err := c.Conn.Read(tmp[:])
	c.buf = append(c.buf, tmp[:n]...)
	if cap(c.buf) > cap(c.back) {
		c.back = c.buf[:0] // append moved buf to a new array, which starts there
	}
	if n > 0 {
		return nil
	}
	return err
}

func (c *guardedConn) Write(p []byte) (int, error) {
	if c.raw.Load() {
		return c.Conn.Write(p)
	}
	if !c.l.g.outbound(p, c.RemoteAddr()) {
		return len(p), nil
	}
	if m, ok := responseMethod(p); ok {
		switch m {
		case stun.MethodAllocate:
			c.authed.Store(true)
		case stun.MethodConnectionBind:
			// pion's reading goroutine wrote this and reads the raw
			// stream next: no frame is in flight.
			c.Conn.SetReadDeadline(time.Time{})
			c.raw.Store(true)
		}
	}
	return c.Conn.Write(p)
}

func (c *guardedConn) Close() error {
	c.once.Do(func() { <-c.l.slots })
	return c.Conn.Close()
}

// frameSize returns the size of the TURN frame at the start of b: a STUN
// message or a ChannelData message padded to 4 bytes (RFC 8656 section
// 12.5). ok is false when b is too short to tell; size is negative when
// b starts with something else.
func frameSize(b []byte) (size int, isSTUN, ok bool) {
	if len(b) < 4 {
		return 0, false, false
	}
	switch b[0] & 0xc0 {
	case 0x40:
		l := int(binary.BigEndian.Uint16(b[2:4]))
		return 4 + (l+3)&^3, false, true
	case 0x00:
		if len(b) < 20 {
			return 0, false, false
		}
		if binary.BigEndian.Uint32(b[4:8]) != magicCookie {
			return -1, false, true
		}
		return 20 + int(binary.BigEndian.Uint16(b[2:4])), true, true
	}
	return -1, false, true
}
