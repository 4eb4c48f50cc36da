package overlay

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superpeer/superpeer/nat/clock"
	"github.com/superpeer/superpeer/overlay/routing"
)

func TestIdentityPersists(t *testing.T) {
	dir := t.TempDir()
	k1, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadOrCreateIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !k1.Equal(k2) {
		t.Fatal("node key changed across restarts")
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("node key file mode %v, want 0600", fi.Mode().Perm())
	}
	if IDOf(k1.Public().(ed25519.PublicKey)) == (NodeID{}) {
		t.Fatal("zero node ID")
	}
}

func TestConfigValidateSaysWhat(t *testing.T) {
	l := newLab(t)
	good := Config{Net: l.publicNet("203.0.113.5"), Key: newKey(t)}
	cases := []struct {
		name string
		mut  func(*Config)
		want string
	}{
		{"no net", func(c *Config) { c.Net = nil }, "no Net"},
		{"no key", func(c *Config) { c.Key = nil }, "node key"},
		{"bad listen", func(c *Config) { c.Listen = "4790" }, "listen address"},
		{"bootstrap without key", func(c *Config) { c.Bootstrap = []BootstrapNode{{Addr: "203.0.113.1:4790"}} }, "pinned key"},
		{"keepalive slower than death", func(c *Config) { c.KeepaliveInterval, c.DeadAfter = time.Minute, time.Second }, "dead-after"},
		{"bad table", func(c *Config) { c.Table = routing.Config{Degree: 1, Close: 1} }, "degree"},
	}
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	for _, tc := range cases {
		c := good
		tc.mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v, want it to mention %q", tc.name, err, tc.want)
		}
	}
}

func TestBootstrapKeyIsPinned(t *testing.T) {
	l := newLab(t)
	bootNet := l.publicNet("203.0.113.10")
	siteNet := l.siteNet(1, 0)
	l.start()
	l.key = newKey(t)
	l.node(Config{Net: bootNet, Key: l.key, Listen: "203.0.113.10:4790", Reachability: Public})
	impostor := newKey(t).Public().(ed25519.PublicKey)
	n := l.node(Config{Net: siteNet, Reachability: EndpointIndependent})
	n.cfg.Bootstrap = []BootstrapNode{{Addr: "203.0.113.10:4790", Key: impostor}}
	err := n.Join(context.Background())
	if err == nil || !strings.Contains(err.Error(), "different node key") {
		t.Fatalf("join through a node with another key: %v, want a pinning failure", err)
	}
	if len(n.Status().Links) != 0 {
		t.Fatal("a session survived the pinning failure")
	}
}

type pinholeLog struct {
	mu   sync.Mutex
	up   map[NodeID]PathKind
	down map[NodeID]bool
}

type registrar struct{ log *pinholeLog }

func (r registrar) LinkUp(peer NodeID, _, _ net.Addr, kind PathKind) {
	r.log.mu.Lock()
	defer r.log.mu.Unlock()
	r.log.up[peer] = kind
}

func (r registrar) LinkDown(peer NodeID) {
	r.log.mu.Lock()
	defer r.log.mu.Unlock()
	r.log.down[peer] = true
}

// A neighbour that falls silent is dropped after DeadAfter on the
// injected clock, and the pinhole owner is told of the link and its end.
func TestSilentLinkDroppedOnClock(t *testing.T) {
	l := newLab(t)
	netA, netB := l.publicNet("203.0.113.10"), l.publicNet("203.0.113.11")
	l.start()
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	pins := &pinholeLog{up: map[NodeID]PathKind{}, down: map[NodeID]bool{}}
	l.key = newKey(t)
	a := l.node(Config{Net: netA, Key: l.key, Listen: "203.0.113.10:4790", Reachability: Public,
		Advertise: []string{"203.0.113.10:4790"}, Clock: fake, Pinholes: registrar{pins}})
	b := l.node(Config{Net: netB, Listen: "203.0.113.11:4790", Reachability: Public, Bootstrap: l.bootstrap(), Clock: fake})
	waitUntil(t, 10*time.Second, "b never linked to a", func() bool { _, ok := linkOf(a, b.ID()); return ok })
	pins.mu.Lock()
	kind := pins.up[b.ID()]
	pins.mu.Unlock()
	if kind != Direct {
		t.Fatalf("pinhole owner told of path %v, want direct", kind)
	}

	// b dies without a word: its socket goes away.
	_ = b.sock.pc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Both nodes run three timers each on the fake clock.
	for elapsed := time.Duration(0); elapsed < a.cfg.DeadAfter+a.cfg.KeepaliveInterval; elapsed += a.cfg.KeepaliveInterval {
		if err := fake.WaitTimers(ctx, 6); err != nil {
			t.Fatal(err)
		}
		if _, ok := linkOf(a, b.ID()); !ok && elapsed < a.cfg.DeadAfter {
			t.Fatalf("link dropped after %v of silence, before DeadAfter %v", elapsed, a.cfg.DeadAfter)
		}
		fake.Advance(a.cfg.KeepaliveInterval)
	}
	// Past DeadAfter now: keep time moving (a slow machine may not have
	// run the last check yet) until the link is gone and its owner told.
	waitUntil(t, 20*time.Second, "silent link never dropped, or its pinhole owner never told", func() bool {
		_, up := linkOf(a, b.ID())
		pins.mu.Lock()
		told := pins.down[b.ID()]
		pins.mu.Unlock()
		if !up && told {
			return true
		}
		fake.Advance(time.Second)
		return false
	})
}

// countingRegistrar counts link-ups per node.
type countingRegistrar struct {
	mu *sync.Mutex
	up *int
}

func (r countingRegistrar) LinkUp(NodeID, net.Addr, net.Addr, PathKind) {
	r.mu.Lock()
	*r.up++
	r.mu.Unlock()
}

func (r countingRegistrar) LinkDown(NodeID) {}

// No node ever holds more than D links, however many ask.
func TestDegreeBoundHolds(t *testing.T) {
	l := newLab(t)
	const count, degree = 8, 3
	var mu sync.Mutex
	ups := make([]int, count)
	var cfgs []Config
	for i := 0; i < count; i++ {
		ip := fmt.Sprintf("203.0.113.%d", 30+i)
		cfgs = append(cfgs, Config{Net: l.publicNet(ip), Listen: ip + ":4790", Advertise: []string{ip + ":4790"},
			Reachability: Public, Table: routing.Config{Degree: degree, Close: 1, Spare: 0},
			Pinholes: countingRegistrar{&mu, &ups[i]}})
	}
	l.start()
	l.key = newKey(t)
	cfgs[0].Key = l.key
	var nodes []*Node
	for i, c := range cfgs {
		if i > 0 {
			c.Bootstrap = []BootstrapNode{{Addr: "203.0.113.30:4790", Key: l.key.Public().(ed25519.PublicKey)}}
		}
		nodes = append(nodes, l.node(c))
	}
	check := func() {
		t.Helper()
		for _, n := range nodes {
			st := n.Status()
			linked := 0
			for _, ls := range st.Links {
				if ls.Linked {
					linked++
				}
			}
			if linked > degree || st.Table.Links > degree {
				t.Fatalf("node %s holds %d links (table %d), bound %d", n.ID().Short(), linked, st.Table.Links, degree)
			}
		}
	}
	waitUntil(t, 20*time.Second, "a node never made a link", func() bool {
		check()
		mu.Lock()
		defer mu.Unlock()
		for _, u := range ups {
			if u == 0 {
				return false
			}
		}
		return true
	})
	// Everyone asks everyone; the bound must hold throughout.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				_ = a.Connect(ctx, b.ID())
				check()
			}
		}
	}
	check()
}
