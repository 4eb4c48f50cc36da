package superpeer

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/superpeer/superpeer/superpeer/config"
	"github.com/superpeer/superpeer/superpeer/control"
)

// startDaemon runs a daemon in-process on a fresh state directory with
// cfgText applied over the defaults, and stops it when the test ends.
func startDaemon(t *testing.T, cfgText string) *Daemon {
	t.Helper()
	base, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("test.conf", []byte(testPorts+cfgText), base)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Daemon.StateDir = t.TempDir()
	d, err := New(cfg, Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("daemon stopped with: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("daemon did not stop within 10 s")
		}
	})
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatalf("daemon failed to start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("daemon not ready within 10 s")
	}
	return d
}

// testPorts lets daemons of tests that run side by side pick free ports;
// cfgText may set a key of another section after it.
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

func TestMetricsOffByDefault(t *testing.T) {
	d := startDaemon(t, "")
	if d.MetricsAddr() != "" {
		t.Fatalf("metrics endpoint open at %s without being configured", d.MetricsAddr())
	}
}

func TestMetricsEndpoint(t *testing.T) {
	d := startDaemon(t, "[metrics]\nlisten = 127.0.0.1:0\n")
	resp, err := http.Get("http://" + d.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{"superpeer_uptime_seconds ", "superpeer_build_info{version=", "process_resident_memory_bytes "} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
}

func TestStatusOverControlSocket(t *testing.T) {
	d := startDaemon(t, "[site]\ndomain = example.org\n")
	var st Status
	if err := control.NewClient(d.cfg.ControlSocket()).Get(context.Background(), "/v1/status", &st); err != nil {
		t.Fatal(err)
	}
	if st.Domain != "example.org" || st.Version != Version || len(st.Parts) == 0 {
		t.Fatalf("status: %+v", st)
	}
}
