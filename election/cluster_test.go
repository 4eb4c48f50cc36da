package election

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

// fiveConfigs is the acceptance site: a public router, a board behind a
// mapped port, a desktop, a laptop and a desktop agent.
func fiveConfigs(s *testSite, persistent bool) []Config {
	return []Config{
		s.config("p1-laptop", RoleFull, capLaptop, persistent),
		s.config("p2-board", RoleFull, capBoard, persistent),
		s.config("p3-router", RoleFull, capRouter, persistent),
		s.config("p4-agent", RolePeer, capDesktop, persistent),
		s.config("p5-desktop", RoleFull, capDesktop, persistent),
	}
}

var fiveIDs = []string{"p1-laptop", "p2-board", "p3-router", "p4-agent", "p5-desktop"}

func TestFivePeersStartedAtOnceFormOneSite(t *testing.T) {
	s := newTestSite(t, nil, nil)
	s.startAll(fiveConfigs(s, false)...)

	var leader *Node
	eventually(t, 15*time.Second, func() (bool, string) {
		l, ok, why := s.agreed(fiveIDs...)
		leader = l
		return ok, why
	})
	// Voters: the three mains-powered full peers; never the laptop or
	// the agent, never two.
	eventually(t, 10*time.Second, func() (bool, string) {
		v := voters(leader)
		want := []string{"p2-board", "p3-router", "p5-desktop"}
		for _, id := range want {
			if !v[id] {
				return false, fmt.Sprintf("voters %v lack %s", keys(v), id)
			}
		}
		return len(v) == 3, fmt.Sprintf("voters %v", keys(v))
	})
	// Superpeers: two, the public router among them, never the agent;
	// every peer, the agent included, knows the set.
	eventually(t, 10*time.Second, func() (bool, string) {
		for _, n := range s.live() {
			set := n.Superpeers()
			if len(set.IDs) != 2 || !set.Contains("p3-router") {
				return false, fmt.Sprintf("%s sees superpeers %v", n.id, set.IDs)
			}
			if set.Contains("p4-agent") {
				return false, "the desktop agent was elected"
			}
		}
		return true, ""
	})
	st := s.node("p4-agent").Status()
	if st.Voter {
		t.Error("the desktop agent holds a vote")
	}
	if len(st.Members) != 5 || len(st.Superpeers.Members) != 2 {
		t.Errorf("agent status lists %d members and %d superpeer records, want 5 and 2", len(st.Members), len(st.Superpeers.Members))
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestRegistrationsReachEveryPeer(t *testing.T) {
	s := newTestSite(t, nil, nil)
	s.startAll(
		s.config("a", RoleFull, capRouter, false),
		s.config("b", RoleFull, capBoard, false),
		s.config("c", RoleFull, capDesktop, false),
	)
	eventually(t, 15*time.Second, func() (bool, string) {
		_, ok, why := s.agreed("a", "b", "c")
		return ok, why
	})
	// Write through a follower: the write is forwarded to the leader.
	var via *Node
	for _, n := range s.live() {
		if !n.IsLeader() {
			via = n
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	exp := time.Now().Add(time.Hour)
	b, err := via.Registrations().Put(ctx, Binding{AOR: "sip:alice@site", Contact: "sip:alice@192.168.1.20:5060", Expires: exp,
		Flow: Flow{Superpeer: via.id, Transport: "udp", Remote: "192.168.1.20:5060"}})
	if err != nil {
		t.Fatalf("put through follower: %v", err)
	}
	if b.Index == 0 {
		t.Error("stored binding has no index")
	}
	for _, n := range s.live() {
		got, err := n.Registrations().LookupCurrent(ctx, "sip:alice@site")
		if err != nil {
			t.Fatalf("%s: %v", n.id, err)
		}
		if len(got) != 1 || got[0].Contact != "sip:alice@192.168.1.20:5060" {
			t.Fatalf("%s: LookupCurrent = %+v", n.id, got)
		}
	}
	if err := via.Registrations().Remove(ctx, "sip:alice@site", "sip:nobody@x"); err == nil || !strings.Contains(err.Error(), ErrNoBinding.Error()) {
		t.Errorf("removing an unknown binding: %v, want %v", err, ErrNoBinding)
	}
}
