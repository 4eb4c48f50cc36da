package sip

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/pion/transport/v5"

	"github.com/superpeer/superpeer/nat/clock"
)

// The desktop agent's outbound proxy: a softphone on a desktop is set up
// with proxy 127.0.0.1, and the agent forwards its SIP to whichever
// superpeer is current, so the phone follows a failover without being
// reconfigured. Each softphone gets its own socket on the desktop's LAN
// address; that socket is the phone's flow as the superpeers see it, and
// because it is on the LAN any superpeer of the site reaches it directly.
// The agent adds its own Via to the phone's requests (RFC 3261 section
// 16.6 step 8; a stateless forwarder, section 16.11) so that responses come
// back to it whatever the phone put in its Via, and takes it off the
// responses; everything else passes unchanged.

// AgentConfig configures the local outbound proxy.
type AgentConfig struct {
	// Listen is where softphones send (UDP). Default 127.0.0.1:5060.
	Listen string `json:"listen"`
	// Local is the desktop's LAN address to send to the superpeers from;
	// the unspecified address lets the system choose.
	Local netip.Addr `json:"local"`
	// Idle forgets a softphone that sent and received nothing for this
	// long (its socket is closed). Default 10 minutes; registrations
	// refresh well within it.
	Idle time.Duration `json:"idle"`
	// Superpeers returns the SIP addresses of every superpeer of the
	// site's committed set (the daemon reads them from the election). A
	// call may reach a softphone through any of them, also one the agent
	// never sent to; requests and responses from others are dropped. Nil:
	// only the current superpeer and those the agent sent to are heard.
	Superpeers func() []netip.AddrPort `json:"-"`
	// TCP also serves softphones over TCP on the same address: each
	// connection is joined to one the agent opens to the current
	// superpeer (the superpeer's flow for the phone); when that superpeer
	// dies the phone sees its connection close and registers again, now
	// through the new one.
	TCP bool `json:"tcp"`
	// Logger receives one line per event an operator cares about.
	Logger *slog.Logger `json:"-"`
}

// DefaultAgentConfig returns the defaults.
func DefaultAgentConfig() AgentConfig {
	return AgentConfig{Listen: "127.0.0.1:5060", Local: netip.IPv4Unspecified(), Idle: 10 * time.Minute, TCP: true}
}

// Validate rejects a configuration that cannot work.
func (c *AgentConfig) Validate() error {
	ap, err := netip.ParseAddrPort(c.Listen)
	if err != nil {
		return fmt.Errorf("agent listen %q: %w", c.Listen, err)
	}
	if !ap.Addr().IsLoopback() {
		return fmt.Errorf("agent listen %v: must be a loopback address (the agent serves this desktop only)", ap)
	}
	if !c.Local.IsValid() {
		return errors.New("agent local address is not set")
	}
	if c.Idle <= 0 {
		return errors.New("agent idle timeout must be positive")
	}
	return nil
}

// Agent is the desktop's local outbound proxy.
type Agent struct {
	cfg     AgentConfig
	net     transport.Net
	clock   clock.Clock
	log     *slog.Logger
	current func() (netip.AddrPort, bool)
	branch  string // our Via branch prefix

	pc net.PacketConn
	tl net.Listener // nil without TCP

	mu       sync.Mutex // guards following
	sessions map[netip.AddrPort]*agentSession
	seen     map[netip.AddrPort]bool // superpeers we have sent to
	conns    []net.Conn              // TCP connections, both sides
	closed   bool

	done chan struct{} // closed by closeSockets
	wg   sync.WaitGroup
}

type agentSession struct {
	phone    netip.AddrPort
	up       net.PacketConn
	upAddr   netip.AddrPort
	lastPeer netip.AddrPort // the superpeer that last sent us a request
	active   time.Time
}

// NewAgent returns an agent that opens its sockets through n and asks
// current for the superpeer to forward to (false: none known now, the
// packet is dropped and the phone retransmits).
func NewAgent(cfg AgentConfig, n transport.Net, c clock.Clock, current func() (netip.AddrPort, bool)) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sip agent: %w", err)
	}
	var b [6]byte
	rand.Read(b[:])
	a := &Agent{
		cfg: cfg, net: n, clock: clock.OrReal(c), log: cfg.Logger, current: current,
		branch:   "z9hG4bK-ag" + hex.EncodeToString(b[:]),
		sessions: map[netip.AddrPort]*agentSession{},
		seen:     map[netip.AddrPort]bool{},
		done:     make(chan struct{}),
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	return a, nil
}

// Start opens the loopback socket and serves until Close or ctx ends.
func (a *Agent) Start(ctx context.Context) error {
	pc, err := a.net.ListenPacket("udp4", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("sip agent: listening on %s: %w", a.cfg.Listen, err)
	}
	a.pc = pc
	if a.cfg.TCP {
		tl, err := a.net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(addrPortOf(pc.LocalAddr())))
		if err != nil {
			pc.Close()
			return fmt.Errorf("sip agent: listening on tcp %s: %w", pc.LocalAddr(), err)
		}
		a.tl = tl
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.serveTCP()
		}()
	}
	a.wg.Add(2)
	go func() {
		defer a.wg.Done()
		a.serveLocal()
	}()
	go func() {
		defer a.wg.Done()
		a.sweep(ctx)
	}()
	a.log.Info("sip agent: local outbound proxy serving", "listen", pc.LocalAddr())
	return nil
}

// Addr returns the loopback address softphones send to.
func (a *Agent) Addr() netip.AddrPort { return addrPortOf(a.pc.LocalAddr()) }

// Close stops the agent, closes every socket and waits for its
// goroutines.
func (a *Agent) Close() error {
	a.closeSockets()
	a.wg.Wait()
	return nil
}

func (a *Agent) closeSockets() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.closed = true
	close(a.done)
	sessions := a.sessions
	a.sessions = map[netip.AddrPort]*agentSession{}
	conns := a.conns
	a.conns = nil
	a.mu.Unlock()
	if a.pc != nil {
		a.pc.Close()
	}
	if a.tl != nil {
		a.tl.Close()
	}
	for _, s := range sessions {
		s.up.Close()
	}
	for _, c := range conns {
		c.Close()
	}
}

// Sessions returns how many softphones the agent serves now.
func (a *Agent) Sessions() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.sessions)
}

func (a *Agent) serveLocal() {
	buf := make([]byte, 65535)
	for {
		n, from, err := a.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		phone := addrPortOf(from)
		s, err := a.session(phone)
		if err != nil {
			a.log.Warn("sip agent: opening an upstream socket", "phone", phone, "err", err)
			continue
		}
		data := buf[:n]
		var dst netip.AddrPort
		if bytes.HasPrefix(data, []byte("SIP/")) {
			// A response to a request a superpeer sent the phone: back
			// to that superpeer.
			a.mu.Lock()
			dst = s.lastPeer
			a.mu.Unlock()
		} else {
			var ok bool
			dst, ok = a.current()
			if !ok {
				continue
			}
			if !isKeepalive(data) {
				data = a.addVia(data, s.upAddr)
			}
		}
		if !dst.IsValid() {
			continue
		}
		a.mu.Lock()
		a.seen[dst] = true
		s.active = a.clock.Now()
		a.mu.Unlock()
		if _, err := s.up.WriteTo(data, net.UDPAddrFromAddrPort(dst)); err != nil {
			a.log.Debug("sip agent: forwarding to the superpeer", "superpeer", dst, "err", err)
		}
	}
}

func isKeepalive(b []byte) bool { return len(bytes.Trim(b, "\r\n")) == 0 || len(b) >= 20 && b[0] < 2 }

// session returns the phone's session, opening its upstream socket.
func (a *Agent) session(phone netip.AddrPort) (*agentSession, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, net.ErrClosed
	}
	if s := a.sessions[phone]; s != nil {
		return s, nil
	}
	up, err := a.net.ListenPacket("udp4", netip.AddrPortFrom(a.cfg.Local, 0).String())
	if err != nil {
		return nil, err
	}
	upAddr := addrPortOf(up.LocalAddr())
	if upAddr.Addr().IsUnspecified() {
		// The Via must name an address the superpeers can answer; the
		// unspecified one cannot. rport and received (RFC 3581) repair
		// it on the superpeer's side.
		upAddr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), upAddr.Port())
	}
	s := &agentSession{phone: phone, up: up, upAddr: upAddr, active: a.clock.Now()}
	a.sessions[phone] = s
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.serveUpstream(s)
	}()
	a.log.Info("sip agent: new softphone", "phone", phone, "upstream", up.LocalAddr())
	return s, nil
}

// serveUpstream relays what the superpeers send to the phone's socket.
func (a *Agent) serveUpstream(s *agentSession) {
	buf := make([]byte, 65535)
	for {
		n, from, err := s.up.ReadFrom(buf)
		if err != nil {
			return
		}
		src := addrPortOf(from)
		if !a.fromSuperpeer(src) {
			continue
		}
		data := buf[:n]
		if bytes.HasPrefix(data, []byte("SIP/")) {
			var ok bool
			if data, ok = a.removeVia(data); !ok {
				continue
			}
		} else if !isKeepalive(data) {
			a.mu.Lock()
			s.lastPeer = src
			a.mu.Unlock()
		}
		a.mu.Lock()
		s.active = a.clock.Now()
		a.mu.Unlock()
		if _, err := a.pc.WriteTo(data, net.UDPAddrFromAddrPort(s.phone)); err != nil {
			a.log.Debug("sip agent: delivering to the phone", "phone", s.phone, "err", err)
		}
	}
}

// fromSuperpeer says whether src is a superpeer of the site: one the
// agent sent to, the current one, or any other of the committed set.
func (a *Agent) fromSuperpeer(src netip.AddrPort) bool {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	a.mu.Lock()
	known := a.seen[src]
	a.mu.Unlock()
	if known {
		return true
	}
	if cur, ok := a.current(); ok && cur == src {
		return true
	}
	if a.cfg.Superpeers != nil {
		for _, sp := range a.cfg.Superpeers() {
			if netip.AddrPortFrom(sp.Addr().Unmap(), sp.Port()) == src {
				return true
			}
		}
	}
	return false
}

// addVia puts our Via on top of a request.
func (a *Agent) addVia(req []byte, up netip.AddrPort) []byte {
	i := bytes.Index(req, []byte("\r\n"))
	if i < 0 {
		return req
	}
	var b [6]byte
	rand.Read(b[:])
	via := "Via: SIP/2.0/UDP " + up.String() + ";branch=" + a.branch + hex.EncodeToString(b[:]) + ";rport\r\n"
	out := make([]byte, 0, len(req)+len(via))
	out = append(out, req[:i+2]...)
	out = append(out, via...)
	return append(out, req[i+2:]...)
}

// removeVia takes our Via off the top of a response; ok is false when the
// top Via is not ours (the response is not for us).
func (a *Agent) removeVia(res []byte) ([]byte, bool) {
	i := bytes.Index(res, []byte("\r\n"))
	if i < 0 {
		return nil, false
	}
	rest := res[i+2:]
	for len(rest) > 0 {
		j := bytes.Index(rest, []byte("\r\n"))
		if j <= 0 {
			return nil, false
		}
		line := rest[:j]
		colon := bytes.IndexByte(line, ':')
		if colon > 0 && headerID(bytes.TrimSpace(line[:colon])) == hVia {
			if !bytes.Contains(line, []byte(a.branch)) {
				return nil, false
			}
			if bytes.IndexByte(line[colon:], ',') >= 0 {
				return nil, false // a combined Via line: not what we wrote
			}
			start := len(res) - len(rest)
			out := make([]byte, 0, len(res))
			out = append(out, res[:start]...)
			return append(out, rest[j+2:]...), true
		}
		rest = rest[j+2:]
	}
	return nil, false
}

// sweep forgets idle softphones.
func (a *Agent) sweep(ctx context.Context) {
	for {
		t := a.clock.NewTimer(a.cfg.Idle / 2)
		select {
		case <-ctx.Done():
			t.Stop()
			a.closeSockets()
			return
		case <-a.done:
			t.Stop()
			return
		case <-t.C():
		}
		now := a.clock.Now()
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			return
		}
		for p, s := range a.sessions {
			if now.Sub(s.active) >= a.cfg.Idle {
				s.up.Close()
				delete(a.sessions, p)
				a.log.Info("sip agent: softphone idle, forgotten", "phone", p)
			}
		}
		a.mu.Unlock()
	}
}

// serveTCP joins each softphone connection to one to the current
// superpeer.
func (a *Agent) serveTCP() {
	for {
		c, err := a.tl.Accept()
		if err != nil {
			return
		}
		dst, ok := a.current()
		if !ok {
			c.Close()
			continue
		}
		up, err := a.dialTCP(dst)
		if err != nil {
			a.log.Info("sip agent: connecting to the superpeer", "superpeer", dst, "err", err)
			c.Close()
			continue
		}
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			c.Close()
			up.Close()
			return
		}
		a.conns = append(a.conns, c, up)
		a.mu.Unlock()
		a.wg.Add(2)
		go a.pipe(c, up)
		go a.pipe(up, c)
	}
}

// tcpDialTimeout bounds connecting to a superpeer on the LAN.
const tcpDialTimeout = 3 * time.Second

func (a *Agent) dialTCP(dst netip.AddrPort) (net.Conn, error) {
	d := a.net.CreateDialer(&net.Dialer{Timeout: tcpDialTimeout})
	return d.Dial("tcp4", dst.String())
}

// pipe copies from src to dst until either ends, then closes both and
// forgets them.
func (a *Agent) pipe(dst, src net.Conn) {
	defer a.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
	a.mu.Lock()
	a.conns = slices.DeleteFunc(a.conns, func(c net.Conn) bool { return c == dst || c == src })
	a.mu.Unlock()
}
