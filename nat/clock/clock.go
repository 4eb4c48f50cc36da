// Package clock is the injectable time source of Superpeer.
//
// Every timer that decides behaviour (keepalive intervals, lifetime probes,
// election timeouts, record expiry) takes a Clock, so tests drive time with
// a Fake instead of sleeping. It lives under nat/ because nat is the lowest
// layer; election, overlay and superpeer import it from here.
package clock

import "time"

// Clock tells time and makes timers.
type Clock interface {
	Now() time.Time
	// NewTimer fires once, d after now.
	NewTimer(d time.Duration) Timer
	// AfterFunc calls f in its own goroutine d after now.
	AfterFunc(d time.Duration, f func()) Timer
	// After is NewTimer(d).C().
	After(d time.Duration) <-chan time.Time
	// Since is Now().Sub(t).
	Since(t time.Time) time.Duration
}

// Timer is a one-shot timer made by a Clock.
type Timer interface {
	// C delivers the time once when the timer fires. It is nil for timers
	// made by AfterFunc.
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it was active.
	Stop() bool
	// Reset rearms the timer to fire d after now; it reports whether it
	// was active.
	Reset(d time.Duration) bool
}

// Real returns the wall clock.
func Real() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) Since(t time.Time) time.Duration        { return time.Since(t) }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
func (realClock) NewTimer(d time.Duration) Timer         { return realTimer{t: time.NewTimer(d)} }
func (realClock) AfterFunc(d time.Duration, f func()) Timer {
	return realTimer{t: time.AfterFunc(d, f)}
}

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time        { return r.t.C }
func (r realTimer) Stop() bool                 { return r.t.Stop() }
func (r realTimer) Reset(d time.Duration) bool { return r.t.Reset(d) }

// OrReal returns c, or the wall clock when c is nil, so that config structs
// can leave their Clock field empty.
func OrReal(c Clock) Clock {
	if c == nil {
		return Real()
	}
	return c
}
