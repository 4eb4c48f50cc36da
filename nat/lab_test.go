package nat

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/superpeer/superpeer/netlab"
)

// Short conntrack timeouts so that ten lifetimes take a minute. The
// keeper is given the stream timeout as a measured lifetime; measuring it
// is the lifetime estimator's business, tested beside it.
const (
	labUnreplied = 3 * time.Second
	labStream    = 6 * time.Second
)

// labFlow is a pinhole from a LAN host to a STUN-speaking socket on the
// WAN, kept by a keeper of its own.
type labFlow struct {
	k      *Keeper
	p      *Pinhole
	server *net.UDPConn
	data   chan string // non-STUN datagrams the LAN socket read
	events chan Event
	src    *switchableLifetime
}

func startLabFlow(t *testing.T, wan, lan *netlab.Host, serverPort uint16) *labFlow {
	t.Helper()
	server, err := wan.UDP(netip.AddrPortFrom(wan.Addr, serverPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	go serveSTUN(server, nil)

	src := &switchableLifetime{}
	src.set(labStream, 0, true)
	cfg := DefaultKeeperConfig()
	cfg.Lifetime = src
	k, err := NewKeeper(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })

	n, err := lan.Net()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := n.ListenPacket("udp4", "0.0.0.0:5060")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	f := &labFlow{k: k, server: server, data: make(chan string, 8), events: make(chan Event, 8), src: src}
	go ownerLoop(k, conn, f.data)
	f.p, err = k.Add(PinholeSpec{
		Local:  netip.AddrPortFrom(lan.Addr, 5060),
		Remote: netip.AddrPortFrom(wan.Addr, serverPort),
		Conn:   conn,
		Notify: func(ev Event) { f.events <- ev },
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// reaches sends from the WAN socket to the pinhole's external address and
// reports whether the LAN socket got it.
func (f *labFlow) reaches(t *testing.T, to netip.AddrPort) bool {
	t.Helper()
	for range 3 { // the first datagram may race an ARP lookup
		if _, err := f.server.WriteToUDPAddrPort([]byte("inbound"), to); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-f.data:
			if got == "inbound" {
				return true
			}
		case <-time.After(500 * time.Millisecond):
		}
	}
	return false
}

// TestLabKeeper runs the keeper through real kernel NATs with (unreplied,
// stream) timeouts of (3 s, 6 s).
//
// hold: on a port-preserving NAT, the keeper holds a pinhole for ten
// lifetimes with at most 1.25 x 10 + 1 keepalives, and at the end a WAN
// host's packet reaches the LAN host, with no loss on the way.
//
// flush: on a fully random NAT, after conntrack -F on the NAT the next
// keepalive finds a new mapping: the loss is noticed within one keepalive
// interval, the owner is told the new address, the lifetime source hears
// of it, and the re-opened pinhole is kept and reachable.
func TestLabKeeper(t *testing.T) {
	lab := netlab.Start(t, netlab.Topology{Sites: []netlab.SiteConfig{
		{Name: "pp", Mapping: netlab.PortPreserving, UDPTimeout: labUnreplied, UDPStreamTimeout: labStream},
		{Name: "random", Mapping: netlab.Random, UDPTimeout: labUnreplied, UDPStreamTimeout: labStream},
	}})
	wan := lab.WAN[0]

	t.Run("hold", func(t *testing.T) {
		t.Parallel()
		site := lab.Sites[0]
		f := startLabFlow(t, wan, site.LAN[0], 3478)
		const lifetimes = 10
		// Holding the pinhole for ten NAT lifetimes is the behaviour under
		// test: wait them out.
		time.Sleep(lifetimes * labStream)
		st := f.p.Status()
		t.Logf("after %v: %+v", lifetimes*labStream, st)
		if limit := 1.25*lifetimes + 1; float64(st.Keepalives) > limit {
			t.Errorf("%d keepalives in %d lifetimes, want at most %v", st.Keepalives, lifetimes, limit)
		}
		if st.Losses != 0 || st.Remaps != 0 {
			t.Errorf("pinhole lost %d times, remapped %d times", st.Losses, st.Remaps)
		}
		if st.External.Addr() != site.External {
			t.Fatalf("external address %v, want on the site's %v", st.External, site.External)
		}
		if !f.reaches(t, st.External) {
			t.Fatalf("after %d lifetimes a WAN packet to %v does not reach the LAN host", lifetimes, st.External)
		}
	})

	t.Run("flush", func(t *testing.T) {
		t.Parallel()
		site := lab.Sites[1]
		f := startLabFlow(t, wan, site.LAN[0], 3479)
		err := netlab.Wait(context.Background(), 4*labStream, func() error {
			if st := f.p.Status(); st.State != "ok" {
				return errorf("pinhole state %s", st.State)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		before := f.p.Status()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := site.NAT.FlushConntrack(ctx); err != nil {
			t.Fatal(err)
		}
		flushed := time.Now()
		var ev Event
		select {
		case ev = <-f.events:
		case <-time.After(before.Interval + 2*time.Second):
			t.Fatalf("no event within one keepalive interval (%v) of the flush", before.Interval)
		}
		noticed := time.Since(flushed)
		t.Logf("flush noticed after %v (interval %v): %s %v -> %v", noticed, before.Interval, ev.Kind, ev.OldExternal, ev.NewExternal)
		if ev.Kind != EventRemapped || ev.OldExternal != before.External || ev.NewExternal == before.External {
			t.Fatalf("event %+v, want a remap away from %v", ev, before.External)
		}
		if noticed > before.Interval+time.Second {
			t.Errorf("flush noticed after %v, more than one keepalive interval (%v)", noticed, before.Interval)
		}
		if got := f.src.observed(); len(got) != 1 {
			t.Errorf("lifetime source heard %d remaps, want 1", len(got))
		}
		// The new binding is re-opened and kept: after its warm-up and a
		// full stream lifetime (waited on purpose) it still forwards.
		time.Sleep(labUnreplied + labStream)
		st := f.p.Status()
		if st.External != ev.NewExternal || st.State != "ok" {
			t.Fatalf("after re-opening: %+v", st)
		}
		if !f.reaches(t, st.External) {
			t.Fatalf("re-opened pinhole %v does not forward a lifetime later", st.External)
		}
	})
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
