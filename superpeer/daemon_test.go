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

// TestMetricsEndpoint: a lone machine founds its site, leads it and is
// its superpeer; /metrics says so, with every part's figures.
func TestMetricsEndpoint(t *testing.T) {
	d := startDaemon(t, "[metrics]\nlisten = 127.0.0.1:0\n")
	var body string
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + d.MetricsAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		if strings.Contains(body, "superpeer_raft_leader 1\n") && strings.Contains(body, "superpeer_sip_messages_total") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics does not show this node leading its site with SIP running:\n%s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, want := range []string{
		"superpeer_uptime_seconds ", "superpeer_build_info{version=", "process_resident_memory_bytes ",
		"superpeer_raft_voter 1\n", "superpeer_superpeers 1\n", "superpeer_site_members 1\n", "superpeer_superpeer 1\n",
		`superpeer_pinhole_keepalives{result="lost"} `, `superpeer_port_mappings{state="active"} `,
		"superpeer_overlay_links ", `superpeer_sip_proxy_total{outcome="register"} 0`, "superpeer_turn_allocations 0\n",
	} {
		if !strings.Contains(body, want) {
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
