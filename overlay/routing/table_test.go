package routing

import (
	"errors"
	"math/rand/v2"
	"testing"
)

func randomID(r *rand.Rand) ID {
	var id ID
	for i := range id {
		id[i] = byte(r.UintN(256))
	}
	return id
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"default", DefaultConfig(), true},
		{"degree 1", Config{Degree: 1, Close: 1}, false},
		{"close set as large as the degree", Config{Degree: 4, Close: 4}, false},
		{"negative spare", Config{Degree: 4, Close: 1, Spare: -1}, false},
	}
	for _, tc := range cases {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestAddNeverExceedsDegree(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	tb := NewTable(randomID(r), Config{Degree: 5, Close: 2, Spare: 1})
	for i := 0; i < 100; i++ {
		c := randomID(r)
		err := tb.Add(c)
		if tb.Len() > 5 {
			t.Fatalf("table holds %d links, bound 5", tb.Len())
		}
		if i >= 5 && !errors.Is(err, ErrFull) {
			t.Fatalf("add to a full table: %v, want ErrFull", err)
		}
	}
	if err := tb.Add(tb.Self()); !errors.Is(err, ErrBadID) {
		t.Fatalf("linking to self: %v, want ErrBadID", err)
	}
}

// Links are static: a full table gives a link up only for a gap or a
// closer neighbour, and never one of its close set.
func TestEvictOnlyForGapsAndCloseSet(t *testing.T) {
	var self ID
	tb := NewTable(self, Config{Degree: 4, Close: 1})
	id := func(b0, b1 byte) ID { return ID{b0, b1} }
	near := id(0x00, 0x01) // bucket 15, the close set
	far1 := id(0x80, 0x00) // bucket 0
	far2 := id(0xc0, 0x00) // bucket 0 too: redundant
	mid := id(0x20, 0x00)  // bucket 2
	for _, c := range []ID{near, far1, far2, mid} {
		if err := tb.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	if tb.Wants(id(0xa0, 0)) {
		t.Fatal("a full table wants a third link in a bucket it already holds twice")
	}
	gap := id(0x10, 0) // bucket 3, empty
	v, ok := tb.Evict(gap)
	if !ok || (v != far1 && v != far2) {
		t.Fatalf("evict for a gap = %v, %v; want one of the two bucket-0 links", v.Short(), ok)
	}
	if v == near {
		t.Fatal("evicted the close neighbour")
	}
	if got := tb.Gaps(); len(got) == 0 || got[0] != 14 {
		t.Fatalf("gaps = %v, want the empty buckets above the deepest link, deepest first", got)
	}
}

// With complete knowledge (every node linked to one node per non-empty
// bucket, its neighbours' links and their reach advertised) greedy routing
// always ends at the node closest to the key.
func TestNextHopEndsAtRoot(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const n = 300
	ids := make([]ID, n)
	for i := range ids {
		ids[i] = randomID(r)
	}
	tables := map[ID]*Table{}
	for _, a := range ids {
		tb := NewTable(a, Config{Degree: 64, Close: 4})
		for _, b := range ids {
			if a != b && tb.Wants(b) {
				_ = tb.Add(b)
			}
		}
		tables[a] = tb
	}
	for _, tb := range tables {
		for _, p := range tb.Links() {
			tb.SetPeerLinks(p, tables[p].Links())
		}
	}
	for _, tb := range tables {
		for _, p := range tb.Links() {
			tb.SetPeerReach(p, tables[p].Reach())
		}
	}
	for i := 0; i < 500; i++ {
		key := randomID(r)
		root := ids[0]
		for _, x := range ids {
			if Closer(key, x, root) {
				root = x
			}
		}
		cur, hops := ids[r.IntN(n)], 0
		for {
			next, ok := tables[cur].NextHop(key, nil)
			if !ok {
				break
			}
			cur = next
			if hops++; hops > 20 {
				t.Fatal("route did not end in 20 hops")
			}
		}
		if cur != root {
			t.Fatalf("lookup %d ended at %s, root is %s", i, cur.Short(), root.Short())
		}
	}
}

func TestOrphanGetsRoomButNotTheCloseSet(t *testing.T) {
	var self ID
	tb := NewTable(self, Config{Degree: 3, Close: 1})
	near, mid, far := ID{0, 1}, ID{0x20}, ID{0x80}
	for _, c := range []ID{near, mid, far} {
		if err := tb.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	orphan := ID{0x81}
	if tb.Accepts(orphan) {
		t.Fatal("full table accepts a node that fills nothing")
	}
	v, ok := tb.EvictForOrphan()
	if !ok || v != far {
		t.Fatalf("room for an orphan: gives up %s, %v; want the shallowest link %s", v.Short(), ok, far.Short())
	}
	small := NewTable(self, Config{Degree: 2, Close: 1})
	_ = small.Add(near)
	if _, ok := small.EvictForOrphan(); ok {
		t.Fatal("gave up the close set for an orphan")
	}
}

// idWith returns an ID whose first bytes are prefix and the rest zero.
func idWith(prefix ...byte) ID {
	var id ID
	copy(id[:], prefix)
	return id
}

// A node known only three hops out (by the prefix in a neighbour's reach)
// draws the message through that neighbour; a prefix that cannot be told
// closer than a node known exactly does not.
func TestNextHopLooksThreeHopsAhead(t *testing.T) {
	self := idWith(0x00)
	tb := NewTable(self, DefaultConfig())
	a, b := idWith(0x40), idWith(0x20)
	for _, id := range []ID{a, b} {
		if err := tb.Add(id); err != nil {
			t.Fatal(err)
		}
	}
	tb.SetPeerLinks(a, []ID{self, idWith(0xc0)})
	tb.SetPeerLinks(b, []ID{self, idWith(0x90)})
	key := idWith(0xf0, 0x01)
	if next, ok := tb.NextHop(key, nil); !ok || next != a {
		t.Fatalf("two hops ahead: next %s, want %s (its neighbour 0xc0 is the closest known)", next.Short(), a.Short())
	}
	// b's neighbours link to a node whose prefix is closer than anything
	// a leads to.
	tb.SetPeerReach(b, []uint32{Prefix(idWith(0xf0, 0x00, 0x00, 0x10))})
	if next, ok := tb.NextHop(key, nil); !ok || next != b {
		t.Fatalf("three hops ahead: next %s, want %s", next.Short(), b.Short())
	}
	// A prefix equal to an exactly known node's cannot be told closer.
	tb.SetPeerLinks(a, []ID{self, idWith(0xf0, 0x01, 0x00, 0x00, 0x01)})
	tb.SetPeerReach(b, []uint32{Prefix(idWith(0xf0, 0x01))})
	if next, ok := tb.NextHop(key, nil); !ok || next != a {
		t.Fatalf("prefix tie: next %s, want the exactly known way %s", next.Short(), a.Short())
	}
}

// Reach is what a node advertises of its neighbours' links: sorted,
// without duplicates or itself, and bounded for a wider table.
func TestReachAdvertisement(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	self := randomID(r)
	tb := NewTable(self, DefaultConfig())
	var shared ID = randomID(r)
	for i := 0; i < 16; i++ {
		p := randomID(r)
		if err := tb.Add(p); err != nil {
			t.Fatal(err)
		}
		links := []ID{self, shared}
		for j := 0; j < 14; j++ {
			links = append(links, randomID(r))
		}
		tb.SetPeerLinks(p, links)
	}
	reach := tb.Reach()
	if want := 1 + 16*14; len(reach) != want {
		t.Fatalf("reach of %d entries, want %d (each neighbour's 14 own links and the one they share)", len(reach), want)
	}
	for i := range reach {
		if reach[i] == Prefix(self) {
			t.Fatal("reach holds the node itself")
		}
		if i > 0 && reach[i] <= reach[i-1] {
			t.Fatal("reach not sorted without duplicates")
		}
	}
	wide := NewTable(self, Config{Degree: 64, Close: 4, Spare: 2})
	for i := 0; i < 64; i++ {
		p := randomID(r)
		_ = wide.Add(p)
		links := make([]ID, 64)
		for j := range links {
			links[j] = randomID(r)
		}
		wide.SetPeerLinks(p, links)
	}
	if got := len(wide.Reach()); got != MaxReach {
		t.Fatalf("a D = 64 table advertises %d entries, want the bound %d", got, MaxReach)
	}
}

// Forward keeps a message away from the nodes it learnt are dead, does
// not send it the way it already went from this node, and sends it back
// when this node cannot bring it closer than a node it passed.
func TestForwardAroundDeadAndBack(t *testing.T) {
	self := idWith(0x00)
	tb := NewTable(self, DefaultConfig())
	near, mid, prev := idWith(0xf0), idWith(0xc0), idWith(0x08)
	for _, id := range []ID{near, mid, prev} {
		if err := tb.Add(id); err != nil {
			t.Fatal(err)
		}
	}
	far := idWith(0xf8) // two hops out, through mid
	tb.SetPeerLinks(mid, []ID{self, far})
	key := idWith(0xff)
	path := []ID{prev}
	next, ok := tb.Forward(Route{Target: key, Path: path}, nil)
	if !ok || next != mid {
		t.Fatalf("next %s, want %s toward the closest node two hops out", next.Short(), mid.Short())
	}
	next, ok = tb.Forward(Route{Target: key, Path: path, Dead: []ID{far}}, nil)
	if !ok || next != near {
		t.Fatalf("with the far node dead: next %s, want %s", next.Short(), near.Short())
	}
	// The message went to mid before and came back: not that way again.
	next, ok = tb.Forward(Route{Target: key, Path: []ID{prev, self, mid}}, nil)
	if !ok || next != near {
		t.Fatalf("back from mid: next %s, want %s", next.Short(), near.Short())
	}
	// Nothing left closer than prev, which the message passed: back to it.
	back := NewTable(self, DefaultConfig())
	lead := idWith(0x01)
	_ = back.Add(lead)
	closerPrev := idWith(0xfe)
	_ = back.Add(closerPrev)
	next, ok = back.Forward(Route{Target: key, Path: []ID{closerPrev}}, nil)
	if !ok || next != closerPrev {
		t.Fatalf("no way on: next %s %v, want back to %s", next.Short(), ok, closerPrev.Short())
	}
	// Where the message passed no closer node, it ends here.
	end := NewTable(self, DefaultConfig())
	_ = end.Add(lead)
	if next, ok := end.Forward(Route{Target: idWith(0x02), Path: []ID{lead}}, nil); ok {
		t.Fatalf("closest node on the path: forwarded to %s, want the route to end here", next.Short())
	}
}

// Next adds the neighbours the node knows to be down to the message's
// dead list, never past MaxDead, and still avoids them when it is full.
func TestNextLearnsDownNeighbours(t *testing.T) {
	self := idWith(0x00)
	tb := NewTable(self, DefaultConfig())
	var ids []ID
	for i := 1; i <= 6; i++ {
		id := idWith(byte(0x80+i), 0, 0, 0, 1)
		ids = append(ids, id)
		_ = tb.Add(id)
	}
	key := idWith(0xff)
	down := func(id ID) bool { return id != ids[0] }
	r := Route{Target: key}
	next, ok := tb.Next(&r, down)
	if !ok || next != ids[0] {
		t.Fatalf("next %s, want the one neighbour up %s", next.Short(), ids[0].Short())
	}
	if len(r.Dead) != 5 {
		t.Fatalf("dead list %d, want the 5 neighbours closer than it", len(r.Dead))
	}
	full := Route{Target: key, Dead: make([]ID, MaxDead)}
	next, ok = tb.Next(&full, down)
	if !ok || next != ids[0] || len(full.Dead) != MaxDead {
		t.Fatalf("full dead list: next %s, dead %d; want %s and %d", next.Short(), len(full.Dead), ids[0].Short(), MaxDead)
	}
}
