package overlay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/superpeer/superpeer/overlay/routing"
	"github.com/superpeer/superpeer/overlay/wire"
)

// probeEvery paces hole-punch probes: fast enough that both NATs open
// within a round trip or two, few enough to be harmless.
const probeEvery = 50 * time.Millisecond

// Join links this node through the configured bootstrap nodes (each key
// pinned), then finds its closest nodes and fills its table.
func (n *Node) Join(ctx context.Context) error {
	var errs []error
	var first *session
	selfBoot := false
	for _, b := range n.cfg.Bootstrap {
		selfBoot = selfBoot || IDOf(b.Key) == n.id
	}
	for _, b := range n.cfg.Bootstrap {
		id := IDOf(b.Key)
		// Two bootstrap nodes would dial each other at once, each end
		// a DTLS client: the lower ID dials.
		if id == n.id || (selfBoot && routing.Closer(routing.ID{}, id, n.id)) {
			continue
		}
		n.mu.Lock()
		s := n.sessions[id]
		n.mu.Unlock()
		if s == nil {
			addr, err := n.cfg.Net.ResolveUDPAddr("udp4", b.Addr)
			if err != nil {
				errs = append(errs, fmt.Errorf("resolving bootstrap %s: %w", b.Addr, err))
				continue
			}
			s, err = n.dial(ctx, addr, &id, Direct, true)
			if err != nil {
				errs = append(errs, fmt.Errorf("joining through %s: %w", b.Addr, err))
				continue
			}
		}
		if first == nil {
			first = s
		}
	}
	if first == nil {
		if len(errs) == 0 {
			return nil // this node is the only bootstrap
		}
		err := errors.Join(errs...)
		n.log.Warn("overlay: join failed", "err", err)
		return err
	}
	r, err := n.request(ctx, kindFind, n.id, false, nil, first)
	if err != nil {
		return fmt.Errorf("joining: finding own neighbourhood: %w", err)
	}
	ids, err := decodeIDs(r.Payload)
	if err != nil {
		return fmt.Errorf("joining: %w", err)
	}
	for _, id := range ids {
		if n.wants(id) {
			if err := n.Connect(ctx, id); err != nil {
				n.log.Debug("overlay: join link failed", "peer", id.Short(), "err", err)
			}
		}
	}
	n.Maintain(ctx)
	return nil
}

func (n *Node) wants(id NodeID) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return id != n.id && n.sessions[id] == nil && n.table.Wants(id)
}

// Maintain is one round of table upkeep: link the neighbours' neighbours
// that fill a gap or the close set, then look for a node in each gap that
// remains. It runs every MaintainInterval.
func (n *Node) Maintain(ctx context.Context) {
	n.mu.Lock()
	var cands []NodeID
	for _, p := range n.table.Links() {
		for _, z := range n.table.PeerLinks(p) {
			if z != n.id && n.sessions[z] == nil && n.table.Wants(z) && !contains(cands, z) {
				cands = append(cands, z)
			}
		}
	}
	gaps := n.table.Gaps()
	empty := n.table.Len() == 0
	n.mu.Unlock()
	if empty && len(n.cfg.Bootstrap) > 0 {
		_ = n.Join(ctx)
		return
	}
	for i, id := range cands {
		if i >= 4 {
			break
		}
		if n.wants(id) {
			_ = n.Connect(ctx, id)
		}
	}
	for _, b := range gaps {
		n.mu.Lock()
		key := routing.RandomInBucket(n.id, b, n.rnd)
		n.mu.Unlock()
		r, err := n.request(ctx, kindFind, key, false, nil, nil)
		if err != nil {
			continue
		}
		ids, _ := decodeIDs(r.Payload)
		for _, id := range ids {
			if routing.CommonPrefixLen(n.id, id) == b && n.wants(id) && n.Connect(ctx, id) == nil {
				break
			}
		}
	}
}

// Connect makes a link to the node id: the request is routed to it
// through the overlay (the last neighbour on the way is the rendezvous),
// and id answers how to cross the NATs: dial it, be dialled, punch a hole
// from both sides at once, or go through a relay it names.
func (n *Node) Connect(ctx context.Context, id NodeID) error {
	if id == n.id {
		return fmt.Errorf("connecting: %w: own ID", routing.ErrBadID)
	}
	n.mu.Lock()
	s := n.sessions[id]
	n.mu.Unlock()
	if s != nil {
		// A session is up already (transient, or given up as a link):
		// ask over it.
		if s.linked {
			return nil
		}
		ctx, cancel := context.WithTimeout(ctx, n.cfg.HandshakeTimeout)
		defer cancel()
		if err := n.sendHello(s, true); err != nil {
			return fmt.Errorf("connecting to %s: %w", id.Short(), err)
		}
		return n.awaitLinked(ctx, s)
	}
	n.mu.Lock()
	_, answered := n.expected[id]
	n.connecting[id]++
	n.mu.Unlock()
	if answered {
		// id asked first and this node answered: its handshake is on the
		// way; a second attempt would cross it.
		ctx, cancel := context.WithTimeout(ctx, n.cfg.HandshakeTimeout)
		defer cancel()
		return n.awaitLink(ctx, id)
	}
	defer func() {
		n.mu.Lock()
		if n.connecting[id]--; n.connecting[id] <= 0 {
			delete(n.connecting, id)
		}
		n.mu.Unlock()
	}()
	r, err := n.request(ctx, kindConnect, id, true, wire.Contacts([]wire.Contact{n.self()}), nil)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", id.Short(), err)
	}
	if len(r.Payload) < 1 {
		return fmt.Errorf("connecting to %s: empty answer", id.Short())
	}
	method := r.Payload[0]
	cs, err := wire.ParseContacts(r.Payload[1:])
	if err != nil || (method != methodRefused && len(cs) == 0) {
		return fmt.Errorf("connecting to %s: bad answer: %v", id.Short(), err)
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.HandshakeTimeout)
	defer cancel()
	switch method {
	case methodRefused:
		return fmt.Errorf("connecting to %s: link refused (its table has no room for this node)", id.Short())
	case methodDialMe:
		kind := Direct
		if Reachability(cs[0].Reachability) == Mapped {
			kind = MappedPath
		}
		return n.dialAny(ctx, id, cs[0].Addrs, kind)
	case methodDialYou:
		return n.awaitLink(ctx, id)
	case methodPunch:
		return n.punch(ctx, id, cs[0].Addrs)
	case methodRelay:
		if len(cs) < 2 {
			return fmt.Errorf("connecting to %s: relay answer without a relay", id.Short())
		}
		return n.viaRelay(ctx, id, cs[1])
	}
	return fmt.Errorf("connecting to %s: unknown method %d", id.Short(), method)
}

func (n *Node) dialAny(ctx context.Context, id NodeID, addrs []string, kind PathKind) error {
	var errs []error
	for _, a := range addrs {
		addr, err := n.cfg.Net.ResolveUDPAddr("udp4", a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s, err := n.dial(ctx, addr, &id, kind, true)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return n.awaitLinked(ctx, s)
	}
	return fmt.Errorf("connecting to %s: %w", id.Short(), errors.Join(errs...))
}

// awaitLinked waits until the far end answered the session's Hello.
func (n *Node) awaitLinked(ctx context.Context, s *session) error {
	return n.waitFor(ctx, func() bool { return s.linked || s.closed || s.decided }, func() error {
		if !s.linked {
			return fmt.Errorf("link to %s refused", s.peer.Short())
		}
		return nil
	})
}

// awaitLink waits for the far end to dial in.
func (n *Node) awaitLink(ctx context.Context, id NodeID) error {
	return n.waitFor(ctx, func() bool { s := n.sessions[id]; return s != nil && s.linked }, func() error { return nil })
}

// waitFor polls cond (under n.mu) until it holds or ctx ends.
func (n *Node) waitFor(ctx context.Context, cond func() bool, then func() error) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		n.mu.Lock()
		ok := cond()
		n.mu.Unlock()
		if ok {
			return then()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for link: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// punch sends probes to the peer's addresses while it sends to ours; the
// first probe that arrives names the address whose NAT opened, and the
// DTLS handshake goes there.
func (n *Node) punch(ctx context.Context, id NodeID, addrs []string) error {
	got := make(chan net.Addr, 1)
	n.mu.Lock()
	n.punching[id] = got
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.punching, id)
		n.mu.Unlock()
	}()
	stop := n.sendProbes(ctx, addrs)
	defer stop()
	select {
	case from := <-got:
		s, err := n.dial(ctx, from, &id, Punched, true)
		if err != nil {
			return fmt.Errorf("punching to %s: %w", id.Short(), err)
		}
		return n.awaitLinked(ctx, s)
	case <-ctx.Done():
		return fmt.Errorf("punching to %s: no probe came through: %w", id.Short(), ctx.Err())
	}
}

// sendProbes sends probes to addrs every probeEvery until stopped.
func (n *Node) sendProbes(ctx context.Context, addrs []string) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var targets []net.Addr
	for _, a := range addrs {
		if ua, err := n.cfg.Net.ResolveUDPAddr("udp4", a); err == nil {
			targets = append(targets, ua)
		}
	}
	probe := wire.MarshalProbe(n.id)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(probeEvery)
		defer t.Stop()
		for {
			for _, a := range targets {
				_, _ = n.sock.pc.WriteTo(probe, a)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}

func (n *Node) handleProbe(from net.Addr, p []byte) {
	id, err := wire.UnmarshalProbe(p)
	if err != nil {
		return
	}
	n.mu.Lock()
	ch := n.punching[id]
	n.mu.Unlock()
	if ch != nil {
		select {
		case ch <- from:
		default:
		}
	}
}

// viaRelay runs the DTLS session to id through relay, a reachable node
// that id is linked to.
func (n *Node) viaRelay(ctx context.Context, id NodeID, relay wire.Contact) error {
	n.mu.Lock()
	rs := n.sessions[relay.ID]
	n.mu.Unlock()
	if rs == nil {
		var err error
		rs, err = n.dialRelay(ctx, relay)
		if err != nil {
			return fmt.Errorf("connecting to %s through relay %s: %w", id.Short(), relay.ID.Short(), err)
		}
	}
	p, fresh := n.relayPipe(rs, id)
	if !fresh {
		return fmt.Errorf("connecting to %s through relay %s: a relayed session is already being set up", id.Short(), relay.ID.Short())
	}
	s, err := n.handshake(ctx, p, true, &id, Relayed, rs.peer)
	if err != nil {
		return fmt.Errorf("connecting to %s through relay %s: %w", id.Short(), relay.ID.Short(), err)
	}
	return n.awaitLinked(ctx, n.startSession(s, true))
}

func (n *Node) dialRelay(ctx context.Context, relay wire.Contact) (*session, error) {
	var errs []error
	for _, a := range relay.Addrs {
		addr, err := n.cfg.Net.ResolveUDPAddr("udp4", a)
		if err != nil {
			continue
		}
		s, err := n.dial(ctx, addr, &relay.ID, Direct, false)
		if err == nil {
			return s, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("reaching relay: %w", errors.Join(errs...))
}

// relayPipe returns the pipe for the relayed session to peer through rs.
func (n *Node) relayPipe(rs *session, peer NodeID) (*pipeConn, bool) {
	key := [2]NodeID{rs.peer, peer}
	n.mu.Lock()
	defer n.mu.Unlock()
	if p := n.relayed[key]; p != nil {
		return p, false
	}
	p := newPipeConn(relayAddr{via: rs.peer, peer: peer}, relayAddr{via: rs.peer, peer: peer}, func(b []byte) error {
		return rs.send(&wire.Frame{Type: wire.TypeRelay, Relay: &wire.Relay{Peer: peer, Data: b}})
	}, nil)
	p.onDone = func() {
		n.mu.Lock()
		if n.relayed[key] == p {
			delete(n.relayed, key)
			rs.carrying--
		}
		n.mu.Unlock()
	}
	n.relayed[key] = p
	rs.carrying++
	return p, true
}

// handleRelay is a relayed datagram: for a session of ours through s, or
// to pass on to the node it names.
func (n *Node) handleRelay(s *session, r *wire.Relay) {
	n.mu.Lock()
	p := n.relayed[[2]NodeID{s.peer, r.Peer}]
	kind, expected := n.expected[r.Peer]
	target := n.sessions[r.Peer]
	n.mu.Unlock()
	switch {
	case p != nil:
		p.deliver(r.Data)
	case expected && kind == Relayed && len(r.Data) > 0 && r.Data[0] == 22:
		p, fresh := n.relayPipe(s, r.Peer)
		if fresh {
			n.goAccept(p, Relayed, s.peer)
		}
		p.deliver(r.Data)
	case target != nil && target != s && len(r.Data) > 0 && r.Data[0] >= 20 && r.Data[0] <= 63:
		// Relay role: only DTLS passes, so a relay carries nothing it
		// could read or that is not end-to-end authenticated.
		_ = target.send(&wire.Frame{Type: wire.TypeRelay, Relay: &wire.Relay{Peer: s.peer, Data: r.Data}})
	}
}

// answerConnect is the far end of Connect: decide whether to link, and how.
func (n *Node) answerConnect(m *wire.Forward) {
	asker := m.Via[0]
	cs, err := wire.ParseContacts(m.Payload)
	if err != nil || len(cs) != 1 || cs[0].ID != asker {
		n.replyError(m, "", "bad connect request")
		return
	}
	theirs := Reachability(cs[0].Reachability)
	mine := n.cfg.Reachability
	n.mu.Lock()
	me := n.selfLocked()
	answer := []wire.Contact{me}
	method := methodRefused
	// Two nodes connecting to each other at once would each run a DTLS
	// client toward the other: the lower ID's attempt goes ahead.
	crossing := n.connecting[asker] > 0 && lowerID(n.id, asker)
	if !crossing && n.sessions[asker] == nil && n.table.Accepts(asker) {
		switch {
		case mine.Reachable():
			method = methodDialMe
			n.expected[asker] = map[bool]PathKind{true: MappedPath, false: Direct}[mine == Mapped]
		case theirs.Reachable():
			method = methodDialYou
		case mine == EndpointIndependent && theirs == EndpointIndependent:
			method = methodPunch
			n.expected[asker] = Punched
		default:
			for _, s := range n.sessions {
				if s.linked && Reachability(s.contact.Reachability).Reachable() && s.kind != Relayed {
					method = methodRelay
					answer = append(answer, s.contact)
					n.expected[asker] = Relayed
					break
				}
			}
		}
	}
	n.mu.Unlock()
	n.reply(m, kindConnect, append([]byte{method}, wire.Contacts(answer)...))
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.HandshakeTimeout)
	defer cancel()
	switch method {
	case methodDialYou:
		kind := Direct
		if theirs == Mapped {
			kind = MappedPath
		}
		if err := n.dialAny(ctx, asker, cs[0].Addrs, kind); err != nil {
			n.log.Debug("overlay: dialling back failed", "peer", asker.Short(), "err", err)
		}
	case methodPunch:
		stop := n.sendProbes(ctx, cs[0].Addrs)
		_ = n.awaitLink(ctx, asker)
		stop()
	case methodDialMe, methodRelay:
		_ = n.awaitLink(ctx, asker)
	}
	if method != methodRefused {
		// An answer that led nowhere must not hold a reservation.
		n.mu.Lock()
		delete(n.expected, asker)
		n.mu.Unlock()
	}
}

// lowerID reports whether a sorts before b.
func lowerID(a, b NodeID) bool { return bytes.Compare(a[:], b[:]) < 0 }
