package turn

import (
	"net/netip"
	"sync"
	"time"

	"github.com/superpeer/superpeer/nat/clock"
)

// bucket is a token bucket: rate tokens a second, at most burst saved.
// It is not safe for concurrent use on its own.
type bucket struct {
	tokens float64
	last   time.Time
}

func (b *bucket) take(now time.Time, rate, burst, n float64) bool {
	if b.last.IsZero() {
		b.tokens = burst
	} else if d := now.Sub(b.last); d > 0 {
		b.tokens += d.Seconds() * rate
		if b.tokens > burst {
			b.tokens = burst
		}
	}
	b.last = now
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}

// full reports whether the bucket would be full at now, i.e. it holds no
// memory worth keeping.
func (b *bucket) full(now time.Time, rate, burst float64) bool {
	return b.tokens+now.Sub(b.last).Seconds()*rate >= burst
}

// sourceLimiter rate-limits events per source address (401 answers): a
// bucket per address, at most maxSources of them; beyond that, sources
// share one bucket, so a spoofed flood of sources cannot grow memory and
// cannot get more answers than one source would.
type sourceLimiter struct {
	clk        clock.Clock
	rate       float64
	burst      float64
	maxSources int

	mu      sync.Mutex // guards following
	buckets map[netip.Addr]*bucket
	shared  bucket
}

func newSourceLimiter(clk clock.Clock, rate float64, burst, maxSources int) *sourceLimiter {
	return &sourceLimiter{
		clk: clk, rate: rate, burst: float64(burst), maxSources: maxSources,
		buckets: map[netip.Addr]*bucket{},
	}
}

// allow takes one token from src's bucket.
func (l *sourceLimiter) allow(src netip.Addr) bool {
	now := l.clk.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[src]
	if !ok {
		if len(l.buckets) >= l.maxSources {
			l.sweepLocked(now)
		}
		if len(l.buckets) >= l.maxSources {
			return l.shared.take(now, l.rate, l.burst, 1)
		}
		b = &bucket{}
		l.buckets[src] = b
	}
	return b.take(now, l.rate, l.burst, 1)
}

// sweepLocked forgets every source whose bucket has refilled.
func (l *sourceLimiter) sweepLocked(now time.Time) {
	for k, b := range l.buckets {
		if b.full(now, l.rate, l.burst) {
			delete(l.buckets, k)
		}
	}
}

// byteLimiter caps one direction of one allocation at rate bytes a
// second with a burst; zero rate means no cap.
type byteLimiter struct {
	rate, burst float64

	mu sync.Mutex // guards b
	b  bucket
}

func (l *byteLimiter) allow(now time.Time, n int) bool {
	if l.rate == 0 {
		return true
	}
	l.mu.Lock()
	ok := l.b.take(now, l.rate, l.burst, float64(n))
	l.mu.Unlock()
	return ok
}
