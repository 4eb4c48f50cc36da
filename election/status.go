package election

import (
	"slices"
	"sort"
	"time"

	"github.com/hashicorp/raft"
)

// Status is a snapshot of a node for `superpeer status` and `superpeer
// peers` (the control API serves it as JSON).
type Status struct {
	NodeID string `json:"node_id"`
	Site   string `json:"site"`
	Addr   string `json:"addr"`
	Role   Role   `json:"role"`
	// State is Raft's: leader, follower, candidate; "joining" before the
	// node has group state; shutdown.
	State      string `json:"state"`
	Leader     string `json:"leader,omitempty"`
	LeaderAddr string `json:"leader_addr,omitempty"`
	Term       uint64 `json:"term"`
	Commit     uint64 `json:"commit_index"`
	Applied    uint64 `json:"applied_index"`
	Voter      bool   `json:"voter"`
	Superpeer  bool   `json:"superpeer"`

	Capability Capability `json:"capability"`
	Score      int        `json:"score"`

	Members    []MemberStatus `json:"members"`
	Superpeers SuperpeerSet   `json:"superpeers"`

	Registrations int `json:"registrations"`
	// HeldRefreshes are registration refreshes held in memory, not yet
	// written to the log.
	HeldRefreshes int `json:"held_refreshes"`
	// RefusedConnections counts group connections that failed mutual
	// TLS: devices without the site secret knocking.
	RefusedConnections int64 `json:"refused_connections"`
	// ForeignGroup lists, on the leader, peers of this site that belong to
	// another group (founded while the peers could not hear each other).
	ForeignGroup []string `json:"foreign_group,omitempty"`
}

// MemberStatus is one member of the group.
type MemberStatus struct {
	Member
	Voter     bool `json:"voter"`
	Leader    bool `json:"leader"`
	Superpeer bool `json:"superpeer"`
	// DownSince is set, on the leader only, while heartbeats to the
	// member fail.
	DownSince *time.Time `json:"down_since,omitempty"`
}

// Status returns the node's status.
func (n *Node) Status() Status {
	n.mu.Lock()
	capab := n.capability
	foreign := slices.Clone(n.foreign)
	failing := make(map[string]time.Time, len(n.failing))
	for k, v := range n.failing {
		failing[k] = v
	}
	n.mu.Unlock()

	leaderAddr, leaderID := n.raft.LeaderWithID()
	st := Status{
		NodeID: n.id, Site: n.site, Addr: n.Addr(), Role: n.cfg.Role,
		State:  n.raft.State().String(),
		Leader: string(leaderID), LeaderAddr: string(leaderAddr),
		Term: n.raft.CurrentTerm(), Commit: n.raft.CommitIndex(), Applied: n.raft.AppliedIndex(),
		Capability: capab, Score: Score(capab),
		Superpeers:         n.Superpeers(),
		Registrations:      len(n.lookup("")),
		HeldRefreshes:      n.soft.len(),
		RefusedConnections: n.group.refused.Load(),
		ForeignGroup:       foreign,
	}
	if !n.hasGroup() && st.State == raft.Follower.String() {
		st.State = "joining"
	}
	st.Superpeer = st.Superpeers.Contains(n.id)

	var servers []raft.Server
	if cf := n.raft.GetConfiguration(); n.wait(cf) == nil {
		servers = cf.Configuration().Servers
	}
	var members map[string]Member
	n.fsm.Read(func(s *SiteState) {
		members = make(map[string]Member, len(s.Members))
		for k, v := range s.Members {
			members[k] = v
		}
	})
	isLeader := n.raft.State() == raft.Leader
	for _, s := range servers {
		id := string(s.ID)
		m, ok := members[id]
		if !ok {
			m = Member{ID: id, Addr: string(s.Address)}
		}
		ms := MemberStatus{
			Member: m, Voter: s.Suffrage == raft.Voter,
			Leader: s.ID == leaderID, Superpeer: st.Superpeers.Contains(id),
		}
		if t, down := failing[id]; down && isLeader {
			ms.DownSince = &t
		}
		if id == n.id {
			st.Voter = ms.Voter
		}
		st.Members = append(st.Members, ms)
	}
	sort.Slice(st.Members, func(i, j int) bool { return st.Members[i].ID < st.Members[j].ID })
	return st
}

// Discover returns what this node hears on the LAN (`superpeer
// discover`): peers of this site (verified by their announcements' HMAC),
// peers of other sites and DNS-SD records (unverified), with their roles.
func (n *Node) Discover() []Heard {
	out := n.disc.Peers()
	if n.sd != nil {
		out = append(out, n.sd.Peers()...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
