package portmap

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"
)

// HoldOptions says how a port is held.
type HoldOptions struct {
	// Protocols are tried in order; empty means the client's order. The
	// first the gateway speaks and that maps (and verifies) is used.
	Protocols []Protocol
	// Verifier checks the mapping end to end when it is made and every
	// VerifyInterval. Nil: a mapping the gateway grants is trusted.
	Verifier Verifier
	// OnChange, if set, hears every change of the status: made, renewed to
	// another address, verified, lost. It runs on the hold's goroutine and
	// must not block. The keeper's Cover and Uncover are what the daemon
	// wires here.
	OnChange func(MappingStatus)
}

// MappingStatus is a held mapping's state, for the daemon's status.
type MappingStatus struct {
	Protocol Protocol       `json:"protocol,omitempty"`
	Internal netip.AddrPort `json:"internal"`
	External netip.AddrPort `json:"external"`
	// Active says a mapping is in place; Verified that the last check
	// showed it forwarding (always true without a Verifier).
	Active       bool      `json:"active"`
	Verified     bool      `json:"verified"`
	Permanent    bool      `json:"permanent"`
	GoodUntil    time.Time `json:"good_until"`
	RenewAfter   time.Time `json:"renew_after"`
	LastVerified time.Time `json:"last_verified"`
	// Counters since the hold began.
	Renewals       uint64 `json:"renewals"`
	Verifications  uint64 `json:"verifications"`
	VerifyFailures uint64 `json:"verify_failures"`
	Recreations    uint64 `json:"recreations"`
	// Error is the last failure, for people.
	Error string `json:"error,omitempty"`
}

// Held keeps one port mapped: it makes the mapping, renews it at
// half-life, verifies it every VerifyInterval, makes it again when the
// gateway lost it or it does not forward, and releases it on Close.
type Held struct {
	c        *Client
	internal netip.AddrPort
	opts     HoldOptions
	poke     chan struct{}
	cancel   context.CancelFunc
	done     chan struct{}

	mu     sync.Mutex // guards following
	status MappingStatus
	lostP  map[Protocol]bool
}

// Hold starts keeping internal's port mapped, until Close.
func (c *Client) Hold(internal netip.AddrPort, opts HoldOptions) (*Held, error) {
	if internal.Port() == 0 {
		return nil, errors.New("portmap: holding port 0")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("portmap: client closed")
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &Held{
		c:        c,
		internal: internal,
		opts:     opts,
		poke:     make(chan struct{}, 1),
		cancel:   cancel,
		done:     make(chan struct{}),
		status:   MappingStatus{Internal: internal},
		lostP:    map[Protocol]bool{},
	}
	c.holds[h] = struct{}{}
	go h.run(ctx)
	return h, nil
}

// Status returns the held mapping's state.
func (h *Held) Status() MappingStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.status
}

// Close stops holding and releases the mapping.
func (h *Held) Close(ctx context.Context) error {
	h.cancel()
	select {
	case <-h.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	h.c.mu.Lock()
	delete(h.c.holds, h)
	h.c.mu.Unlock()
	return nil
}

// lost tells the hold that the gateway forgot its mappings of p.
func (h *Held) lost(p Protocol) {
	h.mu.Lock()
	h.lostP[p] = true
	h.mu.Unlock()
	select {
	case h.poke <- struct{}{}:
	default:
	}
}

func (h *Held) update(f func(*MappingStatus)) {
	h.mu.Lock()
	f(&h.status)
	s := h.status
	h.mu.Unlock()
	if h.opts.OnChange != nil {
		h.opts.OnChange(s)
	}
}

func (h *Held) run(ctx context.Context) {
	defer close(h.done)
	c := h.c
	var m Mapping
	retry := c.cfg.RetryInterval
	var nextVerify time.Time
	made := false
	defer func() {
		if m == nil {
			return
		}
		// Released with a context of its own: the hold's is over.
		rctx, cancel := context.WithTimeout(context.Background(), c.cfg.RequestTimeout)
		defer cancel()
		if err := m.Release(rctx); err != nil {
			c.log.Warn("releasing mapping", "internal", h.internal, "err", err)
		} else {
			c.log.Info("mapping released", "protocol", m.Protocol(), "external", m.External(), "internal", h.internal)
		}
		h.update(func(s *MappingStatus) { s.Active, s.Verified = false, false })
	}()
	for {
		if m == nil {
			var want uint16
			if st := h.Status(); st.External.IsValid() {
				want = st.External.Port() // ask for the same port again
			}
			nm, err := c.MapAny(ctx, h.internal, h.opts.Protocols, want)
			if err == nil {
				err = h.verify(ctx, nm)
				if err != nil {
					// Granted but not forwarding: this gateway's word is
					// no good for now.
					nm.Release(ctx)
					nm = nil
				}
			}
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				h.update(func(s *MappingStatus) { s.Active, s.Verified, s.Error = false, false, err.Error() })
				if !h.sleep(ctx, retry) {
					return
				}
				retry = min(2*retry, c.cfg.VerifyInterval)
				continue
			}
			m, retry = nm, c.cfg.RetryInterval
			h.mu.Lock()
			h.lostP = map[Protocol]bool{}
			h.mu.Unlock()
			h.update(func(s *MappingStatus) {
				h.fill(s, m)
				if made {
					s.Recreations++
				}
				s.Error = ""
			})
			made = true
			nextVerify = c.clock.Now().Add(c.cfg.VerifyInterval)
		}

		wake := m.RenewAfter()
		if h.opts.Verifier != nil && nextVerify.Before(wake) {
			wake = nextVerify
		}
		if !h.sleep(ctx, wake.Sub(c.clock.Now())) {
			return
		}
		h.mu.Lock()
		gone := h.lostP[m.Protocol()]
		h.mu.Unlock()
		if gone {
			c.untrack(m)
			m = nil
			continue
		}
		now := c.clock.Now()
		if !now.Before(m.RenewAfter()) {
			nm, err := c.renew(ctx, m)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				c.log.Warn("renewing mapping failed; making it again", "protocol", m.Protocol(), "external", m.External(), "err", err)
				h.update(func(s *MappingStatus) { s.Error = err.Error() })
				m = nil
				continue
			}
			moved := nm.External() != m.External()
			m = nm
			h.update(func(s *MappingStatus) { h.fill(s, m); s.Renewals++ })
			if moved {
				// A new external port is unverified.
				nextVerify = now
			}
		}
		if h.opts.Verifier != nil && !now.Before(nextVerify) {
			if err := h.verify(ctx, m); err != nil {
				if ctx.Err() != nil {
					return
				}
				c.log.Warn("mapping listed but not forwarding; making it again", "protocol", m.Protocol(), "external", m.External(), "err", err)
				// The router may still list it: remove and add afresh.
				m.Release(ctx)
				m = nil
				continue
			}
			nextVerify = c.clock.Now().Add(c.cfg.VerifyInterval)
		}
	}
}

func (h *Held) fill(s *MappingStatus, m Mapping) {
	s.Protocol, s.Internal, s.External = m.Protocol(), m.Internal(), m.External()
	s.Active = true
	s.GoodUntil, s.RenewAfter = m.GoodUntil(), m.RenewAfter()
	s.Permanent = m.GoodUntil().IsZero()
	if h.opts.Verifier == nil {
		s.Verified = true
	}
}

// verify runs the Verifier, bounded by RequestTimeout x 3, and records it.
func (h *Held) verify(ctx context.Context, m Mapping) error {
	if h.opts.Verifier == nil {
		return nil
	}
	vctx, cancel := context.WithTimeout(ctx, 3*h.c.cfg.RequestTimeout)
	err := h.opts.Verifier.Verify(vctx, m.External())
	cancel()
	now := h.c.clock.Now()
	h.update(func(s *MappingStatus) {
		s.Verifications++
		if err != nil {
			s.VerifyFailures++
			s.Verified = false
			s.Error = err.Error()
			return
		}
		s.Verified, s.LastVerified = true, now
	})
	return err
}

// sleep waits d on the client's clock, a poke, or ctx; false when ctx
// ended.
func (h *Held) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := h.c.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	case <-h.poke:
		return true
	}
}
