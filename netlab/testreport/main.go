// Command testreport reads `go test -json` on standard input and prints
// what a person needs from a whole test run: one line per package, the
// full output of every failing test, every skipped test with its reason,
// and the totals. It exits 1 when anything failed or did not build.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

type event struct {
	Action     string
	Package    string
	ImportPath string
	Test       string
	Elapsed    float64
	Output     string
}

type key struct{ pkg, test string }

func main() {
	os.Exit(report(os.Stdin, os.Stdout))
}

func report(in io.Reader, out io.Writer) int {
	outputs := map[key]*strings.Builder{}
	build := map[string]*strings.Builder{}
	var failed, skipped []key
	passed := 0
	pkgFailed := false
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil {
			// go vet and the compiler may print plain text into the stream.
			fmt.Fprintf(out, "%s\n", line)
			continue
		}
		if e.Action == "build-output" {
			b := build[e.ImportPath]
			if b == nil {
				b = &strings.Builder{}
				build[e.ImportPath] = b
			}
			b.WriteString(e.Output)
			continue
		}
		k := key{e.Package, e.Test}
		switch e.Action {
		case "output":
			b := outputs[k]
			if b == nil {
				b = &strings.Builder{}
				outputs[k] = b
			}
			b.WriteString(e.Output)
		case "pass":
			if e.Test != "" {
				passed++
			} else {
				fmt.Fprintf(out, "ok    %-55s %s\n", e.Package, dur(e.Elapsed))
			}
		case "fail":
			if e.Test != "" {
				failed = append(failed, k)
			} else {
				pkgFailed = true
				fmt.Fprintf(out, "FAIL  %-55s %s\n", e.Package, dur(e.Elapsed))
			}
		case "skip":
			if e.Test != "" {
				skipped = append(skipped, k)
			} else {
				fmt.Fprintf(out, "--    %-55s (no tests)\n", e.Package)
			}
		}
	}
	for path, b := range build {
		fmt.Fprintf(out, "\n=== %s did not build:\n%s", path, b)
		pkgFailed = true
	}
	for _, k := range failed {
		// A parent test fails with its subtests; print the leaves' output.
		if hasFailedChild(k, failed) {
			continue
		}
		fmt.Fprintf(out, "\n=== FAIL %s %s\n%s", k.pkg, k.test, text(outputs[k]))
	}
	if pkgFailed && len(failed) == 0 {
		for k, b := range outputs {
			if k.test == "" && strings.Contains(b.String(), "FAIL") {
				fmt.Fprintf(out, "\n=== %s\n%s", k.pkg, b)
			}
		}
	}
	if len(skipped) > 0 {
		sort.Slice(skipped, func(i, j int) bool {
			if skipped[i].pkg != skipped[j].pkg {
				return skipped[i].pkg < skipped[j].pkg
			}
			return skipped[i].test < skipped[j].test
		})
		fmt.Fprintf(out, "\nSkipped tests and why:\n")
		for _, k := range skipped {
			fmt.Fprintf(out, "  %s %s: %s\n", strings.TrimPrefix(k.pkg, "github.com/superpeer/superpeer/"), k.test, reason(outputs[k]))
		}
	}
	fmt.Fprintf(out, "\n%d passed, %d failed, %d skipped\n", passed, len(failed), len(skipped))
	if len(failed) > 0 || pkgFailed {
		return 1
	}
	return 0
}

func hasFailedChild(k key, failed []key) bool {
	for _, f := range failed {
		if f.pkg == k.pkg && strings.HasPrefix(f.test, k.test+"/") {
			return true
		}
	}
	return false
}

func text(b *strings.Builder) string {
	if b == nil {
		return "(no output)\n"
	}
	return b.String()
}

// reason is what a skipped test said, without the runner's own lines.
func reason(b *strings.Builder) string {
	if b == nil {
		return "(no reason given)"
	}
	var said []string
	for _, l := range strings.Split(b.String(), "\n") {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		// Drop the "file.go:12: " prefix testing adds.
		if i := strings.Index(t, ".go:"); i > 0 {
			if j := strings.Index(t[i+4:], ": "); j >= 0 {
				t = t[i+4+j+2:]
			}
		}
		said = append(said, t)
	}
	if len(said) == 0 {
		return "(no reason given)"
	}
	return strings.Join(said, " / ")
}

func dur(s float64) string {
	return (time.Duration(s * float64(time.Second))).Round(10 * time.Millisecond).String()
}
