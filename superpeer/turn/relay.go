package turn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"
)

// How a relay's external address was found; RelayStatus.Method.
const (
	// MethodLocal: nothing is known about a NAT; the relay reports its
	// local address (a relay for the LAN only, or a test).
	MethodLocal = "local"
	// MethodDirect: the relay is bound on a public address.
	MethodDirect = "direct"
	// MethodStatic: Config.ExternalIP with the local port.
	MethodStatic = "static"
	// MethodMapped: a verified port mapping from the gateway.
	MethodMapped = "mapped"
	// MethodSTUN: the endpoint-independent mapping a STUN Binding from the
	// relay socket learnt.
	MethodSTUN = "stun"
	// MethodAssumed: STUN did not answer; the last external address STUN
	// reported with the local port, assuming the NAT preserves ports.
	MethodAssumed = "assumed"
)

// Network waits (STUN transactions, dials) use the wall clock through
// socket deadlines: they wait on the network, not on behaviour that tests
// drive with a fake clock.
const (
	stunRTO          = 250 * time.Millisecond
	tcpConnectTimout = 30 * time.Second // RFC 6062 section 5.2: at least 30 s
	bindAttempts     = 64
)

type traffic struct {
	packets, bytes atomic.Uint64
	limit          byteLimiter
}

func (t *traffic) add(n int) {
	t.packets.Add(1)
	t.bytes.Add(uint64(n))
}

// relay is what UDP and TCP relays share: where they are, the
// permissions of their allocation (mirrored from pion's events, so that
// counters count only what is relayed) and their pinholes.
type relay struct {
	s        *Server
	tcp      bool
	local    netip.AddrPort
	external netip.AddrPort
	method   string
	created  time.Time
	sock     io.Closer // the udpRelay or tcpRelay this is part of
	u        *udpRelay // nil for a TCP relay

	perms            atomic.Pointer[map[netip.Addr]bool]
	toPeer, fromPeer traffic
	// ownPeers are the other allocations' relays (their relayed and
	// local addresses) this one was permitted to reach under
	// Config.RelayBetweenAllocations; nil until one is. With a permission
	// for one of the server's own addresses, they are the only ports of
	// such an address it sends to or takes packets from.
	ownPeers atomic.Pointer[map[netip.AddrPort]bool]

	mu       sync.Mutex // guards following
	learnt   time.Time  // when STUN last confirmed external
	release  func()     // the port mapping, or nil
	pinholes map[netip.AddrPort]func()
	closed   bool
}

func (r *relay) permitted(a netip.Addr) bool {
	m := r.perms.Load()
	return m != nil && (*m)[a]
}

func (r *relay) permissionCount() int {
	if m := r.perms.Load(); m != nil {
		return len(*m)
	}
	return 0
}

// setPermitted adds or removes a in the permission mirror (copy on
// write: readers on the relay path take no lock).
func (r *relay) setPermitted(a netip.Addr, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.perms.Load()
	m := make(map[netip.Addr]bool, 4)
	if old != nil {
		for k := range *old {
			m[k] = true
		}
	}
	if on {
		m[a] = true
	} else {
		delete(m, a)
	}
	r.perms.Store(&m)
}

// addOwnPeers adds relays of this server to the ones this relay may
// exchange packets with (copy on write, like perms).
func (r *relay) addOwnPeers(aps ...netip.AddrPort) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.ownPeers.Load()
	m := make(map[netip.AddrPort]bool, 4)
	if old != nil {
		for k := range *old {
			m[k] = true
		}
	}
	for _, ap := range aps {
		m[ap] = true
	}
	r.ownPeers.Store(&m)
}

// ownPeerRefused reports whether a packet between this relay and ap must
// not pass: ap is at one of the server's own addresses and is not a relay
// this one was permitted to reach. Relays that never were have nothing to
// check (pion relays only to permitted addresses, and an own address is
// permitted only through ownPeers or an operator's single-address allow).
func (r *relay) ownPeerRefused(ap netip.AddrPort) bool {
	m := r.ownPeers.Load()
	if m == nil {
		return false
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	return !(*m)[ap] && r.s.policy.refusesAsOwn(ap.Addr())
}

// keep puts the flow towards remote under the keeper until the relay
// closes or drop(remote) is called.
func (r *relay) keep(remote netip.AddrPort, refresh func(context.Context) (netip.AddrPort, error)) {
	ph := r.s.cfg.Pinholes
	if ph == nil || r.tcp {
		return
	}
	r.mu.Lock()
	if r.closed || r.pinholes[remote] != nil {
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	release := ph.Keep(Pinhole{Proto: "udp", Local: r.local, External: r.external, Remote: remote, Refresh: refresh})
	r.mu.Lock()
	if r.closed || r.pinholes[remote] != nil {
		r.mu.Unlock()
		release()
		return
	}
	if r.pinholes == nil {
		r.pinholes = map[netip.AddrPort]func(){}
	}
	r.pinholes[remote] = release
	r.mu.Unlock()
}

func (r *relay) drop(remote netip.AddrPort) {
	r.mu.Lock()
	release := r.pinholes[remote]
	delete(r.pinholes, remote)
	r.mu.Unlock()
	if release != nil {
		release()
	}
}

func (r *relay) udp() *udpRelay { return r.u }

// closeSocket closes the relay's socket (and so the relay).
func (r *relay) closeSocket() { r.sock.Close() }

// cleanup releases what the relay holds outside its socket; it runs once.
func (r *relay) cleanup() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	release, pinholes := r.release, r.pinholes
	r.release, r.pinholes = nil, nil
	r.mu.Unlock()
	for _, p := range pinholes {
		p()
	}
	if release != nil {
		release()
	}
	r.s.forgetRelay(r)
}

// behindNAT reports whether the relay's flows cross a NAT that filters
// and that the relayed address goes through: only then do filters need
// opening and pinholes keeping. (A port mapping forwards whatever comes;
// a local relay reports an address that only its LAN reaches.)
func (r *relay) behindNAT() bool {
	return r.method == MethodSTUN || r.method == MethodAssumed
}

// udpRelay is the relay socket of a UDP allocation, handed to pion as
// its net.PacketConn. It drops what pion would drop anyway (packets from
// peers without permission) so that counters count relayed traffic,
// enforces the bandwidth cap, and takes the STUN server's answers to
// keepalives out of the stream.
type udpRelay struct {
	relay
	conn   net.PacketConn
	handed atomic.Bool // pion reads the socket now

	stunMu   sync.Mutex // guards stunWait
	stunWait map[[stun.TransactionIDSize]byte]chan netip.AddrPort
}

var _ net.PacketConn = (*udpRelay)(nil)

func (r *udpRelay) ReadFrom(p []byte) (int, net.Addr, error) {
	stunServer := r.s.cfg.STUNServer
	for {
		n, from, err := r.conn.ReadFrom(p)
		if err != nil {
			return n, from, err
		}
		src := addrPortOf(from)
		if src == stunServer && r.takeSTUN(p[:n]) {
			continue
		}
		if !r.permitted(src.Addr()) {
			r.s.refuse(ReasonNoPermission)
			continue
		}
		if r.ownPeerRefused(src) {
			r.s.refuse(ReasonOwnAddress)
			continue
		}
		if !r.fromPeer.limit.allow(r.s.clk.Now(), n) {
			r.s.refuse(ReasonBandwidth)
			continue
		}
		r.fromPeer.add(n)
		return n, from, nil
	}
}

func (r *udpRelay) WriteTo(p []byte, to net.Addr) (int, error) {
	if r.ownPeers.Load() != nil && (r.ownPeerRefused(addrPortOf(to)) || !r.s.liveRelayIfOwn(addrPortOf(to))) {
		r.s.refuse(ReasonOwnAddress)
		return len(p), nil
	}
	if !r.toPeer.limit.allow(r.s.clk.Now(), len(p)) {
		r.s.refuse(ReasonBandwidth)
		return len(p), nil
	}
	n, err := r.conn.WriteTo(p, to)
	if err == nil {
		r.toPeer.add(n)
	}
	return n, err
}

func (r *udpRelay) Close() error {
	r.cleanup()
	return r.conn.Close()
}

func (r *udpRelay) LocalAddr() net.Addr                { return r.conn.LocalAddr() }
func (r *udpRelay) SetDeadline(t time.Time) error      { return r.conn.SetDeadline(t) }
func (r *udpRelay) SetReadDeadline(t time.Time) error  { return r.conn.SetReadDeadline(t) }
func (r *udpRelay) SetWriteDeadline(t time.Time) error { return r.conn.SetWriteDeadline(t) }

// openFilter sends an empty datagram to peer, so that the NAT's filter
// lets the peer's packets to the relayed address in before the client
// sends anything. An empty datagram carries nothing a peer could take
// for media.
func (r *udpRelay) openFilter(peer netip.AddrPort) {
	if _, err := r.conn.WriteTo(nil, net.UDPAddrFromAddrPort(peer)); err != nil {
		r.s.log.Debug("turn: opening the NAT filter towards a peer", "relay", r.external, "peer", peer, "err", err)
	}
}

// refreshPeer is a peer pinhole's keepalive: an empty datagram.
func (r *udpRelay) refreshPeer(peer netip.AddrPort) func(context.Context) (netip.AddrPort, error) {
	return func(context.Context) (netip.AddrPort, error) {
		_, err := r.conn.WriteTo(nil, net.UDPAddrFromAddrPort(peer))
		return netip.AddrPort{}, err
	}
}

// refreshMapping is the STUN pinhole's keepalive: a Binding request from
// the relay socket; the answer arrives through pion's read loop and
// ReadFrom hands it over here. A changed mapping is logged and counted:
// the relayed address the client got no longer reaches the relay.
func (r *udpRelay) refreshMapping(ctx context.Context) (netip.AddrPort, error) {
	server := r.s.cfg.STUNServer
	var mapped netip.AddrPort
	var err error
	if r.handed.Load() {
		mapped, err = r.bindingViaReader(ctx, server)
	} else {
		deadline, ok := ctx.Deadline()
		if !ok {
			deadline = time.Now().Add(r.s.cfg.STUNTimeout)
		}
		mapped, err = stunBinding(r.conn, server, time.Until(deadline))
	}
	if err != nil {
		return netip.AddrPort{}, err
	}
	r.mu.Lock()
	r.learnt = r.s.clk.Now()
	r.mu.Unlock()
	if r.method == MethodSTUN && mapped != r.external {
		r.s.remaps.Add(1)
		r.s.log.Warn("turn: a relay's NAT mapping changed; its allocation's relayed address no longer reaches it",
			"relayed", r.external, "now", mapped, "local", r.local)
	}
	return mapped, nil
}

func (r *udpRelay) bindingViaReader(ctx context.Context, server netip.AddrPort) (netip.AddrPort, error) {
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ch := make(chan netip.AddrPort, 1)
	r.stunMu.Lock()
	if r.stunWait == nil {
		r.stunWait = map[[stun.TransactionIDSize]byte]chan netip.AddrPort{}
	}
	r.stunWait[req.TransactionID] = ch
	r.stunMu.Unlock()
	defer func() {
		r.stunMu.Lock()
		delete(r.stunWait, req.TransactionID)
		r.stunMu.Unlock()
	}()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.s.cfg.STUNTimeout)
		defer cancel()
	}
	dst := net.UDPAddrFromAddrPort(server)
	for rto := stunRTO; ; rto *= 2 {
		if _, err := r.conn.WriteTo(req.Raw, dst); err != nil {
			return netip.AddrPort{}, fmt.Errorf("STUN binding to %v from relay %v: %w", server, r.local, err)
		}
		t := time.NewTimer(rto)
		select {
		case m := <-ch:
			t.Stop()
			return m, nil
		case <-ctx.Done():
			t.Stop()
			return netip.AddrPort{}, fmt.Errorf("STUN binding to %v from relay %v: %w", server, r.local, ctx.Err())
		case <-t.C:
		}
	}
}

// takeSTUN hands a STUN server's answer to a waiting keepalive and
// reports whether it was one.
func (r *udpRelay) takeSTUN(b []byte) bool {
	if !stun.IsMessage(b) {
		return false
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil {
		return false
	}
	r.stunMu.Lock()
	ch := r.stunWait[m.TransactionID]
	r.stunMu.Unlock()
	if ch == nil {
		return false
	}
	if mapped, ok := mappedAddress(m); ok {
		select {
		case ch <- mapped:
		default:
		}
	}
	return true
}

// stunBinding asks server for conn's mapping, retransmitting from 250 ms
// with doubling until timeout. Nothing else may read conn meanwhile.
func stunBinding(conn net.PacketConn, server netip.AddrPort, timeout time.Duration) (netip.AddrPort, error) {
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		return netip.AddrPort{}, err
	}
	deadline := time.Now().Add(timeout)
	defer conn.SetReadDeadline(time.Time{})
	dst := net.UDPAddrFromAddrPort(server)
	buf := make([]byte, 1500)
	for rto := stunRTO; time.Now().Before(deadline); rto *= 2 {
		if _, err := conn.WriteTo(req.Raw, dst); err != nil {
			return netip.AddrPort{}, fmt.Errorf("STUN binding to %v: %w", server, err)
		}
		wait := time.Now().Add(rto)
		if wait.After(deadline) {
			wait = deadline
		}
		if err := conn.SetReadDeadline(wait); err != nil {
			return netip.AddrPort{}, fmt.Errorf("STUN binding to %v: %w", server, err)
		}
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return netip.AddrPort{}, fmt.Errorf("STUN binding to %v: %w", server, err)
			}
			if addrPortOf(from) != server || !stun.IsMessage(buf[:n]) {
				continue
			}
			m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if m.Decode() != nil || m.TransactionID != req.TransactionID || m.Type != stun.BindingSuccess {
				continue
			}
			if mapped, ok := mappedAddress(m); ok {
				return mapped, nil
			}
			return netip.AddrPort{}, fmt.Errorf("STUN binding to %v: answer without a mapped address", server)
		}
	}
	return netip.AddrPort{}, fmt.Errorf("STUN binding to %v: no answer within %v", server, timeout)
}

func mappedAddress(m *stun.Message) (netip.AddrPort, bool) {
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(m); err == nil {
		if a, ok := netip.AddrFromSlice(xor.IP); ok {
			return netip.AddrPortFrom(a.Unmap(), uint16(xor.Port)), true
		}
	}
	var plain stun.MappedAddress
	if err := plain.GetFrom(m); err == nil {
		if a, ok := netip.AddrFromSlice(plain.IP); ok {
			return netip.AddrPortFrom(a.Unmap(), uint16(plain.Port)), true
		}
	}
	return netip.AddrPort{}, false
}

// tcpRelay is the relayed listener of an RFC 6062 TCP allocation.
type tcpRelay struct {
	relay
	ln net.Listener
}

var _ net.Listener = (*tcpRelay)(nil)

func (t *tcpRelay) Accept() (net.Conn, error) {
	c, err := t.ln.Accept()
	if err != nil {
		return nil, err
	}
	return &countedConn{Conn: c, r: &t.relay}, nil
}

func (t *tcpRelay) Close() error {
	t.cleanup()
	return t.ln.Close()
}

func (t *tcpRelay) Addr() net.Addr { return t.ln.Addr() }

// countedConn counts a TCP relay's peer connection.
type countedConn struct {
	net.Conn
	r *relay
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.r.fromPeer.add(n)
	}
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.r.toPeer.add(n)
	}
	return n, err
}

// generator is the NAT-aware relay-address generator of one listener.
type generator struct {
	s      *Server
	listen netip.Addr
	tcp    bool // the listener is TCP: TCP relays are allowed
}

var _ turn.RelayAddressGenerator = (*generator)(nil)

func (g *generator) Validate() error { return nil }

func (g *generator) AllocatePacketConn(conf turn.AllocateListenerConfig) (net.PacketConn, net.Addr, error) {
	s := g.s
	bind, err := s.bindAddr(conf.Network, g.listen)
	if err != nil {
		s.releaseQuota(conf.UserID)
		return nil, nil, err
	}
	if conf.UserID == "" {
		// pion probing for a free even port (EVEN-PORT): a plain socket
		// that it closes again at once.
		conn, err := s.bindUDP(conf.Network, bind, 0)
		if err != nil {
			return nil, nil, err
		}
		return conn, conn.LocalAddr(), nil
	}
	r, err := s.udpRelayFor(conf.Network, bind, conf.RequestedPort)
	if err != nil {
		s.releaseQuota(conf.UserID)
		s.refuse(ReasonRelayUnavailable)
		s.log.Warn("turn: no relay for an allocation", "user", conf.UserID, "err", err)
		return nil, nil, err
	}
	r.handed.Store(true)
	if !s.registerRelay(&r.relay) {
		r.Close()
		s.releaseQuota(conf.UserID)
		return nil, nil, fmt.Errorf("relayed address %v already in use", r.external)
	}
	return r, net.UDPAddrFromAddrPort(r.external), nil
}

func (g *generator) AllocateListener(conf turn.AllocateListenerConfig) (net.Listener, net.Addr, error) {
	s := g.s
	if !g.tcp {
		s.releaseQuota(conf.UserID)
		s.refuse(ReasonTCPOverUDP)
		return nil, nil, errors.New("RFC 6062 TCP relays need a TCP control connection")
	}
	bind, err := s.bindAddr(conf.Network, g.listen)
	if err != nil {
		s.releaseQuota(conf.UserID)
		return nil, nil, err
	}
	t, err := s.tcpRelayFor(conf.Network, bind, conf.RequestedPort)
	if err != nil {
		s.releaseQuota(conf.UserID)
		s.refuse(ReasonRelayUnavailable)
		s.log.Warn("turn: no TCP relay for an allocation", "user", conf.UserID, "err", err)
		return nil, nil, err
	}
	if !s.registerRelay(&t.relay) {
		t.Close()
		s.releaseQuota(conf.UserID)
		return nil, nil, fmt.Errorf("relayed address %v already in use", t.external)
	}
	return t, net.TCPAddrFromAddrPort(t.external), nil
}

// AllocateConn dials a peer for an RFC 6062 Connect from the relay's
// local port (pion passes the relayed address, which behind a NAT is not
// ours to bind).
func (g *generator) AllocateConn(conf turn.AllocateConnConfig) (net.Conn, error) {
	s := g.s
	remote := addrPortOf(conf.RemoteAddr)
	if ref := s.policy.Check(remote.Addr()); ref != nil {
		s.refuse(ref.Reason)
		return nil, ref
	}
	r := s.relayByExternal(true, addrPortOf(conf.LocalAddr))
	if r == nil {
		return nil, fmt.Errorf("connecting to %v: relay %v is gone", remote, conf.LocalAddr)
	}
	d := s.net.CreateDialer(&net.Dialer{
		LocalAddr: net.TCPAddrFromAddrPort(r.local),
		Control:   reusePortControl,
		Timeout:   tcpConnectTimout,
	})
	c, err := d.Dial(conf.Network, remote.String())
	if err != nil {
		return nil, fmt.Errorf("connecting to %v from relay %v: %w", remote, r.local, err)
	}
	return &countedConn{Conn: c, r: r}, nil
}

// bindAddr picks the local address of a relay of network's family: the
// listener's own address when it is of that family (the client reached
// us there), else the first listen address of the family.
func (s *Server) bindAddr(network string, listen netip.Addr) (netip.Addr, error) {
	want6 := network == "udp6" || network == "tcp6"
	if listen.Is6() == want6 {
		return listen, nil
	}
	for _, a := range s.listenAddrs {
		if a.Is6() == want6 {
			return a, nil
		}
	}
	fam := "IPv4"
	if want6 {
		fam = "IPv6"
	}
	return netip.Addr{}, fmt.Errorf("no %s address to relay from", fam)
}

// bindUDP binds a UDP socket on ip, on port or, when port is 0, on a
// random port in the relay range.
func (s *Server) bindUDP(network string, ip netip.Addr, port int) (net.PacketConn, error) {
	if port != 0 {
		return s.net.ListenPacket(network, netip.AddrPortFrom(ip, uint16(port)).String())
	}
	var last error
	for range bindAttempts {
		p := s.randomRelayPort()
		c, err := s.net.ListenPacket(network, netip.AddrPortFrom(ip, p).String())
		if err == nil {
			return c, nil
		}
		last = err
	}
	return nil, fmt.Errorf("binding a UDP relay port on %v in %d-%d: %w", ip, s.cfg.RelayPortMin, s.cfg.RelayPortMax, last)
}

func (s *Server) randomRelayPort() uint16 {
	lo, hi := int(s.cfg.RelayPortMin), int(s.cfg.RelayPortMax)
	return uint16(lo + rand.IntN(hi-lo+1))
}

// udpRelayFor returns a relay bound on bind: a ready one when it can,
// else one prepared now.
func (s *Server) udpRelayFor(network string, bind netip.Addr, port int) (*udpRelay, error) {
	if port == 0 {
		if r := s.takeReady(bind); r != nil {
			return r, nil
		}
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.STUNTimeout+5*time.Second)
	defer cancel()
	return s.prepareUDP(ctx, network, bind, port)
}

// prepareUDP binds a relay socket and finds the address the outside
// reaches it at.
func (s *Server) prepareUDP(ctx context.Context, network string, bind netip.Addr, port int) (*udpRelay, error) {
	conn, err := s.bindUDP(network, bind, port)
	if err != nil {
		return nil, err
	}
	local := addrPortOf(conn.LocalAddr())
	r := &udpRelay{conn: conn}
	r.relay = relay{s: s, local: local, created: s.clk.Now(), sock: r, u: r}
	r.toPeer.limit = s.newByteLimiter()
	r.fromPeer.limit = s.newByteLimiter()
	if err := s.learnExternal(ctx, &r.relay, func(timeout time.Duration) (netip.AddrPort, error) {
		return stunBinding(conn, s.cfg.STUNServer, timeout)
	}); err != nil {
		conn.Close()
		return nil, err
	}
	return r, nil
}

func (s *Server) tcpRelayFor(network string, bind netip.Addr, port int) (*tcpRelay, error) {
	lc := s.net.CreateListenConfig(&net.ListenConfig{Control: reusePortControl})
	var ln net.Listener
	var err error
	for i := range bindAttempts {
		p := uint16(port)
		if port == 0 {
			p = s.randomRelayPort()
		}
		ln, err = lc.Listen(s.ctx, network, netip.AddrPortFrom(bind, p).String())
		if err == nil || port != 0 || i == bindAttempts-1 {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("binding a TCP relay port on %v: %w", bind, err)
	}
	t := &tcpRelay{ln: ln}
	t.relay = relay{s: s, tcp: true, local: addrPortOf(ln.Addr()), created: s.clk.Now(), sock: t}
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	if err := s.learnExternal(ctx, &t.relay, nil); err != nil {
		ln.Close()
		return nil, err
	}
	return t, nil
}

// learnExternal sets r.external and r.method: a public bind address is
// its own external address; then Config.ExternalIP; then a verified port
// mapping; then, for UDP, STUN from the socket itself; else the local
// address.
func (s *Server) learnExternal(ctx context.Context, r *relay, binding func(time.Duration) (netip.AddrPort, error)) error {
	a := r.local.Addr()
	switch {
	case a.Is6() || isPublic(a):
		r.external, r.method = r.local, MethodDirect
		return nil
	case s.cfg.ExternalIP.IsValid():
		r.external, r.method = netip.AddrPortFrom(s.cfg.ExternalIP, r.local.Port()), MethodStatic
		return nil
	}
	if pm := s.cfg.PortMapper; pm != nil {
		proto := "udp"
		if r.tcp {
			proto = "tcp"
		}
		ext, release, err := pm.Map(ctx, proto, r.local)
		s.noteMapper(err)
		if err == nil {
			r.external, r.method, r.release = ext, MethodMapped, release
			return nil
		}
	}
	if binding != nil && s.cfg.STUNServer.IsValid() && a.Is4() {
		timeout := s.cfg.STUNTimeout
		if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
			timeout = time.Until(d)
		}
		mapped, err := binding(timeout)
		s.noteSTUN(mapped, err)
		if err == nil {
			r.external, r.method, r.learnt = mapped, MethodSTUN, s.clk.Now()
			return nil
		}
		if ext := s.lastExternal(); ext.IsValid() {
			r.external, r.method = netip.AddrPortFrom(ext, r.local.Port()), MethodAssumed
			return nil
		}
	}
	r.external, r.method = r.local, MethodLocal
	return nil
}

// isPublic reports whether a is a global unicast address outside every
// special-purpose range, so a relay bound on it needs no NAT handling.
func isPublic(a netip.Addr) bool {
	return a.IsGlobalUnicast() && defaultPolicy.Check(a) == nil
}

var defaultPolicy = NewPeerPolicy(nil, nil)

// addrPortOf converts the net.Addr of a UDP or TCP socket, with an
// IPv4-mapped address reduced to IPv4; anything else yields the zero value.
func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
