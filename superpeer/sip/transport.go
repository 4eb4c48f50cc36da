package sip

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v4"
)

// The sockets handed to sipgo are wrapped here, so that everything that
// must happen before a message is parsed happens once, in one place: the
// flood guard drops a banned source's packets unread, STUN keepalives on
// UDP flows and CRLF keepalives on streams are answered (RFC 5626 sections
// 4.4.1 and 3.5.1), messages that must be refused get their response
// (validate.go), streams are framed with a bounded buffer, and only whole,
// valid messages reach the parser.

// guard is what the wrappers share.
type guard struct {
	flood   *floodGuard // nil: no limit (the overlay carrier)
	log     *slog.Logger
	maxSize int
	stats   *counters
	tx      *txMetrics
}

// counters are the server's event counts, read by Status.
type counters struct {
	received   atomic.Uint64 // messages passed to the parser
	refused    atomic.Uint64 // requests answered by validation
	dropped    atomic.Uint64 // responses and garbage dropped by validation
	flooded    atomic.Uint64 // requests dropped by the flood guard
	stun       atomic.Uint64 // STUN keepalives answered
	keepalives atomic.Uint64 // CRLF keepalives answered
}

// guardedPacketConn is a UDP socket as sipgo sees it.
type guardedPacketConn struct {
	net.PacketConn
	g *guard
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort()
	case *net.TCPAddr:
		return a.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// ReadFrom returns the next datagram that is a valid SIP message, having
// dealt with everything else.
func (c *guardedPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(p)
		if err != nil {
			return n, addr, err
		}
		data := p[:n]
		if stun.IsMessage(data) {
			c.answerSTUN(data, addr)
			continue
		}
		if len(bytes.Trim(data, "\r\n\x00")) == 0 {
			continue // CRLF keepalive: nothing to answer on UDP
		}
		isRequest := !bytes.HasPrefix(data, []byte("SIP/"))
		if isRequest && c.g.flood != nil {
			if ok, newBan := c.g.flood.allow(addrPortOf(addr).Addr()); !ok {
				c.g.stats.flooded.Add(1)
				if newBan {
					c.g.log.Warn("sip: source banned for flooding", "source", addrPortOf(addr).Addr(), "transport", "udp")
				}
				continue
			}
		}
		v := checkMessage(data, true)
		if v.code != 0 || v.kind == kindGarbage {
			c.refuse(v, addr)
			continue
		}
		c.g.stats.received.Add(1)
		return v.size, addr, nil
	}
}

func (c *guardedPacketConn) refuse(v verdict, addr net.Addr) {
	if v.kind != kindRequest || v.method == "ACK" || len(v.copy) == 0 || !hasVia(v.copy) {
		c.g.stats.dropped.Add(1)
		return
	}
	c.g.stats.refused.Add(1)
	c.g.tx.count(v.method, v.code)
	if _, err := c.PacketConn.WriteTo(refusalResponse(v, ""), addr); err != nil {
		c.g.log.Debug("sip: answering a refused request", "to", addr, "err", err)
	}
}

func hasVia(lines [][]byte) bool {
	for _, l := range lines {
		colon := bytes.IndexByte(l, ':')
		if colon > 0 && headerID(bytes.TrimRight(l[:colon], " \t")) == hVia {
			return true
		}
	}
	return false
}

// answerSTUN answers a STUN Binding request with the sender's address
// (RFC 5389 section 7.3; the keepalive of RFC 5626 section 4.4.2).
func (c *guardedPacketConn) answerSTUN(data []byte, addr net.Addr) {
	m := &stun.Message{Raw: append([]byte(nil), data...)}
	if err := m.Decode(); err != nil || m.Type != stun.BindingRequest {
		return
	}
	ap := addrPortOf(addr)
	res, err := stun.Build(stun.NewTransactionIDSetter(m.TransactionID), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: ap.Addr().Unmap().AsSlice(), Port: int(ap.Port())}, stun.Fingerprint)
	if err != nil {
		return
	}
	if _, err := c.PacketConn.WriteTo(res.Raw, addr); err == nil {
		c.g.stats.stun.Add(1)
	}
}

// guardedListener accepts stream connections for sipgo, refusing banned
// sources and wrapping each connection in a framing, validating reader.
type guardedListener struct {
	net.Listener
	g    *guard
	idle time.Duration
	wrap func(net.Conn) net.Conn // TLS server side, or nil
}

func (l *guardedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.g.flood.isBanned(addrPortOf(c.RemoteAddr()).Addr()) {
			l.g.stats.flooded.Add(1)
			c.Close()
			continue
		}
		if l.wrap != nil {
			c = l.wrap(c)
		}
		return &streamConn{Conn: c, g: l.g, idle: l.idle, in: make([]byte, 0, 4096)}, nil
	}
}

// streamConn frames SIP messages on a stream (RFC 3261 section 18.3) and
// hands sipgo only whole, valid ones. Its buffer never holds more than one
// message of the maximum size.
type streamConn struct {
	net.Conn
	g    *guard
	idle time.Duration

	mu  sync.Mutex // guards following (sipgo reads from one goroutine; Close may race)
	in  []byte     // bytes read, not yet framed
	out []byte     // framed, valid messages not yet returned
	err error      // sticky: the stream is over
}

var errStreamClosed = errors.New("sip: stream closed after an unframeable message")

func (c *streamConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.out) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		if err := c.frameLocked(); err != nil {
			c.err = err
			continue
		}
		if len(c.out) > 0 {
			break
		}
		if len(c.in) >= c.g.maxSize {
			c.g.log.Info("sip: closing a stream whose message exceeds the size limit", "remote", c.RemoteAddr(), "limit", c.g.maxSize)
			c.err = io.EOF
			c.Conn.Close()
			continue
		}
		if c.idle > 0 {
			c.Conn.SetReadDeadline(time.Now().Add(c.idle))
		}
		if cap(c.in)-len(c.in) < 2048 {
			grown := make([]byte, len(c.in), min(2*cap(c.in)+4096, c.g.maxSize+4096))
			copy(grown, c.in)
			c.in = grown
		}
		n, err := c.Conn.Read(c.in[len(c.in):cap(c.in)])
		c.in = c.in[:len(c.in)+n]
		if err != nil && n == 0 {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.Conn.Close()
				err = io.EOF // idle: sipgo treats EOF as a normal close
			}
			c.err = err
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	if len(c.out) == 0 {
		c.out = nil
	}
	return n, nil
}

// frameLocked moves every whole message at the front of in to out,
// answering keepalives and refusals on the way.
func (c *streamConn) frameLocked() error {
	for len(c.in) > 0 {
		// Keepalives between messages (RFC 5626 section 3.5.1): a
		// double CRLF ping gets a single CRLF pong; a lone CRLF is a pong.
		if bytes.HasPrefix(c.in, []byte("\r\n\r\n")) {
			c.g.stats.keepalives.Add(1)
			if _, err := c.Conn.Write([]byte("\r\n")); err != nil {
				return fmt.Errorf("answering a keepalive: %w", err)
			}
			c.consume(4)
			continue
		}
		if bytes.HasPrefix(c.in, []byte("\r\n")) {
			if len(c.in) < 4 && bytes.Equal(c.in, []byte("\r\n\r")[:len(c.in)]) {
				return nil // maybe the start of a ping
			}
			c.consume(2)
			continue
		}
		v := frameStream(c.in)
		if v.size == 0 && v.code == 0 {
			return nil // need more bytes
		}
		if v.kind == kindRequest && c.g.flood != nil {
			if ok, newBan := c.g.flood.allow(addrPortOf(c.RemoteAddr()).Addr()); !ok {
				c.g.stats.flooded.Add(1)
				if newBan {
					c.g.log.Warn("sip: source banned for flooding", "source", addrPortOf(c.RemoteAddr()).Addr(), "transport", "tcp")
				}
				c.Conn.Close()
				return io.EOF
			}
		}
		if v.code != 0 || v.kind == kindGarbage {
			if v.kind == kindRequest && v.method != "ACK" && hasVia(v.copy) {
				c.g.stats.refused.Add(1)
				c.g.tx.count(v.method, v.code)
				if _, err := c.Conn.Write(refusalResponse(v, "")); err != nil {
					return fmt.Errorf("answering a refused request: %w", err)
				}
			} else {
				c.g.stats.dropped.Add(1)
			}
			if v.size == 0 {
				// No boundary to resynchronise on.
				c.Conn.Close()
				return errStreamClosed
			}
			c.consume(v.size)
			continue
		}
		c.g.stats.received.Add(1)
		c.out = append(c.out, c.in[:v.size]...)
		c.consume(v.size)
	}
	return nil
}

func (c *streamConn) consume(n int) {
	rest := copy(c.in, c.in[n:])
	c.in = c.in[:rest]
}
