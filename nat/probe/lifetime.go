package probe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/pion/stun/v4"

	"github.com/superpeer/superpeer/nat/stunserver"
)

// State is the conntrack state of the flow whose binding lifetime is
// measured. Linux (and so OpenWrt) keeps a UDP flow on the short
// "unreplied" timeout (nf_conntrack_udp_timeout, 30 s by default) until a
// packet passes after the first reply and more than 2 s into the flow;
// from then on it is on the "stream" timeout
// (nf_conntrack_udp_timeout_stream, 120 s or 180 s). A probe on a fresh
// flow reads the short one, which is not the lifetime of a long-lived flow.
type State string

// States.
const (
	// StateUnknown marks a lifetime that was not measured (a default).
	StateUnknown State = "unknown"
	// StateUnreplied is a flow whose only exchange was in its first 2 s: a
	// new pinhole before its first keepalive.
	StateUnreplied State = "unreplied"
	// StateStream is a flow that carried traffic after its first 2 s:
	// every pinhole after its first keepalive.
	StateStream State = "stream"
)

// LifetimeConfig tunes the binding-lifetime measurement.
//
// The measurement probes a ladder of idle times, Min, Min+MinStep, ...,
// growing by Step once that is more than MinStep, up to Max. Each rung has
// its own socket X, primed (binding made, and for the stream state
// exchanged again after StreamAfter) so that its idle time starts at
// Lead times the rung's idle after the start; it is probed when it has
// been idle for the rung's time: a Binding request from another socket Y
// with RESPONSE-PORT set to X's mapped port, whose response reaches X only
// while X's binding lives (RFC 5780 section 4.6). The first dead rung ends
// the ladder, after (1+Lead) times its idle time; then Refine more probes,
// on sockets already primed for later rungs, split the interval between
// the last live and the first dead rung. So a measurement ends within
// about (1+Lead)*Step times the lifetime plus two ProbeWaits, with about
// ln((1+Lead)/Lead)/ln(Step) sockets open at once per state.
type LifetimeConfig struct {
	// Min is the shortest idle time probed.
	Min time.Duration
	// Max is the longest; a binding that outlives it is reported as
	// lasting at least Max.
	Max time.Duration
	// Step is the ratio between rungs (the coarse resolution).
	Step float64
	// MinStep is the smallest gap between rungs.
	MinStep time.Duration
	// Lead is when a rung's idle time starts, as a fraction of that idle
	// time after the measurement's start.
	Lead float64
	// StreamAfter is when a stream-state socket sends its second request,
	// after its first; conntrack needs more than 2 s.
	StreamAfter time.Duration
	// ProbeWait is how long X waits for a probe's response before the
	// binding counts as dead; the probe is resent within it.
	ProbeWait time.Duration
	// Refine is the number of probes that split the final interval.
	Refine int
	// States are the states to measure, in parallel.
	States []State
}

// DefaultLifetimeConfig returns the defaults: rungs from 1 s to 10 min,
// 5 % apart (at least 0.5 s), Lead 0.3, the stream exchange after 2.5 s,
// 1.2 s to wait for a probe, 3 refining probes, both states.
func DefaultLifetimeConfig() LifetimeConfig {
	return LifetimeConfig{
		Min:         time.Second,
		Max:         10 * time.Minute,
		Step:        1.05,
		MinStep:     500 * time.Millisecond,
		Lead:        0.3,
		StreamAfter: 2500 * time.Millisecond,
		ProbeWait:   1200 * time.Millisecond,
		Refine:      3,
		States:      []State{StateStream, StateUnreplied},
	}
}

// maxRungs bounds the ladder (and so the sockets one measurement may
// open).
const maxRungs = 1000

// Validate reports the first nonsense in c.
func (c LifetimeConfig) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: lifetime: %s", ErrConfig, fmt.Sprintf(format, args...))
	}
	switch {
	case c.Min <= 0 || c.Max <= c.Min:
		return bad("need 0 < Min < Max, have %v and %v", c.Min, c.Max)
	case !(c.Step > 1 && c.Step <= 2):
		return bad("Step %v outside (1, 2]", c.Step)
	case c.MinStep <= 0:
		return bad("MinStep %v must be positive", c.MinStep)
	case !(c.Lead >= 0 && c.Lead <= 1):
		return bad("Lead %v outside [0, 1]", c.Lead)
	case c.StreamAfter <= 2*time.Second:
		return bad("StreamAfter %v: conntrack needs more than 2 s", c.StreamAfter)
	case c.ProbeWait <= 0:
		return bad("ProbeWait %v must be positive", c.ProbeWait)
	case c.Refine < 0 || c.Refine > 20:
		return bad("Refine %d outside 0..20", c.Refine)
	case len(c.States) == 0:
		return bad("no States to measure")
	case len(c.ladder()) > maxRungs:
		return bad("%d rungs from %v to %v, at most %d", len(c.ladder()), c.Min, c.Max, maxRungs)
	}
	for _, s := range c.States {
		if s != StateStream && s != StateUnreplied {
			return bad("cannot measure state %q", s)
		}
	}
	return nil
}

// ladder is the coarse idle times, ascending, ending with Max.
func (c LifetimeConfig) ladder() []time.Duration {
	var out []time.Duration
	for x := c.Min; x < c.Max && len(out) <= maxRungs; {
		out = append(out, x)
		x = max(time.Duration(float64(x)*c.Step), x+c.MinStep)
	}
	return append(out, c.Max)
}

// Bound is one state's measured binding lifetime: it lies between Alive
// and Dead.
type Bound struct {
	State State `json:"state"`
	// Alive is the longest idle time after which a probe still reached
	// its socket. It is the estimate: a lower bound, so a keepalive timed
	// from it is never late.
	Alive time.Duration `json:"alive_ns"`
	// Dead is the shortest idle time above Alive after which a probe did
	// not; zero when every probe up to Max got through.
	Dead time.Duration `json:"dead_ns"`
	// Probes is the number of probes sent.
	Probes int `json:"probes"`
	// Took is how long this state's measurement ran.
	Took time.Duration `json:"took_ns"`
	// Err says why the measurement failed; empty on success.
	Err string `json:"error,omitempty"`
}

// Measured reports whether b holds a measurement.
func (b Bound) Measured() bool { return b.Err == "" && (b.Alive > 0 || b.Dead > 0) }

// Estimate is the lifetime to plan with: Alive.
func (b Bound) Estimate() time.Duration { return b.Alive }

// Uncertainty is Dead-Alive, the width of the interval the lifetime lies
// in; zero when the lifetime exceeded the longest probe.
func (b Bound) Uncertainty() time.Duration {
	if b.Dead == 0 {
		return 0
	}
	return b.Dead - b.Alive
}

// LifetimeReport is the result of MeasureLifetime.
type LifetimeReport struct {
	Server netip.AddrPort `json:"server"`
	// External is the site's public address as the server saw it.
	External  netip.Addr    `json:"external"`
	Stream    Bound         `json:"stream"`
	Unreplied Bound         `json:"unreplied"`
	Started   time.Time     `json:"started"`
	Took      time.Duration `json:"took_ns"`
}

// Of returns the bound of state s.
func (r *LifetimeReport) Of(s State) Bound {
	if s == StateUnreplied {
		return r.Unreplied
	}
	return r.Stream
}

// ErrNotMeasured is returned by MeasureLifetime when no state could be
// measured.
var ErrNotMeasured = errors.New("binding lifetime not measured")

// MeasureLifetime measures how long the NAT keeps an idle UDP binding, for
// each state of lc.States in parallel (see LifetimeConfig for how). A
// state that could not be measured has Err set; the error is non-nil only
// when no state was measured.
func MeasureLifetime(ctx context.Context, cfg Config, lc LifetimeConfig) (*LifetimeReport, error) {
	e, err := cfg.env(ctx)
	if err != nil {
		return nil, err
	}
	if err := lc.Validate(); err != nil {
		return nil, err
	}
	rep := &LifetimeReport{Server: e.server, Started: e.clk.Now()}
	y, err := e.open()
	if err != nil {
		return nil, fmt.Errorf("measuring the binding lifetime: %w", err)
	}
	defer y.Close()
	yb, err := bind(ctx, y, e.server, cfg.timing())
	if err != nil {
		return nil, fmt.Errorf("measuring the binding lifetime via %v: %w", e.server, err)
	}
	rep.External = yb.mapped.Addr()

	bounds := make([]Bound, len(lc.States))
	var wg sync.WaitGroup
	for i, st := range lc.States {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &ladderRun{e: e, lc: lc, state: st, y: y, ext: rep.External}
			bounds[i] = r.run(ctx)
		}()
	}
	wg.Wait()
	rep.Stream = Bound{State: StateStream, Err: "not measured"}
	rep.Unreplied = Bound{State: StateUnreplied, Err: "not measured"}
	measured := false
	var errs []error
	for _, b := range bounds {
		if b.State == StateUnreplied {
			rep.Unreplied = b
		} else {
			rep.Stream = b
		}
		if b.Measured() {
			measured = true
		} else {
			errs = append(errs, fmt.Errorf("%s: %s", b.State, b.Err))
		}
	}
	rep.Took = e.clk.Since(rep.Started)
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	if !measured {
		return rep, fmt.Errorf("%w via %v: %w", ErrNotMeasured, e.server, errors.Join(errs...))
	}
	e.cfg.logger().Info("NAT binding lifetime measured", "server", e.server,
		"stream", rep.Stream.Estimate(), "stream_uncertainty", rep.Stream.Uncertainty(),
		"unreplied", rep.Unreplied.Estimate(), "unreplied_uncertainty", rep.Unreplied.Uncertainty(),
		"took", rep.Took.Round(100*time.Millisecond))
	return rep, nil
}

// xsock is one probed socket X.
type xsock struct {
	c        *conn
	mapped   netip.AddrPort
	idleFrom time.Time     // when its last exchange ended
	target   time.Duration // idle time at which to probe it; 0: none
	probing  bool
}

type primeDone struct {
	s   *xsock
	err error
}

type probeDone struct {
	s     *xsock
	idle  time.Duration
	alive bool
	err   error
}

// ladderRun measures one state.
type ladderRun struct {
	e     *env
	lc    LifetimeConfig
	state State
	y     *conn
	ext   netip.Addr
	start time.Time
	wg    sync.WaitGroup
}

// maxPrimeFailures is how many sockets may fail to prime before the
// measurement gives up (a lost request now and then is fine).
const maxPrimeFailures = 5

func (r *ladderRun) run(ctx context.Context) (b Bound) {
	b = Bound{State: r.state}
	r.start = r.e.clk.Now()
	ladder := r.lc.ladder()
	primeLead := time.Duration(0)
	if r.state == StateStream {
		primeLead = r.lc.StreamAfter
	}
	primeAt := func(x time.Duration) time.Duration {
		return max(0, time.Duration(r.lc.Lead*float64(x))-primeLead)
	}
	// Every goroutine sends exactly one event, so this never blocks.
	events := make(chan any, 2*len(ladder)+r.lc.Refine+1)
	ctx, cancel := context.WithCancel(ctx)
	var pool []*xsock
	defer func() {
		cancel()
		r.wg.Wait()
		close(events)
		for ev := range events {
			switch ev := ev.(type) {
			case primeDone:
				if ev.s != nil {
					ev.s.c.Close()
				}
			case probeDone:
				ev.s.c.Close()
			}
		}
		for _, s := range pool {
			s.c.Close()
		}
		b.Took = r.e.clk.Since(r.start)
	}()

	var (
		next           int // next rung to prime
		primes, probes int // in flight
		primeFailures  int
		alive, dead    []time.Duration
		refining       bool
	)
	launch := func(f func() any) {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			events <- f()
		}()
	}
	for {
		now := r.e.clk.Now()
		if !refining {
			for next < len(ladder) && now.Sub(r.start) >= primeAt(ladder[next]) {
				x := ladder[next]
				primes++
				next++
				launch(func() any { return r.prime(ctx, x) })
			}
		}
		scheduled := false
		wake := time.Time{}
		for _, s := range pool {
			if s.target == 0 || s.probing {
				continue
			}
			if at := s.idleFrom.Add(s.target); !now.Before(at) {
				s.probing = true
				probes++
				b.Probes++
				launch(func() any { return r.probe(ctx, s) })
			} else {
				scheduled = true
				if wake.IsZero() || at.Before(wake) {
					wake = at
				}
			}
		}
		if !scheduled && probes == 0 && (refining || (next == len(ladder) && primes == 0)) {
			break
		}
		if !refining && next < len(ladder) {
			if at := r.start.Add(primeAt(ladder[next])); wake.IsZero() || at.Before(wake) {
				wake = at
			}
		}
		var ev any
		if wake.IsZero() {
			select {
			case ev = <-events:
			case <-ctx.Done():
			}
		} else {
			t := r.e.clk.NewTimer(max(0, wake.Sub(now)))
			select {
			case <-t.C():
			case ev = <-events:
			case <-ctx.Done():
			}
			t.Stop()
		}
		if err := ctx.Err(); err != nil {
			b.Err = err.Error()
			return b
		}
		switch ev := ev.(type) {
		case primeDone:
			primes--
			switch {
			case ev.err != nil:
				if primeFailures++; primeFailures > maxPrimeFailures {
					b.Err = fmt.Sprintf("priming sockets: %v", ev.err)
					return b
				}
			case refining:
				ev.s.c.Close()
			default:
				pool = append(pool, ev.s)
			}
		case probeDone:
			probes--
			pool = slices.DeleteFunc(pool, func(s *xsock) bool { return s == ev.s })
			ev.s.c.Close()
			switch {
			case ev.err != nil:
				b.Err = ev.err.Error()
				return b
			case ev.alive:
				alive = append(alive, ev.idle)
			default:
				dead = append(dead, ev.idle)
				if !refining {
					refining = true
					pool = r.planRefine(pool, alive, dead)
				}
			}
		}
	}
	b.Alive, b.Dead = bracket(alive, dead)
	if b.Alive == 0 && b.Dead == 0 {
		b.Err = "no probe got an answer"
	}
	return b
}

// bracket returns the longest idle a probe survived and the shortest
// longer one it did not. A dead probe below a live one was a lost packet,
// not the binding's end: only a live probe is proof.
func bracket(alive, dead []time.Duration) (lo, hi time.Duration) {
	for _, a := range alive {
		lo = max(lo, a)
	}
	for _, d := range dead {
		if d > lo && (hi == 0 || d < hi) {
			hi = d
		}
	}
	return lo, hi
}

// planRefine stops the ladder at its first dead rung and gives the
// sockets already primed for later rungs new targets that split the
// interval between the last live and the first dead rung. Sockets it has
// no use for are closed and left out of the returned pool.
func (r *ladderRun) planRefine(pool []*xsock, alive, dead []time.Duration) []*xsock {
	lo, hi := bracket(alive, dead)
	now := r.e.clk.Now()
	var spare []*xsock
	kept := pool[:0]
	for _, s := range pool {
		if s.probing {
			kept = append(kept, s)
			continue
		}
		s.target = 0
		spare = append(spare, s)
	}
	// Longest idle first: the sockets closest to each target.
	slices.SortFunc(spare, func(a, b *xsock) int { return a.idleFrom.Compare(b.idleFrom) })
	n := r.lc.Refine
	for m := n; m >= 1 && hi > lo; m-- {
		t := lo + (hi-lo)*time.Duration(m)/time.Duration(n+1)
		for i, s := range spare {
			if s != nil && now.Sub(s.idleFrom) < t {
				s.target = t
				kept = append(kept, s)
				spare[i] = nil
				break
			}
		}
	}
	for _, s := range spare {
		if s != nil {
			s.c.Close()
		}
	}
	return kept
}

// prime opens a socket and makes its binding, in r.state.
func (r *ladderRun) prime(ctx context.Context, target time.Duration) primeDone {
	c, err := r.e.open()
	if err != nil {
		return primeDone{err: err}
	}
	tm := r.e.cfg.timing()
	first := r.e.clk.Now()
	b1, err := bind(ctx, c, r.e.server, tm)
	if err == nil && b1.mapped.Addr() != r.ext {
		err = fmt.Errorf("socket mapped to %v, the probing socket to %v: the NAT uses several addresses", b1.mapped, r.ext)
	}
	if err != nil {
		c.Close()
		return primeDone{err: err}
	}
	s := &xsock{c: c, mapped: b1.mapped, idleFrom: b1.at, target: target}
	if r.state != StateStream {
		return primeDone{s: s}
	}
	// Traffic after the first reply and more than 2 s into the flow moves
	// conntrack to the stream timeout; waiting for that is the point.
	t := r.e.clk.NewTimer(max(0, r.lc.StreamAfter-r.e.clk.Since(first)))
	defer t.Stop()
	select {
	case <-t.C():
	case <-ctx.Done():
		c.Close()
		return primeDone{err: ctx.Err()}
	}
	b2, err := bind(ctx, c, r.e.server, tm)
	if err == nil && b2.mapped != b1.mapped {
		err = fmt.Errorf("binding moved from %v to %v within %v", b1.mapped, b2.mapped, r.lc.StreamAfter)
	}
	if err != nil {
		c.Close()
		return primeDone{err: err}
	}
	s.idleFrom = b2.at
	return primeDone{s: s}
}

// probe asks the server, from Y, to answer to X's mapped port, and reports
// whether the answer reached X. Each resend is its own transaction, so a
// late arrival is credited with the idle time of the request that drew it.
func (r *ladderRun) probe(ctx context.Context, s *xsock) probeDone {
	got := make(chan received, 8)
	// Y hears about a probe only from a server that refuses or ignores
	// RESPONSE-PORT; without this every probe would read as a dead binding.
	misrouted := make(chan received, 8)
	var (
		sent     []time.Time
		tids     [][stun.TransactionIDSize]byte
		withdraw []func()
	)
	defer func() {
		for _, w := range withdraw {
			w()
		}
	}()
	send := func() error {
		req, err := stun.Build(stun.TransactionID, stun.BindingRequest, stunserver.ResponsePort(s.mapped.Port()))
		if err != nil {
			return err
		}
		withdraw = append(withdraw, s.c.expectOn(req.TransactionID, got), r.y.expectOn(req.TransactionID, misrouted))
		tids = append(tids, req.TransactionID)
		sent = append(sent, r.e.clk.Now())
		return r.y.send(r.e.server, req.Raw)
	}
	if err := send(); err != nil {
		return probeDone{s: s, err: err}
	}
	deadline := r.e.clk.NewTimer(r.lc.ProbeWait)
	defer deadline.Stop()
	wait := r.e.cfg.RTO
	resend := r.e.clk.NewTimer(wait)
	defer resend.Stop()
	for {
		select {
		case m := <-got:
			i := slices.Index(tids, m.msg.TransactionID)
			return probeDone{s: s, idle: sent[i].Sub(s.idleFrom), alive: true}
		case m := <-misrouted:
			if m.msg.Type.Class == stun.ClassErrorResponse {
				var ec stun.ErrorCodeAttribute
				ec.GetFrom(m.msg)
				return probeDone{s: s, err: fmt.Errorf("the server refuses RESPONSE-PORT: %v", ec)}
			}
			return probeDone{s: s, err: errors.New("the server ignores RESPONSE-PORT: the probe's answer came back to its sender")}
		case <-resend.C():
			if len(sent) < cap(got) {
				if err := send(); err != nil {
					return probeDone{s: s, err: err}
				}
			}
			if wait *= 2; r.e.clk.Since(sent[0])+wait < r.lc.ProbeWait {
				resend.Reset(wait)
			}
		case <-deadline.C():
			// Silence means a dead binding only if the server is still
			// there to answer.
			if _, err := bind(ctx, r.y, r.e.server, r.e.cfg.timing()); err != nil {
				return probeDone{s: s, err: fmt.Errorf("the server stopped answering: %w", err)}
			}
			return probeDone{s: s, idle: sent[0].Sub(s.idleFrom), alive: false}
		case <-ctx.Done():
			return probeDone{s: s, err: ctx.Err()}
		}
	}
}
