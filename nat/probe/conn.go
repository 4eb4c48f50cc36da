package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/pion/stun/v4"
	"github.com/pion/transport/v5"

	"github.com/superpeer/superpeer/nat/clock"
)

// ErrNoResponse means a request got no answer within its time; in a
// filtering or lifetime test it is the answer.
var ErrNoResponse = errors.New("no response")

// ServerError is a STUN error response (400, 420...) from the server.
type ServerError struct {
	Code   stun.ErrorCode
	Reason string
}

func (e *ServerError) Error() string { return fmt.Sprintf("STUN error %d %s", e.Code, e.Reason) }

// received is one STUN message that arrived on a conn.
type received struct {
	msg  *stun.Message
	from netip.AddrPort
	at   time.Time // clock time of arrival
}

// conn is one UDP socket with a reader that hands each STUN message to
// whoever waits for its transaction ID. Messages nobody waits for are
// dropped.
type conn struct {
	pc    net.PacketConn
	clk   clock.Clock
	local netip.AddrPort // as bound: often the unspecified address

	mu      sync.Mutex // guards following
	waiters map[[stun.TransactionIDSize]byte]chan received
	closed  bool

	done chan struct{} // closed when the reader has stopped
}

func openConn(n transport.Net, clk clock.Clock, network string) (*conn, error) {
	wildcard := "0.0.0.0:0"
	if network == "udp6" {
		wildcard = "[::]:0"
	}
	pc, err := n.ListenPacket(network, wildcard)
	if err != nil {
		return nil, fmt.Errorf("opening a UDP socket: %w", err)
	}
	local, ok := addrPortOf(pc.LocalAddr())
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("reading the address of a new socket: %v", pc.LocalAddr())
	}
	c := &conn{pc: pc, clk: clk, local: local, waiters: make(map[[stun.TransactionIDSize]byte]chan received), done: make(chan struct{})}
	go c.read()
	return c, nil
}

func (c *conn) read() {
	defer close(c.done)
	buf := make([]byte, 2048)
	for {
		n, from, err := c.pc.ReadFrom(buf)
		if err != nil {
			c.mu.Lock()
			closed := c.closed
			c.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			// An ICMP error reported on the socket; keep reading.
			continue
		}
		src, ok := addrPortOf(from)
		if !ok || !stun.IsMessage(buf[:n]) {
			continue
		}
		m := new(stun.Message)
		if err := stun.Decode(buf[:n], m); err != nil {
			continue
		}
		at := c.clk.Now()
		c.mu.Lock()
		ch := c.waiters[m.TransactionID]
		c.mu.Unlock()
		if ch != nil {
			select {
			case ch <- received{msg: m, from: src, at: at}:
			default: // a duplicate; the first one counts
			}
		}
	}
}

// expect registers interest in transaction tid; the returned function
// withdraws it.
func (c *conn) expect(tid [stun.TransactionIDSize]byte) (<-chan received, func()) {
	ch := make(chan received, 1)
	return ch, c.expectOn(tid, ch)
}

// expectOn delivers the message of transaction tid to ch (without
// blocking: ch needs room); the returned function withdraws it.
func (c *conn) expectOn(tid [stun.TransactionIDSize]byte, ch chan received) func() {
	c.mu.Lock()
	c.waiters[tid] = ch
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		delete(c.waiters, tid)
		c.mu.Unlock()
	}
}

func (c *conn) send(to netip.AddrPort, raw []byte) error {
	if _, err := c.pc.WriteTo(raw, net.UDPAddrFromAddrPort(to)); err != nil {
		return fmt.Errorf("sending to %v: %w", to, err)
	}
	return nil
}

// Close closes the socket and waits for the reader to stop.
func (c *conn) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.done
		return
	}
	c.closed = true
	c.mu.Unlock()
	c.pc.Close()
	<-c.done
}

// timing is the retransmission schedule of one transaction: sends at 0,
// rto, 3 rto, 7 rto... while inside timeout, then waits out timeout.
type timing struct {
	rto, timeout time.Duration
}

// transact sends req from c to to and waits for the message of req's
// transaction on on (c itself, or another socket when the request carries
// RESPONSE-PORT or is meant to hairpin). An error response is returned as
// *ServerError; silence as ErrNoResponse.
func transact(ctx context.Context, c *conn, to netip.AddrPort, on *conn, req *stun.Message, tm timing) (received, error) {
	ch, cancel := on.expect(req.TransactionID)
	defer cancel()
	start := c.clk.Now()
	deadline := c.clk.NewTimer(tm.timeout)
	defer deadline.Stop()
	if err := c.send(to, req.Raw); err != nil {
		return received{}, err
	}
	wait := tm.rto
	next := c.clk.NewTimer(wait)
	defer next.Stop()
	lastSend := start
	for {
		select {
		case <-next.C():
			if err := c.send(to, req.Raw); err != nil {
				return received{}, err
			}
			lastSend = c.clk.Now()
			if wait *= 2; c.clk.Since(start)+wait < tm.timeout {
				next.Reset(wait)
			}
		case r := <-ch:
			if r.msg.Type.Class == stun.ClassErrorResponse {
				var ec stun.ErrorCodeAttribute
				if err := ec.GetFrom(r.msg); err != nil {
					return r, &ServerError{Code: 0, Reason: "error response without ERROR-CODE"}
				}
				return r, &ServerError{Code: ec.Code, Reason: string(ec.Reason)}
			}
			// The answer to a resend may still be on its way and refresh
			// the NAT binding later than this one did: count the flow's
			// last packet as that late, so idle times are never overstated.
			r.at = r.at.Add(lastSend.Sub(start))
			return r, nil
		case <-deadline.C():
			return received{}, fmt.Errorf("request to %v: %w within %v", to, ErrNoResponse, tm.timeout)
		case <-ctx.Done():
			return received{}, ctx.Err()
		}
	}
}

// bindingResult is what one Binding response says.
type bindingResult struct {
	mapped netip.AddrPort // XOR-MAPPED-ADDRESS (MAPPED-ADDRESS if absent)
	other  netip.AddrPort // OTHER-ADDRESS, zero if absent
	origin netip.AddrPort // RESPONSE-ORIGIN, zero if absent
	from   netip.AddrPort // where the response came from
	at     time.Time
}

func parseBinding(r received) (bindingResult, error) {
	b := bindingResult{from: r.from, at: r.at}
	if r.msg.Type != stun.BindingSuccess {
		return b, fmt.Errorf("unexpected %v from %v", r.msg.Type, r.from)
	}
	var x stun.XORMappedAddress
	if err := x.GetFrom(r.msg); err == nil {
		b.mapped = toAddrPort(x.IP, x.Port)
	} else {
		var m stun.MappedAddress
		if err := m.GetFrom(r.msg); err != nil {
			return b, fmt.Errorf("response from %v has no mapped address", r.from)
		}
		b.mapped = toAddrPort(m.IP, m.Port)
	}
	var o stun.OtherAddress
	if err := o.GetFrom(r.msg); err == nil {
		b.other = toAddrPort(o.IP, o.Port)
	}
	var ro stun.ResponseOrigin
	if err := ro.GetFrom(r.msg); err == nil {
		b.origin = toAddrPort(ro.IP, ro.Port)
	}
	return b, nil
}

// bind runs one Binding transaction from c to to with the given extra
// attributes.
func bind(ctx context.Context, c *conn, to netip.AddrPort, tm timing, extra ...stun.Setter) (bindingResult, error) {
	req, err := stun.Build(append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, extra...)...)
	if err != nil {
		return bindingResult{}, fmt.Errorf("building a Binding request: %w", err)
	}
	r, err := transact(ctx, c, to, c, req, tm)
	if err != nil {
		return bindingResult{}, err
	}
	return parseBinding(r)
}

func toAddrPort(ip net.IP, port int) netip.AddrPort {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || port < 0 || port > 0xffff {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port))
}

func addrPortOf(a net.Addr) (netip.AddrPort, bool) {
	if u, ok := a.(*net.UDPAddr); ok {
		ap := u.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.IsValid()
	}
	if a == nil {
		return netip.AddrPort{}, false
	}
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
