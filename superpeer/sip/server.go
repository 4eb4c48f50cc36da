package sip

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/pion/transport/v5"

	"github.com/superpeer/superpeer/nat/clock"
)

// Deps are the services the server uses that other packages provide.
type Deps struct {
	// Bindings is the registration store; nil means a private MemBindings
	// (a superpeer alone on its site).
	Bindings Bindings
	// Locator and Carrier are the overlay; nil means the site is alone
	// (requests for other domains get 404).
	Locator Locator
	Carrier Carrier
	// Media anchors media for endpoints without ICE; nil leaves SDP alone.
	Media MediaRelay
	// Siblings returns the SIP addresses (LAN address and port) of the
	// site's other superpeers, from the elected set. A Route naming one of
	// them is taken as this superpeer's own, so that in-dialog requests of
	// calls set up through a superpeer that has since died go on through
	// this one. Nil: none.
	Siblings func() []netip.AddrPort
}

// Server is the registrar and proxy of one superpeer.
type Server struct {
	cfg      Config
	net      transport.Net
	clock    clock.Clock
	log      *slog.Logger
	bindings Bindings
	locator  Locator
	carrier  Carrier
	media    MediaRelay
	siblings func() []netip.AddrPort
	flowKey  []byte
	flood    *floodGuard
	stats    counters
	pstats   proxyCounters
	tx       *txMetrics

	ua  *sipgo.UserAgent
	srv *sipgo.Server
	tp  *sip.TransportLayer
	txl *sip.TransactionLayer

	// Set by Start, read-only after.
	advertise netip.Addr
	socks     map[string]*socket // by network: udp, tcp, tls
	overlay   *carrierConn       // nil without a Carrier
	closers   []io.Closer

	publisher *publisher
	calls     *callTable

	seenMu sync.Mutex // guards following
	seen   map[string]struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
}

// socket is one listener.
type socket struct {
	network string         // udp, tcp, tls
	bound   netip.AddrPort // the address as bound (the sipgo pool key for UDP)
	port    int
}

// New checks cfg and builds a server that opens its sockets through n and
// tells time with c (nil for the wall clock). Start opens the sockets.
func New(cfg Config, n transport.Net, c clock.Clock, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sip: invalid configuration: %w", err)
	}
	if n == nil {
		return nil, errors.New("sip: no network")
	}
	if (deps.Locator == nil) != (deps.Carrier == nil) {
		return nil, errors.New("sip: Locator and Carrier go together")
	}
	s := &Server{
		cfg:      cfg,
		net:      n,
		clock:    clock.OrReal(c),
		log:      cfg.Logger,
		bindings: deps.Bindings,
		locator:  deps.Locator,
		carrier:  deps.Carrier,
		media:    deps.Media,
		siblings: deps.Siblings,
		flowKey:  cfg.FlowKey,
		socks:    map[string]*socket{},
		tx:       newTxMetrics(),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.bindings == nil {
		s.bindings = NewMemBindings(s.clock)
	}
	if len(s.flowKey) == 0 {
		s.flowKey = make([]byte, 32)
		rand.Read(s.flowKey)
	}
	if cfg.Flood.Requests > 0 {
		s.flood = newFloodGuard(cfg.Flood, s.clock)
	}
	s.calls = newCallTable()
	return s, nil
}

// quietLogger receives sipgo's own logs: it reports per-message events
// (parse failures, stray responses) at levels an operator does not want,
// and everything it would say that matters is logged here instead.
func quietLogger(l *slog.Logger) *slog.Logger {
	return slog.New(levelFilter{l.Handler(), slog.LevelError + 4})
}

type levelFilter struct {
	slog.Handler
	min slog.Level
}

func (f levelFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= f.min && f.Handler.Enabled(ctx, l)
}
func (f levelFilter) WithAttrs(a []slog.Attr) slog.Handler {
	return levelFilter{f.Handler.WithAttrs(a), f.min}
}
func (f levelFilter) WithGroup(n string) slog.Handler {
	return levelFilter{f.Handler.WithGroup(n), f.min}
}

var errNoDial = errors.New("sip: the proxy never dials: streams exist only as registered flows")

func init() {
	// sipgo refuses to send UDP messages above 1300 bytes (RFC 3261
	// section 18.1.1 would switch to TCP). A phone registered over UDP has
	// no TCP flow, and an INVITE that crossed two sites carries two Via and
	// four Record-Route entries more than it started with: LANs fragment
	// and reassemble such datagrams fine, and overlay links carry whole
	// messages.
	if sip.UDPMTUSize < 9000 {
		sip.UDPMTUSize = 9000
	}
}

// Start opens the listeners and starts serving. The server runs until
// Close or until ctx ends.
func (s *Server) Start(ctx context.Context) error {
	s.ctx, s.cancel = context.WithCancel(ctx)
	quiet := quietLogger(s.log)
	// sipgo logs connection reference counting through its package
	// logger, per message; the daemon runs one SIP stack, so quieten it.
	sip.SetDefaultLogger(quiet)
	parser := sip.NewParser()
	parser.MaxMessageLength = s.cfg.MaxMessageSize
	noDial := func(net.Addr) net.Dialer {
		return net.Dialer{Control: func(string, string, syscall.RawConn) error { return errNoDial }}
	}
	var err error
	s.ua, err = sipgo.NewUA(
		sipgo.WithUserAgent(s.cfg.UserAgent),
		sipgo.WithUserAgentHostname(s.cfg.Domains[0]),
		sipgo.WithUserAgentParser(parser),
		sipgo.WithUserAgenTLSConfig(s.cfg.TLS),
		sipgo.WithUserAgentTransportLayerOptions(
			sip.WithTransportLayerLogger(quiet),
			sip.WithTransportLayerTransports(sip.TransportsConfig{
				TCP: &sip.TransportTCP{DialerCreate: noDial},
				TLS: &sip.TransportTLS{TransportTCP: &sip.TransportTCP{DialerCreate: noDial}},
			}),
		),
		sipgo.WithUserAgentTransactionLayerOptions(
			sip.WithTransactionLayerLogger(quiet),
			sip.WithTransactionLayerUnhandledResponseHandler(s.handleStrayResponse),
		),
	)
	if err != nil {
		return fmt.Errorf("sip: making the user agent: %w", err)
	}
	s.srv, err = sipgo.NewServer(s.ua, sipgo.WithServerLogger(quiet))
	if err != nil {
		return fmt.Errorf("sip: making the server: %w", err)
	}
	s.tp = s.ua.TransportLayer()
	s.txl = s.ua.TransactionLayer()
	s.srv.OnNoRoute(s.handleRequest)
	for _, m := range []sip.RequestMethod{sip.INVITE, sip.ACK, sip.BYE, sip.CANCEL, sip.OPTIONS, sip.REGISTER,
		sip.MESSAGE, sip.SUBSCRIBE, sip.NOTIFY, sip.PRACK, sip.UPDATE, sip.REFER, sip.INFO, sip.PUBLISH} {
		s.srv.OnRequest(m, s.handleRequest)
	}

	if err := s.openListeners(); err != nil {
		s.Close()
		return err
	}
	if s.carrier != nil {
		s.overlay = newCarrierConn(s.carrier, s.cfg.NodeID)
		s.serveUDP(&guardedPacketConn{PacketConn: s.overlay, g: s.guard(nil)})
		s.closers = append(s.closers, s.overlay)
		s.publisher = newPublisher(s)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.publisher.run(s.ctx)
		}()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		<-s.ctx.Done()
		s.shutdown()
	}()
	var addrs []string
	for _, l := range s.Listeners() {
		addrs = append(addrs, l.Network+" "+l.Addr)
	}
	s.log.Info("sip: registrar and proxy serving", "listen", addrs, "domains", s.cfg.Domains, "node", s.cfg.NodeID)
	return nil
}

func (s *Server) guard(f *floodGuard) *guard {
	return &guard{flood: f, log: s.log, maxSize: s.cfg.MaxMessageSize, stats: &s.stats, tx: s.tx}
}

func (s *Server) openListeners() error {
	for _, l := range s.cfg.Listen {
		ap := netip.MustParseAddrPort(l.Addr)
		if s.socks[l.Network] != nil {
			return fmt.Errorf("sip: listener %s %s: only one listener per network", l.Network, l.Addr)
		}
		switch l.Network {
		case "udp":
			pc, err := s.net.ListenPacket("udp", l.Addr)
			if err != nil {
				return fmt.Errorf("sip: listening on udp %s: %w", l.Addr, err)
			}
			s.closers = append(s.closers, pc)
			bound := addrPortOf(pc.LocalAddr())
			s.socks["udp"] = &socket{network: "udp", bound: bound, port: int(bound.Port())}
			s.serveUDP(&guardedPacketConn{PacketConn: pc, g: s.guard(s.flood)})
		case "tcp", "tls":
			tl, err := s.listenStream(ap)
			if err != nil {
				return fmt.Errorf("sip: listening on %s %s: %w", l.Network, l.Addr, err)
			}
			s.closers = append(s.closers, tl)
			bound := addrPortOf(tl.Addr())
			s.socks[l.Network] = &socket{network: l.Network, bound: bound, port: int(bound.Port())}
			gl := &guardedListener{Listener: tl, g: s.guard(s.flood), idle: s.cfg.TCPIdleTimeout}
			if l.Network == "tls" {
				cfg := s.cfg.TLS
				gl.wrap = func(c net.Conn) net.Conn { return tls.Server(c, cfg) }
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				var err error
				if l.Network == "tls" {
					err = s.srv.ServeTLS(gl)
				} else {
					err = s.srv.ServeTCP(gl)
				}
				if err != nil && s.ctx.Err() == nil {
					s.log.Error("sip: stream listener stopped", "network", l.Network, "addr", bound, "err", err)
				}
			}()
		}
		if !s.advertise.IsValid() {
			s.advertise = ap.Addr()
		}
	}
	if s.cfg.Advertise.IsValid() {
		s.advertise = s.cfg.Advertise
	}
	return nil
}

// listenStream opens a TCP listener at ap. Port 0 takes the UDP
// listener's port when it is free, so that one address serves both
// transports: the site advertises a superpeer's SIP service as one
// host:port, and a desktop agent dials TCP where it sends UDP.
func (s *Server) listenStream(ap netip.AddrPort) (transport.TCPListener, error) {
	if u := s.socks["udp"]; u != nil && ap.Port() == 0 && sameHost(u.bound.Addr(), ap.Addr()) {
		if tl, err := s.net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(ap.Addr(), u.bound.Port()))); err == nil {
			return tl, nil
		}
	}
	return s.net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
}

// sameHost: a and b are one address (an unspecified one bound dual-stack
// is the IPv6 one).
func sameHost(a, b netip.Addr) bool {
	return a.Unmap() == b.Unmap() || a.IsUnspecified() && b.IsUnspecified()
}

func (s *Server) serveUDP(pc net.PacketConn) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.ServeUDP(pc); err != nil && s.ctx.Err() == nil {
			s.log.Error("sip: udp listener stopped", "addr", pc.LocalAddr(), "err", err)
		}
	}()
}

// Listeners returns the bound listeners (with the ports chosen when the
// configuration said port 0).
func (s *Server) Listeners() []Listener {
	var out []Listener
	for _, n := range []string{"udp", "tcp", "tls"} {
		if sk := s.socks[n]; sk != nil {
			out = append(out, Listener{Network: n, Addr: netip.AddrPortFrom(s.advertise, sk.bound.Port()).String()})
		}
	}
	return out
}

// Close stops serving and waits for the server's goroutines.
func (s *Server) Close() error {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	return nil
}

func (s *Server) shutdown() {
	if !s.closed.CompareAndSwap(false, true) {
		return
	}
	for _, c := range s.closers {
		c.Close()
	}
	if s.ua != nil {
		s.ua.Close()
	}
	s.calls.releaseAll()
	s.tx.close()
	s.log.Info("sip: registrar and proxy stopped", "node", s.cfg.NodeID)
}

// Status is a snapshot for the control API.
type Status struct {
	NodeID    string      `json:"node_id"`
	Domains   []string    `json:"domains"`
	Listeners []Listener  `json:"listeners"`
	Received  uint64      `json:"received"`
	Refused   uint64      `json:"refused"`
	Dropped   uint64      `json:"dropped"`
	Flooded   uint64      `json:"flooded"`
	STUN      uint64      `json:"stun_keepalives"`
	CRLF      uint64      `json:"crlf_keepalives"`
	Proxy     ProxyStatus `json:"proxy"`
	Flood     FloodStatus `json:"flood"`
	// ActiveCalls is the number of calls whose media is anchored here.
	ActiveCalls int `json:"active_calls"`
}

// ProxyStatus counts what the proxy did.
type ProxyStatus struct {
	Registers     uint64 `json:"registers"`
	Forwarded     uint64 `json:"forwarded"`
	ToOverlay     uint64 `json:"to_overlay"`
	FromOverlay   uint64 `json:"from_overlay"`
	NotFound      uint64 `json:"not_found"`
	Unavailable   uint64 `json:"unavailable"`
	Timeouts      uint64 `json:"timeouts"`
	LoopsDetected uint64 `json:"loops_detected"`
}

type proxyCounters struct {
	registers, forwarded, toOverlay, fromOverlay, notFound, unavailable, timeouts, loops atomic.Uint64
}

// Status returns counters and the current state.
func (s *Server) Status() Status {
	return Status{
		NodeID:    s.cfg.NodeID,
		Domains:   s.cfg.Domains,
		Listeners: s.Listeners(),
		Received:  s.stats.received.Load(),
		Refused:   s.stats.refused.Load(),
		Dropped:   s.stats.dropped.Load(),
		Flooded:   s.stats.flooded.Load(),
		STUN:      s.stats.stun.Load(),
		CRLF:      s.stats.keepalives.Load(),
		Proxy: ProxyStatus{
			Registers:     s.pstats.registers.Load(),
			Forwarded:     s.pstats.forwarded.Load(),
			ToOverlay:     s.pstats.toOverlay.Load(),
			FromOverlay:   s.pstats.fromOverlay.Load(),
			NotFound:      s.pstats.notFound.Load(),
			Unavailable:   s.pstats.unavailable.Load(),
			Timeouts:      s.pstats.timeouts.Load(),
			LoopsDetected: s.pstats.loops.Load(),
		},
		Flood:       s.flood.status(),
		ActiveCalls: s.calls.len(),
	}
}
