package turn

import (
	"context"
	"net/netip"
	"time"
)

// The ready pool keeps a few IPv4 relay sockets bound with their external
// address known, so that an Allocate (handled inside one of pion's
// listener read loops) does not stall that loop for a STUN round trip or
// a port mapping. The pool loop tops it up and learns STUN mappings of
// waiting sockets again before they can have expired.

// poolWanted reports whether relays bound on bind take a network round
// trip to learn their external address.
func (s *Server) poolWanted(bind netip.Addr) bool {
	return s.cfg.ReadyRelays > 0 && bind.Is4() && !isPublic(bind) && !s.cfg.ExternalIP.IsValid() &&
		(s.cfg.PortMapper != nil || s.cfg.STUNServer.IsValid())
}

// fresh reports whether a waiting relay's external address can still be
// trusted: a port mapping is renewed by its mapper; anything learnt by
// STUN (or assumed because STUN failed) ages.
func (s *Server) fresh(r *udpRelay) bool {
	if r.method == MethodMapped {
		return true
	}
	r.mu.Lock()
	since := r.learnt
	r.mu.Unlock()
	if since.IsZero() {
		since = r.created
	}
	return s.clk.Since(since) < s.cfg.MappingMaxAge
}

// takeReady returns a fresh waiting relay bound on bind, or nil.
func (s *Server) takeReady(bind netip.Addr) *udpRelay {
	if !s.poolWanted(bind) {
		return nil
	}
	var got *udpRelay
	var stale []*udpRelay
	s.poolMu.Lock()
	list := s.ready[bind]
	for len(list) > 0 && got == nil {
		r := list[len(list)-1]
		list = list[:len(list)-1]
		if s.fresh(r) {
			got = r
		} else {
			stale = append(stale, r)
		}
	}
	s.ready[bind] = list
	s.poolMu.Unlock()
	for _, r := range stale {
		r.Close()
	}
	s.kickPool()
	return got
}

func (s *Server) kickPool() {
	select {
	case s.poolKick <- struct{}{}:
	default:
	}
}

// poolLoop owns the pool until the server closes.
func (s *Server) poolLoop(binds []netip.Addr) {
	defer s.wg.Done()
	for {
		for _, b := range binds {
			s.fillPool(b)
		}
		t := s.clk.NewTimer(s.cfg.MappingMaxAge / 2)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-s.poolKick:
			t.Stop()
		case <-t.C():
		}
	}
}

// fillPool learns again the mappings of relays waiting for more than half
// their allowed age (which also refreshes the NAT's binding), and tops
// the pool up.
func (s *Server) fillPool(bind netip.Addr) {
	s.poolMu.Lock()
	var keep, old []*udpRelay
	for _, r := range s.ready[bind] {
		if r.method == MethodMapped {
			keep = append(keep, r)
			continue
		}
		r.mu.Lock()
		since := r.learnt
		r.mu.Unlock()
		if since.IsZero() {
			since = r.created
		}
		if s.clk.Since(since) >= s.cfg.MappingMaxAge/2 {
			old = append(old, r)
		} else {
			keep = append(keep, r)
		}
	}
	s.ready[bind] = keep
	s.poolMu.Unlock()

	for _, r := range old {
		if r.method != MethodSTUN {
			r.Close() // STUN had failed for it: make a new one below
			continue
		}
		mapped, err := stunBinding(r.conn, s.cfg.STUNServer, s.cfg.STUNTimeout)
		s.noteSTUN(mapped, err)
		if err != nil || s.ctx.Err() != nil {
			r.Close()
			continue
		}
		r.mu.Lock()
		r.external, r.learnt = mapped, s.clk.Now() // not handed out yet: no client knows the old one
		r.mu.Unlock()
		s.putReady(bind, r)
	}

	for s.ctx.Err() == nil && s.readyCount(bind) < s.cfg.ReadyRelays {
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.STUNTimeout+5*time.Second)
		r, err := s.prepareUDP(ctx, "udp4", bind, 0)
		cancel()
		if err != nil {
			s.log.Debug("turn: preparing a ready relay", "bind", bind, "err", err)
			return
		}
		if r.method == MethodLocal || r.method == MethodAssumed {
			// Neither the mapper nor STUN answered: keep nothing that
			// would outlive the outage; the next Allocate tries afresh.
			r.Close()
			return
		}
		s.putReady(bind, r)
	}
}

func (s *Server) putReady(bind netip.Addr, r *udpRelay) {
	s.poolMu.Lock()
	if s.ctx.Err() != nil {
		s.poolMu.Unlock()
		r.Close()
		return
	}
	s.ready[bind] = append(s.ready[bind], r)
	s.poolMu.Unlock()
}

func (s *Server) readyCount(bind netip.Addr) int {
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	return len(s.ready[bind])
}

// closePool closes every waiting relay; the pool loop has stopped.
func (s *Server) closePool() {
	s.poolMu.Lock()
	ready := s.ready
	s.ready = map[netip.Addr][]*udpRelay{}
	s.poolMu.Unlock()
	for _, list := range ready {
		for _, r := range list {
			r.Close()
		}
	}
}
