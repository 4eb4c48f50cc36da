package netlab

import (
	"context"
	"net"

	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"
)

// Net returns a transport.Net whose every socket is opened inside the
// host's namespace, so code written against the Net seam runs in-process as
// if it ran on that host.
func (h *Host) Net() (transport.Net, error) {
	n := &nsNet{h: h}
	err := h.Do(func() error {
		var err error
		n.std, err = stdnet.NewNet() // reads the namespace's interfaces
		return err
	})
	if err != nil {
		return nil, err
	}
	return n, nil
}

type nsNet struct {
	h   *Host
	std *stdnet.Net
}

var _ transport.Net = (*nsNet)(nil)

func (n *nsNet) ListenPacket(network, address string) (c net.PacketConn, err error) {
	err = n.h.Do(func() error {
		c, err = n.std.ListenPacket(network, address)
		return err
	})
	return c, err
}

func (n *nsNet) ListenUDP(network string, laddr *net.UDPAddr) (c transport.UDPConn, err error) {
	err = n.h.Do(func() error {
		c, err = n.std.ListenUDP(network, laddr)
		return err
	})
	return c, err
}

func (n *nsNet) ListenTCP(network string, laddr *net.TCPAddr) (l transport.TCPListener, err error) {
	err = n.h.Do(func() error {
		l, err = n.std.ListenTCP(network, laddr)
		return err
	})
	return l, err
}

func (n *nsNet) Dial(network, address string) (c net.Conn, err error) {
	err = n.h.Do(func() error {
		c, err = n.std.Dial(network, address)
		return err
	})
	return c, err
}

func (n *nsNet) DialUDP(network string, laddr, raddr *net.UDPAddr) (c transport.UDPConn, err error) {
	err = n.h.Do(func() error {
		c, err = n.std.DialUDP(network, laddr, raddr)
		return err
	})
	return c, err
}

func (n *nsNet) DialTCP(network string, laddr, raddr *net.TCPAddr) (c transport.TCPConn, err error) {
	err = n.h.Do(func() error {
		c, err = n.std.DialTCP(network, laddr, raddr)
		return err
	})
	return c, err
}

func (n *nsNet) ResolveIPAddr(network, address string) (*net.IPAddr, error) {
	return n.std.ResolveIPAddr(network, address)
}

func (n *nsNet) ResolveUDPAddr(network, address string) (*net.UDPAddr, error) {
	return n.std.ResolveUDPAddr(network, address)
}

func (n *nsNet) ResolveTCPAddr(network, address string) (*net.TCPAddr, error) {
	return n.std.ResolveTCPAddr(network, address)
}

func (n *nsNet) Interfaces() (ifs []*transport.Interface, err error) {
	err = n.h.Do(func() error {
		if err := n.std.UpdateInterfaces(); err != nil {
			return err
		}
		ifs, err = n.std.Interfaces()
		return err
	})
	return ifs, err
}

func (n *nsNet) InterfaceByIndex(index int) (*transport.Interface, error) {
	return n.std.InterfaceByIndex(index)
}

func (n *nsNet) InterfaceByName(name string) (*transport.Interface, error) {
	return n.std.InterfaceByName(name)
}

func (n *nsNet) CreateDialer(d *net.Dialer) transport.Dialer {
	return nsDialer{h: n.h, d: n.std.CreateDialer(d)}
}

func (n *nsNet) CreateListenConfig(lc *net.ListenConfig) transport.ListenConfig {
	return nsListenConfig{h: n.h, lc: n.std.CreateListenConfig(lc)}
}

type nsDialer struct {
	h *Host
	d transport.Dialer
}

func (d nsDialer) Dial(network, address string) (c net.Conn, err error) {
	err = d.h.Do(func() error {
		c, err = d.d.Dial(network, address)
		return err
	})
	return c, err
}

type nsListenConfig struct {
	h  *Host
	lc transport.ListenConfig
}

func (l nsListenConfig) Listen(ctx context.Context, network, address string) (ln net.Listener, err error) {
	err = l.h.Do(func() error {
		ln, err = l.lc.Listen(ctx, network, address)
		return err
	})
	return ln, err
}

func (l nsListenConfig) ListenPacket(ctx context.Context, network, address string) (c net.PacketConn, err error) {
	err = l.h.Do(func() error {
		c, err = l.lc.ListenPacket(ctx, network, address)
		return err
	})
	return c, err
}
