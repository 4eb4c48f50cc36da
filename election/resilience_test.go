package election

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func threeSite(t *testing.T, persistent bool) *testSite {
	s := newTestSite(t, nil, nil)
	s.startAll(
		s.config("a-router", RoleFull, capRouter, persistent),
		s.config("b-board", RoleFull, capBoard, persistent),
		s.config("c-desktop", RoleFull, capDesktop, persistent),
	)
	eventually(t, 15*time.Second, func() (bool, string) {
		_, ok, why := s.agreed("a-router", "b-board", "c-desktop")
		if !ok {
			return false, why
		}
		for _, n := range s.live() {
			if len(voters(n)) != 3 || len(n.Superpeers().IDs) != 2 {
				return false, fmt.Sprintf("%s: voters %v, superpeers %v", n.id, keys(voters(n)), n.Superpeers().IDs)
			}
		}
		return true, ""
	})
	return s
}

func put(t *testing.T, n *Node, aor string) Binding {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := n.Registrations().Put(ctx, Binding{AOR: aor, Contact: "sip:" + aor[4:] + ":5060",
		Expires: time.Now().Add(time.Hour), Flow: Flow{Superpeer: n.id, Transport: "tcp"}})
	if err != nil {
		t.Fatalf("registering %s through %s: %v", aor, n.id, err)
	}
	return b
}

func TestRestartFromDisk(t *testing.T) {
	s := threeSite(t, true)
	for i := range 20 {
		put(t, s.node("b-board"), fmt.Sprintf("sip:u%d@site", i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.node("a-router").SetSiteConfig(ctx, SiteConfig{Domain: "site.example"}); err != nil {
		t.Fatal(err)
	}
	before := s.node("c-desktop").Superpeers()
	turn := s.node("c-desktop").TURNSecret()
	if len(turn.Current) == 0 {
		t.Fatal("the leader made no TURN secret")
	}

	// Every peer goes down (a power cut: no handover), then all start again.
	for _, n := range s.live() {
		s.kill(n.id)
	}
	s.startAll(
		s.config("a-router", RoleFull, capRouter, true),
		s.config("b-board", RoleFull, capBoard, true),
		s.config("c-desktop", RoleFull, capDesktop, true),
	)
	eventually(t, 15*time.Second, func() (bool, string) {
		_, ok, why := s.agreed("a-router", "b-board", "c-desktop")
		return ok, why
	})
	for _, n := range s.live() {
		got := 0
		for i := range 20 {
			bs, err := n.Registrations().LookupCurrent(ctx, fmt.Sprintf("sip:u%d@site", i))
			if err != nil {
				t.Fatalf("%s: %v", n.id, err)
			}
			got += len(bs)
		}
		if got != 20 {
			t.Errorf("%s has %d of 20 registrations after the restart", n.id, got)
		}
		if set := n.Superpeers(); !sameMembers(set.IDs, before.IDs) {
			t.Errorf("%s: superpeers %v after restart, %v before", n.id, set.IDs, before.IDs)
		}
		if c := n.SiteConfig(); c.Domain != "site.example" {
			t.Errorf("%s: site domain %q after restart", n.id, c.Domain)
		}
		if got := n.TURNSecret(); string(got.Current) != string(turn.Current) {
			t.Errorf("%s: the TURN secret changed across the restart", n.id)
		}
	}
}

func TestPartitionedLeaderCommitsNothingAndRejoins(t *testing.T) {
	s := threeSite(t, false)
	s.makeLeader("a-router")
	old := s.node("a-router")
	put(t, old, "sip:before@site")

	// Cut the leader off the LAN.
	s.nets["a-router"].Cut(true)
	s.lan.Cut("a-router", true)
	commitAtCut := old.raft.CommitIndex()

	// The cut-off leader cannot commit.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	_, err := old.Apply(ctx, Command{Op: OpBindingPut, Binding: &Binding{AOR: "sip:minority@site", Contact: "sip:m@x", Expires: time.Now().Add(time.Hour)}})
	cancel()
	if err == nil {
		t.Fatal("the cut-off leader committed a write")
	}

	// The majority elects a leader and commits.
	eventually(t, 10*time.Second, func() (bool, string) {
		for _, id := range []string{"b-board", "c-desktop"} {
			if l := s.node(id).LeaderID(); l == "" || l == "a-router" {
				return false, id + " follows " + l
			}
		}
		return true, ""
	})
	put(t, s.node("b-board"), "sip:majority@site")
	eventually(t, 10*time.Second, func() (bool, string) {
		set := s.node("b-board").Superpeers()
		return !set.Contains("a-router") && len(set.IDs) == 2, fmt.Sprintf("majority sees superpeers %v", set.IDs)
	})
	if old.IsLeader() {
		t.Error("the cut-off node still believes it leads after its lease ran out")
	}
	if got := old.raft.CommitIndex(); got != commitAtCut {
		t.Errorf("the cut-off node's commit index moved from %d to %d", commitAtCut, got)
	}

	// Heal: one leader, one history.
	s.nets["a-router"].Cut(false)
	s.lan.Cut("a-router", false)
	eventually(t, 15*time.Second, func() (bool, string) {
		_, ok, why := s.agreed("a-router", "b-board", "c-desktop")
		if !ok {
			return false, why
		}
		leaders := 0
		for _, n := range s.live() {
			if n.IsLeader() {
				leaders++
			}
			if len(n.Registrations().Lookup("sip:majority@site")) != 1 {
				return false, n.id + " lacks the majority's write"
			}
		}
		return leaders == 1, fmt.Sprintf("%d leaders", leaders)
	})
	for _, n := range s.live() {
		if got := n.Registrations().Lookup("sip:minority@site"); len(got) != 0 {
			t.Errorf("%s has the write the cut-off leader could not commit", n.id)
		}
		if len(n.Registrations().Lookup("sip:before@site")) != 1 {
			t.Errorf("%s lost the write from before the cut", n.id)
		}
	}
}

func TestStrangerCannotJoinOrWrite(t *testing.T) {
	s := threeSite(t, false)
	leader, _, _ := s.agreed("a-router", "b-board", "c-desktop")

	// A stranger on the same LAN, with a site secret of its own.
	other, err := NewSiteSecret()
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.config("x-stranger", RoleFull, capRouter, false)
	cfg.Secret = other
	stranger := s.start(cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := stranger.rpc.call(ctx, leader.Addr(), rpcJoin, stranger.member(), nil); err == nil {
		t.Error("the leader accepted a join request from a stranger")
	}
	cmd := Command{Op: OpBindingPut, Binding: &Binding{AOR: "sip:evil@site", Contact: "sip:evil@x", Expires: time.Now().Add(time.Hour)}}
	if err := stranger.rpc.call(ctx, leader.Addr(), rpcApply, cmd, nil); err == nil {
		t.Error("the leader applied a command from a stranger")
	}
	// Raft directly, through the stranger's own (wrongly keyed) transport.
	data, _ := EncodeCommand(cmd)
	var resp raft.AppendEntriesResponse
	err = stranger.trans.AppendEntries(raft.ServerID(leader.id), raft.ServerAddress(leader.Addr()), &raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ID: []byte("x-stranger"), Addr: []byte(stranger.Addr())},
		Term:      leader.raft.CurrentTerm() + 10,
		Entries:   []*raft.Log{{Index: leader.raft.LastIndex() + 1, Term: leader.raft.CurrentTerm() + 10, Type: raft.LogCommand, Data: data}},
	}, &resp)
	if err == nil {
		t.Error("a member accepted a Raft RPC from a stranger")
	}
	// And Raft without any TLS at all.
	c, err := net.DialTimeout("tcp", leader.Addr(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{kindRaft, 0, 1, 2, 3})
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 64)); err == nil {
		t.Error("a member answered plaintext on the group port")
	}
	c.Close()

	// Nothing changed: same members, no binding, the leader kept its term,
	// and the members counted the refusals.
	if _, ok, why := s.agreed("a-router", "b-board", "c-desktop", "x-stranger"); ok {
		t.Fatalf("the stranger is in the group (%s)", why)
	}
	refused := int64(0)
	for _, id := range []string{"a-router", "b-board", "c-desktop"} {
		n := s.node(id)
		if got := n.Registrations().Lookup("sip:evil@site"); len(got) != 0 {
			t.Errorf("%s holds the stranger's binding", id)
		}
		refused += n.Status().RefusedConnections
		for _, h := range n.Discover() {
			if h.ID == "x-stranger" && h.Verified {
				t.Errorf("%s counts the stranger's announcement as its site's", id)
			}
		}
	}
	if refused == 0 {
		t.Error("no member counted a refused connection")
	}
	cf := leader.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		t.Fatal(err)
	}
	for _, srv := range cf.Configuration().Servers {
		if srv.ID == "x-stranger" {
			t.Error("the stranger is in the leader's configuration")
		}
	}
}

// Peers that could not hear each other when they founded end up in two
// groups; each leader says so instead of pretending.
func TestSecondGroupOfTheSiteIsReported(t *testing.T) {
	s := newTestSite(t, nil, nil)
	s.lan.Cut("c-loner", true) // hears nobody, is heard by nobody
	s.startAll(
		s.config("a-router", RoleFull, capRouter, false),
		s.config("b-board", RoleFull, capBoard, false),
		s.config("c-loner", RoleFull, capDesktop, false),
	)
	eventually(t, 15*time.Second, func() (bool, string) {
		a, c := s.node("a-router"), s.node("c-loner")
		return inConfig(a, "b-board") && c.IsLeader() && !inConfig(c, "a-router"), "groups not formed yet"
	})
	for _, id := range []string{"a-router", "b-board", "c-loner"} {
		if st := s.node(id).Status(); len(st.ForeignGroup) != 0 {
			t.Fatalf("%s reports a foreign group %v while the peers cannot hear each other", id, st.ForeignGroup)
		}
	}
	s.lan.Cut("c-loner", false)
	eventually(t, 15*time.Second, func() (bool, string) {
		var leader *Node
		for _, id := range []string{"a-router", "b-board"} {
			if s.node(id).IsLeader() {
				leader = s.node(id)
			}
		}
		if leader == nil {
			return false, "the pair has no leader"
		}
		got, other := leader.Status().ForeignGroup, s.node("c-loner").Status().ForeignGroup
		return slices.Equal(got, []string{"c-loner"}) && len(other) == 2,
			fmt.Sprintf("the pair's leader reports %v, the loner %v", got, other)
	})
}
