package sip

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superpeer/superpeer/nat/clock"
)

// twoSites builds site A (superpeer "a", domain a.test) and site B
// (superpeer "b", domain b.test) joined by an in-memory overlay.
func twoSites(t *testing.T, tweak func(*Config)) (*MemOverlay, *Server, *Server) {
	ov := NewMemOverlay(nil)
	la, ca := ov.Member("a")
	lb, cb := ov.Member("b")
	a := testServer(t, "a", "a.test", nil, Deps{Locator: la, Carrier: ca}, tweak)
	b := testServer(t, "b", "b.test", nil, Deps{Locator: lb, Carrier: cb}, tweak)
	return ov, a, b
}

// TestCallAcrossSites: bob registers at B, which publishes him in the
// overlay; alice at A calls him by AOR: A looks him up, forwards to B, B
// forwards over bob's flow, and the BYE takes the Record-Route path back
// through both superpeers.
func TestCallAcrossSites(t *testing.T) {
	ov, a, b := twoSites(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bob := newPhone(t, "bob", b.addr("udp"), "udp")
	alice := newPhone(t, "alice", a.addr("udp"), "udp")
	if res, err := bob.register(ctx, "sip:bob@b.test", 600, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER: %v %v", res, err)
	}
	waitFor(t, 5*time.Second, "bob's record in the overlay", func() bool { return len(ov.Records("sip:bob@b.test")) == 1 })

	sess, err := alice.call(ctx, "sip:bob@b.test")
	if err != nil {
		t.Fatalf("call across sites: %v", err)
	}
	rr := sess.InviteResponse.GetHeaders("Record-Route")
	if len(rr) != 4 {
		t.Errorf("want 4 Record-Route entries (each superpeer's LAN and overlay side), got %d:\n%s", len(rr), sess.InviteResponse)
	}
	if err := sess.Bye(ctx); err != nil {
		t.Fatalf("BYE: %v", err)
	}
	if bob.byes.Load() != 1 {
		t.Errorf("bob saw %d BYEs, want 1", bob.byes.Load())
	}
	if a.Status().Proxy.ToOverlay < 2 || b.Status().Proxy.FromOverlay < 2 {
		t.Errorf("INVITE and BYE did not both cross the overlay: a %+v, b %+v", a.Status().Proxy, b.Status().Proxy)
	}

	// Unknown everywhere: 404 at once.
	start := time.Now()
	_, err = alice.call(ctx, "sip:nobody@b.test")
	if code := statusOf(err); code != 404 || time.Since(start) > time.Second {
		t.Errorf("call to an AOR nobody published: %v after %v, want 404 within 1 s", err, time.Since(start))
	}

	// bob unregisters: B withdraws his record.
	if res, err := bob.register(ctx, "sip:bob@b.test", 0, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("unREGISTER: %v %v", res, err)
	}
	waitFor(t, 5*time.Second, "bob's record to be withdrawn", func() bool { return len(ov.Records("sip:bob@b.test")) == 0 })
}

// TestFarSiteDown: bob's record is still in the overlay but site B is
// unreachable; alice gets 408 within 5 s, not after the 32 s of Timer B.
func TestFarSiteDown(t *testing.T) {
	ov, a, b := twoSites(t, func(c *Config) { c.ForwardTimeout = 1 * time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bob := newPhone(t, "bob", b.addr("udp"), "udp")
	alice := newPhone(t, "alice", a.addr("udp"), "udp")
	if res, err := bob.register(ctx, "sip:bob@b.test", 600, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER: %v %v", res, err)
	}
	waitFor(t, 5*time.Second, "bob's record in the overlay", func() bool { return len(ov.Records("sip:bob@b.test")) == 1 })
	ov.SetDown("b", true)
	start := time.Now()
	_, err := alice.call(ctx, "sip:bob@b.test")
	took := time.Since(start)
	if code := statusOf(err); (code != 408 && code != 480) || took > 5*time.Second {
		t.Errorf("call to a site that is down: %v after %v, want 408 or 480 within 5 s", err, took)
	}
	if bob.invites.Load() != 0 {
		t.Errorf("bob got an INVITE through a site that is down")
	}
}

// TestFlowHeldByOtherSuperpeer: two superpeers of one site share the
// binding store. Bob registers over TCP at sp1 (his connection is his
// flow); a call that reaches sp2 is forwarded to sp1 with a Route naming
// the flow, and sp1 sends it down bob's connection.
func TestFlowHeldByOtherSuperpeer(t *testing.T) {
	ov := NewMemOverlay(nil)
	store := NewMemBindings(nil)
	l1, c1 := ov.Member("sp1")
	l2, c2 := ov.Member("sp2")
	sp1 := testServer(t, "sp1", "site.test", nil, Deps{Bindings: store, Locator: l1, Carrier: c1}, nil)
	sp2 := testServer(t, "sp2", "site.test", nil, Deps{Bindings: store, Locator: l2, Carrier: c2}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bob := newPhone(t, "bob", sp1.addr("tcp"), "tcp")
	alice := newPhone(t, "alice", sp2.addr("udp"), "udp")
	res, err := bob.register(ctx, "sip:bob@site.test", 600,
		map[string]string{"+sip.instance": `"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"`, "reg-id": "1"},
		sipHeader("Supported", "outbound, path"))
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER: %v %v", res, err)
	}
	if h := res.GetHeader("Require"); h == nil || !strings.Contains(h.Value(), "outbound") {
		t.Errorf("200 to an outbound REGISTER lacks Require: outbound:\n%s", res)
	}
	if h := res.GetHeader("Flow-Timer"); h == nil || h.Value() != "120" {
		t.Errorf("200 to an outbound REGISTER lacks Flow-Timer: 120:\n%s", res)
	}
	sess, err := alice.call(ctx, "sip:bob@site.test")
	if err != nil {
		t.Fatalf("call through the superpeer not holding bob's flow: %v", err)
	}
	if err := sess.Bye(ctx); err != nil {
		t.Fatalf("BYE: %v", err)
	}
	if bob.byes.Load() != 1 {
		t.Errorf("bob saw %d BYEs, want 1", bob.byes.Load())
	}
	if sp2.Status().Proxy.ToOverlay == 0 || sp1.Status().Proxy.FromOverlay == 0 {
		t.Errorf("the call did not go through the flow's holder: sp1 %+v sp2 %+v", sp1.Status().Proxy, sp2.Status().Proxy)
	}
}

// TestRecordExpiresWithBinding: a phone that stops refreshing its
// registration disappears from the overlay when its binding lapses.
func TestRecordExpiresWithBinding(t *testing.T) {
	fc := clock.NewFake(time.Now())
	ov := NewMemOverlay(fc.Now)
	lb, cb := ov.Member("b")
	b := testServer(t, "b", "b.test", fc, Deps{Locator: lb, Carrier: cb}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bob := newPhone(t, "bob", b.addr("udp"), "udp")
	if res, err := bob.register(ctx, "sip:bob@b.test", 60, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER: %v %v", res, err)
	}
	waitFor(t, 5*time.Second, "bob's record in the overlay", func() bool { return len(ov.Records("sip:bob@b.test")) == 1 })
	fc.Advance(59 * time.Second)
	if len(ov.Records("sip:bob@b.test")) != 1 {
		t.Fatal("bob's record went before his binding lapsed")
	}
	fc.Advance(2 * time.Second)
	waitFor(t, 5*time.Second, "bob's record to be withdrawn after his binding lapsed", func() bool {
		return len(ov.Records("sip:bob@b.test")) == 0
	})
	alice := newPhone(t, "alice", b.addr("udp"), "udp")
	if _, err := alice.call(ctx, "sip:bob@b.test"); statusOf(err) != 480 {
		t.Errorf("call to bob after his binding lapsed: %v, want 480", err)
	}
}

// stalledLocator is an overlay whose DHT does not answer: every Publish
// waits until its context ends.
type stalledLocator struct {
	Locator
	called chan struct{}
}

func (l *stalledLocator) Publish(ctx context.Context, aor string, expires time.Time) error {
	select {
	case l.called <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return fmt.Errorf("storing %s in the DHT: %w", aor, ctx.Err())
}

// lockedBuffer is a log destination several goroutines write to.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestStopWithPublishesPending: a superpeer whose services stop while a
// hundred registrations wait to be published (a slow DHT) logs nothing
// about them: their failure is the stop itself, not news for an operator.
func TestStopWithPublishesPending(t *testing.T) {
	ov := NewMemOverlay(nil)
	loc, car := ov.Member("a")
	slow := &stalledLocator{Locator: loc, called: make(chan struct{}, 1)}
	store := NewMemBindings(nil)
	var logs lockedBuffer
	s := testServer(t, "a", "a.test", nil, Deps{Bindings: store, Locator: slow, Carrier: car}, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 100 {
		aor := fmt.Sprintf("sip:phone%03d@a.test", i)
		b := Binding{AOR: aor, Contact: "sip:phone@127.0.0.1:5999", Expires: time.Now().Add(time.Hour), Registered: time.Now()}
		if err := store.Put(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-slow.called:
	case <-ctx.Done():
		t.Fatal("no registration was published")
	}
	s.Close()
	if out := logs.String(); strings.Contains(out, "overlay") && strings.Contains(out, "level=WARN") {
		t.Errorf("stopping with publishes pending logged warnings:\n%s", out)
	}
}
