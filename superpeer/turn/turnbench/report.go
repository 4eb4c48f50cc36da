package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/pion/stun/v4"
)

// ping waits until a STUN server answers a Binding request.
func ping(args []string) error {
	fs := flag.NewFlagSet("ping", flag.ExitOnError)
	server := fs.String("server", "127.0.0.1:3478", "server")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after")
	fs.Parse(args)
	c, err := net.Dial("udp4", *server)
	if err != nil {
		return err
	}
	defer c.Close()
	deadline := time.Now().Add(*timeout)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
		c.Write(req.Raw)
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, err := c.Read(buf); err == nil {
			m := &stun.Message{Raw: buf[:n]}
			if m.Decode() == nil && m.TransactionID == req.TransactionID {
				return nil
			}
		}
	}
	return fmt.Errorf("%s does not answer STUN", *server)
}

// report reads result lines (label "<server>/<load>", load light or
// heavy, server superpeer, coturn or direct) and prints the markdown
// table of medians and ratios.
func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	coturn := fs.String("coturn", "", "coturn's version")
	fs.Parse(args)
	byLabel := map[string][]Result{}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue
		}
		byLabel[r.Server] = append(byLabel[r.Server], r)
	}
	med := func(label string, f func(Result) float64) float64 {
		var xs []float64
		for _, r := range byLabel[label] {
			xs = append(xs, f(r))
		}
		if len(xs) == 0 {
			return 0
		}
		slices.Sort(xs)
		if len(xs)%2 == 1 {
			return xs[len(xs)/2]
		}
		return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
	}
	for _, l := range []string{"superpeer/light", "pion/light", "coturn/light", "superpeer/heavy", "pion/heavy", "coturn/heavy", "direct/light"} {
		if len(byLabel[l]) == 0 {
			return fmt.Errorf("no results for %s", l)
		}
	}
	runs := len(byLabel["superpeer/light"])
	relayed := func(r Result) float64 { return r.RelayedPPS }
	cpu := func(r Result) float64 { return r.CPUPerPacket }
	p99 := func(r Result) float64 { return r.RTTp99 }
	p50 := func(r Result) float64 { return r.RTTp50 }
	loss := func(r Result) float64 { return r.Loss * 100 }
	offered := func(r Result) float64 { return r.OfferedPPS }
	perCPU := func(r Result) float64 {
		if r.CPUPerPacket == 0 {
			return 0
		}
		return 1e6 / r.CPUPerPacket
	}
	floor := med("direct/light", p99)

	var b strings.Builder
	load := ""
	row := func(what string, f func(Result) float64, unit string, higherBetter bool) {
		sp, bp, ct := med("superpeer/"+load, f), med("pion/"+load, f), med("coturn/"+load, f)
		ratio := "–"
		if ct > 0 && sp > 0 {
			ratio = fmt.Sprintf("%.2f", sp/ct)
		}
		better := "lower is better"
		if higherBetter {
			better = "higher is better"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s (%s) |\n", what, num(sp, unit), num(bp, unit), num(ct, unit), ratio, better)
	}
	fmt.Fprintf(&b, "| median of %d runs | Superpeer | pion/turn as it comes | coturn %s | Superpeer / coturn |\n|---|---:|---:|---:|---:|\n", runs, *coturn)
	for _, load = range []string{"light", "heavy"} {
		title := "RTP load"
		if load == "heavy" {
			title = "heavy load"
		}
		fmt.Fprintf(&b, "| **%s**: %.0f packets/s offered per direction | | | | |\n", title, med("superpeer/"+load, offered))
		row("relayed packets/s (both directions)", relayed, "", true)
		row("loss", loss, "%", false)
		row("server CPU per relayed packet", cpu, "µs", false)
		row("relayed packets per CPU-second (one core's capacity)", perCPU, "", true)
		row("round trip p50", p50, "µs", false)
		row("round trip p99", p99, "µs", false)
		if load == "light" {
			row("p99 added by the relay (p99 − direct p99 of "+num(floor, "µs")+")",
				func(r Result) float64 { return r.RTTp99 - floor }, "µs", false)
		}
	}
	ratio := func(sp, ct float64) float64 {
		if ct == 0 {
			return 0
		}
		return sp / ct
	}
	capLight := ratio(med("superpeer/light", perCPU), med("coturn/light", perCPU))
	capHeavy := ratio(med("superpeer/heavy", perCPU), med("coturn/heavy", perCPU))
	p99Light := ratio(med("superpeer/light", p99), med("coturn/light", p99))
	layer := ratio(med("superpeer/light", cpu), med("pion/light", cpu))
	p99Heavy := ratio(med("superpeer/heavy", p99), med("coturn/heavy", p99))
	fmt.Fprintf(&b, "\nWhere it stands (this run): per CPU-second Superpeer relays %.2fx coturn's packets at RTP load (%s) "+
		"and %.2fx under heavy load (%s); its p99 round trip is %.2fx coturn's at RTP load (%s) and %.2fx under heavy load (%s), "+
		"where it lost %.2f %% of the packets and coturn %.2f %%. "+
		"Its own layer (guard, peer policy, caps, counters) costs %.2fx bare pion's CPU per packet at RTP load.\n",
		capLight, verdict(capLight, true), capHeavy, verdict(capHeavy, true), p99Light, verdict(p99Light, false),
		p99Heavy, verdict(p99Heavy, false), med("superpeer/heavy", loss), med("coturn/heavy", loss), layer)
	fmt.Print(b.String())
	if runs == 0 {
		return errors.New("no runs")
	}
	return nil
}

// verdict words a ratio Superpeer / coturn; within 5 % is a tie.
func verdict(r float64, higherBetter bool) string {
	switch {
	case r > 0.95 && r < 1.05:
		return "a tie"
	case (r > 1) == higherBetter:
		return "ahead"
	default:
		return "behind"
	}
}

func num(v float64, unit string) string {
	switch {
	case unit == "%":
		return fmt.Sprintf("%.2f %%", v)
	case v >= 1000:
		return fmt.Sprintf("%.0f %s", v, unit)
	default:
		return fmt.Sprintf("%.1f %s", v, unit)
	}
}
