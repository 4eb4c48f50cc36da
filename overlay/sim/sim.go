// Package sim is a discrete-event simulator of the overlay. It drives the
// real routing code (overlay/routing: the table with its degree bound, the
// link choice, the next-hop choice that looks three hops ahead, the retry
// of the next-best neighbour when one does not answer, the replica test
// that lets a get end on the way) with up to 100,000 nodes in one process
// and replaces only the network: a message is a function call, a link is a
// pair of table entries, an advertisement is a slice handed over, and a
// failed node is one that stops answering. It measures what the appliance
// would see: links per node, hops per lookup and how many lookups reach the
// key's true root (a routed message) or a live replica of its record (a
// get), healthy, right after a tenth of the nodes fail at once, and under
// churn.
package sim

import (
	"bytes"
	"container/heap"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/superpeer/superpeer/overlay/routing"
)

// Config describes one simulated overlay.
type Config struct {
	// N is the number of nodes.
	N int
	// Table is the routing-table shape every node uses.
	Table routing.Config
	// Seed makes a run repeatable.
	Seed uint64
	// Lookups is the number of lookups measured per phase.
	Lookups int
	// FailFraction of the nodes fail at once in the failure phase.
	FailFraction float64
	// RepairRounds is how many maintenance rounds run after the joins.
	RepairRounds int
	// Churn is how long (simulated) the churn phase lasts; 0 skips it.
	Churn time.Duration
	// SessionMean is the mean lifetime of a node under churn.
	SessionMean time.Duration
	// Keepalive is how long a node takes to notice that a neighbour died.
	Keepalive time.Duration
	// MaintainEvery is the period of a node's table maintenance.
	MaintainEvery time.Duration
	// MaxHops bounds a route.
	MaxHops int
	// Replicas is r, how many nodes closest to a key hold its record.
	Replicas int
}

// DefaultConfig returns the configuration of `make sim` for n nodes.
func DefaultConfig(n int) Config {
	return Config{
		N:             n,
		Table:         routing.DefaultConfig(),
		Seed:          1,
		Lookups:       20000,
		FailFraction:  0.10,
		RepairRounds:  2,
		Churn:         30 * time.Minute,
		SessionMean:   2 * time.Hour,
		Keepalive:     30 * time.Second,
		MaintainEvery: 5 * time.Minute,
		MaxHops:       routing.MaxHops,
		Replicas:      3,
	}
}

// Validate rejects configurations the simulator cannot run.
func (c Config) Validate() error {
	if c.N < 2 {
		return fmt.Errorf("sim: %d nodes: want at least 2", c.N)
	}
	if c.FailFraction < 0 || c.FailFraction >= 1 {
		return fmt.Errorf("sim: fail fraction %v: want [0, 1)", c.FailFraction)
	}
	if c.Lookups < 1 || c.MaxHops < 1 || c.Replicas < 1 {
		return fmt.Errorf("sim: lookups %d, max hops %d: want at least 1", c.Lookups, c.MaxHops)
	}
	return c.Table.Validate()
}

// Reach is how lookups fared toward one goal.
type Reach struct {
	Count    int
	Success  int     // lookups that reached the goal
	HopsMean float64 // forwards until then, over the successful ones
	HopsP99  int
	HopsMax  int
}

// SuccessRate is Success/Count.
func (r Reach) SuccessRate() float64 { return float64(r.Success) / float64(max(r.Count, 1)) }

// Lookups summarises the lookups of one phase.
type Lookups struct {
	Count int
	// Root is how routed messages (Route, Put) fared: success is reaching
	// the live node closest to the key.
	Root Reach
	// Get is how gets fared: success is reaching a live node that holds
	// the key's record, on the way (a replica answers for the root) or
	// from the node where the route ends (it asks the replicas it knows).
	// It counts only the gets whose record still exists: Lost are not in
	// it.
	Get Reach
	// Lost is how many gets had every replica of their record failed: no
	// lookup can find those until the publisher puts the record again.
	Lost int
	// Timeouts is the mean number of forwards per lookup that went to a
	// dead node, were not acknowledged and were retried elsewhere.
	Timeouts float64
}

// Result is what one run measured.
type Result struct {
	N          int
	Degree     int     // D
	DegreeMax  int     // most links any node held at any time
	DegreeMean float64 // mean links per live node after the joins
	Healthy    Lookups // all nodes up, tables built
	Failed     Lookups // right after FailFraction of the nodes failed at once
	Repaired   Lookups // after the survivors noticed and repaired
	Churned    Lookups // during churn (0 Count when skipped)
	Joins      int     // joins during churn
	Leaves     int     // failures during churn
	Elapsed    time.Duration
}

type node struct {
	id    routing.ID
	table *routing.Table
	alive bool
	// suspect are neighbours that did not acknowledge a forward: the node
	// routes around them until it drops their link (keepalives).
	suspect []routing.ID
	dirty   bool // its Reach changed since it last advertised it
}

// Sim is one simulated overlay.
type Sim struct {
	cfg    Config
	rnd    *rand.Rand
	nodes  []*node
	byID   map[routing.ID]*node
	degMax int
	now    time.Duration
	events eventQueue
	live   *liveIndex   // built before the first lookup
	pool   []routing.ID // IDs that joins will take, known to live
	// stored, when set, counts the nodes as they were when the records
	// were last put: the replicas are the r closest of those.
	stored *liveIndex
	dirty  []*node // nodes whose Reach must be advertised again
}

// New builds an empty simulator.
func New(cfg Config) (*Sim, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Sim{
		cfg:  cfg,
		rnd:  rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		byID: make(map[routing.ID]*node, cfg.N),
	}, nil
}

// Run builds the overlay by joins, then measures the phases.
func Run(cfg Config) (Result, error) {
	start := time.Now()
	s, err := New(cfg)
	if err != nil {
		return Result{}, err
	}
	res := Result{N: cfg.N, Degree: cfg.Table.Degree}
	// Reach advertisements wait for a node's keepalive tick in the
	// appliance; here they go out every N/reachBatches joins.
	const reachBatches = 16
	for i := 0; i < cfg.N; i++ {
		s.Join()
		if (i+1)%max(cfg.N/reachBatches, 1) == 0 {
			s.AdvertiseReach()
		}
	}
	for r := 0; r < cfg.RepairRounds; r++ {
		s.MaintainAll()
	}
	s.AdvertiseReach()
	res.DegreeMean = s.meanDegree()
	res.Healthy = s.MeasureLookups(cfg.Lookups)
	// The records were put with every node up; the failed ones take
	// their replicas with them.
	s.StoreRecords()
	s.FailRandom(cfg.FailFraction)
	res.Failed = s.MeasureLookups(cfg.Lookups)
	s.DetectAll()
	s.MaintainAll()
	s.AdvertiseReach()
	// The publishers' refresh has put every record on its live r
	// closest nodes again.
	s.stored = nil
	res.Repaired = s.MeasureLookups(cfg.Lookups)
	if cfg.Churn > 0 {
		res.Churned, res.Joins, res.Leaves = s.RunChurn(cfg.Churn, cfg.Lookups)
	}
	res.DegreeMax = s.degMax
	res.Elapsed = time.Since(start)
	return res, nil
}

func (s *Sim) newID() routing.ID {
	var id routing.ID
	for i := 0; i < routing.IDLen; i += 8 {
		binary.BigEndian.PutUint64(id[i:], s.rnd.Uint64())
	}
	return id
}

func (s *Sim) randomLive() *node {
	for {
		n := s.nodes[s.rnd.IntN(len(s.nodes))]
		if n.alive {
			return n
		}
	}
}

func (s *Sim) liveCount() int {
	c := 0
	for _, n := range s.nodes {
		if n.alive {
			c++
		}
	}
	return c
}

// MaxDegree returns the most links any node has held so far.
func (s *Sim) MaxDegree() int { return s.degMax }

// Nodes returns the number of nodes ever created.
func (s *Sim) Nodes() int { return len(s.nodes) }

func (s *Sim) meanDegree() float64 {
	sum, c := 0, 0
	for _, n := range s.nodes {
		if n.alive {
			sum += n.table.Len()
			c++
		}
	}
	return float64(sum) / float64(max(c, 1))
}

// advertise pushes n's link set to its neighbours, as a link-state update
// message does in the appliance. Their reach and n's own change with it:
// those go out with the next AdvertiseReach.
func (s *Sim) advertise(n *node) {
	links := n.table.Links()
	s.markDirty(n)
	for _, p := range links {
		if m := s.byID[p]; m.alive {
			m.table.SetPeerLinks(n.id, links)
			s.markDirty(m)
		}
	}
}

func (s *Sim) markDirty(n *node) {
	if !n.dirty {
		n.dirty = true
		s.dirty = append(s.dirty, n)
	}
}

// AdvertiseReach has every node whose reach changed send it to its
// neighbours, as the appliance does at its next keepalive tick.
func (s *Sim) AdvertiseReach() {
	for _, n := range s.dirty {
		n.dirty = false
		if !n.alive {
			continue
		}
		reach := n.table.Reach()
		for _, p := range n.table.Links() {
			if m := s.byID[p]; m.alive {
				m.table.SetPeerReach(n.id, reach)
			}
		}
	}
	s.dirty = s.dirty[:0]
}

func (s *Sim) unlink(a *node, id routing.ID) {
	s.remove(a, id)
	if b := s.byID[id]; b != nil && b.alive {
		s.remove(b, a.id)
		s.advertise(b)
	}
}

// remove drops n's link to id, and its suspicion of id with it.
func (s *Sim) remove(n *node, id routing.ID) bool {
	if i := slices.Index(n.suspect, id); i >= 0 {
		n.suspect = slices.Delete(n.suspect, i, i+1)
	}
	return n.table.Remove(id)
}

// tryLink is a link request from a to c, answered by c's own table.
func (s *Sim) tryLink(a, c *node) bool {
	if a == c || !c.alive || !a.table.Wants(c.id) {
		return false
	}
	if !c.table.Accepts(a.id) {
		return false
	}
	if a.table.Len() >= s.cfg.Table.Degree {
		v, ok := a.table.Evict(c.id)
		if !ok {
			return false
		}
		s.unlink(a, v)
	}
	if c.table.Len() >= s.cfg.Table.Degree {
		v, ok := c.table.Evict(a.id)
		if !ok {
			return false
		}
		s.unlink(c, v)
	}
	if err := a.table.Add(c.id); err != nil {
		panic(err)
	}
	if err := c.table.Add(a.id); err != nil {
		panic(err)
	}
	s.degMax = max(s.degMax, a.table.Len(), c.table.Len())
	a.table.SetPeerLinks(c.id, c.table.Links())
	c.table.SetPeerLinks(a.id, a.table.Links())
	s.advertise(a)
	s.advertise(c)
	return true
}

// hop is where a route stands: the node that holds the message, the path
// it took, and what it cost.
type hop struct {
	cur      *node
	path     []routing.ID // nodes passed, origin first, cur not included
	dead     []routing.ID // nodes that did not acknowledge it
	hops     int          // forwards that arrived
	timeouts int          // forwards to dead nodes
}

// route forwards a message for key hop by hop with the real forwarding
// choice: each node picks its next hop with Table.Forward, and a forward
// to a dead neighbour is not acknowledged, so the sender suspects that
// neighbour from then on and tries its next best, up to routing.MaxTries
// neighbours. stop, when not nil, is asked at every node the message
// reaches and ends the route there when it says so. It returns the node
// where the route ended, or nil when it failed on the way.
func (s *Sim) route(src *node, key routing.ID, path []routing.ID, stop func(h *hop) bool) (*node, hop) {
	h := hop{cur: src, path: path}
	for {
		if stop != nil && stop(&h) {
			return h.cur, h
		}
		if h.hops >= s.cfg.MaxHops {
			return nil, h
		}
		cur := h.cur
		down := func(id routing.ID) bool { return slices.Contains(cur.suspect, id) }
		rt := routing.Route{Target: key, Path: h.path, Dead: h.dead}
		var m *node
		for try := 0; ; try++ {
			next, ok := cur.table.Next(&rt, down)
			if !ok {
				h.dead = rt.Dead
				return cur, h
			}
			if try == routing.MaxTries {
				return nil, h // no neighbour answered: the sender gives up
			}
			if m = s.byID[next]; m.alive {
				break
			}
			// No acknowledgement: the sender suspects it from now on,
			// and the message carries it as dead.
			h.timeouts++
			cur.suspect = append(cur.suspect, next)
			if len(rt.Dead) < routing.MaxDead {
				rt.Dead = append(rt.Dead, next)
			}
		}
		h.dead = rt.Dead
		h.path = append(h.path, cur.id)
		h.cur = m
		h.hops++
	}
}

// Join adds a node through a random live bootstrap node: it routes to its
// own ID to find its closest nodes, links the ones its table wants, then
// fills the gaps.
func (s *Sim) Join() *node {
	id := s.newID()
	if len(s.pool) > 0 {
		id, s.pool = s.pool[0], s.pool[1:]
	}
	n := &node{id: id, table: routing.NewTable(id, s.cfg.Table)}
	var boot *node
	if s.liveCount() > 0 {
		boot = s.randomLive()
	}
	s.nodes = append(s.nodes, n)
	s.byID[n.id] = n
	if s.live != nil {
		if _, known := s.live.pos[n.id]; !known {
			s.live = nil // a join outside the pool: rebuild before the next lookup
		}
	}
	s.setAlive(n, true)
	if boot == nil {
		return n
	}
	// The joining node's request enters the overlay through the
	// bootstrap node: its path starts with the joining node.
	root, _ := s.route(boot, n.id, []routing.ID{n.id}, nil)
	if root == nil {
		root = boot
	}
	s.tryLink(n, root)
	for _, c := range root.table.Closest(n.id, 2*s.cfg.Table.Close, nil) {
		s.tryLink(n, s.byID[c])
	}
	s.Maintain(n)
	return n
}

// Maintain is one round of a node's table maintenance: link what the
// neighbours advertised when it fills a gap or the close set (no lookup
// needed), then look up a random ID in each remaining gap.
func (s *Sim) Maintain(n *node) {
	if !n.alive {
		return
	}
	for _, p := range n.table.Links() {
		for _, z := range n.table.PeerLinks(p) {
			if n.table.Wants(z) {
				if m := s.byID[z]; m != nil && m.alive {
					s.tryLink(n, m)
				}
			}
		}
	}
	for _, b := range n.table.Gaps() {
		key := routing.RandomInBucket(n.id, b, s.rnd)
		root, _ := s.route(n, key, nil, nil)
		if root == nil || root == n {
			continue
		}
		for _, c := range root.table.Closest(key, 4, nil) {
			if routing.CommonPrefixLen(n.id, c) == b && s.tryLink(n, s.byID[c]) {
				break
			}
		}
	}
}

// MaintainAll runs one maintenance round on every live node in random
// order.
func (s *Sim) MaintainAll() {
	order := s.rnd.Perm(len(s.nodes))
	for _, i := range order {
		s.Maintain(s.nodes[i])
	}
}

// FailRandom fails a fraction of the live nodes at once; nobody is told.
func (s *Sim) FailRandom(frac float64) {
	target := int(math.Round(frac * float64(s.liveCount())))
	for k := 0; k < target; k++ {
		s.setAlive(s.randomLive(), false)
	}
}

// DetectAll lets every live node notice its dead links (keepalives time
// out) and tell its neighbours.
func (s *Sim) DetectAll() {
	for _, n := range s.nodes {
		if !n.alive {
			continue
		}
		changed := false
		for _, p := range n.table.Links() {
			if !s.byID[p].alive {
				s.remove(n, p)
				changed = true
			}
		}
		if changed {
			s.advertise(n)
		}
	}
}

// liveIndex answers "which live node is closest to this key" while nodes
// come and go: the IDs of every node that exists or will join, sorted
// once, and a Fenwick tree counting the live ones over that order.
type liveIndex struct {
	ids []routing.ID
	pos map[routing.ID]int
	fen []int32
}

func newLiveIndex(ids []routing.ID) *liveIndex {
	x := &liveIndex{ids: slices.Clone(ids), pos: make(map[routing.ID]int, len(ids)), fen: make([]int32, len(ids)+1)}
	slices.SortFunc(x.ids, func(a, b routing.ID) int { return bytes.Compare(a[:], b[:]) })
	for i, id := range x.ids {
		x.pos[id] = i
	}
	return x
}

func (x *liveIndex) add(id routing.ID, d int32) {
	for i := x.pos[id] + 1; i < len(x.fen); i += i & -i {
		x.fen[i] += d
	}
}

// prefix counts the live nodes among the first i of the order.
func (x *liveIndex) prefix(i int) int32 {
	var c int32
	for ; i > 0; i -= i & -i {
		c += x.fen[i]
	}
	return c
}

// root returns the live node closest to key: the nodes sharing the
// longest prefix with it, bit by bit.
func (x *liveIndex) root(key routing.ID) (routing.ID, bool) {
	lo, hi := 0, len(x.ids)
	if x.prefix(hi) == 0 {
		return routing.ID{}, false
	}
	for b := 0; b < routing.IDBits && x.prefix(hi)-x.prefix(lo) > 1; b++ {
		mid := lo + sortSearch(hi-lo, func(i int) bool { return bitAt(&x.ids[lo+i], b) == 1 })
		zero := x.prefix(mid) - x.prefix(lo)
		one := x.prefix(hi) - x.prefix(mid)
		if (bitAt(&key, b) == 0 && zero > 0) || one == 0 {
			hi = mid
		} else {
			lo = mid
		}
	}
	// One live node is left in [lo, hi): find it.
	for lo < hi && x.prefix(lo+1)-x.prefix(lo) == 0 {
		lo++
	}
	return x.ids[lo], true
}

// index builds the live index over the current nodes and `future` IDs
// that joins will use.
func (s *Sim) index(future []routing.ID) {
	ids := make([]routing.ID, 0, len(s.nodes)+len(future))
	for _, n := range s.nodes {
		ids = append(ids, n.id)
	}
	ids = append(ids, future...)
	s.live = newLiveIndex(ids)
	for _, n := range s.nodes {
		if n.alive {
			s.live.add(n.id, 1)
		}
	}
}

func (s *Sim) setAlive(n *node, alive bool) {
	if n.alive == alive {
		return
	}
	n.alive = alive
	if s.live != nil {
		if alive {
			s.live.add(n.id, 1)
		} else {
			s.live.add(n.id, -1)
		}
	}
}

// trueClosest returns the r live nodes closest to key, nearest first.
func (s *Sim) trueClosest(key routing.ID, r int) []routing.ID {
	if s.live == nil {
		s.index(nil)
	}
	return closestIn(s.live, key, r)
}

// closestIn returns the r nodes closest to key that x counts.
func closestIn(x *liveIndex, key routing.ID, r int) []routing.ID {
	out := make([]routing.ID, 0, r)
	for len(out) < r {
		id, ok := x.root(key)
		if !ok {
			break
		}
		out = append(out, id)
		x.add(id, -1)
	}
	for _, id := range out {
		x.add(id, 1)
	}
	return out
}

// StoreRecords notes that every record is now on the r nodes closest to
// its key among the live ones: until the next StoreRecords or a refresh,
// a record's replicas are those nodes, alive or not.
func (s *Sim) StoreRecords() {
	if s.live == nil {
		s.index(nil)
	}
	s.stored = &liveIndex{ids: s.live.ids, pos: s.live.pos, fen: slices.Clone(s.live.fen)}
}

// holders returns the live nodes that hold key's record.
func (s *Sim) holders(key routing.ID) []routing.ID {
	if s.stored == nil {
		return s.trueClosest(key, s.cfg.Replicas)
	}
	out := closestIn(s.stored, key, s.cfg.Replicas)
	return slices.DeleteFunc(out, func(id routing.ID) bool { return !s.byID[id].alive })
}

func sortSearch(n int, f func(int) bool) int {
	i, j := 0, n
	for i < j {
		h := int(uint(i+j) >> 1)
		if !f(h) {
			i = h + 1
		} else {
			j = h
		}
	}
	return i
}

func bitAt(id *routing.ID, i int) byte { return (id[i/8] >> (7 - uint(i%8))) & 1 }

// MeasureLookups routes count lookups for random keys from random live
// nodes and checks each against the key's true root and its replicas.
func (s *Sim) MeasureLookups(count int) Lookups {
	var m measure
	for i := 0; i < count; i++ {
		m.lookup(s)
	}
	return m.result()
}

// measure accumulates lookups.
type measure struct {
	res        Lookups
	hops, gets []int
	timeouts   int
}

// lookup routes to a random key from a random live node. The route goes
// on to the key's root (where a routed message ends); a get for the key
// ends earlier, at the first node on the way that holds the record and
// knows itself among the key's r closest (the appliance's replica test),
// or else where the route ends: that node asks the nodes it knows closest
// to the key, one after another, as the appliance's root does.
func (m *measure) lookup(s *Sim) {
	src := s.randomLive()
	key := s.newID()
	root := s.trueClosest(key, 1)
	held := s.holders(key)
	r := s.cfg.Replicas
	got := -1
	end, h := s.route(src, key, nil, func(h *hop) bool {
		if got < 0 && slices.Contains(held, h.cur.id) && h.cur.table.AmongClosest(key, r) {
			got = h.hops
		}
		return false
	})
	m.res.Count++
	m.timeouts += h.timeouts
	if end != nil && len(root) > 0 && end.id == root[0] {
		m.res.Root.Success++
		m.hops = append(m.hops, h.hops)
	}
	if len(held) == 0 {
		m.res.Lost++
		return
	}
	if got < 0 && end != nil {
		got = m.askReplicas(s, end, src, key, held, h.hops)
	}
	if got >= 0 {
		m.res.Get.Success++
		m.gets = append(m.gets, got)
	}
}

// askReplicas is the end of a get at a node that does not hold the
// record: it asks the r+1 nodes it knows closest to the key, the origin
// excepted, one after another; a neighbour costs a hop, a node two hops
// out two. It returns the hops until a live holder answered, or -1.
func (m *measure) askReplicas(s *Sim, at, origin *node, key routing.ID, held []routing.ID, hops int) int {
	if slices.Contains(held, at.id) {
		return hops
	}
	for _, id := range at.table.Closest(key, s.cfg.Replicas+1, func(id routing.ID) bool { return id == at.id || id == origin.id }) {
		cost := 2
		if at.table.Has(id) {
			cost = 1
		}
		if !s.byID[id].alive {
			m.timeouts++
			continue
		}
		if slices.Contains(held, id) {
			return hops + cost
		}
	}
	return -1
}

func (m *measure) result() Lookups {
	m.res.Timeouts = float64(m.timeouts) / float64(max(m.res.Count, 1))
	m.res.Root.Count = m.res.Count
	m.res.Get.Count = m.res.Count - m.res.Lost
	summarise(&m.res.Root.HopsMean, &m.res.Root.HopsP99, &m.res.Root.HopsMax, m.hops)
	summarise(&m.res.Get.HopsMean, &m.res.Get.HopsP99, &m.res.Get.HopsMax, m.gets)
	return m.res
}

func summarise(mean *float64, p99, most *int, hops []int) {
	if len(hops) == 0 {
		return
	}
	slices.Sort(hops)
	sum := 0
	for _, h := range hops {
		sum += h
	}
	*mean = float64(sum) / float64(len(hops))
	*p99 = hops[min(len(hops)-1, int(math.Ceil(0.99*float64(len(hops))))-1)]
	*most = hops[len(hops)-1]
}

// Events of the churn phase.
type eventKind int

const (
	evJoin eventKind = iota
	evLeave
	evDetect
	evMaintain
	evLookup
	evReach
)

// reachEvery is how often the nodes whose reach changed advertise it under
// churn: the appliance sends it at its keepalive tick.
const reachEvery = 15 * time.Second

type event struct {
	at   time.Duration
	kind eventKind
	n    *node
	peer routing.ID
	seq  uint64
}

type eventQueue []event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

func (s *Sim) schedule(e event) {
	e.seq = uint64(len(s.events)) + uint64(s.now) + s.rnd.Uint64()>>40
	heap.Push(&s.events, e)
}

func (s *Sim) exp(mean time.Duration) time.Duration {
	return time.Duration(s.rnd.ExpFloat64() * float64(mean))
}

// RunChurn runs the overlay for d of simulated time: nodes fail after an
// exponential session and as many join as fail, so the size stays near N;
// neighbours notice a failure after the keepalive timeout; every node
// maintains its table periodically; lookups are spread over the span.
func (s *Sim) RunChurn(d time.Duration, lookups int) (res Lookups, joins, leaves int) {
	live := s.liveCount()
	// Failures arrive as a Poisson process of rate live/SessionMean; each
	// is matched by a join.
	rate := float64(live) / float64(s.cfg.SessionMean)
	joins = 0
	for t := time.Duration(0); ; {
		t += time.Duration(s.rnd.ExpFloat64() / rate)
		if t >= d {
			break
		}
		s.schedule(event{at: s.now + t, kind: evLeave})
		s.schedule(event{at: s.now + t + s.exp(time.Second), kind: evJoin})
		joins++
	}
	// The joiners' IDs are drawn now so the live index covers them.
	s.pool = make([]routing.ID, joins)
	for i := range s.pool {
		s.pool[i] = s.newID()
	}
	s.index(s.pool)
	joins = 0
	for _, n := range s.nodes {
		if n.alive {
			s.schedule(event{at: s.now + time.Duration(s.rnd.Int64N(int64(s.cfg.MaintainEvery))), kind: evMaintain, n: n})
		}
	}
	for i := 0; i < lookups; i++ {
		s.schedule(event{at: s.now + time.Duration(s.rnd.Int64N(int64(d))), kind: evLookup})
	}
	s.schedule(event{at: s.now + reachEvery, kind: evReach})
	end := s.now + d
	var m measure
	for s.events.Len() > 0 {
		e := heap.Pop(&s.events).(event)
		if e.at > end {
			break
		}
		s.now = e.at
		switch e.kind {
		case evLeave:
			n := s.randomLive()
			s.setAlive(n, false)
			leaves++
			for _, p := range n.table.Links() {
				s.schedule(event{at: s.now + s.cfg.Keepalive, kind: evDetect, n: s.byID[p], peer: n.id})
			}
		case evJoin:
			n := s.Join()
			joins++
			s.schedule(event{at: s.now + s.cfg.MaintainEvery, kind: evMaintain, n: n})
		case evDetect:
			if e.n.alive && s.remove(e.n, e.peer) {
				s.advertise(e.n)
			}
		case evReach:
			s.AdvertiseReach()
			s.schedule(event{at: s.now + reachEvery, kind: evReach})
		case evMaintain:
			if e.n.alive {
				s.Maintain(e.n)
				s.schedule(event{at: s.now + s.cfg.MaintainEvery, kind: evMaintain, n: e.n})
			}
		case evLookup:
			m.lookup(s)
		}
	}
	s.events = s.events[:0]
	return m.result(), joins, leaves
}
