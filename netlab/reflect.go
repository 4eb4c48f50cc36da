package netlab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Reflector answers every UDP datagram with the sender's address as the
// sender's address appears to it ("203.0.113.100:40000"): the smallest way
// to see what a NAT did to a flow.
type Reflector struct {
	conn *net.UDPConn
	// Seen delivers the source of each datagram, when someone reads it.
	Seen chan netip.AddrPort
}

// Reflect starts a Reflector on addr inside the host.
func (h *Host) Reflect(addr netip.AddrPort) (*Reflector, error) {
	var c *net.UDPConn
	err := h.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: reflector on %v: %w", h.Name, addr, err)
	}
	r := &Reflector{conn: c, Seen: make(chan netip.AddrPort, 64)}
	go r.serve()
	return r, nil
}

func (r *Reflector) serve() {
	buf := make([]byte, 2048)
	for {
		_, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		select {
		case r.Seen <- from:
		default:
		}
		r.conn.WriteToUDPAddrPort([]byte(from.String()), from)
	}
}

// Addr is where the Reflector listens.
func (r *Reflector) Addr() netip.AddrPort { return r.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Close stops it.
func (r *Reflector) Close() error { return r.conn.Close() }

// UDP opens a UDP socket on addr inside the host (port 0 picks one).
func (h *Host) UDP(addr netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := h.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: UDP socket on %v: %w", h.Name, addr, err)
	}
	return c, nil
}

// MappedAddr sends one datagram from c to a Reflector at refl and returns
// the address the Reflector saw, i.e. c's mapping through the NATs in
// between. It retries for up to timeout.
func MappedAddr(c *net.UDPConn, refl netip.AddrPort, timeout time.Duration) (netip.AddrPort, error) {
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 128)
	for time.Now().Before(deadline) {
		if _, err := c.WriteToUDPAddrPort([]byte("?"), refl); err != nil {
			return netip.AddrPort{}, err
		}
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			continue
		}
		if from.Addr().Unmap() != refl.Addr() || from.Port() != refl.Port() {
			continue
		}
		c.SetReadDeadline(time.Time{})
		return netip.ParseAddrPort(string(buf[:n]))
	}
	return netip.AddrPort{}, fmt.Errorf("no answer from reflector %v within %v", refl, timeout)
}
