package overlay

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/transport/v5"

	"github.com/superpeer/superpeer/netlab"
	"github.com/superpeer/superpeer/overlay/dht"
)

// TestLabAcceptance runs the overlay behind real kernel NATs: two public
// nodes on the WAN and three sites (port-preserving, port-preserving,
// fully random). It needs root; netlab skips it with the reason otherwise.
func TestLabAcceptance(t *testing.T) {
	if testing.Short() {
		t.Skip("lab test: skipped in -short mode")
	}
	lab := netlab.Start(t, netlab.Topology{
		WANHosts: 2,
		Sites: []netlab.SiteConfig{
			{Name: "pp1", Mapping: netlab.PortPreserving},
			{Name: "pp2", Mapping: netlab.PortPreserving},
			{Name: "rnd", Mapping: netlab.Random},
		},
	})
	hostNet := func(h *netlab.Host) transport.Net {
		n, err := h.Net()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	start := func(cfg Config) *Node {
		cfg.Logger = quietLogger()
		cfg.MaintainInterval = 2 * time.Second
		if cfg.Listen == "" {
			cfg.Listen = "0.0.0.0:4790"
		}
		n, err := New(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		return n
	}
	var publics []*Node
	var boots []BootstrapNode
	keys := []ed25519.PrivateKey{newKey(t), newKey(t)}
	for i, h := range lab.WAN {
		addr := netip.AddrPortFrom(h.Addr, 4790).String()
		boots = append(boots, BootstrapNode{Addr: addr, Key: keys[i].Public().(ed25519.PublicKey)})
	}
	for i, h := range lab.WAN {
		addr := netip.AddrPortFrom(h.Addr, 4790).String()
		publics = append(publics, start(Config{Net: hostNet(h), Key: keys[i], Listen: addr, Advertise: []string{addr},
			Reachability: Public, Bootstrap: boots}))
	}
	a := start(Config{Net: hostNet(lab.Sites[0].LAN[0]), Key: newKey(t), Reachability: EndpointIndependent, Bootstrap: boots})
	b := start(Config{Net: hostNet(lab.Sites[1].LAN[0]), Key: newKey(t), Reachability: EndpointIndependent, Bootstrap: boots})
	c := start(Config{Net: hostNet(lab.Sites[2].LAN[0]), Key: newKey(t), Reachability: Symmetric, Bootstrap: boots})
	for _, n := range []*Node{a, b, c} {
		waitUntil(t, 30*time.Second, "site never linked to a public node", func() bool {
			_, ok0 := linkOf(n, publics[0].ID())
			_, ok1 := linkOf(n, publics[1].ID())
			return ok0 || ok1
		})
	}

	if ls := ensureLink(t, a, b); ls.Path != Punched {
		t.Errorf("port-preserving to port-preserving link is %v, want punched", ls.Path)
	}
	if ls := ensureLink(t, a, c); ls.Path != Relayed {
		t.Errorf("link to the random-mapping site is %v, want relayed", ls.Path)
	}
	if ls := ensureLink(t, b, c); ls.Path != Relayed {
		t.Errorf("link to the random-mapping site is %v, want relayed", ls.Path)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	aor := "sip:alice@pp1.example"
	if _, err := a.Publish(ctx, aor, []dht.Contact{{Node: a.ID()}}, time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("publish at site pp1: %v", err)
	}
	for name, n := range map[string]*Node{"pp2": b, "rnd": c} {
		if r, err := n.Get(ctx, aor); err != nil || r.Superpeers[0].Node != a.ID() {
			t.Fatalf("get at site %s: %v", name, err)
		}
	}
	forged := &dht.Record{AOR: "sip:bob@pp2.example", Superpeers: []dht.Contact{{Node: c.ID()}}, Expires: time.Now().Add(time.Hour), Seq: 1}
	if err := forged.Sign(newKey(t)); err != nil {
		t.Fatal(err)
	}
	forged.Publisher = b.cfg.Key.Public().(ed25519.PublicKey)
	if rej, ok := dht.IsRejection(c.Put(ctx, forged)); !ok || rej.Reason != dht.ReasonBadSignature {
		t.Fatalf("record signed by the wrong key: rejection %v, want bad-signature", rej)
	}

	// Kill the relay of the symmetric site's links: they are replaced
	// (through the other public node) and lookups still succeed.
	ls, _ := linkOf(c, a.ID())
	var killed *Node
	for _, p := range publics {
		if ls.Via != nil && *ls.Via == p.ID() {
			killed = p
		}
	}
	if killed == nil {
		t.Fatalf("relayed link has no public relay: %+v", ls)
	}
	_ = killed.Close()
	waitUntil(t, 30*time.Second, "the killed node's links never went down", func() bool {
		for _, n := range []*Node{a, b, c} {
			for _, ls := range n.Status().Links {
				if ls.Peer == killed.ID() || (ls.Via != nil && *ls.Via == killed.ID()) {
					return false
				}
			}
		}
		return true
	})
	if ls := ensureLink(t, a, c); ls.Path != Relayed || ls.Via == nil || *ls.Via == killed.ID() {
		t.Errorf("replacement link to the random-mapping site: %+v, want relayed through the surviving node", ls)
	}
	for name, n := range map[string]*Node{"pp2": b, "rnd": c} {
		if _, err := n.Get(ctx, aor); err != nil {
			t.Fatalf("get at site %s after the kill: %v", name, err)
		}
	}
	if _, err := b.Get(ctx, "sip:nobody@pp2.example"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get of an unknown AOR: %v, want not found", err)
	}
}
