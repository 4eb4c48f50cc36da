package election

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Op names a command of the replicated site state.
type Op string

const (
	OpMemberPut      Op = "member.put"
	OpMemberRemove   Op = "member.remove"
	OpSuperpeers     Op = "superpeers.set"
	OpBindingPut     Op = "binding.put"
	OpBindingRemove  Op = "binding.remove"
	OpAORRemove      Op = "aor.remove"
	OpBindingRefresh Op = "binding.refresh"
	OpExpire         Op = "expire"
	OpTURNSecret     Op = "turn.secret"
	OpRecordPut      Op = "record.put"
	OpRecordRemove   Op = "record.remove"
	OpConfigSet      Op = "config.set"
)

// Refresh extends one binding's expiry. It names the binding's version
// (Index), so it cannot revive a binding removed and put again.
type Refresh struct {
	AOR     string    `json:"aor"`
	Key     string    `json:"key"`
	Index   uint64    `json:"index"`
	Expires time.Time `json:"expires"`
}

// Command is one change to the site state. Every value it needs (times,
// secrets) is in the command: applying it reads no clock and draws no
// random numbers, so every peer reaches the same state.
type Command struct {
	Op        Op             `json:"op"`
	Member    *Member        `json:"member,omitempty"`
	ID        string         `json:"id,omitempty"`
	IDs       []string       `json:"ids,omitempty"`
	Reason    string         `json:"reason,omitempty"`
	Binding   *Binding       `json:"binding,omitempty"`
	AOR       string         `json:"aor,omitempty"`
	Key       string         `json:"key,omitempty"`
	Refreshes []Refresh      `json:"refreshes,omitempty"`
	Secret    []byte         `json:"secret,omitempty"`
	Record    *OverlayRecord `json:"record,omitempty"`
	Config    *SiteConfig    `json:"config,omitempty"`
	// At is the proposer's time: the expiry cutoff of OpExpire, the
	// commit time of OpSuperpeers, the rotation time of OpTURNSecret.
	At time.Time `json:"at,omitzero"`
}

// Errors a command can be refused with. They cross the group's RPC by
// their text, so callers may compare with errors.Is on any peer.
var (
	ErrNoBinding     = errors.New("no such binding")
	ErrBadCommand    = errors.New("malformed command")
	ErrUnknownMember = errors.New("unknown member")
)

var commandErrors = []error{ErrNoBinding, ErrBadCommand, ErrUnknownMember}

// ApplyResult is what applying a command returns.
type ApplyResult struct {
	Index uint64 `json:"index"`
	// Binding is the stored binding of OpBindingPut.
	Binding *Binding `json:"binding,omitempty"`
	// Err is a refusal (one of the errors above), nil when applied.
	Err error `json:"-"`
}

// Change tells watchers what an applied command changed.
type Change struct {
	Index      uint64
	Op         Op
	Bindings   []Binding // put or refreshed
	Removed    []Binding // removed or expired
	Superpeers bool      // the set changed
	Members    bool      // the member table changed
}

// SiteState is the replicated state of a site. Apply is a pure function of
// the state and the command: no clock, no I/O, no randomness.
type SiteState struct {
	Index         uint64                        `json:"index"`
	Members       map[string]Member             `json:"members"`
	Superpeers    SuperpeerSet                  `json:"superpeers"`
	Registrations map[string]map[string]Binding `json:"registrations"`
	TURN          TURNSecret                    `json:"turn"`
	Records       map[string]OverlayRecord      `json:"records"`
	Config        SiteConfig                    `json:"config"`
}

// NewSiteState returns an empty state.
func NewSiteState() *SiteState {
	return &SiteState{
		Members:       map[string]Member{},
		Registrations: map[string]map[string]Binding{},
		Records:       map[string]OverlayRecord{},
	}
}

// Apply applies cmd as the log entry at index.
func (s *SiteState) Apply(index uint64, cmd Command) (ApplyResult, Change) {
	s.Index = index
	res := ApplyResult{Index: index}
	ch := Change{Index: index, Op: cmd.Op}
	refuse := func(err error) (ApplyResult, Change) {
		res.Err = err
		return res, ch
	}
	switch cmd.Op {
	case OpMemberPut:
		if cmd.Member == nil || cmd.Member.ID == "" {
			return refuse(fmt.Errorf("%w: member.put without a member", ErrBadCommand))
		}
		m := *cmd.Member
		m.Score = Score(m.Capability)
		s.Members[m.ID] = m
		ch.Members = true
	case OpMemberRemove:
		if _, ok := s.Members[cmd.ID]; !ok {
			return refuse(fmt.Errorf("%w: %q", ErrUnknownMember, cmd.ID))
		}
		delete(s.Members, cmd.ID)
		ch.Members = true
	case OpSuperpeers:
		s.Superpeers = SuperpeerSet{
			Epoch:     index,
			IDs:       slices.Clone(cmd.IDs),
			Reason:    cmd.Reason,
			Committed: cmd.At,
		}
		ch.Superpeers = true
	case OpBindingPut:
		if cmd.Binding == nil || cmd.Binding.AOR == "" || cmd.Binding.Key() == "" {
			return refuse(fmt.Errorf("%w: binding.put without AOR or contact", ErrBadCommand))
		}
		b := cmd.Binding.clone()
		b.Index = index
		byKey := s.Registrations[b.AOR]
		if byKey == nil {
			byKey = map[string]Binding{}
			s.Registrations[b.AOR] = byKey
		}
		byKey[b.Key()] = b
		res.Binding = &b
		ch.Bindings = []Binding{b}
	case OpBindingRemove:
		b, ok := s.Registrations[cmd.AOR][cmd.Key]
		if !ok {
			return refuse(fmt.Errorf("%w: %s %s", ErrNoBinding, cmd.AOR, cmd.Key))
		}
		s.removeBinding(b)
		ch.Removed = []Binding{b}
	case OpAORRemove:
		for _, k := range sortedKeys(s.Registrations[cmd.AOR]) {
			ch.Removed = append(ch.Removed, s.Registrations[cmd.AOR][k])
		}
		delete(s.Registrations, cmd.AOR)
	case OpBindingRefresh:
		for _, r := range cmd.Refreshes {
			b, ok := s.Registrations[r.AOR][r.Key]
			if !ok || b.Index != r.Index || !r.Expires.After(b.Expires) {
				continue // removed, replaced, or already as late
			}
			b.Expires = r.Expires
			s.Registrations[r.AOR][r.Key] = b
			ch.Bindings = append(ch.Bindings, b)
		}
	case OpExpire:
		for _, aor := range sortedKeys(s.Registrations) {
			for _, k := range sortedKeys(s.Registrations[aor]) {
				if b := s.Registrations[aor][k]; b.Expires.Before(cmd.At) {
					s.removeBinding(b)
					ch.Removed = append(ch.Removed, b)
				}
			}
		}
		for k, r := range s.Records {
			if r.Expires.Before(cmd.At) {
				delete(s.Records, k)
			}
		}
	case OpTURNSecret:
		if len(cmd.Secret) < 16 {
			return refuse(fmt.Errorf("%w: TURN secret shorter than 16 bytes", ErrBadCommand))
		}
		s.TURN = TURNSecret{Current: slices.Clone(cmd.Secret), Previous: s.TURN.Current, Rotated: cmd.At}
	case OpRecordPut:
		if cmd.Record == nil || cmd.Record.Key == "" {
			return refuse(fmt.Errorf("%w: record.put without a key", ErrBadCommand))
		}
		r := *cmd.Record
		r.Value = slices.Clone(r.Value)
		s.Records[r.Key] = r
	case OpRecordRemove:
		delete(s.Records, cmd.Key)
	case OpConfigSet:
		if cmd.Config == nil || cmd.Config.SuperpeerCount < 0 {
			return refuse(fmt.Errorf("%w: config.set without a valid config", ErrBadCommand))
		}
		c := *cmd.Config
		c.Settings = maps.Clone(c.Settings)
		s.Config = c
		ch.Superpeers = true // k may have changed
	default:
		return refuse(fmt.Errorf("%w: unknown op %q", ErrBadCommand, cmd.Op))
	}
	return res, ch
}

func (s *SiteState) removeBinding(b Binding) {
	byKey := s.Registrations[b.AOR]
	delete(byKey, b.Key())
	if len(byKey) == 0 {
		delete(s.Registrations, b.AOR)
	}
}

// Clone returns a deep copy.
func (s *SiteState) Clone() *SiteState {
	c := &SiteState{
		Index:         s.Index,
		Members:       maps.Clone(s.Members),
		Superpeers:    s.Superpeers,
		Registrations: make(map[string]map[string]Binding, len(s.Registrations)),
		TURN:          s.TURN,
		Records:       maps.Clone(s.Records),
		Config:        s.Config,
	}
	c.Superpeers.IDs = slices.Clone(s.Superpeers.IDs)
	for aor, byKey := range s.Registrations {
		m := make(map[string]Binding, len(byKey))
		for k, b := range byKey {
			m[k] = b.clone()
		}
		c.Registrations[aor] = m
	}
	c.Config.Settings = maps.Clone(s.Config.Settings)
	return c
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// EncodeCommand serialises a command for the log.
func EncodeCommand(c Command) ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encoding %s command: %w", c.Op, err)
	}
	return b, nil
}

// DecodeCommand reads a command written by EncodeCommand.
func DecodeCommand(b []byte) (Command, error) {
	var c Command
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	return c, nil
}

// FSM is the Raft state machine of the site: a SiteState behind a lock,
// which tells an observer what each command changed. It only applies; it
// decides nothing.
type FSM struct {
	mu       sync.RWMutex // guards following
	state    *SiteState
	onChange func(Change)
	// advanced is closed and replaced whenever state.Index moves.
	advanced chan struct{}
}

// NewFSM returns an FSM over an empty state. onChange, if not nil, is
// called after each applied command, outside the lock, on Raft's goroutine:
// it must not block.
func NewFSM(onChange func(Change)) *FSM {
	return &FSM{state: NewSiteState(), onChange: onChange, advanced: make(chan struct{})}
}

// Index is the index of the last log entry the FSM has seen (a command or
// a configuration change; Raft's no-op and barrier entries never reach it).
func (f *FSM) Index() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.Index
}

// WaitIndex waits until the FSM has seen index or ctx ends.
func (f *FSM) WaitIndex(ctx context.Context, index uint64) error {
	for {
		f.mu.RLock()
		at, ch := f.state.Index, f.advanced
		f.mu.RUnlock()
		if at >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting to apply index %d (at %d): %w", index, at, ctx.Err())
		}
	}
}

// advanceLocked wakes waiters; f.mu is held for writing.
func (f *FSM) advanceLocked() {
	close(f.advanced)
	f.advanced = make(chan struct{})
}

// StoreConfiguration implements raft.ConfigurationStore: a membership
// change counts as seen, so that waiting for an index that is one ends.
func (f *FSM) StoreConfiguration(index uint64, _ raft.Configuration) {
	f.mu.Lock()
	if index > f.state.Index {
		f.state.Index = index
		f.advanceLocked()
	}
	f.mu.Unlock()
}

// Apply implements raft.FSM.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return ApplyResult{Index: l.Index}
	}
	cmd, err := DecodeCommand(l.Data)
	if err != nil {
		f.mu.Lock()
		f.state.Index = l.Index
		f.advanceLocked()
		f.mu.Unlock()
		return ApplyResult{Index: l.Index, Err: err}
	}
	f.mu.Lock()
	res, ch := f.state.Apply(l.Index, cmd)
	f.advanceLocked()
	f.mu.Unlock()
	if f.onChange != nil && res.Err == nil {
		f.onChange(ch)
	}
	return res
}

// Read calls fn with the state under the read lock; fn must not keep
// references into it.
func (f *FSM) Read(fn func(*SiteState)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.state)
}

// Snapshot implements raft.FSM: a deep copy, written out by Persist.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &fsmSnapshot{state: f.state.Clone()}, nil
}

// Restore implements raft.FSM.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s := NewSiteState()
	if err := json.NewDecoder(rc).Decode(s); err != nil {
		return fmt.Errorf("restoring site state from snapshot: %w", err)
	}
	if s.Members == nil {
		s.Members = map[string]Member{}
	}
	if s.Registrations == nil {
		s.Registrations = map[string]map[string]Binding{}
	}
	if s.Records == nil {
		s.Records = map[string]OverlayRecord{}
	}
	f.mu.Lock()
	f.state = s
	f.advanceLocked()
	f.mu.Unlock()
	if f.onChange != nil {
		f.onChange(Change{Index: s.Index, Op: "restore", Superpeers: true, Members: true})
	}
	return nil
}

type fsmSnapshot struct{ state *SiteState }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s.state); err != nil {
		sink.Cancel()
		return fmt.Errorf("writing site state snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() {}
