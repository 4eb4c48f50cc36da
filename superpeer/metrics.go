package superpeer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
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
		d.writeStateMetrics(w)
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

// writeStateMetrics writes what the parts' status snapshots say, read at
// scrape time so that nothing is counted twice or kept in step: the
// pinholes by method and state and their keepalives, the NAT binding
// lifetime, port mappings, the site's group (role, term, members, the
// superpeer set), the overlay and SIP. Sums over pinholes and links are
// of those held now (gauges); the rest are counters since the part
// started. TURN has its own set.
func (d *Daemon) writeStateMetrics(w io.Writer) {
	b2u := func(b bool) uint64 {
		if b {
			return 1
		}
		return 0
	}
	if d.nat != nil {
		type key struct{ method, state string }
		holes := map[key]uint64{}
		var sent, lost, remaps uint64
		for _, p := range d.nat.keeper.Snapshot() {
			holes[key{string(p.Method), p.State}]++
			sent += p.Keepalives
			lost += p.Losses
			remaps += p.Remaps
		}
		keys := make([]key, 0, len(holes))
		for k := range holes {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			return keys[i].method < keys[j].method || keys[i].method == keys[j].method && keys[i].state < keys[j].state
		})
		for _, k := range keys {
			metrics.WriteGaugeUint64(w, fmt.Sprintf("superpeer_pinholes{method=%q,state=%q}", k.method, k.state), holes[k])
		}
		metrics.WriteGaugeUint64(w, `superpeer_pinhole_keepalives{result="sent"}`, sent)
		metrics.WriteGaugeUint64(w, `superpeer_pinhole_keepalives{result="lost"}`, lost)
		metrics.WriteGaugeUint64(w, "superpeer_pinhole_remaps", remaps)

		ns := d.nat.status()
		if ns.Lifetime != nil {
			metrics.WriteGaugeFloat64(w, `superpeer_nat_lifetime_seconds{flow="stream"}`, ns.Lifetime.Lifetime.Seconds())
			metrics.WriteGaugeFloat64(w, `superpeer_nat_lifetime_seconds{flow="unreplied"}`, ns.Lifetime.Unreplied.Seconds())
			metrics.WriteGaugeFloat64(w, "superpeer_nat_lifetime_uncertainty_seconds", ns.Lifetime.Uncertainty.Seconds())
			metrics.WriteGaugeUint64(w, "superpeer_nat_lifetime_measured", b2u(ns.Lifetime.Measured))
		}
		var active, verified, renewals, failures, recreations uint64
		for _, m := range ns.Mappings {
			active += b2u(m.Active)
			verified += b2u(m.Active && m.Verified)
			renewals += m.Renewals
			failures += m.VerifyFailures
			recreations += m.Recreations
		}
		metrics.WriteGaugeUint64(w, `superpeer_port_mappings{state="active"}`, active)
		metrics.WriteGaugeUint64(w, `superpeer_port_mappings{state="verified"}`, verified)
		metrics.WriteCounterUint64(w, "superpeer_port_mapping_renewals_total", renewals)
		metrics.WriteCounterUint64(w, "superpeer_port_mapping_verify_failures_total", failures)
		metrics.WriteCounterUint64(w, "superpeer_port_mapping_recreations_total", recreations)
	}
	if d.node != nil {
		es := d.node.Status()
		metrics.WriteGaugeUint64(w, "superpeer_raft_leader", b2u(d.node.IsLeader()))
		metrics.WriteGaugeUint64(w, "superpeer_raft_voter", b2u(es.Voter))
		// Every election raises the term: increase() of it counts them.
		metrics.WriteCounterUint64(w, "superpeer_raft_term", es.Term)
		metrics.WriteGaugeUint64(w, "superpeer_site_members", uint64(len(es.Members)))
		metrics.WriteGaugeUint64(w, "superpeer_superpeers", uint64(len(es.Superpeers.IDs)))
		metrics.WriteGaugeUint64(w, "superpeer_superpeer_set_epoch", es.Superpeers.Epoch)
		metrics.WriteCounterUint64(w, "superpeer_superpeer_set_changes_total", d.setChanges.Load())
		metrics.WriteGaugeUint64(w, "superpeer_registrations", uint64(es.Registrations))
		metrics.WriteCounterUint64(w, "superpeer_site_refused_connections_total", uint64(es.RefusedConnections))
	}
	s := d.services()
	if s == nil {
		return
	}
	if s.overlay != nil {
		os := s.overlay.Status()
		var linked uint64
		for _, l := range os.Links {
			linked += b2u(l.Linked)
		}
		metrics.WriteGaugeUint64(w, "superpeer_overlay_links", linked)
		metrics.WriteGaugeUint64(w, "superpeer_overlay_table_gaps", uint64(os.Table.Gaps))
		metrics.WriteGaugeUint64(w, "superpeer_overlay_records_stored", uint64(os.Records))
		metrics.WriteGaugeUint64(w, "superpeer_overlay_records_published", uint64(os.Published))
	}
	if s.sip != nil {
		ss := s.sip.Status()
		for _, c := range []struct {
			name string
			v    uint64
		}{
			{`superpeer_sip_messages_total{result="received"}`, ss.Received},
			{`superpeer_sip_messages_total{result="refused"}`, ss.Refused},
			{`superpeer_sip_messages_total{result="dropped"}`, ss.Dropped},
			{`superpeer_sip_messages_total{result="flooded"}`, ss.Flooded},
			{`superpeer_sip_keepalives_total{kind="stun"}`, ss.STUN},
			{`superpeer_sip_keepalives_total{kind="crlf"}`, ss.CRLF},
			{`superpeer_sip_proxy_total{outcome="register"}`, ss.Proxy.Registers},
			{`superpeer_sip_proxy_total{outcome="forwarded"}`, ss.Proxy.Forwarded},
			{`superpeer_sip_proxy_total{outcome="to_overlay"}`, ss.Proxy.ToOverlay},
			{`superpeer_sip_proxy_total{outcome="from_overlay"}`, ss.Proxy.FromOverlay},
			{`superpeer_sip_proxy_total{outcome="not_found"}`, ss.Proxy.NotFound},
			{`superpeer_sip_proxy_total{outcome="unavailable"}`, ss.Proxy.Unavailable},
			{`superpeer_sip_proxy_total{outcome="timeout"}`, ss.Proxy.Timeouts},
			{`superpeer_sip_proxy_total{outcome="loop"}`, ss.Proxy.LoopsDetected},
		} {
			metrics.WriteCounterUint64(w, c.name, c.v)
		}
		metrics.WriteGaugeUint64(w, "superpeer_sip_active_calls", uint64(ss.ActiveCalls))
	}
}
