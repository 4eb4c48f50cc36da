package overlay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/superpeer/superpeer/overlay/dht"
	"github.com/superpeer/superpeer/overlay/routing"
	"github.com/superpeer/superpeer/overlay/wire"
)

// Put stores a signed record on the r nodes closest to its key. A refusal
// is a *dht.RejectError saying why.
func (n *Node) Put(ctx context.Context, r *dht.Record) error {
	b, err := r.Marshal()
	if err != nil {
		return fmt.Errorf("putting %q: %w", r.AOR, err)
	}
	if _, err := n.request(ctx, kindPut, r.Key(), false, b, nil); err != nil {
		return fmt.Errorf("putting %q: %w", r.AOR, err)
	}
	return nil
}

// Publish signs and puts the record AOR -> superpeers with this node's key
// and keeps refreshing it every RefreshInterval until it expires or is
// withdrawn. The sequence number grows with the clock, so it stays ahead
// of earlier versions across restarts.
func (n *Node) Publish(ctx context.Context, aor string, superpeers []dht.Contact, expires time.Time) (*dht.Record, error) {
	key := dht.Key(aor)
	seq := uint64(n.clock.Now().UnixNano())
	n.mu.Lock()
	if old := n.published[key]; old != nil && old.Seq >= seq {
		seq = old.Seq + 1
	}
	n.mu.Unlock()
	r := &dht.Record{AOR: aor, Superpeers: superpeers, Expires: expires.Truncate(time.Second), Seq: seq}
	if err := r.Sign(n.cfg.Key); err != nil {
		return nil, err
	}
	if err := n.Put(ctx, r); err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.published[key] = r
	n.mu.Unlock()
	n.log.Info("overlay: published", "aor", aor, "seq", seq, "expires", r.Expires)
	return r, nil
}

// Withdraw stops refreshing aor's record; it expires at its expiry.
func (n *Node) Withdraw(aor string) {
	n.mu.Lock()
	delete(n.published, dht.Key(aor))
	n.mu.Unlock()
}

// Get looks up aor's record and checks it as every reader must: the
// signature, the AOR it claims and its expiry.
func (n *Node) Get(ctx context.Context, aor string) (*dht.Record, error) {
	key := dht.Key(aor)
	rep, err := n.request(ctx, kindGet, key, false, nil, nil)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		// A hop died with the request on it; the route around it is
		// known by now.
		rep, err = n.request(ctx, kindGet, key, false, nil, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("getting %q: %w", aor, err)
	}
	if len(rep.Payload) == 0 {
		return nil, fmt.Errorf("getting %q: %w", aor, ErrNotFound)
	}
	r, err := dht.Unmarshal(rep.Payload)
	if err != nil {
		return nil, fmt.Errorf("getting %q: %w: %w", aor, ErrBadRecord, err)
	}
	if err := r.Verify(); err != nil {
		return nil, fmt.Errorf("getting %q: %w: %w", aor, ErrBadRecord, err)
	}
	if r.AOR != aor {
		return nil, fmt.Errorf("getting %q: %w: record is for %q", aor, ErrBadRecord, r.AOR)
	}
	if !r.Expires.After(n.clock.Now()) {
		return nil, fmt.Errorf("getting %q: %w: expired at %s", aor, ErrBadRecord, r.Expires)
	}
	return r, nil
}

// rootPut stores a record this node is the root for and copies it to the
// next r-1 closest nodes.
func (n *Node) rootPut(m *wire.Forward) {
	r, err := dht.Unmarshal(m.Payload)
	if err == nil {
		err = n.store.Put(r)
	}
	if err != nil {
		n.replyStatus(m, err)
		return
	}
	n.replicate(r, m.Via[0])
	n.replyStatus(m, nil)
}

func (n *Node) replicate(r *dht.Record, except NodeID) {
	b, err := r.Marshal()
	if err != nil {
		return
	}
	n.mu.Lock()
	peers := n.table.Closest(r.Key(), n.cfg.Replicas, func(id NodeID) bool { return id == n.id })
	n.mu.Unlock()
	for i, id := range peers {
		if i >= n.cfg.Replicas-1 {
			break
		}
		if _, err := n.request(n.ctx, kindStore, id, true, b, nil); err != nil {
			n.log.Debug("overlay: replica store failed", "peer", id.Short(), "err", err)
		}
	}
}

// getAtReplicas asks the replicas when the root itself lacks a record (it
// may have joined after the put, or a replica took over).
func (n *Node) getAtReplicas(m *wire.Forward) {
	n.mu.Lock()
	peers := n.table.Closest(m.Dest, n.cfg.Replicas+1, func(id NodeID) bool { return id == n.id || id == m.Via[0] })
	n.mu.Unlock()
	for _, id := range peers {
		rep, err := n.request(n.ctx, kindGet, id, true, m.Dest[:], nil)
		if err != nil || len(rep.Payload) == 0 {
			continue
		}
		if r, err := dht.Unmarshal(rep.Payload); err == nil && r.Key() == m.Dest {
			_ = n.store.Put(r) // this node is a replica now
			n.reply(m, kindGet, rep.Payload)
			return
		}
	}
	n.reply(m, kindGet, nil)
}

// Send delivers payload to the node to: straight over the link when there
// is one, else routed hop by hop to it.
func (n *Node) Send(ctx context.Context, to NodeID, payload []byte) error {
	n.mu.Lock()
	s := n.sessions[to]
	n.mu.Unlock()
	if s != nil {
		return s.send(&wire.Frame{Type: wire.TypeData, Data: payload})
	}
	if _, err := n.request(ctx, kindAppNode, to, true, payload, nil); err != nil {
		return fmt.Errorf("sending to %s: %w", to.Short(), err)
	}
	return nil
}

// Route carries payload hop by hop to the root of key (the live node
// closest to it) and returns the root's ID once it has taken it.
func (n *Node) Route(ctx context.Context, key routing.ID, payload []byte) (NodeID, error) {
	rep, err := n.request(ctx, kindApp, key, false, payload, nil)
	if err != nil {
		return NodeID{}, fmt.Errorf("routing to key %s: %w", key.Short(), err)
	}
	var root NodeID
	if len(rep.Payload) != routing.IDLen {
		return root, fmt.Errorf("routing to key %s: bad acknowledgement", key.Short())
	}
	copy(root[:], rep.Payload)
	return root, nil
}

// timers runs keepalives, maintenance, refreshes and expiry off the clock.
func (n *Node) timers() {
	ka := n.clock.NewTimer(n.cfg.KeepaliveInterval)
	mt := n.clock.NewTimer(n.cfg.MaintainInterval)
	rf := n.clock.NewTimer(n.cfg.RefreshInterval)
	defer ka.Stop()
	defer mt.Stop()
	defer rf.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-ka.C():
			n.keepalive()
			n.store.Expire()
			ka.Reset(n.cfg.KeepaliveInterval)
		case <-mt.C():
			n.Maintain(n.ctx)
			mt.Reset(n.cfg.MaintainInterval)
		case <-rf.C():
			n.refresh()
			rf.Reset(n.cfg.RefreshInterval)
		}
	}
}

// keepalive pings links and relay carriers and drops sessions that have
// been silent for DeadAfter (transient ones are not pinged, so they end
// once idle).
func (n *Node) keepalive() {
	now := n.clock.Now()
	var dead, ping []*session
	n.mu.Lock()
	for _, s := range n.sessions {
		switch {
		case now.Sub(s.lastHeard) >= n.cfg.DeadAfter:
			dead = append(dead, s)
		case s.linked || s.carrying > 0:
			s.pingNonce = n.rnd.Uint64()
			s.pingSent = now
			ping = append(ping, s)
		}
	}
	n.mu.Unlock()
	for _, s := range dead {
		n.dropSession(s, fmt.Sprintf("silent for %s", n.cfg.DeadAfter))
	}
	for _, s := range ping {
		_ = s.send(&wire.Frame{Type: wire.TypePing, Nonce: s.pingNonce})
	}
	n.advertiseReach()
}

// advertiseReach sends the links this node's reach when it changed since
// it last did: at most once a keepalive interval, however often the
// neighbours' links change.
func (n *Node) advertiseReach() {
	n.mu.Lock()
	reach := n.table.Reach()
	if slices.Equal(reach, n.reachSent) {
		n.mu.Unlock()
		return
	}
	n.reachSent = reach
	var ss []*session
	for _, s := range n.sessions {
		if s.linked {
			ss = append(ss, s)
		}
	}
	n.mu.Unlock()
	for _, s := range ss {
		_ = s.send(&wire.Frame{Type: wire.TypeReach, Reach: reach})
	}
}

// refresh re-puts the records this node published that have not expired.
func (n *Node) refresh() {
	now := n.clock.Now()
	n.mu.Lock()
	var rs []*dht.Record
	for k, r := range n.published {
		if r.Expires.After(now) {
			rs = append(rs, r)
		} else {
			delete(n.published, k)
		}
	}
	n.mu.Unlock()
	for _, r := range rs {
		if err := n.Put(n.ctx, r); err != nil && !errors.Is(err, ErrClosed) {
			n.log.Warn("overlay: refresh failed", "aor", r.AOR, "err", err)
		}
	}
}

// LinkStatus is one link as `superpeer overlay` shows it.
type LinkStatus struct {
	Peer   NodeID   `json:"peer"`
	Remote string   `json:"remote"`
	Path   PathKind `json:"path"`
	// Via is the relay of a relayed link.
	Via        *NodeID `json:"via,omitempty"`
	RTTMillis  float64 `json:"rtt_ms"`
	AgeSeconds float64 `json:"age_s"`
	// Linked is false for transient sessions (join queries, relay
	// carriers), which do not count against the degree bound.
	Linked bool `json:"linked"`
}

// Status is a snapshot of the node for `superpeer overlay`.
type Status struct {
	ID           NodeID         `json:"id"`
	Listen       string         `json:"listen"`
	Reachability Reachability   `json:"reachability"`
	Observed     []string       `json:"observed_addrs,omitempty"`
	Links        []LinkStatus   `json:"links"`
	Table        routing.Health `json:"table"`
	Records      int            `json:"records_stored"`
	Published    int            `json:"records_published"`
}

// Status returns a snapshot of links and table health.
func (n *Node) Status() Status {
	now := n.clock.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	st := Status{
		ID: n.id, Listen: n.sock.pc.LocalAddr().String(), Reachability: n.cfg.Reachability,
		Observed: slices.Clone(n.observed), Table: n.table.Health(), Published: len(n.published),
	}
	for _, s := range n.sessions {
		ls := LinkStatus{
			Peer: s.peer, Remote: s.remote.String(), Path: s.kind, Linked: s.linked,
			RTTMillis:  float64(s.rtt.Microseconds()) / 1000,
			AgeSeconds: now.Sub(s.created).Seconds(),
		}
		if s.kind == Relayed {
			v := s.via
			ls.Via = &v
		}
		st.Links = append(st.Links, ls)
	}
	slices.SortFunc(st.Links, func(a, b LinkStatus) int {
		return routing.CommonPrefixLen(n.id, b.Peer) - routing.CommonPrefixLen(n.id, a.Peer)
	})
	st.Records = n.store.Len()
	return st
}
