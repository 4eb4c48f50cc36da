package turn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"
	"github.com/pion/turn/v5"

	"github.com/superpeer/superpeer/nat/clock"
)

// Refusal reasons, the label of the refusals counter and the keys of
// Status.Refusals.
const (
	// ReasonForbiddenPeer: a peer in a denied range (403).
	ReasonForbiddenPeer = "forbidden_peer"
	// ReasonOwnAddress: a peer that is one of the superpeer's own
	// addresses (403).
	ReasonOwnAddress = "own_address"
	// ReasonPermissionCap: an allocation's permission cap (403).
	ReasonPermissionCap = "permission_cap"
	// ReasonUserQuota and ReasonTotalQuota: allocation quotas (486).
	ReasonUserQuota  = "user_quota"
	ReasonTotalQuota = "total_quota"
	// ReasonBandwidth: a packet over an allocation's bandwidth cap,
	// dropped.
	ReasonBandwidth = "bandwidth"
	// ReasonNoPermission: a packet at a relay from a peer without
	// permission, dropped (RFC 8656 section 10.3).
	ReasonNoPermission = "no_permission"
	// Credentials refused (401): expired, outliving the lifetime cap,
	// malformed, with a wrong password, or no secret to check them with.
	ReasonCredentialExpired   = "credential_expired"
	ReasonCredentialLifetime  = "credential_lifetime"
	ReasonCredentialMalformed = "credential_malformed"
	ReasonBadPassword         = "bad_password"
	ReasonNoSecret            = "no_secret"
	// ReasonUnauthorizedRateLimited: a 401 answer not sent, over the
	// per-source limit.
	ReasonUnauthorizedRateLimited = "unauthorized_rate_limited"
	// ReasonTCPOverUDP: an RFC 6062 TCP allocation asked over UDP (400).
	ReasonTCPOverUDP = "tcp_over_udp"
	// ReasonTCPConnections: a TCP client connection over
	// MaxTCPConnections, closed.
	ReasonTCPConnections = "tcp_connections"
	// ReasonRelayUnavailable: no relay port could be bound (508).
	ReasonRelayUnavailable = "relay_unavailable"
)

var reasons = []string{
	ReasonForbiddenPeer, ReasonOwnAddress, ReasonPermissionCap, ReasonUserQuota, ReasonTotalQuota,
	ReasonBandwidth, ReasonNoPermission, ReasonCredentialExpired, ReasonCredentialLifetime,
	ReasonCredentialMalformed, ReasonBadPassword, ReasonNoSecret, ReasonUnauthorizedRateLimited,
	ReasonTCPOverUDP, ReasonTCPConnections, ReasonRelayUnavailable,
}

const (
	// pendingTTL is how long a quota slot granted to an Allocate waits for
	// its allocation before it is given back (pion failed in between).
	pendingTTL = 10 * time.Second
	// ownRefresh is how often the superpeer's own addresses are read
	// again (DHCP renumbering).
	ownRefresh = time.Minute
	// maxUnauthSources bounds the per-source state of the 401 limit.
	maxUnauthSources = 4096
)

// Server is the superpeer's TURN relay.
type Server struct {
	cfg    Config
	net    transport.Net
	clk    clock.Clock
	log    *slog.Logger
	policy *PeerPolicy
	verify verifier
	unauth *sourceLimiter
	set    *metrics.Set

	refusals map[string]*metrics.Counter // read-only after New
	remaps   atomic.Uint64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// Set by Start, read-only afterwards.
	listenAddrs []netip.Addr
	udpAddrs    []netip.AddrPort
	tcpAddrs    []netip.AddrPort
	pion        *turn.Server

	mu          sync.Mutex // guards following
	started     bool
	closed      bool
	allocs      map[allocKey]*allocation
	relays      map[relayKey]*relay
	gone        [2]trafficTotals // to peer, from peer: of relays closed
	userAllocs  map[string]int
	totalAllocs int
	pending     map[string][]time.Time // quota slots granted, allocation not yet made
	pendingN    int

	poolMu   sync.Mutex // guards ready
	ready    map[netip.Addr][]*udpRelay
	poolKick chan struct{}

	natMu         sync.Mutex // guards following
	mapperFailing bool
	stunFailing   bool
	lastExt       netip.Addr
}

// allocKey is an allocation's 5-tuple (RFC 8656 section 2).
type allocKey struct {
	tcp      bool
	src, dst netip.AddrPort
}

func keyOf(src, dst net.Addr) allocKey {
	_, tcp := src.(*net.TCPAddr)
	return allocKey{tcp: tcp, src: addrPortOf(src), dst: addrPortOf(dst)}
}

// relayKey is a relayed address.
type relayKey struct {
	tcp bool
	ap  netip.AddrPort
}

type allocation struct {
	key      allocKey
	user     string
	relay    *relay // nil if the relay was not ours (cannot happen)
	created  time.Time
	channels int
	// requested are the peers of the CreatePermission or ChannelBind
	// request pion is handling on this 5-tuple (pion hands the events
	// only the peer's IP; the filter is opened towards IP and port).
	requested []netip.AddrPort
}

type trafficTotals struct{ packets, bytes uint64 }

// New checks cfg and returns a server that Start opens. nw opens every
// socket (nil: the host's network); clk drives credential expiry, rate
// limits and the ready pool (nil: the wall clock).
func New(cfg Config, nw transport.Net, clk clock.Clock) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if nw == nil {
		n, err := stdnet.NewNet()
		if err != nil {
			return nil, fmt.Errorf("turn: opening the host network: %w", err)
		}
		nw = n
	}
	clk = clock.OrReal(clk)
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:        cfg,
		net:        nw,
		clk:        clk,
		log:        log,
		policy:     NewPeerPolicy(cfg.AllowPeers, cfg.DenyPeers),
		unauth:     newSourceLimiter(clk, cfg.UnauthorizedRate, cfg.UnauthorizedBurst, maxUnauthSources),
		set:        metrics.NewSet(),
		refusals:   map[string]*metrics.Counter{},
		ctx:        ctx,
		cancel:     cancel,
		allocs:     map[allocKey]*allocation{},
		relays:     map[relayKey]*relay{},
		userAllocs: map[string]int{},
		pending:    map[string][]time.Time{},
		ready:      map[netip.Addr][]*udpRelay{},
		poolKick:   make(chan struct{}, 1),
	}
	s.verify = verifier{secret: cfg.Secret, realm: cfg.Realm, maxLifetime: cfg.MaxCredentialLifetime, now: clk.Now}
	s.registerMetrics()
	return s, nil
}

// Start opens the listeners and starts relaying. ctx bounds only the
// opening.
func (s *Server) Start(ctx context.Context) (err error) {
	s.mu.Lock()
	if s.started || s.closed {
		s.mu.Unlock()
		return errors.New("turn: Start called twice or after Close")
	}
	s.started = true
	s.mu.Unlock()

	addrs, own, err := s.addresses()
	if err != nil {
		return err
	}
	s.listenAddrs = addrs
	s.policy.SetOwn(append(own, addrs...))

	var conns []net.PacketConn
	var lns []net.Listener
	defer func() {
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			for _, l := range lns {
				l.Close()
			}
		}
	}()
	var pcs []turn.PacketConnConfig
	var lcs []turn.ListenerConfig
	port := s.cfg.Port
	for _, a := range addrs {
		cs, err := s.listenUDP(ctx, a, port)
		if err != nil {
			return err
		}
		for _, c := range cs {
			if u, ok := c.(*net.UDPConn); ok && s.cfg.UDPReadBuffer > 0 {
				u.SetReadBuffer(s.cfg.UDPReadBuffer) // best effort: the kernel caps it
			}
		}
		conns = append(conns, cs...)
		local := cs[0].LocalAddr()
		s.udpAddrs = append(s.udpAddrs, addrPortOf(local))
		if port == 0 {
			port = addrPortOf(local).Port() // the same port on every address
		}
		for _, c := range cs {
			pcs = append(pcs, turn.PacketConnConfig{
				PacketConn:            &guardedPacketConn{PacketConn: c, g: guard{s: s, local: local}, batch: newBatchReader(c, listenerBatch, 2048)},
				RelayAddressGenerator: &generator{s: s, listen: a},
				PermissionHandler:     s.permissionHandler(local),
			})
		}
		if !s.cfg.TCP {
			continue
		}
		ln, err := s.listenTCP(a, port)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
		s.tcpAddrs = append(s.tcpAddrs, addrPortOf(ln.Addr()))
		lcs = append(lcs, turn.ListenerConfig{
			Listener: &guardedListener{
				Listener: ln,
				g:        guard{s: s, local: ln.Addr(), tcp: true},
				slots:    make(chan struct{}, s.cfg.MaxTCPConnections),
			},
			RelayAddressGenerator: &generator{s: s, listen: a, tcp: true},
			PermissionHandler:     s.permissionHandler(ln.Addr()),
		})
	}

	s.pion, err = turn.NewServer(turn.ServerConfig{
		PacketConnConfigs:  pcs,
		ListenerConfigs:    lcs,
		LoggerFactory:      pionLogs{log: s.log, limit: newLogLimiter(s.clk)},
		Realm:              s.cfg.Realm,
		AuthHandler:        s.authenticate,
		QuotaHandler:       s.quota,
		EventHandler:       s.events(),
		ChannelBindTimeout: s.cfg.ChannelLifetime,
		PermissionTimeout:  s.cfg.PermissionLifetime,
		AllocationLifetime: s.cfg.AllocationLifetime,
	})
	if err != nil {
		return fmt.Errorf("turn: starting the server: %w", err)
	}

	var binds []netip.Addr
	for _, a := range addrs {
		if s.poolWanted(a) {
			binds = append(binds, a)
		}
	}
	if len(binds) > 0 {
		s.wg.Add(1)
		go s.poolLoop(binds)
	}
	s.wg.Add(1)
	go s.ownLoop()
	s.log.Info("turn: relay listening", "udp", s.udpAddrs, "tcp", s.tcpAddrs,
		"udp_listeners", s.cfg.UDPListeners, "stun", s.cfg.STUNServer, "port_mapper", s.cfg.PortMapper != nil,
		"external_ip", s.cfg.ExternalIP, "allow_peers", s.cfg.AllowPeers)
	return nil
}

// Close stops relaying, closes every allocation and releases their port
// mappings and pinholes.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	var err error
	if s.pion != nil {
		err = s.pion.Close()
	}
	s.closePool()
	// pion closes its allocations from the read loops it just ended, after
	// Close returns: close the relays here so that mappings and pinholes
	// are released before Close returns.
	s.mu.Lock()
	var rs []*relay
	for _, r := range s.relays {
		rs = append(rs, r)
	}
	s.mu.Unlock()
	for _, r := range rs {
		r.closeSocket()
	}
	if err != nil {
		return fmt.Errorf("turn: closing: %w", err)
	}
	return nil
}

// UDPAddrs and TCPAddrs are the client listeners' addresses, once
// started.
func (s *Server) UDPAddrs() []netip.AddrPort { return append([]netip.AddrPort(nil), s.udpAddrs...) }
func (s *Server) TCPAddrs() []netip.AddrPort { return append([]netip.AddrPort(nil), s.tcpAddrs...) }

// Credentials mints credentials for user valid for ttl (at most, and by
// default, MaxCredentialLifetime), with the URIs of this server. The
// daemon hands them to LAN peers over its control API; the SIP proxy uses
// them to allocate relays on this server (or any superpeer of the site:
// they share the secret) with an ordinary TURN client when it anchors
// media.
func (s *Server) Credentials(user string, ttl time.Duration) (Credentials, error) {
	if ttl <= 0 || ttl > s.cfg.MaxCredentialLifetime {
		ttl = s.cfg.MaxCredentialLifetime
	}
	expires := s.clk.Now().Add(ttl).Truncate(time.Second)
	u, p, err := MintCredentials(s.cfg.Secret(), user, expires)
	if err != nil {
		return Credentials{}, fmt.Errorf("turn: %w", err)
	}
	c := Credentials{Username: u, Password: p, TTL: int64(ttl / time.Second), Expires: expires}
	for _, a := range s.udpAddrs {
		c.URIs = append(c.URIs, "turn:"+uriHost(a)+"?transport=udp")
	}
	for _, a := range s.tcpAddrs {
		c.URIs = append(c.URIs, "turn:"+uriHost(a)+"?transport=tcp")
	}
	return c, nil
}

func uriHost(a netip.AddrPort) string {
	return net.JoinHostPort(a.Addr().String(), strconv.Itoa(int(a.Port())))
}

// addresses returns the listen addresses (Config.Listen, or every
// suitable interface address) and every address of the host.
func (s *Server) addresses() (listen, own []netip.Addr, err error) {
	ifs, err := s.net.Interfaces()
	if err != nil {
		return nil, nil, fmt.Errorf("turn: listing interfaces: %w", err)
	}
	for _, ifc := range ifs {
		as, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range as {
			var ip net.IP
			switch a := a.(type) {
			case *net.IPNet:
				ip = a.IP
			case *net.IPAddr:
				ip = a.IP
			}
			addr, ok := netip.AddrFromSlice(ip)
			if !ok {
				continue
			}
			addr = addr.Unmap()
			own = append(own, addr)
			if ifc.Flags&net.FlagUp != 0 && ifc.Flags&net.FlagLoopback == 0 &&
				!addr.IsLoopback() && !addr.IsLinkLocalUnicast() && !addr.IsMulticast() {
				listen = append(listen, addr)
			}
		}
	}
	if len(s.cfg.Listen) > 0 {
		listen = s.cfg.Listen
	}
	if len(listen) == 0 {
		return nil, nil, errors.New("turn: no address to listen on")
	}
	return listen, own, nil
}

// ownLoop reads the host's addresses again now and then, so that a
// renumbered superpeer still refuses relaying to itself.
func (s *Server) ownLoop() {
	defer s.wg.Done()
	for {
		t := s.clk.NewTimer(ownRefresh)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		if _, own, err := s.addresses(); err == nil {
			s.policy.SetOwn(append(own, s.listenAddrs...))
		}
	}
}

func (s *Server) listenUDP(ctx context.Context, a netip.Addr, port uint16) ([]net.PacketConn, error) {
	network := "udp4"
	if a.Is6() {
		network = "udp6"
	}
	if s.cfg.UDPListeners == 1 {
		c, err := s.net.ListenPacket(network, netip.AddrPortFrom(a, port).String())
		if err != nil {
			return nil, fmt.Errorf("turn: UDP listener on %v: %w", netip.AddrPortFrom(a, port), err)
		}
		return []net.PacketConn{c}, nil
	}
	lc := s.net.CreateListenConfig(&net.ListenConfig{Control: listenerControl(s.cfg.UDPListeners, a.Is6())})
	var cs []net.PacketConn
	for range s.cfg.UDPListeners {
		c, err := lc.ListenPacket(ctx, network, netip.AddrPortFrom(a, port).String())
		if err != nil {
			for _, c := range cs {
				c.Close()
			}
			return nil, fmt.Errorf("turn: UDP listener %d of %d on %v: %w", len(cs)+1, s.cfg.UDPListeners, netip.AddrPortFrom(a, port), err)
		}
		cs = append(cs, c)
		port = addrPortOf(c.LocalAddr()).Port()
	}
	return cs, nil
}

func (s *Server) listenTCP(a netip.Addr, port uint16) (net.Listener, error) {
	network := "tcp4"
	if a.Is6() {
		network = "tcp6"
	}
	ln, err := s.net.ListenTCP(network, net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, port)))
	if err != nil {
		return nil, fmt.Errorf("turn: TCP listener on %v: %w", netip.AddrPortFrom(a, port), err)
	}
	return ln, nil
}

// authenticate is pion's AuthHandler: REST API credentials.
func (s *Server) authenticate(ra *turn.RequestAttributes) (string, []byte, bool) {
	user, key, err := s.verify.key(ra.Username)
	if err != nil {
		switch {
		case errors.Is(err, ErrCredentialExpired):
			s.refuse(ReasonCredentialExpired)
		case errors.Is(err, ErrCredentialLifetime):
			s.refuse(ReasonCredentialLifetime)
		case errors.Is(err, errNoSecret):
			s.refuse(ReasonNoSecret)
		default:
			s.refuse(ReasonCredentialMalformed)
		}
		return "", nil, false
	}
	return user, key, true
}

// quota is pion's QuotaHandler. A granted slot is pending until pion
// reports the allocation (or gives it back on failure), so concurrent
// Allocates on several listeners cannot overshoot.
func (s *Server) quota(user, _ string, _ net.Addr) bool {
	now := s.clk.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for u, ts := range s.pending {
		i := 0
		for i < len(ts) && now.Sub(ts[i]) > pendingTTL {
			i++
		}
		s.pendingN -= i
		if i == len(ts) {
			delete(s.pending, u)
		} else {
			s.pending[u] = ts[i:]
		}
	}
	if q := s.cfg.UserQuota; q > 0 && s.userAllocs[user]+len(s.pending[user]) >= q {
		s.refuse(ReasonUserQuota)
		return false
	}
	if q := s.cfg.TotalQuota; q > 0 && s.totalAllocs+s.pendingN >= q {
		s.refuse(ReasonTotalQuota)
		return false
	}
	s.pending[user] = append(s.pending[user], now)
	s.pendingN++
	return true
}

// releaseQuota gives back a pending slot of user.
func (s *Server) releaseQuota(user string) {
	s.mu.Lock()
	s.popPendingLocked(user)
	s.mu.Unlock()
}

func (s *Server) popPendingLocked(user string) {
	if ts := s.pending[user]; len(ts) > 0 {
		s.pendingN--
		if len(ts) == 1 {
			delete(s.pending, user)
		} else {
			s.pending[user] = ts[1:]
		}
	}
}

// permissionHandler is pion's PermissionHandler for the listener at
// local: the second line behind the guard (which answers 403 itself) for
// CreatePermission, ChannelBind and Connect.
func (s *Server) permissionHandler(local net.Addr) turn.PermissionHandler {
	return func(src net.Addr, peer net.IP) bool {
		ip, ok := netip.AddrFromSlice(peer)
		if !ok {
			s.refuse(ReasonForbiddenPeer)
			return false
		}
		if ref := s.policy.Check(ip); ref != nil && !(ref.Reason == ReasonOwnAddress && s.grantOwnRelay(keyOf(src, local), ip)) {
			s.refuse(ref.Reason)
			return false
		}
		s.mu.Lock()
		a := s.allocs[keyOf(src, local)]
		s.mu.Unlock()
		if a != nil && a.relay != nil && !a.relay.permitted(ip.Unmap()) &&
			a.relay.permissionCount() >= s.cfg.PermissionsPerAllocation {
			s.refuse(ReasonPermissionCap)
			return false
		}
		return true
	}
}

// ownRelay returns this server's live UDP relay at ap (its relayed or its
// local address) when Config.RelayBetweenAllocations lets allocations
// relay to one another, and nil otherwise.
func (s *Server) ownRelay(ap netip.AddrPort) *relay {
	if !s.cfg.RelayBetweenAllocations {
		return nil
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.relays[relayKey{ap: ap}]; r != nil {
		return r
	}
	for k, r := range s.relays {
		if !k.tcp && r.local == ap {
			return r
		}
	}
	return nil
}

// liveRelayIfOwn reports whether a packet may go to ap as far as the
// server's own addresses go: ap is not one of them, or it is a live relay
// of this server.
func (s *Server) liveRelayIfOwn(ap netip.AddrPort) bool {
	return !s.policy.refusesAsOwn(ap.Addr()) || s.ownRelay(ap) != nil
}

// checkPeer is the policy's verdict on a peer of a CreatePermission or
// ChannelBind: one of the server's own addresses passes when it is the
// relay of another allocation and RelayBetweenAllocations is set (the
// ranges still apply).
func (s *Server) checkPeer(peer netip.AddrPort) *Refusal {
	ref := s.policy.Check(peer.Addr())
	if ref == nil || ref.Reason != ReasonOwnAddress || s.ownRelay(peer) == nil {
		return ref
	}
	return s.policy.checkRanges(peer.Addr(), Canonical(peer.Addr()))
}

// grantOwnRelay decides pion's permission for ip, one of the server's own
// addresses, for the allocation key: granted when a peer of the request
// being handled is a relay of this server at ip (checkPeer passed it),
// which the allocation's relay then adds to its own peers.
func (s *Server) grantOwnRelay(key allocKey, ip netip.Addr) bool {
	ip = ip.Unmap()
	s.mu.Lock()
	a := s.allocs[key]
	var requested []netip.AddrPort
	if a != nil && a.relay != nil {
		requested = append(requested, a.requested...)
	}
	s.mu.Unlock()
	granted := false
	for _, p := range requested {
		if p.Addr().Unmap() != ip || s.checkPeer(p) != nil {
			continue
		}
		if peer := s.ownRelay(p); peer != nil && peer != a.relay {
			a.relay.addOwnPeers(peer.external, peer.local)
			granted = true
		}
	}
	return granted
}

// noteRequestedPeers remembers the peers of the request the guard passes
// to pion for key, and returns the allocation's relay (nil if none).
func (s *Server) noteRequestedPeers(key allocKey, peers []netip.AddrPort) *relay {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.allocs[key]
	if a == nil {
		return nil
	}
	if len(peers) > s.cfg.PermissionsPerAllocation {
		peers = peers[:s.cfg.PermissionsPerAllocation]
	}
	a.requested = append(a.requested[:0], peers...)
	return a.relay
}

func (s *Server) events() turn.EventHandler {
	return turn.EventHandler{
		OnAuth: func(_, _ net.Addr, _, _, _, _ string, verdict bool) {
			if !verdict {
				s.refuse(ReasonBadPassword)
			}
		},
		OnAllocationCreated: func(src, dst net.Addr, _, user, _ string, relayAddr net.Addr, _ int) {
			s.onAllocationCreated(keyOf(src, dst), user, relayAddr)
		},
		OnAllocationDeleted: func(src, dst net.Addr, _, user, _ string) {
			s.onAllocationDeleted(keyOf(src, dst), user)
		},
		OnPermissionCreated: func(src, dst net.Addr, _, _, _ string, _ net.Addr, peer net.IP) {
			s.onPermission(keyOf(src, dst), peer, true)
		},
		OnPermissionDeleted: func(src, dst net.Addr, _, _, _ string, _ net.Addr, peer net.IP) {
			s.onPermission(keyOf(src, dst), peer, false)
		},
		OnChannelCreated: func(src, dst net.Addr, _, _, _ string, _, _ net.Addr, _ uint16) {
			s.onChannel(keyOf(src, dst), 1)
		},
		OnChannelDeleted: func(src, dst net.Addr, _, _, _ string, _, _ net.Addr, _ uint16) {
			s.onChannel(keyOf(src, dst), -1)
		},
	}
}

func (s *Server) onAllocationCreated(key allocKey, user string, relayAddr net.Addr) {
	_, tcp := relayAddr.(*net.TCPAddr)
	rk := relayKey{tcp: tcp, ap: addrPortOf(relayAddr)}
	s.mu.Lock()
	r := s.relays[rk]
	s.allocs[key] = &allocation{key: key, user: user, relay: r, created: s.clk.Now()}
	s.popPendingLocked(user)
	s.userAllocs[user]++
	s.totalAllocs++
	s.mu.Unlock()
	if r == nil {
		s.log.Warn("turn: allocation with a relay this server did not make", "client", key.src, "relayed", relayAddr)
		return
	}
	if u := r.udp(); u != nil && r.method == MethodSTUN {
		r.keep(s.cfg.STUNServer, u.refreshMapping)
	}
	s.log.Info("turn: allocation", "user", user, "client", key.src, "transport", transportName(key.tcp),
		"relayed", r.external, "local", r.local, "method", r.method)
}

func (s *Server) onAllocationDeleted(key allocKey, user string) {
	s.mu.Lock()
	a := s.allocs[key]
	if a != nil {
		delete(s.allocs, key)
		if s.userAllocs[user]--; s.userAllocs[user] <= 0 {
			delete(s.userAllocs, user)
		}
		s.totalAllocs--
	}
	s.mu.Unlock()
	if a == nil || a.relay == nil {
		return
	}
	r := a.relay
	s.log.Info("turn: allocation ended", "user", user, "client", key.src, "relayed", r.external,
		"lived", s.clk.Since(a.created).Round(time.Second),
		"to_peer_packets", r.toPeer.packets.Load(), "from_peer_packets", r.fromPeer.packets.Load())
}

func (s *Server) onPermission(key allocKey, peer net.IP, on bool) {
	ip, ok := netip.AddrFromSlice(peer)
	if !ok {
		return
	}
	ip = ip.Unmap()
	s.mu.Lock()
	a := s.allocs[key]
	var port uint16
	if a != nil {
		for _, p := range a.requested {
			if p.Addr().Unmap() == ip {
				port = p.Port()
			}
		}
	}
	s.mu.Unlock()
	if a == nil || a.relay == nil {
		return
	}
	r := a.relay
	r.setPermitted(ip, on)
	if !on {
		r.mu.Lock()
		var drop []netip.AddrPort
		for remote := range r.pinholes {
			if remote.Addr() == ip && remote != s.cfg.STUNServer {
				drop = append(drop, remote)
			}
		}
		r.mu.Unlock()
		for _, d := range drop {
			r.drop(d)
		}
		return
	}
	u := r.udp()
	if u == nil || port == 0 || !r.behindNAT() {
		return
	}
	ap := netip.AddrPortFrom(ip, port)
	if s.cfg.OpenFilters {
		u.openFilter(ap)
	}
	r.keep(ap, u.refreshPeer(ap))
}

func (s *Server) onChannel(key allocKey, delta int) {
	s.mu.Lock()
	if a := s.allocs[key]; a != nil {
		a.channels += delta
	}
	s.mu.Unlock()
}

// registerRelay records a relay handed to pion under its relayed
// address; false if another relay has that address.
func (s *Server) registerRelay(r *relay) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := relayKey{tcp: r.tcp, ap: r.external}
	if s.relays[k] != nil {
		return false
	}
	s.relays[k] = r
	return true
}

func (s *Server) relayByExternal(tcp bool, ap netip.AddrPort) *relay {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.relays[relayKey{tcp: tcp, ap: ap}]
}

// forgetRelay removes a closed relay and keeps its traffic in the totals.
func (s *Server) forgetRelay(r *relay) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := relayKey{tcp: r.tcp, ap: r.external}
	if s.relays[k] == r {
		delete(s.relays, k)
	}
	s.gone[0].packets += r.toPeer.packets.Load()
	s.gone[0].bytes += r.toPeer.bytes.Load()
	s.gone[1].packets += r.fromPeer.packets.Load()
	s.gone[1].bytes += r.fromPeer.bytes.Load()
}

func (s *Server) refuse(reason string) {
	if c := s.refusals[reason]; c != nil {
		c.Inc()
	}
}

func (s *Server) newByteLimiter() byteLimiter {
	rate := float64(s.cfg.BandwidthPerAllocation)
	return byteLimiter{rate: rate, burst: max(rate/4, 16<<10)}
}

// noteMapper and noteSTUN log when the port mapper or the STUN server
// starts or stops failing, once per change.
func (s *Server) noteMapper(err error) {
	s.natMu.Lock()
	was := s.mapperFailing
	s.mapperFailing = err != nil
	s.natMu.Unlock()
	switch {
	case err != nil && !was:
		s.log.Warn("turn: the gateway gives no port mapping for relays; falling back to STUN", "err", err)
	case err == nil && was:
		s.log.Info("turn: the gateway maps relay ports again")
	}
}

func (s *Server) noteSTUN(mapped netip.AddrPort, err error) {
	s.natMu.Lock()
	was := s.stunFailing
	s.stunFailing = err != nil
	if err == nil {
		s.lastExt = mapped.Addr()
	}
	s.natMu.Unlock()
	switch {
	case err != nil && !was:
		s.log.Warn("turn: the STUN server does not answer from relay sockets; relays assume port preservation", "stun", s.cfg.STUNServer, "err", err)
	case err == nil && was:
		s.log.Info("turn: the STUN server answers relay sockets again", "stun", s.cfg.STUNServer)
	}
}

func (s *Server) lastExternal() netip.Addr {
	s.natMu.Lock()
	defer s.natMu.Unlock()
	return s.lastExt
}

func transportName(tcp bool) string {
	if tcp {
		return "tcp"
	}
	return "udp"
}
