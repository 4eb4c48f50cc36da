package sip

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/superpeer/superpeer/netlab"
	"github.com/superpeer/superpeer/overlay"
	"github.com/superpeer/superpeer/overlay/dht"
	"github.com/superpeer/superpeer/overlay/routing"
)

// overlayAdapter is the small adapter the daemon puts between an
// overlay.Node and the SIP server: the node's DHT is the Locator, its
// links and routed messages the Carrier.
type overlayAdapter struct {
	node  *overlay.Node
	inbox chan memPacket
}

func newOverlayAdapter(n *overlay.Node) *overlayAdapter {
	a := &overlayAdapter{node: n, inbox: make(chan memPacket, 4096)}
	n.HandleMessages(func(from overlay.NodeID, p []byte) {
		select {
		case a.inbox <- memPacket{from: from.String(), msg: append([]byte(nil), p...)}:
		default: // full: dropped like a datagram; SIP retransmits
		}
	})
	return a
}

func (a *overlayAdapter) Publish(ctx context.Context, aor string, expires time.Time) error {
	_, err := a.node.Publish(ctx, aor, []dht.Contact{{Node: a.node.ID()}}, expires)
	return err
}

func (a *overlayAdapter) Withdraw(_ context.Context, aor string) error {
	a.node.Withdraw(aor)
	return nil
}

func (a *overlayAdapter) Lookup(ctx context.Context, aor string) ([]Target, error) {
	r, err := a.node.Get(ctx, aor)
	if errors.Is(err, overlay.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	var ts []Target
	for _, c := range r.Superpeers {
		ts = append(ts, Target{Superpeer: c.Node.String()})
	}
	return ts, nil
}

func (a *overlayAdapter) Send(ctx context.Context, to string, msg []byte) error {
	id, err := routing.ParseID(to)
	if err != nil {
		return err
	}
	return a.node.Send(ctx, id, msg)
}

func (a *overlayAdapter) Receive(ctx context.Context) (string, []byte, error) {
	select {
	case p := <-a.inbox:
		return p.from, p.msg, nil
	case <-ctx.Done():
		return "", nil, ctx.Err()
	}
}

// siteSuperpeer runs an overlay node and the SIP server on a site's first
// LAN host.
type siteSuperpeer struct {
	node *overlay.Node
	sip  *Server
	addr netip.AddrPort
}

func startSiteSuperpeer(t *testing.T, site *netlab.Site, domain string, reach overlay.Reachability, boot []overlay.BootstrapNode) *siteSuperpeer {
	t.Helper()
	h := site.LAN[0]
	n, err := h.Net()
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	node, err := overlay.New(context.Background(), overlay.Config{Net: n, Key: key, Listen: "0.0.0.0:4790",
		Reachability: reach, Bootstrap: boot, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	ad := newOverlayAdapter(node)
	cfg := DefaultConfig()
	cfg.NodeID = node.ID().String()
	cfg.Domains = []string{domain}
	proxy := netip.AddrPortFrom(h.Addr, 5060)
	cfg.Listen = []Listener{{Network: "udp", Addr: proxy.String()}}
	cfg.LAN = []netip.Prefix{site.LANPrefix}
	cfg.Flood.Exempt = []netip.Prefix{site.LANPrefix}
	cfg.Anchor = AnchorNever // media across the NATs needs the TURN relays the daemon wires in
	cfg.Logger = testLogger()
	s, err := New(cfg, n, nil, Deps{Locator: ad, Carrier: ad})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &siteSuperpeer{node: node, sip: s, addr: proxy}
}

// TestSIPpCallsAcrossSites is the acceptance test of calls between two
// sites through the overlay: site A behind a fully random NAT, site B
// behind a port-preserving NAT, a bootstrap node on the WAN. SIPp as UAS
// registers sip:bob@siteb.example at B's superpeer; SIPp as UAC at site A
// calls him by AOR 100 times through A's superpeer, the overlay and B's
// superpeer: every call succeeds and every BYE reaches the UAS through the
// proxies. A call to an AOR nobody registered fails with 404 within 1 s;
// with site B down, a call to bob fails with 408 or 480 within 5 s.
func TestSIPpCallsAcrossSites(t *testing.T) {
	needSIPp(t)
	lab := netlab.Start(t, netlab.Topology{Sites: []netlab.SiteConfig{
		{Name: "sitea", Mapping: netlab.Random, LANHosts: 2},
		{Name: "siteb", Mapping: netlab.PortPreserving, LANHosts: 2},
	}})
	siteA, siteB := lab.Sites[0], lab.Sites[1]

	w := lab.WAN[0]
	wn, err := w.Net()
	if err != nil {
		t.Fatal(err)
	}
	_, bootKey, _ := ed25519.GenerateKey(rand.Reader)
	bootAddr := netip.AddrPortFrom(w.Addrs[0], 4790).String()
	boot, err := overlay.New(context.Background(), overlay.Config{Net: wn, Key: bootKey, Listen: bootAddr,
		Reachability: overlay.Public, Advertise: []string{bootAddr}, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer boot.Close()
	bootstrap := []overlay.BootstrapNode{{Addr: bootAddr, Key: bootKey.Public().(ed25519.PublicKey)}}
	a := startSiteSuperpeer(t, siteA, "sitea.example", overlay.Symmetric, bootstrap)
	b := startSiteSuperpeer(t, siteB, "siteb.example", overlay.EndpointIndependent, bootstrap)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()
	uasHost, uacHost := siteB.LAN[1], siteA.LAN[1]
	uasIP, uacIP := uasHost.Addr.String(), uacHost.Addr.String()
	uas, err := uasHost.Start("sipp", "-sf", scenario(t, dir, "uas.xml", b.addr), "-i", uasIP, "-p", "5070",
		"-mi", uasIP, "-mp", "6000")
	if err != nil {
		t.Fatal(err)
	}
	defer uas.Stop()
	reg := uasHost.Command(ctx, "sipp", b.addr.String(), "-sf", scenario(t, dir, "register.xml", b.addr),
		"-s", "bob", "-key", "domain", "siteb.example", "-key", "uasport", "5070", "-i", uasIP, "-p", "5071", "-mp", "6100",
		"-m", "1", "-timeout", "20s", "-timeout_error")
	reg.Dir = dir
	if out, err := reg.CombinedOutput(); err != nil {
		t.Fatalf("SIPp REGISTER at site B failed: %v\n%s", err, tail(out))
	}
	netlab.Eventually(t, 60*time.Second, func() error {
		lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
		defer lcancel()
		_, err := a.node.Get(lctx, "sip:bob@siteb.example")
		return err
	})

	uac := uacHost.Command(ctx, "sipp", a.addr.String(), "-sf", scenario(t, dir, "uac.xml", a.addr),
		"-s", "bob", "-key", "domain", "siteb.example", "-i", uacIP, "-p", "5061", "-mp", "6200",
		"-m", "100", "-r", "10", "-d", "200", "-timeout", "150s", "-timeout_error")
	uac.Dir = dir
	out, err := uac.CombinedOutput()
	if err != nil {
		t.Fatalf("SIPp UAC at site A: %v (not every call succeeded)\n%s\nUAS:\n%s", err, tail(out), head(uas.Output()))
	}
	if st := a.sip.Status().Proxy; st.ToOverlay < 200 {
		t.Errorf("site A sent %d requests into the overlay, want at least 200 (INVITEs and BYEs)", st.ToOverlay)
	}

	// An INVITE from site A's LAN to an AOR that nobody published.
	call := func(user string) (int, time.Duration) {
		c, err := uacHost.UDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		id := user + strconv.Itoa(int(time.Now().UnixNano()%1e9))
		inv := msg("",
			"INVITE sip:"+user+"@siteb.example SIP/2.0",
			"Via: SIP/2.0/UDP "+uacIP+";branch=z9hG4bK-"+id+";rport",
			"Max-Forwards: 70",
			"To: <sip:"+user+"@siteb.example>",
			"From: <sip:tester@sitea.example>;tag="+id,
			"Call-ID: "+id,
			"CSeq: 1 INVITE",
			"Contact: <sip:tester@"+uacIP+">",
			"Content-Length: 0")
		start := time.Now()
		if _, err := c.WriteToUDPAddrPort(inv, a.addr); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return 0, time.Since(start)
			}
			if code, _ := parseResponse(buf[:n]); code >= 200 {
				return code, time.Since(start)
			}
		}
	}
	if code, took := call("nobody"); code != 404 || took > time.Second {
		t.Errorf("call to an unregistered AOR: %d after %v, want 404 within 1 s", code, took)
	}

	// Site B goes down: its superpeer stops; bob's record is still in the
	// overlay until it expires.
	b.sip.Close()
	b.node.Close()
	if code, took := call("bob"); (code != 408 && code != 480) || took > 5*time.Second {
		t.Errorf("call to bob with site B down: %d after %v, want 408 or 480 within 5 s", code, took)
	}
}
