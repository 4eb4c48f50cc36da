package turn

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	natpmp "github.com/jackpal/go-nat-pmp"
	"github.com/pion/stun/v4"

	"github.com/superpeer/superpeer/netlab"
)

// labWAN is the lab's WAN, documentation space (RFC 5737) that the default
// policy refuses: lab tests allow it explicitly.
var labWAN = netip.MustParsePrefix("203.0.113.0/24")

// pmpMapper is a test stand-in for the daemon's nat/portmap: NAT-PMP
// (RFC 6886) to the site's miniupnpd, from inside the superpeer's host.
// It does not verify mappings end to end; the test does, by sending to
// the relayed address from the WAN.
type pmpMapper struct {
	host    *netlab.Host
	gateway netip.Addr
}

func (m pmpMapper) Map(_ context.Context, proto string, local netip.AddrPort) (netip.AddrPort, func(), error) {
	var ext netip.AddrPort
	err := m.host.Do(func() error {
		c := natpmp.NewClientWithTimeout(m.gateway.AsSlice(), 2*time.Second)
		a, err := c.GetExternalAddress()
		if err != nil {
			return fmt.Errorf("NAT-PMP external address: %w", err)
		}
		r, err := c.AddPortMapping(proto, int(local.Port()), int(local.Port()), 600)
		if err != nil {
			return fmt.Errorf("NAT-PMP mapping %s %v: %w", proto, local, err)
		}
		ext = netip.AddrPortFrom(netip.AddrFrom4(a.ExternalIPAddress), r.MappedExternalPort)
		return nil
	})
	if err != nil {
		return netip.AddrPort{}, nil, err
	}
	release := func() {
		m.host.Do(func() error {
			_, err := natpmp.NewClientWithTimeout(m.gateway.AsSlice(), time.Second).AddPortMapping(proto, int(local.Port()), 0, 0)
			return err
		})
	}
	return ext, release, nil
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not installed (CI must run the lab)", tool)
			}
			t.Skipf("%s not installed (Debian coturn; make test installs it as root)", tool)
		}
	}
}

var (
	uclientLost = regexp.MustCompile(`Total lost packets (\d+) `)
	uclientMsgs = regexp.MustCompile(`start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)`)
)

// TestLabUclient: coturn's turnutils_uclient on a LAN host allocates on the
// site's superpeer (this process, on another LAN host of the site) across
// the site's NAT and relays to turnutils_peer on a WAN host and on a host
// of another site, behind a port-preserving and behind a fully random NAT,
// over UDP and TCP, without loss. Behind the port-preserving NAT the
// relayed address is the mapping STUN learnt and a WAN peer that speaks
// first reaches the client through it (the relay opened the filter);
// with a NAT-PMP port mapping, the same through the mapping. The
// superpeer refuses the attack list and its own LAN address with 403.
func TestLabUclient(t *testing.T) {
	needTools(t, "turnutils_uclient", "turnutils_peer", "upnpc")
	lab := netlab.Start(t, netlab.Topology{WANHosts: 1, Sites: []netlab.SiteConfig{
		{Name: "pp", Mapping: netlab.PortPreserving, UPnP: true, LANHosts: 2},
		{Name: "rand", Mapping: netlab.Random, UPnP: true, LANHosts: 2},
		{Name: "b", Mapping: netlab.PortPreserving, UPnP: true, LANHosts: 1},
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Peers: one on the WAN, one on site B's LAN behind UPnP forwards
	// (turnutils_peer answers RTP on its port and RTCP on the next).
	const peerPort = 3480
	w, b := lab.WAN[0], lab.Sites[2]
	wanPeer := netip.AddrPortFrom(w.Addrs[1], peerPort)
	startPeer(ctx, t, w, wanPeer)
	startPeer(ctx, t, b.LAN[0], netip.AddrPortFrom(b.LAN[0].Addr, peerPort))
	for _, port := range []int{peerPort, peerPort + 1} {
		if out, err := b.LAN[0].Run(ctx, "upnpc", "-i", "-e", "peer", "-a", b.LAN[0].Addr.String(),
			strconv.Itoa(port), strconv.Itoa(port), "UDP"); err != nil {
			t.Fatalf("forwarding site B's peer: %v\n%s", err, out)
		}
	}
	siteBPeer := netip.AddrPortFrom(b.External, peerPort)

	for _, site := range lab.Sites[:2] {
		t.Run(site.Config.Mapping.String(), func(t *testing.T) {
			s := startLabServer(ctx, t, lab, site, 3478, nil)
			for _, run := range []struct {
				name string
				peer netip.AddrPort
				tcp  bool
			}{
				{"wan-peer", wanPeer, false},
				{"site-b-peer", siteBPeer, false},
				{"wan-peer-over-tcp", wanPeer, true},
			} {
				uclient(ctx, t, site.LAN[1], s, run.name, run.peer, run.tcp)
			}
			st := s.Status()
			if st.ToPeer.Packets < 300 || st.FromPeer.Packets < 300 {
				t.Errorf("the relay counted %d packets to peers and %d from them, want at least 300 each", st.ToPeer.Packets, st.FromPeer.Packets)
			}
			for _, r := range st.Relays {
				if r.Method != MethodSTUN || netip.MustParseAddrPort(r.Relayed).Addr() != site.External {
					t.Errorf("relay %s (%s) for %s, want one learnt by STUN on %v", r.Relayed, r.Method, r.Client, site.External)
				}
			}
			if site.Config.Mapping != netlab.PortPreserving {
				// Behind a random NAT the mapping STUN learns holds only
				// towards the STUN server: a peer cannot speak first to it.
				// That takes a port mapping, which the lab's miniupnpd
				// refuses behind its own random NAT.
				return
			}
			peerFirst(ctx, t, lab, site, s, true)
			refuseAttackList(ctx, t, site, s)
		})
	}

	t.Run("nat-pmp-mapping", func(t *testing.T) {
		site := lab.Sites[0]
		s := startLabServer(ctx, t, lab, site, 3479, pmpMapper{host: site.LAN[0], gateway: site.NAT.Addr})
		peerFirst(ctx, t, lab, site, s, false)
		if m := s.Status().Relays[0].Method; m != MethodMapped {
			t.Errorf("relay found its address by %q, want %q", m, MethodMapped)
		}
	})
}

func startPeer(ctx context.Context, t *testing.T, h *netlab.Host, at netip.AddrPort) {
	t.Helper()
	if _, err := h.Start("turnutils_peer", "-L", at.Addr().String(), "-p", strconv.Itoa(int(at.Port()))); err != nil {
		t.Fatal(err)
	}
	if err := netlab.Wait(ctx, 10*time.Second, func() error {
		out, err := h.Run(ctx, "ss", "-Hlnu", fmt.Sprintf("sport = :%d", at.Port()))
		if err == nil && out == "" {
			return fmt.Errorf("turnutils_peer not listening on %v yet", at)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// startLabServer runs the superpeer's relay on the site's first LAN host,
// learning mappings from the lab's STUN server (or mapper), allowing the
// lab's WAN as peers.
func startLabServer(ctx context.Context, t *testing.T, lab *netlab.Lab, site *netlab.Site, port uint16, mapper PortMapper) *Server {
	t.Helper()
	nw, err := site.LAN[0].Net()
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Listen = []netip.Addr{site.LAN[0].Addr}
	cfg.Port = port
	cfg.STUNServer = lab.STUN
	cfg.PortMapper = mapper
	cfg.AllowPeers = []netip.Prefix{labWAN}
	cfg.Secret = func() []byte { return testSecret }
	cfg.Logger = slog.New(slog.DiscardHandler)
	s, err := New(cfg, nw, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// uclient runs turnutils_uclient on h against s, two clients (each with
// an RTP and an RTCP allocation, which exercises EVEN-PORT reservations)
// of 50 RTP-sized messages each to peer, and expects no loss.
func uclient(ctx context.Context, t *testing.T, h *netlab.Host, s *Server, name string, peer netip.AddrPort, tcp bool) {
	t.Helper()
	server := s.UDPAddrs()[0]
	args := []string{"-W", string(testSecret), "-u", "uclient", "-e", peer.Addr().String(),
		"-r", strconv.Itoa(int(peer.Port())), "-n", "50", "-l", "172", "-m", "2", "-p", strconv.Itoa(int(server.Port()))}
	if tcp {
		args = append(args, "-t")
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := h.Run(rctx, "turnutils_uclient", append(args, server.Addr().String())...)
	if err != nil {
		t.Fatalf("%s: %v\nrelay status: %+v", name, err, s.Status())
	}
	lost := uclientLost.FindStringSubmatch(out)
	msgs := uclientMsgs.FindStringSubmatch(out)
	if lost == nil || msgs == nil {
		t.Fatalf("%s: no summary in uclient's output:\n%s", name, out)
	}
	if lost[1] != "0" || msgs[1] != msgs[2] || msgs[1] != "100" {
		t.Errorf("%s: uclient lost %s packets, sent %s, received %s, want 100 and 100\n%s", name, lost[1], msgs[1], msgs[2], out)
	}
}

// peerFirst allocates from the site's second LAN host and has a WAN
// socket send to the relayed address before the client sends anything.
// Behind a filtering NAT without a mapping (opening true) the relay's
// filter-opening datagram must have reached the peer from the relayed
// address first.
func peerFirst(ctx context.Context, t *testing.T, lab *netlab.Lab, site *netlab.Site, s *Server, opening bool) {
	t.Helper()
	w := lab.WAN[0]
	conn, err := dialFrom(site.LAN[1], "udp4", s.UDPAddrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	creds, err := s.Credentials("first", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := newRawClient(t, conn, creds.Username, creds.Password)
	relayed, code := c.allocate(17, 0)
	if code != 0 {
		t.Fatalf("allocate: %d", code)
	}
	if relayed.Addr() != site.External {
		t.Fatalf("relayed address %v is not the site's external address %v", relayed, site.External)
	}
	wsAddr := netip.AddrPortFrom(w.Addrs[1], 5000+s.UDPAddrs()[0].Port()%100)
	ws, err := w.UDP(wsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if code := c.peerRequest(stun.MethodCreatePermission, wsAddr); code != 0 {
		t.Fatalf("CreatePermission: %d", code)
	}
	if opening {
		ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, from, err := ws.ReadFromUDPAddrPort(buf)
		if err != nil || n != 0 || netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) != relayed {
			t.Fatalf("filter-opening datagram: %d bytes from %v, %v; want 0 bytes from the relayed address %v", n, from, err, relayed)
		}
	}
	if _, err := ws.WriteToUDPAddrPort([]byte("first"), relayed); err != nil {
		t.Fatal(err)
	}
	if from, data, err := c.receive(5 * time.Second); err != nil || string(data) != "first" || from != wsAddr {
		t.Fatalf("the WAN peer's first packet to the relayed address %v: %q from %v, %v", relayed, data, from, err)
	}
}

// refuseAttackList sends the attack list and the superpeer's own LAN address as
// peers over UDP (CreatePermission, ChannelBind) and TCP (Connect on a TCP
// allocation) from the site's second LAN host: all 403.
func refuseAttackList(ctx context.Context, t *testing.T, site *netlab.Site, s *Server) {
	t.Helper()
	targets := append(append([]string(nil), attackList...), site.LAN[0].Addr.String())
	before := s.Status().Refusals
	requests := 0
	for _, network := range []string{"udp4", "tcp4"} {
		conn, err := dialFrom(site.LAN[1], network, s.UDPAddrs()[0])
		if err != nil {
			t.Fatal(err)
		}
		creds, _ := s.Credentials("mallory", time.Hour)
		c := newRawClient(t, conn, creds.Username, creds.Password)
		transport, methods := byte(17), []stun.Method{stun.MethodCreatePermission, stun.MethodChannelBind}
		if network == "tcp4" {
			transport, methods = 6, []stun.Method{stun.MethodConnect}
		}
		if _, code := c.allocate(transport, 0); code != 0 {
			t.Fatalf("%s allocate: %d", network, code)
		}
		for _, m := range methods {
			for _, target := range targets {
				requests++
				if code := c.peerRequest(m, netip.AddrPortFrom(netip.MustParseAddr(target), 3480)); code != stun.CodeForbidden {
					t.Errorf("%s %v to %s: got %d, want 403", network, m, target, code)
				}
			}
		}
	}
	after := s.Status().Refusals
	own := after[ReasonOwnAddress] - before[ReasonOwnAddress]
	all := own + after[ReasonForbiddenPeer] - before[ReasonForbiddenPeer]
	if all != uint64(requests) || own < 3 {
		t.Errorf("refusals counted: %d in all, %d as own addresses; want %d, and the LAN address thrice", all, own, requests)
	}
}

// dialFrom connects from inside host.
func dialFrom(h *netlab.Host, network string, to netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() error {
		var err error
		c, err = net.DialTimeout(network, to.String(), 5*time.Second)
		return err
	})
	return c, err
}
