package turn

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/superpeer/superpeer/nat/clock"
)

var testSecret = []byte("site secret for tests")

// startLoopback starts a server on 127.0.0.1 (and ::1 when v6 is true)
// with the host network, UDP and TCP, two UDP listeners sharing the port.
func startLoopback(t *testing.T, clk clock.Clock, v6 bool, edit func(*Config)) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	if v6 {
		cfg.Listen = append(cfg.Listen, netip.IPv6Loopback())
	}
	cfg.Port = 0
	cfg.UDPListeners = 2
	cfg.Secret = func() []byte { return testSecret }
	cfg.Logger = slog.New(slog.DiscardHandler)
	if edit != nil {
		edit(&cfg)
	}
	s, err := New(cfg, nil, clk)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("closing the server: %v", err)
		}
	})
	return s
}

// client connects a raw client to the server's first listener of the
// family and transport asked for, with fresh credentials for user.
func client(t *testing.T, s *Server, network, user string) *rawClient {
	t.Helper()
	creds, err := s.Credentials(user, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return clientWith(t, s, network, creds.Username, creds.Password)
}

func clientWith(t *testing.T, s *Server, network, username, password string) *rawClient {
	t.Helper()
	addrs := s.UDPAddrs()
	if strings.HasPrefix(network, "tcp") {
		addrs = s.TCPAddrs()
	}
	for _, a := range addrs {
		if a.Addr().Is6() != strings.HasSuffix(network, "6") {
			continue
		}
		c, err := net.Dial(network, a.String())
		if err != nil {
			t.Fatal(err)
		}
		return newRawClient(t, c, username, password)
	}
	t.Fatalf("the server has no %s listener: udp %v tcp %v", network, s.UDPAddrs(), s.TCPAddrs())
	return nil
}

// hostAddr returns a non-loopback IPv4 address of this host, the
// superpeer's "own LAN address" in a loopback test.
func hostAddr(t *testing.T) netip.Addr {
	as, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap().Is4() && !ip.IsLoopback() {
				return ip.Unmap()
			}
		}
	}
	return netip.Addr{}
}

func hasIPv6Loopback() bool {
	c, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		return false
	}
	c.Close()
	return true
}

var attackList = []string{
	"0.0.0.0", "::", "127.0.0.1", "::1", "::ffff:127.0.0.1", "::127.0.0.1", "2002:7f00:1::1",
	"64:ff9b::7f00:1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
	"224.0.0.1", "255.255.255.255", "240.0.0.1", "fc00::1", "fe80::1",
}

// TestAttackListRefused sends CreatePermission, ChannelBind and (on a TCP
// allocation) Connect for every address of the attack list and the
// superpeer's own address, over UDP, TCP and IPv6, and expects 403 for
// each; an allowed peer in the same session gets through, so the 403s
// are the policy's and not a broken session's.
func TestAttackListRefused(t *testing.T) {
	own := hostAddr(t)
	allowed := netip.MustParseAddrPort("203.0.113.5:4000")
	v6 := hasIPv6Loopback()
	s := startLoopback(t, nil, v6, func(c *Config) {
		c.AllowPeers = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("127.0.0.2/32")}
		if own.IsValid() {
			// Even with the superpeer's whole subnet allowed, the superpeer
			// itself stays out of reach.
			c.AllowPeers = append(c.AllowPeers, netip.PrefixFrom(own, 24).Masked())
		}
	})
	targets := append([]string(nil), attackList...)
	if own.IsValid() {
		targets = append(targets, own.String())
	} else {
		t.Log("this host has no non-loopback IPv4 address: the own-address row is left out")
	}

	// A TCP peer that a Connect may reach: 127.0.0.2 is on loopback but is
	// not an address of an interface, and it is allowed by /32.
	peerLn, err := net.Listen("tcp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peerLn.Close()
	go func() {
		for {
			c, err := peerLn.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	tcpPeer := addrPortOf(peerLn.Addr())

	type session struct {
		network   string
		transport byte
		methods   []stun.Method
		control   netip.AddrPort
	}
	sessions := []session{
		{"udp4", 17, []stun.Method{stun.MethodCreatePermission, stun.MethodChannelBind}, allowed},
		{"tcp4", 17, []stun.Method{stun.MethodCreatePermission, stun.MethodChannelBind}, allowed},
		{"tcp4", 6, []stun.Method{stun.MethodConnect}, tcpPeer},
	}
	if v6 {
		sessions = append(sessions, session{"udp6", 17, []stun.Method{stun.MethodCreatePermission, stun.MethodChannelBind}, netip.AddrPort{}})
	}
	refused := 0
	for _, se := range sessions {
		name := se.network + "/" + map[byte]string{17: "udp-relay", 6: "tcp-relay"}[se.transport]
		t.Run(name, func(t *testing.T) {
			c := client(t, s, se.network, "mallory")
			if _, code := c.allocate(se.transport, 0); code != 0 {
				t.Fatalf("allocation refused with %d", code)
			}
			for _, m := range se.methods {
				for _, target := range targets {
					peer := netip.AddrPortFrom(netip.MustParseAddr(target), 3480)
					if code := c.peerRequest(m, peer); code != stun.CodeForbidden {
						t.Errorf("%v to %v: got %d, want 403", m, target, code)
					} else {
						refused++
					}
				}
				if se.control.IsValid() {
					if code := c.peerRequest(m, se.control); code != 0 {
						t.Errorf("%v to the allowed peer %v: got %d, want success", m, se.control, code)
					}
				}
			}
		})
	}
	st := s.Status()
	if got := st.Refusals[ReasonForbiddenPeer] + st.Refusals[ReasonOwnAddress]; got != uint64(refused) {
		t.Errorf("refusals counted %d forbidden + %d own, want %d in all", st.Refusals[ReasonForbiddenPeer], st.Refusals[ReasonOwnAddress], refused)
	}
	if own.IsValid() && st.Refusals[ReasonOwnAddress] == 0 {
		t.Errorf("the superpeer's own address %v was not refused as such", own)
	}
}

// TestTCPAllocationOverUDPRefused: RFC 6062 allocations need a TCP
// control connection.
func TestTCPAllocationOverUDPRefused(t *testing.T) {
	s := startLoopback(t, nil, false, nil)
	c := client(t, s, "udp4", "alice")
	if _, code := c.allocate(6, 0); code != stun.CodeBadRequest {
		t.Fatalf("TCP allocation over UDP: got %d, want 400", code)
	}
	if n := s.Status().Refusals[ReasonTCPOverUDP]; n != 1 {
		t.Fatalf("tcp_over_udp refusals: %d, want 1", n)
	}
}

// TestQuotas: the per-user quota refuses a user's allocation beyond it,
// the total quota anyone's, both with 486, and a freed slot can be used
// again.
func TestQuotas(t *testing.T) {
	s := startLoopback(t, nil, false, func(c *Config) {
		c.UserQuota = 2
		c.TotalQuota = 3
	})
	alice := []*rawClient{client(t, s, "udp4", "alice"), client(t, s, "udp4", "alice"), client(t, s, "udp4", "alice")}
	for i, c := range alice[:2] {
		if _, code := c.allocate(17, 0); code != 0 {
			t.Fatalf("alice's allocation %d: %d", i+1, code)
		}
	}
	if _, code := alice[2].allocate(17, 0); code != stun.CodeAllocQuotaReached {
		t.Fatalf("alice's third allocation with a user quota of 2: got %d, want 486", code)
	}
	bob := []*rawClient{client(t, s, "tcp4", "bob"), client(t, s, "udp4", "bob")}
	if _, code := bob[0].allocate(17, 0); code != 0 {
		t.Fatalf("bob's first allocation: %d", code)
	}
	if _, code := bob[1].allocate(17, 0); code != stun.CodeAllocQuotaReached {
		t.Fatalf("a fourth allocation with a total quota of 3: got %d, want 486", code)
	}
	st := s.Status()
	if st.Allocations != 3 || st.Refusals[ReasonUserQuota] != 1 || st.Refusals[ReasonTotalQuota] != 1 {
		t.Fatalf("status: %d allocations, %d user-quota and %d total-quota refusals; want 3, 1, 1",
			st.Allocations, st.Refusals[ReasonUserQuota], st.Refusals[ReasonTotalQuota])
	}
	// Alice deletes one (Refresh with lifetime 0): her third now fits.
	resp, err := alice[0].do(stun.MethodRefresh, rawAttr(stun.AttrLifetime, []byte{0, 0, 0, 0}))
	if err != nil || errorCodeOf(resp) != 0 {
		t.Fatalf("deleting an allocation: %v %v", err, resp)
	}
	if _, code := alice[2].allocate(17, 0); code != 0 {
		t.Fatalf("alice's allocation after freeing a slot: got %d", code)
	}
}

// TestCredentialsRefused: an expired credential, one that outlives the
// lifetime cap, a wrong password and a malformed username all get 401;
// the same credential works until it expires (fake clock).
func TestCredentialsRefused(t *testing.T) {
	clk := clock.NewFake(time.Now())
	s := startLoopback(t, clk, false, func(c *Config) { c.MaxCredentialLifetime = time.Hour })

	good, err := s.Credentials("alice", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, code := clientWith(t, s, "udp4", good.Username, good.Password).allocate(17, 0); code != 0 {
		t.Fatalf("fresh credential: %d", code)
	}
	clk.Advance(11 * time.Minute)
	if _, code := clientWith(t, s, "udp4", good.Username, good.Password).allocate(17, 0); code != stun.CodeUnauthorized {
		t.Fatalf("expired credential: got %d, want 401", code)
	}

	long, long2, err := MintCredentials(testSecret, "alice", clk.Now().Add(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := s.Credentials("alice", 0)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, user, pass, reason string }{
		{"outlives the cap", long, long2, ReasonCredentialLifetime},
		{"wrong password", fresh.Username, "not the password", ReasonBadPassword},
		{"malformed", "alice", fresh.Password, ReasonCredentialMalformed},
	}
	for _, tc := range cases {
		before := s.Status().Refusals[tc.reason]
		if _, code := clientWith(t, s, "udp4", tc.user, tc.pass).allocate(17, 0); code != stun.CodeUnauthorized {
			t.Errorf("%s: got %d, want 401", tc.name, code)
		}
		if after := s.Status().Refusals[tc.reason]; after != before+1 {
			t.Errorf("%s: %s refusals went from %d to %d, want one more", tc.name, tc.reason, before, after)
		}
	}
	if n := s.Status().Refusals[ReasonCredentialExpired]; n != 1 {
		t.Errorf("credential_expired refusals: %d, want 1", n)
	}
}

// TestUnauthorizedRateLimit: one source gets UnauthorizedBurst 401
// answers, then silence, then UnauthorizedRate more a second (fake
// clock); another source is not affected.
func TestUnauthorizedRateLimit(t *testing.T) {
	clk := clock.NewFake(time.Now())
	s := startLoopback(t, clk, false, func(c *Config) {
		c.UnauthorizedRate = 2
		c.UnauthorizedBurst = 5
	})
	addr := s.UDPAddrs()[0]
	conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	// answers sends n unauthenticated Allocates and counts the 401s.
	answers := func(c *net.UDPConn, n int) int {
		for range n {
			m := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
				rawAttr(stun.AttrRequestedTransport, []byte{17, 0, 0, 0}))
			if _, err := c.Write(m.Raw); err != nil {
				t.Fatal(err)
			}
		}
		// Then one request whose answer marks the end: a Binding, which
		// is not rate-limited.
		end := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
		if _, err := c.Write(end.Raw); err != nil {
			t.Fatal(err)
		}
		got := 0
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 1500)
		for {
			k, err := c.Read(buf)
			if err != nil {
				t.Fatalf("waiting for the answers: %v (got %d 401s)", err, got)
			}
			m := &stun.Message{Raw: append([]byte(nil), buf[:k]...)}
			if m.Decode() != nil {
				continue
			}
			if m.TransactionID == end.TransactionID {
				return got
			}
			if errorCodeOf(m) == stun.CodeUnauthorized {
				got++
			}
		}
	}
	if got := answers(conn, 12); got != 5 {
		t.Fatalf("12 unauthenticated requests at once: %d answers, want the burst of 5", got)
	}
	clk.Advance(time.Second)
	if got := answers(conn, 12); got != 2 {
		t.Fatalf("a second later: %d answers, want the rate of 2", got)
	}
	other, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.3:0")), net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if got := answers(other, 3); got != 3 {
		t.Fatalf("another source: %d answers, want all 3", got)
	}
	if n := s.Status().Refusals[ReasonUnauthorizedRateLimited]; n != 17 {
		t.Fatalf("unauthorized_rate_limited: %d, want 17", n)
	}
}

// TestRelayAndMetrics relays between a client and a peer on loopback (an
// exact /32 allowed) and reads the traffic back from Status and Metrics.
func TestRelayAndMetrics(t *testing.T) {
	peer, err := net.ListenPacket("udp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	s := startLoopback(t, nil, false, func(c *Config) {
		c.AllowPeers = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
	})
	c := client(t, s, "udp4", "alice")
	relayed, code := c.allocate(17, 0)
	if code != 0 {
		t.Fatalf("allocate: %d", code)
	}
	pa := addrPortOf(peer.LocalAddr())
	if code := c.peerRequest(stun.MethodCreatePermission, pa); code != 0 {
		t.Fatalf("CreatePermission: %d", code)
	}
	const n = 20
	payload := bytes.Repeat([]byte{0xab}, 172)
	buf := make([]byte, 1500)
	for i := range n {
		c.send(pa, payload)
		peer.SetReadDeadline(time.Now().Add(3 * time.Second))
		k, from, err := peer.ReadFrom(buf)
		if err != nil {
			t.Fatalf("packet %d never reached the peer: %v", i, err)
		}
		if k != len(payload) || addrPortOf(from) != relayed {
			t.Fatalf("peer got %d bytes from %v, want %d from the relayed address %v", k, from, len(payload), relayed)
		}
		if _, err := peer.WriteTo(buf[:k], from); err != nil {
			t.Fatal(err)
		}
		if src, data, err := c.receive(3 * time.Second); err != nil || src != pa || len(data) != len(payload) {
			t.Fatalf("echo %d: from %v, %d bytes, %v", i, src, len(data), err)
		}
	}
	st := s.Status()
	want := Traffic{Packets: n, Bytes: n * 172}
	if st.ToPeer != want || st.FromPeer != want || st.Allocations != 1 || st.Permissions != 1 {
		t.Fatalf("status: %+v", st)
	}
	if len(st.Relays) != 1 || st.Relays[0].User != "alice" || st.Relays[0].Relayed != relayed.String() || st.Relays[0].Method != MethodLocal {
		t.Fatalf("relays: %+v", st.Relays)
	}
	var out bytes.Buffer
	s.Metrics().WritePrometheus(&out)
	for _, line := range []string{
		`superpeer_turn_relayed_packets_total{direction="to_peer"} 20`,
		`superpeer_turn_relayed_bytes_total{direction="from_peer"} 3440`,
		`superpeer_turn_allocations 1`,
		`superpeer_turn_permissions 1`,
		`superpeer_turn_refusals_total{reason="forbidden_peer"} 0`,
	} {
		if !strings.Contains(out.String(), line+"\n") {
			t.Errorf("metrics lack %q:\n%s", line, out.String())
		}
	}
}

// TestBandwidthCap: a UDP allocation's traffic towards its peers is cut
// at the cap (a burst, then the rate; fake clock), and the excess is
// counted.
func TestBandwidthCap(t *testing.T) {
	peer, err := net.ListenPacket("udp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	clk := clock.NewFake(time.Now())
	s := startLoopback(t, clk, false, func(c *Config) {
		c.AllowPeers = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
		c.BandwidthPerAllocation = 16 << 10 // burst: the 16 KiB floor
	})
	c := client(t, s, "udp4", "alice")
	if _, code := c.allocate(17, 0); code != 0 {
		t.Fatalf("allocate: %d", code)
	}
	pa := addrPortOf(peer.LocalAddr())
	if code := c.peerRequest(stun.MethodCreatePermission, pa); code != 0 {
		t.Fatalf("CreatePermission: %d", code)
	}
	payload := make([]byte, 1024)
	burst := func(n int) (relayed, dropped uint64) {
		before := s.Status()
		for range n {
			c.send(pa, payload)
		}
		waitFor(t, 5*time.Second, "every packet relayed or dropped", func() bool {
			st := s.Status()
			return st.ToPeer.Packets+st.Refusals[ReasonBandwidth] == before.ToPeer.Packets+before.Refusals[ReasonBandwidth]+uint64(n)
		})
		st := s.Status()
		return st.ToPeer.Packets - before.ToPeer.Packets, st.Refusals[ReasonBandwidth] - before.Refusals[ReasonBandwidth]
	}
	if relayed, dropped := burst(30); relayed != 16 || dropped != 14 {
		t.Fatalf("30 KiB at once with a 16 KiB burst: %d relayed, %d dropped; want 16, 14", relayed, dropped)
	}
	clk.Advance(500 * time.Millisecond)
	if relayed, dropped := burst(30); relayed != 8 || dropped != 22 {
		t.Fatalf("half a second later at 16 KiB/s: %d relayed, %d dropped; want 8, 22", relayed, dropped)
	}
}

// TestReservationAcrossListeners: an RTP allocation with EVEN-PORT
// reserves the next port, and the RTCP allocation from another socket of
// the same client host gets it with the RESERVATION-TOKEN (RFC 8656
// section 7.2), although the listeners sharing the port have separate
// allocation state: the listener is chosen by the client's address.
func TestReservationAcrossListeners(t *testing.T) {
	s := startLoopback(t, nil, false, func(c *Config) { c.UDPListeners = 4 })
	for i := range 8 {
		rtp := client(t, s, "udp4", "alice")
		resp, err := rtp.do(stun.MethodAllocate, rawAttr(stun.AttrRequestedTransport, []byte{17, 0, 0, 0}),
			rawAttr(stun.AttrEvenPort, []byte{0x80}))
		if err != nil || errorCodeOf(resp) != 0 {
			t.Fatalf("pair %d: RTP allocation with EVEN-PORT: %v %d", i, err, errorCodeOf(resp))
		}
		token, err := resp.Get(stun.AttrReservationToken)
		if err != nil {
			t.Fatalf("pair %d: no RESERVATION-TOKEN: %v", i, err)
		}
		var relayed stun.XORMappedAddress
		relayed.GetFromAs(resp, stun.AttrXORRelayedAddress)
		rtcp := client(t, s, "udp4", "alice")
		resp, err = rtcp.do(stun.MethodAllocate, rawAttr(stun.AttrRequestedTransport, []byte{17, 0, 0, 0}),
			rawAttr(stun.AttrReservationToken, token))
		if err != nil || errorCodeOf(resp) != 0 {
			t.Fatalf("pair %d: RTCP allocation with the token: %v %d", i, err, errorCodeOf(resp))
		}
		var relayed2 stun.XORMappedAddress
		relayed2.GetFromAs(resp, stun.AttrXORRelayedAddress)
		if relayed.Port%2 != 0 || relayed2.Port != relayed.Port+1 {
			t.Fatalf("pair %d: RTP on %d, RTCP on %d; want an even port and the next", i, relayed.Port, relayed2.Port)
		}
		for _, c := range []*rawClient{rtp, rtcp} {
			c.do(stun.MethodRefresh, rawAttr(stun.AttrLifetime, []byte{0, 0, 0, 0}))
		}
	}
}

// TestPermissionCap: an allocation holds permissions for at most
// PermissionsPerAllocation peer addresses; refreshing one it holds still
// works at the cap, and a ChannelBind to a new address is refused too.
func TestPermissionCap(t *testing.T) {
	s := startLoopback(t, nil, false, func(c *Config) {
		c.AllowPeers = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
		c.PermissionsPerAllocation = 3
	})
	c := client(t, s, "udp4", "alice")
	if _, code := c.allocate(17, 0); code != 0 {
		t.Fatalf("allocate: %d", code)
	}
	peer := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), 4000)
	}
	for i := 1; i <= 3; i++ {
		if code := c.peerRequest(stun.MethodCreatePermission, peer(i)); code != 0 {
			t.Fatalf("permission %d: %d", i, code)
		}
	}
	if code := c.peerRequest(stun.MethodCreatePermission, peer(4)); code != stun.CodeForbidden {
		t.Fatalf("a fourth peer with a cap of 3: got %d, want 403", code)
	}
	if code := c.peerRequest(stun.MethodChannelBind, peer(5)); code != stun.CodeForbidden {
		t.Fatalf("a channel to a fifth peer: got %d, want 403", code)
	}
	if code := c.peerRequest(stun.MethodCreatePermission, peer(2)); code != 0 {
		t.Fatalf("refreshing a permission held at the cap: %d", code)
	}
	if code := c.peerRequest(stun.MethodChannelBind, peer(1)); code != 0 {
		t.Fatalf("a channel to a permitted peer at the cap: %d", code)
	}
	st := s.Status()
	if st.Permissions != 3 || st.Channels != 1 || st.Refusals[ReasonPermissionCap] != 2 {
		t.Fatalf("status: %d permissions, %d channels, %d cap refusals; want 3, 1, 2", st.Permissions, st.Channels, st.Refusals[ReasonPermissionCap])
	}
}

// TestIPv6Relay relays between an IPv6 client and an IPv6 peer (on ::1,
// the superpeer's own address, unlocked by an exact allow).
func TestIPv6Relay(t *testing.T) {
	if !hasIPv6Loopback() {
		t.Skip("no IPv6 loopback on this host")
	}
	peer, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	s := startLoopback(t, nil, true, func(c *Config) { c.AllowPeers = []netip.Prefix{netip.MustParsePrefix("::1/128")} })
	c := client(t, s, "udp6", "alice")
	relayed, code := c.allocate(17, 2)
	if code != 0 || !relayed.Addr().Is6() {
		t.Fatalf("IPv6 allocation: %v %d", relayed, code)
	}
	pa := addrPortOf(peer.LocalAddr())
	if code := c.peerRequest(stun.MethodCreatePermission, pa); code != 0 {
		t.Fatalf("CreatePermission to %v: %d", pa, code)
	}
	c.send(pa, []byte("over v6"))
	data, from, err := readFrom(peer, 3*time.Second)
	if err != nil || string(data) != "over v6" || from != relayed {
		t.Fatalf("peer got %q from %v (%v), want it from %v", data, from, err, relayed)
	}
}

// TestTCPClientLimits: a TCP client that never allocates is dropped after
// TCPAuthTimeout, and connections beyond MaxTCPConnections are closed at
// once.
func TestTCPClientLimits(t *testing.T) {
	s := startLoopback(t, nil, false, func(c *Config) {
		c.TCPAuthTimeout = 300 * time.Millisecond
		c.MaxTCPConnections = 2
	})
	addr := s.TCPAddrs()[0].String()
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	// The third is closed at once: its read ends well before the others'.
	conns[2].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conns[2].Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("the connection over the limit stayed open: %v", err)
	}
	for i, c := range conns[:2] {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("connection %d without an allocation was not closed after TCPAuthTimeout: %v", i, err)
		}
	}
	if n := s.Status().Refusals[ReasonTCPConnections]; n != 1 {
		t.Fatalf("tcp_connections refusals: %d, want 1", n)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	good.Secret = func() []byte { return testSecret }
	if err := good.Validate(); err != nil {
		t.Fatalf("the default config with a secret: %v", err)
	}
	cases := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no secret", func(c *Config) { c.Secret = nil }, "Secret"},
		{"empty realm", func(c *Config) { c.Realm = "" }, "Realm"},
		{"unspecified listen", func(c *Config) { c.Listen = []netip.Addr{netip.IPv4Unspecified()} }, "Listen"},
		{"no listeners", func(c *Config) { c.UDPListeners = 0 }, "UDPListeners"},
		{"port range upside down", func(c *Config) { c.RelayPortMin, c.RelayPortMax = 60000, 50000 }, "relay ports"},
		{"negative quota", func(c *Config) { c.UserQuota = -1 }, "quotas"},
		{"no permissions", func(c *Config) { c.PermissionsPerAllocation = 0 }, "PermissionsPerAllocation"},
		{"credentials forever", func(c *Config) { c.MaxCredentialLifetime = 365 * 24 * time.Hour }, "MaxCredentialLifetime"},
		{"allocation lifetime over RFC", func(c *Config) { c.AllocationLifetime = 2 * time.Hour }, "AllocationLifetime"},
		{"zero 401 rate", func(c *Config) { c.UnauthorizedRate = 0 }, "401"},
		{"bad allow prefix", func(c *Config) { c.AllowPeers = []netip.Prefix{{}} }, "prefix"},
		{"STUN server without port", func(c *Config) { c.STUNServer = netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), 0) }, "STUNServer"},
	}
	for _, tc := range cases {
		c := good
		tc.edit(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %s", tc.name, err, tc.want)
		}
		if _, err := New(c, nil, nil); err == nil {
			t.Errorf("%s: New accepted it", tc.name)
		}
	}
}

// TestRelayBetweenAllocations: two sites behind symmetric NATs relay a
// call's media on the same public node, each on its own allocation, and
// one allocation's peer is the other's relayed address, one of the node's
// own. With RelayBetweenAllocations the two reach each other both ways
// (CreatePermission and ChannelBind); another port of the node's own
// address stays closed: a permission for it is refused, a packet sent
// there under the relay's permission is dropped, and a packet from there
// does not reach the client. Without the option the relay is refused as
// before.
func TestRelayBetweenAllocations(t *testing.T) {
	// Every loopback address is allowed as a peer, so the own-address
	// rule alone decides (a range wider than one address never opens the
	// node's own addresses).
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	t.Run("off", func(t *testing.T) {
		s := startLoopback(t, nil, false, func(c *Config) { c.AllowPeers = loopback })
		a, b := client(t, s, "udp4", "site-a"), client(t, s, "udp4", "site-b")
		if _, code := a.allocate(17, 0); code != 0 {
			t.Fatalf("allocate: %d", code)
		}
		rb, code := b.allocate(17, 0)
		if code != 0 {
			t.Fatalf("allocate: %d", code)
		}
		if code := a.peerRequest(stun.MethodCreatePermission, rb); code != stun.CodeForbidden {
			t.Errorf("CreatePermission for another allocation without the option: %d, want 403", code)
		}
	})

	s := startLoopback(t, nil, false, func(c *Config) {
		c.AllowPeers = loopback
		c.RelayBetweenAllocations = true
	})
	a, b := client(t, s, "udp4", "site-a"), client(t, s, "udp4", "site-b")
	ra, code := a.allocate(17, 0)
	if code != 0 {
		t.Fatalf("allocate: %d", code)
	}
	rb, code := b.allocate(17, 0)
	if code != 0 {
		t.Fatalf("allocate: %d", code)
	}
	if code := a.peerRequest(stun.MethodCreatePermission, rb); code != 0 {
		t.Fatalf("CreatePermission for the other allocation: %d", code)
	}
	if code := b.peerRequest(stun.MethodCreatePermission, ra); code != 0 {
		t.Fatalf("CreatePermission for the other allocation: %d", code)
	}
	// A service of the node on its own address, and the TURN port itself.
	svc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	svcAddr := addrPortOf(svc.LocalAddr())
	if code := a.peerRequest(stun.MethodCreatePermission, svcAddr); code != stun.CodeForbidden {
		t.Errorf("CreatePermission for a port of the node's own address that is no relay: %d, want 403", code)
	}
	if code := a.peerRequest(stun.MethodCreatePermission, s.UDPAddrs()[0]); code != stun.CodeForbidden {
		t.Errorf("CreatePermission for the TURN port: %d, want 403", code)
	}

	media := bytes.Repeat([]byte{0x80}, 172)
	for i := range 5 {
		a.send(rb, media)
		from, data, err := b.receive(3 * time.Second)
		if err != nil || from != ra || !bytes.Equal(data, media) {
			t.Fatalf("packet %d from A's allocation to B's: from %v, %d bytes, %v", i, from, len(data), err)
		}
		b.send(ra, media)
		from, data, err = a.receive(3 * time.Second)
		if err != nil || from != rb || !bytes.Equal(data, media) {
			t.Fatalf("packet %d from B's allocation to A's: from %v, %d bytes, %v", i, from, len(data), err)
		}
	}

	// A holds a permission for the node's own address (for B's relay):
	// what it sends to the service is dropped. Packets of one client are
	// relayed in order and loopback delivers at once, so once B has the
	// packet sent after it, the service would have had its own.
	a.send(svcAddr, []byte("to a service of the node"))
	a.send(rb, media)
	if _, _, err := b.receive(3 * time.Second); err != nil {
		t.Fatal(err)
	}
	svc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, _, err := svc.ReadFrom(make([]byte, 1500)); err == nil {
		t.Errorf("a service on the node's own address got %d bytes through A's relay", n)
	}
	// The service sends to A's relay first, B's relay after it: A gets
	// only B's packet.
	if _, err := svc.WriteTo([]byte("from a service of the node"), net.UDPAddrFromAddrPort(ra)); err != nil {
		t.Fatal(err)
	}
	b.send(ra, media)
	if from, data, err := a.receive(3 * time.Second); err != nil || from != rb || !bytes.Equal(data, media) {
		t.Errorf("A's first packet after the service's: from %v, %q, %v; want B's relay's media", from, data, err)
	}
	if st := s.Status(); st.Refusals[ReasonOwnAddress] < 4 {
		t.Errorf("refusals for the node's own address: %d, want the 2 permissions and the 2 packets", st.Refusals[ReasonOwnAddress])
	}
	// A channel to the other allocation is bound like a permission (the
	// raw client reads no channel data, so this comes last).
	if code := b.peerRequest(stun.MethodChannelBind, ra); code != 0 {
		t.Errorf("ChannelBind to the other allocation: %d", code)
	}
	if code := a.peerRequest(stun.MethodChannelBind, svcAddr); code != stun.CodeForbidden {
		t.Errorf("ChannelBind to a port of the node's own address that is no relay: %d, want 403", code)
	}
}
