package turn

import (
	"net/netip"
	"testing"
	"time"

	"github.com/superpeer/superpeer/nat/clock"
)

func TestSourceLimiter(t *testing.T) {
	clk := clock.NewFake(time.Unix(1000, 0))
	l := newSourceLimiter(clk, 2, 3, 2)
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	allowed := func(src netip.Addr, n int) int {
		k := 0
		for range n {
			if l.allow(src) {
				k++
			}
		}
		return k
	}
	if got := allowed(a, 10); got != 3 {
		t.Fatalf("a burst from one source: %d allowed, want 3", got)
	}
	clk.Advance(500 * time.Millisecond)
	if got := allowed(a, 10); got != 1 {
		t.Fatalf("half a second later at 2/s: %d allowed, want 1", got)
	}
	if got := allowed(b, 10); got != 3 {
		t.Fatalf("a second source: %d allowed, want its own burst of 3", got)
	}
	// The table is full (2 sources): a third shares the overflow bucket.
	if got := allowed(c, 10); got != 3 {
		t.Fatalf("overflow source: %d allowed, want the shared burst of 3", got)
	}
	if got := allowed(netip.MustParseAddr("192.0.2.4"), 10); got != 0 {
		t.Fatalf("a fourth source on the drained shared bucket: %d allowed, want 0", got)
	}
	// Once a and b have refilled they are forgotten and c gets a bucket.
	clk.Advance(10 * time.Second)
	if got := allowed(c, 10); got != 3 {
		t.Fatalf("after the sweep: %d allowed, want 3", got)
	}
	if len(l.buckets) > 2 {
		t.Fatalf("%d buckets kept, bound is 2", len(l.buckets))
	}
}

func TestByteLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := byteLimiter{rate: 1000, burst: 500}
	sent := 0
	for range 10 {
		if l.allow(now, 100) {
			sent += 100
		}
	}
	if sent != 500 {
		t.Fatalf("burst: %d bytes, want 500", sent)
	}
	if l.allow(now.Add(50*time.Millisecond), 100) {
		t.Fatal("50 ms at 1000 B/s refilled 100 bytes")
	}
	if !l.allow(now.Add(150*time.Millisecond), 100) {
		t.Fatal("150 ms at 1000 B/s did not refill 100 bytes")
	}
	if unlimited := (byteLimiter{}); !unlimited.allow(now, 1<<20) {
		t.Fatal("a zero rate is no cap")
	}
}
