package superpeer

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/transport/v5/stdnet"

	"github.com/superpeer/superpeer/election"
	"github.com/superpeer/superpeer/nat/clock"
	"github.com/superpeer/superpeer/nat/probe"
	"github.com/superpeer/superpeer/overlay"
	"github.com/superpeer/superpeer/superpeer/config"
)

// silentSTUN is a STUN server that counts what it is asked and never
// answers.
type silentSTUN struct {
	addr  string
	asked atomic.Int32
}

func newSilentSTUN(t *testing.T) *silentSTUN {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	s := &silentSTUN{addr: pc.LocalAddr().String()}
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			s.asked.Add(1)
		}
	}()
	return s
}

// natOnlyDaemon is a daemon with nothing but its NAT part, which asks
// server and whose discovery has not ended, on a fake clock.
func natOnlyDaemon(t *testing.T, server string) (*Daemon, *clock.Fake) {
	t.Helper()
	cfg, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	n, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	d := &Daemon{cfg: cfg, net: n, clock: clk, log: discardLogger()}
	d.nat = &natPart{d: d, server: server, changed: make(chan struct{}, 1), quickDone: make(chan struct{}), discovered: make(chan struct{})}
	return d, clk
}

// TestServicesAwaitFirstDiscovery: services starting while the NAT's first
// discovery has not ended wait for its verdict and ask the STUN server
// nothing themselves (even when that discovery has not said it runs yet);
// when it never ends, they run their own after discoveryWait.
func TestServicesAwaitFirstDiscovery(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("verdict", func(t *testing.T) {
		stun := newSilentSTUN(t)
		d, clk := natOnlyDaemon(t, stun.addr)
		done := make(chan struct{})
		go func() { defer close(done); d.awaitReachability(ctx) }()
		if err := clk.WaitTimers(ctx, 1); err != nil {
			t.Fatalf("awaitReachability did not wait: %v", err)
		}
		// The first discovery ends with a verdict.
		d.nat.setReport(&probe.Report{NAT: true, Mapping: probe.EndpointIndependent, External: netip.MustParseAddrPort("203.0.113.7:40000")})
		d.nat.discoveredOnce.Do(func() { close(d.nat.discovered) })
		select {
		case <-done:
		case <-ctx.Done():
			t.Fatal("awaitReachability did not return after the first discovery ended")
		}
		if r := d.nat.reachability(); r != overlay.EndpointIndependent {
			t.Errorf("reachability %v, want the first discovery's endpoint-independent", r)
		}
		if n := stun.asked.Load(); n != 0 {
			t.Errorf("the services sent %d requests to the STUN server while the first discovery ran", n)
		}
	})

	t.Run("never ends", func(t *testing.T) {
		stun := newSilentSTUN(t)
		d, clk := natOnlyDaemon(t, stun.addr)
		actx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); d.awaitReachability(actx) }()
		if err := clk.WaitTimers(ctx, 1); err != nil {
			t.Fatalf("awaitReachability did not wait: %v", err)
		}
		if n := stun.asked.Load(); n != 0 {
			t.Fatalf("the services asked the STUN server before discoveryWait passed (%d requests)", n)
		}
		clk.Advance(discoveryWait)
		deadline := time.Now().Add(5 * time.Second)
		for stun.asked.Load() == 0 {
			if time.Now().After(deadline) {
				t.Fatal("no discovery of their own after discoveryWait")
			}
			time.Sleep(10 * time.Millisecond) // polling a counter, within the deadline
		}
		stop()
		<-done
	})
}

// TestServicesAdvertiseBoundPorts: SIP and TURN configured with port 0
// (the test daemons' ports) are advertised to the site with the ports they
// were given, not with port 0: a desktop agent forwards there.
func TestServicesAdvertiseBoundPorts(t *testing.T) {
	d := startDaemon(t, "")
	var want, got election.Services
	deadline := time.Now().Add(20 * time.Second)
	for {
		if s := d.services(); s != nil {
			for _, l := range s.sip.Listeners() {
				if l.Network == "udp" {
					want.SIP = l.Addr
				}
			}
			want.TURN = s.turn.UDPAddrs()[0].String()
			for _, m := range d.node.Superpeers().Members {
				if m.ID == d.nodeID.String() {
					got = m.Services
				}
			}
			if got == want {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the site's superpeer set advertises this node's services as %+v, want %+v", got, want)
		}
		time.Sleep(50 * time.Millisecond) // polling the replicated state, within the deadline
	}
	if strings.HasSuffix(want.SIP, ":0") || strings.HasSuffix(want.TURN, ":0") {
		t.Fatalf("bound services %+v", want)
	}
	// The desktop agents' choice is the advertised one.
	if ap, ok := d.currentSuperpeer(); !ok || ap.String() != want.SIP {
		t.Errorf("the desktop agents would forward to %v (%v), want %s", ap, ok, want.SIP)
	}
}
