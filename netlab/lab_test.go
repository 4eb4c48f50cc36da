package netlab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMappingKinds shows each NAT's mapping with traffic: the
// port-preserving NAT keeps the LAN port towards every destination, the
// random NAT gives each destination a different port.
func TestMappingKinds(t *testing.T) {
	lab := Start(t, Topology{Sites: []SiteConfig{{Mapping: PortPreserving}, {Mapping: Random}}})
	w := lab.WAN[0]
	var dests []netip.AddrPort
	for _, ap := range []netip.AddrPort{
		netip.AddrPortFrom(w.Addrs[0], 9000),
		netip.AddrPortFrom(w.Addrs[0], 9001),
		netip.AddrPortFrom(w.Addrs[1], 9000),
	} {
		r, err := w.Reflect(ap)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		dests = append(dests, ap)
	}
	const lanPort = 40000
	for _, s := range lab.Sites {
		t.Run(s.Config.Mapping.String(), func(t *testing.T) {
			c, err := s.LAN[0].UDP(netip.AddrPortFrom(netip.IPv4Unspecified(), lanPort))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			seen := map[uint16]bool{}
			for _, d := range dests {
				m, err := MappedAddr(c, d, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if m.Addr() != s.External {
					t.Errorf("towards %v the LAN host appears as %v, want the site's address %v", d, m.Addr(), s.External)
				}
				seen[m.Port()] = true
				if s.Config.Mapping == PortPreserving && m.Port() != lanPort {
					t.Errorf("port-preserving NAT mapped port %d to %d towards %v", lanPort, m.Port(), d)
				}
			}
			if s.Config.Mapping == Random && len(seen) != len(dests) {
				t.Errorf("random NAT reused external ports across %d destinations: %v", len(dests), seen)
			}
		})
	}
}

// TestUDPTimeouts shows both conntrack timers per NAT kind: an inbound
// packet passes shortly before the configured timeout and is dropped shortly
// after it, for a flow that never saw a reply (unreplied timer) and for one
// that exchanged traffic after its first 2 seconds (stream timer).
func TestUDPTimeouts(t *testing.T) {
	const (
		unreplied = 4 * time.Second
		stream    = 8 * time.Second
		margin    = 1500 * time.Millisecond
	)
	lab := Start(t, Topology{Sites: []SiteConfig{
		{Mapping: PortPreserving, UDPTimeout: unreplied, UDPStreamTimeout: stream},
		{Mapping: Random, UDPTimeout: unreplied, UDPStreamTimeout: stream},
	}})
	w := lab.WAN[0]
	type flow struct {
		site    *Site
		stream  bool
		wait    time.Duration // after the flow's last packet
		arrives bool
	}
	var flows []flow
	for _, s := range lab.Sites {
		flows = append(flows,
			flow{s, false, unreplied - margin, true},
			flow{s, false, unreplied + margin, false},
			flow{s, true, stream - margin, true},
			flow{s, true, stream + margin, false},
		)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(flows))
	for i, f := range flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := inboundAfter(w, f.site.LAN[0], uint16(9100+i), f.stream, f.wait)
			if err != nil {
				errs <- err
				return
			}
			if got != f.arrives {
				kind := "unreplied"
				if f.stream {
					kind = "stream"
				}
				errs <- fmt.Errorf("%s NAT, %s flow, inbound packet %v after the last packet: arrived=%v, want %v",
					f.site.Config.Mapping, kind, f.wait, got, f.arrives)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// inboundAfter opens a flow from lan to a socket on wan and reports whether
// a packet that wan sends after idle reaches lan. For a stream flow, wan
// answers 2.5 s into the flow and lan answers back (the second packet after
// the reply is what moves conntrack to the stream timer); idle then counts
// from lan's answer.
func inboundAfter(wan, lan *Host, wanPort uint16, stream bool, idle time.Duration) (bool, error) {
	ws, err := wan.UDP(netip.AddrPortFrom(wan.Addr, wanPort))
	if err != nil {
		return false, err
	}
	defer ws.Close()
	ls, err := lan.UDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	if err != nil {
		return false, err
	}
	defer ls.Close()
	buf := make([]byte, 64)

	if _, err := ls.WriteToUDPAddrPort([]byte("open"), netip.AddrPortFrom(wan.Addr, wanPort)); err != nil {
		return false, err
	}
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, mapped, err := ws.ReadFromUDPAddrPort(buf)
	if err != nil {
		return false, fmt.Errorf("flow's first packet never reached the WAN: %w", err)
	}
	if stream {
		// Reply after the 2 s that conntrack waits before it calls a flow a
		// stream; this wait is the behaviour under test.
		time.Sleep(2500 * time.Millisecond)
		if _, err := ws.WriteToUDPAddrPort([]byte("reply"), mapped); err != nil {
			return false, err
		}
		ls.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := ls.ReadFromUDPAddrPort(buf); err != nil {
			return false, fmt.Errorf("reply 2.5 s into the flow did not reach the LAN: %w", err)
		}
		if _, err := ls.WriteToUDPAddrPort([]byte("ack"), netip.AddrPortFrom(wan.Addr, wanPort)); err != nil {
			return false, err
		}
		ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := ws.ReadFromUDPAddrPort(buf); err != nil {
			return false, fmt.Errorf("LAN's answer did not reach the WAN: %w", err)
		}
	}
	// Idle for the span under test: this is the NAT timeout being measured.
	time.Sleep(idle)
	if _, err := ws.WriteToUDPAddrPort([]byte("late"), mapped); err != nil {
		return false, err
	}
	ls.SetReadDeadline(time.Now().Add(time.Second))
	_, _, err = ls.ReadFromUDPAddrPort(buf)
	return err == nil, nil
}

// TestPinholeLimit shows the per-host flow cap: the limit+1th flow of one
// LAN host is dropped while another LAN host still gets through.
func TestPinholeLimit(t *testing.T) {
	const limit = 4
	lab := Start(t, Topology{Sites: []SiteConfig{{PinholeLimit: limit, LANHosts: 2}}})
	w := lab.WAN[0]
	s := lab.Sites[0]
	var refl []netip.AddrPort
	for i := range limit + 2 {
		ap := netip.AddrPortFrom(w.Addr, uint16(9200+i))
		r, err := w.Reflect(ap)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		refl = append(refl, ap)
	}
	c, err := s.LAN[0].UDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range limit {
		if _, err := MappedAddr(c, refl[i], 5*time.Second); err != nil {
			t.Fatalf("flow %d of %d (within the limit): %v", i+1, limit, err)
		}
	}
	if m, err := MappedAddr(c, refl[limit], 1500*time.Millisecond); err == nil {
		t.Fatalf("flow %d passed the NAT (mapped to %v) with a limit of %d", limit+1, m, limit)
	}
	other, err := s.LAN[1].UDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := MappedAddr(other, refl[limit+1], 5*time.Second); err != nil {
		t.Fatalf("a second LAN host was refused by the first host's limit: %v", err)
	}
}

// TestUPnPMapping maps a port with upnpc through the lab's miniupnpd and
// shows a WAN host reaching the LAN host through it, and not after removal.
func TestUPnPMapping(t *testing.T) {
	if _, err := exec.LookPath("upnpc"); err != nil && os.Getenv("CI") != "true" {
		t.Skip("upnpc not installed (Debian miniupnpc; make test installs it as root)")
	}
	lab := Start(t, Topology{Sites: []SiteConfig{{UPnP: true}}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, w := lab.Sites[0], lab.WAN[0]
	lan := s.LAN[0]
	const internal, external = 5555, 6666

	ls, err := lan.UDP(netip.AddrPortFrom(netip.IPv4Unspecified(), internal))
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	// -i: miniupnpc calls an IGD whose external address is in a reserved
	// range "not connected"; the lab's WAN is documentation space.
	if out, err := lan.Run(ctx, "upnpc", "-i", "-e", "netlab", "-a", lan.Addr.String(),
		fmt.Sprint(internal), fmt.Sprint(external), "UDP"); err != nil {
		t.Fatalf("upnpc could not map a port: %v\nminiupnpd said:\n%s", err, s.UPnP().Output())
	} else if !strings.Contains(out, "is redirected to internal") {
		t.Fatalf("upnpc did not confirm the mapping:\n%s", out)
	}
	target := netip.AddrPortFrom(s.External, external)
	if !reaches(t, w, target, ls) {
		t.Fatalf("a WAN host's packet to the mapped port %v did not reach the LAN host", target)
	}
	if _, err := lan.Run(ctx, "upnpc", "-i", "-d", fmt.Sprint(external), "UDP"); err != nil {
		t.Fatal(err)
	}
	if reaches(t, w, target, ls) {
		t.Fatalf("the mapping at %v still forwards after upnpc removed it", target)
	}
}

// reaches reports whether a datagram that wan sends to target arrives on ls.
func reaches(t *testing.T, wan *Host, target netip.AddrPort, ls *net.UDPConn) bool {
	t.Helper()
	ws, err := wan.UDP(netip.AddrPortFrom(wan.Addr, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	buf := make([]byte, 64)
	// Several tries: the first datagram of a flow may race the ARP lookup.
	for range 3 {
		if _, err := ws.WriteToUDPAddrPort([]byte("in"), target); err != nil {
			t.Fatal(err)
		}
		ls.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if n, _, err := ls.ReadFromUDPAddrPort(buf); err == nil && string(buf[:n]) == "in" {
			return true
		}
	}
	return false
}

// TestDoubleNAT shows a site behind its own NAT and a carrier-grade NAT:
// the WAN sees the carrier's address and the reply finds its way back.
func TestDoubleNAT(t *testing.T) {
	lab := Start(t, Topology{Sites: []SiteConfig{{CGNAT: true}}})
	s, w := lab.Sites[0], lab.WAN[0]
	r, err := w.Reflect(netip.AddrPortFrom(w.Addr, 9300))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := s.LAN[0].UDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m, err := MappedAddr(c, r.Addr(), 5*time.Second)
	if err != nil {
		t.Fatalf("no round trip through two NATs: %v", err)
	}
	if m.Addr() != s.External {
		t.Fatalf("WAN saw %v, want the carrier NAT's address %v", m.Addr(), s.External)
	}
	if !s.NAT.Addrs[1].Is4() || !netip.MustParsePrefix("100.64.0.0/10").Contains(s.NAT.Addrs[1]) {
		t.Fatalf("the home NAT's WAN address %v is not in the carrier's shared space", s.NAT.Addrs[1])
	}
}

// TestTeardown runs a lab test that fails, one that panics and one that is
// killed, each in a child process, and checks that nothing is left behind
// (Sweep handles the killed one, as the next lab start does).
func TestTeardown(t *testing.T) {
	if reason := Unavailable(Topology{}); reason != "" {
		if os.Getenv("CI") == "true" {
			t.Fatal(reason)
		}
		t.Skip(reason)
	}
	for _, mode := range []string{"fail", "panic", "kill"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestChildLab$", "-test.v")
			cmd.Env = append(os.Environ(), "NETLAB_CHILD="+mode)
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var out strings.Builder
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			prefix := make(chan string, 1)
			go func() {
				buf := make([]byte, 4096)
				for {
					n, err := stdout.Read(buf)
					out.Write(buf[:n])
					if i := strings.Index(out.String(), "PREFIX="); i >= 0 {
						if j := strings.IndexByte(out.String()[i:], '\n'); j > 0 {
							select {
							case prefix <- out.String()[i+7 : i+j]:
							default:
							}
						}
					}
					if err != nil {
						return
					}
				}
			}()
			var p string
			select {
			case p = <-prefix:
			case <-ctx.Done():
				t.Fatalf("child never built its lab")
			}
			if mode == "kill" {
				if n := countNS(p); n == 0 {
					t.Fatalf("child's lab %s not found while it runs", p)
				}
				cmd.Process.Kill()
			}
			cmd.Wait()
			if mode == "kill" {
				Sweep()
			}
			if n := countNS(p); n != 0 {
				t.Fatalf("%d namespaces of lab %s left after the child ended (%s)", n, p, mode)
			}
		})
	}
}

func countNS(prefix string) int {
	n := 0
	for _, ns := range Leftovers() {
		if strings.HasPrefix(ns, prefix+"-") {
			n++
		}
	}
	return n
}

// TestChildLab is the child of TestTeardown; it does nothing unless
// NETLAB_CHILD is set.
func TestChildLab(t *testing.T) {
	mode := os.Getenv("NETLAB_CHILD")
	if mode == "" {
		t.Skip("child process of TestTeardown only")
	}
	lab := Start(t, Topology{Sites: []SiteConfig{{}, {CGNAT: true}}})
	fmt.Printf("PREFIX=%s\n", lab.Prefix)
	switch mode {
	case "fail":
		t.Fatal("failing on purpose, with the lab up")
	case "panic":
		panic("panicking on purpose, with the lab up")
	case "kill":
		select {} // until killed
	}
}

// TestLANHostsReachEachOther shows two hosts of one LAN talking directly,
// as two devices behind a home router's switch do (also where the machine
// has br_netfilter loaded, which sends bridged traffic through the NAT's
// forward chain).
func TestLANHostsReachEachOther(t *testing.T) {
	lab := Start(t, Topology{Sites: []SiteConfig{{LANHosts: 2}}})
	s := lab.Sites[0]
	r, err := s.LAN[1].Reflect(netip.AddrPortFrom(s.LAN[1].Addr, 9400))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := s.LAN[0].UDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m, err := MappedAddr(c, r.Addr(), 5*time.Second)
	if err != nil {
		t.Fatalf("LAN host cannot reach its neighbour: %v", err)
	}
	if m.Addr() != s.LAN[0].Addr {
		t.Fatalf("neighbour saw %v, want the LAN address %v (no NAT inside the LAN)", m.Addr(), s.LAN[0].Addr)
	}
}
