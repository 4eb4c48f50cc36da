package probe

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pion/transport/v5/vnet"

	"github.com/superpeer/superpeer/nat/clock"
)

type measureResult struct {
	rep *LifetimeReport
	err error
}

// scriptedMeasure stands in for MeasureLifetime: each call hands the test a
// channel on which the test answers it.
type scriptedMeasure struct {
	calls chan chan measureResult
}

func (s *scriptedMeasure) measure(ctx context.Context) (*LifetimeReport, error) {
	reply := make(chan measureResult, 1)
	select {
	case s.calls <- reply:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-reply:
		return r.rep, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// next waits for the Estimator's next measurement.
func (s *scriptedMeasure) next(t *testing.T) chan measureResult {
	t.Helper()
	select {
	case c := <-s.calls:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("the estimator did not start a measurement")
		return nil
	}
}

func (s *scriptedMeasure) none(t *testing.T) {
	t.Helper()
	select {
	case <-s.calls:
		t.Fatal("the estimator measured when it had no reason to")
	case <-time.After(50 * time.Millisecond):
	}
}

func report(stream, unreplied time.Duration) *LifetimeReport {
	return &LifetimeReport{
		Stream:    Bound{State: StateStream, Alive: stream, Dead: stream + time.Second},
		Unreplied: Bound{State: StateUnreplied, Alive: unreplied, Dead: unreplied + time.Second},
	}
}

func waitChanged(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("no change notification after %s", what)
	}
}

func newTestEstimator(t *testing.T) (*Estimator, *scriptedMeasure, *clock.Fake) {
	t.Helper()
	clk := clock.NewFake(time.Unix(1_000_000, 0))
	sm := &scriptedMeasure{calls: make(chan chan measureResult)}
	cfg := DefaultEstimatorConfig()
	cfg.Probe.Clock, cfg.Probe.Logger, cfg.Measure = clk, quietLogger(), sm.measure
	est, err := NewEstimator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- est.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return est, sm, clk
}

func armed(t *testing.T, clk *clock.Fake) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := clk.WaitTimers(ctx, 1); err != nil {
		t.Fatal("the estimator never went to sleep")
	}
}

// TestEstimatorLifecycle walks the Estimator through what the keeper sees:
// the default, a measurement, the periodic re-measurement, a failed one,
// and a network change.
func TestEstimatorLifecycle(t *testing.T) {
	est, sm, clk := newTestEstimator(t)
	cfg := DefaultEstimatorConfig()

	ch := est.Changed()
	if e, u, st, m := est.Lifetime(); e != cfg.Default || u != 0 || st != StateUnknown || m {
		t.Fatalf("before measuring: Lifetime = %v, %v, %v, %v; want the %v default, unmeasured", e, u, st, m, cfg.Default)
	}
	sm.next(t) <- measureResult{rep: report(120*time.Second, 30*time.Second)}
	waitChanged(t, ch, "the first measurement")
	if e, u, st, m := est.Lifetime(); e != 120*time.Second || u != time.Second || st != StateStream || !m {
		t.Fatalf("after measuring: Lifetime = %v, %v, %v, %v; want 120s, 1s, stream, measured", e, u, st, m)
	}
	if e, _, _ := est.LifetimeOf(StateUnreplied); e != 30*time.Second {
		t.Fatalf("unreplied lifetime %v, want 30s", e)
	}

	armed(t, clk)
	clk.Advance(cfg.Interval - time.Second)
	sm.none(t)
	ch = est.Changed()
	clk.Advance(time.Second)
	sm.next(t) <- measureResult{err: errors.New("server unreachable")}
	armed(t, clk)
	if e, _, _, m := est.Lifetime(); e != 120*time.Second || !m {
		t.Fatalf("a failed re-measurement lost the estimate: %v, measured %v", e, m)
	}
	if st := est.Status(); st.LastError == "" || st.Source != SourceMeasurement {
		t.Fatalf("status after a failure: %+v", st)
	}
	clk.Advance(cfg.RetryAfter)
	sm.next(t) <- measureResult{rep: report(90*time.Second, 30*time.Second)}
	waitChanged(t, ch, "a re-measurement")
	if e, _, _, _ := est.Lifetime(); e != 90*time.Second {
		t.Fatalf("after re-measuring: %v, want 90s", e)
	}

	// A network change: back to at most the default at once, and a new
	// measurement without waiting for the interval.
	armed(t, clk)
	ch = est.Changed()
	est.NetworkChanged()
	waitChanged(t, ch, "a network change")
	if e, _, st, m := est.Lifetime(); e != cfg.Default || m || st != StateUnknown {
		t.Fatalf("after a network change: %v %v measured %v, want the default", e, st, m)
	}
	reply := sm.next(t)
	// A second change while measuring abandons that measurement: its
	// result never shows.
	est.NetworkChanged()
	ch = est.Changed()
	reply <- measureResult{rep: report(200*time.Second, 30*time.Second)}
	sm.next(t) <- measureResult{rep: report(60*time.Second, 20*time.Second)}
	waitChanged(t, ch, "the measurement after the network change")
	if e, _, _, m := est.Lifetime(); e != 60*time.Second || !m {
		t.Fatalf("the estimate is %v (measured %v); want 60s, not the abandoned measurement's 200s", e, m)
	}
}

// TestEstimatorRemap shows ObserveRemap lowering the estimate at once,
// ignoring what the measurement already explains, and making a running
// measurement not count.
func TestEstimatorRemap(t *testing.T) {
	est, sm, clk := newTestEstimator(t)
	ch := est.Changed()
	sm.next(t) <- measureResult{rep: report(120*time.Second, 30*time.Second)}
	waitChanged(t, ch, "the first measurement")
	armed(t, clk)

	// Idle past the measured end of the binding: no news.
	est.ObserveRemap(125 * time.Second)
	if e, _, _, _ := est.Lifetime(); e != 120*time.Second {
		t.Fatalf("a remap after 125 s lowered a 120-121 s estimate to %v", e)
	}
	sm.none(t)

	ch = est.Changed()
	est.ObserveRemap(100 * time.Second)
	select {
	case <-ch:
	default:
		t.Fatal("ObserveRemap did not notify at once")
	}
	if e, u, st, _ := est.Lifetime(); e != 50*time.Second || u != 50*time.Second || st != StateStream {
		t.Fatalf("after a remap at 100 s idle: %v ± %v %v, want 50s ± 50s stream", e, u, st)
	}
	if e, _, _ := est.LifetimeOf(StateUnreplied); e != 30*time.Second {
		t.Fatalf("unreplied lifetime %v after the remap, want it kept at 30s", e)
	}
	if st := est.Status(); st.Source != SourceRemap || st.Remaps != 2 {
		t.Fatalf("status %+v", st)
	}
	// The remap starts a measurement without waiting for the interval; a
	// second remap while it runs makes it stale.
	reply := sm.next(t)
	est.ObserveRemap(40 * time.Second)
	if e, _, _, _ := est.Lifetime(); e != 20*time.Second {
		t.Fatalf("second remap: %v, want 20s", e)
	}
	if e, _, _ := est.LifetimeOf(StateUnreplied); e != 20*time.Second {
		t.Fatalf("unreplied %v after a remap below it, want 20s", e)
	}
	reply <- measureResult{rep: report(120*time.Second, 30*time.Second)}
	ch = est.Changed()
	sm.next(t) <- measureResult{rep: report(45*time.Second, 15*time.Second)}
	waitChanged(t, ch, "the measurement after the remaps")
	if e, _, _, m := est.Lifetime(); e != 45*time.Second || !m {
		t.Fatalf("after re-measuring: %v measured %v, want 45s from the fresh measurement", e, m)
	}
	// Repeated remaps never go below the floor.
	for range 10 {
		est.ObserveRemap(time.Second)
	}
	if e, _, _, _ := est.Lifetime(); e != DefaultEstimatorConfig().Floor {
		t.Fatalf("after many remaps: %v, want the floor", e)
	}
}

// TestEstimatorMeasuresVNet runs an Estimator with the real measurement
// behind a vnet NAT whose bindings live 40 s.
func TestEstimatorMeasuresVNet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newVWorld(t, &vnet.NATType{MappingLifeTime: 40 * time.Second})
		defer w.close(t)
		cfg := DefaultEstimatorConfig()
		cfg.Probe = w.config()
		est, err := NewEstimator(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ch := est.Changed()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- est.Run(ctx) }()
		<-ch
		e, u, st, m := est.Lifetime()
		if !m || st != StateStream || e > 40*time.Second || e+u <= 40*time.Second || u > 2*time.Second {
			t.Errorf("Lifetime = %v ± %v %v measured %v, want just under 40s", e, u, st, m)
		}
		if s := est.Status(); s.Last == nil || s.NextMeasurement.IsZero() && !s.Measuring {
			t.Errorf("status lacks the measurement: %+v", s)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

func TestEstimatorConfigValidate(t *testing.T) {
	good := DefaultEstimatorConfig()
	good.Probe.Server = "192.0.2.1:3478"
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*EstimatorConfig){
		"no server":          func(c *EstimatorConfig) { c.Probe.Server = "" },
		"floor over default": func(c *EstimatorConfig) { c.Floor = time.Hour },
		"zero interval":      func(c *EstimatorConfig) { c.Interval = 0 },
		"remap factor 1":     func(c *EstimatorConfig) { c.RemapFactor = 1 },
	} {
		c := good
		mutate(&c)
		if _, err := NewEstimator(c); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: NewEstimator = %v, want ErrConfig", name, err)
		}
	}
}
