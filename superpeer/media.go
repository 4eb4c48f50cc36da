package superpeer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/pion/logging"
	pionturn "github.com/pion/turn/v5"

	"github.com/superpeer/superpeer/nat"
	"github.com/superpeer/superpeer/overlay"
	"github.com/superpeer/superpeer/superpeer/sip"
	"github.com/superpeer/superpeer/superpeer/turn"
)

// Media anchoring for phones that do not do ICE (RFC 8445): the SIP proxy
// rewrites their SDP (RFC 4566) so that a call's media goes through a
// relay stream in each superpeer on its way, and mediaRelay gives it the
// sockets. The LAN-facing leg of a call is a plain socket on the LAN. The
// leg that faces another site must be reachable from beyond both NATs:
//
//   - on a public node, a plain socket on its public address;
//   - behind a NAT whose mapping is endpoint-independent (or with a port
//     mapping), an allocation on the superpeer's own TURN relay (RFC 8656),
//     whose relayed address is the external one that STUN or the gateway
//     gave, and which opens the NAT's filter towards the far relay when the
//     permission is made;
//   - behind a symmetric NAT, where no mapping learnt here is any use to
//     the far side, an allocation on the TURN relay of a public node (the
//     overlay's bootstrap nodes), with credentials that node mints on
//     request over the overlay. When both sites are behind symmetric NATs
//     both allocate there, and each allocation's peer is the other's
//     relayed address: the public node's relay lets its own allocations
//     reach one another (turn.Config.RelayBetweenAllocations), and no
//     other port of its own addresses.
//
// Once the far side's relay address is known (from the SDP of the other
// leg), the remote-facing socket asks for a permission towards it, so the
// far relay's packets get in before anything was sent to it.

// mediaMsgPrefix starts every overlay payload of the media relays. No SIP
// message starts with a NUL byte, so they share the overlay's messages.
const mediaMsgPrefix = 0x00

// relayMsg is a request for TURN credentials on a public node's relay
// ("ask") and its answer ("offer"), carried over the overlay's
// authenticated links.
type relayMsg struct {
	Op    string `json:"op"`
	Nonce uint64 `json:"nonce"`
	// TURN is the relay's UDP address, ip:port.
	TURN     string    `json:"turn,omitempty"`
	Username string    `json:"username,omitempty"`
	Password string    `json:"password,omitempty"`
	Expires  time.Time `json:"expires,omitzero"`
	Error    string    `json:"error,omitempty"`
}

const (
	opAsk   = "ask"
	opOffer = "offer"
)

// Relay kinds, as logs and metrics name them.
const (
	relayLAN        = "lan"         // a plain socket on the LAN
	relayPublic     = "public"      // a plain socket on this public node
	relayOwnTURN    = "own-turn"    // an allocation on this superpeer's TURN relay
	relayRemoteTURN = "remote-turn" // an allocation on a public node's TURN relay
)

// Timing of the media relays.
const (
	// offerLifetime is how long credentials a public node mints for another
	// site's relay last; offerMargin, how long before their expiry they are
	// asked for again (a call's allocation outlives neither: refreshes
	// reuse the username it was made with).
	offerLifetime = time.Hour
	offerMargin   = 15 * time.Minute
	// mediaCredLifetime is the lifetime of credentials minted for this
	// superpeer's own relay.
	mediaCredLifetime = time.Hour
	// askTimeout bounds one question to a public node.
	askTimeout = 3 * time.Second
	// maxServing bounds the credential questions answered at once.
	maxServing = 8
)

// mediaRelay is the daemon's sip.MediaRelay: a sip.UDPRelay whose sockets
// it opens as the comment at the top of this file says, and the asking
// and answering for public nodes' relays over the overlay.
type mediaRelay struct {
	d     *Daemon
	ctx   context.Context // the services'; ends when they stop
	node  *overlay.Node
	turn  *turn.Server // this superpeer's relay; nil when TURN is off
	lan   netip.Addr
	boot  []overlay.NodeID // public nodes whose relay may be asked for
	relay *sip.UDPRelay
	log   *slog.Logger
	set   *metrics.Set
	opens map[string]*metrics.Counter // by relay kind
	asks  *metrics.Counter
	serve chan struct{} // a slot per question being answered
	wg    sync.WaitGroup
	nonce atomic.Uint64

	mu      sync.Mutex // guards following
	streams map[streamKey]*anchoredStream
	offers  map[overlay.NodeID]relayMsg
	pending map[uint64]pendingAsk
	closed  bool
}

type streamKey struct {
	call   string
	stream int
}

// anchoredStream is what mediaRelay knows of one relayed stream: each
// leg's endpoint (the address its SDP gave) and the remote-facing socket
// shown to it, if any.
type anchoredStream struct {
	ep     [2]netip.AddrPort
	remote [2]*relaySocket
}

type pendingAsk struct {
	to overlay.NodeID
	ch chan relayMsg
}

// anchorKey carries the AnchorRequest into the socket opener.
type anchorKey struct{}

func newMediaRelay(ctx context.Context, d *Daemon, n *overlay.Node, t *turn.Server, boot []overlay.BootstrapNode) *mediaRelay {
	m := &mediaRelay{
		d: d, ctx: ctx, node: n, turn: t, lan: d.lanAddr(),
		log:     d.log.With("part", "media"),
		set:     metrics.NewSet(),
		opens:   map[string]*metrics.Counter{},
		serve:   make(chan struct{}, maxServing),
		streams: map[streamKey]*anchoredStream{},
		offers:  map[overlay.NodeID]relayMsg{},
		pending: map[uint64]pendingAsk{},
	}
	for _, b := range boot {
		if id := overlay.IDOf(b.Key); id != n.ID() {
			m.boot = append(m.boot, id)
		}
	}
	m.relay = sip.NewSocketRelay(m.open)
	for _, k := range []string{relayLAN, relayPublic, relayOwnTURN, relayRemoteTURN} {
		m.opens[k] = m.set.NewCounter(fmt.Sprintf("superpeer_media_sockets_total{relay=%q}", k))
	}
	m.asks = m.set.NewCounter("superpeer_media_relay_offers_total")
	m.set.NewGauge("superpeer_media_calls", func() float64 { return float64(m.relay.Sessions()) })
	m.set.NewGauge(`superpeer_media_packets_total{to="callee"}`, func() float64 { return float64(m.relay.ToCallee.Load()) })
	m.set.NewGauge(`superpeer_media_packets_total{to="caller"}`, func() float64 { return float64(m.relay.ToCaller.Load()) })
	return m
}

// Anchor implements sip.MediaRelay.
func (m *mediaRelay) Anchor(ctx context.Context, req sip.AnchorRequest) (netip.AddrPort, error) {
	r := req
	shown, err := m.relay.Anchor(context.WithValue(ctx, anchorKey{}, &r), req)
	if err != nil {
		return shown, err
	}
	type permit struct {
		s    *relaySocket
		peer netip.AddrPort
	}
	var permits []permit
	m.mu.Lock()
	st := m.streamLocked(req.CallID, req.Stream)
	st.ep[req.Leg] = req.Endpoint
	for leg := range 2 {
		if s, peer := st.remote[leg], st.ep[1-leg]; s != nil && peer.IsValid() {
			permits = append(permits, permit{s, peer})
		}
	}
	m.mu.Unlock()
	// The far relay is known: let it in (and, behind a filtering NAT,
	// open the filter towards it) before the first packet comes.
	for _, p := range permits {
		p.s.permit(p.peer)
	}
	return shown, nil
}

func (m *mediaRelay) streamLocked(call string, stream int) *anchoredStream {
	k := streamKey{call, stream}
	st := m.streams[k]
	if st == nil {
		st = &anchoredStream{}
		m.streams[k] = st
	}
	return st
}

// Release implements sip.MediaRelay.
func (m *mediaRelay) Release(callID string) {
	m.relay.Release(callID)
	m.mu.Lock()
	for k := range m.streams {
		if k.call == callID {
			delete(m.streams, k)
		}
	}
	m.mu.Unlock()
}

// Close releases every call and waits for the answers under way.
func (m *mediaRelay) Close() {
	m.mu.Lock()
	m.closed = true
	m.streams = map[streamKey]*anchoredStream{}
	m.mu.Unlock()
	m.relay.Close()
	m.wg.Wait()
	m.set.UnregisterAllMetrics()
}

// open is the sip.UDPRelay's socket opener.
func (m *mediaRelay) open(ctx context.Context, remote bool) (net.PacketConn, error) {
	if !remote {
		m.opens[relayLAN].Inc()
		return m.d.net.ListenPacket("udp4", netip.AddrPortFrom(m.lan, 0).String())
	}
	s, err := m.openRemote(ctx)
	if err != nil {
		return nil, err
	}
	m.opens[s.kind].Inc()
	if req, ok := ctx.Value(anchorKey{}).(*sip.AnchorRequest); ok {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			s.Close()
			return nil, net.ErrClosed
		}
		m.streamLocked(req.CallID, req.Stream).remote[req.Leg] = s
		m.mu.Unlock()
		m.log.Info("media relayed", "call", req.CallID, "leg", req.Leg.String(), "relay", s.kind,
			"address", s.LocalAddr().String(), "server", s.serverString())
	}
	return s, nil
}

// openRemote opens a socket whose address works from another site.
func (m *mediaRelay) openRemote(ctx context.Context) (*relaySocket, error) {
	reach := m.d.nat.reachability()
	switch {
	case reach == overlay.Public:
		pc, err := m.d.net.ListenPacket("udp4", netip.AddrPortFrom(m.lan, 0).String())
		if err != nil {
			return nil, err
		}
		return &relaySocket{PacketConn: pc, kind: relayPublic}, nil
	case (reach == overlay.Mapped || reach == overlay.EndpointIndependent) && m.turn != nil:
		return m.allocateOwn(ctx)
	}
	// Symmetric (or not known): only a reachable node's relay will do.
	s, err := m.allocateRemote(ctx)
	if err == nil || m.turn == nil {
		return s, err
	}
	m.log.Warn("no public relay for media; using this superpeer's own relay, which the far side may not reach", "nat", reach.String(), "err", err)
	return m.allocateOwn(ctx)
}

func (m *mediaRelay) allocateOwn(ctx context.Context) (*relaySocket, error) {
	server, ok := m.ownTURN()
	if !ok {
		return nil, errors.New("this superpeer's TURN relay has no UDP listener")
	}
	creds, err := m.turn.Credentials("sip-media", mediaCredLifetime)
	if err != nil {
		return nil, err
	}
	return m.allocate(ctx, relayOwnTURN, server, creds.Username, creds.Password)
}

func (m *mediaRelay) allocateRemote(ctx context.Context) (*relaySocket, error) {
	if len(m.boot) == 0 {
		return nil, errors.New("no public node configured (overlay.bootstrap) whose relay could be asked")
	}
	var errs []error
	for _, id := range m.boot {
		o, err := m.offer(ctx, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		server, err := netip.ParseAddrPort(o.TURN)
		if err != nil {
			errs = append(errs, fmt.Errorf("relay of %s: bad address %q", id.Short(), o.TURN))
			continue
		}
		s, err := m.allocate(ctx, relayRemoteTURN, server, o.Username, o.Password)
		if err != nil {
			m.forgetOffer(id) // the credentials may be what failed
			errs = append(errs, err)
			continue
		}
		return s, nil
	}
	return nil, fmt.Errorf("allocating on a public node's relay: %w", errors.Join(errs...))
}

// allocate makes a UDP allocation on the TURN relay at server, from a new
// socket on the LAN address, through the daemon's network.
func (m *mediaRelay) allocate(ctx context.Context, kind string, server netip.AddrPort, username, password string) (*relaySocket, error) {
	base, err := m.d.net.ListenPacket("udp4", netip.AddrPortFrom(m.lan, 0).String())
	if err != nil {
		return nil, fmt.Errorf("opening a TURN client socket: %w", err)
	}
	c, err := pionturn.NewClient(&pionturn.ClientConfig{
		STUNServerAddr: server.String(),
		TURNServerAddr: server.String(),
		Username:       username,
		Password:       password,
		Software:       "superpeer " + Version,
		Conn:           base,
		Net:            m.d.net,
		LoggerFactory:  quietPion,
	})
	if err != nil {
		base.Close()
		return nil, fmt.Errorf("TURN client for %v: %w", server, err)
	}
	if err := c.Listen(); err != nil {
		c.Close()
		base.Close()
		return nil, fmt.Errorf("TURN client for %v: %w", server, err)
	}
	relayed, err := c.AllocateWithContext(ctx)
	if err != nil {
		c.Close()
		base.Close()
		return nil, fmt.Errorf("allocating on the TURN relay at %v: %w", server, err)
	}
	s := &relaySocket{PacketConn: relayed, kind: kind, server: server, client: c, base: base, log: m.log}
	if kind == relayRemoteTURN {
		s.keep(m.d.nat.keeper)
	}
	return s, nil
}

// ownTURN is this superpeer's TURN relay on its LAN address.
func (m *mediaRelay) ownTURN() (netip.AddrPort, bool) {
	if m.turn == nil {
		return netip.AddrPort{}, false
	}
	addrs := m.turn.UDPAddrs()
	for _, a := range addrs {
		if a.Addr() == m.lan {
			return a, true
		}
	}
	for _, a := range addrs {
		if a.Addr().Is4() {
			return a, true
		}
	}
	return netip.AddrPort{}, false
}

// offer returns credentials on the relay of the public node id, cached
// while they have offerMargin left, else asked for over the overlay.
func (m *mediaRelay) offer(ctx context.Context, id overlay.NodeID) (relayMsg, error) {
	m.mu.Lock()
	o, ok := m.offers[id]
	m.mu.Unlock()
	if ok && m.d.clock.Now().Add(offerMargin).Before(o.Expires) {
		return o, nil
	}
	nonce := m.nonce.Add(1)
	ch := make(chan relayMsg, 1)
	m.mu.Lock()
	m.pending[nonce] = pendingAsk{to: id, ch: ch}
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.pending, nonce)
		m.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	if err := m.node.Send(ctx, id, encodeRelayMsg(relayMsg{Op: opAsk, Nonce: nonce})); err != nil {
		return relayMsg{}, fmt.Errorf("asking %s for its relay: %w", id.Short(), err)
	}
	select {
	case o = <-ch:
	case <-ctx.Done():
		return relayMsg{}, fmt.Errorf("asking %s for its relay: %w", id.Short(), ctx.Err())
	}
	if o.Error != "" {
		return relayMsg{}, fmt.Errorf("%s has no relay for us: %s", id.Short(), o.Error)
	}
	m.mu.Lock()
	m.offers[id] = o
	m.mu.Unlock()
	m.log.Info("public relay offered", "node", id.Short(), "turn", o.TURN, "expires", o.Expires)
	return o, nil
}

func (m *mediaRelay) forgetOffer(id overlay.NodeID) {
	m.mu.Lock()
	delete(m.offers, id)
	m.mu.Unlock()
}

// warm asks the public nodes for their relays ahead of the first call, so
// that it does not wait on the overlay. Behind a NAT that lets the far
// side in, nothing is needed.
func (m *mediaRelay) warm() {
	if r := m.d.nat.reachability(); r == overlay.Public || r == overlay.Mapped || r == overlay.EndpointIndependent {
		return
	}
	for _, id := range m.boot {
		if _, err := m.offer(m.ctx, id); err == nil {
			return
		}
	}
}

// handle takes a media message from the overlay. It runs on the overlay's
// receive path: it never blocks.
func (m *mediaRelay) handle(from overlay.NodeID, p []byte) {
	msg, err := parseRelayMsg(p)
	if err != nil {
		return // another node's bug or malice: nothing to answer
	}
	switch msg.Op {
	case opOffer:
		m.mu.Lock()
		pa, ok := m.pending[msg.Nonce]
		m.mu.Unlock()
		if ok && pa.to == from {
			select {
			case pa.ch <- msg:
			default:
			}
		}
	case opAsk:
		select {
		case m.serve <- struct{}{}:
		default:
			return // busy: the asker times out and tries another node
		}
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			<-m.serve
			return
		}
		m.wg.Add(1)
		m.mu.Unlock()
		go func() {
			defer m.wg.Done()
			defer func() { <-m.serve }()
			ans := m.answer(from, msg.Nonce)
			ctx, cancel := context.WithTimeout(m.ctx, askTimeout)
			defer cancel()
			if err := m.node.Send(ctx, from, encodeRelayMsg(ans)); err != nil {
				m.log.Info("answering a relay question", "node", from.Short(), "err", err)
			}
		}()
	}
}

// answer mints credentials on this node's relay for another site, which
// only a public node does: its relayed addresses are reachable from any
// NAT. The user part names the asking node, so the per-user quota bounds
// what one site may hold.
func (m *mediaRelay) answer(from overlay.NodeID, nonce uint64) relayMsg {
	ans := relayMsg{Op: opOffer, Nonce: nonce}
	server, ok := m.ownTURN()
	switch {
	case m.d.nat.reachability() != overlay.Public:
		ans.Error = "this node is not public: its relay is no better than yours"
	case !ok:
		ans.Error = "this node runs no TURN relay"
	default:
		creds, err := m.turn.Credentials("overlay-"+from.Short(), offerLifetime)
		if err != nil {
			ans.Error = err.Error()
			break
		}
		ans.TURN, ans.Username, ans.Password, ans.Expires = server.String(), creds.Username, creds.Password, creds.Expires
		m.asks.Inc()
	}
	return ans
}

// maxRelayField bounds the strings of a relay message: credentials are
// tens of bytes.
const maxRelayField = 512

// parseRelayMsg reads a media relay message from the overlay and refuses
// what is not one: the prefix, JSON, a known operation, and for an offer
// an address and credentials or an error.
func parseRelayMsg(p []byte) (relayMsg, error) {
	var msg relayMsg
	if len(p) == 0 || p[0] != mediaMsgPrefix {
		return msg, errors.New("media relay message: no prefix")
	}
	if len(p) > 4096 {
		return msg, fmt.Errorf("media relay message: %d bytes, at most 4096", len(p))
	}
	if err := json.Unmarshal(p[1:], &msg); err != nil {
		return relayMsg{}, fmt.Errorf("media relay message: %w", err)
	}
	for _, f := range []string{msg.TURN, msg.Username, msg.Password, msg.Error} {
		if len(f) > maxRelayField {
			return relayMsg{}, fmt.Errorf("media relay message: a field of %d bytes, at most %d", len(f), maxRelayField)
		}
	}
	switch msg.Op {
	case opAsk:
	case opOffer:
		if msg.Error != "" {
			break
		}
		if ap, err := netip.ParseAddrPort(msg.TURN); err != nil || ap.Port() == 0 || !ap.Addr().IsGlobalUnicast() {
			return relayMsg{}, fmt.Errorf("media relay offer: relay address %q", msg.TURN)
		}
		if msg.Username == "" || msg.Password == "" || msg.Expires.IsZero() {
			return relayMsg{}, errors.New("media relay offer: no credentials")
		}
	default:
		return relayMsg{}, fmt.Errorf("media relay message: unknown operation %q", msg.Op)
	}
	return msg, nil
}

func encodeRelayMsg(msg relayMsg) []byte {
	b, _ := json.Marshal(msg)
	return append([]byte{mediaMsgPrefix}, b...)
}

// relaySocket is a socket shown to another site: a TURN allocation (the
// relayed connection of a pion client) or a plain socket.
type relaySocket struct {
	net.PacketConn
	kind    string
	server  netip.AddrPort   // the TURN relay; zero for a plain socket
	client  *pionturn.Client // nil for a plain socket
	base    net.PacketConn   // the client's socket
	release func()           // drops the client's flow from the keeper
	log     *slog.Logger

	mu        sync.Mutex // guards following
	permitted netip.Addr
	wg        sync.WaitGroup
}

func (s *relaySocket) serverString() string {
	if s.server.IsValid() {
		return s.server.String()
	}
	return ""
}

// ReadFrom skips empty datagrams: relays send them to open NAT filters,
// and they are no media.
func (s *relaySocket) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, from, err := s.PacketConn.ReadFrom(p)
		if err != nil || n > 0 {
			return n, from, err
		}
	}
}

// permit lets the far relay's packets in: a TURN permission (the relay
// also opens its NAT's filter towards peer), or an empty datagram from a
// plain socket. It does not wait for the relay's answer.
func (s *relaySocket) permit(peer netip.AddrPort) {
	s.mu.Lock()
	if s.permitted == peer.Addr() {
		s.mu.Unlock()
		return
	}
	s.permitted = peer.Addr()
	s.mu.Unlock()
	to := net.UDPAddrFromAddrPort(peer)
	if s.client == nil {
		s.PacketConn.WriteTo(nil, to)
		return
	}
	// The transaction retransmits for a few seconds at most; Close ends
	// it at once by closing the client.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.client.CreatePermission(to); err != nil && s.log != nil {
			s.log.Info("media relay permission", "relay", s.server, "peer", peer, "err", err)
		}
	}()
}

// keep puts the client's flow to a relay beyond the NAT under the keeper
// for the life of the allocation: a call on hold sends no media, and the
// NAT must not forget the flow meanwhile. The refresh is a STUN Binding
// to the relay from the client's own socket.
func (s *relaySocket) keep(k *nat.Keeper) {
	var h *nat.Pinhole
	h, err := k.Add(nat.PinholeSpec{Local: addrPort(s.base.LocalAddr()), Remote: s.server, SeenReply: true,
		Hook: func(context.Context) error {
			mapped, err := s.client.SendBindingRequest()
			if err != nil {
				return err
			}
			h.Replied(addrPort(mapped))
			return nil
		},
	})
	if err != nil {
		s.log.Info("media relay flow not kept", "relay", s.server, "err", err)
		return
	}
	s.release = h.Remove
}

// Close ends the allocation and the client.
func (s *relaySocket) Close() error {
	if s.release != nil {
		s.release()
	}
	err := s.PacketConn.Close()
	if s.client != nil {
		s.client.Close()
		s.base.Close()
	}
	s.wg.Wait()
	return err
}

// quietPion drops pion's own logs: the media relay logs what matters.
var quietPion = &logging.DefaultLoggerFactory{Writer: io.Discard, DefaultLogLevel: logging.LogLevelDisabled, ScopeLevels: map[string]logging.LogLevel{}}
