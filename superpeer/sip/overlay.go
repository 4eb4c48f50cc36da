package sip

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Target is a superpeer that serves an address of record: a request for
// the AOR is sent to it through the Carrier.
type Target struct {
	// Superpeer is the node ID of the superpeer.
	Superpeer string `json:"superpeer"`
}

// ErrNotFound is returned by Locator.Lookup when the overlay holds no
// record for the AOR.
var ErrNotFound = errors.New("sip: no such address of record in the overlay")

// Locator is the overlay's location service: which superpeers serve an
// AOR. The daemon backs it with the overlay DHT (a signed record under
// SHA-256(AOR) pointing at the site's superpeers); MemOverlay is an
// in-memory one.
type Locator interface {
	// Publish says that this site serves aor until expires; calling it
	// again moves the expiry.
	Publish(ctx context.Context, aor string, expires time.Time) error
	// Withdraw says the site no longer serves aor.
	Withdraw(ctx context.Context, aor string) error
	// Lookup returns the superpeers serving aor, best first, or
	// ErrNotFound.
	Lookup(ctx context.Context, aor string) ([]Target, error)
}

// Carrier moves SIP messages between superpeers: over a direct overlay
// link, or hop by hop along the overlay when there is none. Messages are
// whole SIP messages; delivery is unreliable, like UDP (the transaction
// layer retransmits).
type Carrier interface {
	// Send delivers msg to the superpeer with node ID to.
	Send(ctx context.Context, to string, msg []byte) error
	// Receive blocks until a message arrives or ctx ends.
	Receive(ctx context.Context) (from string, msg []byte, err error)
}

// Superpeers are addressed in SIP by a synthetic IPv6 address made from
// their node ID (a unique local address, RFC 4193, that is never routed):
// Via and Record-Route headers on the overlay side carry it, and sipgo's
// UDP transport sends to it through carrierConn like to any other address.
// Every superpeer computes the same address for the same node ID.
var overlayPrefix = [4]byte{0xfd, 0x53, 0x50, 0x50}

const overlayPort = 5060

// OverlayAddr returns the synthetic SIP address of the superpeer id.
func OverlayAddr(id string) netip.AddrPort {
	h := sha256.Sum256([]byte(id))
	var a [16]byte
	copy(a[:4], overlayPrefix[:])
	copy(a[4:], h[:12])
	return netip.AddrPortFrom(netip.AddrFrom16(a), overlayPort)
}

func isOverlayAddr(a netip.Addr) bool {
	if !a.Is6() || a.Is4In6() {
		return false
	}
	b := a.As16()
	return [4]byte(b[:4]) == overlayPrefix
}

// carrierConn presents a Carrier as a net.PacketConn whose addresses are
// OverlayAddr of node IDs.
type carrierConn struct {
	carrier Carrier
	self    netip.AddrPort
	ctx     context.Context
	cancel  context.CancelFunc

	mu  sync.Mutex // guards following
	ids map[netip.AddrPort]string
}

func newCarrierConn(c Carrier, selfID string) *carrierConn {
	ctx, cancel := context.WithCancel(context.Background())
	cc := &carrierConn{carrier: c, self: OverlayAddr(selfID), ctx: ctx, cancel: cancel, ids: map[netip.AddrPort]string{}}
	cc.learn(selfID)
	return cc
}

// learn records the node ID behind an overlay address and returns it.
func (c *carrierConn) learn(id string) netip.AddrPort {
	ap := OverlayAddr(id)
	c.mu.Lock()
	c.ids[ap] = id
	c.mu.Unlock()
	return ap
}

func (c *carrierConn) idOf(ap netip.AddrPort) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id, ok := c.ids[netip.AddrPortFrom(ap.Addr().Unmap(), overlayPort)]
	return id, ok
}

func (c *carrierConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		from, msg, err := c.carrier.Receive(c.ctx)
		if err != nil {
			if c.ctx.Err() != nil {
				return 0, nil, net.ErrClosed
			}
			return 0, nil, fmt.Errorf("receiving from the overlay: %w", err)
		}
		if len(msg) > len(p) {
			continue // larger than any message we accept
		}
		ap := c.learn(from)
		return copy(p, msg), net.UDPAddrFromAddrPort(ap), nil
	}
}

// sendTimeout bounds one Send on the overlay.
const sendTimeout = 2 * time.Second

func (c *carrierConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ap := addrPortOf(addr)
	id, ok := c.idOf(ap)
	if !ok {
		return 0, fmt.Errorf("sending to %v: no superpeer known at this overlay address", addr)
	}
	ctx, cancel := context.WithTimeout(c.ctx, sendTimeout)
	defer cancel()
	if err := c.carrier.Send(ctx, id, append([]byte(nil), p...)); err != nil {
		return 0, fmt.Errorf("sending to superpeer %s: %w", id, err)
	}
	return len(p), nil
}

func (c *carrierConn) Close() error {
	c.cancel()
	return nil
}

func (c *carrierConn) LocalAddr() net.Addr              { return net.UDPAddrFromAddrPort(c.self) }
func (c *carrierConn) SetDeadline(time.Time) error      { return nil }
func (c *carrierConn) SetReadDeadline(time.Time) error  { return nil }
func (c *carrierConn) SetWriteDeadline(time.Time) error { return nil }

// MemOverlay is an in-memory overlay: a Locator shared by all its members
// and a Carrier per member. Tests use it to run several sites in one
// process; Down makes a member unreachable, as a site whose power failed.
type MemOverlay struct {
	mu      sync.Mutex                      // guards following
	records map[string]map[string]time.Time // aor -> superpeer -> expiry
	inboxes map[string]chan memPacket
	down    map[string]bool
	now     func() time.Time
}

type memPacket struct {
	from string
	msg  []byte
}

// NewMemOverlay returns an empty overlay; now may be nil for time.Now.
func NewMemOverlay(now func() time.Time) *MemOverlay {
	if now == nil {
		now = time.Now
	}
	return &MemOverlay{
		records: map[string]map[string]time.Time{},
		inboxes: map[string]chan memPacket{},
		down:    map[string]bool{},
		now:     now,
	}
}

// Member returns the Locator and Carrier of the superpeer id.
func (o *MemOverlay) Member(id string) (Locator, Carrier) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.inboxes[id] == nil {
		o.inboxes[id] = make(chan memPacket, 1024)
	}
	m := &memMember{o: o, id: id}
	return m, m
}

// SetDown makes the superpeer id unreachable (or reachable again).
func (o *MemOverlay) SetDown(id string, down bool) {
	o.mu.Lock()
	o.down[id] = down
	o.mu.Unlock()
}

// Records returns the superpeers that published aor and have not expired.
func (o *MemOverlay) Records(aor string) []string {
	ts, _ := (&memMember{o: o}).Lookup(context.Background(), aor)
	var ids []string
	for _, t := range ts {
		ids = append(ids, t.Superpeer)
	}
	return ids
}

type memMember struct {
	o  *MemOverlay
	id string
}

func (m *memMember) Publish(_ context.Context, aor string, expires time.Time) error {
	m.o.mu.Lock()
	defer m.o.mu.Unlock()
	if m.o.records[aor] == nil {
		m.o.records[aor] = map[string]time.Time{}
	}
	m.o.records[aor][m.id] = expires
	return nil
}

func (m *memMember) Withdraw(_ context.Context, aor string) error {
	m.o.mu.Lock()
	defer m.o.mu.Unlock()
	delete(m.o.records[aor], m.id)
	return nil
}

func (m *memMember) Lookup(_ context.Context, aor string) ([]Target, error) {
	m.o.mu.Lock()
	defer m.o.mu.Unlock()
	now := m.o.now()
	var ts []Target
	for id, exp := range m.o.records[aor] {
		if now.Before(exp) {
			ts = append(ts, Target{Superpeer: id})
		}
	}
	if len(ts) == 0 {
		return nil, ErrNotFound
	}
	return ts, nil
}

func (m *memMember) Send(ctx context.Context, to string, msg []byte) error {
	m.o.mu.Lock()
	inbox := m.o.inboxes[to]
	down := m.o.down[to] || m.o.down[m.id]
	m.o.mu.Unlock()
	if inbox == nil {
		return fmt.Errorf("no superpeer %s in the overlay", to)
	}
	if down {
		return nil // lost on the way, as a packet to a dead site would be
	}
	select {
	case inbox <- memPacket{from: m.id, msg: msg}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *memMember) Receive(ctx context.Context) (string, []byte, error) {
	m.o.mu.Lock()
	inbox := m.o.inboxes[m.id]
	m.o.mu.Unlock()
	select {
	case p := <-inbox:
		return p.from, p.msg, nil
	case <-ctx.Done():
		return "", nil, ctx.Err()
	}
}
