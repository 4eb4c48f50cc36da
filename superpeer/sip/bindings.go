package sip

import (
	"context"
	"errors"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/superpeer/superpeer/nat/clock"
)

// Flow is the connection a binding was registered over (RFC 5626 section
// 3.3): which superpeer holds it and the addresses of its two ends. Any
// superpeer of the site can use it: the holder sends on it directly, the
// others forward the request to the holder, or, for a UDP flow from the
// site's own LAN, send from their own socket.
type Flow struct {
	// Superpeer is the node ID of the superpeer that holds the flow.
	Superpeer string `json:"superpeer"`
	// Transport is udp, tcp or tls.
	Transport string `json:"transport"`
	// Remote is the phone's address as the superpeer sees it (received and
	// rport, RFC 3581), as ip:port.
	Remote string `json:"remote"`
	// Local is the superpeer's listening address the flow arrived on.
	Local string `json:"local"`
	// Token is the flow token the holder issued (RFC 5626 section 5.2); it
	// rides in the user part of a Route or Record-Route URI.
	Token string `json:"token,omitempty"`
}

// Binding is one contact registered for an address of record.
type Binding struct {
	// AOR is the canonical address of record, "sip:user@domain".
	AOR string `json:"aor"`
	// Contact is the Contact URI as registered.
	Contact string `json:"contact"`
	// InstanceID and RegID identify an RFC 5626 registration; when
	// InstanceID is set they, not the Contact URI, identify the binding.
	InstanceID string `json:"instance_id,omitempty"`
	RegID      int    `json:"reg_id,omitempty"`
	// Q is the q-value in thousandths (1000 when absent).
	Q int `json:"q,omitempty"`
	// Path holds the Path header URIs of the REGISTER (RFC 3327), in order;
	// requests to this contact carry them as Route headers.
	Path []string `json:"path,omitempty"`
	// CallID and CSeq order REGISTERs from one UA (RFC 3261 section 10.3
	// step 7).
	CallID string `json:"call_id,omitempty"`
	CSeq   uint32 `json:"cseq,omitempty"`
	// Flow is how to reach the contact.
	Flow Flow `json:"flow"`
	// Outbound says the UA registered with RFC 5626 outbound: requests go
	// over the flow, never to the Contact address.
	Outbound bool `json:"outbound,omitempty"`
	// Expires is when the binding lapses unless refreshed.
	Expires time.Time `json:"expires"`
	// Registered is when this binding was last written by a REGISTER.
	Registered time.Time `json:"registered"`
}

// Key identifies a binding within its AOR: the instance and reg-id for an
// RFC 5626 registration, the Contact URI otherwise.
func (b Binding) Key() string {
	if b.InstanceID != "" {
		return b.InstanceID + ";reg-id=" + strconv.Itoa(b.RegID)
	}
	return b.Contact
}

// EventKind says what happened to a binding.
type EventKind int

const (
	// BindingPut is a new or replaced binding.
	BindingPut EventKind = iota
	// BindingRefreshed is a binding whose expiry moved.
	BindingRefreshed
	// BindingRemoved is a binding removed by a REGISTER (expires=0 or *).
	BindingRemoved
	// BindingExpired is a binding that lapsed.
	BindingExpired
)

func (k EventKind) String() string {
	switch k {
	case BindingPut:
		return "put"
	case BindingRefreshed:
		return "refreshed"
	case BindingRemoved:
		return "removed"
	case BindingExpired:
		return "expired"
	}
	return "EventKind(" + strconv.Itoa(int(k)) + ")"
}

// BindingEvent tells a watcher about a change. Remaining is how many
// bindings the AOR has left after the change.
type BindingEvent struct {
	Kind      EventKind
	Binding   Binding
	Remaining int
}

// ErrNoBinding is returned by Refresh and Remove when the binding does not
// exist (any more).
var ErrNoBinding = errors.New("sip: no such binding")

// Bindings is the store of registrations. The daemon backs it with the
// site's replicated state so that every superpeer of the site sees every
// binding at once; MemBindings is the in-memory implementation.
//
// Implementations expire bindings themselves and must never return an
// expired one from Lookup.
type Bindings interface {
	// Put inserts or replaces the binding with b's AOR and Key.
	Put(ctx context.Context, b Binding) error
	// Refresh moves the expiry of an existing binding; it must not write
	// more than the new expiry (registration refreshes are frequent).
	Refresh(ctx context.Context, aor, key string, expires time.Time) error
	// Remove deletes one binding; key "" deletes all bindings of aor.
	Remove(ctx context.Context, aor, key string) error
	// Lookup returns the live bindings of aor, in no particular order.
	Lookup(ctx context.Context, aor string) ([]Binding, error)
	// Watch calls fn for every change, in order, until cancel is called.
	// fn must not block.
	Watch(fn func(BindingEvent)) (cancel func())
}

// MemBindings is an in-memory Bindings with expiry driven by a Clock.
type MemBindings struct {
	clock clock.Clock

	mu       sync.Mutex // guards following
	byAOR    map[string]map[string]*memBinding
	watchers map[int]func(BindingEvent)
	nextW    int
}

type memBinding struct {
	b     Binding
	timer clock.Timer
}

// NewMemBindings returns an empty store; c may be nil for the wall clock.
func NewMemBindings(c clock.Clock) *MemBindings {
	return &MemBindings{
		clock:    clock.OrReal(c),
		byAOR:    map[string]map[string]*memBinding{},
		watchers: map[int]func(BindingEvent){},
	}
}

// Put implements Bindings.
func (m *MemBindings) Put(_ context.Context, b Binding) error {
	b.Path = slices.Clone(b.Path)
	m.mu.Lock()
	set := m.byAOR[b.AOR]
	if set == nil {
		set = map[string]*memBinding{}
		m.byAOR[b.AOR] = set
	}
	key := b.Key()
	if old := set[key]; old != nil {
		old.timer.Stop()
	}
	mb := &memBinding{b: b}
	set[key] = mb
	mb.timer = m.expireTimerLocked(b.AOR, key, mb)
	ev := BindingEvent{Kind: BindingPut, Binding: b, Remaining: len(set)}
	m.notifyLocked(ev)
	m.mu.Unlock()
	return nil
}

// expireTimerLocked arms the timer that drops mb when it lapses.
func (m *MemBindings) expireTimerLocked(aor, key string, mb *memBinding) clock.Timer {
	d := mb.b.Expires.Sub(m.clock.Now())
	return m.clock.AfterFunc(max(d, 0), func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		set := m.byAOR[aor]
		if set == nil || set[key] != mb || m.clock.Now().Before(mb.b.Expires) {
			return
		}
		delete(set, key)
		if len(set) == 0 {
			delete(m.byAOR, aor)
		}
		m.notifyLocked(BindingEvent{Kind: BindingExpired, Binding: mb.b, Remaining: len(set)})
	})
}

// Refresh implements Bindings.
func (m *MemBindings) Refresh(_ context.Context, aor, key string, expires time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	mb := m.byAOR[aor][key]
	if mb == nil || !m.clock.Now().Before(mb.b.Expires) {
		return ErrNoBinding
	}
	mb.timer.Stop()
	mb.b.Expires = expires
	mb.timer = m.expireTimerLocked(aor, key, mb)
	m.notifyLocked(BindingEvent{Kind: BindingRefreshed, Binding: mb.b, Remaining: len(m.byAOR[aor])})
	return nil
}

// Remove implements Bindings.
func (m *MemBindings) Remove(_ context.Context, aor, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	set := m.byAOR[aor]
	if len(set) == 0 {
		return ErrNoBinding
	}
	keys := []string{key}
	if key == "" {
		keys = keys[:0]
		for k := range set {
			keys = append(keys, k)
		}
		sort.Strings(keys)
	}
	for _, k := range keys {
		mb := set[k]
		if mb == nil {
			return ErrNoBinding
		}
		mb.timer.Stop()
		delete(set, k)
		m.notifyLocked(BindingEvent{Kind: BindingRemoved, Binding: mb.b, Remaining: len(set)})
	}
	if len(set) == 0 {
		delete(m.byAOR, aor)
	}
	return nil
}

// Lookup implements Bindings.
func (m *MemBindings) Lookup(_ context.Context, aor string) ([]Binding, error) {
	now := m.clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Binding
	for _, mb := range m.byAOR[aor] {
		if now.Before(mb.b.Expires) {
			b := mb.b
			b.Path = slices.Clone(b.Path)
			out = append(out, b)
		}
	}
	return out, nil
}

// Len returns how many bindings the store holds.
func (m *MemBindings) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, set := range m.byAOR {
		n += len(set)
	}
	return n
}

// Watch implements Bindings.
func (m *MemBindings) Watch(fn func(BindingEvent)) (cancel func()) {
	m.mu.Lock()
	id := m.nextW
	m.nextW++
	m.watchers[id] = fn
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		delete(m.watchers, id)
		m.mu.Unlock()
	}
}

func (m *MemBindings) notifyLocked(ev BindingEvent) {
	for _, fn := range m.watchers {
		fn(ev)
	}
}
