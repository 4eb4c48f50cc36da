package stunserver

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/superpeer/superpeer/netlab"
)

// TestLabWANHost runs the server on a lab WAN host's two addresses and asks
// it from another WAN host over real sockets: the change-IP-and-port answer
// comes from the other address and port, RESPONSE-PORT reaches the named
// port.
func TestLabWANHost(t *testing.T) {
	lab := netlab.Start(t, netlab.Topology{WANHosts: 2})
	w, c := lab.WAN[0], lab.WAN[1]
	n, err := w.Net()
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Net, cfg.Primary, cfg.Alternate = n, w.Addrs[0], w.Addrs[1]
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	x, err := c.UDP(netip.AddrPortFrom(c.Addr, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	y, err := c.UDP(netip.AddrPortFrom(c.Addr, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer y.Close()

	ask := func(from, to *net.UDPConn, req *stun.Message) (*stun.Message, netip.AddrPort) {
		t.Helper()
		buf := make([]byte, 1500)
		// Real sockets: resend a few times in case the first datagram
		// races the ARP lookup of a fresh namespace.
		for range 5 {
			if _, err := from.WriteToUDPAddrPort(req.Raw, srv.Addr()); err != nil {
				t.Fatal(err)
			}
			to.SetReadDeadline(time.Now().Add(time.Second))
			n, src, err := to.ReadFromUDPAddrPort(buf)
			if err != nil {
				continue
			}
			m := new(stun.Message)
			if err := stun.Decode(buf[:n], m); err != nil || m.TransactionID != req.TransactionID {
				continue
			}
			return m, netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		}
		t.Fatal("no response from the server on the WAN host")
		return nil, netip.AddrPort{}
	}

	resp, from := ask(x, x, stun.MustBuild(stun.TransactionID, stun.BindingRequest, ChangeRequest{ChangeIP: true, ChangePort: true}))
	if want := netip.AddrPortFrom(w.Addrs[1], cfg.AltPort); from != want {
		t.Errorf("change-IP-and-port response came from %v, want %v", from, want)
	}
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(resp); err != nil {
		t.Fatal(err)
	}
	if got, want := netip.AddrPortFrom(netip.AddrFrom4([4]byte(xa.IP.To4())), uint16(xa.Port)), x.LocalAddr().(*net.UDPAddr).AddrPort(); got != want {
		t.Errorf("XOR-MAPPED-ADDRESS %v, want the client's %v", got, want)
	}

	xPort := x.LocalAddr().(*net.UDPAddr).Port
	_, from = ask(y, x, stun.MustBuild(stun.TransactionID, stun.BindingRequest, ResponsePort(xPort)))
	if from != srv.Addr() {
		t.Errorf("RESPONSE-PORT response came from %v, want %v", from, srv.Addr())
	}
}
