package sip

import (
	"container/list"
	"net/netip"
	"sync"
	"time"

	"github.com/superpeer/superpeer/nat/clock"
)

// floodGuard counts requests per source address in fixed windows and bans a
// source that sends more than the limit in one window. It is the pike
// module plus ipban table of Kamailio's default configuration, per IP
// address (not per port: a scanner changes ports freely).
type floodGuard struct {
	cfg   FloodConfig
	clock clock.Clock

	mu      sync.Mutex // guards following
	sources map[netip.Addr]*list.Element
	lru     list.List // of *floodSource, most recent at the front
	banned  uint64    // bans imposed since start
	dropped uint64    // requests dropped from banned sources
}

type floodSource struct {
	addr        netip.Addr
	windowStart time.Time
	count       int
	bannedUntil time.Time
}

func newFloodGuard(cfg FloodConfig, c clock.Clock) *floodGuard {
	return &floodGuard{cfg: cfg, clock: clock.OrReal(c), sources: map[netip.Addr]*list.Element{}}
}

// exempt reports whether addr is never limited.
func (g *floodGuard) exempt(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range g.cfg.Exempt {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// allow counts one request from addr and reports whether it may be
// processed. banned is true when this request started a ban.
func (g *floodGuard) allow(addr netip.Addr) (ok, newBan bool) {
	if g == nil || g.cfg.Requests == 0 {
		return true, false
	}
	addr = addr.Unmap()
	if g.exempt(addr) {
		return true, false
	}
	now := g.clock.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	var s *floodSource
	if e := g.sources[addr]; e != nil {
		s = e.Value.(*floodSource)
		g.lru.MoveToFront(e)
	} else {
		g.evictLocked(now)
		s = &floodSource{addr: addr, windowStart: now}
		g.sources[addr] = g.lru.PushFront(s)
	}
	if now.Before(s.bannedUntil) {
		g.dropped++
		return false, false
	}
	if now.Sub(s.windowStart) >= g.cfg.Window {
		s.windowStart, s.count = now, 0
	}
	s.count++
	if s.count > g.cfg.Requests {
		s.bannedUntil = now.Add(g.cfg.Ban)
		s.count = 0
		g.banned++
		g.dropped++
		return false, true
	}
	return true, false
}

// isBanned reports whether addr is banned now, without counting.
func (g *floodGuard) isBanned(addr netip.Addr) bool {
	if g == nil || g.cfg.Requests == 0 {
		return false
	}
	addr = addr.Unmap()
	now := g.clock.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.sources[addr]
	return e != nil && now.Before(e.Value.(*floodSource).bannedUntil)
}

// evictLocked makes room for one more source: it forgets the least
// recently seen source that is not banned (a banned one is forgotten only
// when its ban is over, or when every tracked source is banned).
func (g *floodGuard) evictLocked(now time.Time) {
	if len(g.sources) < g.cfg.MaxSources {
		return
	}
	for e := g.lru.Back(); e != nil; e = e.Prev() {
		s := e.Value.(*floodSource)
		if !now.Before(s.bannedUntil) {
			g.lru.Remove(e)
			delete(g.sources, s.addr)
			return
		}
	}
	e := g.lru.Back()
	g.lru.Remove(e)
	delete(g.sources, e.Value.(*floodSource).addr)
}

// FloodStatus is the flood guard's part of the status.
type FloodStatus struct {
	// Banned are the sources banned now.
	Banned []string `json:"banned"`
	// Bans counts bans imposed since start.
	Bans uint64 `json:"bans"`
	// Dropped counts requests dropped because their source was banned.
	Dropped uint64 `json:"dropped"`
}

func (g *floodGuard) status() FloodStatus {
	if g == nil {
		return FloodStatus{}
	}
	now := g.clock.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	st := FloodStatus{Bans: g.banned, Dropped: g.dropped}
	for e := g.lru.Front(); e != nil; e = e.Next() {
		if s := e.Value.(*floodSource); now.Before(s.bannedUntil) {
			st.Banned = append(st.Banned, s.addr.String())
		}
	}
	return st
}
