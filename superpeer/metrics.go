package superpeer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// metricsServer serves the Prometheus exposition of every part's metric
// set. It is off unless [metrics] listen is set: a home router should not
// open a port nobody asked for.
type metricsServer struct {
	srv *http.Server
	ln  net.Listener
}

// addMetrics registers a part's metric set for the /metrics endpoint.
func (d *Daemon) addMetrics(s *metrics.Set) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.metricSets = append(d.metricSets, s)
}

func (d *Daemon) startMetrics() error {
	if d.cfg.Metrics.Listen == "" {
		return nil
	}
	addr, err := net.ResolveTCPAddr("tcp", d.cfg.Metrics.Listen)
	if err != nil {
		return fmt.Errorf("metrics listen address: %w", err)
	}
	ln, err := d.net.ListenTCP("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics endpoint on %s: %w", d.cfg.Metrics.Listen, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		d.mu.Lock()
		sets := append([]*metrics.Set(nil), d.metricSets...)
		d.mu.Unlock()
		for _, s := range sets {
			s.WritePrometheus(w)
		}
		metrics.WriteProcessMetrics(w)
	})
	d.metrics = &metricsServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln: ln}
	go func() {
		if err := d.metrics.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics endpoint stopped", "err", err)
		}
	}()
	d.log.Info("metrics endpoint", "addr", ln.Addr().String())
	return nil
}

// MetricsAddr is where /metrics is served, or "" when it is off.
func (d *Daemon) MetricsAddr() string {
	if d.metrics == nil {
		return ""
	}
	return d.metrics.ln.Addr().String()
}

func (d *Daemon) stopMetrics(ctx context.Context) error {
	if d.metrics == nil {
		return nil
	}
	return d.metrics.srv.Shutdown(ctx)
}
