// Command sizes measures the release builds against the flash budget of a
// router: the table of binaries and packages, what each module costs in a
// binary, and the budget check that `make size` runs.
//
//	sizes table FILE...
//	sizes check [-max-binary 12MB] [-max-ipk 4MB] -binary FILE -ipk FILE
//	sizes deps [-top N] -pkg PATTERN -dumpdep FILE -stripped FILE [-env K=V]... UNSTRIPPED
//
// `deps` says what each module costs in a binary. Its own code is its
// symbols' bytes (from a build without -s -w). What it costs is what the
// linker would leave out without it: the linker's reachability graph
// (-ldflags=-dumpdep) is walked from its roots with the module's symbols
// taken out, and everything no longer reached goes with the module, std
// code that only it uses included. Bytes are scaled to the stripped
// binary's size, because the runtime tables that no symbol owns (pclntab)
// grow with the code. Against building with and without a module this
// lands within about 10% (and a real build moves in 64 KiB steps), for a
// second of work instead of a build per module.
package main

import (
	"bufio"
	"debug/elf"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: sizes table|check|deps ...")
		return 2
	}
	var err error
	switch args[0] {
	case "table":
		err = table(args[1:], stdout)
	case "check":
		err = check(args[1:], stdout)
	case "deps":
		err = deps(args[1:], stdout)
	default:
		fmt.Fprintf(stderr, "sizes: unknown command %q\n", args[0])
		return 2
	}
	var over *overBudgetError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &over):
		fmt.Fprintf(stderr, "sizes: %v\n", err)
		return 1
	case errors.Is(err, flag.ErrHelp):
		return 2
	}
	fmt.Fprintf(stderr, "sizes: %v\n", err)
	return 2
}

// table prints each file's size.
func table(files []string, w io.Writer) error {
	fmt.Fprintf(w, "| %-62s | %12s | %7s |\n", "file", "bytes", "MB")
	fmt.Fprintf(w, "| %s | %s | %s |\n", strings.Repeat("-", 62), strings.Repeat("-", 11)+":", strings.Repeat("-", 6)+":")
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return fmt.Errorf("size table: %w", err)
		}
		fmt.Fprintf(w, "| %-62s | %12s | %7.2f |\n", filepath.Base(f), commas(st.Size()), float64(st.Size())/1e6)
	}
	return nil
}

// A budget is a file that must not exceed a limit.
type budget struct {
	what  string
	file  string
	limit int64
}

type overBudgetError struct{ over []string }

func (e *overBudgetError) Error() string { return "over budget: " + strings.Join(e.over, "; ") }

// check prints each budgeted file against its limit and fails when one is
// over.
func check(args []string, w io.Writer) error {
	fs := flag.NewFlagSet("sizes check", flag.ContinueOnError)
	maxBinary := fs.String("max-binary", "12MB", "limit of the mipsle binary (bytes, or with kB/MB/KiB/MiB)")
	maxIPK := fs.String("max-ipk", "4MB", "limit of the OpenWrt package")
	binary := fs.String("binary", "", "the linux/mipsle binary")
	ipk := fs.String("ipk", "", "the mipsle .ipk")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *binary == "" || *ipk == "" || fs.NArg() > 0 {
		return errors.New("check needs -binary FILE and -ipk FILE")
	}
	var budgets []budget
	for _, b := range []struct{ what, file, limit string }{
		{"mipsle binary", *binary, *maxBinary},
		{"OpenWrt .ipk", *ipk, *maxIPK},
	} {
		n, err := parseSize(b.limit)
		if err != nil {
			return fmt.Errorf("limit of the %s: %w", b.what, err)
		}
		budgets = append(budgets, budget{b.what, b.file, n})
	}
	var over []string
	fmt.Fprintf(w, "%-14s %12s %12s  %s\n", "budget", "bytes", "limit", "")
	for _, b := range budgets {
		st, err := os.Stat(b.file)
		if err != nil {
			return fmt.Errorf("size budget: %w", err)
		}
		verdict := fmt.Sprintf("ok, %.0f%% of the limit", 100*float64(st.Size())/float64(b.limit))
		if st.Size() > b.limit {
			verdict = fmt.Sprintf("OVER by %s bytes", commas(st.Size()-b.limit))
			over = append(over, fmt.Sprintf("%s %s is %s bytes, the limit is %s", b.what, filepath.Base(b.file), commas(st.Size()), commas(b.limit)))
		}
		fmt.Fprintf(w, "%-14s %12s %12s  %s\n", b.what, commas(st.Size()), commas(b.limit), verdict)
	}
	if over != nil {
		return &overBudgetError{over}
	}
	return nil
}

// parseSize reads "4000000", "4MB", "4MiB", "512kB", "1.5MB".
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6}, {"B", 1}, {"", 1}}
	for _, u := range units {
		num, ok := strings.CutSuffix(strings.TrimSpace(s), u.suffix)
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || f <= 0 {
			return 0, fmt.Errorf("%q is not a size such as 12MB, 4MiB or 4000000", s)
		}
		return int64(f * u.mult), nil
	}
	return 0, fmt.Errorf("%q is not a size", s)
}

// deps prints what each module costs in the binary.
func deps(args []string, w io.Writer) error {
	fs := flag.NewFlagSet("sizes deps", flag.ContinueOnError)
	stripped := fs.String("stripped", "", "the same build stripped (-s -w), whose size is shared out")
	dumpdep := fs.String("dumpdep", "", "the linker's -dumpdep output of the unstripped build")
	pkg := fs.String("pkg", "./cmd/superpeer", "the main package, for go list")
	top := fs.Int("top", 15, "modules to list before lumping the rest")
	var env multiFlag
	fs.Var(&env, "env", "K=V for go list (GOOS, GOARCH, GOMIPS...), repeatable")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || *dumpdep == "" {
		return errors.New("deps needs -dumpdep FILE and the unstripped binary")
	}
	modules, mainPkg, err := packageModules(*pkg, env)
	if err != nil {
		return err
	}
	b := &binary{module: modules, main: mainPkg, size: map[string]int64{}}
	if err := b.readSymbols(fs.Arg(0)); err != nil {
		return err
	}
	dump, err := os.Open(*dumpdep)
	if err != nil {
		return fmt.Errorf("reading the linker's dependencies: %w", err)
	}
	defer dump.Close()
	if err := b.readDeps(dump); err != nil {
		return err
	}
	total := b.attributed
	if *stripped != "" {
		st, err := os.Stat(*stripped)
		if err != nil {
			return fmt.Errorf("stripped binary: %w", err)
		}
		total = st.Size()
	}
	printCosts(w, b.costs(), b.attributed, total, *top)
	return nil
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// packageModules maps each package of the main package's build to its
// module ("std" for the standard library) and returns the main package.
func packageModules(pkg string, env []string) (map[string]string, string, error) {
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Name,Module,Standard", pkg)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, "", fmt.Errorf("go list -deps %s: %w", pkg, err)
	}
	m := map[string]string{}
	mainPkg := ""
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p struct {
			ImportPath string
			Name       string
			Standard   bool
			Module     *struct{ Path string }
		}
		if err := dec.Decode(&p); err != nil {
			return nil, "", fmt.Errorf("reading go list: %w", err)
		}
		m[p.ImportPath] = "std"
		if !p.Standard && p.Module != nil {
			m[p.ImportPath] = p.Module.Path
		}
		if p.Name == "main" {
			mainPkg = p.ImportPath
		}
	}
	if mainPkg == "" {
		return nil, "", fmt.Errorf("go list %s: no main package", pkg)
	}
	return m, mainPkg, nil
}

// binary is a linked program: its symbols' sizes, their packages, and the
// linker's reachability graph between them.
type binary struct {
	module     map[string]string // package -> module
	main       string            // the main package's import path
	size       map[string]int64  // symbol -> file bytes
	attributed int64             // sum of size

	ids   map[string]int32 // symbol -> node
	names []string         // node -> symbol
	edges [][]int32        // node -> nodes it keeps alive
	roots []int32
}

// metadata is where symbols that belong to no package go (string data,
// function metadata the linker aggregates).
const metadata = "(linker metadata)"

// readSymbols reads the file bytes of the binary's symbols. Symbols in
// sections that take no file space (.bss) do not count.
func (b *binary) readSymbols(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		return fmt.Errorf("symbols of %s (build it without -s -w): %w", path, err)
	}
	for _, s := range syms {
		if s.Size == 0 || s.Section == elf.SHN_UNDEF || s.Section >= elf.SectionIndex(len(f.Sections)) {
			continue
		}
		if f.Sections[s.Section].Type == elf.SHT_NOBITS {
			continue
		}
		b.size[s.Name] += int64(s.Size)
		b.attributed += int64(s.Size)
	}
	return nil
}

// readDeps reads the linker's -dumpdep output: "from -> to" lines, where
// from "_" marks a root (the entry point, init tasks).
func (b *binary) readDeps(r io.Reader) error {
	b.ids = map[string]int32{}
	node := func(name string) int32 {
		if id, ok := b.ids[name]; ok {
			return id
		}
		id := int32(len(b.names))
		b.ids[name] = id
		b.names = append(b.names, name)
		b.edges = append(b.edges, nil)
		return id
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		from, to, ok := strings.Cut(sc.Text(), " -> ")
		if !ok {
			continue // "# package" headers
		}
		t := node(to)
		if from == "_" {
			b.roots = append(b.roots, t)
			continue
		}
		f := node(from)
		b.edges[f] = append(b.edges[f], t)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the linker's dependencies: %w", err)
	}
	if len(b.roots) == 0 {
		return errors.New("the linker's dependencies have no roots (is it -ldflags=-dumpdep output?)")
	}
	return nil
}

// moduleOf returns the module a symbol belongs to.
func (b *binary) moduleOf(sym string) string {
	p := symbolPackage(sym, b.module)
	if p == "" {
		if strings.HasPrefix(sym, "main.") {
			// The linker names the main package's symbols main.*.
			return b.module[b.main]
		}
		return metadata
	}
	return b.module[p]
}

// cost is one row of the report.
type cost struct {
	module string
	own    int64 // the module's symbols
	gone   int64 // what the linker would drop without the module
}

// costs returns a row per module. For each dependency, "gone" is every
// symbol that only the module keeps alive: the linker's graph is walked
// from its roots with the module's symbols taken out, and what is no
// longer reached, std code included, is what the module costs.
func (b *binary) costs() []cost {
	own := map[string]int64{}
	for sym, n := range b.size {
		own[b.moduleOf(sym)] += n
	}
	nodeMod := make([]string, len(b.names))
	for i, n := range b.names {
		nodeMod[i] = b.moduleOf(n)
	}
	all := b.reach(nodeMod, "")
	mainMod := b.module[b.main]
	var rows []cost
	for mod, n := range own {
		c := cost{module: mod, own: n}
		if mod != "std" && mod != metadata && mod != mainMod {
			without := b.reach(nodeMod, mod)
			for i, name := range b.names {
				if all[i] && !without[i] {
					c.gone += b.size[name]
				}
			}
		}
		rows = append(rows, c)
	}
	sort.Slice(rows, func(i, j int) bool {
		ki, kj := max(rows[i].gone, rows[i].own), max(rows[j].gone, rows[j].own)
		if ki != kj {
			return ki > kj
		}
		return rows[i].module < rows[j].module
	})
	return rows
}

// reach marks the nodes reachable from the roots without passing through
// symbols of module skip ("" skips nothing).
func (b *binary) reach(nodeMod []string, skip string) []bool {
	seen := make([]bool, len(b.names))
	stack := append([]int32(nil), b.roots...)
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[n] || skip != "" && nodeMod[n] == skip {
			continue
		}
		seen[n] = true
		stack = append(stack, b.edges[n]...)
	}
	return seen
}

func printCosts(w io.Writer, rows []cost, attributed, total int64, top int) {
	scale := func(n int64) string { return commas(int64(float64(n) * float64(total) / float64(attributed))) }
	fmt.Fprintf(w, "| %-40s | %12s | %14s |\n", "module", "its own code", "cost (without)")
	fmt.Fprintf(w, "| %s | %s | %s |\n", strings.Repeat("-", 40), strings.Repeat("-", 11)+":", strings.Repeat("-", 13)+":")
	var restOwn int64
	restN := 0
	for i, c := range rows {
		if i >= top {
			restOwn += c.own
			restN++
			continue
		}
		gone := scale(c.gone)
		if c.gone == 0 {
			gone = ""
		}
		fmt.Fprintf(w, "| %-40s | %12s | %14s |\n", c.module, scale(c.own), gone)
	}
	if restN > 0 {
		fmt.Fprintf(w, "| %-40s | %12s | %14s |\n", fmt.Sprintf("%d more modules", restN), scale(restOwn), "")
	}
	fmt.Fprintf(w, "| %-40s | %12s | %14s |\n", "total (stripped binary)", commas(total), "")
}

// symbolPackage returns the package of a Go symbol name among the known
// packages, or "" when it has none. Names look like
// "github.com/pion/turn/v5.(*Server).Close", "type:*crypto/tls.Conn",
// "go:itab.*net.UDPConn,net.PacketConn" or "gopkg.in/yaml.v3.Marshal";
// the package is the longest known path followed by a dot.
func symbolPackage(name string, known map[string]string) string {
	for _, p := range []string{"type:.eq.", "type:.hash.", "type:", "go:itab.", "go:link.", "go:info."} {
		if rest, ok := strings.CutPrefix(name, p); ok {
			name = rest
			break
		}
	}
	name = strings.TrimLeft(name, "*[]")
	if i := strings.IndexAny(name, "([,"); i >= 0 {
		name = name[:i]
	}
	best := ""
	for i := 0; i < len(name); i++ {
		if name[i] == '.' {
			if _, ok := known[name[:i]]; ok {
				best = name[:i]
			}
		}
	}
	return best
}

// commas writes n with thousands separators.
func commas(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
