package turn

import (
	"sort"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Status is a snapshot of the relay for the daemon's status and control
// API.
type Status struct {
	// UDP and TCP are the client listeners.
	UDP []string `json:"udp"`
	TCP []string `json:"tcp,omitempty"`
	// Allocations, Permissions and Channels count what is alive now.
	Allocations int `json:"allocations"`
	Permissions int `json:"permissions"`
	Channels    int `json:"channels"`
	// ReadyRelays are relay sockets waiting with their mapping learnt.
	ReadyRelays int `json:"ready_relays"`
	// ToPeer and FromPeer count relayed traffic since the start.
	ToPeer   Traffic `json:"to_peer"`
	FromPeer Traffic `json:"from_peer"`
	// Refusals counts every refusal since the start by reason (the Reason
	// constants), zero ones included.
	Refusals map[string]uint64 `json:"refusals"`
	// Remaps counts relays whose NAT mapping changed under a live
	// allocation.
	Remaps uint64 `json:"remaps"`
	// Relays are the live allocations, oldest first.
	Relays []RelayStatus `json:"relays"`
}

// Traffic counts packets and payload bytes.
type Traffic struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// RelayStatus is one live allocation.
type RelayStatus struct {
	User string `json:"user"`
	// Client is the client's transport address and Transport the client
	// connection's protocol ("udp" or "tcp").
	Client    string `json:"client"`
	Transport string `json:"transport"`
	// Relay is the relay's protocol: "udp", or "tcp" for RFC 6062.
	Relay string `json:"relay"`
	// Relayed is the address the relay reported; Local the socket; Method
	// how Relayed was found (the Method constants).
	Relayed     string    `json:"relayed"`
	Local       string    `json:"local"`
	Method      string    `json:"method"`
	Since       time.Time `json:"since"`
	Permissions int       `json:"permissions"`
	Channels    int       `json:"channels"`
	ToPeer      Traffic   `json:"to_peer"`
	FromPeer    Traffic   `json:"from_peer"`
}

// Status returns a snapshot.
func (s *Server) Status() Status {
	st := s.counts()
	st.Refusals, st.Remaps = map[string]uint64{}, s.remaps.Load()
	for _, a := range s.udpAddrs {
		st.UDP = append(st.UDP, a.String())
	}
	for _, a := range s.tcpAddrs {
		st.TCP = append(st.TCP, a.String())
	}
	for _, r := range reasons {
		st.Refusals[r] = s.refusals[r].Get()
	}
	s.poolMu.Lock()
	for _, l := range s.ready {
		st.ReadyRelays += len(l)
	}
	s.poolMu.Unlock()

	s.mu.Lock()
	for _, a := range s.allocs {
		rs := RelayStatus{
			User: a.user, Client: a.key.src.String(), Transport: transportName(a.key.tcp),
			Since: a.created, Channels: a.channels,
		}
		if r := a.relay; r != nil {
			rs.Relay, rs.Relayed, rs.Local, rs.Method = transportName(r.tcp), r.external.String(), r.local.String(), r.method
			rs.Permissions = r.permissionCount()
			rs.ToPeer = Traffic{r.toPeer.packets.Load(), r.toPeer.bytes.Load()}
			rs.FromPeer = Traffic{r.fromPeer.packets.Load(), r.fromPeer.bytes.Load()}
		}
		st.Relays = append(st.Relays, rs)
	}
	s.mu.Unlock()
	sort.Slice(st.Relays, func(i, j int) bool { return st.Relays[i].Since.Before(st.Relays[j].Since) })
	return st
}

// Metrics returns the relay's metrics for the daemon to register
// (metrics.RegisterSet) and expose in Prometheus format.
func (s *Server) Metrics() *metrics.Set { return s.set }

func (s *Server) registerMetrics() {
	for _, r := range reasons {
		s.refusals[r] = s.set.NewCounter(`superpeer_turn_refusals_total{reason="` + r + `"}`)
	}
	count := func(f func(*Status) float64) func() float64 {
		return func() float64 {
			st := s.counts()
			return f(&st)
		}
	}
	s.set.NewGauge("superpeer_turn_allocations", count(func(st *Status) float64 { return float64(st.Allocations) }))
	s.set.NewGauge("superpeer_turn_permissions", count(func(st *Status) float64 { return float64(st.Permissions) }))
	s.set.NewGauge("superpeer_turn_channels", count(func(st *Status) float64 { return float64(st.Channels) }))
	s.set.NewGauge(`superpeer_turn_relayed_packets_total{direction="to_peer"}`, count(func(st *Status) float64 { return float64(st.ToPeer.Packets) }))
	s.set.NewGauge(`superpeer_turn_relayed_packets_total{direction="from_peer"}`, count(func(st *Status) float64 { return float64(st.FromPeer.Packets) }))
	s.set.NewGauge(`superpeer_turn_relayed_bytes_total{direction="to_peer"}`, count(func(st *Status) float64 { return float64(st.ToPeer.Bytes) }))
	s.set.NewGauge(`superpeer_turn_relayed_bytes_total{direction="from_peer"}`, count(func(st *Status) float64 { return float64(st.FromPeer.Bytes) }))
	s.set.NewGauge("superpeer_turn_remaps_total", func() float64 { return float64(s.remaps.Load()) })
}

// counts is Status's totals: what the gauges read.
func (s *Server) counts() Status {
	var st Status
	s.mu.Lock()
	defer s.mu.Unlock()
	st.Allocations = len(s.allocs)
	st.ToPeer = Traffic{s.gone[0].packets, s.gone[0].bytes}
	st.FromPeer = Traffic{s.gone[1].packets, s.gone[1].bytes}
	for _, r := range s.relays {
		st.ToPeer.Packets += r.toPeer.packets.Load()
		st.ToPeer.Bytes += r.toPeer.bytes.Load()
		st.FromPeer.Packets += r.fromPeer.packets.Load()
		st.FromPeer.Bytes += r.fromPeer.bytes.Load()
	}
	for _, a := range s.allocs {
		st.Channels += a.channels
		if a.relay != nil {
			st.Permissions += a.relay.permissionCount()
		}
	}
	return st
}
