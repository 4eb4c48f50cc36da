// Package stunserver is Superpeer's STUN server for NAT behaviour discovery
// (RFC 5780 over RFC 8489 Binding): two addresses times two ports, Binding
// responses with XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, RESPONSE-ORIGIN and
// OTHER-ADDRESS, and the CHANGE-REQUEST, RESPONSE-PORT and PADDING requests
// that behaviour and binding-lifetime discovery need (nat/probe is its
// client). Bootstrap superpeers and the test lab's WAN run it.
//
// It is built not to be an amplifier: responses are rate limited per source
// IP address (RESPONSE-PORT lets a spoofing client aim at any port of its
// source address), response PADDING is never longer than the request's and
// is capped, PADDING with RESPONSE-PORT is refused (400), and RFC 3489's
// RESPONSE-ADDRESS is not honoured (420). Malformed requests get 400 and
// change nothing; datagrams that are not STUN requests get no answer.
package stunserver

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

	"github.com/pion/transport/v5/stdnet"

	"github.com/superpeer/superpeer/nat/clock"
)

// readBuffer bounds the size of a request. A larger datagram is cut short
// by the socket, fails the length check and is dropped.
const readBuffer = 8192

// maxReadFailures is how many reads in a row may fail before a socket is
// given up on.
const maxReadFailures = 100

// Server is a running RFC 5780 STUN server. New opens its sockets, Run
// serves them, Close stops it.
type Server struct {
	h     *handler
	clk   clock.Clock
	log   *slog.Logger
	socks [2][2]net.PacketConn // [ip][port]; nil where absent

	quitting atomic.Bool // set before the sockets are closed

	mu      sync.Mutex // guards following
	running bool
	closed  bool

	stop chan struct{} // closed by Close
	done chan struct{} // closed when Run has returned
}

// New validates cfg and opens the server's sockets (four with an Alternate
// address, one without), so that a port conflict shows at once.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := cfg.Net
	if n == nil {
		var err error
		if n, err = stdnet.NewNet(); err != nil {
			return nil, fmt.Errorf("stunserver: opening the host network: %w", err)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		clk:  clock.OrReal(cfg.Clock),
		log:  log,
		stop: make(chan struct{}),
		done: make(chan struct{}),
		h: &handler{
			alt:        cfg.Alternate.IsValid(),
			maxPadding: cfg.MaxPadding,
			software:   cfg.Software,
			lim:        newLimiter(cfg.RatePerSource, cfg.Burst, cfg.MaxSources),
		},
	}
	network := "udp4"
	if !cfg.Primary.Unmap().Is4() {
		network = "udp6"
	}
	ips := []netip.Addr{cfg.Primary.Unmap()}
	if s.h.alt {
		ips = append(ips, cfg.Alternate.Unmap())
	}
	ports := [2]uint16{cfg.Port, cfg.AltPort}
	for i, ip := range ips {
		for j := range ports {
			if !s.h.alt && j == 1 {
				continue
			}
			// Port 0 picks a free port on the first address; the second
			// address must then listen on the same one.
			addr := netip.AddrPortFrom(ip, ports[j])
			c, err := n.ListenPacket(network, addr.String())
			if err != nil {
				s.closeSockets()
				return nil, fmt.Errorf("stunserver: listening on %v: %w", addr, err)
			}
			s.socks[i][j] = c
			bound, err := netip.ParseAddrPort(c.LocalAddr().String())
			if err != nil {
				s.closeSockets()
				return nil, fmt.Errorf("stunserver: reading the address of %v: %w", addr, err)
			}
			ports[j] = bound.Port()
			s.h.addrs[i][j] = netip.AddrPortFrom(ip, bound.Port())
		}
	}
	if s.h.alt && ports[0] == ports[1] {
		s.closeSockets()
		return nil, fmt.Errorf("stunserver: both ports came out as %d", ports[0])
	}
	return s, nil
}

// Addr is where clients send their first request (Primary:Port).
func (s *Server) Addr() netip.AddrPort { return s.h.addrs[0][0] }

// OtherAddr is the alternate address and port that OTHER-ADDRESS names, or
// the zero value without an Alternate address.
func (s *Server) OtherAddr() netip.AddrPort { return s.h.addrs[1][1] }

// Addrs lists every address the server listens on.
func (s *Server) Addrs() []netip.AddrPort {
	var out []netip.AddrPort
	for i := range 2 {
		for j := range 2 {
			if s.socks[i][j] != nil {
				out = append(out, s.h.addrs[i][j])
			}
		}
	}
	return out
}

// Stats returns the counters since New.
func (s *Server) Stats() Stats { return s.h.stats() }

// ErrClosed is returned by Run on a server that was closed before it ran,
// and by a second Run.
var ErrClosed = errors.New("stunserver: server closed")

// Run serves until ctx ends or Close is called, then closes the sockets
// and returns nil once every reader has stopped.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.closed || s.running {
		s.mu.Unlock()
		return ErrClosed
	}
	s.running = true
	s.mu.Unlock()
	defer close(s.done)

	s.log.Info("stun server listening", "addrs", s.Addrs(), "rfc5780", s.h.alt)
	var wg sync.WaitGroup
	for i := range 2 {
		for j := range 2 {
			if c := s.socks[i][j]; c != nil {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s.serve(sockID{i, j}, c)
				}()
			}
		}
	}
	select {
	case <-ctx.Done():
	case <-s.stop:
	}
	s.closeSockets()
	wg.Wait()
	st := s.Stats()
	s.log.Info("stun server stopped", "addr", s.Addr(), "requests", st.Requests, "answered", st.Answered,
		"bad_requests", st.BadRequests, "unknown_attributes", st.UnknownAttributes, "rate_limited", st.RateLimited)
	return nil
}

// Close stops the server and waits for Run to return. It is safe to call
// more than once, and before or without Run.
func (s *Server) Close() error {
	s.mu.Lock()
	wasClosed, running := s.closed, s.running
	s.closed = true
	s.mu.Unlock()
	if wasClosed {
		if running {
			<-s.done
		}
		return nil
	}
	close(s.stop)
	if running {
		<-s.done
		return nil
	}
	s.closeSockets()
	return nil
}

func (s *Server) closeSockets() {
	s.quitting.Store(true)
	for i := range 2 {
		for j := range 2 {
			if c := s.socks[i][j]; c != nil {
				c.Close()
			}
		}
	}
}

// serve reads requests from one socket until it is closed.
func (s *Server) serve(id sockID, c net.PacketConn) {
	buf := make([]byte, readBuffer)
	failures := 0
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if s.quitting.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient error (an ICMP error reported on the socket)
			// does not stop the server; a socket that only fails does.
			if failures++; failures > maxReadFailures {
				s.log.Error("stun server socket failing, no longer served", "addr", s.h.addrs[id.ip][id.port], "err", err)
				return
			}
			continue
		}
		failures = 0
		src, ok := addrPortOf(from)
		if !ok {
			continue
		}
		r := s.h.handle(buf[:n], src, id, s.clk.Now())
		if r.verdict != answered && r.verdict != refused {
			continue
		}
		out := s.socks[r.via.ip][r.via.port]
		if out == nil {
			continue
		}
		// A failed send (the client's network is gone) is the client's
		// loss; nothing to do about it here.
		out.WriteTo(r.raw, net.UDPAddrFromAddrPort(r.to))
	}
}

func addrPortOf(a net.Addr) (netip.AddrPort, bool) {
	switch v := a.(type) {
	case *net.UDPAddr:
		ap := v.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.IsValid()
	default:
		host, port, err := net.SplitHostPort(a.String())
		if err != nil {
			return netip.AddrPort{}, false
		}
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return netip.AddrPort{}, false
		}
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return netip.AddrPort{}, false
		}
		return netip.AddrPortFrom(ip.Unmap(), uint16(p)), true
	}
}
