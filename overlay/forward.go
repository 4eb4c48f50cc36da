package overlay

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/superpeer/superpeer/nat/clock"
	"github.com/superpeer/superpeer/overlay/dht"
	"github.com/superpeer/superpeer/overlay/routing"
	"github.com/superpeer/superpeer/overlay/wire"
)

// Hop-by-hop forwarding. A routed message goes from node to node over
// links (RELOAD's symmetric recursive routing, RFC 6940 section 6.2) and
// each node acknowledges it to the node that sent it. A node that gets no
// acknowledgement in time suspects that neighbour, adds it to the
// message's dead list and sends the message to its next best neighbour
// (routing.Table.Next), up to routing.MaxTries neighbours: a lookup does
// not fail because one hop died, it goes around it. The reply travels the
// path back, skipping to the earliest node on it that this node has a
// session with.

// minHopTimeout is the least time a node waits for a neighbour's
// acknowledgement: a few scheduling delays on a loaded router, where a
// link's measured round trip can be under a millisecond.
const minHopTimeout = 150 * time.Millisecond

// errUnreachable is the reason an error reply gives when a message could
// not be brought to the node it was for; the origin returns it as
// ErrUnreachable.
const errUnreachable = "unreachable"

// hopKey names a forward waiting for its acknowledgement.
type hopKey struct {
	msg uint64
	to  NodeID
}

// hopWait is a forward waiting for the next hop's acknowledgement.
type hopWait struct {
	m     *wire.Forward // as this node holds it: Via ends with the sender
	tries int           // neighbours that did not acknowledge it here
	timer clock.Timer
}

func (n *Node) newMsgID() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.rnd.Uint64()
}

// chooseHop returns the session m goes to next from this node, or
// end=true when m ends here. Neighbours without a session or suspected
// of being down join m's dead list (routing.Table.Next).
func (n *Node) chooseHop(m *wire.Forward) (s *session, end bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	usable := func(s *session) bool { return s != nil && !s.closed && !s.suspect }
	if m.Exact && m.Dest != n.id && !slices.Contains(m.Dead, m.Dest) {
		if s := n.sessions[m.Dest]; usable(s) {
			return s, false
		}
	}
	r := routing.Route{Target: m.Dest, Path: m.Via, Dead: m.Dead}
	next, ok := n.table.Next(&r, func(id NodeID) bool { return !usable(n.sessions[id]) })
	m.Dead = r.Dead
	if !ok {
		return nil, true
	}
	return n.sessions[next], false
}

// step moves m on from this node: a get ends here when this node holds
// the record as one of the key's replicas; otherwise m goes to the next
// hop, or is delivered here when this node is where it ends. tries counts
// the neighbours that did not acknowledge m here.
func (n *Node) step(m *wire.Forward, tries int) {
	if n.answerGet(m) {
		return
	}
	s, end := n.chooseHop(m)
	switch {
	case end:
		n.deliver(m)
	case tries >= routing.MaxTries:
		n.replyError(m, errUnreachable, fmt.Sprintf("%d neighbours of %s did not acknowledge", tries, n.id.Short()))
	case m.TTL == 0 || len(m.Via) >= wire.MaxVia:
		n.replyError(m, errUnreachable, "hop limit reached")
	default:
		n.sendHop(m, s, tries)
	}
}

// sendHop sends m to s and waits, off the caller, for the
// acknowledgement.
func (n *Node) sendHop(m *wire.Forward, s *session, tries int) {
	fwd := *m
	fwd.TTL--
	if len(m.Via) == 0 || m.Via[len(m.Via)-1] != n.id {
		fwd.Via = append(slices.Clip(m.Via), n.id)
	}
	fwd.Dead = slices.Clip(m.Dead)
	key := hopKey{m.ID, s.peer}
	w := &hopWait{m: m, tries: tries}
	n.mu.Lock()
	if n.ctx.Err() != nil {
		n.mu.Unlock()
		return
	}
	if old := n.hops[key]; old != nil {
		old.timer.Stop() // the same message to the same neighbour again: one wait
	}
	n.hops[key] = w
	w.timer = n.clock.AfterFunc(n.hopTimeoutLocked(s), func() { n.hopFailed(key, w) })
	n.mu.Unlock()
	if err := s.send(&wire.Frame{Type: wire.TypeForward, Forward: &fwd}); err != nil {
		n.hopFailed(key, w)
	}
}

// hopTimeoutLocked is how long to wait for s's acknowledgement: a few of
// its round trips when measured, HopTimeout at most.
func (n *Node) hopTimeoutLocked(s *session) time.Duration {
	if s.rtt <= 0 {
		return n.cfg.HopTimeout
	}
	return min(n.cfg.HopTimeout, max(minHopTimeout, 4*s.rtt))
}

// hopAcked ends the wait for a forward's acknowledgement.
func (n *Node) hopAcked(from NodeID, msg uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	key := hopKey{msg, from}
	if w := n.hops[key]; w != nil {
		w.timer.Stop()
		delete(n.hops, key)
	}
}

// hopFailed is a forward that was not acknowledged: the neighbour is
// suspected (and pinged, so that it is cleared as soon as it answers),
// the message carries it as dead, and the next best neighbour is tried.
func (n *Node) hopFailed(key hopKey, w *hopWait) {
	n.mu.Lock()
	if n.hops[key] != w || n.ctx.Err() != nil {
		n.mu.Unlock()
		return // acknowledged meanwhile, or closing
	}
	delete(n.hops, key)
	s := n.sessions[key.to]
	if s != nil {
		s.suspect = true
		s.pingNonce = n.rnd.Uint64()
		s.pingSent = n.clock.Now()
	}
	m := w.m
	if len(m.Dead) < routing.MaxDead && !slices.Contains(m.Dead, key.to) {
		m.Dead = append(slices.Clip(m.Dead), key.to)
	}
	n.mu.Unlock()
	if s != nil {
		_ = s.send(&wire.Frame{Type: wire.TypePing, Nonce: s.pingNonce})
	}
	n.log.Debug("overlay: forward not acknowledged", "peer", key.to.Short(), "msg", key.msg)
	n.step(m, w.tries+1)
}

// stopHops ends every wait for an acknowledgement (the node is closing).
func (n *Node) stopHops() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for k, w := range n.hops {
		w.timer.Stop()
		delete(n.hops, k)
	}
}

func (n *Node) handleForward(from *session, m *wire.Forward) {
	if len(m.Via) == 0 || m.Via[len(m.Via)-1] != from.peer {
		return // the via list must end with the hop it came from
	}
	_ = from.send(&wire.Frame{Type: wire.TypeAck, Nonce: m.ID})
	n.step(m, 0)
}

// answerGet answers a get on the way when this node holds the record and
// is among the r nodes closest to the key that it knows: a replica, as
// good as the root and nearer. It reports whether it answered.
func (n *Node) answerGet(m *wire.Forward) bool {
	if m.Kind != kindGet || m.Exact {
		return false
	}
	r, ok := n.store.Get(m.Dest)
	if !ok {
		return false
	}
	n.mu.Lock()
	replica := n.table.AmongClosest(m.Dest, n.cfg.Replicas)
	n.mu.Unlock()
	if !replica {
		return false
	}
	b, err := r.Marshal()
	if err != nil {
		return false
	}
	n.reply(m, kindGet, b)
	return true
}

func (n *Node) reply(m *wire.Forward, kind uint8, payload []byte) {
	r := &wire.Reply{ID: m.ID, Kind: kind, Path: m.Via, Payload: payload}
	n.sendReply(r)
}

func (n *Node) replyError(m *wire.Forward, reason dht.Reason, detail string) {
	n.reply(m, kindError, encodeError(string(reason), detail))
}

// sendReply sends r back along its path: to the earliest node on it that
// this node has a session with (usually the one it came from; the origin
// itself when linked), or on from here when this node is on it earlier.
func (n *Node) sendReply(r *wire.Reply) {
	if len(r.Path) == 0 {
		n.handleReply(r)
		return
	}
	n.mu.Lock()
	for i, id := range r.Path {
		if id == n.id {
			n.mu.Unlock()
			n.sendReply(&wire.Reply{ID: r.ID, Kind: r.Kind, Path: r.Path[:i], Payload: r.Payload})
			return
		}
		if s := n.sessions[id]; s != nil && !s.closed && !s.suspect {
			n.mu.Unlock()
			_ = s.send(&wire.Frame{Type: wire.TypeReply, Reply: &wire.Reply{ID: r.ID, Kind: r.Kind, Path: r.Path[:i], Payload: r.Payload}})
			return
		}
	}
	n.mu.Unlock()
	n.log.Debug("overlay: reply lost: no session to any node on its path", "msg", r.ID)
}

func (n *Node) handleReply(r *wire.Reply) {
	if len(r.Path) > 0 {
		n.sendReply(r)
		return
	}
	n.mu.Lock()
	ch := n.pending[r.ID]
	delete(n.pending, r.ID)
	n.mu.Unlock()
	if ch != nil {
		ch <- r
	}
}

// request routes a message and waits for its reply. first, when set, is
// the first hop (a join goes through the bootstrap before the table has
// links).
func (n *Node) request(ctx context.Context, kind uint8, dest NodeID, exact bool, payload []byte, first *session) (*wire.Reply, error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
	defer cancel()
	m := &wire.Forward{ID: n.newMsgID(), Kind: kind, Exact: exact, TTL: routing.MaxHops, Dest: dest, Via: []NodeID{n.id}, Payload: payload}
	ch := make(chan *wire.Reply, 1)
	n.mu.Lock()
	n.pending[m.ID] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.pending, m.ID)
		n.mu.Unlock()
	}()
	if first == nil && dest != n.id {
		first = n.anySessionIfUnlinked()
	}
	if first != nil {
		n.sendHop(m, first, 0)
	} else {
		n.step(m, 0)
	}
	select {
	case r := <-ch:
		if r.Kind == kindError {
			reason, detail := decodeError(r.Payload)
			switch reason {
			case "":
				return nil, fmt.Errorf("routing to %s: %s", dest.Short(), detail)
			case errUnreachable:
				return nil, fmt.Errorf("routing to %s: %w: %s", dest.Short(), ErrUnreachable, detail)
			}
			return nil, &dht.RejectError{Reason: dht.Reason(reason), Key: dest, Detail: detail}
		}
		return r, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("routing to %s: no reply: %w", dest.Short(), ctx.Err())
	case <-n.ctx.Done():
		return nil, ErrClosed
	}
}

// anySessionIfUnlinked returns a session to route through when the table
// has no links yet: a node that the bootstrap refused to link still asks
// others through its transient session.
func (n *Node) anySessionIfUnlinked() *session {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.table.Len() > 0 {
		return nil
	}
	for _, s := range n.sessions {
		if !s.closed {
			return s
		}
	}
	return nil
}
