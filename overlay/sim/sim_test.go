package sim

import (
	"testing"
	"time"
)

// The simulator drives the real table code: with joins, a tenth of the
// nodes failing at once and churn, no node ever holds more than D links,
// and lookups reach the key's root.
func TestNoNodeExceedsDegree(t *testing.T) {
	n := 3000
	if testing.Short() {
		n = 1000
	}
	cfg := DefaultConfig(n)
	cfg.Lookups = 2000
	cfg.Churn = 10 * time.Minute
	cfg.SessionMean = 30 * time.Minute // heavy churn: about 1/3 of the nodes replaced
	r, err := Run(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.DegreeMax > cfg.Table.Degree {
		t.Fatalf("a node held %d links, bound %d", r.DegreeMax, cfg.Table.Degree)
	}
	if r.Joins == 0 || r.Leaves == 0 {
		t.Fatalf("churn phase had %d joins and %d leaves", r.Joins, r.Leaves)
	}
	for name, l := range map[string]Lookups{"healthy": r.Healthy, "repaired": r.Repaired, "churn": r.Churned} {
		if l.Root.SuccessRate() < 0.995 || l.Get.SuccessRate() < 0.995 {
			t.Errorf("%s: %.2f%% of routes reached the root and %.2f%% of gets a replica, want at least 99.5%%",
				name, 100*l.Root.SuccessRate(), 100*l.Get.SuccessRate())
		}
	}
	// A tenth of the nodes dead and nobody told: lookups meet them, go
	// around them, and still find the record wherever a replica lives.
	f := r.Failed
	if f.Timeouts == 0 {
		t.Error("10% failed: no lookup met a dead node")
	}
	if f.Get.SuccessRate() < 0.99 || f.Root.SuccessRate() < 0.98 {
		t.Errorf("10%% failed: %.2f%% of gets found a live replica (want 99%%), %.2f%% of routes the live root (want 98%%)",
			100*f.Get.SuccessRate(), 100*f.Root.SuccessRate())
	}
	if r.Healthy.Root.HopsP99 > 8 {
		t.Errorf("healthy p99 hops %d at N=%d, want at most 8", r.Healthy.Root.HopsP99, n)
	}
}

func TestConfigValidate(t *testing.T) {
	bad := DefaultConfig(1)
	if err := bad.Validate(); err == nil {
		t.Fatal("a one-node overlay validated")
	}
	bad = DefaultConfig(100)
	bad.FailFraction = 1
	if err := bad.Validate(); err == nil {
		t.Fatal("failing every node validated")
	}
}
