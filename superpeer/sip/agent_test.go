package sip

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/transport/v5/stdnet"
)

// TestAgentFollowsFailover: bob's softphone uses the desktop agent as its
// proxy and registers through superpeer sp1. sp1 dies; the agent now
// forwards to sp2, and a new call to bob through sp2 reaches him without
// bob registering again: sp2 finds his binding in the site's store and
// reaches the agent's socket on the LAN directly.
func TestAgentFollowsFailover(t *testing.T) {
	store := NewMemBindings(nil)
	var sibling atomic.Pointer[netip.AddrPort]
	siblings := func() []netip.AddrPort { return []netip.AddrPort{*sibling.Load()} }
	sp1 := testServer(t, "sp1", "site.test", nil, Deps{Bindings: store}, nil)
	sp2 := testServer(t, "sp2", "site.test", nil, Deps{Bindings: store, Siblings: siblings}, nil)
	sibling.Store(ptr(sp1.addr("udp")))
	var cur atomic.Pointer[netip.AddrPort]
	set := func(ap netip.AddrPort) { cur.Store(&ap) }
	set(sp1.addr("udp"))
	n, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultAgentConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Local = netip.MustParseAddr("127.0.0.1")
	cfg.Logger = testLogger()
	agent, err := NewAgent(cfg, n, nil, func() (netip.AddrPort, bool) { return *cur.Load(), true })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer agent.Close()

	bob := newPhone(t, "bob", agent.Addr(), "udp")
	if res, err := bob.register(ctx, "sip:bob@site.test", 600, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER through the agent: %v %v", res, err)
	}
	alice := newPhone(t, "alice", sp1.addr("udp"), "udp")
	if _, err := alice.call(ctx, "sip:bob@site.test"); err != nil {
		t.Fatalf("call to bob through sp1: %v", err)
	}

	sp1.Close()
	set(sp2.addr("udp"))
	// The call set up through sp1 ends through sp2: bob's BYE goes to the
	// agent, which sends it to sp2, which takes sp1's Record-Route as its
	// own.
	if res, err := bob.hangUpThrough(ctx, agent.Addr()); err != nil || res.StatusCode != 200 {
		t.Fatalf("bob's BYE for a call through the dead sp1: %v %v, want alice's 200", res, err)
	}
	if alice.byes.Load() != 1 {
		t.Errorf("alice saw %d BYEs, want 1", alice.byes.Load())
	}
	alice2 := newPhone(t, "alice2", sp2.addr("udp"), "udp")
	sess, err := alice2.call(ctx, "sip:bob@site.test")
	if err != nil {
		t.Fatalf("call to bob through sp2 after sp1 died: %v", err)
	}
	if err := sess.Bye(ctx); err != nil {
		t.Fatalf("BYE: %v", err)
	}
	if bob.invites.Load() != 2 || bob.byes.Load() != 1 {
		t.Errorf("bob saw %d INVITEs and %d BYEs, want 2 and 1", bob.invites.Load(), bob.byes.Load())
	}
	// bob's own requests now go to sp2 too.
	if res, err := bob.register(ctx, "sip:bob@site.test", 600, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER through the agent after the failover: %v %v", res, err)
	}
	if sp2.Status().Proxy.Registers == 0 {
		t.Errorf("the REGISTER after the failover did not reach sp2")
	}
}

func ptr[T any](v T) *T { return &v }

// TestAgentTCP: a softphone over TCP registers and is called through the
// agent (its connection to the agent is joined to one from the agent to
// the superpeer); when that superpeer dies its connection closes, and the
// phone's next REGISTER reaches the new superpeer.
func TestAgentTCP(t *testing.T) {
	store := NewMemBindings(nil)
	sp1 := testServer(t, "sp1", "site.test", nil, Deps{Bindings: store}, nil)
	sp2 := testServer(t, "sp2", "site.test", nil, Deps{Bindings: store}, nil)
	var cur atomic.Pointer[netip.AddrPort]
	cur.Store(ptr(sp1.addr("tcp")))
	n, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultAgentConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Local = netip.MustParseAddr("127.0.0.1")
	cfg.Logger = testLogger()
	agent, err := NewAgent(cfg, n, nil, func() (netip.AddrPort, bool) { return *cur.Load(), true })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer agent.Close()

	bob := newPhone(t, "bob", agent.Addr(), "tcp")
	if res, err := bob.register(ctx, "sip:bob@site.test", 600, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER over TCP through the agent: %v %v", res, err)
	}
	alice := newPhone(t, "alice", sp1.addr("udp"), "udp")
	sess, err := alice.call(ctx, "sip:bob@site.test")
	if err != nil {
		t.Fatalf("call to bob over his TCP flow through the agent: %v", err)
	}
	if err := sess.Bye(ctx); err != nil {
		t.Fatalf("BYE: %v", err)
	}

	sp1.Close()
	cur.Store(ptr(sp2.addr("tcp")))
	waitFor(t, 5*time.Second, "the agent to drop the connections of the dead superpeer", func() bool {
		agent.mu.Lock()
		defer agent.mu.Unlock()
		return len(agent.conns) == 0
	})
	if res, err := bob.register(ctx, "sip:bob@site.test", 600, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER again after the failover: %v %v", res, err)
	}
	alice2 := newPhone(t, "alice2", sp2.addr("udp"), "udp")
	if _, err := alice2.call(ctx, "sip:bob@site.test"); err != nil {
		t.Fatalf("call to bob through sp2: %v", err)
	}
	if bob.invites.Load() != 2 {
		t.Errorf("bob saw %d INVITEs, want 2", bob.invites.Load())
	}
}

// TestAgentHearsEverySuperpeerOfTheSet: bob's softphone registers through
// the agent, which forwards to sp1, its choice; a call to bob comes in
// through sp2, the other superpeer of the set, which the agent never sent
// to. sp2 reaches bob's flow on the LAN directly and the agent lets the
// INVITE through, because sp2 is in the committed set.
func TestAgentHearsEverySuperpeerOfTheSet(t *testing.T) {
	store := NewMemBindings(nil)
	// The site's superpeers share one flow key, as the daemon derives it.
	siteKey := func(c *Config) { c.FlowKey = []byte("the site's flow key, 32 bytes..") }
	sp1 := testServer(t, "sp1", "site.test", nil, Deps{Bindings: store}, siteKey)
	sp2 := testServer(t, "sp2", "site.test", nil, Deps{Bindings: store}, siteKey)
	n, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultAgentConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Logger = testLogger()
	// The agent's LAN side is another address than the phone's, as on a
	// desktop: the superpeers reach bob over the agent's flow, not at his
	// Contact.
	cfg.Local = netip.MustParseAddr("127.0.0.2")
	cfg.Superpeers = func() []netip.AddrPort { return []netip.AddrPort{sp1.addr("udp"), sp2.addr("udp")} }
	agent, err := NewAgent(cfg, n, nil, func() (netip.AddrPort, bool) { return sp1.addr("udp"), true })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := agent.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer agent.Close()

	bob := newPhone(t, "bob", agent.Addr(), "udp")
	if res, err := bob.register(ctx, "sip:bob@site.test", 600, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER through the agent: %v %v", res, err)
	}
	alice := newPhone(t, "alice", sp2.addr("udp"), "udp")
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	defer ccancel()
	sess, err := alice.call(cctx, "sip:bob@site.test")
	if err != nil {
		t.Fatalf("call to bob through sp2, the superpeer the agent does not forward to: %v", err)
	}
	if err := sess.Bye(ctx); err != nil {
		t.Fatalf("BYE: %v", err)
	}
	if bob.invites.Load() != 1 || bob.byes.Load() != 1 {
		t.Errorf("bob saw %d INVITEs and %d BYEs, want 1 and 1", bob.invites.Load(), bob.byes.Load())
	}
	if sp1.Status().Proxy.Forwarded != 0 {
		t.Errorf("sp1 forwarded %d requests; the call should have gone through sp2 alone", sp1.Status().Proxy.Forwarded)
	}
	if sp2.Status().Proxy.Forwarded < 2 {
		t.Errorf("sp2 forwarded %d requests, want the INVITE and the BYE", sp2.Status().Proxy.Forwarded)
	}

	// A stranger on the LAN is still not heard.
	stranger, err := n.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	if agent.fromSuperpeer(addrPortOf(stranger.LocalAddr())) {
		t.Errorf("the agent takes %v, not a superpeer of the set, for one", stranger.LocalAddr())
	}
}
