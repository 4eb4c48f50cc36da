package nat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/pion/stun/v4"

	"github.com/superpeer/superpeer/nat/clock"
)

// KeeperConfig is the keeper's one set of knobs.
type KeeperConfig struct {
	// Clock decides every refresh time. Nil means the wall clock.
	Clock clock.Clock
	// Lifetime is the NAT's UDP binding lifetime. Nil means none is known:
	// every UDP pinhole uses DefaultLifetime.
	Lifetime LifetimeSource
	// DefaultLifetime is assumed for UDP flows until a measurement exists.
	// It is conservative: below the 30 s "unreplied" timer of Linux and
	// OpenWrt and the 20 s some CPE keep, so nothing is lost while the
	// measurement runs.
	DefaultLifetime time.Duration
	// TCPLifetime is assumed for TCP flows without a lifetime source of
	// their own. 120 s puts the CRLF ping in the 95-120 s that RFC 5626
	// section 4.4.1 recommends for connection-oriented flows.
	TCPLifetime time.Duration
	// Margin is the share of the lifetime left unused before each refresh,
	// and MinMargin its floor: the packet must pass the NAT before the
	// binding expires, across scheduling and network delay.
	Margin    float64
	MinMargin time.Duration
	// Jitter spreads refreshes: each interval is shortened by a random
	// share of up to Jitter, so pinholes opened together do not refresh
	// together.
	Jitter float64
	// MinInterval is the shortest interval ever used, whatever the
	// estimate says.
	MinInterval time.Duration
	// FixedInterval, when set, refreshes every pinhole at exactly this
	// interval whatever the lifetime (the fixed schedules of other
	// systems, e.g. 25 s; for comparison and for operators who insist).
	FixedInterval time.Duration
	// WarmUp is when a new flow gets its second refresh. Linux conntrack
	// (and so OpenWrt) moves a UDP flow from its short unreplied timer to
	// the long stream timer only on a packet that passes after the first
	// reply and more than 2 s into the flow; until then the measured
	// (stream) lifetime does not apply.
	WarmUp time.Duration
	// ReplyTimeout is how long a refresh may go unanswered before the next
	// refresh kind is tried or the pinhole is declared lost. STUN requests
	// are retransmitted within it (RFC 5389 RTO 500 ms, doubling).
	ReplyTimeout time.Duration
	// RetryInterval is the first wait between refreshes of a lost pinhole;
	// it doubles up to the normal interval.
	RetryInterval time.Duration
	// Logger receives one line per loss, remap and recovery. Nil means
	// slog.Default().
	Logger *slog.Logger
}

// DefaultKeeperConfig returns the keeper's defaults.
func DefaultKeeperConfig() KeeperConfig {
	return KeeperConfig{
		DefaultLifetime: 20 * time.Second,
		TCPLifetime:     120 * time.Second,
		Margin:          0.10,
		MinMargin:       300 * time.Millisecond,
		Jitter:          0.05,
		MinInterval:     time.Second,
		WarmUp:          2500 * time.Millisecond,
		ReplyTimeout:    3 * time.Second,
		RetryInterval:   5 * time.Second,
	}
}

// Validate rejects settings that cannot keep a pinhole.
func (c *KeeperConfig) Validate() error {
	switch {
	case c.DefaultLifetime < time.Second:
		return fmt.Errorf("keeper: DefaultLifetime %v is under 1 s", c.DefaultLifetime)
	case c.TCPLifetime < time.Second:
		return fmt.Errorf("keeper: TCPLifetime %v is under 1 s", c.TCPLifetime)
	case c.Margin < 0 || c.Margin >= 0.5:
		return fmt.Errorf("keeper: Margin %v outside [0, 0.5)", c.Margin)
	case c.MinMargin < 0:
		return fmt.Errorf("keeper: MinMargin %v is negative", c.MinMargin)
	case c.Jitter < 0 || c.Jitter >= 0.5:
		return fmt.Errorf("keeper: Jitter %v outside [0, 0.5)", c.Jitter)
	case c.MinInterval < 100*time.Millisecond:
		return fmt.Errorf("keeper: MinInterval %v is under 100 ms", c.MinInterval)
	case c.FixedInterval < 0:
		return fmt.Errorf("keeper: FixedInterval %v is negative", c.FixedInterval)
	case c.WarmUp < 0:
		return fmt.Errorf("keeper: WarmUp %v is negative", c.WarmUp)
	case c.ReplyTimeout < 100*time.Millisecond:
		return fmt.Errorf("keeper: ReplyTimeout %v is under 100 ms", c.ReplyTimeout)
	case c.RetryInterval < 100*time.Millisecond:
		return fmt.Errorf("keeper: RetryInterval %v is under 100 ms", c.RetryInterval)
	}
	return nil
}

// stunRTO is RFC 5389's initial retransmission timeout; the keeper's peers
// are across the Internet, so it is not shortened.
const stunRTO = 500 * time.Millisecond

// crlfPing is RFC 5626's keepalive ping on stream flows.
var crlfPing = []byte("\r\n\r\n")

// Keeper keeps every pinhole of the table open with the cheapest refresh
// that works, sent just inside the NAT's binding lifetime, and tells each
// flow's owner when its pinhole was lost or remapped.
type Keeper struct {
	cfg   KeeperConfig
	clock clock.Clock
	log   *slog.Logger
	wake  chan struct{} // poked when there is something to do now

	mu       sync.Mutex // guards following
	pinholes map[uint64]*Pinhole
	byTx     map[[stun.TransactionIDSize]byte]*Pinhole
	covered  map[netip.AddrPort]cover
	replies  []reply
	nextID   uint64
	rng      *rand.Rand
	cancel   context.CancelFunc
	done     chan struct{}
	parked   bool      // the goroutine waits for its timer or a poke
	poked    bool      // there is something to do now
	busy     int       // stream writes, hooks and reopens under way
	wakeAt   time.Time // when its timer fires; zero: no timer

	work sync.WaitGroup // stream writes, hooks and reopens on their goroutines
}

type cover struct {
	method   Method
	external netip.AddrPort
}

type reply struct {
	p       *Pinhole
	refresh Refresh
	tx      [stun.TransactionIDSize]byte
	mapped  netip.AddrPort
	at      time.Time
	n       int
}

// NewKeeper checks cfg and returns a keeper; Start sets it going.
func NewKeeper(cfg KeeperConfig) (*Keeper, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Keeper{
		cfg:      cfg,
		clock:    clock.OrReal(cfg.Clock),
		log:      log.With("component", "keeper"),
		wake:     make(chan struct{}, 1),
		pinholes: map[uint64]*Pinhole{},
		byTx:     map[[stun.TransactionIDSize]byte]*Pinhole{},
		covered:  map[netip.AddrPort]cover{},
		rng:      rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}, nil
}

// Start runs the keeper's goroutine until Close.
func (k *Keeper) Start() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.done != nil {
		return errors.New("keeper: already started")
	}
	ctx, cancel := context.WithCancel(context.Background())
	k.cancel, k.done = cancel, make(chan struct{})
	go k.run(ctx)
	return nil
}

// Close stops the keeper and waits for its goroutines. Pinholes are left
// as they are; their owners close their sockets.
func (k *Keeper) Close() error {
	k.mu.Lock()
	cancel, done := k.cancel, k.done
	k.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	<-done
	k.work.Wait()
	return nil
}

// Add puts a flow into the table and starts keeping it.
func (k *Keeper) Add(spec PinholeSpec) (*Pinhole, error) {
	if spec.Protocol == "" {
		spec.Protocol = UDP
	}
	if err := spec.validate(); err != nil {
		return nil, fmt.Errorf("adding pinhole: %w", err)
	}
	now := k.clock.Now()
	k.mu.Lock()
	k.nextID++
	p := &Pinhole{
		k:         k,
		id:        k.nextID,
		spec:      spec,
		refreshes: spec.refreshes(),
		created:   now,
		external:  spec.External,
		lastOut:   now,
	}
	var firstReply time.Time
	if spec.SeenReply {
		// Answered before it was added: say at its start.
		firstReply = spec.Opened
		if firstReply.IsZero() {
			firstReply = now
		}
	}
	p.open(spec.Opened, firstReply, now)
	if c, ok := k.coverFor(spec.Local); ok {
		p.cover = &c
	}
	k.pinholes[p.id] = p
	k.mu.Unlock()
	k.poke()
	return p, nil
}

// Cover tells the keeper that a verified port mapping forwards external to
// the local socket: pinholes on that socket need no keepalives while it
// lasts. Uncover ends that.
func (k *Keeper) Cover(local netip.AddrPort, method Method, external netip.AddrPort) {
	k.mu.Lock()
	c := cover{method: method, external: external}
	k.covered[local] = c
	for _, p := range k.pinholes {
		if sameSocket(p.spec.Local, local) {
			p.cover = &c
			p.dropPendingLocked()
		}
	}
	k.mu.Unlock()
}

// Uncover ends a Cover (the mapping is gone or does not forward). The
// pinholes on that socket are refreshed at once: their NAT bindings may
// have expired meanwhile.
func (k *Keeper) Uncover(local netip.AddrPort) {
	now := k.clock.Now()
	k.mu.Lock()
	delete(k.covered, local)
	for _, p := range k.pinholes {
		if p.cover != nil && sameSocket(p.spec.Local, local) {
			p.cover = nil
			p.open(now, time.Time{}, now)
		}
	}
	k.mu.Unlock()
	k.poke()
}

func (k *Keeper) coverFor(local netip.AddrPort) (cover, bool) {
	for l, c := range k.covered {
		if sameSocket(local, l) {
			return c, true
		}
	}
	return cover{}, false
}

// sameSocket says whether a and b name the same local socket; an
// unspecified address matches any address on the same port.
func sameSocket(a, b netip.AddrPort) bool {
	if a.Port() != b.Port() {
		return false
	}
	return a.Addr() == b.Addr() || !a.Addr().IsValid() || !b.Addr().IsValid() ||
		a.Addr().IsUnspecified() || b.Addr().IsUnspecified()
}

// HandleSTUN takes a datagram that a pinhole's owner read from its socket.
// It reports whether the datagram was the answer to one of the keeper's
// STUN refreshes (then the owner drops it). It does not block.
func (k *Keeper) HandleSTUN(b []byte, from netip.AddrPort) bool {
	if !stun.IsMessage(b) {
		return false
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil {
		return false
	}
	if m.Type.Method != stun.MethodBinding ||
		(m.Type.Class != stun.ClassSuccessResponse && m.Type.Class != stun.ClassErrorResponse) {
		return false
	}
	k.mu.Lock()
	p := k.byTx[m.TransactionID]
	if p == nil {
		k.mu.Unlock()
		return false
	}
	var mapped netip.AddrPort
	if m.Type.Class == stun.ClassSuccessResponse {
		var xor stun.XORMappedAddress
		if err := xor.GetFrom(m); err == nil {
			mapped = addrPortOf(xor.IP, xor.Port)
		} else {
			var plain stun.MappedAddress
			if err := plain.GetFrom(m); err == nil {
				mapped = addrPortOf(plain.IP, plain.Port)
			}
		}
	}
	k.replies = append(k.replies, reply{p: p, refresh: RefreshSTUN, tx: m.TransactionID, mapped: mapped, at: k.clock.Now(), n: len(b)})
	k.mu.Unlock()
	k.poke()
	return true
}

func addrPortOf(ip net.IP, port int) netip.AddrPort {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || port <= 0 || port > 65535 {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port))
}

// Snapshot returns the pinhole table, by ID.
func (k *Keeper) Snapshot() []PinholeStatus {
	now := k.clock.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]PinholeStatus, 0, len(k.pinholes))
	for _, p := range k.pinholes {
		out = append(out, p.statusLocked(now))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (k *Keeper) poke() {
	k.mu.Lock()
	k.poked = true
	k.mu.Unlock()
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

// actions are what one step decided, done outside the lock.
type actions struct {
	sends   []udpSend
	writes  []streamWrite
	hooks   []func(ctx context.Context) error
	reopens []func(ctx context.Context) error
	remaps  []remapReport
	events  []func()
}

type udpSend struct {
	conn net.PacketConn
	to   netip.AddrPort
	b    []byte
}

type streamWrite struct {
	p *Pinhole
	w interface{ Write([]byte) (int, error) }
}

type remapReport struct {
	src  LifetimeSource
	idle time.Duration
}

func (k *Keeper) run(ctx context.Context) {
	defer close(k.done)
	for {
		now := k.clock.Now()
		k.mu.Lock()
		var acts actions
		next := k.stepLocked(now, &acts)
		k.mu.Unlock()
		k.perform(ctx, &acts)

		var fire <-chan time.Time
		var t clock.Timer
		if !next.IsZero() {
			t = k.clock.NewTimer(next.Sub(now))
			fire = t.C()
		}
		k.mu.Lock()
		k.parked, k.wakeAt = true, next
		k.mu.Unlock()
		select {
		case <-ctx.Done():
			if t != nil {
				t.Stop()
			}
			return
		case <-fire:
		case <-k.wake:
			if t != nil {
				t.Stop()
			}
		}
		k.mu.Lock()
		k.parked, k.poked = false, false
		k.mu.Unlock()
	}
}

// stepLocked handles the replies that came in and every refresh that is
// due, and returns when the next thing is due (zero: nothing is).
func (k *Keeper) stepLocked(now time.Time, acts *actions) time.Time {
	replies := k.replies
	k.replies = nil
	for _, r := range replies {
		if k.pinholes[r.p.id] == r.p {
			k.handleReplyLocked(r, acts)
		}
	}
	var next time.Time
	soonest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for _, p := range k.pinholes {
		if p.cover != nil {
			continue
		}
		if a := p.pending; a != nil {
			if !now.Before(a.deadline) {
				k.expireLocked(p, now, acts)
			} else if a.refresh == RefreshSTUN && !now.Before(a.retransmitAt) {
				a.rto *= 2
				a.retransmitAt = now.Add(a.rto)
				p.keepalives++
				p.bytesOut += uint64(len(a.msg))
				acts.sends = append(acts.sends, udpSend{conn: p.spec.Conn, to: p.spec.Remote, b: a.msg})
			}
		}
		if p.pending == nil && !now.Before(p.next) {
			// Traffic the owner reported since counts as a refresh.
			if !p.lost && p.warm && p.lastOut.Add(p.interval).After(now) {
				p.next = p.lastOut.Add(p.interval)
			} else {
				k.sendLocked(p, now, acts)
			}
		}
		if a := p.pending; a != nil {
			soonest(a.deadline)
			if a.refresh == RefreshSTUN && a.retransmitAt.Before(a.deadline) {
				soonest(a.retransmitAt)
			}
		} else {
			soonest(p.next)
		}
	}
	return next
}

// sendLocked starts a refresh of p with its current refresh kind.
func (k *Keeper) sendLocked(p *Pinhole, now time.Time, acts *actions) {
	kind := p.refreshes[p.refreshIdx]
	a := &attempt{refresh: kind, sentAt: now, deadline: now.Add(k.cfg.ReplyTimeout), idle: now.Sub(p.lastActivity())}
	switch kind {
	case RefreshSTUN:
		m, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
		if err != nil {
			// Building a fixed message cannot fail; if it did, try again
			// at the next step rather than spin.
			p.next = now.Add(k.cfg.MinInterval)
			return
		}
		a.tx = m.TransactionID
		a.msg = m.Raw
		a.rto = stunRTO
		a.retransmitAt = now.Add(stunRTO)
		k.byTx[a.tx] = p
		acts.sends = append(acts.sends, udpSend{conn: p.spec.Conn, to: p.spec.Remote, b: m.Raw})
		p.bytesOut += uint64(len(m.Raw))
	case RefreshCRLF:
		acts.writes = append(acts.writes, streamWrite{p: p, w: p.spec.Stream})
		p.bytesOut += uint64(len(crlfPing))
	case RefreshHook:
		acts.hooks = append(acts.hooks, p.spec.Hook)
	}
	p.pending = a
	p.keepalives++
	p.lastOut = now
}

// expireLocked handles a refresh that got no reply in time: try the next
// refresh kind, or call the pinhole lost and keep trying.
func (k *Keeper) expireLocked(p *Pinhole, now time.Time, acts *actions) {
	p.dropPendingLocked()
	if !p.lost && p.refreshIdx+1 < len(p.refreshes) {
		// The cheaper refresh gets no answer (the far end may not speak
		// STUN): fall back to the next one before calling the flow lost.
		p.refreshIdx++
		p.next = now
		return
	}
	if !p.lost {
		p.lost = true
		p.losses++
		p.retry = k.cfg.RetryInterval
		k.log.Warn("pinhole lost: no reply to refreshes", "local", p.spec.Local, "remote", p.spec.Remote,
			"external", p.external, "timeout", k.cfg.ReplyTimeout)
		if p.spec.Reopen != nil {
			acts.reopens = append(acts.reopens, p.spec.Reopen)
		}
		k.eventLocked(p, now, acts, Event{Kind: EventLost, Reason: "no reply to refreshes",
			OldExternal: p.external, NewExternal: p.external})
	} else {
		p.retry = min(2*p.retry, max(p.interval, k.cfg.RetryInterval))
	}
	// Probe with each refresh kind in turn while lost.
	p.refreshIdx = (p.refreshIdx + 1) % len(p.refreshes)
	p.next = now.Add(p.retry)
}

func (k *Keeper) handleReplyLocked(r reply, acts *actions) {
	p := r.p
	a := p.pending
	if a == nil || a.refresh != r.refresh || (r.refresh == RefreshSTUN && a.tx != r.tx) {
		return // late or unasked for
	}
	p.dropPendingLocked()
	p.lastIn = r.at
	p.bytesIn += uint64(r.n)
	wasLost := p.lost
	old := p.external
	if r.mapped.IsValid() && old.IsValid() && r.mapped != old {
		// The NAT made a new binding for this refresh: the old one is gone,
		// and with it whatever was sent to it since it expired.
		p.remaps++
		p.external = r.mapped
		p.open(a.sentAt, r.at, r.at)
		if !wasLost {
			p.losses++
			src := p.lifetimeSource(k)
			if src != nil {
				acts.remaps = append(acts.remaps, remapReport{src: src, idle: a.idle})
			}
			k.log.Warn("pinhole remapped", "local", p.spec.Local, "remote", p.spec.Remote,
				"old_external", old, "new_external", r.mapped, "idle", a.idle)
			k.eventLocked(p, r.at, acts, Event{Kind: EventRemapped, Reason: "refresh reply shows a new external address",
				OldExternal: old, NewExternal: r.mapped, Idle: a.idle})
		}
	} else if r.mapped.IsValid() {
		p.external = r.mapped
	}
	if p.firstReply.IsZero() {
		p.firstReply = r.at
	}
	if !p.warm && !a.sentAt.Before(p.opened.Add(k.cfg.WarmUp)) && !a.sentAt.Before(p.firstReply) && a.sentAt.After(p.opened) {
		p.warm = true
	}
	if wasLost {
		p.lost = false
		k.log.Info("pinhole restored", "local", p.spec.Local, "remote", p.spec.Remote,
			"old_external", old, "external", p.external)
		k.eventLocked(p, r.at, acts, Event{Kind: EventRestored, Reason: "refresh answered again",
			OldExternal: old, NewExternal: p.external, Idle: a.idle})
	}
	k.scheduleLocked(p)
}

// scheduleLocked sets p's next refresh from its last outbound packet, or
// earlier for the warm-up refresh of a new flow.
func (k *Keeper) scheduleLocked(p *Pinhole) {
	p.interval = k.intervalLocked(p)
	p.next = p.lastOut.Add(p.interval)
	if !p.warm && !p.firstReply.IsZero() {
		w := p.opened.Add(k.cfg.WarmUp)
		if w.Before(p.firstReply) {
			w = p.firstReply
		}
		if w.Before(p.next) {
			p.next = w
		}
	}
}

// intervalLocked is the time between refreshes for p: the lifetime less
// its uncertainty and the safety margin, less jitter.
func (k *Keeper) intervalLocked(p *Pinhole) time.Duration {
	if k.cfg.FixedInterval > 0 {
		return k.cfg.FixedInterval
	}
	est, unc, measured := time.Duration(0), time.Duration(0), false
	if src := p.lifetimeSource(k); src != nil {
		est, unc, measured = src.Lifetime()
	}
	if !measured || est <= 0 {
		est, unc, measured = k.cfg.DefaultLifetime, 0, false
		if p.spec.Protocol == TCP {
			est = k.cfg.TCPLifetime
		}
	}
	p.est, p.unc, p.measured = est, unc, measured
	margin := max(time.Duration(k.cfg.Margin*float64(est)), k.cfg.MinMargin)
	iv := est - unc - margin
	iv -= time.Duration(k.rng.Float64() * k.cfg.Jitter * float64(iv))
	return max(iv, k.cfg.MinInterval)
}

func (k *Keeper) eventLocked(p *Pinhole, now time.Time, acts *actions, ev Event) {
	if p.spec.Notify == nil {
		return
	}
	ev.Pinhole = p.statusLocked(now)
	fn := p.spec.Notify
	acts.events = append(acts.events, func() { fn(ev) })
}

// perform does what a step decided, outside the lock.
func (k *Keeper) perform(ctx context.Context, acts *actions) {
	for _, s := range acts.sends {
		// A failed write is noticed as a missing reply.
		s.conn.WriteTo(s.b, net.UDPAddrFromAddrPort(s.to))
	}
	for _, w := range acts.writes {
		k.goBusy(func() { w.w.Write(crlfPing) })
	}
	for _, h := range acts.hooks {
		k.goWithTimeout(ctx, h)
	}
	for _, r := range acts.reopens {
		k.goWithTimeout(ctx, r)
	}
	for _, r := range acts.remaps {
		r.src.ObserveRemap(r.idle)
	}
	for _, ev := range acts.events {
		ev()
	}
}

func (k *Keeper) goWithTimeout(ctx context.Context, fn func(context.Context) error) {
	k.goBusy(func() {
		ctx, cancel := context.WithTimeout(ctx, k.cfg.ReplyTimeout)
		defer cancel()
		fn(ctx)
	})
}

// goBusy runs fn on a goroutine of its own that Close waits for.
func (k *Keeper) goBusy(fn func()) {
	k.mu.Lock()
	k.busy++
	k.mu.Unlock()
	k.work.Add(1)
	go func() {
		defer k.work.Done()
		defer func() {
			k.mu.Lock()
			k.busy--
			k.mu.Unlock()
		}()
		fn()
	}()
}

// Pinhole is a flow in the keeper's table.
type Pinhole struct {
	k         *Keeper
	id        uint64
	spec      PinholeSpec
	refreshes []Refresh
	created   time.Time

	// guarded by k.mu:
	refreshIdx int
	opened     time.Time // this binding's first packet
	firstReply time.Time // this binding's first answer; zero until one
	warm       bool      // a refresh passed after the first reply and WarmUp into the flow
	external   netip.AddrPort
	cover      *cover
	lastOut    time.Time
	lastIn     time.Time
	next       time.Time
	pending    *attempt
	lost       bool
	retry      time.Duration
	interval   time.Duration
	est, unc   time.Duration
	measured   bool
	keepalives uint64
	losses     uint64
	remaps     uint64
	bytesOut   uint64
	bytesIn    uint64
}

type attempt struct {
	refresh      Refresh
	tx           [stun.TransactionIDSize]byte
	msg          []byte
	sentAt       time.Time
	rto          time.Duration
	retransmitAt time.Time
	deadline     time.Time
	idle         time.Duration // the flow's silence before this refresh
}

// open starts a new binding's life: first packet at opened, first answer
// at firstReply (zero: none yet). With no answer the NAT keeps the flow on
// its short timer, so the next refresh is at once; with one, it is the
// warm-up refresh.
func (p *Pinhole) open(opened, firstReply, now time.Time) {
	if opened.IsZero() {
		opened = now
	}
	p.opened, p.warm, p.firstReply = opened, false, firstReply
	if firstReply.IsZero() {
		p.next = now
	} else {
		p.next = opened.Add(p.k.cfg.WarmUp)
		if p.next.Before(firstReply) {
			p.next = firstReply
		}
	}
	p.interval = p.k.intervalLocked(p)
}

func (p *Pinhole) dropPendingLocked() {
	if p.pending != nil && p.pending.refresh == RefreshSTUN {
		delete(p.k.byTx, p.pending.tx)
	}
	p.pending = nil
}

func (p *Pinhole) lastActivity() time.Time {
	if p.lastIn.After(p.lastOut) {
		return p.lastIn
	}
	return p.lastOut
}

func (p *Pinhole) lifetimeSource(k *Keeper) LifetimeSource {
	if p.spec.Lifetime != nil {
		return p.spec.Lifetime
	}
	if p.spec.Protocol == TCP {
		return nil
	}
	return k.cfg.Lifetime
}

// ID is the pinhole's number in the table.
func (p *Pinhole) ID() uint64 { return p.id }

// Status returns the pinhole's row of the table.
func (p *Pinhole) Status() PinholeStatus {
	now := p.k.clock.Now()
	p.k.mu.Lock()
	defer p.k.mu.Unlock()
	return p.statusLocked(now)
}

func (p *Pinhole) statusLocked(now time.Time) PinholeStatus {
	s := PinholeStatus{
		ID:            p.id,
		Protocol:      p.spec.Protocol,
		Local:         p.spec.Local,
		Remote:        p.spec.Remote,
		External:      p.external,
		Method:        MethodKeepalive,
		Refresh:       p.refreshes[p.refreshIdx],
		State:         "ok",
		Age:           now.Sub(p.created),
		Idle:          now.Sub(p.lastActivity()),
		Lifetime:      p.est,
		LifetimeError: p.unc,
		Measured:      p.measured,
		Interval:      p.interval,
		Keepalives:    p.keepalives,
		Losses:        p.losses,
		Remaps:        p.remaps,
		BytesOut:      p.bytesOut,
		BytesIn:       p.bytesIn,
	}
	switch {
	case p.cover != nil:
		s.Method, s.State, s.Interval = p.cover.method, "mapped", 0
		if p.cover.external.IsValid() {
			s.External = p.cover.external
		}
	case p.lost:
		s.State = "lost"
	case !p.warm:
		s.State = "warming"
	}
	return s
}

// Remove takes the pinhole out of the table; the keeper stops refreshing
// it.
func (p *Pinhole) Remove() {
	p.k.mu.Lock()
	defer p.k.mu.Unlock()
	p.dropPendingLocked()
	delete(p.k.pinholes, p.id)
}

// Replied tells the keeper that the answer to its CRLF or hook refresh
// arrived; mapped is the flow's external address if the answer tells it
// (an overlay pong), else the zero value.
func (p *Pinhole) Replied(mapped netip.AddrPort) {
	p.k.mu.Lock()
	kind := RefreshHook
	if a := p.pending; a != nil {
		kind = a.refresh
	}
	if kind == RefreshSTUN {
		p.k.mu.Unlock()
		return // STUN answers come through HandleSTUN
	}
	p.k.replies = append(p.k.replies, reply{p: p, refresh: kind, mapped: mapped, at: p.k.clock.Now()})
	p.k.mu.Unlock()
	p.k.poke()
}

// Traffic tells the keeper of the flow's own traffic (bytes sent and
// received): outbound traffic refreshes the NAT binding as a keepalive
// would, so a busy flow needs none. It is cheap enough to call per packet.
func (p *Pinhole) Traffic(out, in int) {
	now := p.k.clock.Now()
	p.k.mu.Lock()
	if out > 0 {
		p.lastOut = now
		p.bytesOut += uint64(out)
	}
	if in > 0 {
		p.lastIn = now
		p.bytesIn += uint64(in)
		if p.firstReply.IsZero() {
			p.firstReply = now
		}
	}
	p.k.mu.Unlock()
}
