package probe

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Format writes the report for people (superpeer nat --lifetime):
//
//	UDP binding lifetime via 203.0.113.10:3478 (RFC 5780 section 4.6), external 203.0.113.100, measured in 46.2s
//	  state      lifetime  alive at  dead at  probes  took
//	  stream     29.9s     29.9s     30.3s    34      46.2s
//	  unreplied  9.9s      9.9s      10.2s    22      17.1s
//	  stream: a flow with traffic after its first 2 s (every long-lived flow)
//	  unreplied: a flow whose only exchange was in its first 2 s
func (r *LifetimeReport) Format(w io.Writer) error {
	fmt.Fprintf(w, "UDP binding lifetime via %v (RFC 5780 section 4.6), external %v, measured in %v\n",
		r.Server, r.External, r.Took.Round(100*time.Millisecond))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  state\tlifetime\talive at\tdead at\tprobes\ttook\n")
	for _, b := range []Bound{r.Stream, r.Unreplied} {
		if b.Err != "" {
			fmt.Fprintf(tw, "  %s\tnot measured: %s\t\t\t\t\n", b.State, b.Err)
			continue
		}
		life, dead := seconds(b.Alive), seconds(b.Dead)
		if b.Dead == 0 {
			life, dead = "≥ "+seconds(b.Alive), "-"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\t%s\n", b.State, life, seconds(b.Alive), dead, b.Probes, seconds(b.Took))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "  stream: a flow with traffic after its first 2 s (every long-lived flow)\n"+
		"  unreplied: a flow whose only exchange was in its first 2 s\n")
	return err
}

func (r *LifetimeReport) String() string {
	var b strings.Builder
	r.Format(&b)
	return b.String()
}

// seconds prints d in seconds with one decimal, the resolution a person
// planning keepalives cares about.
func seconds(d time.Duration) string {
	return fmt.Sprintf("%.1fs", d.Seconds())
}
