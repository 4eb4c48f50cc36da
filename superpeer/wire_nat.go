package superpeer

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/superpeer/superpeer/election"
	"github.com/superpeer/superpeer/nat"
	"github.com/superpeer/superpeer/nat/portmap"
	"github.com/superpeer/superpeer/nat/probe"
	"github.com/superpeer/superpeer/nat/stunserver"
	"github.com/superpeer/superpeer/overlay"
)

// natPart is the daemon's way through its NAT: the RFC 5780 server of a
// public node, what discovery learnt, the lifetime estimate, the port
// mapper and the keeper that every other part registers its pinholes with.
type natPart struct {
	d      *Daemon
	stun   *stunserver.Server
	keeper *nat.Keeper
	est    *probe.Estimator // nil when no STUN server is known
	pm     *portmap.Client  // nil when port mapping is off or no gateway answers
	server string           // the STUN server asked, host:port, or ""

	// changed is signalled when discovery has a new report.
	changed chan struct{}
	// quickDone is closed when discovery's quick pass has ended, with a
	// verdict or without.
	quickDone chan struct{}
	quickOnce sync.Once
	// discovered is closed when the first discovery has ended, both its
	// passes, with a verdict or without.
	discovered     chan struct{}
	discoveredOnce sync.Once

	mu       sync.Mutex // guards following
	report   *probe.Report
	discErr  string
	mappings []*portmap.Held
}

// NATStatus is the answer of `superpeer nat` (from the daemon).
type NATStatus struct {
	STUNServer   string                  `json:"stun_server"`
	Reachability string                  `json:"reachability"`
	Behaviour    *probe.Report           `json:"behaviour,omitempty"`
	Error        string                  `json:"error,omitempty"`
	Lifetime     *probe.EstimatorStatus  `json:"lifetime,omitempty"`
	Mappings     []portmap.MappingStatus `json:"mappings"`
	Serving      []string                `json:"serving_stun,omitempty"`
}

func (d *Daemon) startNAT(ctx context.Context) (*natPart, error) {
	p := &natPart{d: d, changed: make(chan struct{}, 1), quickDone: make(chan struct{}), discovered: make(chan struct{})}
	cfg := d.cfg

	if cfg.Site.Public {
		sc := stunserver.DefaultConfig()
		sc.Net, sc.Clock, sc.Logger = d.net, d.clock, d.log.With("part", "stun")
		prim, pport, err := parseAddrPort(cfg.NAT.STUNListen)
		if err != nil {
			return nil, fmt.Errorf("nat.stun_listen: %w", err)
		}
		alt, aport, err := parseAddrPort(cfg.NAT.STUNAlternate)
		if err != nil {
			return nil, fmt.Errorf("nat.stun_alternate: %w", err)
		}
		sc.Primary, sc.Port, sc.Alternate, sc.AltPort = prim, pport, alt, aport
		sc.Software = "superpeer " + Version
		s, err := stunserver.New(sc)
		if err != nil {
			return nil, fmt.Errorf("RFC 5780 STUN server: %w", err)
		}
		p.stun = s
		go s.Run(ctx)
	}

	p.server = p.stunServer()
	kc := nat.DefaultKeeperConfig()
	kc.Clock, kc.Logger = d.clock, d.log.With("part", "keeper")
	kc.DefaultLifetime = min(kc.DefaultLifetime, cfg.NAT.DefaultLifetime)
	if p.server != "" {
		ec := probe.DefaultEstimatorConfig()
		ec.Probe.Server, ec.Probe.Net, ec.Probe.Clock = p.server, d.net, d.clock
		ec.Probe.Logger = d.log.With("part", "lifetime")
		ec.Default = cfg.NAT.DefaultLifetime
		est, err := probe.NewEstimator(ec)
		if err != nil {
			return nil, fmt.Errorf("binding-lifetime estimator: %w", err)
		}
		p.est = est
		kc.Lifetime = estimatorLifetime{est}
		go est.Run(ctx)
	}
	k, err := nat.NewKeeper(kc)
	if err != nil {
		return nil, fmt.Errorf("keeper: %w", err)
	}
	if err := k.Start(); err != nil {
		return nil, err
	}
	p.keeper = k

	if cfg.NAT.PortMapping && !cfg.Site.Public {
		pc := portmap.DefaultConfig()
		pc.Net, pc.Clock, pc.Logger = d.net, d.clock, d.log.With("part", "portmap")
		pc.Description = "superpeer"
		if c, err := portmap.New(pc); err == nil {
			p.pm = c
		} else {
			d.log.Info("port mapping off", "reason", err)
		}
	}
	return p, nil
}

// stunServer is the configured STUN server, else the first bootstrap
// node's host on the STUN port (public bootstrap nodes serve RFC 5780).
func (p *natPart) stunServer() string {
	cfg := p.d.cfg
	if len(cfg.NAT.STUNServers) > 0 {
		return cfg.NAT.STUNServers[0]
	}
	if cfg.Site.Public {
		return ""
	}
	for _, b := range cfg.Overlay.Bootstrap {
		addr, _, _ := strings.Cut(b, "/")
		if host, _, err := net.SplitHostPort(addr); err == nil {
			return net.JoinHostPort(host, "3478")
		}
	}
	return ""
}

// quickDiscoveryTimeout bounds each request of discovery's first pass.
// Behind a filtering NAT silence is the answer of two filtering tests in a
// row, so the probe's patient default (2 s per test) keeps the verdict
// back for 4 s; a LAN's peers elect their superpeers before that, and the
// score ranks reachability first.
const quickDiscoveryTimeout = 500 * time.Millisecond

// quickDiscoveryWait bounds how long a restarting member waits for the
// quick pass: its two filtering tests in a row, with room to spare.
const quickDiscoveryWait = 4 * quickDiscoveryTimeout

// discoveryRunning is the NAT status's error while a discovery runs and
// none has found a verdict yet.
const discoveryRunning = "discovery running"

// discover runs RFC 5780 behaviour discovery and keeps the report: a quick
// pass whose verdict the election can use at once, then a patient pass
// whose verdict stands (on a slow path the quick pass can take a late
// answer for filtering, or leave the mapping unknown). Each new report is
// signalled on changed; the end of the first discovery closes discovered.
func (p *natPart) discover(ctx context.Context) {
	defer p.discoveredOnce.Do(func() { close(p.discovered) })
	defer p.quickOnce.Do(func() { close(p.quickDone) })
	if p.server == "" {
		p.mu.Lock()
		p.discErr = "no STUN server configured (nat.stun_servers, or a bootstrap node)"
		p.mu.Unlock()
		return
	}
	p.mu.Lock()
	p.discErr = discoveryRunning
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()

	quick := probe.DefaultConfig()
	quick.RTO, quick.Timeout = 150*time.Millisecond, quickDiscoveryTimeout
	quick.Server, quick.Net, quick.Clock, quick.Logger = p.server, p.d.net, p.d.clock, discardLogger()
	if r, err := probe.Discover(ctx, quick); err == nil && r.Mapping != probe.BehaviorUnknown {
		p.setReport(r)
	}
	p.quickOnce.Do(func() { close(p.quickDone) })

	pc := probe.DefaultConfig()
	pc.Server, pc.Net, pc.Clock, pc.Logger = p.server, p.d.net, p.d.clock, p.d.log.With("part", "discovery")
	r, err := probe.Discover(ctx, pc)
	if err != nil {
		p.mu.Lock()
		if p.report == nil {
			p.discErr = err.Error()
		}
		p.mu.Unlock()
		if ctx.Err() == nil {
			p.d.log.Warn("NAT discovery failed", "server", p.server, "err", err)
		}
		return
	}
	p.setReport(r)
}

func (p *natPart) setReport(r *probe.Report) {
	p.mu.Lock()
	p.report, p.discErr = r, ""
	p.mu.Unlock()
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// reachability is nat's verdict for the overlay and the election score.
func (p *natPart) reachability() overlay.Reachability {
	if p.d.cfg.Site.Public {
		return overlay.Public
	}
	p.mu.Lock()
	report := p.report
	mapped := false
	for _, h := range p.mappings {
		if s := h.Status(); s.Active && s.Verified {
			mapped = true
		}
	}
	p.mu.Unlock()
	switch {
	case report != nil && p.d.ownAddr(report.External.Addr()):
		// The address the world sees is on this host: a router itself
		// (its own flows go through its masquerade too, which may move
		// their ports when they collide with a LAN host's).
		return overlay.Public
	case mapped:
		return overlay.Mapped
	case report == nil:
		return overlay.Unknown
	case !report.NAT:
		return overlay.Public
	case report.Mapping == probe.EndpointIndependent:
		return overlay.EndpointIndependent
	default:
		return overlay.Symmetric
	}
}

// ownAddr says whether ip is an address of one of this host's interfaces.
func (d *Daemon) ownAddr(ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	ifs, err := d.net.Interfaces()
	if err != nil {
		return false
	}
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if own, ok := netip.AddrFromSlice(ipn.IP); ok && own.Unmap() == ip.Unmap() {
					return true
				}
			}
		}
	}
	return false
}

func electionReach(r overlay.Reachability) election.Reachability {
	switch r {
	case overlay.Public:
		return election.ReachPublic
	case overlay.Mapped:
		return election.ReachMapped
	case overlay.EndpointIndependent:
		return election.ReachEIM
	case overlay.Symmetric:
		return election.ReachSymmetric
	}
	return election.ReachUnknown
}

// hold asks the gateway to forward a local UDP port and tells the keeper
// that flows from that socket need no keepalives while it does.
func (p *natPart) hold(local netip.AddrPort) {
	if p.pm == nil {
		return
	}
	h, err := p.pm.Hold(local, portmap.HoldOptions{OnChange: func(s portmap.MappingStatus) {
		if s.Active && s.Verified {
			p.keeper.Cover(s.Internal, nat.Method(s.Protocol), s.External)
		} else {
			p.keeper.Uncover(s.Internal)
		}
	}})
	if err != nil {
		p.d.log.Info("no port mapping", "port", local.Port(), "err", err)
		return
	}
	p.mu.Lock()
	p.mappings = append(p.mappings, h)
	p.mu.Unlock()
}

func (p *natPart) status() NATStatus {
	st := NATStatus{STUNServer: p.server, Reachability: p.reachability().String(), Mappings: []portmap.MappingStatus{}}
	p.mu.Lock()
	st.Behaviour, st.Error = p.report, p.discErr
	for _, h := range p.mappings {
		st.Mappings = append(st.Mappings, h.Status())
	}
	p.mu.Unlock()
	if p.est != nil {
		es := p.est.Status()
		st.Lifetime = &es
	}
	if p.stun != nil {
		for _, a := range p.stun.Addrs() {
			st.Serving = append(st.Serving, a.String())
		}
	}
	return st
}

func (p *natPart) close(ctx context.Context) {
	if p.pm != nil {
		p.pm.Close(ctx)
	}
	if p.keeper != nil {
		p.keeper.Close()
	}
	if p.stun != nil {
		p.stun.Close()
	}
}

// estimatorLifetime adapts the probe Estimator to the keeper's source.
type estimatorLifetime struct{ e *probe.Estimator }

func (a estimatorLifetime) Lifetime() (time.Duration, time.Duration, bool) {
	est, unc, _, measured := a.e.Lifetime()
	return est, unc, measured
}

func (a estimatorLifetime) ObserveRemap(idle time.Duration) { a.e.ObserveRemap(idle) }

// parseAddrPort reads "ip:port" (the host must be an IP address).
func parseAddrPort(s string) (netip.Addr, uint16, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.Addr{}, 0, err
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("%q: want an IP address", host)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("port %q: %w", port, err)
	}
	return a, uint16(n), nil
}
