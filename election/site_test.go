package election

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"

	"github.com/superpeer/superpeer/nat/clock"
)

// faultNet is the host network with a switch: Cut closes every connection
// the node has and refuses new ones in both directions, as if its cable
// were pulled (or its process killed).
type faultNet struct {
	transport.Net

	mu    sync.Mutex // guards following
	cut   bool
	conns map[net.Conn]struct{}
}

func newFaultNet(t testing.TB) *faultNet {
	n, err := stdnet.NewNet()
	if err != nil {
		t.Fatalf("opening the host network: %v", err)
	}
	return &faultNet{Net: n, conns: map[net.Conn]struct{}{}}
}

var errCut = errors.New("network cut")

func (f *faultNet) Cut(cut bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cut = cut
	if cut {
		for c := range f.conns {
			c.Close()
		}
		clear(f.conns)
	}
}

func (f *faultNet) track(c net.Conn) (net.Conn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cut {
		c.Close()
		return nil, errCut
	}
	f.conns[c] = struct{}{}
	return c, nil
}

func (f *faultNet) ListenTCP(network string, laddr *net.TCPAddr) (transport.TCPListener, error) {
	ln, err := f.Net.ListenTCP(network, laddr)
	if err != nil {
		return nil, err
	}
	return &faultListener{TCPListener: ln, f: f}, nil
}

func (f *faultNet) CreateDialer(d *net.Dialer) transport.Dialer {
	return faultDialer{d: f.Net.CreateDialer(d), f: f}
}

type faultListener struct {
	transport.TCPListener
	f *faultNet
}

func (l *faultListener) Accept() (net.Conn, error) {
	for {
		c, err := l.TCPListener.Accept()
		if err != nil {
			return nil, err
		}
		if tc, err := l.f.track(c); err == nil {
			return tc, nil
		}
	}
}

type faultDialer struct {
	d transport.Dialer
	f *faultNet
}

func (d faultDialer) Dial(network, address string) (net.Conn, error) {
	d.f.mu.Lock()
	cut := d.f.cut
	d.f.mu.Unlock()
	if cut {
		return nil, &net.OpError{Op: "dial", Net: network, Err: errCut}
	}
	c, err := d.d.Dial(network, address)
	if err != nil {
		return nil, err
	}
	return d.f.track(c)
}

// testSite is a site of nodes in one process: real mutual TLS over
// loopback TCP, an in-memory LAN for announcements.
type testSite struct {
	t      testing.TB
	secret *SiteSecret
	lan    *MemLAN
	clock  clock.Clock
	tune   func(*Config)

	mu    sync.Mutex // guards following
	nodes map[string]*Node
	nets  map[string]*faultNet
	dirs  map[string]string
	ports map[string]int
	// stopping holds, per killed node, a channel closed when it has
	// stopped; a restart waits for it.
	stopping map[string]chan struct{}
}

func newTestSite(t testing.TB, c clock.Clock, tune func(*Config)) *testSite {
	secret, err := NewSiteSecret()
	if err != nil {
		t.Fatal(err)
	}
	c = clock.OrReal(c)
	s := &testSite{
		t: t, secret: secret, clock: c, tune: tune,
		lan:   NewMemLAN(c, time.Second),
		nodes: map[string]*Node{}, nets: map[string]*faultNet{},
		dirs: map[string]string{}, ports: map[string]int{},
		stopping: map[string]chan struct{}{},
	}
	t.Cleanup(s.stopAll)
	return s
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("ELECTION_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

var (
	capRouter  = Capability{Reachability: ReachPublic, Class: ClassRouter, Power: PowerMains, CPUs: 2, FreeMemoryMB: 64}
	capBoard   = Capability{Reachability: ReachMapped, Class: ClassBoard, Power: PowerMains, CPUs: 4, FreeMemoryMB: 900}
	capDesktop = Capability{Reachability: ReachEIM, Class: ClassDesktop, Power: PowerMains, CPUs: 8, FreeMemoryMB: 8000}
	capLaptop  = Capability{Reachability: ReachEIM, Class: ClassLaptop, Power: PowerBattery, CPUs: 8, FreeMemoryMB: 4000}
)

// config returns a node's config; persistent nodes keep their state in a
// directory that survives restarts, and their port.
func (s *testSite) config(id string, role Role, c Capability, persistent bool) Config {
	cfg := DefaultConfig()
	cfg.NodeID = id
	cfg.Role = role
	cfg.Capability = c
	cfg.Secret = s.secret
	cfg.Clock = s.clock
	cfg.Logger = testLogger(s.t).With("test_node", id)
	cfg.BindAddr = "127.0.0.1:0"
	cfg.DNSSD = false
	cfg.BootstrapWindow = 500 * time.Millisecond
	cfg.AnnounceInterval = 100 * time.Millisecond
	cfg.ReconcileInterval = 200 * time.Millisecond
	s.mu.Lock()
	if port := s.ports[id]; port != 0 {
		cfg.BindAddr = fmt.Sprintf("127.0.0.1:%d", port)
	}
	if persistent {
		if s.dirs[id] == "" {
			s.dirs[id] = s.t.TempDir()
		}
		cfg.DataDir = s.dirs[id]
	}
	s.mu.Unlock()
	if s.tune != nil {
		s.tune(&cfg)
	}
	return cfg
}

func (s *testSite) start(cfg Config) *Node {
	s.t.Helper()
	s.stopped(cfg.NodeID)
	fn := newFaultNet(s.t)
	cfg.Net = fn
	if cfg.Discovery == nil {
		cfg.Discovery = s.lan.Discovery(cfg.NodeID)
	}
	n, err := Start(context.Background(), cfg)
	if err != nil {
		s.t.Fatalf("starting %s: %v", cfg.NodeID, err)
	}
	_, port, _ := net.SplitHostPort(n.Addr())
	var p int
	fmt.Sscan(port, &p)
	s.mu.Lock()
	s.nodes[cfg.NodeID] = n
	s.nets[cfg.NodeID] = fn
	s.ports[cfg.NodeID] = p
	s.mu.Unlock()
	return n
}

// startAll starts every config at the same moment.
func (s *testSite) startAll(cfgs ...Config) {
	s.t.Helper()
	var wg sync.WaitGroup
	gate := make(chan struct{})
	errs := make(chan error, len(cfgs))
	for _, cfg := range cfgs {
		s.stopped(cfg.NodeID)
		fn := newFaultNet(s.t)
		cfg.Net = fn
		cfg.Discovery = s.lan.Discovery(cfg.NodeID)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			n, err := Start(context.Background(), cfg)
			if err != nil {
				errs <- fmt.Errorf("starting %s: %w", cfg.NodeID, err)
				return
			}
			_, port, _ := net.SplitHostPort(n.Addr())
			var p int
			fmt.Sscan(port, &p)
			s.mu.Lock()
			s.nodes[cfg.NodeID] = n
			s.nets[cfg.NodeID] = fn
			s.ports[cfg.NodeID] = p
			s.mu.Unlock()
		}()
	}
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		s.t.Fatal(err)
	}
}

func (s *testSite) node(id string) *Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodes[id]
}

func (s *testSite) live() []*Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*Node
	for _, n := range s.nodes {
		out = append(out, n)
	}
	return out
}

// kill cuts a node off and stops it without any handover, the way a
// SIGKILL looks to the rest of the site.
func (s *testSite) kill(id string) {
	s.mu.Lock()
	n, fn := s.nodes[id], s.nets[id]
	delete(s.nodes, id)
	done := make(chan struct{})
	s.stopping[id] = done
	s.mu.Unlock()
	fn.Cut(true)
	s.lan.Cut(id, true)
	go func() {
		defer close(done)
		n.stop()
		s.lan.Cut(id, false)
	}()
	s.t.Cleanup(func() { <-done })
}

// stopped waits until a killed node has stopped.
func (s *testSite) stopped(id string) {
	s.mu.Lock()
	done := s.stopping[id]
	s.mu.Unlock()
	if done != nil {
		<-done
	}
}

// stop shuts a node down gracefully.
func (s *testSite) stop(id string) {
	s.t.Helper()
	s.mu.Lock()
	n := s.nodes[id]
	delete(s.nodes, id)
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.Close(ctx); err != nil {
		s.t.Errorf("closing %s: %v", id, err)
	}
}

func (s *testSite) stopAll() {
	for _, n := range s.live() {
		n.stop()
	}
	s.mu.Lock()
	clear(s.nodes)
	s.mu.Unlock()
}

// eventually waits for cond with a deadline, failing with what it last said.
func eventually(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", timeout, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// agreed reports whether every live node sees the same leader and a
// configuration of exactly ids, and returns the leader.
func (s *testSite) agreed(ids ...string) (*Node, bool, string) {
	nodes := s.live()
	var leader string
	for _, n := range nodes {
		l := n.LeaderID()
		if l == "" {
			return nil, false, n.id + " has no leader"
		}
		if leader == "" {
			leader = l
		} else if l != leader {
			return nil, false, fmt.Sprintf("%s follows %s, another follows %s", n.id, l, leader)
		}
		cf := n.raft.GetConfiguration()
		if cf.Error() != nil {
			return nil, false, cf.Error().Error()
		}
		have := map[string]bool{}
		for _, srv := range cf.Configuration().Servers {
			have[string(srv.ID)] = true
		}
		if len(have) != len(ids) {
			return nil, false, fmt.Sprintf("%s has %d servers, want %d", n.id, len(have), len(ids))
		}
		for _, id := range ids {
			if !have[id] {
				return nil, false, fmt.Sprintf("%s's configuration lacks %s", n.id, id)
			}
		}
	}
	return s.node(leader), s.node(leader) != nil, "leader " + leader + " not live"
}

func voters(n *Node) map[string]bool {
	out := map[string]bool{}
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return out
	}
	for _, srv := range cf.Configuration().Servers {
		if srv.Suffrage == raft.Voter {
			out[string(srv.ID)] = true
		}
	}
	return out
}

// makeLeader moves the lead to id (if another node has it) and waits
// until every node follows id.
func (s *testSite) makeLeader(id string) {
	s.t.Helper()
	eventually(s.t, 15*time.Second, func() (bool, string) {
		for _, n := range s.live() {
			if n.LeaderID() != id {
				if l := s.node(n.LeaderID()); l != nil && l.IsLeader() {
					target := s.node(id)
					_ = l.raft.LeadershipTransferToServer(raft.ServerID(id), raft.ServerAddress(target.Addr())).Error()
				}
				return false, n.id + " follows " + n.LeaderID()
			}
		}
		return true, ""
	})
}
