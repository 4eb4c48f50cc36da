package dht

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/superpeer/superpeer/nat/clock"
	"github.com/superpeer/superpeer/overlay/routing"
)

// Reason says why a put was rejected.
type Reason string

// The reasons a store rejects a put.
const (
	ReasonMalformed      Reason = "malformed"
	ReasonBadSignature   Reason = "bad-signature"
	ReasonExpired        Reason = "expired"
	ReasonTooLong        Reason = "lifetime-too-long"
	ReasonStaleSequence  Reason = "stale-sequence"
	ReasonNotOwner       Reason = "not-owner"
	ReasonQuota          Reason = "quota-exceeded"
	ReasonNotResponsible Reason = "not-responsible"
)

// RejectError is a put's rejection; callers branch on Reason.
type RejectError struct {
	Reason Reason
	Key    routing.ID
	Detail string
}

func (e *RejectError) Error() string {
	return fmt.Sprintf("put %s rejected: %s: %s", e.Key.Short(), e.Reason, e.Detail)
}

// IsRejection returns the rejection inside err, if any.
func IsRejection(err error) (*RejectError, bool) {
	var r *RejectError
	ok := errors.As(err, &r)
	return r, ok
}

// StoreConfig bounds a store.
type StoreConfig struct {
	// Quota is how many records one publisher key may store on this node.
	// Default 1000.
	Quota int
	// MaxLifetime is the longest a record may live from now; longer
	// expiries are refused (publishers refresh instead). Default 2 h.
	MaxLifetime time.Duration
	// Clock tells time; nil is the wall clock.
	Clock clock.Clock
}

// DefaultStoreConfig returns the store limits of the appliance.
func DefaultStoreConfig() StoreConfig {
	return StoreConfig{Quota: 1000, MaxLifetime: 2 * time.Hour}
}

// Validate rejects nonsense limits.
func (c StoreConfig) Validate() error {
	if c.Quota < 1 {
		return fmt.Errorf("dht: quota %d: want at least 1", c.Quota)
	}
	if c.MaxLifetime < time.Second {
		return fmt.Errorf("dht: max lifetime %v: want at least 1s", c.MaxLifetime)
	}
	return nil
}

// Store keeps the records this node is a replica for. Safe for concurrent
// use.
type Store struct {
	cfg   StoreConfig
	clock clock.Clock

	mu      sync.Mutex // guards following
	records map[routing.ID]*Record
	count   map[string]int // records per publisher key
}

// NewStore returns an empty store; cfg must be valid.
func NewStore(cfg StoreConfig) *Store {
	return &Store{
		cfg:     cfg,
		clock:   clock.OrReal(cfg.Clock),
		records: map[routing.ID]*Record{},
		count:   map[string]int{},
	}
}

// Put stores r after checking it; the error is a *RejectError saying why
// when the record is refused. Re-putting the record already held is
// accepted (replicas and refreshes do that).
func (s *Store) Put(r *Record) error {
	key := r.Key()
	reject := func(reason Reason, format string, args ...any) error {
		return &RejectError{Reason: reason, Key: key, Detail: fmt.Sprintf(format, args...)}
	}
	if err := r.Verify(); err != nil {
		if errors.Is(err, ErrBadSignature) {
			return reject(ReasonBadSignature, "publisher %x", []byte(r.Publisher))
		}
		return reject(ReasonMalformed, "%v", err)
	}
	now := s.clock.Now()
	if !r.Expires.After(now) {
		return reject(ReasonExpired, "expired at %s", r.Expires.UTC().Format(time.RFC3339))
	}
	if r.Expires.Sub(now) > s.cfg.MaxLifetime {
		return reject(ReasonTooLong, "lives %s, limit %s", r.Expires.Sub(now).Round(time.Second), s.cfg.MaxLifetime)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.liveLocked(key, now)
	pub := string(r.Publisher)
	if old != nil {
		if !bytes.Equal(old.Publisher, r.Publisher) {
			return reject(ReasonNotOwner, "%q is held by another publisher until %s", r.AOR, old.Expires.UTC().Format(time.RFC3339))
		}
		if r.Seq < old.Seq || (r.Seq == old.Seq && !bytes.Equal(r.Signature, old.Signature)) {
			return reject(ReasonStaleSequence, "sequence %d, store holds %d", r.Seq, old.Seq)
		}
	} else {
		if s.count[pub] >= s.cfg.Quota {
			s.expireLocked(now) // expired records free their slots
		}
		if s.count[pub] >= s.cfg.Quota {
			return reject(ReasonQuota, "publisher holds %d records, quota %d", s.count[pub], s.cfg.Quota)
		}
	}
	if old == nil {
		s.count[pub]++
	}
	s.records[key] = r
	return nil
}

// liveLocked returns the unexpired record under key, dropping an expired
// one.
func (s *Store) liveLocked(key routing.ID, now time.Time) *Record {
	r := s.records[key]
	if r != nil && !r.Expires.After(now) {
		s.dropLocked(key, r)
		return nil
	}
	return r
}

func (s *Store) dropLocked(key routing.ID, r *Record) {
	delete(s.records, key)
	pub := string(r.Publisher)
	if s.count[pub]--; s.count[pub] <= 0 {
		delete(s.count, pub)
	}
}

// Get returns the unexpired record under key.
func (s *Store) Get(key routing.ID) (*Record, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.liveLocked(key, s.clock.Now())
	return r, r != nil
}

// Expire drops every expired record and returns how many it dropped.
func (s *Store) Expire() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.expireLocked(s.clock.Now())
}

func (s *Store) expireLocked(now time.Time) int {
	n := 0
	for k, r := range s.records {
		if !r.Expires.After(now) {
			s.dropLocked(k, r)
			n++
		}
	}
	return n
}

// Len returns the number of records held (expired ones included until
// the next Expire or Get).
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.records)
}

// Records returns the unexpired records, for handing replicas over.
func (s *Store) Records() []*Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	out := make([]*Record, 0, len(s.records))
	for _, r := range s.records {
		if r.Expires.After(now) {
			out = append(out, r)
		}
	}
	return out
}

// PublisherUsage returns how many records pub holds here.
func (s *Store) PublisherUsage(pub ed25519.PublicKey) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count[string(pub)]
}
