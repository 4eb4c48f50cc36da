package election

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/superpeer/superpeer/nat/clock"
)

// RegistrationStore is the site's SIP location service as the registrar
// uses it. The Node's store replicates through the site's group; MemStore
// keeps the same semantics in one process for tests.
//
// Semantics, for both:
//   - A binding is identified by (AOR, Binding.Key()). Put adds or
//     replaces it and returns it with Index set; a put is durable (in the
//     replicated log on a majority of voters) when Put returns.
//   - Refresh extends the expiry of the current version of a binding. It
//     returns ErrNoBinding when the binding is gone or expired (the
//     registrar then puts it anew). A refresh may be held in memory for up
//     to Config.RefreshFlush before it is written to the log, but only
//     after another superpeer (or the leader) has acknowledged holding it
//     too; with no other superpeer, or when the binding would otherwise
//     lapse before the next flush, it is written at once. So the death of
//     one superpeer loses no refresh; losing power to the whole site at
//     once can lose the refreshes of the last RefreshFlush (bindings then
//     lapse at their previous expiry, earlier than the phone expects, and
//     the phone's next REGISTER puts them again).
//   - Lookup and List return unexpired bindings from this peer's replica,
//     which may lack a write committed elsewhere in the last moments;
//     LookupCurrent first checks with the leader and includes every write
//     committed before the call.
//   - Watch delivers each put, refresh and removal in commit order. An
//     expired binding is hidden by lookups at its expiry; its removal event
//     comes when the leader sweeps it (within minutes). A reader that falls
//     behind gets BindingsResync and should List again.
type RegistrationStore interface {
	Put(ctx context.Context, b Binding) (Binding, error)
	Refresh(ctx context.Context, aor, key string, expires time.Time) (Binding, error)
	Remove(ctx context.Context, aor, key string) error
	RemoveAOR(ctx context.Context, aor string) error
	Lookup(aor string) []Binding
	LookupCurrent(ctx context.Context, aor string) ([]Binding, error)
	List() []Binding
	Watch(ctx context.Context) <-chan BindingEvent
}

// BindingEventKind says what happened to a binding.
type BindingEventKind string

const (
	BindingPut       BindingEventKind = "put"
	BindingRefreshed BindingEventKind = "refreshed"
	BindingRemoved   BindingEventKind = "removed"
	// BindingsResync: events were lost (slow reader, or the state was
	// replaced from a snapshot); List again.
	BindingsResync BindingEventKind = "resync"
)

// BindingEvent is one change seen by Watch.
type BindingEvent struct {
	Kind    BindingEventKind `json:"kind"`
	Binding Binding          `json:"binding"`
}

// refreshMargin: a refresh is written at once when the binding's
// replicated expiry is closer than RefreshFlush plus this margin, so that
// a held refresh always reaches the log before the binding would lapse.
const refreshMargin = 10 * time.Second

// Registrations returns the node's registration store.
func (n *Node) Registrations() RegistrationStore { return nodeRegistrations{n} }

type nodeRegistrations struct{ n *Node }

func (r nodeRegistrations) Put(ctx context.Context, b Binding) (Binding, error) {
	if b.AOR == "" || b.Key() == "" {
		return Binding{}, fmt.Errorf("%w: binding without AOR or contact", ErrBadCommand)
	}
	res, err := r.n.Apply(ctx, Command{Op: OpBindingPut, Binding: &b})
	if err != nil {
		return Binding{}, fmt.Errorf("registering %s at %s: %w", b.Key(), b.AOR, err)
	}
	if res.Binding != nil {
		return *res.Binding, nil
	}
	b.Index = res.Index
	return b, nil
}

func (r nodeRegistrations) Refresh(ctx context.Context, aor, key string, expires time.Time) (Binding, error) {
	n := r.n
	now := n.clock.Now()
	b, ok := n.binding(aor, key)
	if !ok || !b.Expires.After(now) {
		return Binding{}, fmt.Errorf("refreshing %s at %s: %w", key, aor, ErrNoBinding)
	}
	if !expires.After(b.Expires) {
		return b, nil
	}
	var replicated time.Time
	n.fsm.Read(func(s *SiteState) { replicated = s.Registrations[aor][key].Expires })
	ref := Refresh{AOR: aor, Key: key, Index: b.Index, Expires: expires}
	durable := n.cfg.RefreshFlush == 0 || replicated.Sub(now) < n.cfg.RefreshFlush+refreshMargin
	if !durable {
		if targets := n.refreshTargets(); len(targets) > 0 && !n.shareRefresh(ctx, targets, ref) {
			durable = true
		}
	}
	if durable {
		if _, err := n.Apply(ctx, Command{Op: OpBindingRefresh, Refreshes: []Refresh{ref}}); err != nil {
			return Binding{}, fmt.Errorf("refreshing %s at %s: %w", key, aor, err)
		}
	} else {
		n.soft.put(ref)
		n.watches.publishBindings(BindingEvent{Kind: BindingRefreshed, Binding: withExpiry(b, expires)})
	}
	return withExpiry(b, expires), nil
}

func withExpiry(b Binding, t time.Time) Binding {
	b.Expires = t
	return b
}

func (r nodeRegistrations) Remove(ctx context.Context, aor, key string) error {
	if _, err := r.n.Apply(ctx, Command{Op: OpBindingRemove, AOR: aor, Key: key}); err != nil {
		return fmt.Errorf("unregistering %s at %s: %w", key, aor, err)
	}
	return nil
}

func (r nodeRegistrations) RemoveAOR(ctx context.Context, aor string) error {
	if _, err := r.n.Apply(ctx, Command{Op: OpAORRemove, AOR: aor}); err != nil {
		return fmt.Errorf("unregistering every contact of %s: %w", aor, err)
	}
	return nil
}

func (r nodeRegistrations) Lookup(aor string) []Binding {
	return r.n.lookup(aor)
}

func (r nodeRegistrations) LookupCurrent(ctx context.Context, aor string) ([]Binding, error) {
	if err := r.n.Barrier(ctx); err != nil {
		return nil, fmt.Errorf("looking up %s: %w", aor, err)
	}
	return r.n.lookup(aor), nil
}

func (r nodeRegistrations) List() []Binding { return r.n.lookup("") }

func (r nodeRegistrations) Watch(ctx context.Context) <-chan BindingEvent {
	return r.n.watches.bindings(ctx)
}

// binding returns the current version of a binding with held refreshes
// merged in.
func (n *Node) binding(aor, key string) (Binding, bool) {
	var b Binding
	var ok bool
	n.fsm.Read(func(s *SiteState) {
		b, ok = s.Registrations[aor][key]
		if ok {
			b = b.clone()
		}
	})
	if ok {
		if t, held := n.soft.get(Refresh{AOR: aor, Key: key, Index: b.Index}); held && t.After(b.Expires) {
			b.Expires = t
		}
	}
	return b, ok
}

// lookup returns unexpired bindings of aor, or of every AOR when aor is "".
func (n *Node) lookup(aor string) []Binding {
	now := n.clock.Now()
	var out []Binding
	n.fsm.Read(func(s *SiteState) {
		aors := []string{aor}
		if aor == "" {
			aors = sortedKeys(s.Registrations)
		}
		for _, a := range aors {
			for _, k := range sortedKeys(s.Registrations[a]) {
				out = append(out, s.Registrations[a][k].clone())
			}
		}
	})
	kept := out[:0]
	for _, b := range out {
		if t, held := n.soft.get(Refresh{AOR: b.AOR, Key: b.Key(), Index: b.Index}); held && t.After(b.Expires) {
			b.Expires = t
		}
		if b.Expires.After(now) {
			kept = append(kept, b)
		}
	}
	return kept
}

// refreshTargets are the group addresses of the peers that must hold a
// refresh: the other superpeers (they answer for the binding if this one
// dies) and the leader.
func (n *Node) refreshTargets() []string {
	leader := n.LeaderID()
	var out []string
	n.fsm.Read(func(s *SiteState) {
		ids := append([]string(nil), s.Superpeers.IDs...)
		if leader != "" {
			ids = append(ids, leader)
		}
		seen := map[string]bool{n.id: true}
		for _, id := range ids {
			if seen[id] {
				continue
			}
			seen[id] = true
			if m, ok := s.Members[id]; ok && m.Addr != "" {
				out = append(out, m.Addr)
			}
		}
	})
	return out
}

// shareRefresh sends a refresh to every target and reports whether at
// least one acknowledged holding it. The others are still told, in the
// background, within RPCTimeout.
func (n *Node) shareRefresh(ctx context.Context, targets []string, ref Refresh) bool {
	acks := make(chan bool, len(targets))
	for _, addr := range targets {
		go func() {
			cctx, cancel := context.WithTimeout(n.ctx, n.cfg.RPCTimeout)
			defer cancel()
			acks <- n.rpc.call(cctx, addr, rpcRefresh, []Refresh{ref}, nil) == nil
		}()
	}
	for range targets {
		select {
		case ok := <-acks:
			if ok {
				return true
			}
		case <-ctx.Done():
			return false
		}
	}
	return false
}

func (n *Node) handleRefresh(ctx context.Context, body json.RawMessage) (any, error) {
	var refs []Refresh
	if err := json.Unmarshal(body, &refs); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	for _, r := range refs {
		var b Binding
		var ok bool
		n.fsm.Read(func(s *SiteState) { b, ok = s.Registrations[r.AOR][r.Key] })
		if ok && b.Index == r.Index && r.Expires.After(b.Expires) {
			n.soft.put(r)
			n.watches.publishBindings(BindingEvent{Kind: BindingRefreshed, Binding: withExpiry(b, r.Expires)})
		}
		// A refresh for a version not applied here yet is dropped: the
		// sender also holds it and writes it within RefreshFlush.
	}
	return struct{}{}, nil
}

// flushLoop writes held refreshes to the log every RefreshFlush.
func (n *Node) flushLoop() {
	defer n.wg.Done()
	if n.cfg.RefreshFlush == 0 {
		return
	}
	t := n.clock.NewTimer(n.cfg.RefreshFlush)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C():
		}
		n.flushRefreshes(n.ctx)
		t.Reset(n.cfg.RefreshFlush)
	}
}

// flushRefreshes commits every held refresh that the log does not have
// yet, as one command. Several peers may hold the same refresh and write
// it; applying a refresh twice changes nothing.
func (n *Node) flushRefreshes(ctx context.Context) {
	held := n.soft.all()
	var due []Refresh
	n.fsm.Read(func(s *SiteState) {
		for _, r := range held {
			b, ok := s.Registrations[r.AOR][r.Key]
			if !ok || b.Index != r.Index || !r.Expires.After(b.Expires) {
				n.soft.drop(r) // gone, replaced, or already written
				continue
			}
			due = append(due, r)
		}
	})
	if len(due) == 0 {
		return
	}
	sort.Slice(due, func(i, j int) bool {
		if due[i].AOR != due[j].AOR {
			return due[i].AOR < due[j].AOR
		}
		return due[i].Key < due[j].Key
	})
	if _, err := n.Apply(ctx, Command{Op: OpBindingRefresh, Refreshes: due}); err != nil {
		n.log.Warn("writing held registration refreshes failed; retrying at the next flush", "count", len(due), "err", err)
		return
	}
	for _, r := range due {
		n.soft.drop(r)
	}
}

// FlushRefreshes writes every held refresh to the log now (the daemon
// calls it on shutdown).
func (n *Node) FlushRefreshes(ctx context.Context) { n.flushRefreshes(ctx) }

// softTable holds refreshes not yet in the log, keyed by binding version.
type softTable struct {
	mu sync.Mutex // guards following
	m  map[softKey]time.Time
}

type softKey struct {
	aor, key string
	index    uint64
}

func newSoftTable() *softTable { return &softTable{m: map[softKey]time.Time{}} }

func (t *softTable) put(r Refresh) {
	k := softKey{r.AOR, r.Key, r.Index}
	t.mu.Lock()
	if r.Expires.After(t.m[k]) {
		t.m[k] = r.Expires
	}
	t.mu.Unlock()
}

func (t *softTable) get(r Refresh) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	v, ok := t.m[softKey{r.AOR, r.Key, r.Index}]
	return v, ok
}

// drop forgets r unless a later refresh of the same binding arrived.
func (t *softTable) drop(r Refresh) {
	k := softKey{r.AOR, r.Key, r.Index}
	t.mu.Lock()
	if !t.m[k].After(r.Expires) {
		delete(t.m, k)
	}
	t.mu.Unlock()
}

func (t *softTable) all() []Refresh {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Refresh, 0, len(t.m))
	for k, v := range t.m {
		out = append(out, Refresh{AOR: k.aor, Key: k.key, Index: k.index, Expires: v})
	}
	return out
}

func (t *softTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// MemStore is a RegistrationStore in one process, with the semantics
// documented on RegistrationStore (every write is immediately "durable";
// LookupCurrent is Lookup). The SIP registrar's tests use it.
type MemStore struct {
	clock   clock.Clock
	watches *watchHub

	mu    sync.Mutex // guards following
	state *SiteState
	index uint64
}

// NewMemStore returns an empty store whose expiry follows c (nil: wall clock).
func NewMemStore(c clock.Clock) *MemStore {
	return &MemStore{clock: clock.OrReal(c), watches: newWatchHub(), state: NewSiteState()}
}

func (m *MemStore) apply(cmd Command) (ApplyResult, error) {
	m.mu.Lock()
	m.index++
	res, ch := m.state.Apply(m.index, cmd)
	m.mu.Unlock()
	if res.Err != nil {
		return res, res.Err
	}
	kind := BindingPut
	if cmd.Op == OpBindingRefresh {
		kind = BindingRefreshed
	}
	for _, b := range ch.Bindings {
		m.watches.publishBindings(BindingEvent{Kind: kind, Binding: b})
	}
	for _, b := range ch.Removed {
		m.watches.publishBindings(BindingEvent{Kind: BindingRemoved, Binding: b})
	}
	return res, nil
}

func (m *MemStore) Put(_ context.Context, b Binding) (Binding, error) {
	if b.AOR == "" || b.Key() == "" {
		return Binding{}, fmt.Errorf("%w: binding without AOR or contact", ErrBadCommand)
	}
	res, err := m.apply(Command{Op: OpBindingPut, Binding: &b})
	if err != nil {
		return Binding{}, err
	}
	return *res.Binding, nil
}

func (m *MemStore) Refresh(_ context.Context, aor, key string, expires time.Time) (Binding, error) {
	m.mu.Lock()
	b, ok := m.state.Registrations[aor][key]
	m.mu.Unlock()
	if !ok || !b.Expires.After(m.clock.Now()) {
		return Binding{}, fmt.Errorf("refreshing %s at %s: %w", key, aor, ErrNoBinding)
	}
	if !expires.After(b.Expires) {
		return b.clone(), nil
	}
	if _, err := m.apply(Command{Op: OpBindingRefresh, Refreshes: []Refresh{{AOR: aor, Key: key, Index: b.Index, Expires: expires}}}); err != nil {
		return Binding{}, err
	}
	return withExpiry(b.clone(), expires), nil
}

func (m *MemStore) Remove(_ context.Context, aor, key string) error {
	_, err := m.apply(Command{Op: OpBindingRemove, AOR: aor, Key: key})
	return err
}

func (m *MemStore) RemoveAOR(_ context.Context, aor string) error {
	_, err := m.apply(Command{Op: OpAORRemove, AOR: aor})
	return err
}

func (m *MemStore) Lookup(aor string) []Binding {
	now := m.clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	aors := []string{aor}
	if aor == "" {
		aors = sortedKeys(m.state.Registrations)
	}
	var out []Binding
	for _, a := range aors {
		for _, k := range sortedKeys(m.state.Registrations[a]) {
			if b := m.state.Registrations[a][k]; b.Expires.After(now) {
				out = append(out, b.clone())
			}
		}
	}
	return out
}

func (m *MemStore) LookupCurrent(_ context.Context, aor string) ([]Binding, error) {
	return m.Lookup(aor), nil
}

func (m *MemStore) List() []Binding { return m.Lookup("") }

func (m *MemStore) Watch(ctx context.Context) <-chan BindingEvent { return m.watches.bindings(ctx) }

var (
	_ RegistrationStore = nodeRegistrations{}
	_ RegistrationStore = (*MemStore)(nil)
)
