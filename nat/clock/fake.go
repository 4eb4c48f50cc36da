package clock

import (
	"context"
	"sort"
	"sync"
	"time"
)

// Fake is a Clock that moves only when told to. Timers fire, in deadline
// order, during Advance. It is safe for concurrent use.
type Fake struct {
	mu      sync.Mutex // guards following
	now     time.Time
	timers  []*fakeTimer
	seq     uint64
	waiters []chan struct{} // woken whenever a timer is armed
}

// NewFake returns a Fake clock that reads start.
func NewFake(start time.Time) *Fake { return &Fake{now: start} }

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Since returns the fake time elapsed since t.
func (f *Fake) Since(t time.Time) time.Duration { return f.Now().Sub(t) }

// After returns a channel that receives the fake time d from now.
func (f *Fake) After(d time.Duration) <-chan time.Time { return f.NewTimer(d).C() }

// NewTimer returns a timer that fires when the fake clock reaches now+d.
func (f *Fake) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{clock: f, c: make(chan time.Time, 1)}
	t.Reset(d)
	return t
}

// AfterFunc calls fn in its own goroutine when the fake clock reaches now+d.
func (f *Fake) AfterFunc(d time.Duration, fn func()) Timer {
	t := &fakeTimer{clock: f, fn: fn}
	t.Reset(d)
	return t
}

// Advance moves the clock forward by d, firing every timer whose deadline
// falls inside the step in deadline order (the clock reads each timer's
// deadline when it fires).
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	end := f.now.Add(d)
	f.mu.Unlock()
	for {
		f.mu.Lock()
		next := f.nextLocked(end)
		if next == nil {
			f.now = end
			f.mu.Unlock()
			return
		}
		f.now = next.when
		next.active = false
		f.removeLocked(next)
		now := f.now
		f.mu.Unlock()
		next.fire(now)
	}
}

// Timers returns how many timers are armed.
func (f *Fake) Timers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.timers)
}

// WaitTimers blocks until at least n timers are armed or ctx ends; tests use
// it to know that the code under test has gone to sleep before advancing.
func (f *Fake) WaitTimers(ctx context.Context, n int) error {
	for {
		f.mu.Lock()
		if len(f.timers) >= n {
			f.mu.Unlock()
			return nil
		}
		w := make(chan struct{})
		f.waiters = append(f.waiters, w)
		f.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (f *Fake) nextLocked(end time.Time) *fakeTimer {
	if len(f.timers) == 0 {
		return nil
	}
	sort.Slice(f.timers, func(i, j int) bool {
		a, b := f.timers[i], f.timers[j]
		if a.when.Equal(b.when) {
			return a.seq < b.seq
		}
		return a.when.Before(b.when)
	})
	if f.timers[0].when.After(end) {
		return nil
	}
	return f.timers[0]
}

func (f *Fake) removeLocked(t *fakeTimer) {
	for i, x := range f.timers {
		if x == t {
			f.timers = append(f.timers[:i], f.timers[i+1:]...)
			return
		}
	}
}

type fakeTimer struct {
	clock  *Fake
	c      chan time.Time
	fn     func()
	when   time.Time // guarded by clock.mu
	seq    uint64    // guarded by clock.mu
	active bool      // guarded by clock.mu
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	f := t.clock
	f.mu.Lock()
	defer f.mu.Unlock()
	was := t.active
	if was {
		t.active = false
		f.removeLocked(t)
	}
	return was
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	f := t.clock
	f.mu.Lock()
	was := t.active
	if was {
		f.removeLocked(t)
	}
	f.seq++
	t.seq = f.seq
	t.when = f.now.Add(d)
	t.active = true
	f.timers = append(f.timers, t)
	waiters := f.waiters
	f.waiters = nil
	f.mu.Unlock()
	for _, w := range waiters {
		close(w)
	}
	return was
}

func (t *fakeTimer) fire(now time.Time) {
	if t.fn != nil {
		go t.fn()
		return
	}
	select {
	case t.c <- now:
	default: // like time.Timer: an unread value is not queued twice
	}
}
