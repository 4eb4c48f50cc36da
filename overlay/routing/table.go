package routing

import (
	"errors"
	"fmt"
	"slices"
)

// Config is the shape of a routing table.
type Config struct {
	// Degree is the hard bound D on links, counting links this node asked
	// for and links it accepted alike: every link is a NAT pinhole that
	// the keeper pays keepalives for, and a home NAT allows tens of them,
	// not hundreds. Default 16.
	Degree int
	// Close is how many of the nearest nodes (in XOR distance) the table
	// keeps as links whatever their bucket. They make the last hops of a
	// lookup exact and hold the replicas of the keys near this node.
	// Default 4; must be less than Degree.
	Close int
	// Spare is how many links the table keeps free for its own needs: a
	// request for a link that fills no gap here is accepted only while
	// more than Spare slots are free. Default 2.
	Spare int
}

// DefaultConfig returns the table shape of the appliance: D = 16.
func DefaultConfig() Config { return Config{Degree: 16, Close: 4, Spare: 2} }

// Validate rejects shapes the table cannot keep.
func (c Config) Validate() error {
	switch {
	case c.Degree < 2 || c.Degree > 1024:
		return fmt.Errorf("routing: degree %d: want 2..1024", c.Degree)
	case c.Close < 1 || c.Close >= c.Degree:
		return fmt.Errorf("routing: close set %d: want 1..degree-1 (%d)", c.Close, c.Degree-1)
	case c.Spare < 0 || c.Spare >= c.Degree:
		return fmt.Errorf("routing: spare %d: want 0..degree-1 (%d)", c.Spare, c.Degree-1)
	}
	return nil
}

// MaxReach bounds the entries of a Reach advertisement: 256 prefixes of 4
// bytes fit one datagram, and a D = 16 table never needs more.
const MaxReach = 256

// Prefix returns the first 32 bits of id: how a node three hops away is
// known. Up to billions of nodes, 32 bits tell apart the nodes a lookup
// compares at that distance; the exact choices are made nearer, with full
// IDs.
func Prefix(id ID) uint32 { return uint32(word(&id, 0) >> 32) }

// ErrFull is returned by Add when the table already holds Degree links.
var ErrFull = errors.New("routing table full")

// ErrDuplicate is returned by Add for a peer already linked.
var ErrDuplicate = errors.New("already linked")

type link struct {
	id     ID
	bucket int
	// peer is the neighbour's own link set as it last advertised it: the
	// lookahead that lets a lookup use 2-hop knowledge at no pinhole cost.
	peer []ID
	// reach is what the neighbour's neighbours link to, as the neighbour
	// last advertised it (Reach): 3-hop knowledge, as ID prefixes.
	reach []uint32
}

// Table is one node's routing table. It is not safe for concurrent use;
// the owner guards it.
type Table struct {
	self  ID
	cfg   Config
	links []link
}

// NewTable returns an empty table for self. cfg must be valid.
func NewTable(self ID, cfg Config) *Table {
	return &Table{self: self, cfg: cfg, links: make([]link, 0, cfg.Degree)}
}

// Self returns the table owner's ID.
func (t *Table) Self() ID { return t.self }

// Config returns the table's shape.
func (t *Table) Config() Config { return t.cfg }

// Len returns the number of links.
func (t *Table) Len() int { return len(t.links) }

// Links returns the linked peers (a copy).
func (t *Table) Links() []ID {
	out := make([]ID, len(t.links))
	for i := range t.links {
		out[i] = t.links[i].id
	}
	return out
}

// Has reports whether id is linked.
func (t *Table) Has(id ID) bool { return t.index(id) >= 0 }

func (t *Table) index(id ID) int {
	for i := range t.links {
		if t.links[i].id == id {
			return i
		}
	}
	return -1
}

// Add links id. It never lets the table grow past Degree links.
func (t *Table) Add(id ID) error {
	switch {
	case id == t.self:
		return fmt.Errorf("adding link: %w: own ID", ErrBadID)
	case t.Has(id):
		return fmt.Errorf("adding link to %s: %w", id.Short(), ErrDuplicate)
	case len(t.links) >= t.cfg.Degree:
		return fmt.Errorf("adding link to %s: %w (%d links)", id.Short(), ErrFull, len(t.links))
	}
	// Keep the links sorted nearest first: the close set is a prefix and
	// the links of one bucket are a run.
	i := t.closeRank(id)
	t.links = append(t.links, link{})
	copy(t.links[i+1:], t.links[i:])
	t.links[i] = link{id: id, bucket: CommonPrefixLen(t.self, id)}
	return nil
}

// Remove drops the link to id and what it advertised; it reports whether
// there was one.
func (t *Table) Remove(id ID) bool {
	i := t.index(id)
	if i < 0 {
		return false
	}
	copy(t.links[i:], t.links[i+1:])
	t.links[len(t.links)-1] = link{}
	t.links = t.links[:len(t.links)-1]
	return true
}

// SetPeerLinks records the link set a neighbour advertised. The table keeps
// the slice as given: the caller must not modify it afterwards. It reports
// whether peer is linked (advertisements from others are ignored).
func (t *Table) SetPeerLinks(peer ID, links []ID) bool {
	i := t.index(peer)
	if i < 0 {
		return false
	}
	t.links[i].peer = links
	return true
}

// PeerLinks returns what peer last advertised (nil when not linked).
func (t *Table) PeerLinks(peer ID) []ID {
	if i := t.index(peer); i >= 0 {
		return t.links[i].peer
	}
	return nil
}

// SetPeerReach records the reach a neighbour advertised (its Reach: the
// prefixes of the nodes its own neighbours link to). The table keeps the
// slice as given: the caller must not modify it afterwards. It reports
// whether peer is linked (advertisements from others are ignored).
func (t *Table) SetPeerReach(peer ID, reach []uint32) bool {
	i := t.index(peer)
	if i < 0 {
		return false
	}
	t.links[i].reach = reach
	return true
}

// PeerReach returns the reach peer last advertised (nil when not linked).
func (t *Table) PeerReach(peer ID) []uint32 {
	if i := t.index(peer); i >= 0 {
		return t.links[i].reach
	}
	return nil
}

// Reach returns what this node advertises to its neighbours beside its
// links: the prefixes of every node its neighbours advertised (its 2-hop
// set, which is 3 hops from the neighbour that receives it), self
// excluded, sorted and without duplicates. It costs no pinhole and lets
// each neighbour choose its next hop knowing three hops ahead. With D = 16
// it holds at most 16 * 15 = 240 entries; a larger table keeps MaxReach
// of them, evenly spread over the ID space.
func (t *Table) Reach() []uint32 {
	n := 0
	for i := range t.links {
		n += len(t.links[i].peer)
	}
	out := make([]uint32, 0, n)
	self := Prefix(t.self)
	for i := range t.links {
		for j := range t.links[i].peer {
			if p := Prefix(t.links[i].peer[j]); p != self {
				out = append(out, p)
			}
		}
	}
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) > MaxReach {
		kept := make([]uint32, MaxReach)
		for i := range kept {
			kept[i] = out[i*len(out)/MaxReach]
		}
		out = kept
	}
	return slices.Clip(out)
}

// bucketCount returns how many links fall in bucket b.
func (t *Table) bucketCount(b int) int {
	n := 0
	for i := range t.links {
		if t.links[i].bucket == b {
			n++
		}
	}
	return n
}

// closeRank returns how many links are nearer to self than id.
func (t *Table) closeRank(id ID) int {
	lo, hi := 0, len(t.links)
	for lo < hi {
		m := (lo + hi) / 2
		if Closer(t.self, t.links[m].id, id) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// fillsGap reports whether c's bucket holds no link.
func (t *Table) fillsGap(c ID) bool { return t.bucketCount(CommonPrefixLen(t.self, c)) == 0 }

// closeCandidate reports whether c would be among the Close nearest.
func (t *Table) closeCandidate(c ID) bool { return t.closeRank(c) < t.cfg.Close }

// useful reports whether a link to c would fill an empty bucket or belong
// to the close set.
func (t *Table) useful(c ID) bool {
	if c == t.self || t.Has(c) {
		return false
	}
	return t.fillsGap(c) || t.closeCandidate(c)
}

// Wants reports whether this node should ask c for a link: c fills an
// empty bucket or is among the Close nearest, and there is a free slot or
// a link to give up for it (see Evict).
func (t *Table) Wants(c ID) bool {
	if !t.useful(c) {
		return false
	}
	if len(t.links) < t.cfg.Degree {
		return true
	}
	_, ok := t.Evict(c)
	return ok
}

// Accepts reports whether this node should accept c's request for a link:
// when it wants c anyway, or while more than Spare slots are free.
func (t *Table) Accepts(c ID) bool {
	if c == t.self || t.Has(c) {
		return false
	}
	return t.Wants(c) || len(t.links) < t.cfg.Degree-t.cfg.Spare
}

// Evict returns the link to give up so that c can be linked when the
// table is full. Links are static: one is given up only so that an empty
// bucket or the close set can be filled, and never one of the close set.
// The first choice is a redundant link (one sharing its bucket with
// another), from the most crowded bucket, farthest first. For a new close
// neighbour, when no link is redundant, the link of the shallowest bucket
// goes: that bucket is the one the neighbours' neighbours cover best
// (every neighbour deeper than it has a link there).
func (t *Table) Evict(c ID) (ID, bool) {
	if !t.useful(c) {
		return ID{}, false
	}
	if v, ok := t.evictRedundant(); ok {
		return v, true
	}
	if t.closeCandidate(c) && len(t.links) > t.cfg.Close {
		return t.links[len(t.links)-1].id, true
	}
	return ID{}, false
}

// EvictForOrphan returns the link to give up so that a node with no links
// at all can have one here, when the table is full and would otherwise
// refuse it: a redundant link first, else the link of the shallowest
// bucket outside the close set. A node left without links is worse for
// the overlay than any gap.
func (t *Table) EvictForOrphan() (ID, bool) {
	if v, ok := t.evictRedundant(); ok {
		return v, true
	}
	if len(t.links) > t.cfg.Close {
		return t.links[len(t.links)-1].id, true
	}
	return ID{}, false
}

// evictRedundant returns the farthest link of the most crowded bucket
// outside the close set, if a bucket holds more than one link.
func (t *Table) evictRedundant() (ID, bool) {
	best, bestRun := -1, 1
	// Runs of one bucket are contiguous; walk them from the far end.
	for end := len(t.links); end > t.cfg.Close; {
		start := end - 1
		for start > 0 && t.links[start-1].bucket == t.links[end-1].bucket {
			start--
		}
		run := end - max(start, 0)
		if run > bestRun {
			best, bestRun = end-1, run
		}
		end = start
	}
	if best < 0 {
		return ID{}, false
	}
	return t.links[best].id, true
}

// NextHop returns the neighbour to forward a message for target to, or
// ok=false when no node this table knows is closer to target than self, so
// that self is the target's root. It considers every node known up to
// three hops out: the links, what they advertised (the neighbours'
// neighbours, full IDs) and their reach (the nodes one step further, by
// prefix), and goes through the link that leads to the closest of them.
// A node known nearer wins a tie: a direct link over the same node two
// hops out, a full ID over a prefix that cannot be told closer. When
// several neighbours lead to the best node, the one nearest the target
// goes, its own view reaching further. skip, when not nil, excludes
// nodes (already tried, suspected dead) as next hops and as targets.
func (t *Table) NextHop(target ID, skip func(ID) bool) (next ID, ok bool) {
	return t.nextHop(target, t.self, skip, nil, true)
}

// nextHop is NextHop for a way to a node closer than floor; deadPrefixes
// also excludes nodes three hops out, and far=false leaves them out
// altogether.
func (t *Table) nextHop(target, floor ID, skip func(ID) bool, deadPrefixes []uint32, far bool) (next ID, ok bool) {
	// The first 64 bits decide almost every comparison; Closer settles the
	// rare tie on them.
	t0 := word(&target, 0)
	best := floor
	bestW := word(&best, 0) ^ t0
	known := true // best is a full ID, not a prefix three hops out
	closer := func(z *ID) bool {
		w := word(z, 0) ^ t0
		return w < bestW || (w == bestW && Closer(target, *z, best))
	}
	via := -1
	for i := range t.links {
		id := &t.links[i].id
		if closer(id) && (skip == nil || !skip(*id)) {
			best, bestW, via = *id, word(id, 0)^t0, i
		}
	}
	// better reports whether neighbour i is a better way to a node as good
	// as the best: nearer the target itself.
	better := func(i int) bool {
		return via >= 0 && t.links[via].id != best && Closer(target, t.links[i].id, t.links[via].id)
	}
	for i := range t.links {
		l := &t.links[i]
		if skip != nil && skip(l.id) {
			continue
		}
		for j := range l.peer {
			z := &l.peer[j]
			if closer(z) && *z != t.self && (skip == nil || !skip(*z)) {
				best, bestW, via = *z, word(z, 0)^t0, i
			} else if *z == best && better(i) {
				via = i
			}
		}
	}
	// Three hops out only a prefix is known: it wins only when its 32
	// bits alone say it is closer than the best (its distance counts as
	// the worst its other bits could make it).
	t32 := uint32(t0 >> 32)
	for i := range t.links {
		l := &t.links[i]
		if !far || len(l.reach) == 0 || (skip != nil && skip(l.id)) {
			continue
		}
		bestHi := uint32(bestW >> 32)
		for _, p := range l.reach {
			d := p ^ t32
			if d < bestHi && (deadPrefixes == nil || !slices.Contains(deadPrefixes, p)) {
				bestHi = d
				bestW, via, known = uint64(d)<<32|0xffffffff, i, false
			} else if d == bestHi && !known && Closer(target, l.id, t.links[via].id) {
				via = i
			}
		}
	}
	if via < 0 {
		return ID{}, false
	}
	return t.links[via].id, true
}

// Route is what a message's next hop depends on beside the table.
type Route struct {
	// Target is the key or node ID the message is for.
	Target ID
	// Path is the nodes the message passed, origin first, the node that
	// holds it now not included.
	Path []ID
	// Dead is the nodes that did not acknowledge the message on its way
	// (it carries them): no node sends it to them or toward them.
	Dead []ID
}

// Forward returns the neighbour a message goes to next from this node, or
// ok=false when it ends here. avoid (may be nil) excludes neighbours this
// node knows not to answer.
//
// The choice is NextHop's, with what the message learnt on its way. The
// message goes on only toward a node closer to the target than any it
// has passed (the closest it passed, or this node, is where it ends
// otherwise); it goes neither to nor toward a node in r.Dead, and not back
// to a node it passed. A node that can offer no such way sends the message
// back to the node it came from, which chose this way for a closer node
// that is not there (dead, or gone from an advertisement): that node does
// not go this way again, and looks no further than two hops, where what it
// knows is exact. A lookup for the origin's own ID (a joining node finding
// its neighbourhood) never ends at the origin.
func (t *Table) Forward(r Route, avoid func(ID) bool) (next ID, ok bool) {
	own := len(r.Path) > 0 && r.Path[0] == r.Target
	floor := t.self // the closest node the message reached
	var sent []ID   // where this node sent the message before
	for i, p := range r.Path {
		if i+1 < len(r.Path) && p == t.self {
			sent = append(sent, r.Path[i+1])
		}
		if !(own && i == 0) && Closer(r.Target, p, floor) {
			floor = p
		}
	}
	var skip func(ID) bool
	if len(r.Path) > 0 || avoid != nil || len(r.Dead) > 0 {
		skip = func(id ID) bool {
			return slices.Contains(r.Path, id) || slices.Contains(r.Dead, id) || (avoid != nil && avoid(id))
		}
	}
	var dead []uint32
	for _, d := range r.Dead {
		dead = append(dead, Prefix(d))
	}
	if next, ok := t.nextHop(r.Target, floor, skip, dead, len(sent) == 0); ok {
		return next, true
	}
	if floor == t.self || len(r.Path) == 0 {
		return ID{}, false
	}
	back := r.Path[len(r.Path)-1]
	if back == t.self || !t.Has(back) || slices.Contains(r.Dead, back) || (avoid != nil && avoid(back)) {
		return ID{}, false
	}
	return back, true
}

// Next is Forward at a node that knows some neighbours not to answer:
// down reports them (no session, or silent since a message to them went
// unacknowledged). A neighbour the choice would go to that is down is
// added to r.Dead, while there is room, so that the nodes after this one
// keep away from it too, and the choice is made again.
func (t *Table) Next(r *Route, down func(ID) bool) (next ID, ok bool) {
	for {
		next, ok := t.Forward(*r, nil)
		if !ok || down == nil || !down(next) {
			return next, ok
		}
		if len(r.Dead) >= MaxDead {
			return t.Forward(*r, down)
		}
		r.Dead = append(r.Dead, next)
	}
}

// MaxDead bounds the nodes a message carries as not answering.
const MaxDead = 16

// MaxHops bounds a route: the hop limit a message starts with.
const MaxHops = 32

// MaxTries bounds how many neighbours one node tries for one message, one
// after another, each time the last one did not acknowledge it: with a
// tenth of the nodes failed at once, the chance that four in a row are
// dead is 1 in 10,000.
const MaxTries = 4

// AmongClosest reports whether self is among the r nodes closest to key
// that this table knows (links and what they advertised): a node that is
// holds a replica of the key's record, and answers a get for it on the
// way to the root.
func (t *Table) AmongClosest(key ID, r int) bool {
	return slices.Contains(t.Closest(key, r, nil), t.self)
}

// Closest returns up to n known nodes closest to target, self included,
// nearest first: links and what they advertised. skip excludes nodes.
func (t *Table) Closest(target ID, n int, skip func(ID) bool) []ID {
	out := make([]ID, 0, n+1)
	consider := func(id ID) {
		if skip != nil && skip(id) {
			return
		}
		for _, x := range out {
			if x == id {
				return
			}
		}
		if len(out) == n && !Closer(target, id, out[n-1]) {
			return
		}
		if len(out) < n {
			out = append(out, id)
		} else {
			out[n-1] = id
		}
		for i := len(out) - 1; i > 0 && Closer(target, out[i], out[i-1]); i-- {
			out[i], out[i-1] = out[i-1], out[i]
		}
	}
	consider(t.self)
	for i := range t.links {
		consider(t.links[i].id)
	}
	for i := range t.links {
		for _, z := range t.links[i].peer {
			consider(z)
		}
	}
	return out
}

// Gaps returns the empty buckets worth filling, deepest first: those
// above the deepest bucket that holds a link (below it a bucket is empty
// because the overlay has nobody there). A lookup for RandomInBucket finds
// a candidate for each.
func (t *Table) Gaps() []int {
	if len(t.links) >= t.cfg.Degree {
		if _, ok := t.evictRedundant(); !ok {
			return nil // full, and nothing to give up for a gap
		}
	}
	deepest := -1
	for i := range t.links {
		deepest = max(deepest, t.links[i].bucket)
	}
	var gaps []int
	for b := deepest - 1; b >= 0; b-- {
		if t.bucketCount(b) == 0 {
			gaps = append(gaps, b)
		}
	}
	return gaps
}

// Health is a summary of a table for status output.
type Health struct {
	Links   int `json:"links"`
	Degree  int `json:"degree"`
	Buckets int `json:"buckets_filled"`
	Gaps    int `json:"gaps"`
	Close   int `json:"close_links"`
	// Lookahead is how many distinct nodes the neighbours advertised.
	Lookahead int `json:"lookahead"`
	// Reach is how many distinct nodes three hops out the neighbours
	// advertised (by prefix).
	Reach int `json:"reach"`
}

// Health summarises the table.
func (t *Table) Health() Health {
	h := Health{Links: len(t.links), Degree: t.cfg.Degree, Gaps: len(t.Gaps())}
	seen := map[int]bool{}
	non := map[ID]bool{}
	for i := range t.links {
		seen[t.links[i].bucket] = true
		for _, z := range t.links[i].peer {
			if z != t.self {
				non[z] = true
			}
		}
	}
	h.Buckets = len(seen)
	h.Close = min(len(t.links), t.cfg.Close)
	h.Lookahead = len(non)
	far := map[uint32]bool{}
	for i := range t.links {
		for _, p := range t.links[i].reach {
			far[p] = true
		}
	}
	h.Reach = len(far)
	return h
}
