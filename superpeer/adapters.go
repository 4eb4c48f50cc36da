package superpeer

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/superpeer/superpeer/election"
	"github.com/superpeer/superpeer/nat"
	"github.com/superpeer/superpeer/overlay"
	"github.com/superpeer/superpeer/overlay/dht"
	"github.com/superpeer/superpeer/overlay/routing"
	"github.com/superpeer/superpeer/superpeer/sip"
	"github.com/superpeer/superpeer/superpeer/turn"
)

// siteBindings is the SIP registrar's store backed by the site's
// replicated state: every superpeer of the site sees every binding.
type siteBindings struct{ store election.RegistrationStore }

var _ sip.Bindings = siteBindings{}

func (s siteBindings) Put(ctx context.Context, b sip.Binding) error {
	_, err := s.store.Put(ctx, toElection(b))
	return err
}

func (s siteBindings) Refresh(ctx context.Context, aor, key string, expires time.Time) error {
	_, err := s.store.Refresh(ctx, aor, key, expires)
	if errors.Is(err, election.ErrNoBinding) {
		return sip.ErrNoBinding
	}
	return err
}

func (s siteBindings) Remove(ctx context.Context, aor, key string) error {
	if key == "" {
		return s.store.RemoveAOR(ctx, aor)
	}
	return s.store.Remove(ctx, aor, key)
}

func (s siteBindings) Lookup(ctx context.Context, aor string) ([]sip.Binding, error) {
	// The local replica: a binding written through the other superpeer a
	// moment ago may be missing, but a lookup must not wait for the leader
	// on every call (it may be the one that just died).
	bs := s.store.Lookup(aor)
	out := make([]sip.Binding, len(bs))
	for i, b := range bs {
		out[i] = fromElection(b)
	}
	return out, nil
}

func (s siteBindings) Watch(fn func(sip.BindingEvent)) (cancel func()) {
	ctx, stop := context.WithCancel(context.Background())
	ch := s.store.Watch(ctx)
	go func() {
		for ev := range ch {
			var kind sip.EventKind
			switch ev.Kind {
			case election.BindingPut:
				kind = sip.BindingPut
			case election.BindingRefreshed:
				kind = sip.BindingRefreshed
			case election.BindingRemoved:
				kind = sip.BindingRemoved
			default: // resync: the store's List is the truth; nothing to tell one by one
				continue
			}
			fn(sip.BindingEvent{Kind: kind, Binding: fromElection(ev.Binding), Remaining: len(s.store.Lookup(ev.Binding.AOR))})
		}
	}()
	return stop
}

func toElection(b sip.Binding) election.Binding {
	return election.Binding{
		AOR: b.AOR, Contact: b.Contact, InstanceID: b.InstanceID, RegID: b.RegID, Q: b.Q,
		Path: b.Path, CallID: b.CallID, CSeq: b.CSeq, Expires: b.Expires,
		Flow:     election.Flow(b.Flow),
		Outbound: b.Outbound, Registered: b.Registered,
	}
}

func fromElection(b election.Binding) sip.Binding {
	return sip.Binding{
		AOR: b.AOR, Contact: b.Contact, InstanceID: b.InstanceID, RegID: b.RegID, Q: b.Q,
		Path: b.Path, CallID: b.CallID, CSeq: b.CSeq, Expires: b.Expires,
		Flow:     sip.Flow(b.Flow),
		Outbound: b.Outbound, Registered: b.Registered,
	}
}

// overlayLocation is the SIP server's Locator and Carrier over the overlay:
// the DHT says which superpeers serve an AOR, links carry the messages.
type overlayLocation struct {
	node  *overlay.Node
	self  func() []dht.Contact // the site's superpeers, for records
	inbox chan carried

	mu    sync.Mutex // guards following
	media func(from overlay.NodeID, p []byte)
}

type carried struct {
	from string
	msg  []byte
}

func newOverlayLocation(n *overlay.Node, self func() []dht.Contact) *overlayLocation {
	l := &overlayLocation{node: n, self: self, inbox: make(chan carried, 4096)}
	n.HandleMessages(func(from overlay.NodeID, p []byte) {
		if len(p) > 0 && p[0] == mediaMsgPrefix {
			l.mu.Lock()
			fn := l.media
			l.mu.Unlock()
			if fn != nil {
				fn(from, p)
			}
			return
		}
		select {
		case l.inbox <- carried{from.String(), append([]byte(nil), p...)}:
		default: // full: dropped like a datagram; SIP retransmits
		}
	})
	return l
}

// handleMedia sets the receiver of the media relays' messages (payloads
// that start with mediaMsgPrefix, which no SIP message does); fn must not
// block.
func (l *overlayLocation) handleMedia(fn func(from overlay.NodeID, p []byte)) {
	l.mu.Lock()
	l.media = fn
	l.mu.Unlock()
}

func (l *overlayLocation) Publish(ctx context.Context, aor string, expires time.Time) error {
	_, err := l.node.Publish(ctx, aor, l.self(), expires)
	return err
}

func (l *overlayLocation) Withdraw(_ context.Context, aor string) error {
	l.node.Withdraw(aor)
	return nil
}

func (l *overlayLocation) Lookup(ctx context.Context, aor string) ([]sip.Target, error) {
	r, err := l.node.Get(ctx, aor)
	if errors.Is(err, overlay.ErrNotFound) {
		return nil, sip.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	ts := make([]sip.Target, 0, len(r.Superpeers))
	for _, c := range r.Superpeers {
		ts = append(ts, sip.Target{Superpeer: c.Node.String()})
	}
	return ts, nil
}

func (l *overlayLocation) Send(ctx context.Context, to string, msg []byte) error {
	id, err := routing.ParseID(to)
	if err != nil {
		return err
	}
	return l.node.Send(ctx, id, msg)
}

func (l *overlayLocation) Receive(ctx context.Context) (string, []byte, error) {
	select {
	case p := <-l.inbox:
		return p.from, p.msg, nil
	case <-ctx.Done():
		return "", nil, ctx.Err()
	}
}

// linkPinholes puts every overlay link's UDP path in the keeper's table.
// The overlay pings its own links; the keeper shows them and, where a port
// mapping covers the overlay socket, records that they need nothing.
type linkPinholes struct {
	keeper *nat.Keeper
	mu     sync.Mutex // guards following
	holes  map[overlay.NodeID]*nat.Pinhole
	node   *overlay.Node // set once the node exists
}

func (p *linkPinholes) setNode(n *overlay.Node) {
	p.mu.Lock()
	p.node = n
	p.mu.Unlock()
}

// linked reports whether the overlay still holds its link to peer. The
// overlay pings its links and drops one that stays silent for its
// DeadAfter, so a link it holds has been answering.
func (p *linkPinholes) linked(peer overlay.NodeID) bool {
	p.mu.Lock()
	n := p.node
	p.mu.Unlock()
	if n == nil {
		return false
	}
	for _, l := range n.Status().Links {
		if l.Peer == peer && l.Linked {
			return true
		}
	}
	return false
}

func (p *linkPinholes) LinkUp(peer overlay.NodeID, local, remote net.Addr, kind overlay.PathKind) {
	l, r := addrPort(local), addrPort(remote)
	var h *nat.Pinhole
	h, err := p.keeper.Add(nat.PinholeSpec{Local: l, Remote: r, SeenReply: true,
		// The overlay's own pings keep the link and answer for it: the
		// keeper's refresh asks whether the link is still up.
		Hook: func(context.Context) error {
			if !p.linked(peer) {
				return errLinkDown
			}
			h.Replied(netip.AddrPort{})
			return nil
		},
	})
	if err != nil {
		return
	}
	p.mu.Lock()
	if old := p.holes[peer]; old != nil {
		old.Remove()
	}
	p.holes[peer] = h
	p.mu.Unlock()
	h.Replied(netip.AddrPort{})
}

func (p *linkPinholes) LinkDown(peer overlay.NodeID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if h := p.holes[peer]; h != nil {
		h.Remove()
		delete(p.holes, peer)
	}
}

var errLinkDown = errors.New("overlay link is down")

func addrPort(a net.Addr) netip.AddrPort {
	if ua, ok := a.(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// relayPinholes keeps TURN relay flows open through the keeper.
type relayPinholes struct{ keeper *nat.Keeper }

func (r relayPinholes) Keep(p turn.Pinhole) (release func()) {
	var h *nat.Pinhole
	spec := nat.PinholeSpec{Local: p.Local, Remote: p.Remote, External: p.External, SeenReply: true}
	spec.Hook = func(ctx context.Context) error {
		mapped, err := p.Refresh(ctx)
		if err == nil && h != nil {
			h.Replied(mapped)
		}
		return err
	}
	h, err := r.keeper.Add(spec)
	if err != nil {
		return func() {}
	}
	return h.Remove
}
