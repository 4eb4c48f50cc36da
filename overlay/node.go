package overlay

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/superpeer/superpeer/nat/clock"
	"github.com/superpeer/superpeer/overlay/dht"
	"github.com/superpeer/superpeer/overlay/routing"
	"github.com/superpeer/superpeer/overlay/wire"
)

// Routed message kinds.
const (
	kindFind    uint8 = 1 // reply: IDs near the destination
	kindConnect uint8 = 2 // rendezvous for a new link
	kindPut     uint8 = 3 // store a record at the key's root
	kindGet     uint8 = 4
	kindStore   uint8 = 5 // replica copy, to an exact node
	kindApp     uint8 = 6 // application payload to a key's root
	kindAppNode uint8 = 7 // application payload to an exact node
	kindError   uint8 = 255
)

// Connect methods, chosen by the node asked for a link.
const (
	methodRefused uint8 = iota
	methodDialMe        // the asker dials the answerer's address
	methodDialYou       // the answerer dials the asker
	methodPunch         // both send at once, the asker dials
	methodRelay         // the asker dials through the named relay
)

// ErrUnreachable is returned when no route leads to a node.
var ErrUnreachable = errors.New("node unreachable through the overlay")

// ErrNotFound is returned by Get when no replica holds the AOR.
var ErrNotFound = errors.New("no record for AOR")

// ErrBadRecord is returned by Get when the record a replica returned fails
// the reader's checks (signature, AOR, expiry).
var ErrBadRecord = errors.New("record failed verification")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("overlay node closed")

// Node is one overlay node: its socket, links, routing table and store.
type Node struct {
	cfg   Config
	id    NodeID
	cert  tls.Certificate
	clock clock.Clock
	log   *slog.Logger
	sock  *socket
	store *dht.Store

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu         sync.Mutex // guards following
	table      *routing.Table
	sessions   map[NodeID]*session
	relayed    map[[2]NodeID]*pipeConn // (relay, peer) -> pipe, on both ends
	pending    map[uint64]chan *wire.Reply
	expected   map[NodeID]PathKind // accepted connects awaiting the handshake
	punching   map[NodeID]chan net.Addr
	connecting map[NodeID]int
	observed   []string
	published  map[routing.ID]*dht.Record
	hops       map[hopKey]*hopWait // forwards awaiting their acknowledgement
	reachSent  []uint32            // the reach last advertised to the links
	onMessage  func(from NodeID, payload []byte)
	onRouted   func(key, from NodeID, payload []byte)
	rnd        *rand.Rand
	joining    bool
}

// New checks cfg, opens the overlay socket and starts the node; it then
// joins through the bootstrap nodes in the background. Close stops it.
func New(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	cert, err := selfCertificate(cfg.Key)
	if err != nil {
		return nil, err
	}
	sock, err := listen(cfg.Net, cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("opening overlay socket %s: %w", cfg.Listen, err)
	}
	id := IDOf(cfg.Key.Public().(ed25519.PublicKey))
	nctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	n := &Node{
		cfg: cfg, id: id, cert: cert, clock: cfg.Clock,
		log:   cfg.Logger.With("node", id.Short()),
		sock:  sock,
		store: dht.NewStore(cfg.Store),
		ctx:   nctx, cancel: cancel,
		table:      routing.NewTable(id, cfg.Table),
		sessions:   map[NodeID]*session{},
		relayed:    map[[2]NodeID]*pipeConn{},
		pending:    map[uint64]chan *wire.Reply{},
		expected:   map[NodeID]PathKind{},
		punching:   map[NodeID]chan net.Addr{},
		connecting: map[NodeID]int{},
		published:  map[routing.ID]*dht.Record{},
		hops:       map[hopKey]*hopWait{},
		rnd:        rand.New(rand.NewPCG(binary.BigEndian.Uint64(id[:8]), uint64(time.Now().UnixNano()))),
	}
	sock.onProbe = n.handleProbe
	sock.onAccept = func(p *pipeConn) { n.goAccept(p, Direct, NodeID{}) }
	n.wg.Add(2)
	go func() { defer n.wg.Done(); sock.readLoop() }()
	go func() { defer n.wg.Done(); n.timers() }()
	n.log.Info("overlay: node up", "id", id.String(), "listen", sock.pc.LocalAddr().String(), "reachability", cfg.Reachability.String())
	if len(cfg.Bootstrap) > 0 {
		n.wg.Add(1)
		go func() { defer n.wg.Done(); _ = n.Join(n.ctx) }()
	}
	return n, nil
}

// ID returns the node's ID.
func (n *Node) ID() NodeID { return n.id }

// Addr returns the overlay socket's local address.
func (n *Node) Addr() net.Addr { return n.sock.pc.LocalAddr() }

// Close drops every link and stops the node.
func (n *Node) Close() error {
	n.cancel() // first: nothing may rejoin while the links go
	n.mu.Lock()
	ss := make([]*session, 0, len(n.sessions))
	for _, s := range n.sessions {
		ss = append(ss, s)
	}
	n.mu.Unlock()
	for _, s := range ss {
		_ = s.send(&wire.Frame{Type: wire.TypeClose, Reason: "node closing"})
		n.dropSession(s, "node closing")
	}
	n.stopHops()
	err := n.sock.pc.Close()
	n.wg.Wait()
	return err
}

// HandleMessages sets the receiver of payloads sent to this node with
// Send.
func (n *Node) HandleMessages(fn func(from NodeID, payload []byte)) {
	n.mu.Lock()
	n.onMessage = fn
	n.mu.Unlock()
}

// HandleRouted sets the receiver of payloads routed with Route to keys
// this node is the root of.
func (n *Node) HandleRouted(fn func(key, from NodeID, payload []byte)) {
	n.mu.Lock()
	n.onRouted = fn
	n.mu.Unlock()
}

func (n *Node) self() wire.Contact {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.selfLocked()
}

func (n *Node) selfLocked() wire.Contact {
	c := wire.Contact{ID: n.id, Reachability: uint8(n.cfg.Reachability)}
	c.Addrs = append(c.Addrs, n.cfg.Advertise...)
	for _, a := range n.observed {
		if len(c.Addrs) < wire.MaxAddrs {
			c.Addrs = append(c.Addrs, a)
		}
	}
	if ua, ok := n.sock.pc.LocalAddr().(*net.UDPAddr); ok && !ua.IP.IsUnspecified() && len(c.Addrs) < wire.MaxAddrs {
		if a := ua.String(); !contains(c.Addrs, a) {
			c.Addrs = append(c.Addrs, a)
		}
	}
	return c
}

// --- sessions and links ---

// goAccept runs the server side of a handshake on a new pipe.
func (n *Node) goAccept(p *pipeConn, kind PathKind, via NodeID) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		s, err := n.handshake(n.ctx, p, false, nil, kind, via)
		if err != nil {
			n.log.Debug("overlay: inbound handshake failed", "from", p.remote.String(), "err", err)
			return
		}
		n.mu.Lock()
		if k, ok := n.expected[s.peer]; ok {
			s.kind = k
			delete(n.expected, s.peer)
		}
		n.mu.Unlock()
		n.startSession(s, false)
	}()
}

// dial opens a session to addr as DTLS client, pinning expect when known.
func (n *Node) dial(ctx context.Context, addr net.Addr, expect *NodeID, kind PathKind, wantLink bool) (*session, error) {
	p, fresh := n.sock.pipe(addr)
	if !fresh {
		return nil, fmt.Errorf("dialing %s: a session to that address is already being set up", addr)
	}
	s, err := n.handshake(ctx, p, true, expect, kind, NodeID{})
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", addr, err)
	}
	return n.startSession(s, wantLink), nil
}

// startSession registers s (replacing nothing: a second session to the
// same peer is closed) and sends the first Hello.
func (n *Node) startSession(s *session, wantLink bool) *session {
	n.mu.Lock()
	if old := n.sessions[s.peer]; old != nil && !old.closed {
		// Both ends opened a session at once. Both keep the one whose
		// client has the lower ID, so they agree without a word.
		keepNew := !old.linked && s.client == lowerID(n.id, s.peer) && old.client != s.client
		if !keepNew {
			n.mu.Unlock()
			_ = s.conn.Close()
			return old
		}
		n.sessions[s.peer] = s
		old.closed = true
		n.mu.Unlock()
		_ = old.conn.Close()
		_ = old.pipe.Close()
	} else {
		n.sessions[s.peer] = s
		n.mu.Unlock()
	}
	n.log.Debug("overlay: session up", "peer", s.peer.Short(), "remote", s.remote.String(), "path", s.kind.String())
	n.wg.Add(1)
	go func() { defer n.wg.Done(); s.readLoop() }()
	if s.client {
		// The client speaks first; the server's Hello answers it and
		// says whether the link was accepted.
		_ = n.sendHello(s, wantLink)
	}
	return s
}

func (n *Node) sendHello(s *session, linked bool) error {
	n.mu.Lock()
	if linked && !s.linked {
		s.requested, s.decided = true, false
	}
	h := &wire.Hello{Self: n.selfLocked(), Links: n.table.Links(), Linked: linked}
	if _, ok := s.remote.(relayAddr); !ok {
		h.Observed = s.remote.String()
	}
	n.mu.Unlock()
	return s.send(&wire.Frame{Type: wire.TypeHello, Hello: h})
}

// advertise sends the link set to every linked peer.
func (n *Node) advertise() {
	n.mu.Lock()
	var ss []*session
	for _, s := range n.sessions {
		if s.linked {
			ss = append(ss, s)
		}
	}
	n.mu.Unlock()
	for _, s := range ss {
		_ = n.sendHello(s, true)
	}
}

// linkLocked makes s a table link, giving up a link per the table's rule
// when full. It returns the session given up, if any.
func (n *Node) linkLocked(s *session) (ok bool, victim *session) {
	if s.linked {
		return true, nil
	}
	if n.table.Len() >= n.cfg.Table.Degree {
		v, ok := n.table.Evict(s.peer)
		if !ok {
			return false, nil
		}
		n.table.Remove(v)
		victim = n.sessions[v]
		if victim != nil {
			victim.linked = false
		}
	}
	if err := n.table.Add(s.peer); err != nil {
		return false, victim
	}
	s.linked = true
	return true, victim
}

func (n *Node) linkEstablished(s *session, victim *session) {
	if victim != nil {
		// The link given up stays a transient session: the far end keeps
		// a way into the overlay while it finds a replacement, and both
		// ends let it idle out.
		_ = n.sendHello(victim, false)
		n.linkLost(victim, "replaced by a link that fills a gap")
	}
	if p := n.cfg.Pinholes; p != nil {
		p.LinkUp(s.peer, n.sock.pc.LocalAddr(), s.remote, s.kind)
	}
	n.log.Info("overlay: link up", "peer", s.peer.Short(), "remote", s.remote.String(), "path", s.kind.String())
	n.advertise()
	n.mu.Lock()
	reach := n.table.Reach()
	n.mu.Unlock()
	_ = s.send(&wire.Frame{Type: wire.TypeReach, Reach: reach})
}

// dropSession forgets s; a link's loss is advertised and reported.
func (n *Node) dropSession(s *session, why string) {
	n.mu.Lock()
	if s.closed {
		n.mu.Unlock()
		return
	}
	s.closed = true
	wasLink := s.linked
	if n.sessions[s.peer] == s {
		delete(n.sessions, s.peer)
		if wasLink {
			n.table.Remove(s.peer)
		}
	}
	var carried []*pipeConn
	for k, p := range n.relayed {
		if k[0] == s.peer {
			carried = append(carried, p)
			delete(n.relayed, k)
		}
	}
	n.mu.Unlock()
	_ = s.conn.Close()
	_ = s.pipe.Close()
	for _, p := range carried {
		_ = p.Close()
	}
	if wasLink {
		n.linkLost(s, why)
	}
}

// linkLost reports a link that is gone and repairs when it was the last.
func (n *Node) linkLost(s *session, why string) {
	if p := n.cfg.Pinholes; p != nil {
		p.LinkDown(s.peer)
	}
	n.log.Info("overlay: link down", "peer", s.peer.Short(), "path", s.kind.String(), "why", why)
	n.advertise()
	n.rejoinIfAlone()
}

// rejoinIfAlone joins again at once when the last link went, rather than
// at the next maintenance round.
func (n *Node) rejoinIfAlone() {
	n.mu.Lock()
	alone := n.table.Len() == 0 && len(n.cfg.Bootstrap) > 0 && n.ctx.Err() == nil && !n.joining
	if alone {
		n.joining = true
	}
	n.mu.Unlock()
	if !alone {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		_ = n.Join(n.ctx)
		n.mu.Lock()
		n.joining = false
		n.mu.Unlock()
	}()
}

// --- frames ---

func (n *Node) handleFrame(s *session, f *wire.Frame) {
	n.mu.Lock()
	s.lastHeard = n.clock.Now()
	s.suspect = false // it answers
	n.mu.Unlock()
	switch f.Type {
	case wire.TypeHello:
		n.handleHello(s, f.Hello)
	case wire.TypePing:
		_ = s.send(&wire.Frame{Type: wire.TypePong, Nonce: f.Nonce})
	case wire.TypePong:
		n.mu.Lock()
		if f.Nonce == s.pingNonce && !s.pingSent.IsZero() {
			s.rtt = n.clock.Since(s.pingSent)
		}
		n.mu.Unlock()
	case wire.TypeForward:
		n.handleForward(s, f.Forward)
	case wire.TypeAck:
		n.hopAcked(s.peer, f.Nonce)
	case wire.TypeReach:
		n.mu.Lock()
		if s.linked {
			n.table.SetPeerReach(s.peer, f.Reach)
		}
		n.mu.Unlock()
	case wire.TypeReply:
		n.handleReply(f.Reply)
	case wire.TypeData:
		n.mu.Lock()
		fn := n.onMessage
		n.mu.Unlock()
		if fn != nil {
			fn(s.peer, f.Data)
		}
	case wire.TypeRelay:
		n.handleRelay(s, f.Relay)
	case wire.TypeClose:
		n.dropSession(s, "peer: "+f.Reason)
	}
}

func (n *Node) handleHello(s *session, h *wire.Hello) {
	if h.Self.ID != s.peer {
		n.dropSession(s, "hello for another node ID")
		return
	}
	n.mu.Lock()
	s.contact = h.Self
	if h.Observed != "" && !contains(n.observed, h.Observed) && !contains(n.cfg.Advertise, h.Observed) {
		n.observed = append(n.observed, h.Observed)
		if len(n.observed) > 2 {
			n.observed = n.observed[1:]
		}
	}
	var victim *session
	answer, established, lost := false, false, false
	switch {
	case h.Linked && !s.linked && s.requested:
		// The answer to our request: yes.
		s.requested, s.decided = false, true
		established, victim = n.linkLocked(s)
		answer = !established // we could not keep it after all: say so
	case h.Linked && !s.linked:
		// A request: the table decides (or a connect we answered).
		_, expected := n.expected[s.peer]
		if expected || n.table.Accepts(s.peer) {
			established, victim = n.linkLocked(s)
		} else if len(h.Links) == 0 && !n.table.Has(s.peer) {
			// The asker has no link at all: make room for it.
			if v, ok := n.table.EvictForOrphan(); ok {
				n.table.Remove(v)
				if victim = n.sessions[v]; victim != nil {
					victim.linked = false
				}
				established = n.table.Add(s.peer) == nil
				s.linked = established
			}
		}
		answer = true
	case !h.Linked:
		if s.requested {
			s.requested, s.decided = false, true // refused
		}
		if s.linked {
			// The peer does not hold us as a link: neither do we.
			n.table.Remove(s.peer)
			s.linked, lost = false, true
		}
	}
	if s.linked {
		n.table.SetPeerLinks(s.peer, h.Links)
	}
	n.mu.Unlock()
	if answer {
		_ = n.sendHello(s, established)
	}
	if established {
		n.linkEstablished(s, victim)
	}
	if lost {
		n.linkLost(s, "peer gave the link up")
	}
}

// deliver handles a message this node is the destination (or root) of.
func (n *Node) deliver(m *wire.Forward) {
	origin := m.Via[0]
	if m.Exact && m.Dest != n.id {
		n.replyError(m, errUnreachable, "no way on from "+n.id.Short())
		return
	}
	switch m.Kind {
	case kindFind:
		n.mu.Lock()
		ids := n.table.Closest(m.Dest, 2*n.cfg.Table.Close, func(id NodeID) bool { return id == origin })
		n.mu.Unlock()
		n.reply(m, kindFind, encodeIDs(ids))
	case kindConnect:
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.answerConnect(m) }()
	case kindPut:
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.rootPut(m) }()
	case kindStore:
		r, err := dht.Unmarshal(m.Payload)
		if err == nil {
			err = n.store.Put(r)
		}
		n.replyStatus(m, err)
	case kindGet:
		key := m.Dest
		if m.Exact && len(m.Payload) == routing.IDLen {
			copy(key[:], m.Payload) // a root asking a replica
		}
		if r, ok := n.store.Get(key); ok {
			if b, err := r.Marshal(); err == nil {
				n.reply(m, kindGet, b)
				return
			}
		}
		if m.Exact {
			n.reply(m, kindGet, nil)
			return
		}
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.getAtReplicas(m) }()
	case kindApp, kindAppNode:
		n.mu.Lock()
		onRouted, onMessage := n.onRouted, n.onMessage
		n.mu.Unlock()
		if m.Kind == kindApp && onRouted != nil {
			onRouted(m.Dest, origin, m.Payload)
		} else if m.Kind == kindAppNode && onMessage != nil {
			onMessage(origin, m.Payload)
		}
		n.reply(m, m.Kind, n.id[:])
	default:
		n.replyError(m, "", fmt.Sprintf("unknown message kind %d", m.Kind))
	}
}

func (n *Node) replyStatus(m *wire.Forward, err error) {
	if err == nil {
		n.reply(m, m.Kind, nil)
		return
	}
	if rej, ok := dht.IsRejection(err); ok {
		n.replyError(m, rej.Reason, rej.Detail)
		return
	}
	n.replyError(m, dht.ReasonMalformed, err.Error())
}

func encodeError(reason, detail string) []byte {
	if len(detail) > wire.MaxText {
		detail = detail[:wire.MaxText]
	}
	return append(appendText(nil, reason), appendText(nil, detail)...)
}

func decodeError(p []byte) (reason, detail string) {
	d := wire.NewDecoder(p)
	reason, detail = d.Text("reason"), d.Text("detail")
	if d.Done() != nil {
		return "", "malformed error reply"
	}
	return reason, detail
}

func appendText(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func encodeIDs(ids []NodeID) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(ids)))
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	return b
}

func decodeIDs(p []byte) ([]NodeID, error) {
	d := wire.NewDecoder(p)
	ids := d.IDs("node IDs", wire.MaxLinks)
	if err := d.Done(); err != nil {
		return nil, fmt.Errorf("decoding node IDs: %w", err)
	}
	return ids, nil
}

func contains[T comparable](s []T, v T) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
