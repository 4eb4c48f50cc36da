package nat

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/superpeer/superpeer/nat/clock"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// fakeRemote is a pinhole's socket and the far end in one: what the keeper
// writes to the socket is answered (or not) at once, through the owner's
// path (Keeper.HandleSTUN), as a STUN server behind a NAT would.
type fakeRemote struct {
	k   *Keeper
	clk clock.Clock

	mu     sync.Mutex // guards following
	mapped netip.AddrPort
	silent bool
	sends  []time.Time
}

func (f *fakeRemote) setMapped(a netip.AddrPort) { f.mu.Lock(); f.mapped = a; f.mu.Unlock() }
func (f *fakeRemote) setSilent(s bool)           { f.mu.Lock(); f.silent = s; f.mu.Unlock() }

func (f *fakeRemote) sent() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.sends...)
}

func (f *fakeRemote) WriteTo(b []byte, to net.Addr) (int, error) {
	f.mu.Lock()
	f.sends = append(f.sends, f.clk.Now())
	silent, mapped := f.silent, f.mapped
	f.mu.Unlock()
	if silent {
		return len(b), nil
	}
	req := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := req.Decode(); err != nil {
		return len(b), nil
	}
	resp, err := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: mapped.Addr().AsSlice(), Port: int(mapped.Port())}, stun.Fingerprint)
	if err != nil {
		panic(err)
	}
	from := to.(*net.UDPAddr).AddrPort()
	f.k.HandleSTUN(resp.Raw, from)
	return len(b), nil
}

func (f *fakeRemote) ReadFrom([]byte) (int, net.Addr, error) { select {} }
func (f *fakeRemote) Close() error                           { return nil }
func (f *fakeRemote) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(192, 168, 1, 10), Port: 5060}
}
func (f *fakeRemote) SetDeadline(time.Time) error      { return nil }
func (f *fakeRemote) SetReadDeadline(time.Time) error  { return nil }
func (f *fakeRemote) SetWriteDeadline(time.Time) error { return nil }

// switchableLifetime is a LifetimeSource a test changes, and that records
// the remaps it is told of.
type switchableLifetime struct {
	mu       sync.Mutex
	est, unc time.Duration
	measured bool
	remaps   []time.Duration
}

func (s *switchableLifetime) set(est, unc time.Duration, measured bool) {
	s.mu.Lock()
	s.est, s.unc, s.measured = est, unc, measured
	s.mu.Unlock()
}

func (s *switchableLifetime) Lifetime() (time.Duration, time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.est, s.unc, s.measured
}

func (s *switchableLifetime) ObserveRemap(idle time.Duration) {
	s.mu.Lock()
	s.remaps = append(s.remaps, idle)
	s.mu.Unlock()
}

func (s *switchableLifetime) observed() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.remaps...)
}

type harness struct {
	t   *testing.T
	clk *clock.Fake
	k   *Keeper
}

func newHarness(t *testing.T, mod func(*KeeperConfig)) *harness {
	t.Helper()
	clk := clock.NewFake(t0)
	cfg := DefaultKeeperConfig()
	cfg.Clock = clk
	if mod != nil {
		mod(&cfg)
	}
	k, err := NewKeeper(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return &harness{t: t, clk: clk, k: k}
}

// settle waits until the keeper has handled everything and sleeps on its
// timer (or on nothing).
func (h *harness) settle() {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		h.k.mu.Lock()
		ok := h.k.parked && !h.k.poked && h.k.busy == 0 && len(h.k.replies) == 0 &&
			(h.k.wakeAt.IsZero() || h.k.wakeAt.After(h.clk.Now()))
		h.k.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatal("keeper never settled")
		}
		time.Sleep(200 * time.Microsecond) // polling a condition, with a deadline
	}
}

// run moves fake time forward by d, one keeper wake-up at a time.
func (h *harness) run(d time.Duration) {
	h.t.Helper()
	end := h.clk.Now().Add(d)
	for {
		h.settle()
		h.k.mu.Lock()
		next := h.k.wakeAt
		h.k.mu.Unlock()
		now := h.clk.Now()
		if next.IsZero() || next.After(end) {
			h.clk.Advance(end.Sub(now))
			h.settle()
			return
		}
		h.clk.Advance(next.Sub(now))
	}
}

func (h *harness) addUDP(src LifetimeSource, remote *fakeRemote, mod func(*PinholeSpec)) *Pinhole {
	h.t.Helper()
	remote.k, remote.clk = h.k, h.clk
	if !remote.mapped.IsValid() {
		remote.mapped = netip.MustParseAddrPort("203.0.113.100:40000")
	}
	spec := PinholeSpec{
		Local:     netip.MustParseAddrPort("192.168.1.10:5060"),
		Remote:    netip.MustParseAddrPort("203.0.113.10:3478"),
		Conn:      remote,
		Lifetime:  src,
		Opened:    h.clk.Now(),
		SeenReply: true,
	}
	if mod != nil {
		mod(&spec)
	}
	p, err := h.k.Add(spec)
	if err != nil {
		h.t.Fatal(err)
	}
	return p
}

func gaps(ts []time.Time) []time.Duration {
	var g []time.Duration
	for i := 1; i < len(ts); i++ {
		g = append(g, ts[i].Sub(ts[i-1]))
	}
	return g
}

// TestIntervalJustInsideLifetime: with a measured lifetime L, a new flow
// gets one warm-up refresh, then refreshes every interval in
// [L-margin-jitter, L-margin], always before L, spread by jitter, and at
// most 1.25 refreshes per lifetime.
func TestIntervalJustInsideLifetime(t *testing.T) {
	for _, L := range []time.Duration{6 * time.Second, 30 * time.Second, 180 * time.Second} {
		t.Run(L.String(), func(t *testing.T) {
			h := newHarness(t, nil)
			cfg := h.k.cfg
			remote := &fakeRemote{}
			p := h.addUDP(FixedLifetime(L), remote, nil)
			const lifetimes = 20
			h.run(lifetimes * L)

			sends := remote.sent()
			if len(sends) == 0 {
				t.Fatal("no refresh sent")
			}
			if got, want := sends[0].Sub(t0), cfg.WarmUp; got != want {
				t.Errorf("warm-up refresh at %v after the flow opened, want %v", got, want)
			}
			margin := max(time.Duration(cfg.Margin*float64(L)), cfg.MinMargin)
			hi := L - margin
			lo := time.Duration(float64(hi) * (1 - cfg.Jitter))
			distinct := map[time.Duration]bool{}
			for i, g := range gaps(sends) {
				if g >= L {
					t.Errorf("gap %d is %v: the %v binding would have expired", i, g, L)
				}
				if g < lo-time.Millisecond || g > hi {
					t.Errorf("gap %d is %v, want within [%v, %v]", i, g, lo, hi)
				}
				distinct[g] = true
			}
			if len(distinct) < 3 {
				t.Errorf("intervals are not jittered: %v", gaps(sends))
			}
			if limit := 1.25*lifetimes + 1; float64(len(sends)) > limit {
				t.Errorf("%d refreshes in %d lifetimes, want at most %v", len(sends), lifetimes, limit)
			}
			st := p.Status()
			if st.Losses != 0 || st.Remaps != 0 || st.State != "ok" || !st.Measured || st.Lifetime != L {
				t.Errorf("status after a quiet run: %+v", st)
			}
			if st.Keepalives != uint64(len(sends)) {
				t.Errorf("status counts %d keepalives, %d were sent", st.Keepalives, len(sends))
			}
		})
	}
}

// TestDefaultBeforeMeasurement: until the lifetime is measured the keeper
// refreshes at its conservative default; once it is, at the measurement.
func TestDefaultBeforeMeasurement(t *testing.T) {
	h := newHarness(t, nil)
	src := &switchableLifetime{}
	remote := &fakeRemote{}
	p := h.addUDP(src, remote, nil)
	h.run(5 * time.Minute)
	def := h.k.cfg.DefaultLifetime
	g := gaps(remote.sent())
	if len(g) < 5 {
		t.Fatalf("only %d refreshes in 5 minutes", len(g)+1)
	}
	for _, d := range g {
		if d >= def || d < def/2 {
			t.Fatalf("before measurement a gap was %v, want just inside the default %v", d, def)
		}
	}
	if st := p.Status(); st.Measured || st.Lifetime != def {
		t.Fatalf("status before measurement: lifetime %v measured %v, want default %v", st.Lifetime, st.Measured, def)
	}

	src.set(150*time.Second, 10*time.Second, true)
	n := len(remote.sent())
	h.run(30 * time.Minute)
	g = gaps(remote.sent()[n:])
	for _, d := range g[1:] { // the first gap straddles the change
		if d < 100*time.Second || d >= 140*time.Second {
			t.Fatalf("after measuring 150±10 s a gap was %v, want within (100 s, 140 s)", d)
		}
	}
	if st := p.Status(); !st.Measured || st.Lifetime != 150*time.Second || st.LifetimeError != 10*time.Second {
		t.Fatalf("status after measurement: %+v", st)
	}
}

// TestSkipMappedPinholes: a pinhole whose socket a verified port mapping
// covers gets no keepalives and shows the mapping; when the mapping goes,
// keepalives resume at once.
func TestSkipMappedPinholes(t *testing.T) {
	h := newHarness(t, nil)
	remote := &fakeRemote{}
	mappedExt := netip.MustParseAddrPort("203.0.113.100:5060")
	h.k.Cover(netip.MustParseAddrPort("0.0.0.0:5060"), MethodUPnP, mappedExt)
	p := h.addUDP(FixedLifetime(30*time.Second), remote, nil)
	other := &fakeRemote{}
	q := h.addUDP(FixedLifetime(30*time.Second), other, func(s *PinholeSpec) {
		s.Local = netip.MustParseAddrPort("192.168.1.10:6000")
	})
	h.run(10 * time.Minute)
	if n := len(remote.sent()); n != 0 {
		t.Fatalf("a mapped pinhole got %d keepalives", n)
	}
	if n := len(other.sent()); n < 10 {
		t.Fatalf("the unmapped pinhole beside it got only %d keepalives in 10 minutes", n)
	}
	st := p.Status()
	if st.Method != MethodUPnP || st.State != "mapped" || st.External != mappedExt || st.Interval != 0 {
		t.Fatalf("mapped pinhole's status: %+v", st)
	}
	if st := q.Status(); st.Method != MethodKeepalive {
		t.Fatalf("unmapped pinhole's method is %q", st.Method)
	}

	h.k.Uncover(netip.MustParseAddrPort("0.0.0.0:5060"))
	uncovered := h.clk.Now()
	h.run(time.Second)
	sends := remote.sent()
	if len(sends) == 0 || sends[0] != uncovered {
		t.Fatalf("after the mapping went, first keepalive at %v, want at once (%v)", sends, uncovered)
	}
	if st := p.Status(); st.Method != MethodKeepalive {
		t.Fatalf("after Uncover the method is %q", st.Method)
	}
}

// TestRemapReopensAndTellsOwner: a reply showing a new external address is
// a lost binding: the owner is told (old and new address), the lifetime
// source hears the idle time at once, and the new binding gets its
// warm-up refresh.
func TestRemapReopensAndTellsOwner(t *testing.T) {
	h := newHarness(t, nil)
	src := &switchableLifetime{}
	src.set(60*time.Second, 0, true)
	remote := &fakeRemote{}
	var events []Event
	var mu sync.Mutex
	p := h.addUDP(src, remote, func(s *PinholeSpec) {
		s.Notify = func(ev Event) { mu.Lock(); events = append(events, ev); mu.Unlock() }
	})
	h.run(3 * time.Minute)
	before := p.Status()
	if before.External != netip.MustParseAddrPort("203.0.113.100:40000") {
		t.Fatalf("external address not learnt from the STUN reply: %v", before.External)
	}
	n := len(remote.sent())
	newExt := netip.MustParseAddrPort("203.0.113.100:41234")
	remote.setMapped(newExt)
	h.run(2 * time.Minute)

	mu.Lock()
	defer mu.Unlock()
	if len(events) != 1 || events[0].Kind != EventRemapped {
		t.Fatalf("events: %+v, want one remap", events)
	}
	ev := events[0]
	if ev.OldExternal != before.External || ev.NewExternal != newExt || ev.Pinhole.External != newExt {
		t.Fatalf("remap event says %v -> %v (pinhole %v), want %v -> %v", ev.OldExternal, ev.NewExternal, ev.Pinhole.External, before.External, newExt)
	}
	sends := remote.sent()
	remapAt := sends[n]
	if sends[n+1].Sub(remapAt) != h.k.cfg.WarmUp {
		t.Fatalf("after the remap the next refresh came %v later, want the warm-up %v", sends[n+1].Sub(remapAt), h.k.cfg.WarmUp)
	}
	idle := sends[n].Sub(sends[n-1])
	if got := src.observed(); len(got) != 1 || got[0] != idle {
		t.Fatalf("lifetime source heard remaps %v, want one after %v idle", got, idle)
	}
	st := p.Status()
	if st.Remaps != 1 || st.Losses != 1 || st.External != newExt {
		t.Fatalf("status after a remap: %+v", st)
	}
}

// TestNoReplyLostAndRestored: unanswered refreshes are retransmitted, then
// the pinhole is lost: the owner is told and its Reopen runs; when answers
// come back the owner is told it is restored.
func TestNoReplyLostAndRestored(t *testing.T) {
	h := newHarness(t, nil)
	remote := &fakeRemote{}
	events := make(chan Event, 10)
	reopened := make(chan struct{}, 10)
	p := h.addUDP(FixedLifetime(30*time.Second), remote, func(s *PinholeSpec) {
		s.Notify = func(ev Event) { events <- ev }
		s.Reopen = func(context.Context) error { reopened <- struct{}{}; return nil }
	})
	h.run(2 * time.Minute)
	remote.setSilent(true)
	n := len(remote.sent())
	h.run(time.Minute)
	sends := remote.sent()[n:]
	if len(sends) < 3 {
		t.Fatalf("only %d tries while the far end was silent", len(sends))
	}
	if r1, r2 := sends[1].Sub(sends[0]), sends[2].Sub(sends[1]); r1 != stunRTO || r2 != 2*stunRTO {
		t.Fatalf("retransmissions after %v and %v, want %v and %v", r1, r2, stunRTO, 2*stunRTO)
	}
	var lost Event
	select {
	case lost = <-events:
	case <-time.After(5 * time.Second):
		t.Fatal("owner not told of the loss")
	}
	if lost.Kind != EventLost || lost.Pinhole.State != "lost" {
		t.Fatalf("first event %+v, want lost", lost)
	}
	select {
	case <-reopened:
	case <-time.After(5 * time.Second):
		t.Fatal("Reopen not called after the loss")
	}
	if got, want := lost.Pinhole.Keepalives, uint64(n+3); got < want {
		t.Fatalf("loss declared after %d keepalives, want the retransmissions first (%d)", got, want)
	}

	remote.setSilent(false)
	h.run(time.Minute)
	select {
	case ev := <-events:
		if ev.Kind != EventRestored {
			t.Fatalf("event after the far end came back: %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("owner not told the pinhole came back")
	}
	if st := p.Status(); st.State == "lost" || st.Losses != 1 {
		t.Fatalf("status after recovery: %+v", st)
	}
}

// TestFallbackToHook: when the far end does not answer STUN, the keeper
// moves to the owner's hook before calling anything lost, and stays there.
func TestFallbackToHook(t *testing.T) {
	h := newHarness(t, nil)
	remote := &fakeRemote{silent: true}
	var p *Pinhole
	var hooks sync.Mutex
	nHooks := 0
	p = h.addUDP(FixedLifetime(30*time.Second), remote, func(s *PinholeSpec) {
		s.Hook = func(context.Context) error {
			hooks.Lock()
			nHooks++
			hooks.Unlock()
			p.Replied(netip.AddrPort{})
			return nil
		}
		s.Notify = func(ev Event) { t.Errorf("unexpected event %+v", ev) }
	})
	h.run(5 * time.Minute)
	hooks.Lock()
	defer hooks.Unlock()
	if nHooks < 8 {
		t.Fatalf("hook refreshes in 5 minutes: %d", nHooks)
	}
	if st := p.Status(); st.Refresh != RefreshHook || st.Losses != 0 {
		t.Fatalf("status: %+v", st)
	}
}

type crlfStream struct {
	mu     sync.Mutex
	clk    clock.Clock
	writes []time.Time
	data   bytes.Buffer
	p      *Pinhole
}

func (c *crlfStream) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, c.clk.Now())
	c.data.Write(b)
	p := c.p
	c.mu.Unlock()
	p.Replied(netip.AddrPort{}) // the pong
	return len(b), nil
}

// TestCRLFOnStreamFlow: a TCP flow is refreshed with RFC 5626's CRLF ping
// in the recommended 95-120 s.
func TestCRLFOnStreamFlow(t *testing.T) {
	h := newHarness(t, nil)
	st := &crlfStream{clk: h.clk}
	st.mu.Lock()
	p, err := h.k.Add(PinholeSpec{
		Protocol:  TCP,
		Local:     netip.MustParseAddrPort("192.168.1.10:40000"),
		Remote:    netip.MustParseAddrPort("203.0.113.10:5060"),
		Stream:    st,
		Opened:    h.clk.Now(),
		SeenReply: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	st.p = p
	st.mu.Unlock()
	h.run(20 * time.Minute)
	st.mu.Lock()
	defer st.mu.Unlock()
	if !strings.HasPrefix(st.data.String(), "\r\n\r\n") {
		t.Fatalf("stream got %q, want CRLF pings", st.data.String())
	}
	for i, g := range gaps(st.writes[1:]) {
		if g < 95*time.Second || g > 120*time.Second {
			t.Fatalf("CRLF gap %d is %v, want 95-120 s", i, g)
		}
	}
	if s := p.Status(); s.Refresh != RefreshCRLF || s.Protocol != TCP {
		t.Fatalf("status: %+v", s)
	}
}

// TestTrafficDefersKeepalives: a flow busy with its own outbound traffic
// needs no keepalives.
func TestTrafficDefersKeepalives(t *testing.T) {
	h := newHarness(t, nil)
	remote := &fakeRemote{}
	p := h.addUDP(FixedLifetime(30*time.Second), remote, nil)
	h.run(10 * time.Second) // the warm-up refresh
	n := len(remote.sent())
	for range 60 {
		p.Traffic(200, 200)
		h.run(5 * time.Second)
	}
	if got := len(remote.sent()) - n; got != 0 {
		t.Fatalf("%d keepalives on a flow that sent every 5 s", got)
	}
	h.run(time.Minute)
	if got := len(remote.sent()) - n; got == 0 {
		t.Fatal("no keepalive once the flow fell silent")
	}
	if st := p.Status(); st.BytesOut < 60*200 || st.BytesIn < 60*200 {
		t.Fatalf("traffic not counted: %+v", st)
	}
}

func TestPinholeTable(t *testing.T) {
	h := newHarness(t, nil)
	remote := &fakeRemote{}
	h.addUDP(FixedLifetime(30*time.Second), remote, nil)
	h.run(time.Minute)
	rows := h.k.Snapshot()
	var buf bytes.Buffer
	if err := FormatPinholes(&buf, rows); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"LOCAL", "192.168.1.10:5060", "203.0.113.10:3478", "203.0.113.100:40000", "keepalive/stun", "30s"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	b, err := json.Marshal(rows)
	if err != nil {
		t.Fatal(err)
	}
	var back []PinholeStatus
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if len(back) != 1 || back[0] != rows[0] {
		t.Fatalf("JSON round trip changed the row:\n%+v\n%+v", rows, back)
	}
	if !strings.Contains(string(b), `"external":"203.0.113.100:40000"`) {
		t.Fatalf("JSON: %s", b)
	}
}

func TestAddRejectsBadSpecs(t *testing.T) {
	h := newHarness(t, nil)
	remote := netip.MustParseAddrPort("203.0.113.10:3478")
	for name, spec := range map[string]PinholeSpec{
		"no remote":     {Conn: &fakeRemote{}},
		"no refresh":    {Remote: remote},
		"STUN over TCP": {Protocol: TCP, Remote: remote, Conn: &fakeRemote{}},
		"bad protocol":  {Protocol: "sctp", Remote: remote, Conn: &fakeRemote{}},
	} {
		if _, err := h.k.Add(spec); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if n := len(h.k.Snapshot()); n != 0 {
		t.Fatalf("rejected specs left %d pinholes", n)
	}
	bad := DefaultKeeperConfig()
	bad.Margin = 0.7
	if _, err := NewKeeper(bad); err == nil {
		t.Fatal("a 70% margin was accepted")
	}
}
