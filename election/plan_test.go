package election

import (
	"slices"
	"testing"
)

func view(id string, c Capability, role Role, voter bool) memberView {
	return memberView{ID: id, Known: true, Voter: voter,
		Member: Member{ID: id, Role: role, Capability: c, Score: Score(c)}}
}

func down(v memberView) memberView { v.Down = true; return v }
func dead(v memberView) memberView { v.Down, v.Dead = true, true; return v }

func TestAllowedVotersIsNeverEven(t *testing.T) {
	want := []int{0, 1, 1, 3, 3, 5, 5, 5}
	for n, w := range want {
		if got := allowedVoters(n, 5); got != w {
			t.Errorf("allowedVoters(%d, 5) = %d, want %d", n, got, w)
		}
	}
	if got := allowedVoters(5, 3); got != 3 {
		t.Errorf("allowedVoters(5, 3) = %d", got)
	}
}

func TestPlanVoters(t *testing.T) {
	router, board, desk := capRouter, capBoard, capDesktop
	cases := []struct {
		name            string
		views           []memberView
		max             int
		promote, demote []string
	}{
		{
			name:    "founder alone with four newcomers: the three most stable vote",
			views:   []memberView{view("a", desk, RoleFull, true), view("b", router, RoleFull, false), view("c", board, RoleFull, false), view("d", capLaptop, RoleFull, false), view("e", desk, RolePeer, false)},
			max:     5,
			promote: []string{"b", "c"},
		},
		{
			name:  "two eligible: one voter, never two",
			views: []memberView{view("a", router, RoleFull, true), view("b", board, RoleFull, false), view("d", capLaptop, RoleFull, false)},
			max:   5,
		},
		{
			name:   "two voters after a removal: back to one",
			views:  []memberView{view("a", desk, RoleFull, true), view("b", router, RoleFull, true)},
			max:    5,
			demote: []string{"a"},
		},
		{
			name:  "a down voter keeps its place while no replacement exists",
			views: []memberView{view("a", router, RoleFull, true), view("b", board, RoleFull, true), down(view("c", desk, RoleFull, true))},
			max:   5,
		},
		{
			name:    "a down voter is replaced by a live eligible peer",
			views:   []memberView{view("a", router, RoleFull, true), view("b", board, RoleFull, true), down(view("c", desk, RoleFull, true)), view("d", desk, RoleFull, false)},
			max:     5,
			promote: []string{"d"},
			demote:  []string{"c"},
		},
		{
			name:  "a dead voter is left to removal",
			views: []memberView{view("a", router, RoleFull, true), view("b", board, RoleFull, true), dead(view("c", desk, RoleFull, true)), view("d", desk, RoleFull, false)},
			max:   5,
			// a live peer takes the vote; c goes with its removal
			promote: []string{"d"},
		},
		{
			name:  "incumbent voters are not churned for a slightly better newcomer",
			views: []memberView{view("a", desk, RoleFull, true), view("b", router, RoleFull, false)},
			max:   5,
		},
		{
			name:   "the leader keeps its vote",
			views:  []memberView{view("self", desk, RoleFull, true), view("b", router, RoleFull, true)},
			max:    5,
			demote: []string{"b"},
		},
		{
			name:  "MaxVoters 1",
			views: []memberView{view("a", router, RoleFull, true), view("b", board, RoleFull, false), view("c", desk, RoleFull, false)},
			max:   1,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			promote, demote := planVoters(c.views, c.max, "self")
			if !slices.Equal(promote, c.promote) || !slices.Equal(demote, c.demote) {
				t.Errorf("promote %v demote %v, want %v and %v", promote, demote, c.promote, c.demote)
			}
			// Carrying out the plan never leaves an even number of voters
			// unless a down voter awaits removal.
			voters := map[string]bool{}
			for _, v := range c.views {
				if v.Voter && !v.Dead {
					voters[v.ID] = true
				}
			}
			for _, id := range promote {
				voters[id] = true
			}
			for _, id := range demote {
				delete(voters, id)
			}
			if len(voters)%2 == 0 && len(voters) > 0 {
				t.Errorf("plan ends with %d voters", len(voters))
			}
		})
	}
}

func TestChooseSuperpeers(t *testing.T) {
	pub := capRouter                                                                                // 4000+
	mapped := capBoard                                                                              // 3000+
	eim := capDesktop                                                                               // 2000+
	eimBetter := Capability{Reachability: ReachEIM, Class: ClassRouter, Power: PowerMains, CPUs: 8} // eim + 100ish
	cases := []struct {
		name    string
		current []string
		views   []memberView
		k       int
		want    []string
		changed bool
	}{
		{
			name:    "empty set filled best first",
			views:   []memberView{view("a", eim, RoleFull, true), view("b", pub, RoleFull, true), view("c", mapped, RoleFull, true)},
			k:       2,
			want:    []string{"b", "c"},
			changed: true,
		},
		{
			name:    "a desktop agent is never chosen",
			views:   []memberView{view("a", pub, RolePeer, false), view("b", eim, RoleFull, true)},
			k:       2,
			want:    []string{"b"},
			changed: true,
		},
		{
			name:    "hysteresis: a slightly better challenger waits",
			current: []string{"b", "a"},
			views:   []memberView{view("a", eim, RoleFull, true), view("b", pub, RoleFull, true), view("c", eimBetter, RoleFull, true)},
			k:       2,
			want:    []string{"b", "a"},
		},
		{
			name:    "a much better challenger replaces the weakest",
			current: []string{"b", "a"},
			views:   []memberView{view("a", eim, RoleFull, true), view("b", pub, RoleFull, true), view("c", mapped, RoleFull, true)},
			k:       2,
			want:    []string{"b", "c"},
			changed: true,
		},
		{
			name:    "a down superpeer is replaced at once, even by a weaker one",
			current: []string{"b", "c"},
			views:   []memberView{view("a", eim, RoleFull, true), view("b", pub, RoleFull, true), down(view("c", mapped, RoleFull, true))},
			k:       2,
			want:    []string{"b", "a"},
			changed: true,
		},
		{
			name:    "a gone superpeer is replaced",
			current: []string{"b", "zz"},
			views:   []memberView{view("a", eim, RoleFull, true), view("b", pub, RoleFull, true)},
			k:       2,
			want:    []string{"b", "a"},
			changed: true,
		},
		{
			name:    "k shrinks",
			current: []string{"b", "a"},
			views:   []memberView{view("a", eim, RoleFull, true), view("b", pub, RoleFull, true)},
			k:       1,
			want:    []string{"b"},
			changed: true,
		},
		{
			name:    "order alone is no change",
			current: []string{"a", "b"},
			views:   []memberView{view("a", eim, RoleFull, true), view("b", pub, RoleFull, true)},
			k:       2,
			want:    []string{"a", "b"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, reason := chooseSuperpeers(c.current, c.views, c.k, 150)
			if !slices.Equal(got, c.want) || (reason != "") != c.changed {
				t.Errorf("got %v (reason %q), want %v (changed %v)", got, reason, c.want, c.changed)
			}
		})
	}
}
