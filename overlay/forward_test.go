package overlay

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/superpeer/superpeer/overlay/dht"
	"github.com/superpeer/superpeer/overlay/routing"
)

// closestTo returns the nodes sorted by distance to key.
func closestTo(key routing.ID, nodes []*Node) []*Node {
	out := append([]*Node(nil), nodes...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && routing.Closer(key, out[j].ID(), out[j-1].ID()); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// When the node closest to a key dies without a word, a get and a routed
// message for the key do not wait for the keepalives to notice: the
// forward to it goes unacknowledged, the sender tries its next best
// neighbour, and a live replica answers the get while the dead node's
// link is still up.
func TestLookupsGoAroundASilentNode(t *testing.T) {
	l := newLab(t)
	const count = 7
	var cfgs []Config
	for i := 0; i < count; i++ {
		ip := fmt.Sprintf("203.0.113.%d", 50+i)
		cfgs = append(cfgs, Config{Net: l.publicNet(ip), Listen: ip + ":4790", Advertise: []string{ip + ":4790"},
			Reachability: Public, HopTimeout: 300 * time.Millisecond, RequestTimeout: 10 * time.Second})
	}
	l.start()
	l.key = newKey(t)
	cfgs[0].Key = l.key
	var nodes []*Node
	for i, c := range cfgs {
		if i > 0 {
			c.Bootstrap = []BootstrapNode{{Addr: "203.0.113.50:4790", Key: l.key.Public().(ed25519.PublicKey)}}
		}
		nodes = append(nodes, l.node(c))
	}
	// Every node links every other (7 nodes, D = 16): every forward is one
	// hop, to the node closest to the key.
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				ensureLink(t, a, b)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	aor := "sip:dora@example.net"
	key := dht.Key(aor)
	order := closestTo(key, nodes)
	root, asker := order[0], order[len(order)-1]
	if _, err := asker.Publish(ctx, aor, []dht.Contact{{Node: asker.ID()}}, time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("publish: %v", err)
	}
	waitUntil(t, 10*time.Second, "the record never reached its three replicas", func() bool {
		for _, n := range order[:3] {
			if _, ok := n.store.Get(key); !ok {
				return false
			}
		}
		return true
	})

	// The root dies without a word: its socket goes away.
	_ = root.sock.pc.Close()
	suspected := func(n *Node) bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		s := n.sessions[root.ID()]
		return s != nil && s.suspect
	}

	// A replica answers a get for the key itself, sending nothing toward
	// the dead root.
	if _, err := order[1].Get(ctx, aor); err != nil {
		t.Fatalf("get at a replica: %v", err)
	}
	if suspected(order[1]) {
		t.Fatal("a replica sent its own get toward the root")
	}

	// Elsewhere, the get goes to the root, gets no acknowledgement and
	// goes on to a live replica, well before the request times out.
	start := time.Now()
	r, err := asker.Get(ctx, aor)
	if err != nil {
		t.Fatalf("get with the key's root dead: %v", err)
	}
	if took := time.Since(start); took >= asker.cfg.RequestTimeout {
		t.Fatalf("get took %v: it waited for the request timeout (%v) instead of going around the dead hop", took, asker.cfg.RequestTimeout)
	}
	if r.AOR != aor || !suspected(asker) {
		t.Fatalf("get returned the record of %q; dead root suspected: %v", r.AOR, suspected(asker))
	}
	got, err := asker.Route(ctx, key, []byte("OPTIONS"))
	if err != nil {
		t.Fatalf("routing to the key with its root dead: %v", err)
	}
	if got != order[1].ID() {
		t.Fatalf("routed message ended at %s, want the live node closest to the key %s", got.Short(), order[1].ID().Short())
	}
	if _, ok := linkOf(asker, root.ID()); !ok && time.Since(start) < asker.cfg.DeadAfter {
		t.Fatal("the dead node's link went down before DeadAfter: the lookups did not have to go around it")
	}
	// A node that is not the key's destination is unreachable, and says so.
	if err := asker.Send(ctx, routing.ID{0xff}, []byte("x")); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("send to a node that does not exist: %v, want ErrUnreachable", err)
	}
}
