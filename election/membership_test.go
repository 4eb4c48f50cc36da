package election

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/superpeer/superpeer/nat/clock"
)

func TestGracefulShutdownHandsOver(t *testing.T) {
	s := threeSite(t, false)
	s.makeLeader("a-router")

	// A superpeer that is not the leader: the leader replaces it before
	// it goes.
	s.stop("b-board")
	if set := s.node("a-router").Superpeers(); set.Contains("b-board") || len(set.IDs) != 2 {
		t.Errorf("after the board shut down the leader's set is %v", set.IDs)
	}

	// The leading superpeer: it commits a set without itself and hands the
	// lead over before it stops.
	s.startAll(s.config("b-board", RoleFull, capBoard, false))
	eventually(t, 15*time.Second, func() (bool, string) {
		_, ok, why := s.agreed("a-router", "b-board", "c-desktop")
		return ok && len(voters(s.node("a-router"))) == 3, why
	})
	leader := s.node("a-router")
	s.stop("a-router")
	if !leader.handedOver.Load() {
		t.Error("the leader stopped without handing the lead over")
	}
	if set := leader.Superpeers(); set.Contains("a-router") || len(set.IDs) != 2 {
		t.Errorf("the leader stopped before committing a set without itself: %v", set.IDs)
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		for _, id := range []string{"b-board", "c-desktop"} {
			n := s.node(id)
			if l := n.LeaderID(); l == "" || l == "a-router" {
				return false, id + " follows " + l
			}
			if set := n.Superpeers(); set.Contains("a-router") || len(set.IDs) != 2 {
				return false, fmt.Sprintf("%s sees superpeers %v", id, set.IDs)
			}
		}
		return true, ""
	})
}

func TestDesktopAgentFollowsTheSuperpeers(t *testing.T) {
	s := threeSite(t, false)
	s.makeLeader("a-router")
	agent := s.start(s.config("d-agent", RolePeer, capDesktop, false))
	eventually(t, 15*time.Second, func() (bool, string) {
		_, ok, why := s.agreed("a-router", "b-board", "c-desktop", "d-agent")
		return ok, why
	})
	if voters(agent)["d-agent"] {
		t.Error("the desktop agent got a vote")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := agent.WatchSuperpeers(ctx)
	var first SuperpeerSet
	wait := time.After(10 * time.Second)
	for len(first.IDs) != 2 { // the agent may still be catching up on earlier sets
		select {
		case first = <-w:
		case <-wait:
			t.Fatalf("the agent never saw two superpeers (last %v)", first.IDs)
		}
	}
	if len(first.Members) != 2 || first.Members[0].Addr == "" {
		t.Fatalf("the set the agent sees lacks member records: %+v", first)
	}
	victim := first.IDs[1]
	if victim == "a-router" {
		victim = first.IDs[0]
	}
	s.kill(victim)
	deadline := time.After(15 * time.Second)
	for {
		select {
		case set := <-w:
			if !set.Contains(victim) && len(set.IDs) == 2 {
				if set.Epoch <= first.Epoch {
					t.Errorf("new set has epoch %d, the old one %d", set.Epoch, first.Epoch)
				}
				return
			}
		case <-deadline:
			t.Fatalf("the agent never saw a set without %s (it sees %v)", victim, agent.Superpeers().IDs)
		}
	}
}

// runClock advances a fake clock in small steps until the returned stop
// is called: it lets a site form while its timers run on fake time.
func runClock(f *clock.Fake) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
				f.Advance(20 * time.Millisecond)
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func TestDeadMemberRemovedAfterGracePeriod(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	const grace = 30 * time.Minute
	s := newTestSite(t, fake, func(c *Config) { c.DeadMemberGrace = grace })
	stopClock := runClock(fake)
	s.startAll(
		s.config("a-router", RoleFull, capRouter, false),
		s.config("b-board", RoleFull, capBoard, false),
		s.config("c-desktop", RoleFull, capDesktop, false),
		s.config("d-desktop", RoleFull, capDesktop, false),
	)
	all := []string{"a-router", "b-board", "c-desktop", "d-desktop"}
	eventually(t, 20*time.Second, func() (bool, string) {
		_, ok, why := s.agreed(all...)
		if ok && len(voters(s.node("a-router"))) != 3 {
			return false, fmt.Sprintf("voters %v", keys(voters(s.node("a-router"))))
		}
		return ok, why
	})
	s.makeLeader("a-router")
	eventually(t, 20*time.Second, func() (bool, string) {
		set := s.node("a-router").Superpeers()
		return sameMembers(set.IDs, []string{"a-router", "b-board"}), fmt.Sprintf("set %v", set.IDs)
	})
	stopClock()

	// Kill a voting superpeer; the leader notices failed heartbeats (on
	// Raft's wall clock) and counts from the fake clock's now.
	leader := s.node("a-router")
	s.kill("b-board")
	eventually(t, 10*time.Second, func() (bool, string) {
		leader.mu.Lock()
		_, failing := leader.failing["b-board"]
		leader.mu.Unlock()
		return failing, "the leader has not seen a failed heartbeat"
	})

	// After DownAfter: replaced as superpeer and as voter, still a member.
	fake.Advance(DefaultConfig().DownAfter)
	eventually(t, 10*time.Second, func() (bool, string) {
		set := leader.Superpeers()
		v := voters(leader)
		return !set.Contains("b-board") && len(set.IDs) == 2 && !v["b-board"] && v["d-desktop"] && len(v) == 3,
			fmt.Sprintf("set %v, voters %v", set.IDs, keys(v))
	})
	if !inConfig(leader, "b-board") {
		t.Fatal("the dead member was removed before its grace period")
	}
	// Just short of the grace period: still a member.
	fake.Advance(grace - DefaultConfig().DownAfter - time.Minute)
	passes := leader.reconciles.Load()
	leader.poke()
	eventually(t, 10*time.Second, func() (bool, string) {
		return leader.reconciles.Load() > passes+1, "the leader did not reconcile"
	})
	if !inConfig(leader, "b-board") {
		t.Fatal("the dead member was removed before its grace period")
	}
	// Past it: removed from the group and the member table.
	fake.Advance(2 * time.Minute)
	eventually(t, 10*time.Second, func() (bool, string) {
		var known bool
		leader.fsm.Read(func(st *SiteState) { _, known = st.Members["b-board"] })
		return !inConfig(leader, "b-board") && !known, "b-board still a member"
	})
	for _, id := range []string{"c-desktop", "d-desktop"} {
		if inConfig(s.node(id), "b-board") {
			t.Errorf("%s still lists the removed member", id)
		}
	}
}

func inConfig(n *Node, id string) bool {
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return false
	}
	for _, srv := range cf.Configuration().Servers {
		if srv.ID == raft.ServerID(id) {
			return true
		}
	}
	return false
}
