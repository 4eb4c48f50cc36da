package superpeer

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superpeer/superpeer/election"
	"github.com/superpeer/superpeer/netlab"
)

// TestLabSite is the election and desktop-agent acceptance through real
// daemons, one process per peer on one LAN behind a kernel NAT with
// miniupnpd:
//
//  1. five peers started at the same moment form one group and commit a
//     superpeer set of two with the router (the NAT host itself, public);
//     the laptop and the desktop agent are not voters;
//  2. a hundred phones registered through one superpeer, and a softphone
//     on 127.0.0.1 behind the desktop agent; that superpeer is killed
//     (SIGKILL): a new set of two is committed and each of its superpeers
//     reaches every phone from the replicated bindings, and a new call
//     reaches the softphone through the agent, without registering again;
//  3. every peer stopped (SIGTERM) and started again on its state
//     directory: the site, its superpeer set and the registrations come
//     back from disk.
//
// bench/failover-daemon.sh times step 2 repeatedly (BenchmarkLabDaemonFailover).
func TestLabSite(t *testing.T) {
	s := newLabSite(t)
	began := time.Now()
	s.start(s.all()...)

	// 1. One group, a set of two with the router, the right voters.
	s.learnIDs(20 * time.Second)
	// The router is the only peer with a public address: the set must
	// have it.
	router := s.byName["router"]
	netlab.Eventually(t, 20*time.Second, func() error { return s.formed(2, router) })
	rp, err := router.peers()
	if err != nil {
		t.Fatal(err)
	}
	// The acceptance: a set of two committed within 5 s of the start.
	// Committed is the leader's clock, on this machine.
	if took := rp.Superpeers.Committed.Sub(began); took > 5*time.Second {
		t.Errorf("the set of two was committed %v after the peers started; want within 5 s", took.Round(time.Millisecond))
	}
	t.Logf("one group of %d, superpeers %v committed %v after the start (%s)", len(s.nodes),
		s.names(rp.Superpeers.IDs), rp.Superpeers.Committed.Sub(began).Round(time.Millisecond), rp.Superpeers.Reason)
	s.checkVoters(t)
	s.checkOps(t)

	// 2. Registrations through one superpeer, then its death.
	sps, err := s.superpeers(router)
	if err != nil {
		t.Fatal(err)
	}
	a, b := sps[0], sps[1]
	phones := make([]*labPhone, 100)
	for i := range phones {
		phones[i] = newLabPhone(t, s.byName["laptop"].host, netip.AddrPortFrom(s.byName["laptop"].host.Addr, 0), fmt.Sprintf("phone%03d", i))
	}
	caller := newLabPhone(t, s.byName["desktop"].host, netip.AddrPortFrom(s.byName["desktop"].host.Addr, 0), "caller")
	agent := s.byName["agent"]
	bob := newLabPhone(t, agent.host, netip.MustParseAddrPort("127.0.0.1:0"), "bob")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := registerAll(ctx, a.sipAddr(), phones); err != nil {
		t.Fatalf("registering 100 phones through %s: %v", a.name, err)
	}
	if err := bob.register(ctx, netip.MustParseAddrPort("127.0.0.1:5060")); err != nil {
		t.Fatalf("softphone registering through the desktop agent: %v", err)
	}
	// The agent forwards to one superpeer of the set, and a call reaches
	// the softphone through each superpeer of the set as the agent sees
	// it: also through one it never sent to, once the binding is in that
	// one's replica (a moment behind).
	netlab.Eventually(t, 15*time.Second, func() error {
		set, err := s.superpeers(agent)
		if err != nil || len(set) != 2 {
			return fmt.Errorf("the agent sees superpeers %v (err %v)", s.nodeNames(set), err)
		}
		for _, sp := range set {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := caller.call(cctx, sp.sipAddr(), bob.aor())
			cancel()
			if err != nil {
				return fmt.Errorf("calling the softphone through %s before any failure: %w", sp.name, err)
			}
		}
		return nil
	})
	bobInvites := bob.invites.Load()

	killed := time.Now()
	a.kill()
	// Within 2 s of the kill: a new committed set without a, and b
	// answers for every registration (each phone answers the OPTIONS
	// that b forwards to it from its binding). The deadline is looser so
	// that a slow run reports how slow instead of only failing.
	var (
		took  time.Duration
		after []*labNode
	)
	netlab.Eventually(t, 15*time.Second, func() error {
		var err error
		if after, err = s.failedOver(agent, a, caller, phones); err != nil {
			return err
		}
		took = time.Since(killed)
		return nil
	})
	t.Logf("superpeer %s killed: %v answer for all 100 registrations %v later", a.name, s.nodeNames(after), took.Round(time.Millisecond))
	if !slices.Contains(after, b) {
		t.Logf("(%s, the other superpeer before the kill, was replaced)", b.name)
	}
	if took > 2*time.Second {
		t.Errorf("failover took %v; want within 2 s of the kill", took.Round(time.Millisecond))
	}

	// The softphone behind the agent: a new call through each superpeer
	// of the new set reaches it over its flow through the agent, and it
	// did not register again.
	netlab.Eventually(t, 15*time.Second, func() error {
		sps, err := s.superpeers(agent)
		if err != nil || len(sps) == 0 || slices.Contains(sps, a) {
			return fmt.Errorf("the agent sees superpeers %v (err %v)", sps, err)
		}
		for _, sp := range sps {
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err := caller.call(cctx, sp.sipAddr(), bob.aor())
			cancel()
			if err != nil {
				return fmt.Errorf("through %s: %w", sp.name, err)
			}
		}
		took = time.Since(killed)
		return nil
	})
	t.Logf("new calls through every superpeer reached the softphone behind the agent %v after the kill", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("the calls to the softphone succeeded %v after the kill; want within 2 s", took.Round(time.Millisecond))
	}
	if bob.invites.Load() < bobInvites+2 || bob.byes.Load() < 4 {
		t.Errorf("the softphone got %d INVITEs and %d BYEs; the calls did not reach it", bob.invites.Load(), bob.byes.Load())
	}
	if n := bob.cseq.Load(); n != 1 {
		t.Errorf("the softphone registered %d times", n)
	}

	// 3. Every peer stopped and started again on its state directory.
	site := rp.Site
	var wg sync.WaitGroup
	for _, n := range s.running() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.stop(15 * time.Second); err != nil {
				t.Errorf("SIGTERM: %v", err)
			}
		}()
	}
	wg.Wait()
	s.start(s.all()...)
	netlab.Eventually(t, 30*time.Second, func() error {
		if err := s.formed(2, router); err != nil {
			return err
		}
		for _, n := range s.nodes {
			ps, err := n.peers()
			if err != nil {
				return err
			}
			if ps.Site != site {
				return fmt.Errorf("%s is in site %s, was %s", n.name, ps.Site, site)
			}
			if ps.Registrations != len(phones)+1 {
				return fmt.Errorf("%s holds %d registrations, want %d", n.name, ps.Registrations, len(phones)+1)
			}
		}
		return nil
	})
	sps, err = s.superpeers(router)
	if err != nil {
		t.Fatal(err)
	}
	netlab.Eventually(t, 10*time.Second, func() error {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return reachAll(rctx, caller, sps[0].sipAddr(), phones)
	})
	for _, n := range s.nodes {
		n.mu.Lock()
		out := n.runs[len(n.runs)-1].Output()
		n.mu.Unlock()
		if strings.Contains(out, "founded a new site") || strings.Contains(out, "joined a site with a join token") {
			t.Errorf("%s did not start from its state directory:\n%s", n.name, tail(out, 20))
		}
	}
}

// failedOver: the committed set as viewer sees it has two superpeers,
// dead not among them, and every one of them answers for every phone
// (each phone answers the OPTIONS the superpeer forwards to it from its
// binding). It returns the set.
func (s *labSite) failedOver(viewer, dead *labNode, caller *labPhone, phones []*labPhone) ([]*labNode, error) {
	ps, err := viewer.peers()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", viewer.name, err)
	}
	set := ps.Superpeers
	if len(set.IDs) != 2 || set.Contains(dead.id) {
		return nil, fmt.Errorf("%s sees superpeers %v", viewer.name, s.names(set.IDs))
	}
	var sps []*labNode
	for _, id := range set.IDs {
		sp := s.byID(id)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := reachAll(ctx, caller, sp.sipAddr(), phones)
		cancel()
		if err != nil {
			return nil, err
		}
		sps = append(sps, sp)
	}
	return sps, nil
}

// checkVoters: `superpeer peers --json` on the leader lists every member
// with its score; three voters, and neither the laptop nor the desktop
// agent among them. Members report and are promoted a moment after the
// set is committed: the leader's view is read until it settles.
func (s *labSite) checkVoters(t *testing.T) {
	t.Helper()
	netlab.Eventually(t, 15*time.Second, func() error {
		var ps election.Status
		s.cli(t, s.byName["router"], &ps, "peers", "--json")
		if ps.Leader != "" {
			if ln := s.byID(ps.Leader); ln != nil {
				s.cli(t, ln, &ps, "peers", "--json")
			}
		}
		voters := map[string]bool{}
		for _, m := range ps.Members {
			n := s.byID(m.ID)
			if n == nil {
				return fmt.Errorf("peers lists %s, not a node of the site", m.ID)
			}
			if m.Score <= 0 || m.Capability.Class != election.DeviceClass(n.class) {
				return fmt.Errorf("peers: %s has score %d, class %q; want a score and class %q", n.name, m.Score, m.Capability.Class, n.class)
			}
			if m.Voter {
				voters[n.name] = true
			}
		}
		if len(ps.Members) != len(s.nodes) || len(voters) != 3 || voters["laptop"] || voters["agent"] {
			return fmt.Errorf("peers: %d members, voters %v; want %d members and three voters, neither the laptop nor the agent",
				len(ps.Members), voters, len(s.nodes))
		}
		return nil
	})
}

// checkOps runs the ops subcommands against the running site, as an
// operator would, and checks what they say.
func (s *labSite) checkOps(t *testing.T) {
	t.Helper()
	router, board := s.byName["router"], s.byName["board"]

	var nat NATStatus
	s.cli(t, router, &nat, "nat", "--json")
	if nat.Reachability != "public" {
		t.Errorf("nat on the router: reachability %q, want public (it has the WAN address)", nat.Reachability)
	}
	netlab.Eventually(t, 15*time.Second, func() error {
		s.cli(t, board, &nat, "nat", "--json")
		if nat.Behaviour == nil || nat.Behaviour.External.Addr() != s.site.External || !nat.Behaviour.NAT {
			return fmt.Errorf("nat on the board: %+v, want the NAT behind %v", nat.Behaviour, s.site.External)
		}
		return nil
	})

	var heard struct {
		Heard []election.Heard `json:"heard"`
	}
	netlab.Eventually(t, 10*time.Second, func() error {
		s.cli(t, board, &heard, "discover", "--json")
		seen := map[string]bool{}
		for _, h := range heard.Heard {
			if n := s.byID(h.ID); n != nil && h.Verified && h.Source == "multicast" {
				seen[n.name] = true
				if h.Superpeer != slices.Contains(s.setNames(board), n.name) {
					return fmt.Errorf("discover: %s announces superpeer=%v", n.name, h.Superpeer)
				}
				if n.role == "peer" && h.Role != election.RolePeer {
					return fmt.Errorf("discover: the agent announces role %q", h.Role)
				}
			}
		}
		if len(seen) != len(s.nodes)-1 {
			return fmt.Errorf("discover on the board hears %v, want the four other peers", seen)
		}
		return nil
	})

	var st Status
	s.cli(t, router, &st, "status", "--json")
	if !strings.HasPrefix(st.Role, "superpeer") || st.Domain != labDomain || st.Node != router.id || len(st.Superpeers) != 2 {
		t.Errorf("status on the router: role %q, domain %q, superpeers %d", st.Role, st.Domain, len(st.Superpeers))
	}
	for _, sp := range st.Superpeers {
		if ap, err := netip.ParseAddrPort(sp.SIP); err != nil || !s.site.LANPrefix.Contains(ap.Addr()) {
			t.Errorf("status: superpeer %s serves SIP at %q, not on the LAN", s.names([]string{sp.Node}), sp.SIP)
		}
	}
	// `superpeer run --role peer`: a desktop agent, serving softphones on
	// 127.0.0.1:5060 and never a superpeer.
	s.cli(t, s.byName["agent"], &st, "status", "--json")
	agentOn := ""
	for _, p := range st.Parts {
		if p.Name == "agent" {
			agentOn = p.State
		}
	}
	if st.Role != "desktop agent" || agentOn != "running on 127.0.0.1:5060" {
		t.Errorf("status on the agent: role %q, agent part %q", st.Role, agentOn)
	}
}

func (s *labSite) nodeNames(ns []*labNode) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.name
	}
	return out
}

// setNames is the committed set as n sees it, by name.
func (s *labSite) setNames(n *labNode) []string {
	sps, _ := s.superpeers(n)
	var out []string
	for _, sp := range sps {
		out = append(out, sp.name)
	}
	return out
}

// cli runs `superpeer <args> --state-dir <n's>` and decodes its JSON.
func (s *labSite) cli(t *testing.T, n *labNode, out any, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.bin, append(args, "--state-dir", n.dir)...)
	b, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("superpeer %s on %s: %v: %s", strings.Join(args, " "), n.name, err, stderr)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("superpeer %s on %s printed no JSON: %v\n%s", strings.Join(args, " "), n.name, err, b)
	}
}

// BenchmarkLabDaemonFailover is step 2 of TestLabSite repeated b.N times
// (bench/failover-daemon.sh): a hundred phones register through one
// superpeer process, which is killed (SIGKILL); the time runs from the
// kill until the site has committed a set of two without the dead one and
// every phone answers an OPTIONS forwarded from its binding by each
// superpeer of that set. The dead one is started again and the site
// settles before the next run. Runs alternate between killing the
// superpeer that leads the Raft group (the lead is moved to a superpeer
// first, by stopping the leader gracefully) and one that follows. With
// FAILOVER_DAEMON_REPORT=file it writes the distribution as markdown rows.
// Each b.N iteration is FAILOVER_RUNS failovers, so that -benchtime 1x
// measures them on one site; without FAILOVER_RUNS it is skipped (make
// bench runs it through the script).
func BenchmarkLabDaemonFailover(b *testing.B) {
	runs, err := strconv.Atoi(os.Getenv("FAILOVER_RUNS"))
	if err != nil || runs < 1 {
		b.Skip("bench/failover-daemon.sh runs this (FAILOVER_RUNS=n)")
	}
	s := newLabSite(b)
	s.start(s.all()...)
	s.learnIDs(20 * time.Second)
	router := s.byName["router"]
	laptop, desktop, agent := s.byName["laptop"], s.byName["desktop"], s.byName["agent"]
	phones := make([]*labPhone, 100)
	for i := range phones {
		phones[i] = newLabPhone(b, laptop.host, netip.AddrPortFrom(laptop.host.Addr, 0), fmt.Sprintf("phone%03d", i))
	}
	caller := newLabPhone(b, desktop.host, netip.AddrPortFrom(desktop.host.Addr, 0), "caller")

	results := map[string][]time.Duration{}
	b.ResetTimer()
	for i := range b.N * runs {
		netlab.Eventually(b, 60*time.Second, func() error { return s.settled(2, router) })
		ps, err := router.peers()
		if err != nil {
			b.Fatal(err)
		}
		// For a run that kills the leading superpeer, move the lead
		// until a superpeer has it: a voter that stops gracefully hands
		// it to another voter.
		for try := 0; i%2 == 1 && !ps.Superpeers.Contains(ps.Leader) && try < 6; try++ {
			ln := s.byID(ps.Leader)
			if ln == nil {
				break
			}
			if err := ln.stop(15 * time.Second); err != nil {
				b.Fatal(err)
			}
			s.start(ln)
			netlab.Eventually(b, 60*time.Second, func() error { return s.settled(2, router) })
			if ps, err = router.peers(); err != nil {
				b.Fatal(err)
			}
		}
		// The victim: the leading superpeer in odd runs when one leads,
		// a following one otherwise.
		var victim *labNode
		for _, id := range ps.Superpeers.IDs {
			if n := s.byID(id); (n.id == ps.Leader) == (i%2 == 1) && victim == nil {
				victim = n
			}
		}
		if victim == nil {
			victim = s.byID(ps.Superpeers.IDs[0])
		}
		role := "follows"
		if victim.id == ps.Leader {
			role = "leads"
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := registerAll(ctx, victim.sipAddr(), phones); err != nil {
			b.Fatalf("registering through %s: %v", victim.name, err)
		}
		cancel()

		killed := time.Now()
		victim.kill()
		var took time.Duration
		for {
			_, err := s.failedOver(agent, victim, caller, phones)
			if err == nil {
				took = time.Since(killed)
				break
			}
			if time.Since(killed) > 30*time.Second {
				b.Fatalf("run %d: no failover 30 s after killing %s: %v", i+1, victim.name, err)
			}
			time.Sleep(10 * time.Millisecond) // polling the control socket
		}
		name := "the superpeer the phones registered through, while it " + role + " the group"
		results[name] = append(results[name], took)
		s.start(victim)
	}
	b.StopTimer()

	var (
		md  strings.Builder
		all []time.Duration
	)
	row := func(name string, ds []time.Duration) {
		slices.Sort(ds)
		q := func(p float64) time.Duration { return ds[min(len(ds)-1, int(p*float64(len(ds))))] }
		fmt.Fprintf(&md, "| %s | %d | %d | %d | %d | %d |\n", name, len(ds),
			ds[0].Milliseconds(), q(0.5).Milliseconds(), q(0.9).Milliseconds(), ds[len(ds)-1].Milliseconds())
	}
	for _, name := range slices.Sorted(maps.Keys(results)) {
		row(name, results[name])
		all = append(all, results[name]...)
	}
	row("all runs", all)
	b.ReportMetric(float64(all[len(all)/2].Milliseconds()), "median-ms")
	if path := os.Getenv("FAILOVER_DAEMON_REPORT"); path != "" {
		if err := os.WriteFile(path, []byte(md.String()), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}
