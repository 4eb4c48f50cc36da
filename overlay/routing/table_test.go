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
// bucket) greedy routing always ends at the node closest to the key.
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
