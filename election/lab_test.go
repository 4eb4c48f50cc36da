package election

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superpeer/superpeer/netlab"
)

// labPeer is one daemon's election node on a lab host.
type labPeer struct {
	id   string
	host *netlab.Host
	cfg  Config
	node *Node
}

// TestLabSite runs the acceptance scenario on a LAN of network namespaces:
// five peers (the router, a board, a desktop, a laptop, a desktop agent)
// started at once find each other by multicast and form one site; the
// superpeer holding 100 registrations dies and the other answers for all
// of them; it comes back from disk; a superpeer loses its link (a silent
// death) and the site heals when the link returns; a stranger on the LAN
// is refused. Times are logged; `make bench` measures them.
func TestLabSite(t *testing.T) {
	lab := netlab.Start(t, netlab.Topology{Sites: []netlab.SiteConfig{{Name: "home", LANHosts: 5}}})
	site := lab.Sites[0]
	// The lab's router filters forwarded traffic (policy drop) and, with
	// br_netfilter loaded on the host, that filter also sees frames
	// bridged between two LAN ports: LAN hosts could reach the router but
	// not each other. A home router's switch does not do that.
	if out, err := site.NAT.Run(context.Background(), "sysctl", "-w", "net.bridge.bridge-nf-call-iptables=0"); err != nil && !strings.Contains(out, "No such file") {
		t.Fatalf("letting the lab's LAN bridge pass LAN traffic: %v", err)
	}
	secret, err := NewSiteSecret()
	if err != nil {
		t.Fatal(err)
	}
	peers := []*labPeer{
		{id: "router", host: site.NAT},
		{id: "board", host: site.LAN[0]},
		{id: "desktop", host: site.LAN[1]},
		{id: "laptop", host: site.LAN[2]},
		{id: "agent", host: site.LAN[3]},
	}
	caps := map[string]Capability{"router": capRouter, "board": capBoard, "desktop": capDesktop, "laptop": capLaptop, "agent": capDesktop}
	for _, p := range peers {
		n, err := p.host.Net()
		if err != nil {
			t.Fatal(err)
		}
		cfg := DefaultConfig()
		cfg.NodeID = p.id
		cfg.Role = RoleFull
		if p.id == "agent" {
			cfg.Role = RolePeer
		}
		cfg.Capability = caps[p.id]
		cfg.Secret = secret
		cfg.Net = n
		cfg.DataDir = t.TempDir()
		cfg.BindAddr = net.JoinHostPort(p.host.Addr.String(), fmt.Sprint(DefaultGroupPort))
		// pion/mdns opens a socket of its own outside the Net seam, which
		// would land outside the namespace.
		cfg.DNSSD = false
		cfg.Logger = testLogger(t).With("lab_node", p.id)
		p.cfg = cfg
	}
	start := func(ps ...*labPeer) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, len(ps))
		for _, p := range ps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n, err := Start(context.Background(), p.cfg)
				if err != nil {
					errs <- fmt.Errorf("starting %s: %w", p.id, err)
					return
				}
				p.node = n
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, p := range peers {
			if p.node != nil {
				p.node.stop()
			}
		}
	})
	byID := map[string]*labPeer{}
	for _, p := range peers {
		byID[p.id] = p
	}
	live := func() []*labPeer {
		var out []*labPeer
		for _, p := range peers {
			if p.node != nil {
				out = append(out, p)
			}
		}
		return out
	}
	waitFor := func(what string, limit time.Duration, cond func() (bool, string)) time.Duration {
		t.Helper()
		began := time.Now()
		eventually(t, limit, cond)
		d := time.Since(began)
		t.Logf("%s: %v", what, d.Round(time.Millisecond))
		return d
	}

	// Five peers started at the same moment: one site, two superpeers, the
	// router among them; the laptop and the agent do not vote.
	start(peers...)
	waitFor("five peers formed one site and committed two superpeers", 20*time.Second, func() (bool, string) {
		leader := ""
		for _, p := range live() {
			l := p.node.LeaderID()
			if l == "" || (leader != "" && l != leader) {
				return false, p.id + " follows " + l
			}
			leader = l
			st := p.node.Status()
			if len(st.Members) != 5 {
				return false, fmt.Sprintf("%s sees %d members", p.id, len(st.Members))
			}
			if set := p.node.Superpeers(); len(set.IDs) != 2 || !set.Contains("router") {
				return false, fmt.Sprintf("%s sees superpeers %v", p.id, set.IDs)
			}
		}
		v := voters(byID[leader].node)
		return len(v) == 3 && !v["laptop"] && !v["agent"], fmt.Sprintf("voters %v", keys(v))
	})

	// 100 registrations through the router, a superpeer.
	router, board := byID["router"], byID["board"]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	aors := make([]string, 100)
	for i := range aors {
		aors[i] = fmt.Sprintf("sip:phone%03d@home.example", i)
		if _, err := router.node.Registrations().Put(ctx, Binding{AOR: aors[i], Contact: fmt.Sprintf("sip:phone%03d@192.168.1.%d", i, 100+i),
			Expires: time.Now().Add(time.Hour), Flow: Flow{Superpeer: "router", Transport: "udp"}}); err != nil {
			t.Fatalf("registering through the router: %v", err)
		}
	}
	answersAll := func(p *labPeer, without string) (bool, string) {
		set := p.node.Superpeers()
		if set.Contains(without) || len(set.IDs) != 2 {
			return false, fmt.Sprintf("%s sees superpeers %v", p.id, set.IDs)
		}
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		defer rcancel()
		if err := p.node.Barrier(rctx); err != nil {
			return false, err.Error()
		}
		have := map[string]bool{}
		for _, b := range p.node.Registrations().List() {
			have[b.AOR] = true
		}
		for _, a := range aors {
			if !have[a] {
				return false, p.id + " lacks " + a
			}
		}
		return true, ""
	}

	// The router dies (its sockets close, as when its process is killed).
	router.node.stop()
	router.node = nil
	waitFor("router killed: new set committed and the board answers all 100", 20*time.Second, func() (bool, string) {
		return answersAll(board, "router")
	})

	// The router comes back from its state directory and is elected again.
	start(router)
	waitFor("router restarted from disk and back in the set", 20*time.Second, func() (bool, string) {
		if n := len(router.node.Registrations().List()); n != 100 {
			return false, fmt.Sprintf("the router has %d of 100 registrations", n)
		}
		set := board.node.Superpeers()
		return set.Contains("router"), fmt.Sprintf("superpeers %v", set.IDs)
	})

	// The board loses its link: nothing closes, nothing answers.
	if _, err := board.host.Run(ctx, "ip", "link", "set", "eth0", "down"); err != nil {
		t.Fatal(err)
	}
	desktop := byID["desktop"]
	waitFor("board silent: new set committed and the router answers all 100", 20*time.Second, func() (bool, string) {
		if ok, why := answersAll(router, "board"); !ok {
			return false, why
		}
		set := desktop.node.Superpeers()
		return !set.Contains("board"), fmt.Sprintf("desktop sees %v", set.IDs)
	})
	// The link returns: the board follows the leader again.
	if _, err := board.host.Run(ctx, "ip", "link", "set", "eth0", "up"); err != nil {
		t.Fatal(err)
	}
	waitFor("board's link back: it follows the leader again", 20*time.Second, func() (bool, string) {
		l := router.node.LeaderID()
		return l != "" && board.node.LeaderID() == l && len(board.node.Registrations().List()) == 100,
			"board follows " + board.node.LeaderID() + ", others " + l
	})

	// A stranger on the LAN, with a secret of its own, cannot join.
	sn, err := site.LAN[4].Net()
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewSiteSecret()
	scfg := DefaultConfig()
	scfg.NodeID, scfg.Secret, scfg.Net, scfg.Capability, scfg.DNSSD = "stranger", other, sn, capRouter, false
	scfg.BindAddr = net.JoinHostPort(site.LAN[4].Addr.String(), fmt.Sprint(DefaultGroupPort))
	scfg.Logger = testLogger(t)
	stranger, err := Start(ctx, scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.stop()
	if err := stranger.rpc.call(ctx, router.node.Addr(), rpcJoin, stranger.member(), nil); err == nil {
		t.Error("a member accepted a stranger's join request")
	}
	for _, h := range router.node.Discover() {
		if h.ID == "stranger" && h.Verified {
			t.Error("the stranger's announcement counts as the site's")
		}
	}
	if inConfig(router.node, "stranger") {
		t.Error("the stranger is in the group")
	}
}
