package election

import (
	"slices"
	"sort"
)

// memberView is one server of the group as the leader sees it: its
// replicated record, its vote, and its liveness from the leader's
// heartbeats. The planning functions below are pure: the leader builds the
// views, asks for a plan, and carries it out.
type memberView struct {
	ID     string
	Known  bool // the member table has a record (Member is valid)
	Member Member
	Voter  bool
	// Down: heartbeats have failed for DownAfter, or it shut down (Away).
	Down bool
	// Dead: down for DeadMemberGrace; to be removed.
	Dead bool
}

func (v memberView) eligibleVoter() bool {
	return v.Known && VoterEligible(v.Member.Role, v.Member.Capability)
}

func (v memberView) candidate() bool {
	return v.Known && !v.Down && v.Member.Role == RoleFull
}

// allowedVoters is the largest of 5, 3, 1 that is at most n and max; 0
// when n is 0. Two voters (or four) never: an even count tolerates no more
// failures than the odd count below it, and two stop when either fails.
func allowedVoters(n, max int) int {
	for _, v := range []int{5, 3, 1} {
		if v <= n && v <= max {
			return v
		}
	}
	return 0
}

// planVoters returns whom to promote and whom to demote so that the voters
// are the most stable live eligible devices, as many as allowedVoters
// permits. Down voters that are not yet dead keep their place while no
// live replacement exists (a rebooting router should not cost the site a
// voter change); dead ones are left to removal. Promotions come first in
// the plan, so the voter count rises before it falls. self (the leader)
// keeps its vote.
func planVoters(views []memberView, maxVoters int, self string) (promote, demote []string) {
	var live, downVoters []memberView
	for _, v := range views {
		switch {
		case v.Dead:
		case !v.Down && (v.eligibleVoter() || (v.ID == self && v.Voter)):
			live = append(live, v)
		case v.Down && v.Voter:
			downVoters = append(downVoters, v)
		}
	}
	n := allowedVoters(len(live)+len(downVoters), maxVoters)
	if n == 0 {
		return nil, nil
	}
	// The leader first (it keeps its vote), then current voters (no churn
	// for a slightly better newcomer), then by stability, then by ID.
	sort.SliceStable(live, func(i, j int) bool {
		a, b := live[i], live[j]
		if (a.ID == self) != (b.ID == self) {
			return a.ID == self
		}
		if a.Voter != b.Voter {
			return a.Voter
		}
		if sa, sb := Stability(a.Member.Capability), Stability(b.Member.Capability); sa != sb {
			return sa > sb
		}
		return a.ID < b.ID
	})
	sort.Slice(downVoters, func(i, j int) bool { return downVoters[i].ID < downVoters[j].ID })
	want := map[string]bool{}
	for _, v := range live {
		if len(want) == n {
			break
		}
		want[v.ID] = true
	}
	for _, v := range downVoters {
		if len(want) == n {
			break
		}
		want[v.ID] = true
	}
	for _, v := range views {
		switch {
		case want[v.ID] && !v.Voter:
			promote = append(promote, v.ID)
		case !want[v.ID] && v.Voter && v.ID != self && !v.Dead:
			demote = append(demote, v.ID)
		}
	}
	sort.Strings(promote)
	sort.Strings(demote)
	return promote, demote
}

// chooseSuperpeers returns the next superpeer set and why it differs from
// current ("" when it does not). Live incumbents stay unless a challenger
// outscores the weakest by more than hysteresis; a down incumbent is
// replaced at once by the best live candidate.
func chooseSuperpeers(current []string, views []memberView, k, hysteresis int) ([]string, string) {
	byID := map[string]memberView{}
	var cands []memberView
	for _, v := range views {
		byID[v.ID] = v
		if v.candidate() {
			cands = append(cands, v)
		}
	}
	better := func(a, b memberView) bool {
		if a.Member.Score != b.Member.Score {
			return a.Member.Score > b.Member.Score
		}
		return a.ID < b.ID
	}
	sort.Slice(cands, func(i, j int) bool { return better(cands[i], cands[j]) })

	var set []memberView
	var reason string
	for _, id := range current {
		if v, ok := byID[id]; ok && v.candidate() {
			set = append(set, v)
		} else if reason == "" {
			reason = "superpeer " + id + " is down or gone"
		}
	}
	sort.Slice(set, func(i, j int) bool { return better(set[i], set[j]) })
	if len(set) > k {
		set = set[:k]
		reason = "fewer superpeers wanted"
	}
	in := func(id string) bool {
		return slices.ContainsFunc(set, func(v memberView) bool { return v.ID == id })
	}
	for _, c := range cands {
		if len(set) >= k {
			break
		}
		if !in(c.ID) {
			set = append(set, c)
			if reason == "" {
				reason = "filling the set with " + c.ID
			}
		}
	}
	// Challengers, best first, against the weakest incumbent.
	for _, c := range cands {
		if in(c.ID) || len(set) == 0 {
			continue
		}
		sort.Slice(set, func(i, j int) bool { return better(set[i], set[j]) })
		weakest := set[len(set)-1]
		if c.Member.Score > weakest.Member.Score+hysteresis {
			set[len(set)-1] = c
			reason = c.ID + " outscores " + weakest.ID
		}
	}
	sort.Slice(set, func(i, j int) bool { return better(set[i], set[j]) })
	ids := make([]string, len(set))
	for i, v := range set {
		ids[i] = v.ID
	}
	if sameMembers(ids, current) {
		return current, ""
	}
	if reason == "" {
		reason = "set changed"
	}
	return ids, reason
}

func sameMembers(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	x, y := slices.Clone(a), slices.Clone(b)
	sort.Strings(x)
	sort.Strings(y)
	return slices.Equal(x, y)
}
