package overlay

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/pion/logging"
	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/vnet"

	"github.com/superpeer/superpeer/overlay/dht"
)

// waitUntil polls cond until it holds or the deadline passes.
func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func quietLogger() *slog.Logger {
	if os.Getenv("OVERLAY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// lab is a vnet WAN with a public bootstrap node and NATed sites.
type lab struct {
	t   *testing.T
	wan *vnet.Router
	key ed25519.PrivateKey
}

func newLab(t *testing.T) *lab {
	t.Helper()
	wan, err := vnet.NewRouter(&vnet.RouterConfig{CIDR: "203.0.113.0/24", LoggerFactory: logging.NewDefaultLoggerFactory()})
	if err != nil {
		t.Fatal(err)
	}
	return &lab{t: t, wan: wan}
}

func (l *lab) publicNet(ip string) transport.Net {
	n, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{ip}})
	if err != nil {
		l.t.Fatal(err)
	}
	if err := l.wan.AddNet(n); err != nil {
		l.t.Fatal(err)
	}
	return n
}

// siteNet puts a host behind a NAT with the given mapping behaviour
// (filtering is address-and-port dependent, the strictest).
func (l *lab) siteNet(i int, mapping vnet.EndpointDependencyType) transport.Net {
	r, err := vnet.NewRouter(&vnet.RouterConfig{
		CIDR:          fmt.Sprintf("10.%d.0.0/24", i),
		StaticIPs:     []string{fmt.Sprintf("203.0.113.%d", 20+i)},
		NATType:       &vnet.NATType{MappingBehavior: mapping, FilteringBehavior: vnet.EndpointAddrPortDependent},
		LoggerFactory: logging.NewDefaultLoggerFactory(),
	})
	if err != nil {
		l.t.Fatal(err)
	}
	if err := l.wan.AddRouter(r); err != nil {
		l.t.Fatal(err)
	}
	n, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{fmt.Sprintf("10.%d.0.2", i)}})
	if err != nil {
		l.t.Fatal(err)
	}
	if err := r.AddNet(n); err != nil {
		l.t.Fatal(err)
	}
	return n
}

func (l *lab) start() {
	if err := l.wan.Start(); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { _ = l.wan.Stop() })
}

func (l *lab) node(cfg Config) *Node {
	l.t.Helper()
	if cfg.Key == nil {
		cfg.Key = newKey(l.t)
	}
	if cfg.Listen == "" {
		cfg.Listen = "0.0.0.0:4790"
	}
	cfg.Logger = quietLogger()
	n, err := New(context.Background(), cfg)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { _ = n.Close() })
	return n
}

func (l *lab) bootstrap() []BootstrapNode {
	return []BootstrapNode{{Addr: "203.0.113.10:4790", Key: l.key.Public().(ed25519.PublicKey)}}
}

func linkOf(n *Node, peer NodeID) (LinkStatus, bool) {
	for _, ls := range n.Status().Links {
		if ls.Peer == peer && ls.Linked {
			return ls, true
		}
	}
	return LinkStatus{}, false
}

// ensureLink asks a for a link to b unless there is one, and waits for it.
func ensureLink(t *testing.T, a, b *Node) LinkStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var lastErr error
	for {
		if ls, ok := linkOf(a, b.ID()); ok {
			return ls
		}
		if err := a.Connect(ctx, b.ID()); err != nil {
			lastErr = err
		}
		if ls, ok := linkOf(a, b.ID()); ok {
			return ls
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no link %s -> %s after 20s; last error: %v", a.ID().Short(), b.ID().Short(), lastErr)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestSitesLinkAcrossNATs is the acceptance on a virtual network: a
// public bootstrap and three sites, two behind endpoint-independent NATs
// and one behind a symmetric NAT.
func TestSitesLinkAcrossNATs(t *testing.T) {
	l := newLab(t)
	bootNet := l.publicNet("203.0.113.10")
	netA := l.siteNet(1, vnet.EndpointIndependent)
	netB := l.siteNet(2, vnet.EndpointIndependent)
	netC := l.siteNet(3, vnet.EndpointAddrPortDependent)
	l.start()

	l.key = newKey(t)
	boot := l.node(Config{Net: bootNet, Key: l.key, Listen: "203.0.113.10:4790", Reachability: Public, Advertise: []string{"203.0.113.10:4790"}})
	a := l.node(Config{Net: netA, Reachability: EndpointIndependent, Bootstrap: l.bootstrap()})
	b := l.node(Config{Net: netB, Reachability: EndpointIndependent, Bootstrap: l.bootstrap()})
	c := l.node(Config{Net: netC, Reachability: Symmetric, Bootstrap: l.bootstrap()})
	for _, n := range []*Node{a, b, c} {
		waitUntil(t, 20*time.Second, "site never linked to the bootstrap", func() bool { _, ok := linkOf(n, boot.ID()); return ok })
	}

	if ls := ensureLink(t, a, b); ls.Path != Punched {
		t.Errorf("link between the endpoint-independent sites is %v, want punched", ls.Path)
	}
	if ls := ensureLink(t, a, c); ls.Path != Relayed {
		t.Errorf("link to the symmetric site is %v, want relayed", ls.Path)
	}
	waitUntil(t, 10*time.Second, "the symmetric site never showed the relayed link", func() bool { _, ok := linkOf(c, a.ID()); return ok })
	if ls, _ := linkOf(c, a.ID()); ls.Via == nil || *ls.Via != boot.ID() {
		t.Errorf("relayed link at the symmetric site goes via %v, want the bootstrap", ls.Via)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Put at one site, get at the others.
	aor := "sip:alice@a.example"
	contact := []dht.Contact{{Node: a.ID(), Addrs: []string{"203.0.113.21:4790"}}}
	if _, err := a.Publish(ctx, aor, contact, time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("publish at site A: %v", err)
	}
	for name, n := range map[string]*Node{"B": b, "C": c} {
		r, err := n.Get(ctx, aor)
		if err != nil {
			t.Fatalf("get at site %s: %v", name, err)
		}
		if r.Superpeers[0].Node != a.ID() {
			t.Fatalf("get at site %s: record points at %s, want %s", name, r.Superpeers[0].Node.Short(), a.ID().Short())
		}
	}

	// A record signed by the wrong key is refused, and says why.
	forged := &dht.Record{AOR: "sip:bob@b.example", Superpeers: contact, Expires: time.Now().Add(time.Hour), Seq: 1}
	if err := forged.Sign(newKey(t)); err != nil {
		t.Fatal(err)
	}
	forged.Publisher = b.cfg.Key.Public().(ed25519.PublicKey)
	err := c.Put(ctx, forged)
	if rej, ok := dht.IsRejection(err); !ok || rej.Reason != dht.ReasonBadSignature {
		t.Fatalf("put of a record signed by the wrong key: %v, want a bad-signature rejection", err)
	}
	if _, err := b.Get(ctx, "sip:bob@b.example"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get of the refused record: %v, want not found", err)
	}

	// SIP-sized payloads go between sites, over a link and routed.
	var mu sync.Mutex
	var got [][]byte
	c.HandleMessages(func(from NodeID, p []byte) {
		mu.Lock()
		got = append(got, p)
		mu.Unlock()
	})
	invite := bytes.Repeat([]byte("INVITE sip:carol@c.example SIP/2.0\r\n"), 30)
	if err := a.Send(ctx, c.ID(), invite); err != nil {
		t.Fatalf("send A -> C: %v", err)
	}
	if err := b.Send(ctx, c.ID(), []byte("OPTIONS")); err != nil {
		t.Fatalf("send B -> C: %v", err)
	}
	waitUntil(t, 10*time.Second, "C never received both payloads", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 2
	})
	mu.Lock()
	if !bytes.Equal(got[0], invite) && !bytes.Equal(got[1], invite) {
		t.Fatal("the INVITE arrived changed")
	}
	mu.Unlock()
}
