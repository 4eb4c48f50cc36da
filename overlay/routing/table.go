package routing

import (
	"errors"
	"fmt"
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
// that self is the target's root. It considers the links and every node
// they advertised (the neighbours' neighbours) and goes through the link
// that leads to the closest of them; a direct link wins a tie. skip, when
// not nil, excludes nodes (already visited, known dead).
func (t *Table) NextHop(target ID, skip func(ID) bool) (next ID, ok bool) {
	// The first 64 bits decide almost every comparison; Closer settles the
	// rare tie on them.
	t0 := word(&target, 0)
	best := t.self
	bestW := word(&best, 0) ^ t0
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
	for i := range t.links {
		l := &t.links[i]
		if skip != nil && skip(l.id) {
			continue
		}
		for j := range l.peer {
			z := &l.peer[j]
			if closer(z) && *z != t.self && (skip == nil || !skip(*z)) {
				best, bestW, via = *z, word(z, 0)^t0, i
			} else if *z == best && via >= 0 && t.links[via].id != best && Closer(target, l.id, t.links[via].id) {
				// Several neighbours lead to the best node: go through
				// the one nearest the target, whose own view reaches
				// further.
				via = i
			}
		}
	}
	if via < 0 {
		return ID{}, false
	}
	return t.links[via].id, true
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
	return h
}
