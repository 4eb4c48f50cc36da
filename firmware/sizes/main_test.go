package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// sized makes a file of n bytes (sparse: nothing is written).
func sized(t *testing.T, name string, n int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(n); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func TestCheckBudget(t *testing.T) {
	cases := []struct {
		name        string
		binary, ipk int64
		args        []string
		code        int
		says        string
	}{
		{"both within", 8_126_657, 2_896_985, nil, 0, "ok, 68% of the limit"},
		{"exactly at the limits", 12_000_000, 4_000_000, nil, 0, "ok, 100% of the limit"},
		{"binary one byte over 12 MB", 12_000_001, 2_000_000, nil, 1, "mipsle binary superpeer-linux-mipsle-softfloat is 12,000,001 bytes, the limit is 12,000,000"},
		{"package one byte over 4 MB", 9_000_000, 4_000_001, nil, 1, "OpenWrt .ipk superpeer.ipk is 4,000,001 bytes, the limit is 4,000,000"},
		{"a lower limit as a parameter", 8_126_657, 2_896_985, []string{"-max-binary", "8MB"}, 1, "the limit is 8,000,000"},
		{"limits in MiB", 12_000_001, 4_000_001, []string{"-max-binary", "12MiB", "-max-ipk", "4MiB"}, 0, "12,582,912"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bin := sized(t, "superpeer-linux-mipsle-softfloat", tc.binary)
			ipk := sized(t, "superpeer.ipk", tc.ipk)
			var out, errb bytes.Buffer
			args := append([]string{"check"}, tc.args...)
			code := run(append(args, "-binary", bin, "-ipk", ipk), &out, &errb)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, tc.code, out.String(), errb.String())
			}
			if !strings.Contains(out.String()+errb.String(), tc.says) {
				t.Fatalf("output does not say %q:\n%s%s", tc.says, out.String(), errb.String())
			}
		})
	}
}

func TestCheckRefusesBadArguments(t *testing.T) {
	bin := sized(t, "b", 1)
	for _, args := range [][]string{
		{"check", "-binary", bin},
		{"check", "-binary", bin, "-ipk", filepath.Join(t.TempDir(), "missing.ipk")},
		{"check", "-max-ipk", "four", "-binary", bin, "-ipk", bin},
		{"check", "-max-ipk", "-4MB", "-binary", bin, "-ipk", bin},
	} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage), output %s%s", args, code, out.String(), errb.String())
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"4000000": 4_000_000, "4MB": 4_000_000, "4 MB": 4_000_000, "1.5MB": 1_500_000,
		"12MiB": 12 << 20, "512kB": 512_000, "64KiB": 64 << 10, "100B": 100,
	} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "MB", "four", "-1MB", "0"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

func TestSymbolPackage(t *testing.T) {
	known := map[string]string{
		"github.com/pion/turn/v5":              "github.com/pion/turn/v5",
		"github.com/pion/turn/v5/internal/srv": "github.com/pion/turn/v5",
		"crypto/tls":                           "std",
		"net":                                  "std",
		"gopkg.in/yaml.v3":                     "gopkg.in/yaml.v3",
		"vendor/golang.org/x/net/idna":         "std",
		"runtime":                              "std",
	}
	for name, want := range map[string]string{
		"github.com/pion/turn/v5.(*Server).Close":              "github.com/pion/turn/v5",
		"github.com/pion/turn/v5/internal/srv.handle":          "github.com/pion/turn/v5/internal/srv",
		"github.com/pion/turn/v5.NewServer.func1":              "github.com/pion/turn/v5",
		"type:*crypto/tls.Conn":                                "crypto/tls",
		"type:.eq.crypto/tls.Config":                           "crypto/tls",
		"go:itab.*net.UDPConn,net.PacketConn":                  "net",
		"gopkg.in/yaml.v3.Marshal":                             "gopkg.in/yaml.v3",
		"vendor/golang.org/x/net/idna.idnaValues":              "vendor/golang.org/x/net/idna",
		"runtime.mallocgc":                                     "runtime",
		"github.com/pion/turn/v5.Map[go.shape.int,net.Conn].X": "github.com/pion/turn/v5",
		"go:func.*":     "",
		"go:string.*":   "",
		"unknown/pkg.F": "",
	} {
		if got := symbolPackage(name, known); got != want {
			t.Errorf("symbolPackage(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestCommas(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 12_000_001: "12,000,001", -4321: "-4,321"} {
		if got := commas(n); got != want {
			t.Errorf("commas(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestCostsFollowTheLinkersGraph(t *testing.T) {
	// main uses example.com/a and strings; a alone uses fmt.Sprint, which
	// uses strconv; strconv is also used by main. b is used only by a.
	b := &binary{
		module: map[string]string{
			"example.com/cmd": "example.com", "example.com/a": "example.com/a", "example.com/b": "example.com/b",
			"fmt": "std", "strconv": "std", "strings": "std", "runtime": "std",
		},
		main: "example.com/cmd",
		size: map[string]int64{
			"main.main": 100, "example.com/a.Do": 1000, "example.com/b.Help": 300,
			"fmt.Sprint": 5000, "strconv.Itoa": 200, "strings.Cut": 50, "runtime.main": 400,
			"go:string.*": 700,
		},
	}
	for _, n := range b.size {
		b.attributed += n
	}
	dump := `# example.com/cmd
_ -> runtime.main
runtime.main -> main.main
main.main -> example.com/a.Do
main.main -> strings.Cut
main.main -> strconv.Itoa
example.com/a.Do -> fmt.Sprint
example.com/a.Do -> example.com/b.Help
fmt.Sprint -> strconv.Itoa
`
	if err := b.readDeps(strings.NewReader(dump)); err != nil {
		t.Fatal(err)
	}
	got := map[string]cost{}
	for _, c := range b.costs() {
		got[c.module] = c
	}
	want := map[string]cost{
		// a takes fmt and b with it, not strconv (main uses it).
		"example.com/a": {"example.com/a", 1000, 1000 + 5000 + 300},
		"example.com/b": {"example.com/b", 300, 300},
		"example.com":   {"example.com", 100, 0},
		"std":           {"std", 5000 + 200 + 50 + 400, 0},
		metadata:        {metadata, 700, 0},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("costs:\n%+v\nwant:\n%+v", got, want)
	}
}

func TestDepsRefusesADumpWithoutRoots(t *testing.T) {
	b := &binary{}
	if err := b.readDeps(strings.NewReader("a -> b\n")); err == nil {
		t.Fatal("accepted a dependency dump without roots")
	}
}

// TestDepsOfARealBinary builds a small program that uses a package of
// this module and checks that its bytes land on the right rows.
func TestDepsOfARealBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "clockuser")
	const pkg = "github.com/superpeer/superpeer/firmware/sizes/testdata/clockuser"
	build := exec.Command("go", "build", "-ldflags=-dumpdep", "-o", bin, pkg)
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	var dump, stderr bytes.Buffer
	build.Stderr = &dump
	if err := build.Run(); err != nil {
		t.Fatalf("building the test program: %v\n%s", err, dump.String())
	}
	dumpFile := filepath.Join(dir, "dumpdep")
	if err := os.WriteFile(dumpFile, dump.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	code := run([]string{"deps", "-pkg", pkg, "-dumpdep", dumpFile, "-env", "GOOS=linux", "-env", "GOARCH=" + runtime.GOARCH, bin}, &out, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	for _, row := range []string{"| std ", "| github.com/superpeer/superpeer ", "| total (stripped binary) "} {
		if !strings.Contains(out.String(), row) {
			t.Errorf("no row %q in:\n%s", row, out.String())
		}
	}
	if strings.Contains(out.String(), "github.com/pion") {
		t.Errorf("a module the program does not use has a row:\n%s", out.String())
	}
}
