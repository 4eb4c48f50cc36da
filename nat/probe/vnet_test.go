package probe

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun/v4"
	"github.com/pion/transport/v5/vnet"

	"github.com/superpeer/superpeer/nat/stunserver"
)

var (
	srvPrimary   = netip.MustParseAddr("198.51.100.4")
	srvAlternate = netip.MustParseAddr("198.51.100.5")
	natExternal  = netip.MustParseAddr("198.51.100.100")
	openHost     = netip.MustParseAddr("198.51.100.20")
)

// vworld is a vnet WAN with our STUN server on two addresses and a site
// behind a vnet NAT (or, with a nil NAT type, a host on the WAN itself).
type vworld struct {
	srv    *stunserver.Server
	srvNet *vnet.Net // the server's host
	client *vnet.Net
	wan    *vnet.Router
	site   *vnet.Router // nil without a NAT
	ran    chan error
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newVWorld must run inside a synctest bubble: vnet's NAT reads time.Now,
// which the bubble fakes, so mapping lifetimes pass without waiting.
func newVWorld(t *testing.T, nat *vnet.NATType, filters ...vnet.ChunkFilter) *vworld {
	t.Helper()
	lf := logging.NewDefaultLoggerFactory()
	lf.DefaultLogLevel = logging.LogLevelError
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	w := &vworld{ran: make(chan error, 1)}
	var err error
	w.wan, err = vnet.NewRouter(&vnet.RouterConfig{CIDR: "198.51.100.0/24", LoggerFactory: lf})
	must(err)
	srvNet, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{srvPrimary.String(), srvAlternate.String()}})
	must(err)
	must(w.wan.AddNet(srvNet))
	w.srvNet = srvNet
	if nat == nil {
		w.client, err = vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{openHost.String()}})
		must(err)
		must(w.wan.AddNet(w.client))
	} else {
		w.site, err = vnet.NewRouter(&vnet.RouterConfig{
			CIDR: "192.168.1.0/24", StaticIPs: []string{natExternal.String()}, NATType: nat, LoggerFactory: lf,
		})
		must(err)
		for _, f := range filters {
			w.site.AddChunkFilter(f)
		}
		must(w.wan.AddRouter(w.site))
		w.client, err = vnet.NewNet(&vnet.NetConfig{})
		must(err)
		must(w.site.AddNet(w.client))
	}
	must(w.wan.Start())
	cfg := stunserver.DefaultConfig()
	cfg.Net, cfg.Primary, cfg.Alternate, cfg.Logger = srvNet, srvPrimary, srvAlternate, quietLogger()
	w.srv, err = stunserver.New(cfg)
	must(err)
	go func() { w.ran <- w.srv.Run(context.Background()) }()
	return w
}

func (w *vworld) close(t *testing.T) {
	w.srv.Close()
	if err := <-w.ran; err != nil {
		t.Errorf("server Run: %v", err)
	}
	w.wan.Stop()
}

func (w *vworld) config() Config {
	c := DefaultConfig()
	c.Net, c.Server, c.Logger = w.client, w.srv.Addr().String(), quietLogger()
	return c
}

var vnetBehaviors = []struct {
	vnet vnet.EndpointDependencyType
	want Behavior
}{
	{vnet.EndpointIndependent, EndpointIndependent},
	{vnet.EndpointAddrDependent, AddressDependent},
	{vnet.EndpointAddrPortDependent, AddressAndPortDependent},
}

// TestDiscoverVNet classifies every mapping and filtering behaviour vnet
// simulates, and a host with no NAT at all.
func TestDiscoverVNet(t *testing.T) {
	for _, m := range vnetBehaviors {
		for _, f := range vnetBehaviors {
			t.Run(fmt.Sprintf("mapping %s filtering %s", m.want, f.want), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					w := newVWorld(t, &vnet.NATType{MappingBehavior: m.vnet, FilteringBehavior: f.vnet})
					defer w.close(t)
					rep, err := Discover(context.Background(), w.config())
					if err != nil {
						t.Fatal(err)
					}
					if rep.Mapping != m.want || rep.Filtering != f.want {
						t.Errorf("classified mapping %s, filtering %s; want %s, %s\n%s", rep.Mapping, rep.Filtering, m.want, f.want, rep)
					}
					if !rep.NAT || rep.External.Addr() != natExternal {
						t.Errorf("external address %v (NAT %v), want the NAT's %v", rep.External, rep.NAT, natExternal)
					}
					// vnet hands out external ports from 49152 up, never
					// the local port (5000-5999).
					if rep.PortPreserving {
						t.Errorf("port preservation reported behind vnet's NAT")
					}
					// vnet delivers a hairpinned packet when the filter
					// lets the NAT's own address through.
					if want := map[bool]Answer{true: Yes, false: No}[f.want == EndpointIndependent]; rep.Hairpinning != want {
						t.Errorf("hairpinning %s, want %s", rep.Hairpinning, want)
					}
					if rep.OtherAddress != w.srv.OtherAddr() {
						t.Errorf("OTHER-ADDRESS %v, want %v", rep.OtherAddress, w.srv.OtherAddr())
					}
				})
			})
		}
	}
	t.Run("no NAT", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			w := newVWorld(t, nil)
			defer w.close(t)
			rep, err := Discover(context.Background(), w.config())
			if err != nil {
				t.Fatal(err)
			}
			if rep.NAT || rep.External != rep.Local || !rep.PortPreserving {
				t.Errorf("a host on the WAN reported as behind a NAT:\n%s", rep)
			}
			if rep.Mapping != EndpointIndependent || rep.Filtering != EndpointIndependent || rep.Hairpinning != Yes {
				t.Errorf("an open host classified %s/%s/%s", rep.Mapping, rep.Filtering, rep.Hairpinning)
			}
		})
	})
}

// TestDiscoverServerGone shows the error when nothing answers.
func TestDiscoverServerGone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newVWorld(t, &vnet.NATType{})
		defer w.close(t)
		cfg := w.config()
		cfg.Server = netip.AddrPortFrom(srvPrimary, 9).String()
		start := time.Now()
		_, err := Discover(context.Background(), cfg)
		if err == nil {
			t.Fatal("Discover succeeded with no server")
		}
		if took := time.Since(start); took > 2*cfg.Timeout {
			t.Errorf("giving up took %v, more than twice the %v timeout", took, cfg.Timeout)
		}
	})
}

// plainSTUN runs a classic STUN server (RFC 8489 Binding only, the kind
// most public servers are) on the server host at port: it answers every
// Binding request to its source with XOR-MAPPED-ADDRESS and nothing else.
func (w *vworld) plainSTUN(t *testing.T, port uint16) netip.AddrPort {
	t.Helper()
	addr := netip.AddrPortFrom(srvPrimary, port)
	pc, err := w.srvNet.ListenPacket("udp4", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var req stun.Message
			if stun.Decode(buf[:n], &req) != nil || req.Type != stun.BindingRequest {
				continue
			}
			src, _ := addrPortOf(from)
			resp := stun.MustBuild(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
				&stun.XORMappedAddress{IP: src.Addr().AsSlice(), Port: int(src.Port())})
			pc.WriteTo(resp.Raw, from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return addr
}

// TestPlainSTUNServer runs the client against a server without RFC 5780:
// discovery still finds the external address and says why mapping and
// filtering are unknown; the lifetime measurement fails at once, saying
// that the server does not honour RESPONSE-PORT, rather than reading every
// probe as a dead binding.
func TestPlainSTUNServer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newVWorld(t, &vnet.NATType{MappingLifeTime: time.Hour})
		defer w.close(t)
		cfg := w.config()
		cfg.Server = w.plainSTUN(t, 4000).String()
		rep, err := Discover(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if rep.External.Addr() != natExternal || rep.Mapping != BehaviorUnknown || rep.Filtering != BehaviorUnknown || len(rep.Notes) == 0 {
			t.Errorf("against a plain STUN server:\n%s", rep)
		}
		start := time.Now()
		_, err = MeasureLifetime(context.Background(), cfg, DefaultLifetimeConfig())
		if err == nil || !strings.Contains(err.Error(), "RESPONSE-PORT") {
			t.Fatalf("MeasureLifetime = %v, want an error about RESPONSE-PORT", err)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("noticing took %v", took)
		}
	})
}
