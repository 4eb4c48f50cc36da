package stunserver

import (
	"net/netip"
	"sync"
	"time"
)

// limiter is a token bucket per source IP address: a response costs one
// token, tokens come back at rate per second up to burst.
type limiter struct {
	rate  float64
	burst float64
	max   int

	mu        sync.Mutex // guards following
	buckets   map[netip.Addr]*bucket
	lastSweep time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(rate float64, burst, max int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), max: max, buckets: make(map[netip.Addr]*bucket)}
}

// allow takes a token for a from the bucket of a, reporting whether there
// was one.
func (l *limiter) allow(a netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[a]
	if !ok {
		if len(l.buckets) >= l.max {
			// A flood of spoofed sources fills the table; sweeping it at
			// most once a second keeps each packet's cost constant.
			if now.Sub(l.lastSweep) >= time.Second {
				l.lastSweep = now
				l.forgetRefilledLocked(now)
			}
			if len(l.buckets) >= l.max {
				return false
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[a] = b
	}
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens = min(l.burst, b.tokens+dt.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// forgetRefilledLocked drops buckets that are full again: a new bucket for
// the same source would be the same.
func (l *limiter) forgetRefilledLocked(now time.Time) {
	for a, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, a)
		}
	}
}

// sources is how many sources the table holds.
func (l *limiter) sources() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
