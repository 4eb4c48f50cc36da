package netlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Mapping is how a site's NAT picks the external port of a new flow.
type Mapping int

const (
	// PortPreserving is plain masquerade: the external port is the LAN
	// host's port when free, and one internal endpoint keeps its external
	// endpoint towards every destination (endpoint-independent mapping, what
	// most home routers do).
	PortPreserving Mapping = iota
	// Random is masquerade fully-random: every flow gets a random external
	// port (address-and-port-dependent mapping, "symmetric").
	Random
)

func (m Mapping) String() string {
	switch m {
	case PortPreserving:
		return "port-preserving"
	case Random:
		return "random"
	}
	return "Mapping(" + strconv.Itoa(int(m)) + ")"
}

// SiteConfig describes one site: a NAT host and the LAN behind it.
type SiteConfig struct {
	// Name is for people (logs, the lab command); defaults to "site<i>".
	Name string
	// Mapping is the NAT's mapping behaviour.
	Mapping Mapping
	// UDPTimeout is the conntrack timeout of a UDP flow that has seen no
	// reply, or whose reply came within 2 s of its start
	// (nf_conntrack_udp_timeout). Zero keeps the kernel's default (30 s).
	UDPTimeout time.Duration
	// UDPStreamTimeout is the timeout of a UDP flow that saw a reply and
	// traffic more than 2 s into its life (nf_conntrack_udp_timeout_stream).
	// Zero keeps the kernel's default (120 s here, 180 s on some kernels).
	UDPStreamTimeout time.Duration
	// PinholeLimit caps the conntrack entries of each LAN host (nftables
	// ct count); a new flow beyond it is dropped. Zero means no limit.
	PinholeLimit int
	// UPnP runs miniupnpd on the NAT host as a UPnP IGD and NAT-PMP gateway
	// on the LAN side. The lab then runs a STUN server on the WAN for
	// miniupnpd's ext_perform_stun.
	UPnP bool
	// CGNAT puts a second, carrier-grade NAT between the site's NAT and the
	// WAN (double NAT); the site's NAT then has a 100.64.0.0/10 address.
	CGNAT bool
	// LANHosts is the number of hosts on the LAN; zero means one.
	LANHosts int
}

// Topology is a whole lab: WAN hosts and sites.
type Topology struct {
	// WANHosts is the number of hosts on the WAN; zero means one. Each has
	// two addresses, for RFC 5780 servers.
	WANHosts int
	Sites    []SiteConfig
}

// Site is a built site.
type Site struct {
	Config SiteConfig
	// NAT is the site's router. NAT.Addr is its LAN-side address.
	NAT *Host
	// CGN is the carrier-grade NAT in front, or nil.
	CGN *Host
	// LAN are the hosts behind the NAT.
	LAN []*Host
	// External is the site's address as the WAN sees it.
	External netip.Addr
	// LANPrefix is the LAN subnet (every site uses 192.168.1.0/24, as homes do).
	LANPrefix netip.Prefix

	upnp     *Proc // miniupnpd, when Config.UPnP
	upnpConf string
	upnpPID  string
}

// Lab is a built topology. Close tears it down.
type Lab struct {
	// Prefix starts every namespace name of this lab.
	Prefix string
	// WAN are the WAN hosts; WAN[i].Addrs holds two addresses.
	WAN   []*Host
	Sites []*Site
	// STUN is the address of the lab's own STUN server (coturn, on the
	// first WAN host's two addresses) when a site runs miniupnpd; otherwise
	// it is the zero value.
	STUN netip.AddrPort
	// Dir is a scratch directory removed by Close.
	Dir string

	mu     sync.Mutex // guards following
	nss    []*Host    // in creation order
	procs  []*Proc
	closed bool
}

var (
	wanPrefix = netip.MustParsePrefix("203.0.113.0/24")
	lanPrefix = netip.MustParsePrefix("192.168.1.0/24")
)

const stunPort = 3478

// Unavailable says why this process cannot build topo, or "" when it can.
func Unavailable(topo Topology) string {
	if os.Geteuid() != 0 {
		return "netlab: needs root for network namespaces (run make test as root)"
	}
	tools := []string{"ip", "nft", "conntrack"}
	for _, s := range topo.Sites {
		if s.UPnP {
			tools = append(tools, "miniupnpd", "turnserver")
			break
		}
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("netlab: %s not installed (make test installs it as root)", tool)
		}
	}
	return ""
}

// Start builds topo for a test and tears it down when the test ends. It
// skips the test, with the reason, when the lab cannot run here; under
// CI=true that is a failure instead, because CI is root with the tools
// installed.
func Start(t testing.TB, topo Topology) *Lab {
	t.Helper()
	if reason := Unavailable(topo); reason != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s (CI must run the lab)", reason)
		}
		t.Skip(reason)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := New(ctx, topo)
	if err != nil {
		t.Fatalf("building the lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("tearing the lab down: %v", err)
		}
	})
	return l
}

var labSeq atomic.Uint32

// newPrefix returns "nl" + the pid in base 36 + "x" + a per-process
// sequence number, e.g. "nl2hm9sx3". Sweep parses the pid back out.
func newPrefix() string {
	return "nl" + strconv.FormatInt(int64(os.Getpid()), 36) + "x" + strconv.FormatUint(uint64(labSeq.Add(1)), 36)
}

// New builds topo. On error everything built so far is removed again.
func New(ctx context.Context, topo Topology) (_ *Lab, err error) {
	if reason := Unavailable(topo); reason != "" {
		return nil, errors.New(reason)
	}
	if topo.WANHosts == 0 {
		topo.WANHosts = 1
	}
	if topo.WANHosts > 40 || len(topo.Sites) > 100 {
		return nil, fmt.Errorf("netlab: at most 40 WAN hosts and 100 sites")
	}
	Sweep()
	dir, err := os.MkdirTemp("", "netlab-")
	if err != nil {
		return nil, fmt.Errorf("netlab: scratch directory: %w", err)
	}
	l := &Lab{Prefix: newPrefix(), Dir: dir}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()

	// The WAN is a bridge in a namespace of its own.
	wan, err := l.addNS(ctx, "wan", "wan")
	if err != nil {
		return nil, err
	}
	if err := wan.ip(ctx, "link", "add", "br0", "type", "bridge"); err != nil {
		return nil, err
	}
	if err := wan.ip(ctx, "link", "set", "br0", "up"); err != nil {
		return nil, err
	}

	for i := range topo.WANHosts {
		h, err := l.addNS(ctx, fmt.Sprintf("w%d", i), fmt.Sprintf("wan%d", i))
		if err != nil {
			return nil, err
		}
		a1 := nthAddr(wanPrefix, 10+2*i)
		a2 := nthAddr(wanPrefix, 11+2*i)
		if err := l.connect(ctx, h, "eth0", wan, fmt.Sprintf("w%d", i), "br0"); err != nil {
			return nil, err
		}
		if err := h.addAddr(ctx, "eth0", a1, wanPrefix.Bits()); err != nil {
			return nil, err
		}
		if err := h.addAddr(ctx, "eth0", a2, wanPrefix.Bits()); err != nil {
			return nil, err
		}
		h.Addr, h.Addrs = a1, []netip.Addr{a1, a2}
		l.WAN = append(l.WAN, h)
	}

	needSTUN := false
	for j, sc := range topo.Sites {
		if sc.Name == "" {
			sc.Name = fmt.Sprintf("site%d", j)
		}
		if sc.LANHosts == 0 {
			sc.LANHosts = 1
		}
		s, err := l.buildSite(ctx, wan, j, sc)
		if err != nil {
			return nil, fmt.Errorf("netlab: site %s: %w", sc.Name, err)
		}
		l.Sites = append(l.Sites, s)
		needSTUN = needSTUN || sc.UPnP
	}

	if needSTUN {
		if err := l.startSTUN(ctx); err != nil {
			return nil, err
		}
		for _, s := range l.Sites {
			if s.Config.UPnP {
				if err := l.startMiniupnpd(ctx, s); err != nil {
					return nil, fmt.Errorf("netlab: site %s: %w", s.Config.Name, err)
				}
			}
		}
	}
	return l, nil
}

func (l *Lab) buildSite(ctx context.Context, wan *Host, j int, sc SiteConfig) (*Site, error) {
	s := &Site{Config: sc, LANPrefix: lanPrefix}
	ext := nthAddr(wanPrefix, 100+j)
	s.External = ext

	nat, err := l.addNS(ctx, fmt.Sprintf("s%d", j), sc.Name+"-nat")
	if err != nil {
		return nil, err
	}
	s.NAT = nat
	natWANAddr := ext
	if sc.CGNAT {
		cgn, err := l.addNS(ctx, fmt.Sprintf("c%d", j), sc.Name+"-cgn")
		if err != nil {
			return nil, err
		}
		s.CGN = cgn
		if err := l.connect(ctx, cgn, "wan0", wan, fmt.Sprintf("c%d", j), "br0"); err != nil {
			return nil, err
		}
		if err := cgn.addAddr(ctx, "wan0", ext, wanPrefix.Bits()); err != nil {
			return nil, err
		}
		shared := netip.MustParsePrefix(fmt.Sprintf("100.64.%d.0/24", j))
		if err := l.connect(ctx, nat, "wan0", cgn, "isp0", ""); err != nil {
			return nil, err
		}
		if err := cgn.addAddr(ctx, "isp0", nthAddr(shared, 1), shared.Bits()); err != nil {
			return nil, err
		}
		cgn.Addr, cgn.Addrs = ext, []netip.Addr{ext, nthAddr(shared, 1)}
		// The carrier's NAT maps endpoint-independently, as RFC 6888 asks.
		if err := cgn.nft(ctx, natRuleset("isp0", "wan0", PortPreserving, 0, nil, nil)); err != nil {
			return nil, err
		}
		if err := cgn.sysctl(ctx, "net.ipv4.ip_forward", "1"); err != nil {
			return nil, err
		}
		natWANAddr = nthAddr(shared, 2)
		if err := nat.addAddr(ctx, "wan0", natWANAddr, shared.Bits()); err != nil {
			return nil, err
		}
		if err := nat.ip(ctx, "route", "add", "default", "via", nthAddr(shared, 1).String()); err != nil {
			return nil, err
		}
	} else {
		if err := l.connect(ctx, nat, "wan0", wan, fmt.Sprintf("s%d", j), "br0"); err != nil {
			return nil, err
		}
		if err := nat.addAddr(ctx, "wan0", ext, wanPrefix.Bits()); err != nil {
			return nil, err
		}
		// The WAN is one flat subnet; a default route lets the NAT answer
		// whatever address a test makes up.
		if err := nat.ip(ctx, "route", "add", "default", "dev", "wan0"); err != nil {
			return nil, err
		}
	}

	// The LAN is a bridge on the router, like a home router's switch.
	if err := nat.ip(ctx, "link", "add", "br-lan", "type", "bridge"); err != nil {
		return nil, err
	}
	if err := nat.ip(ctx, "link", "set", "br-lan", "up"); err != nil {
		return nil, err
	}
	gw := nthAddr(lanPrefix, 1)
	if err := nat.addAddr(ctx, "br-lan", gw, lanPrefix.Bits()); err != nil {
		return nil, err
	}
	nat.Addr, nat.Addrs = gw, []netip.Addr{gw, natWANAddr}

	var lanAddrs []netip.Addr
	for k := range sc.LANHosts {
		h, err := l.addNS(ctx, fmt.Sprintf("s%dh%d", j, k), fmt.Sprintf("%s-lan%d", sc.Name, k))
		if err != nil {
			return nil, err
		}
		if err := l.connect(ctx, h, "eth0", nat, fmt.Sprintf("h%d", k), "br-lan"); err != nil {
			return nil, err
		}
		a := nthAddr(lanPrefix, 10+k)
		if err := h.addAddr(ctx, "eth0", a, lanPrefix.Bits()); err != nil {
			return nil, err
		}
		if err := h.ip(ctx, "route", "add", "default", "via", gw.String()); err != nil {
			return nil, err
		}
		h.Addr, h.Addrs = a, []netip.Addr{a}
		s.LAN = append(s.LAN, h)
		lanAddrs = append(lanAddrs, a)
	}

	limited := lanAddrs
	if sc.PinholeLimit == 0 {
		limited = nil
	}
	var trusted []netip.Addr
	if sc.UPnP {
		trusted = l.WAN[0].Addrs // the lab's STUN server
	}
	if err := nat.nft(ctx, natRuleset("br-lan", "wan0", sc.Mapping, sc.PinholeLimit, limited, trusted)); err != nil {
		return nil, err
	}
	// Conntrack's sysctls exist once the ruleset has loaded nf_conntrack;
	// they are per namespace.
	if err := nat.sysctl(ctx, "net.ipv4.ip_forward", "1"); err != nil {
		return nil, err
	}
	if sc.UDPTimeout > 0 {
		if err := nat.sysctl(ctx, "net.netfilter.nf_conntrack_udp_timeout", seconds(sc.UDPTimeout)); err != nil {
			return nil, err
		}
	}
	if sc.UDPStreamTimeout > 0 {
		if err := nat.sysctl(ctx, "net.netfilter.nf_conntrack_udp_timeout_stream", seconds(sc.UDPStreamTimeout)); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Close stops every process the lab started and removes every namespace
// (with it every veth, bridge and nftables table) and the scratch directory.
// It is safe to call twice.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs, nss := l.procs, l.nss
	l.mu.Unlock()

	var errs []error
	for _, p := range procs {
		p.Stop()
	}
	for i := len(nss) - 1; i >= 0; i-- {
		if err := nss[i].remove(); err != nil {
			errs = append(errs, err)
		}
	}
	if l.Dir != "" {
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Hosts returns every host of the lab: WAN hosts, then each site's NAT,
// carrier NAT and LAN hosts.
func (l *Lab) Hosts() []*Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*Host
	for _, h := range l.nss {
		if h.Name != "wan" {
			out = append(out, h)
		}
	}
	return out
}

func (l *Lab) addNS(ctx context.Context, short, name string) (*Host, error) {
	ns := l.Prefix + "-" + short
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("netlab: creating namespace %s: %v: %s", ns, err, out)
	}
	h := &Host{Name: name, NS: ns, lab: l}
	l.mu.Lock()
	l.nss = append(l.nss, h)
	l.mu.Unlock()
	f, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		return nil, fmt.Errorf("netlab: opening namespace %s: %w", ns, err)
	}
	h.nsFile = f
	if err := h.ip(ctx, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return h, nil
}

// connect makes a veth pair: ifa in a, ifb in b; ifb joins bridge in b
// unless bridge is "".
func (l *Lab) connect(ctx context.Context, a *Host, ifa string, b *Host, ifb, bridge string) error {
	out, err := exec.CommandContext(ctx, "ip", "link", "add", "name", ifa, "netns", a.NS,
		"type", "veth", "peer", "name", ifb, "netns", b.NS).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netlab: veth %s/%s - %s/%s: %v: %s", a.NS, ifa, b.NS, ifb, err, out)
	}
	if err := a.ip(ctx, "link", "set", ifa, "up"); err != nil {
		return err
	}
	if bridge != "" {
		if err := b.ip(ctx, "link", "set", ifb, "master", bridge); err != nil {
			return err
		}
	}
	return b.ip(ctx, "link", "set", ifb, "up")
}

func nthAddr(p netip.Prefix, n int) netip.Addr {
	a := p.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func seconds(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(s, 10)
}
