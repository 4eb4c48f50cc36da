package probe

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superpeer/superpeer/netlab"
)

// TestBenchLifetimeLab is the measurement behind bench/nat-lifetime.sh:
// lifetime measurements behind kernel NATs with several conntrack
// timeouts, repeated, written as a markdown section to the file named by
// SUPERPEER_BENCH_LIFETIME. The baseline is the physical limit: seeing a
// binding expire after an idle time L takes at least L.
func TestBenchLifetimeLab(t *testing.T) {
	out := os.Getenv("SUPERPEER_BENCH_LIFETIME")
	if out == "" {
		t.Skip("a benchmark: bench/nat-lifetime.sh runs it")
	}
	const runs = 3
	sites := []netlab.SiteConfig{
		{Name: "5-15", Mapping: netlab.PortPreserving, UDPTimeout: 5 * time.Second, UDPStreamTimeout: 15 * time.Second},
		{Name: "10-30", Mapping: netlab.PortPreserving, UDPTimeout: 10 * time.Second, UDPStreamTimeout: 30 * time.Second},
		{Name: "20-60", Mapping: netlab.Random, UDPTimeout: 20 * time.Second, UDPStreamTimeout: 60 * time.Second},
	}
	type key struct {
		site  int
		state State
	}
	type sample struct{ estimate, uncertainty, took time.Duration }
	samples := map[key][]sample{}
	var mu sync.Mutex
	for range runs {
		lab := netlab.Start(t, netlab.Topology{Sites: sites})
		srv := serveOnWAN(t, lab.WAN[0])
		var wg sync.WaitGroup
		for i, site := range lab.Sites {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				defer cancel()
				rep, err := MeasureLifetime(ctx, labConfig(t, site.LAN[0], srv), DefaultLifetimeConfig())
				if err != nil {
					t.Errorf("%s: %v", site.Config.Name, err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for _, b := range []Bound{rep.Stream, rep.Unreplied} {
					k := key{i, b.State}
					samples[k] = append(samples[k], sample{b.Estimate(), b.Uncertainty(), b.Took})
				}
			}()
		}
		wg.Wait()
		lab.Close()
	}
	if t.Failed() {
		return
	}
	median := func(xs []time.Duration) time.Duration {
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## NAT lifetime measurement\n\n")
	fmt.Fprintf(&b, "`bench/nat-lifetime.sh` (as root, in the netlab): `nat/probe.MeasureLifetime` from a LAN host\n"+
		"against `nat/stunserver` on the WAN, behind Linux NATs with the conntrack UDP timeouts below, all sites\n"+
		"measured at once, median of %d runs (%s). Baseline: the physical limit, since seeing a binding expire\n"+
		"after an idle time L takes at least L; the target is a measurement within 2 L. The estimate is the\n"+
		"longest idle a probe survived (a lower bound); the uncertainty is the gap to the first probe that died.\n\n",
		runs, time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, "| conntrack timeout | state | estimate | error | uncertainty | measurement time | time / timeout |\n")
	fmt.Fprintf(&b, "| --- | --- | --- | --- | --- | --- | --- |\n")
	for i, sc := range sites {
		for _, st := range []State{StateUnreplied, StateStream} {
			want := sc.UDPTimeout
			if st == StateStream {
				want = sc.UDPStreamTimeout
			}
			var est, unc, took []time.Duration
			for _, s := range samples[key{i, st}] {
				est, unc, took = append(est, s.estimate), append(unc, s.uncertainty), append(took, s.took)
			}
			e, tk := median(est), median(took)
			fmt.Fprintf(&b, "| %v | %s | %s | %+.1f %% | %s | %s | %.2f |\n", want, st, seconds(e),
				100*(e.Seconds()-want.Seconds())/want.Seconds(), seconds(median(unc)), seconds(tk), tk.Seconds()/want.Seconds())
		}
	}
	if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}
