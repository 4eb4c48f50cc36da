package turn

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"github.com/pion/transport/v5/vnet"

	"github.com/superpeer/superpeer/nat/clock"
)

// natWorld is a pion vnet: a WAN with a STUN server and a peer, and a
// home LAN behind a NAT with endpoint-independent mapping and
// address-and-port-dependent filtering (what Linux masquerade does),
// holding the superpeer and a client.
type natWorld struct {
	wan, lan      *vnet.Router
	stunNet       *vnet.Net // 1.2.3.4
	peerNet       *vnet.Net // 1.2.3.5
	serverNet     *vnet.Net // 192.168.1.10
	clientNet     *vnet.Net // 192.168.1.11
	stunAddr      netip.AddrPort
	stunSeen      chan netip.AddrPort // sources of Binding requests
	natExternal   netip.Addr
	superpeerAddr netip.Addr
}

func newNATWorld(t *testing.T) *natWorld {
	t.Helper()
	w := &natWorld{
		stunAddr:      netip.MustParseAddrPort("1.2.3.4:3478"),
		stunSeen:      make(chan netip.AddrPort, 64),
		natExternal:   netip.MustParseAddr("5.6.7.8"),
		superpeerAddr: netip.MustParseAddr("192.168.1.10"),
	}
	var err error
	must := func(e error) {
		t.Helper()
		if e != nil {
			t.Fatal(e)
		}
	}
	quiet := pionLogs{log: slog.New(slog.DiscardHandler), limit: newLogLimiter(clock.Real())}
	w.wan, err = vnet.NewRouter(&vnet.RouterConfig{CIDR: "0.0.0.0/0", LoggerFactory: quiet})
	must(err)
	w.stunNet, err = vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{"1.2.3.4"}})
	must(err)
	must(w.wan.AddNet(w.stunNet))
	w.peerNet, err = vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{"1.2.3.5"}})
	must(err)
	must(w.wan.AddNet(w.peerNet))
	w.lan, err = vnet.NewRouter(&vnet.RouterConfig{
		StaticIPs: []string{w.natExternal.String()},
		CIDR:      "192.168.1.0/24",
		NATType: &vnet.NATType{
			MappingBehavior:   vnet.EndpointIndependent,
			FilteringBehavior: vnet.EndpointAddrPortDependent,
		},
		LoggerFactory: quiet,
	})
	must(err)
	w.serverNet, err = vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{"192.168.1.10"}})
	must(err)
	must(w.lan.AddNet(w.serverNet))
	w.clientNet, err = vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{"192.168.1.11"}})
	must(err)
	must(w.lan.AddNet(w.clientNet))
	must(w.wan.AddRouter(w.lan))
	must(w.wan.Start())
	t.Cleanup(func() { w.wan.Stop() })

	conn, err := w.stunNet.ListenPacket("udp4", w.stunAddr.String())
	must(err)
	t.Cleanup(func() { conn.Close() })
	go serveSTUN(conn, w.stunSeen)
	return w
}

// serveSTUN answers Binding requests with XOR-MAPPED-ADDRESS and reports
// each source on seen.
func serveSTUN(conn net.PacketConn, seen chan<- netip.AddrPort) {
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return
		}
		m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if m.Decode() != nil || m.Type != stun.BindingRequest {
			continue
		}
		src := addrPortOf(from)
		select {
		case seen <- src:
		default:
		}
		resp := stun.MustBuild(&stun.Message{TransactionID: m.TransactionID}, stun.BindingSuccess,
			&stun.XORMappedAddress{IP: src.Addr().AsSlice(), Port: int(src.Port())}, stun.Fingerprint)
		conn.WriteTo(resp.Raw, from)
	}
}

// startOnNAT starts a server on the world's superpeer.
func (w *natWorld) startServer(t *testing.T, clk clock.Clock, edit func(*Config)) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = []netip.Addr{w.superpeerAddr}
	cfg.UDPListeners = 1 // vnet cannot share a port
	cfg.TCP = false      // vnet has no TCP
	cfg.STUNServer = w.stunAddr
	cfg.ReadyRelays = 0
	cfg.Secret = func() []byte { return testSecret }
	cfg.Logger = slog.New(slog.DiscardHandler)
	if edit != nil {
		edit(&cfg)
	}
	s, err := New(cfg, w.serverNet, clk)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func (w *natWorld) client(t *testing.T, s *Server) *rawClient {
	t.Helper()
	creds, err := s.Credentials("alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := w.clientNet.Dial("udp4", s.UDPAddrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	return newRawClient(t, c, creds.Username, creds.Password)
}

// peer is a UDP socket on the WAN.
func (w *natWorld) peer(t *testing.T) (net.PacketConn, netip.AddrPort) {
	t.Helper()
	c, err := w.peerNet.ListenPacket("udp4", "1.2.3.5:5000")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, addrPortOf(c.LocalAddr())
}

// readFrom waits up to timeout for a datagram on c.
func readFrom(c net.PacketConn, timeout time.Duration) ([]byte, netip.AddrPort, error) {
	buf := make([]byte, 1500)
	c.SetReadDeadline(time.Now().Add(timeout))
	n, from, err := c.ReadFrom(buf)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	return buf[:n], addrPortOf(from), nil
}

// fakeKeeper records pinholes.
type fakeKeeper struct {
	mu   sync.Mutex
	kept map[netip.AddrPort]Pinhole // by remote
}

func (k *fakeKeeper) Keep(p Pinhole) func() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.kept == nil {
		k.kept = map[netip.AddrPort]Pinhole{}
	}
	k.kept[p.Remote] = p
	return func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		delete(k.kept, p.Remote)
	}
}

func (k *fakeKeeper) get(remote netip.AddrPort) (Pinhole, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	p, ok := k.kept[remote]
	return p, ok
}

func (k *fakeKeeper) count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.kept)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRelayedAddressThroughNAT: behind an endpoint-independent NAT the
// relay reports the mapping that STUN learnt from the relay socket (not
// its LAN address); creating a permission sends first towards the peer,
// so the peer's packet to the relayed address passes the NAT's
// address-and-port-dependent filter; the relay's two flows are under the
// keeper until the allocation ends.
func TestRelayedAddressThroughNAT(t *testing.T) {
	w := newNATWorld(t)
	keeper := &fakeKeeper{}
	s := w.startServer(t, nil, func(c *Config) { c.Pinholes = keeper })
	c := w.client(t, s)
	peer, peerAddr := w.peer(t)

	relayed, code := c.allocate(17, 0)
	if code != 0 {
		t.Fatalf("allocate: %d", code)
	}
	if relayed.Addr() != w.natExternal {
		t.Fatalf("relayed address %v is not on the NAT's external address %v", relayed, w.natExternal)
	}
	seen := <-w.stunSeen
	if seen != relayed {
		t.Fatalf("relayed address %v, but the STUN server saw the relay socket as %v", relayed, seen)
	}

	if code := c.peerRequest(stun.MethodCreatePermission, peerAddr); code != 0 {
		t.Fatalf("CreatePermission: %d", code)
	}
	data, from, err := readFrom(peer, 3*time.Second)
	if err != nil || len(data) != 0 || from != relayed {
		t.Fatalf("the filter-opening datagram: %d bytes from %v, %v; want 0 bytes from %v", len(data), from, err, relayed)
	}
	if _, err := peer.WriteTo([]byte("peer speaks first"), net.UDPAddrFromAddrPort(relayed)); err != nil {
		t.Fatal(err)
	}
	src, got, err := c.receive(3 * time.Second)
	if err != nil || src != peerAddr || string(got) != "peer speaks first" {
		t.Fatalf("the peer's first packet through the NAT: %q from %v, %v", got, src, err)
	}

	ph, ok := keeper.get(w.stunAddr)
	if !ok || ph.External != relayed || ph.Local.Addr() != w.superpeerAddr {
		t.Fatalf("the STUN flow of the relay is not under the keeper: %+v %v", ph, ok)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	mapped, err := ph.Refresh(ctx)
	if err != nil || mapped != relayed {
		t.Fatalf("keepalive through the live relay: mapped %v, %v; want %v", mapped, err, relayed)
	}
	if _, ok := keeper.get(peerAddr); !ok {
		t.Fatalf("the peer flow is not under the keeper")
	}

	resp, err := c.do(stun.MethodRefresh, rawAttr(stun.AttrLifetime, []byte{0, 0, 0, 0}))
	if err != nil || errorCodeOf(resp) != 0 {
		t.Fatalf("deleting the allocation: %v %v", err, resp)
	}
	waitFor(t, 3*time.Second, "pinholes released after the allocation ended", func() bool { return keeper.count() == 0 })
}

// TestFilterBlocksWithoutOpening is the control: with OpenFilters off,
// the peer's first packet dies at the NAT's filter; once the client has
// sent through the relay, the peer's packets pass.
func TestFilterBlocksWithoutOpening(t *testing.T) {
	w := newNATWorld(t)
	s := w.startServer(t, nil, func(c *Config) { c.OpenFilters = false })
	c := w.client(t, s)
	peer, peerAddr := w.peer(t)
	relayed, code := c.allocate(17, 0)
	if code != 0 {
		t.Fatalf("allocate: %d", code)
	}
	if code := c.peerRequest(stun.MethodCreatePermission, peerAddr); code != 0 {
		t.Fatalf("CreatePermission: %d", code)
	}
	if _, err := peer.WriteTo([]byte("too early"), net.UDPAddrFromAddrPort(relayed)); err != nil {
		t.Fatal(err)
	}
	// The absence of a packet is what is tested: 500 ms is an age on a
	// virtual network that delivers in microseconds.
	if src, got, err := c.receive(500 * time.Millisecond); err == nil {
		t.Fatalf("the peer's packet passed a filter nobody opened: %q from %v", got, src)
	}
	c.send(peerAddr, []byte("client first"))
	if got, _, err := readFrom(peer, 3*time.Second); err != nil || string(got) != "client first" {
		t.Fatalf("client's packet at the peer: %q, %v", got, err)
	}
	if _, err := peer.WriteTo([]byte("answer"), net.UDPAddrFromAddrPort(relayed)); err != nil {
		t.Fatal(err)
	}
	if _, got, err := c.receive(3 * time.Second); err != nil || string(got) != "answer" {
		t.Fatalf("the peer's answer: %q, %v", got, err)
	}
}

// fakeMapper maps local ports to made-up external ports on the NAT's
// address, or fails.
type fakeMapper struct {
	mu       sync.Mutex
	fail     bool
	next     uint16
	released []netip.AddrPort
}

func (m *fakeMapper) Map(_ context.Context, proto string, local netip.AddrPort) (netip.AddrPort, func(), error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail {
		return netip.AddrPort{}, nil, errors.New("no IGD answered")
	}
	m.next++
	ext := netip.AddrPortFrom(netip.MustParseAddr("5.6.7.8"), 40000+m.next)
	return ext, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.released = append(m.released, ext)
	}, nil
}

// TestPortMappingPreferred: a verified port mapping is reported instead of
// the STUN mapping and released when the allocation ends; when the
// gateway maps nothing, STUN takes over.
func TestPortMappingPreferred(t *testing.T) {
	w := newNATWorld(t)
	mapper := &fakeMapper{}
	s := w.startServer(t, nil, func(c *Config) { c.PortMapper = mapper })
	c := w.client(t, s)
	relayed, code := c.allocate(17, 0)
	if code != 0 {
		t.Fatalf("allocate: %d", code)
	}
	if relayed != netip.MustParseAddrPort("5.6.7.8:40001") {
		t.Fatalf("relayed %v, want the port mapping 5.6.7.8:40001", relayed)
	}
	if m := s.Status().Relays[0].Method; m != MethodMapped {
		t.Fatalf("method %q, want %q", m, MethodMapped)
	}
	resp, err := c.do(stun.MethodRefresh, rawAttr(stun.AttrLifetime, []byte{0, 0, 0, 0}))
	if err != nil || errorCodeOf(resp) != 0 {
		t.Fatalf("deleting the allocation: %v %v", err, resp)
	}
	waitFor(t, 3*time.Second, "the port mapping released", func() bool {
		mapper.mu.Lock()
		defer mapper.mu.Unlock()
		return len(mapper.released) == 1 && mapper.released[0] == relayed
	})

	mapper.mu.Lock()
	mapper.fail = true
	mapper.mu.Unlock()
	c2 := w.client(t, s)
	relayed2, code := c2.allocate(17, 0)
	if code != 0 {
		t.Fatalf("allocate without a mapping: %d", code)
	}
	if seen := <-w.stunSeen; seen != relayed2 {
		t.Fatalf("without a mapping: relayed %v, STUN saw %v", relayed2, seen)
	}
}

// TestReadyPool: the server keeps ReadyRelays sockets with their mapping
// learnt; an allocation takes one without a STUN round trip of its own;
// waiting sockets are learnt again when half their allowed age has passed
// (fake clock).
func TestReadyPool(t *testing.T) {
	w := newNATWorld(t)
	clk := clock.NewFake(time.Now())
	s := w.startServer(t, clk, func(c *Config) { c.ReadyRelays = 2 })
	waitFor(t, 5*time.Second, "two ready relays", func() bool { return s.Status().ReadyRelays == 2 })
	pooled := map[netip.AddrPort]bool{<-w.stunSeen: true, <-w.stunSeen: true}

	c := w.client(t, s)
	relayed, code := c.allocate(17, 0)
	if code != 0 {
		t.Fatalf("allocate: %d", code)
	}
	if !pooled[relayed] {
		t.Fatalf("relayed %v is none of the ready relays %v", relayed, pooled)
	}
	// The pool refills: one new socket learns its mapping.
	refill := <-w.stunSeen
	if pooled[refill] {
		t.Fatalf("refill probed %v, an old socket", refill)
	}
	waitFor(t, 5*time.Second, "the pool refilled", func() bool { return s.Status().ReadyRelays == 2 })

	// Half the allowed age later the pool loop learns the waiting ones
	// again.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := clk.WaitTimers(ctx, 2); err != nil { // the pool's and the own-address refresh
		t.Fatal(err)
	}
	clk.Advance(s.cfg.MappingMaxAge / 2)
	again := map[netip.AddrPort]bool{<-w.stunSeen: true, <-w.stunSeen: true}
	for a := range again {
		if !pooled[a] && a != refill {
			t.Fatalf("re-learning probed %v, not a waiting socket (%v, %v)", a, pooled, refill)
		}
	}
	if again[relayed] {
		t.Fatalf("the socket handed to the allocation was probed by the pool")
	}
}
