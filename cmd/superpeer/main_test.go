package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/superpeer/superpeer/election"
	"github.com/superpeer/superpeer/superpeer/control"
)

var binary string

// testPorts: the defaults but for the listening ports, so that daemons of
// tests running side by side do not collide.
const testPorts = `
[election]
listen = 127.0.0.1:0
dnssd = false
[overlay]
listen = 127.0.0.1:0
[sip]
listen = 127.0.0.1:0
agent_listen = 127.0.0.1:0
[turn]
listen = 127.0.0.1:0
`

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "superpeer-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "superpeer")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building superpeer: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// daemon starts `superpeer run` on a fresh state directory with the
// embedded defaults, except for ports (tests run side by side) and what
// cfgText sets, and waits until its control socket answers.
func daemon(t *testing.T, cfgText string, extra ...string) (stateDir string, cmd *exec.Cmd, stderr *syncBuffer) {
	t.Helper()
	stateDir = t.TempDir()
	conf := filepath.Join(stateDir, "test.conf")
	if err := os.WriteFile(conf, []byte(testConfig(cfgText)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(binary, append([]string{"run", "--state-dir", stateDir, "--config", conf}, extra...)...)
	stderr = &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	waitFor(t, 10*time.Second, func() error {
		_, _, code := cli(t, "status", "--state-dir", stateDir)
		if code != 0 {
			return fmt.Errorf("status exits %d; daemon said: %s", code, stderr)
		}
		return nil
	})
	return stateDir, cmd, stderr
}

// testConfig is testPorts with cfgText after it, less the keys of
// testPorts that cfgText sets again (a key may be set only once).
func testConfig(cfgText string) string {
	keys := func(text string, keep func(key, line string)) {
		section := ""
		for line := range strings.SplitSeq(text, "\n") {
			l := strings.TrimSpace(line)
			if strings.HasPrefix(l, "[") {
				section = strings.Trim(l, "[]")
			}
			k, _, _ := strings.Cut(l, "=")
			keep(section+"."+strings.TrimSpace(k), line)
		}
	}
	set := map[string]bool{}
	keys(cfgText, func(key, _ string) { set[key] = true })
	var b strings.Builder
	keys(testPorts, func(key, line string) {
		if !set[key] || strings.HasPrefix(strings.TrimSpace(line), "[") {
			b.WriteString(line + "\n")
		}
	})
	return b.String() + cfgText
}

func cli(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var o, e bytes.Buffer
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("running superpeer %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

func waitFor(t *testing.T, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRunStatusInterrupt is `make run`, `superpeer status` from another
// terminal, then Ctrl-C.
func TestRunStatusInterrupt(t *testing.T) {
	dir, cmd, stderr := daemon(t, "")
	out, _, code := cli(t, "status", "--state-dir", dir)
	if code != 0 || !strings.Contains(out, "uptime") || !strings.Contains(out, "home.arpa") {
		t.Fatalf("status for people (exit %d):\n%s", code, out)
	}
	out, _, code = cli(t, "status", "--state-dir", dir, "--json")
	var st struct {
		Version  string `json:"version"`
		StateDir string `json:"state_dir"`
		Parts    []struct{ Name, State string }
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.StateDir != dir || len(st.Parts) == 0 {
		t.Fatalf("status --json (exit %d) is not the daemon's status: %s", code, out)
	}

	// A second daemon on the same state directory is refused.
	_, errOut, code := cli(t, "run", "--state-dir", dir)
	if code == 0 || !strings.Contains(errOut, "in use by another superpeer daemon") {
		t.Fatalf("second daemon on one state dir: exit %d, %s", code, errOut)
	}

	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("daemon did not stop cleanly on SIGINT: %v\n%s", err, stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("daemon still running 10 s after SIGINT\n%s", stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "control.sock")); !os.IsNotExist(err) {
		t.Fatalf("control socket left behind after stop: %v", err)
	}
	if _, _, code := cli(t, "status", "--state-dir", dir); code != control.ExitNoDaemon {
		t.Fatalf("status with no daemon exits %d, want %d", code, control.ExitNoDaemon)
	}
}

func TestSIGTERMStops(t *testing.T) {
	_, cmd, stderr := daemon(t, "")
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("daemon did not stop cleanly on SIGTERM: %v\n%s", err, stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("daemon still running 10 s after SIGTERM")
	}
}

func TestInvalidConfigRefusedWithLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.conf")
	os.WriteFile(path, []byte("[sip]\nlisten = :5060\n\n[turn]\nrelay_port_min = lots\n"), 0o600)
	_, errOut, code := cli(t, "run", "--config", path, "--state-dir", t.TempDir())
	if code != control.ExitError || !strings.Contains(errOut, path+":5:") || !strings.Contains(errOut, "not a whole number") {
		t.Fatalf("bad config: exit %d, stderr %q; want exit 1 naming line 5 and the reason", code, errOut)
	}
}

func TestUsage(t *testing.T) {
	if _, errOut, code := cli(t, "frobnicate"); code != control.ExitUsage || !strings.Contains(errOut, "unknown command") {
		t.Fatalf("unknown command: exit %d, %q", code, errOut)
	}
	if _, _, code := cli(t); code != control.ExitUsage {
		t.Fatalf("no command: exit %d", code)
	}
	out, _, code := cli(t, "version", "--json")
	var v struct{ Version, Platform string }
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v.Platform == "" {
		t.Fatalf("version --json: exit %d, %q", code, out)
	}
	if _, errOut, code := cli(t, "peers", "--join-token", "extra", "--state-dir", t.TempDir()); code != control.ExitUsage {
		t.Fatalf("peers --join-token with an argument: exit %d, %q", code, errOut)
	}
}

// freePort returns a port that nothing listens on now (network "udp" or
// "tcp" on 127.0.0.1).
func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// getJSON runs an ops subcommand with --json against the daemon in dir
// and decodes what it printed; it fails the test on a non-zero exit.
func getJSON(t *testing.T, dir string, out any, args ...string) {
	t.Helper()
	stdout, stderr, code := cli(t, append(args, "--state-dir", dir, "--json")...)
	if code != 0 {
		t.Fatalf("superpeer %s --json: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	if err := json.Unmarshal([]byte(stdout), out); err != nil {
		t.Fatalf("superpeer %s --json printed no JSON: %v\n%s", strings.Join(args, " "), err, stdout)
	}
}

type statusJSON struct {
	Role       string  `json:"role"`
	Node       string  `json:"node"`
	NodeKey    string  `json:"node_key"`
	Site       string  `json:"site"`
	Domain     string  `json:"domain"`
	Uptime     float64 `json:"uptime_seconds"`
	Superpeers []struct {
		Node, SIP string
	} `json:"superpeers"`
	Parts []struct{ Name, State string } `json:"parts"`
}

// TestOpsJSON runs every ops subcommand with --json against running
// daemons: a public bootstrap node, which serves RFC 5780 STUN on two
// loopback addresses, and a lone node of another site that uses it as its
// STUN server and joins the overlay through it. What each prints is what
// the daemons are doing.
func TestOpsJSON(t *testing.T) {
	stunPort, altPort, ovPort := freePort(t, "udp"), freePort(t, "udp"), freePort(t, "udp")
	pubDir, _, _ := daemon(t, fmt.Sprintf(`[site]
public = true
[nat]
stun_listen = 127.0.0.1:%d
stun_alternate = 127.0.0.2:%d
[overlay]
listen = 127.0.0.1:%d
`, stunPort, altPort, ovPort))
	var pub statusJSON
	getJSON(t, pubDir, &pub, "status")
	dir, _, stderr := daemon(t, fmt.Sprintf(`[site]
domain = ops.example
[nat]
stun_servers = 127.0.0.1:%d
[overlay]
bootstrap = 127.0.0.1:%d/%s
`, stunPort, ovPort, pub.NodeKey))

	// A lone machine is its own site's leader, voter and superpeer, and
	// runs every part.
	var st statusJSON
	waitFor(t, 20*time.Second, func() error {
		getJSON(t, dir, &st, "status")
		for _, p := range st.Parts {
			if p.State != "running" {
				return fmt.Errorf("part %s: %s", p.Name, p.State)
			}
		}
		if len(st.Parts) < 6 {
			return fmt.Errorf("parts %v", st.Parts)
		}
		return nil
	})
	if st.Role != "superpeer, voter, leader" || st.Domain != "ops.example" || st.Site == "" || st.Uptime <= 0 ||
		len(st.Superpeers) != 1 || st.Superpeers[0].Node != st.Node || st.Superpeers[0].SIP == "" {
		t.Errorf("status --json: %+v", st)
	}

	t.Run("peers", func(t *testing.T) {
		var ps struct {
			NodeID  string `json:"node_id"`
			Site    string `json:"site"`
			State   string `json:"state"`
			Leader  string `json:"leader"`
			Voter   bool   `json:"voter"`
			Score   int    `json:"score"`
			Members []struct {
				ID         string `json:"id"`
				Score      int    `json:"score"`
				Voter      bool   `json:"voter"`
				Leader     bool   `json:"leader"`
				Superpeer  bool   `json:"superpeer"`
				Capability struct {
					Reachability string `json:"reachability"`
					Class        string `json:"class"`
				} `json:"capability"`
			} `json:"members"`
			Superpeers struct {
				IDs []string `json:"ids"`
			} `json:"superpeers"`
		}
		getJSON(t, dir, &ps, "peers")
		if ps.NodeID != st.Node || ps.Site != st.Site || ps.State != "Leader" || ps.Leader != st.Node || !ps.Voter || ps.Score <= 0 {
			t.Errorf("peers --json: %+v", ps)
		}
		if len(ps.Members) != 1 {
			t.Fatalf("peers --json: members %+v, want this node alone", ps.Members)
		}
		m := ps.Members[0]
		if m.ID != st.Node || m.Score != ps.Score || !m.Voter || !m.Leader || !m.Superpeer || m.Capability.Class == "" {
			t.Errorf("peers --json: member %+v", m)
		}
		if len(ps.Superpeers.IDs) != 1 || ps.Superpeers.IDs[0] != st.Node {
			t.Errorf("peers --json: superpeers %v", ps.Superpeers.IDs)
		}
	})

	t.Run("join-token", func(t *testing.T) {
		out, errOut, code := cli(t, "peers", "--join-token", "--state-dir", dir)
		if code != 0 {
			t.Fatalf("peers --join-token: exit %d: %s", code, errOut)
		}
		secret, err := election.ParseJoinToken(strings.TrimSpace(out))
		if err != nil {
			t.Fatalf("peers --join-token printed %q, not a join token: %v", out, err)
		}
		if secret.SiteID() != st.Site {
			t.Errorf("the join token is for site %s, the daemon's site is %s", secret.SiteID(), st.Site)
		}
		var jt struct{ Site, Token string }
		getJSON(t, dir, &jt, "peers", "--join-token")
		if jt.Site != st.Site || jt.Token != strings.TrimSpace(out) {
			t.Errorf("peers --join-token --json: %+v", jt)
		}
	})

	t.Run("overlay", func(t *testing.T) {
		waitFor(t, 20*time.Second, func() error {
			var ov struct {
				ID     string `json:"id"`
				Listen string `json:"listen"`
				Links  []struct {
					Peer   string `json:"peer"`
					Remote string `json:"remote"`
					Linked bool   `json:"linked"`
				} `json:"links"`
			}
			getJSON(t, dir, &ov, "overlay")
			if ov.ID != st.Node || ov.Listen == "" {
				return fmt.Errorf("overlay --json: id %s, listen %q", ov.ID, ov.Listen)
			}
			for _, l := range ov.Links {
				if l.Peer == pub.Node && l.Linked && l.Remote == fmt.Sprintf("127.0.0.1:%d", ovPort) {
					return nil
				}
			}
			return fmt.Errorf("overlay --json: links %+v, want one to the bootstrap node %s; daemon said:\n%s", ov.Links, pub.Node, stderr)
		})
	})

	t.Run("pinholes", func(t *testing.T) {
		// Every overlay link is a pinhole the keeper keeps.
		waitFor(t, 20*time.Second, func() error {
			var ph struct {
				Pinholes []struct {
					Protocol string `json:"protocol"`
					Local    string `json:"local"`
					Remote   string `json:"remote"`
					State    string `json:"state"`
				} `json:"pinholes"`
			}
			getJSON(t, dir, &ph, "pinholes")
			for _, p := range ph.Pinholes {
				if p.Remote == fmt.Sprintf("127.0.0.1:%d", ovPort) && p.Local != "" && p.State != "" {
					return nil
				}
			}
			return fmt.Errorf("pinholes --json: %+v, want the overlay link to 127.0.0.1:%d", ph.Pinholes, ovPort)
		})
	})

	t.Run("nat", func(t *testing.T) {
		var ns struct {
			STUNServer   string `json:"stun_server"`
			Reachability string `json:"reachability"`
			Behaviour    *struct {
				NAT      bool   `json:"nat"`
				External string `json:"external"`
				Mapping  string `json:"mapping"`
			} `json:"behaviour"`
			Serving []string `json:"serving_stun"`
		}
		waitFor(t, 20*time.Second, func() error {
			getJSON(t, dir, &ns, "nat")
			if ns.Behaviour == nil {
				return fmt.Errorf("nat --json: no behaviour yet: %+v", ns)
			}
			return nil
		})
		// Loopback has no NAT: the node's own address comes back.
		if ns.STUNServer != fmt.Sprintf("127.0.0.1:%d", stunPort) || ns.Behaviour.NAT || ns.Reachability != "public" ||
			!strings.HasPrefix(ns.Behaviour.External, "127.0.0.1:") {
			t.Errorf("nat --json on the node: %+v, behaviour %+v", ns, *ns.Behaviour)
		}
		getJSON(t, pubDir, &ns, "nat")
		// RFC 5780: both addresses, each on both ports.
		var want []string
		for _, a := range []string{"127.0.0.1", "127.0.0.2"} {
			for _, p := range []int{stunPort, altPort} {
				want = append(want, fmt.Sprintf("%s:%d", a, p))
			}
		}
		slices.Sort(want)
		if ns.Reachability != "public" || !slices.Equal(slices.Sorted(slices.Values(ns.Serving)), want) {
			t.Errorf("nat --json on the public node: reachability %q, serving %v; want public, serving %v", ns.Reachability, ns.Serving, want)
		}
	})

	t.Run("discover", func(t *testing.T) {
		// Loopback carries no multicast on every machine, so what a lone
		// node hears varies; what it prints is the list, and nothing in it
		// is taken for a peer of its own site.
		var d struct {
			Heard *[]struct {
				ID       string `json:"id"`
				Site     string `json:"site"`
				Verified bool   `json:"verified"`
				Source   string `json:"source"`
			} `json:"heard"`
		}
		getJSON(t, dir, &d, "discover")
		if d.Heard == nil {
			t.Fatal(`discover --json: no "heard" list`)
		}
		for _, h := range *d.Heard {
			if h.ID == "" || h.Source == "" || (h.Verified && h.Site != st.Site) {
				t.Errorf("discover --json: %+v", h)
			}
		}
	})

	t.Run("status --watch", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, binary, "status", "--state-dir", dir, "--watch", "100ms")
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Each refresh clears the terminal and prints the status again.
		waitFor(t, 10*time.Second, func() error {
			if n := strings.Count(out.String(), "uptime seconds"); n < 2 {
				return fmt.Errorf("%d refreshes so far:\n%s", n, out.String())
			}
			return nil
		})
		cmd.Process.Signal(syscall.SIGINT)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("status --watch after SIGINT: %v\n%s", err, out.String())
		}
		if n := strings.Count(out.String(), "\033[H\033[2J"); n < 2 {
			t.Errorf("status --watch cleared the screen %d times", n)
		}
	})
}

// syncBuffer is a bytes.Buffer safe for a process writing while a test
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
