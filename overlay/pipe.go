package overlay

import (
	"net"
	"os"
	"sync"
	"time"

	"github.com/pion/transport/v5"

	"github.com/superpeer/superpeer/overlay/wire"
)

// pipeConn is the net.PacketConn a DTLS session runs on: datagrams from
// one remote, demultiplexed off the node's single UDP socket (so every link
// shares the port its NAT mapping and pinholes belong to), or relayed
// through a third node's link.
type pipeConn struct {
	local  net.Addr
	remote net.Addr
	send   func([]byte) error
	onDone func()

	in     chan []byte
	mu     sync.Mutex // guards following
	closed bool
	dl     time.Time
	dlCh   chan struct{} // closed when the deadline changes
}

func newPipeConn(local, remote net.Addr, send func([]byte) error, onDone func()) *pipeConn {
	return &pipeConn{local: local, remote: remote, send: send, onDone: onDone, in: make(chan []byte, 64), dlCh: make(chan struct{})}
}

// deliver queues a datagram; it drops when the session is not reading,
// as a full socket buffer would.
func (p *pipeConn) deliver(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	select {
	case p.in <- b:
	default:
	}
}

func (p *pipeConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return 0, nil, net.ErrClosed
		}
		dl, dlCh := p.dl, p.dlCh
		p.mu.Unlock()
		var timeout <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			t := time.NewTimer(d)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case d, ok := <-p.in:
			if !ok {
				return 0, nil, net.ErrClosed
			}
			return copy(b, d), p.remote, nil
		case <-timeout:
			return 0, nil, os.ErrDeadlineExceeded
		case <-dlCh:
		}
	}
}

func (p *pipeConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return 0, net.ErrClosed
	}
	if err := p.send(b); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (p *pipeConn) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.in)
	p.mu.Unlock()
	if p.onDone != nil {
		p.onDone()
	}
	return nil
}

func (p *pipeConn) LocalAddr() net.Addr { return p.local }

func (p *pipeConn) SetDeadline(t time.Time) error { return p.SetReadDeadline(t) }

func (p *pipeConn) SetReadDeadline(t time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dl = t
	close(p.dlCh)
	p.dlCh = make(chan struct{})
	return nil
}

func (p *pipeConn) SetWriteDeadline(time.Time) error { return nil }

// relayAddr names the far end of a relayed session.
type relayAddr struct {
	via  NodeID
	peer NodeID
}

func (a relayAddr) Network() string { return "overlay-relay" }
func (a relayAddr) String() string  { return "relay:" + a.via.Short() + "/" + a.peer.Short() }

// socket is the node's one UDP socket and its demultiplexer.
type socket struct {
	pc net.PacketConn

	mu    sync.Mutex // guards following
	pipes map[string]*pipeConn

	onProbe  func(from net.Addr, p []byte)
	onAccept func(p *pipeConn) // a DTLS ClientHello from a new address
}

func listen(n transport.Net, addr string) (*socket, error) {
	pc, err := n.ListenPacket("udp4", addr)
	if err != nil {
		return nil, err
	}
	return &socket{pc: pc, pipes: map[string]*pipeConn{}}, nil
}

// pipe returns the pipe for remote, creating it.
func (s *socket) pipe(remote net.Addr) (*pipeConn, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := remote.String()
	if p := s.pipes[key]; p != nil {
		return p, false
	}
	p := newPipeConn(s.pc.LocalAddr(), remote, func(b []byte) error {
		_, err := s.pc.WriteTo(b, remote)
		return err
	}, nil)
	p.onDone = func() {
		s.mu.Lock()
		if s.pipes[key] == p {
			delete(s.pipes, key)
		}
		s.mu.Unlock()
	}
	s.pipes[key] = p
	return p, true
}

func (s *socket) readLoop() {
	buf := make([]byte, 1<<16)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if n == 0 {
			continue
		}
		b := append([]byte(nil), buf[:n]...)
		switch c := b[0]; {
		case c == wire.ProbeMagic:
			s.onProbe(from, b)
		case c >= 20 && c <= 63: // DTLS, RFC 7983
			s.mu.Lock()
			p := s.pipes[from.String()]
			s.mu.Unlock()
			if p == nil && c == 22 {
				var fresh bool
				p, fresh = s.pipe(from)
				if fresh {
					s.onAccept(p)
				}
			}
			if p != nil {
				p.deliver(b)
			}
		}
	}
}
