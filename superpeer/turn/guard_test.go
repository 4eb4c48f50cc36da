package turn

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

// FuzzGuard feeds arbitrary datagrams to the guard in both directions,
// and to the TCP framer: nothing may panic, and a frame size is never
// shorter than its header.
func FuzzGuard(f *testing.F) {
	cfg := DefaultConfig()
	cfg.Secret = func() []byte { return testSecret }
	cfg.Logger = slog.New(slog.DiscardHandler)
	s, err := New(cfg, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	local := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.1:3478"))
	src := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("192.0.2.9:5000"))
	g := guard{s: s, local: local}

	user, pass, _ := MintCredentials(testSecret, "alice", s.clk.Now().Add(time.Hour))
	for _, m := range []*stun.Message{
		stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodCreatePermission, stun.ClassRequest),
			xorPeer(netip.MustParseAddrPort("127.0.0.1:1")), stun.NewUsername(user), stun.NewRealm("superpeer"),
			stun.NewNonce("n"), stun.NewLongTermIntegrity(user, "superpeer", pass)),
		stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest),
			rawAttr(stun.AttrRequestedTransport, []byte{6, 0, 0, 0})),
		stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassErrorResponse),
			&stun.ErrorCodeAttribute{Code: 401}),
	} {
		f.Add(m.Raw)
	}
	f.Add([]byte{0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, b []byte) {
		g.inbound(b, src, func([]byte) {})
		g.outbound(b, src)
		if len(b) >= 20 {
			errorCode(b)
		}
		if size, isSTUN, ok := frameSize(b); ok && size >= 0 && (isSTUN && size < 20 || !isSTUN && size < 4) {
			t.Fatalf("frame size %d for %x", size, b)
		}
	})
}
