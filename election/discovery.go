package election

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/pion/transport/v5"
	"golang.org/x/net/ipv4"

	"github.com/superpeer/superpeer/nat/clock"
)

// PeerState says where an announcing peer stands with its site's group.
type PeerState string

const (
	// StateNew: no group state yet; waiting for the bootstrap rule.
	StateNew PeerState = "new"
	// StateMember: in the site's group (it has Raft state).
	StateMember PeerState = "member"
)

// Announcement is what a peer tells its LAN about itself.
type Announcement struct {
	Site  string `json:"site"`
	ID    string `json:"id"`
	Addr  string `json:"addr"`
	Role  Role   `json:"role"`
	Score int    `json:"score"`
	// Eligible: the peer may vote (VoterEligible); the bootstrap rule
	// prefers such a founder.
	Eligible  bool      `json:"eligible,omitempty"`
	State     PeerState `json:"state"`
	Leader    string    `json:"leader,omitempty"`
	Superpeer bool      `json:"superpeer,omitempty"`
	Services  Services  `json:"services"`
}

// Heard is an announcement as received.
type Heard struct {
	Announcement
	// From is the source address of the last announcement.
	From string `json:"from"`
	// Seen is when it was last heard.
	Seen time.Time `json:"seen"`
	// Verified: it carried a valid HMAC under this site's secret. Only
	// verified announcements take part in bootstrap and joining.
	Verified bool `json:"verified"`
	// Source is how it was heard: "multicast", "dns-sd" or "memory".
	Source string `json:"source"`
}

// Discovery announces this peer on the LAN and reports the peers it hears.
type Discovery interface {
	// Announce replaces this peer's announcement; a changed one is sent
	// at once, and it is repeated periodically.
	Announce(a Announcement)
	// Peers returns what was heard recently, other than this peer.
	Peers() []Heard
	// Updates is signalled when a peer appears, changes or goes quiet.
	Updates() <-chan struct{}
	// Close stops announcing and listening.
	Close() error
}

// heardTable keeps recent announcements; shared by the implementations.
type heardTable struct {
	self  string
	ttl   time.Duration
	clock clock.Clock

	mu      sync.Mutex // guards following
	peers   map[string]Heard
	updates chan struct{}
}

func newHeardTable(self string, ttl time.Duration, c clock.Clock) *heardTable {
	return &heardTable{self: self, ttl: ttl, clock: c, peers: map[string]Heard{}, updates: make(chan struct{}, 1)}
}

func (t *heardTable) add(h Heard) {
	if h.ID == t.self || h.ID == "" {
		return
	}
	h.Seen = t.clock.Now()
	t.mu.Lock()
	old, had := t.peers[h.ID]
	// An unverified announcement never overwrites a verified one: a
	// stranger cannot move a member's address or state.
	if had && old.Verified && !h.Verified && t.clock.Since(old.Seen) < t.ttl {
		t.mu.Unlock()
		return
	}
	t.peers[h.ID] = h
	changed := !had || old.Announcement != h.Announcement || old.Verified != h.Verified
	t.mu.Unlock()
	if changed {
		t.signal()
	}
}

func (t *heardTable) signal() {
	select {
	case t.updates <- struct{}{}:
	default:
	}
}

func (t *heardTable) list() []Heard {
	now := t.clock.Now()
	t.mu.Lock()
	var out []Heard
	expired := false
	for id, h := range t.peers {
		if now.Sub(h.Seen) > t.ttl {
			delete(t.peers, id)
			expired = true
			continue
		}
		out = append(out, h)
	}
	t.mu.Unlock()
	if expired {
		t.signal()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// MemLAN is an in-memory LAN for tests: every Discovery attached to it
// hears every other, and Cut silences one.
type MemLAN struct {
	clock clock.Clock
	ttl   time.Duration

	mu      sync.Mutex // guards following
	members map[string]*memDiscovery
	cut     map[string]bool
}

// NewMemLAN returns an empty LAN whose announcements are forgotten after
// ttl of silence.
func NewMemLAN(c clock.Clock, ttl time.Duration) *MemLAN {
	return &MemLAN{clock: clock.OrReal(c), ttl: ttl, members: map[string]*memDiscovery{}, cut: map[string]bool{}}
}

// Discovery attaches peer id to the LAN.
func (l *MemLAN) Discovery(id string) Discovery {
	d := &memDiscovery{lan: l, id: id, table: newHeardTable(id, l.ttl, l.clock)}
	l.mu.Lock()
	l.members[id] = d
	others := make([]*memDiscovery, 0, len(l.members))
	for _, m := range l.members {
		others = append(others, m)
	}
	l.mu.Unlock()
	for _, m := range others {
		if a, ok := m.current(); ok && m != d {
			l.deliver(m.id, a)
		}
	}
	return d
}

// Cut stops (or with false restores) delivery to and from id.
func (l *MemLAN) Cut(id string, cut bool) {
	l.mu.Lock()
	l.cut[id] = cut
	l.mu.Unlock()
}

func (l *MemLAN) deliver(from string, a Announcement) {
	l.mu.Lock()
	if l.cut[from] {
		l.mu.Unlock()
		return
	}
	var to []*memDiscovery
	for id, m := range l.members {
		if id != from && !l.cut[id] {
			to = append(to, m)
		}
	}
	l.mu.Unlock()
	for _, m := range to {
		m.hear(from, a)
	}
}

type memDiscovery struct {
	lan   *MemLAN
	id    string
	table *heardTable

	mu     sync.Mutex // guards following
	ann    *Announcement
	closed bool
}

// hear records a, verified when it is of the same site as this peer's own
// announcement (as if it carried a valid HMAC).
func (d *memDiscovery) hear(from string, a Announcement) {
	own, ok := d.current()
	d.table.add(Heard{Announcement: a, From: "memory:" + from, Verified: ok && own.Site == a.Site, Source: "memory"})
}

func (d *memDiscovery) current() (Announcement, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ann == nil || d.closed {
		return Announcement{}, false
	}
	return *d.ann, true
}

func (d *memDiscovery) Announce(a Announcement) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.ann = &a
	d.mu.Unlock()
	d.lan.deliver(d.id, a)
}

func (d *memDiscovery) Peers() []Heard {
	// Peers that are still attached stay heard: the in-memory LAN has
	// no periodic announcements, so refresh them here.
	d.lan.mu.Lock()
	var live []*memDiscovery
	for id, m := range d.lan.members {
		if id != d.id && !d.lan.cut[id] && !d.lan.cut[d.id] {
			live = append(live, m)
		}
	}
	d.lan.mu.Unlock()
	for _, m := range live {
		if a, ok := m.current(); ok {
			d.hear(m.id, a)
		}
	}
	return d.table.list()
}

func (d *memDiscovery) Updates() <-chan struct{} { return d.table.updates }

func (d *memDiscovery) Close() error {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.lan.mu.Lock()
	delete(d.lan.members, d.id)
	d.lan.mu.Unlock()
	return nil
}

// MulticastConfig configures a MulticastDiscovery.
type MulticastConfig struct {
	// Group is the IPv4 multicast group and port, e.g. "239.255.50.71:5071".
	Group string
	// Interval is the announcement period; a peer is forgotten after
	// three missed periods.
	Interval time.Duration
	// Secret authenticates this site's announcements (HMAC-SHA256).
	Secret *SiteSecret
	// Interfaces names the interfaces to announce and listen on; empty
	// means every up, multicast-capable one. A router names its LAN side:
	// announcements have no business on the WAN.
	Interfaces []string
	Net        transport.Net
	Clock      clock.Clock
	Logger     *slog.Logger
}

// MulticastDiscovery announces on an IPv4 multicast group, joined on every
// up, multicast-capable interface of the Net (or those named), and also to
// each of those interfaces' subnet broadcast address: switches with IGMP
// snooping and no querier (common at home) stop forwarding multicast,
// while every switch floods broadcast. Each announcement carries an HMAC
// under the site secret; announcements of other sites and forgeries are
// listed as unverified and never acted upon.
type MulticastDiscovery struct {
	cfg   MulticastConfig
	sock  *lanSocket
	table *heardTable
	pairs *pairingTable

	mu     sync.Mutex // guards following
	ann    *Announcement
	timer  clock.Timer
	closed bool

	done chan struct{}
	wg   sync.WaitGroup
}

// wireMessage is one datagram on the announcement port: an announcement
// (A, authenticated by MAC), or a pairing request or offer.
type wireMessage struct {
	A     json.RawMessage `json:"a,omitempty"`
	MAC   []byte          `json:"mac,omitempty"`
	Pair  *pairRequest    `json:"pair,omitempty"`
	Offer *pairOffer      `json:"offer,omitempty"`
}

// lanSocket is the UDP socket of the announcement port: joined to the
// multicast group on the chosen interfaces, able to broadcast.
type lanSocket struct {
	group  *net.UDPAddr
	conn   net.PacketConn
	pconn  *ipv4.PacketConn
	ifaces []int          // indexes of the interfaces joined, announced on
	bcast  []*net.UDPAddr // their directed broadcast addresses
	log    *slog.Logger
}

func openLANSocket(ctx context.Context, n transport.Net, groupAddr string, names []string, log *slog.Logger) (*lanSocket, error) {
	if n == nil {
		return nil, errNoNet
	}
	group, err := net.ResolveUDPAddr("udp4", groupAddr)
	if err != nil || !group.IP.IsMulticast() {
		return nil, fmt.Errorf("multicast group %q is not an IPv4 multicast address and port", groupAddr)
	}
	lc := n.CreateListenConfig(&net.ListenConfig{Control: reuseAddr})
	pc, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", group.Port))
	if err != nil {
		return nil, fmt.Errorf("listening for announcements on UDP %d: %w", group.Port, err)
	}
	p := ipv4.NewPacketConn(pc)
	ifaces, err := n.Interfaces()
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("listing interfaces to join %s: %w", group.IP, err)
	}
	s := &lanSocket{group: group, conn: pc, pconn: p, log: log}
	var joinErr error
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagMulticast == 0 {
			continue
		}
		if len(names) > 0 && !slices.Contains(names, ifc.Name) {
			continue
		}
		if err := p.JoinGroup(&ifc.Interface, &net.UDPAddr{IP: group.IP}); err != nil {
			joinErr = err
			continue
		}
		s.ifaces = append(s.ifaces, ifc.Index)
		if addrs, err := ifc.Addrs(); err == nil {
			for _, a := range addrs {
				if b := broadcastOf(a); b != nil {
					s.bcast = append(s.bcast, &net.UDPAddr{IP: b, Port: group.Port})
				}
			}
		}
	}
	if len(s.ifaces) == 0 {
		pc.Close()
		return nil, fmt.Errorf("joining multicast group %s on no interface (of %v): %w", group.IP, names, errors.Join(joinErr, errors.New("no up multicast interface")))
	}
	_ = p.SetMulticastLoopback(true)
	return s, nil
}

// send multicasts msg on every joined interface and broadcasts it on
// their subnets.
func (s *lanSocket) send(msg []byte) {
	for _, idx := range s.ifaces {
		if _, err := s.pconn.WriteTo(msg, &ipv4.ControlMessage{IfIndex: idx}, s.group); err != nil {
			s.log.Debug("announcement not sent", "group", s.group, "interface", idx, "err", err)
		}
	}
	for _, b := range s.bcast {
		if _, err := s.conn.WriteTo(msg, b); err != nil {
			s.log.Debug("announcement not broadcast", "to", b, "err", err)
		}
	}
}

// readLoop hands every datagram to fn until the socket closes.
func (s *lanSocket) readLoop(done <-chan struct{}, fn func(w wireMessage, from net.Addr)) {
	buf := make([]byte, 2048)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			select {
			case <-done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.log.Warn("announcement listener stopped", "err", err)
			return
		}
		var w wireMessage
		if json.Unmarshal(buf[:n], &w) != nil {
			continue
		}
		fn(w, from)
	}
}

// NewMulticastDiscovery joins the group and starts listening. self is this
// peer's node ID (its own announcements are not reported).
func NewMulticastDiscovery(ctx context.Context, self string, cfg MulticastConfig) (*MulticastDiscovery, error) {
	cfg.Clock = clock.OrReal(cfg.Clock)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	sock, err := openLANSocket(ctx, cfg.Net, cfg.Group, cfg.Interfaces, cfg.Logger)
	if err != nil {
		return nil, err
	}
	d := &MulticastDiscovery{
		cfg: cfg, sock: sock,
		table: newHeardTable(self, 3*cfg.Interval, cfg.Clock),
		pairs: newPairingTable(cfg.Clock, 3*cfg.Interval+pairingInterval),
		done:  make(chan struct{}),
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.sock.readLoop(d.done, d.receive)
	}()
	return d, nil
}

// Announce implements Discovery.
func (d *MulticastDiscovery) Announce(a Announcement) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	changed := d.ann == nil || *d.ann != a
	d.ann = &a
	if d.timer == nil {
		d.timer = d.cfg.Clock.AfterFunc(d.cfg.Interval, d.tick)
	}
	d.mu.Unlock()
	if changed {
		d.send(a) // news goes out at once, the rest on the period
	}
}

func (d *MulticastDiscovery) tick() {
	d.mu.Lock()
	if d.closed || d.ann == nil {
		d.mu.Unlock()
		return
	}
	a := *d.ann
	d.timer.Reset(d.cfg.Interval)
	d.mu.Unlock()
	d.send(a)
	d.table.list() // forget the quiet ones
}

func (d *MulticastDiscovery) send(a Announcement) {
	body, err := json.Marshal(a)
	if err != nil {
		return
	}
	msg, err := json.Marshal(wireMessage{A: body, MAC: d.cfg.Secret.mac(body)})
	if err != nil {
		return
	}
	d.sock.send(msg)
}

func (d *MulticastDiscovery) receive(w wireMessage, from net.Addr) {
	switch {
	case w.Pair != nil:
		d.pairs.add(*w.Pair, from)
	case w.A != nil:
		var a Announcement
		if json.Unmarshal(w.A, &a) != nil {
			return
		}
		verified := a.Site == d.cfg.Secret.SiteID() && hmac.Equal(w.MAC, d.cfg.Secret.mac(w.A))
		d.table.add(Heard{Announcement: a, From: from.String(), Verified: verified, Source: "multicast"})
	}
}

// Peers implements Discovery.
func (d *MulticastDiscovery) Peers() []Heard { return d.table.list() }

// Updates implements Discovery.
func (d *MulticastDiscovery) Updates() <-chan struct{} { return d.table.updates }

// Close implements Discovery.
func (d *MulticastDiscovery) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	if d.timer != nil {
		d.timer.Stop()
	}
	d.mu.Unlock()
	close(d.done)
	err := d.sock.conn.Close()
	d.wg.Wait()
	return err
}

// reuseAddr lets several daemons on one host (tests, a desktop agent next
// to a full daemon) share the announcement port, and lets the socket send
// to a broadcast address.
func reuseAddr(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
		if serr == nil {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// broadcastOf returns the directed broadcast address of an IPv4 subnet
// address, nil for anything else (IPv6, loopback, /31, /32).
func broadcastOf(a net.Addr) net.IP {
	ipn, ok := a.(*net.IPNet)
	if !ok || ipn.IP.To4() == nil || ipn.IP.IsLoopback() {
		return nil
	}
	ones, bits := ipn.Mask.Size()
	if bits != 32 || ones > 30 {
		return nil
	}
	ip, mask := ipn.IP.To4(), net.IP(ipn.Mask).To4()
	b := make(net.IP, 4)
	for i := range b {
		b[i] = ip[i] | ^mask[i]
	}
	return b
}

// verifiedMembers filters what was heard down to this site's peers.
func verifiedOnly(hs []Heard) []Heard {
	return slices.DeleteFunc(hs, func(h Heard) bool { return !h.Verified })
}
