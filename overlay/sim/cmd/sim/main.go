// Command sim runs the overlay simulator (`make sim`) for N = 1,000,
// 10,000 and 100,000 nodes with D = 16 and prints, per N, the links per
// node, the hops per lookup and the share of lookups that reach the key's
// root, healthy, with 10% of the nodes failed at once, after repair, and
// under churn.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"

	"github.com/superpeer/superpeer/overlay/sim"
)

func main() {
	sizes := flag.String("n", "1000,10000,100000", "comma-separated node counts")
	degree := flag.Int("d", 16, "degree bound D")
	lookups := flag.Int("lookups", 20000, "lookups per phase")
	seed := flag.Uint64("seed", 1, "random seed")
	churn := flag.Bool("churn", true, "run the churn phase")
	closeSet := flag.Int("close", 0, "close-set size (0: the table default)")
	spare := flag.Int("spare", -1, "spare slots (-1: the table default)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile here")
	flag.Parse()

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "sim:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "sim:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	var ns []int
	for _, f := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			fmt.Fprintf(os.Stderr, "sim: bad -n %q: %v\n", f, err)
			os.Exit(2)
		}
		ns = append(ns, n)
	}
	fmt.Println("| N | D | degree max | degree mean | phase | get: hops mean | p99 | success | route to the root: hops mean | p99 | success | records lost | dead hops/lookup |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, n := range ns {
		cfg := sim.DefaultConfig(n)
		cfg.Table.Degree = *degree
		if *closeSet > 0 {
			cfg.Table.Close = *closeSet
		}
		if *spare >= 0 {
			cfg.Table.Spare = *spare
		}
		cfg.Lookups = *lookups
		cfg.Seed = *seed
		if !*churn {
			cfg.Churn = 0
		}
		r, err := sim.Run(cfg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "sim:", err)
			return
		}
		phases := []struct {
			name string
			l    sim.Lookups
		}{
			{"healthy", r.Healthy},
			{"10% failed at once", r.Failed},
			{"after repair", r.Repaired},
		}
		if r.Churned.Count > 0 {
			phases = append(phases, struct {
				name string
				l    sim.Lookups
			}{fmt.Sprintf("churn (%d joins, %d failures)", r.Joins, r.Leaves), r.Churned})
		}
		for _, ph := range phases {
			l := ph.l
			fmt.Printf("| %d | %d | %d | %.2f | %s | %.2f | %d | %s | %.2f | %d | %s | %s | %.2f |\n",
				r.N, r.Degree, r.DegreeMax, r.DegreeMean, ph.name,
				l.Get.HopsMean, l.Get.HopsP99, pct(l.Get.SuccessRate()),
				l.Root.HopsMean, l.Root.HopsP99, pct(l.Root.SuccessRate()),
				pct(float64(l.Lost)/float64(max(l.Count, 1))), l.Timeouts)
		}
		fmt.Fprintf(os.Stderr, "N=%d: %.0fs\n", n, r.Elapsed.Seconds())
	}
}

func pct(f float64) string { return strconv.FormatFloat(100*f, 'f', 2, 64) + "%" }
