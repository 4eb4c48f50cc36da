package probe

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/superpeer/superpeer/nat/clock"
)

// EstimatorConfig configures an Estimator.
type EstimatorConfig struct {
	// Probe names the STUN server and the network, clock and logger.
	Probe Config
	// Lifetime tunes each measurement.
	Lifetime LifetimeConfig
	// Default is the lifetime assumed until a measurement exists, and
	// the most that is assumed right after the network changed: 30 s,
	// Linux's unreplied timeout, which is what RFC 5626's 25-29 s UDP
	// keepalives are built around.
	Default time.Duration
	// Interval is how long a measurement stays current before the next.
	Interval time.Duration
	// RetryAfter is the wait after a failed measurement.
	RetryAfter time.Duration
	// RemapFactor is the fraction of the idle time that ObserveRemap
	// lowers the estimate to: a binding that died within idle lived less
	// than idle, and how much less is unknown until the next measurement.
	RemapFactor float64
	// Floor is the lowest estimate ObserveRemap may set.
	Floor time.Duration
	// Measure replaces MeasureLifetime(ctx, Probe, Lifetime), for tests.
	Measure func(ctx context.Context) (*LifetimeReport, error)
}

// DefaultEstimatorConfig returns the defaults: a 30 s default, a new
// measurement every 6 hours, 5 minutes after a failure, remaps halving
// the estimate down to 1 s. Probe.Server must be set.
func DefaultEstimatorConfig() EstimatorConfig {
	return EstimatorConfig{
		Probe:       DefaultConfig(),
		Lifetime:    DefaultLifetimeConfig(),
		Default:     30 * time.Second,
		Interval:    6 * time.Hour,
		RetryAfter:  5 * time.Minute,
		RemapFactor: 0.5,
		Floor:       time.Second,
	}
}

// Validate reports the first nonsense in c.
func (c EstimatorConfig) Validate() error {
	if c.Measure == nil {
		if err := c.Probe.Validate(); err != nil {
			return err
		}
		if err := c.Lifetime.Validate(); err != nil {
			return err
		}
	}
	switch {
	case c.Default <= 0 || c.Floor <= 0 || c.Floor > c.Default:
		return fmt.Errorf("%w: estimator: need 0 < Floor <= Default, have %v and %v", ErrConfig, c.Floor, c.Default)
	case c.Interval <= 0 || c.RetryAfter <= 0:
		return fmt.Errorf("%w: estimator: Interval %v and RetryAfter %v must be positive", ErrConfig, c.Interval, c.RetryAfter)
	case !(c.RemapFactor > 0 && c.RemapFactor < 1):
		return fmt.Errorf("%w: estimator: RemapFactor %v outside (0, 1)", ErrConfig, c.RemapFactor)
	}
	return nil
}

// Source says where the current estimate comes from.
type Source string

// Sources.
const (
	SourceDefault     Source = "default"
	SourceMeasurement Source = "measurement"
	SourceRemap       Source = "remap"
)

// EstimatorStatus is a snapshot of an Estimator, for superpeer nat
// --lifetime --json and the control API.
type EstimatorStatus struct {
	// Lifetime is the stream-state estimate the keeper plans with.
	Lifetime    time.Duration `json:"lifetime_ns"`
	Uncertainty time.Duration `json:"uncertainty_ns"`
	State       State         `json:"state"`
	// Unreplied is the estimate for a flow before its first exchange
	// after 2 s (a new pinhole's first keepalive must come before it).
	Unreplied time.Duration `json:"unreplied_ns"`
	Measured  bool          `json:"measured"`
	Source    Source        `json:"source"`
	// Last is the last successful measurement.
	Last *LifetimeReport `json:"last,omitempty"`
	// LastError is why the last measurement failed, if it did.
	LastError string `json:"last_error,omitempty"`
	Measuring bool   `json:"measuring"`
	// NextMeasurement is when the next measurement starts, unless one is
	// running or triggered.
	NextMeasurement time.Time `json:"next_measurement,omitzero"`
	// Remaps counts ObserveRemap calls.
	Remaps int `json:"remaps"`
}

// Estimator keeps the NAT's binding lifetime current for the keeper: it
// measures at Run's start, again every Interval and whenever the network
// changes, and lowers its estimate at once when a keepalive shows that a
// binding died early. Until the first measurement it answers Default.
//
// The keeper's side of it is Lifetime (or LifetimeOf), ObserveRemap and
// Changed; the daemon's is Run, NetworkChanged and Status.
type Estimator struct {
	cfg     EstimatorConfig
	clk     clock.Clock
	measure func(ctx context.Context) (*LifetimeReport, error)
	trigger chan struct{} // a measurement is wanted now

	mu        sync.Mutex // guards following
	stream    Bound      // current stream estimate (Alive/Dead)
	unreplied Bound
	measured  bool
	source    Source
	last      *LifetimeReport
	lastErr   string
	measuring bool
	next      time.Time
	remaps    int
	gen       uint64             // bumped when running measurements become stale
	cancel    context.CancelFunc // cancels the running measurement
	changed   chan struct{}      // closed and replaced on every change
}

// NewEstimator validates cfg and returns an Estimator answering
// cfg.Default; Run starts measuring.
func NewEstimator(cfg EstimatorConfig) (*Estimator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Estimator{
		cfg:     cfg,
		clk:     clock.OrReal(cfg.Probe.Clock),
		measure: cfg.Measure,
		trigger: make(chan struct{}, 1),
		source:  SourceDefault,
		changed: make(chan struct{}),
	}
	e.stream = Bound{State: StateUnknown, Alive: cfg.Default}
	e.unreplied = Bound{State: StateUnknown, Alive: cfg.Default}
	if e.measure == nil {
		e.measure = func(ctx context.Context) (*LifetimeReport, error) {
			return MeasureLifetime(ctx, cfg.Probe, cfg.Lifetime)
		}
	}
	return e, nil
}

// Lifetime is the estimate for a long-lived flow (the stream state): est
// is a lower bound (the longest idle a probe survived), uncertainty the
// width of the interval above it that holds the real lifetime, measured
// false while est is the default. After ObserveRemap, est is the lowered
// value until the next measurement.
func (e *Estimator) Lifetime() (est, uncertainty time.Duration, state State, measured bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stream.Alive, e.stream.Uncertainty(), e.stream.State, e.measured
}

// LifetimeOf is Lifetime for state s. StateUnreplied is the lifetime of a
// flow that has exchanged nothing since its first 2 s: a new pinhole's
// first keepalive must come before it.
func (e *Estimator) LifetimeOf(s State) (est, uncertainty time.Duration, measured bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	b := e.stream
	if s == StateUnreplied {
		b = e.unreplied
	}
	return b.Alive, b.Uncertainty(), e.measured
}

// Changed returns a channel that is closed at the next change of the
// estimate. Take it before reading the estimate, so no change is missed:
//
//	ch := est.Changed()
//	lifetime, _, _, _ := est.Lifetime()
//	... <-ch
func (e *Estimator) Changed() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.changed
}

// ObserveRemap tells the Estimator that a keepalive's reply showed a new
// mapping (or none) after the flow had been idle for idle: the binding
// lived less than idle. If that contradicts the estimate, the estimate
// drops at once to RemapFactor times idle (not below Floor), for both
// states, and a new measurement is started; a measurement already running
// then no longer counts.
func (e *Estimator) ObserveRemap(idle time.Duration) {
	e.mu.Lock()
	e.remaps++
	if e.stream.Dead != 0 && idle >= e.stream.Dead {
		// Idle past the measured end of the binding: expected.
		e.mu.Unlock()
		return
	}
	lowered := max(e.cfg.Floor, time.Duration(float64(idle)*e.cfg.RemapFactor))
	if lowered >= e.stream.Alive {
		e.mu.Unlock()
		return
	}
	old := e.stream.Alive
	state := e.stream.State
	e.stream = Bound{State: state, Alive: lowered, Dead: max(idle, lowered)}
	if e.unreplied.Alive > lowered {
		e.unreplied = Bound{State: e.unreplied.State, Alive: lowered, Dead: max(idle, lowered)}
	}
	e.source = SourceRemap
	e.gen++
	e.notifyLocked()
	e.mu.Unlock()
	e.cfg.Probe.logger().Warn("NAT binding died early: lifetime estimate lowered until re-measured",
		"idle", idle, "was", old, "now", lowered)
	e.poke()
}

// NetworkChanged tells the Estimator that the host's network changed (an
// address, the gateway, the uplink): the running measurement is abandoned,
// the estimate falls back to at most Default and a new measurement starts.
func (e *Estimator) NetworkChanged() {
	e.mu.Lock()
	e.gen++
	if e.cancel != nil {
		e.cancel()
	}
	if e.measured || e.stream.Alive > e.cfg.Default {
		e.measured = false
		e.source = SourceDefault
		e.stream = Bound{State: StateUnknown, Alive: min(e.stream.Alive, e.cfg.Default)}
		e.unreplied = Bound{State: StateUnknown, Alive: min(e.unreplied.Alive, e.cfg.Default)}
		e.notifyLocked()
	}
	e.mu.Unlock()
	e.cfg.Probe.logger().Info("network changed: NAT binding lifetime to be re-measured")
	e.poke()
}

// Status returns a snapshot.
func (e *Estimator) Status() EstimatorStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := EstimatorStatus{
		Lifetime: e.stream.Alive, Uncertainty: e.stream.Uncertainty(), State: e.stream.State,
		Unreplied: e.unreplied.Alive, Measured: e.measured, Source: e.source,
		LastError: e.lastErr, Measuring: e.measuring, Remaps: e.remaps,
	}
	if e.last != nil {
		last := *e.last
		st.Last = &last
	}
	if !e.measuring {
		st.NextMeasurement = e.next
	}
	return st
}

// Run measures now, then whenever the last measurement is Interval old
// (RetryAfter after a failure) or a new one is triggered, until ctx ends.
// It returns nil then.
func (e *Estimator) Run(ctx context.Context) error {
	for {
		e.drainTrigger()
		mctx, cancel := context.WithCancel(ctx)
		e.mu.Lock()
		e.measuring, e.cancel = true, cancel
		gen := e.gen
		e.mu.Unlock()

		rep, err := e.measure(mctx)
		cancel()

		e.mu.Lock()
		e.measuring, e.cancel = false, nil
		stale := e.gen != gen
		e.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		if stale {
			// The network changed or a binding died early while this
			// measurement ran: measure again at once.
			continue
		}
		wait := e.cfg.Interval
		if err != nil || rep == nil || !rep.Stream.Measured() && !rep.Unreplied.Measured() {
			wait = e.cfg.RetryAfter
			e.mu.Lock()
			e.lastErr = fmt.Sprint(err)
			e.mu.Unlock()
			e.cfg.Probe.logger().Warn("NAT binding lifetime not measured", "err", err, "retry_in", wait)
		} else {
			e.apply(rep)
		}
		e.mu.Lock()
		e.next = e.clk.Now().Add(wait)
		e.mu.Unlock()
		t := e.clk.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		case <-e.trigger:
			t.Stop()
		}
	}
}

// apply makes rep the current estimate.
func (e *Estimator) apply(rep *LifetimeReport) {
	e.mu.Lock()
	defer e.mu.Unlock()
	stream, unreplied := rep.Stream, rep.Unreplied
	// Plan with what was measured: a state that failed takes the other
	// state's value if that is shorter (the unreplied timer is never the
	// longer one on Linux), else the default.
	switch {
	case !stream.Measured():
		stream = unreplied
	case !unreplied.Measured():
		unreplied = Bound{State: StateUnreplied, Alive: min(stream.Alive, e.cfg.Default)}
	}
	e.stream, e.unreplied = stream, unreplied
	e.measured, e.source, e.last, e.lastErr = true, SourceMeasurement, rep, ""
	e.notifyLocked()
}

func (e *Estimator) notifyLocked() {
	close(e.changed)
	e.changed = make(chan struct{})
}

func (e *Estimator) poke() {
	select {
	case e.trigger <- struct{}{}:
	default:
	}
}

func (e *Estimator) drainTrigger() {
	select {
	case <-e.trigger:
	default:
	}
}
