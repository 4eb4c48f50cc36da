package election

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/pion/transport/v5"
)

// Every group connection is TCP, then mutual TLS keyed by the site secret,
// then one byte that says what the connection carries.
const (
	kindRaft byte = 'R' // hashicorp/raft's NetworkTransport
	kindRPC  byte = 'C' // the group's own requests (join, apply, read index, refresh)
)

// groupListener is the group's one TCP listener: it completes the TLS
// handshake of every accepted connection and sorts the connections by
// kind. Raft reads its connections through raftStream.
type groupListener struct {
	net       transport.Net
	tls       *tls.Config
	ln        net.Listener
	advertise net.Addr
	timeout   time.Duration
	log       *slog.Logger
	serveRPC  func(net.Conn)

	raftCh    chan net.Conn
	closed    chan struct{}
	connMu    sync.Mutex // guards conns
	conns     map[net.Conn]struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
	refused   atomic.Int64 // connections that failed the handshake
}

// listenGroup opens the listener on bind through n. advertise, if empty,
// is derived from the listener and n's interfaces.
func listenGroup(n transport.Net, cfg *tls.Config, bind, advertise string, timeout time.Duration, log *slog.Logger) (*groupListener, error) {
	laddr, err := n.ResolveTCPAddr("tcp4", bind)
	if err != nil {
		return nil, fmt.Errorf("resolving group address %s: %w", bind, err)
	}
	ln, err := n.ListenTCP("tcp4", laddr)
	if err != nil {
		return nil, fmt.Errorf("listening for the group on %s: %w", bind, err)
	}
	adv, err := advertiseAddr(n, ln.Addr().(*net.TCPAddr), advertise)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return &groupListener{
		net: n, tls: cfg, ln: ln, advertise: adv, timeout: timeout, log: log,
		raftCh: make(chan net.Conn), closed: make(chan struct{}),
		conns: map[net.Conn]struct{}{},
	}, nil
}

func advertiseAddr(n transport.Net, bound *net.TCPAddr, advertise string) (net.Addr, error) {
	if advertise != "" {
		a, err := net.ResolveTCPAddr("tcp4", advertise)
		if err != nil {
			return nil, fmt.Errorf("resolving advertised group address %s: %w", advertise, err)
		}
		return a, nil
	}
	if !bound.IP.IsUnspecified() {
		return bound, nil
	}
	ifaces, err := n.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("listing interfaces to advertise the group address: %w", err)
	}
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLinkLocalUnicast() {
				return &net.TCPAddr{IP: ipn.IP.To4(), Port: bound.Port}, nil
			}
		}
	}
	return nil, fmt.Errorf("no up, non-loopback IPv4 address to advertise the group on; set AdvertiseAddr")
}

// serve accepts until close. rpc handles connections of kindRPC.
func (g *groupListener) serve(rpc func(net.Conn)) {
	g.serveRPC = rpc
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			c, err := g.ln.Accept()
			if err != nil {
				select {
				case <-g.closed:
					return
				default:
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				g.log.Warn("group listener stopped", "addr", g.advertise, "err", err)
				return
			}
			g.connMu.Lock()
			select {
			case <-g.closed:
				g.connMu.Unlock()
				c.Close()
				return
			default:
			}
			g.conns[c] = struct{}{}
			g.connMu.Unlock()
			g.wg.Add(1)
			go func() {
				defer g.wg.Done()
				if !g.sort(c) {
					g.connMu.Lock()
					delete(g.conns, c)
					g.connMu.Unlock()
				}
			}()
		}
	}()
}

// sort completes the handshake and hands the connection to its reader.
// It reports whether the connection lives on (handed to Raft).
func (g *groupListener) sort(c net.Conn) bool {
	tc := tls.Server(c, g.tls)
	_ = tc.SetDeadline(time.Now().Add(g.timeout))
	var kind [1]byte
	if err := tc.Handshake(); err != nil {
		g.refused.Add(1)
		g.log.Info("refused a group connection without the site's certificate", "remote", c.RemoteAddr(), "err", err)
		c.Close()
		return false
	}
	if _, err := io.ReadFull(tc, kind[:]); err != nil {
		c.Close()
		return false
	}
	_ = tc.SetDeadline(time.Time{})
	switch kind[0] {
	case kindRaft:
		select {
		case g.raftCh <- tc:
			return true
		case <-g.closed:
		}
	case kindRPC:
		if g.serveRPC != nil {
			g.serveRPC(tc)
		}
	}
	tc.Close()
	return false
}

// dial opens a group connection of kind to addr.
func (g *groupListener) dial(ctx context.Context, addr string, kind byte) (net.Conn, error) {
	timeout := g.timeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("dialing group peer %s: %w", addr, context.DeadlineExceeded)
	}
	c, err := g.net.CreateDialer(&net.Dialer{Timeout: timeout}).Dial("tcp4", addr)
	if err != nil {
		return nil, fmt.Errorf("dialing group peer %s: %w", addr, err)
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tc := tls.Client(c, g.tls)
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("TLS handshake with group peer %s: %w", addr, err)
	}
	_ = tc.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := tc.Write([]byte{kind}); err != nil {
		tc.Close()
		return nil, fmt.Errorf("opening a group connection to %s: %w", addr, err)
	}
	_ = tc.SetWriteDeadline(time.Time{})
	return tc, nil
}

func (g *groupListener) close() {
	g.closeOnce.Do(func() {
		g.connMu.Lock()
		close(g.closed)
		for c := range g.conns {
			c.Close()
		}
		g.connMu.Unlock()
		g.ln.Close()
	})
	g.wg.Wait()
}

// raftStream is the group listener as Raft's StreamLayer.
type raftStream struct{ g *groupListener }

var _ raft.StreamLayer = raftStream{}

func (s raftStream) Accept() (net.Conn, error) {
	select {
	case c := <-s.g.raftCh:
		return c, nil
	case <-s.g.closed:
		return nil, net.ErrClosed
	}
}

// Close is a no-op: the Node closes the listener after Raft has stopped.
func (s raftStream) Close() error   { return nil }
func (s raftStream) Addr() net.Addr { return s.g.advertise }

func (s raftStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.g.dial(ctx, string(addr), kindRaft)
}
