package turn

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"
)

// BenchmarkGuardChannelData is the guard's cost on the hot path: a
// ChannelData message in and out of a client listener.
func BenchmarkGuardChannelData(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Secret = func() []byte { return testSecret }
	cfg.Logger = slog.New(slog.DiscardHandler)
	s, err := New(cfg, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	src := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.9:5000"))
	g := guard{s: s, local: net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.1:3478"))}
	pkt := make([]byte, 4+172)
	pkt[0], pkt[3] = 0x40, 172
	b.ReportAllocs()
	for b.Loop() {
		if !g.inbound(pkt, src, nil) || !g.outbound(pkt, src) {
			b.Fatal("ChannelData refused")
		}
	}
}

// BenchmarkPeerPolicy is the cost of one permission decision.
func BenchmarkPeerPolicy(b *testing.B) {
	p := NewPeerPolicy([]netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}, nil)
	p.SetOwn([]netip.Addr{netip.MustParseAddr("192.168.1.10")})
	peers := []netip.Addr{netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("2002:7f00:1::1"), netip.MustParseAddr("1.1.1.1")}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		p.Check(peers[i%len(peers)])
	}
}
