package superpeer

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/superpeer/superpeer/election"
	"github.com/superpeer/superpeer/nat"
	"github.com/superpeer/superpeer/overlay"
	"github.com/superpeer/superpeer/overlay/dht"
	"github.com/superpeer/superpeer/superpeer/sip"
	"github.com/superpeer/superpeer/superpeer/turn"
)

// services are what a superpeer runs for its site: the overlay links to
// other sites, the SIP registrar and proxy, and the TURN relay. They run
// while the site's committed superpeer set names this node.
type services struct {
	overlay *overlay.Node
	sip     *sip.Server
	turn    *turn.Server
	media   *mediaRelay
	wg      sync.WaitGroup // the services' own goroutines (join, warm-up)
}

func (d *Daemon) startServices(ctx context.Context) (*services, error) {
	s := &services{}
	fail := func(err error) (*services, error) {
		s.close()
		return nil, err
	}

	// Overlay. How links are made depends on the NAT: when discovery at
	// start found nothing (the bootstrap node was not up yet), ask again
	// now rather than join as a node of unknown reachability.
	d.awaitReachability(ctx)
	boot, err := parseBootstrap(d.cfg.Overlay.Bootstrap)
	if err != nil {
		return fail(err)
	}
	oc := overlay.DefaultConfig()
	oc.Net, oc.Key, oc.Clock = d.net, d.key, d.clock
	oc.Logger = d.log.With("part", "overlay")
	oc.Listen = d.cfg.Overlay.Listen
	oc.Reachability = d.nat.reachability()
	oc.Advertise = d.overlayAdvertise(oc.Reachability)
	oc.Bootstrap = boot
	oc.Table.Degree = d.cfg.Overlay.MaxLinks
	links := &linkPinholes{keeper: d.nat.keeper, holes: map[overlay.NodeID]*nat.Pinhole{}}
	oc.Pinholes = links
	n, err := overlay.New(ctx, oc)
	if err != nil {
		return fail(fmt.Errorf("overlay: %w", err))
	}
	links.setNode(n)
	s.overlay = n
	if la, ok := n.Addr().(*net.UDPAddr); ok {
		d.nat.hold(netip.AddrPortFrom(d.lanAddr(), uint16(la.Port)))
	}
	// TURN.
	if d.cfg.TURN.Listen != "" {
		t, err := d.startTURN(ctx)
		if err != nil {
			return fail(fmt.Errorf("TURN relay: %w", err))
		}
		s.turn = t
	}

	// Media: relays for the calls of phones that do not do ICE, asking
	// the public nodes for theirs over the overlay when this site's NAT
	// is symmetric (and answering such questions on a public node).
	loc := newOverlayLocation(n, func() []dht.Contact { return d.siteContacts() })
	s.media = newMediaRelay(ctx, d, n, s.turn, boot)
	loc.handleMedia(s.media.handle)
	d.addMetrics(s.media.set)

	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if len(boot) > 0 {
			if err := n.Join(ctx); err != nil && ctx.Err() == nil {
				d.log.Warn("overlay join", "err", err)
			}
		}
		n.Maintain(ctx)
		s.media.warm()
	}()

	// SIP.
	sc := sip.DefaultConfig()
	sc.NodeID = d.nodeID.String()
	sc.Domains = []string{d.cfg.Site.Domain}
	listen, host, err := concreteListen(d.cfg.SIP.Listen)
	if err != nil {
		return fail(fmt.Errorf("sip.listen: %w", err))
	}
	// Via and Record-Route name the address phones reach: the one
	// listened on, or the LAN address when listening on all of them.
	sc.Advertise = host
	if host.IsUnspecified() {
		sc.Advertise = d.lanAddr()
	}
	sc.Listen = []sip.Listener{{Network: "udp", Addr: listen}, {Network: "tcp", Addr: listen}}
	if p := d.lanPrefix(); p.IsValid() {
		sc.LAN = []netip.Prefix{p}
	}
	sc.Flood.Requests, sc.Flood.Window, sc.Flood.Ban = d.cfg.SIP.FloodRequests, d.cfg.SIP.FloodWindow, d.cfg.SIP.FloodBan
	// The site's superpeers share flow tokens: derive the key from the
	// site secret, so any of them can use another's.
	mac := hmac.New(sha256.New, []byte(d.secret.Token()))
	mac.Write([]byte("superpeer sip flow tokens"))
	sc.FlowKey = mac.Sum(nil)
	if est, _, measured := d.lifetime(); measured {
		sc.FlowTimer = est * 8 / 10
	}
	// Calls that leave the site have their media anchored in the relays
	// unless the phones do ICE.
	sc.Anchor = sip.AnchorRemote
	sc.Logger = d.log.With("part", "sip")
	srv, err := sip.New(sc, d.net, d.clock, sip.Deps{
		Bindings: siteBindings{store: d.node.Registrations()},
		Locator:  loc, Carrier: loc,
		Media:    s.media,
		Siblings: d.siblings,
	})
	if err != nil {
		return fail(fmt.Errorf("SIP: %w", err))
	}
	if err := srv.Start(ctx); err != nil {
		return fail(fmt.Errorf("SIP: %w", err))
	}
	s.sip = srv
	d.addMetrics(srv.Metrics())
	return s, nil
}

func (d *Daemon) startTURN(ctx context.Context) (*turn.Server, error) {
	tc := turn.DefaultConfig()
	tc.Realm = d.cfg.TURN.Realm
	listen, host, err := concreteListen(d.cfg.TURN.Listen)
	if err != nil {
		return nil, fmt.Errorf("turn.listen: %w", err)
	}
	if !host.IsUnspecified() {
		tc.Listen = []netip.Addr{host}
	}
	tc.Port = netip.MustParseAddrPort(listen).Port()
	tc.RelayPortMin, tc.RelayPortMax = uint16(d.cfg.TURN.RelayPortMin), uint16(d.cfg.TURN.RelayPortMax)
	for _, a := range d.cfg.TURN.AllowPeers {
		if pfx, err := netip.ParsePrefix(a); err == nil {
			tc.AllowPeers = append(tc.AllowPeers, pfx)
		}
	}
	// A public node's relay carries the media of calls between two sites
	// behind symmetric NATs, each on an allocation of its own here: one
	// allocation's peer is then the other's relayed address, this node's
	// own (see media.go).
	tc.RelayBetweenAllocations = d.nat.reachability() == overlay.Public
	tc.TotalQuota, tc.UserQuota = d.cfg.TURN.MaxAllocations, d.cfg.TURN.UserAllocations
	tc.MaxCredentialLifetime = d.cfg.TURN.CredentialLifetime
	if d.cfg.Site.Public {
		tc.ExternalIP = d.lanAddr()
	} else if ap, err := netip.ParseAddrPort(d.nat.server); err == nil {
		tc.STUNServer = ap
	}
	tc.Secret = func() []byte { return d.node.TURNSecret().Current }
	tc.Pinholes = relayPinholes{keeper: d.nat.keeper}
	tc.Logger = d.log.With("part", "turn")
	t, err := turn.New(tc, d.net, d.clock)
	if err != nil {
		return nil, err
	}
	if err := t.Start(ctx); err != nil {
		return nil, err
	}
	d.addMetrics(t.Metrics())
	return t, nil
}

// close stops the services in the order they depend on each other: SIP
// releases its calls' media, the media relay its allocations, then the
// relay and the overlay go. Their metrics go with them, so that services
// started again report afresh.
func (s *services) close() {
	if s.sip != nil {
		s.sip.Close() // and unregisters its metrics
	}
	if s.media != nil {
		s.media.Close()
	}
	if s.turn != nil {
		s.turn.Close()
		s.turn.Metrics().UnregisterAllMetrics()
	}
	if s.overlay != nil {
		s.overlay.Close()
	}
	s.wg.Wait()
}

// followSet starts the services when the committed superpeer set names
// this node and stops them when it no longer does. A start that fails (a
// port in use) is tried again every 10 seconds while the set names us.
func (d *Daemon) followSet(ctx context.Context) {
	var (
		running *services
		cancel  context.CancelFunc
		elected bool
	)
	stop := func() {
		if running != nil {
			cancel()
			running.close()
			running, cancel = nil, nil
			d.setServices(nil)
			d.log.Info("no longer a superpeer: services stopped")
		}
	}
	defer stop()
	self := d.nodeID.String()
	sets := d.node.WatchSuperpeers(ctx)
	retry := d.clock.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case set, ok := <-sets:
			if !ok {
				return
			}
			elected = set.Contains(self)
			if elected && running == nil {
				d.log.Info("elected superpeer", "set", strings.Join(shortIDs(set.IDs), ","))
			}
		case <-retry.C():
		case <-ctx.Done():
			return
		}
		if !elected {
			stop()
			continue
		}
		if running != nil {
			continue
		}
		sctx, c := context.WithCancel(ctx)
		s, err := d.startServices(sctx)
		if err != nil {
			c()
			d.log.Error("starting superpeer services; trying again in 10 s", "err", err)
			retry.Reset(10 * time.Second)
			continue
		}
		running, cancel = s, c
		d.setServices(s)
		d.advertiseServices(s)
		d.log.Info("superpeer services running", "sip", d.cfg.SIP.Listen, "turn", d.cfg.TURN.Listen, "overlay", d.cfg.Overlay.Listen)
	}
}

// advertiseServices tells the site where the running services listen:
// a listener configured with port 0 has its port only once it is bound,
// and the set's members, the desktop agents and DNS-SD must be given that
// one.
func (d *Daemon) advertiseServices(s *services) {
	want := d.serviceAddrs(election.RoleFull)
	if s.sip != nil {
		for _, l := range s.sip.Listeners() {
			if ap, err := netip.ParseAddrPort(l.Addr); err == nil && l.Network == "udp" {
				want.SIP = withPort(want.SIP, ap.Port())
			}
		}
	}
	if s.turn != nil {
		if addrs := s.turn.UDPAddrs(); len(addrs) > 0 {
			want.TURN = withPort(want.TURN, addrs[0].Port())
		}
	}
	d.node.SetServices(want)
}

// withPort is hostport with its port replaced; "" stays "".
func withPort(hostport string, port uint16) string {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

func (d *Daemon) setServices(s *services) {
	d.mu.Lock()
	d.svc = s
	d.mu.Unlock()
	for _, part := range []struct {
		name string
		on   bool
	}{{"overlay", s != nil}, {"sip", s != nil && s.sip != nil}, {"turn", s != nil && s.turn != nil}} {
		if part.on {
			d.setPart(part.name, "running")
		} else {
			d.setPart(part.name, "idle: this node is not a superpeer")
		}
	}
}

func (d *Daemon) services() *services {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.svc
}

// siteContacts are the site's superpeers as the DHT records name them.
func (d *Daemon) siteContacts() []dht.Contact {
	set := d.node.Superpeers()
	var cs []dht.Contact
	for _, id := range set.IDs {
		var nid overlay.NodeID
		if err := nid.UnmarshalText([]byte(id)); err == nil {
			cs = append(cs, dht.Contact{Node: nid})
		}
	}
	if len(cs) == 0 {
		cs = []dht.Contact{{Node: d.nodeID}}
	}
	return cs
}

// siblings are the SIP addresses of the site's other superpeers.
func (d *Daemon) siblings() []netip.AddrPort {
	var out []netip.AddrPort
	for _, m := range d.node.Superpeers().Members {
		if m.ID == d.nodeID.String() || m.Services.SIP == "" {
			continue
		}
		if ap, err := netip.ParseAddrPort(m.Services.SIP); err == nil {
			out = append(out, ap)
		}
	}
	return out
}

// currentSuperpeer is where the desktop agent forwards: the first
// superpeer of the committed set that serves SIP.
func (d *Daemon) currentSuperpeer() (netip.AddrPort, bool) {
	if d.node == nil {
		return netip.AddrPort{}, false
	}
	for _, m := range d.node.Superpeers().Members {
		if ap, err := netip.ParseAddrPort(m.Services.SIP); err == nil {
			return ap, true
		}
	}
	return netip.AddrPort{}, false
}

// superpeerSIPAddrs are the SIP addresses of every superpeer of the
// committed set: a desktop agent hears calls through any of them.
func (d *Daemon) superpeerSIPAddrs() []netip.AddrPort {
	if d.node == nil {
		return nil
	}
	var out []netip.AddrPort
	for _, m := range d.node.Superpeers().Members {
		if ap, err := netip.ParseAddrPort(m.Services.SIP); err == nil {
			out = append(out, ap)
		}
	}
	return out
}

// lifetime is the keeper's view of the NAT binding lifetime.
func (d *Daemon) lifetime() (est, unc time.Duration, measured bool) {
	if d.nat == nil || d.nat.est == nil {
		return 0, 0, false
	}
	return estimatorLifetime{d.nat.est}.Lifetime()
}

// lanAddr is this host's first up, non-loopback IPv4 address.
func (d *Daemon) lanAddr() netip.Addr {
	p := d.lanPrefix()
	if p.IsValid() {
		return p.Addr()
	}
	return netip.Addr{}
}

// lanPrefix is the address and prefix of the host's first up,
// non-loopback IPv4 interface address, a private one (RFC 1918) first: on
// a router the LAN side is private and the WAN side often is not.
func (d *Daemon) lanPrefix() netip.Prefix {
	ifs, err := d.net.Interfaces()
	if err != nil {
		return netip.Prefix{}
	}
	var first netip.Prefix
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok || !ip.Unmap().Is4() || ip.IsLinkLocalUnicast() {
				continue
			}
			bits, _ := ipn.Mask.Size()
			p := netip.PrefixFrom(ip.Unmap(), bits)
			if p.Addr().IsPrivate() {
				return p
			}
			if !first.IsValid() {
				first = p
			}
		}
	}
	return first
}

// discoveryWait bounds how long the services wait for the first NAT
// discovery to end (discovery bounds itself to 20 s).
const discoveryWait = 25 * time.Second

// awaitReachability makes sure the NAT's verdict is known before the
// overlay starts, since it decides how links are made and which relays
// media takes: it waits for the first discovery to end, and runs one
// again when that found nothing (a bootstrap node that was not up yet).
func (d *Daemon) awaitReachability(ctx context.Context) {
	if d.nat.server == "" || d.nat.reachability() != overlay.Unknown {
		return
	}
	select {
	case <-d.nat.discovered:
	case <-d.clock.After(discoveryWait):
	case <-ctx.Done():
		return
	}
	if d.nat.reachability() == overlay.Unknown {
		d.nat.discover(ctx)
	}
}

// concreteListen reads a listen address, "host:port" or ":port", into
// ip:port form (0.0.0.0 for all addresses) and its host.
func concreteListen(listen string) (string, netip.Addr, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", netip.Addr{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", netip.Addr{}, fmt.Errorf("port %q: %w", port, err)
	}
	ip := netip.IPv4Unspecified()
	if host != "" {
		if ip, err = netip.ParseAddr(host); err != nil {
			return "", netip.Addr{}, fmt.Errorf("%q: want an IP address", host)
		}
	}
	return netip.AddrPortFrom(ip, uint16(p)).String(), ip, nil
}

// overlayAdvertise are the addresses other nodes reach this one's overlay
// socket at, as far as the NAT part knows before any neighbour told: a
// public node's own address (a neighbour sees the one replies come from,
// which on a host with several addresses may not be the one to give out).
// Behind a NAT the neighbours' observations are the truth.
func (d *Daemon) overlayAdvertise(r overlay.Reachability) []string {
	if r != overlay.Public {
		return nil
	}
	listen, host, err := concreteListen(d.cfg.Overlay.Listen)
	if err != nil {
		return nil
	}
	port := netip.MustParseAddrPort(listen).Port()
	if host.IsUnspecified() {
		host = d.lanAddr()
	}
	if !host.IsValid() || host.IsLoopback() || port == 0 {
		return nil
	}
	return []string{netip.AddrPortFrom(host, port).String()}
}

// parseBootstrap reads "host:port/nodekey" entries; the key is the node's
// ed25519 public key in hex, as `superpeer status` shows it.
func parseBootstrap(entries []string) ([]overlay.BootstrapNode, error) {
	var out []overlay.BootstrapNode
	for _, e := range entries {
		addr, key, _ := strings.Cut(e, "/")
		k, err := hex.DecodeString(key)
		if err != nil || len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("overlay.bootstrap %q: the node key must be %d hex bytes", e, ed25519.PublicKeySize)
		}
		out = append(out, overlay.BootstrapNode{Addr: addr, Key: ed25519.PublicKey(k)})
	}
	return out, nil
}

func shortIDs(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id[:min(8, len(id))]
	}
	return out
}

var errNotSuperpeer = errors.New("this node is not a superpeer of its site now")
