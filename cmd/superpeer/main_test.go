package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

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
// embedded defaults, except for ports (tests run side by side), and waits
// until its control socket answers.
func daemon(t *testing.T, extra ...string) (stateDir string, cmd *exec.Cmd, stderr *bytes.Buffer) {
	t.Helper()
	stateDir = t.TempDir()
	conf := filepath.Join(stateDir, "test.conf")
	if err := os.WriteFile(conf, []byte(testPorts), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(binary, append([]string{"run", "--state-dir", stateDir, "--config", conf}, extra...)...)
	stderr = &bytes.Buffer{}
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
	dir, cmd, stderr := daemon(t)
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
	_, cmd, stderr := daemon(t)
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

func TestUsageAndUnbuiltCapabilities(t *testing.T) {
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
	dir, _, _ := daemon(t)
	// Every ops subcommand answers from the daemon: with data, or saying
	// plainly that the capability is not there (exit 4), never pretending.
	for _, sub := range []string{"status", "pinholes", "peers", "overlay", "discover", "nat"} {
		out, errOut, code := cli(t, sub, "--state-dir", dir, "--json")
		switch code {
		case control.ExitOK:
			if !json.Valid([]byte(out)) {
				t.Errorf("%s --json printed invalid JSON: %q", sub, out)
			}
		case control.ExitUnavailable:
			if !strings.Contains(errOut, "not") {
				t.Errorf("%s: exit 4 without saying why: %q", sub, errOut)
			}
		default:
			t.Errorf("%s --json: exit %d, %q", sub, code, errOut)
		}
	}
}
