package probe

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/superpeer/superpeer/nat/stunserver"
	"github.com/superpeer/superpeer/netlab"
)

// serveOnWAN runs our STUN server on a lab WAN host's two addresses for
// the rest of the test.
func serveOnWAN(t *testing.T, h *netlab.Host) *stunserver.Server {
	t.Helper()
	n, err := h.Net()
	if err != nil {
		t.Fatal(err)
	}
	cfg := stunserver.DefaultConfig()
	cfg.Net, cfg.Primary, cfg.Alternate, cfg.Logger = n, h.Addrs[0], h.Addrs[1], quietLogger()
	srv, err := stunserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(context.Background()) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-ran; err != nil {
			t.Errorf("server Run: %v", err)
		}
	})
	return srv
}

func labConfig(t *testing.T, h *netlab.Host, srv *stunserver.Server) Config {
	t.Helper()
	n, err := h.Net()
	if err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.Net, c.Server, c.Logger = n, srv.Addr().String(), quietLogger()
	return c
}

// natdiscoveryVerdict reads the mapping and filtering lines of coturn's
// turnutils_natdiscovery.
var natdiscoveryVerdict = regexp.MustCompile(`NAT with (Endpoint Independent|Address Dependent|Address and Port Dependent) (Mapping|Filtering)!`)

func parseNatdiscovery(out string) (mapping, filtering Behavior) {
	mapping, filtering = BehaviorUnknown, BehaviorUnknown
	for _, m := range natdiscoveryVerdict.FindAllStringSubmatch(out, -1) {
		b := map[string]Behavior{
			"Endpoint Independent":       EndpointIndependent,
			"Address Dependent":          AddressDependent,
			"Address and Port Dependent": AddressAndPortDependent,
		}[m[1]]
		if m[2] == "Mapping" {
			mapping = b
		} else {
			filtering = b
		}
	}
	return mapping, filtering
}

// TestLabClassify runs our client behind the lab's two kernel NATs against
// our server on the WAN: the port-preserving NAT maps endpoint-
// independently and keeps ports, the fully random one maps per address
// and port and does not; both filter per address and port (Linux
// conntrack) and neither hairpins (the lab's ruleset has no hairpin NAT).
// coturn's turnutils_natdiscovery, run on the same LAN host against the
// same server, agrees on mapping and filtering.
func TestLabClassify(t *testing.T) {
	t.Parallel()
	natdiscovery, lookErr := exec.LookPath("turnutils_natdiscovery")
	if lookErr != nil && os.Getenv("CI") == "true" {
		t.Fatalf("turnutils_natdiscovery (Debian coturn) is missing: %v", lookErr)
	}
	lab := netlab.Start(t, netlab.Topology{Sites: []netlab.SiteConfig{
		{Name: "preserving", Mapping: netlab.PortPreserving},
		{Name: "random", Mapping: netlab.Random},
	}})
	srv := serveOnWAN(t, lab.WAN[0])
	want := map[netlab.Mapping]struct {
		mapping   Behavior
		preserved bool
	}{
		netlab.PortPreserving: {EndpointIndependent, true},
		netlab.Random:         {AddressAndPortDependent, false},
	}
	var wg sync.WaitGroup
	for _, site := range lab.Sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			w := want[site.Config.Mapping]
			rep, err := Discover(ctx, labConfig(t, site.LAN[0], srv))
			if err != nil {
				t.Errorf("%s: %v", site.Config.Name, err)
				return
			}
			if rep.Mapping != w.mapping || rep.Filtering != AddressAndPortDependent ||
				rep.PortPreserving != w.preserved || rep.Hairpinning != No ||
				!rep.NAT || rep.External.Addr() != site.External {
				t.Errorf("%s NAT: want mapping %s, filtering %s, port preserving %v, no hairpinning, external %v; got\n%s",
					site.Config.Name, w.mapping, AddressAndPortDependent, w.preserved, site.External, rep)
			}
			if lookErr != nil {
				t.Logf("turnutils_natdiscovery not installed, comparison skipped: %v", lookErr)
				return
			}
			out, err := site.LAN[0].Run(ctx, natdiscovery, "-m", "-f", "-p", fmt.Sprint(srv.Addr().Port()), srv.Addr().Addr().String())
			if err != nil {
				t.Errorf("%s: %v", site.Config.Name, err)
				return
			}
			m, f := parseNatdiscovery(out)
			if m != rep.Mapping || f != rep.Filtering {
				t.Errorf("%s NAT: turnutils_natdiscovery says mapping %s, filtering %s; we say %s, %s\n%s",
					site.Config.Name, m, f, rep.Mapping, rep.Filtering, out)
			}
		}()
	}
	wg.Wait()
}

// TestLabLifetime measures the binding lifetime behind two kernel NATs at
// once, one with (unreplied, stream) conntrack timeouts of (10 s, 30 s),
// the other (20 s, 60 s): each state's estimate is within 10 % of its
// timeout, never above it, and each state's measurement ends within twice
// its timeout.
func TestLabLifetime(t *testing.T) {
	t.Parallel()
	lab := netlab.Start(t, netlab.Topology{Sites: []netlab.SiteConfig{
		{Name: "short", Mapping: netlab.PortPreserving, UDPTimeout: 10 * time.Second, UDPStreamTimeout: 30 * time.Second},
		{Name: "long", Mapping: netlab.Random, UDPTimeout: 20 * time.Second, UDPStreamTimeout: 60 * time.Second},
	}})
	srv := serveOnWAN(t, lab.WAN[0])
	var wg sync.WaitGroup
	for _, site := range lab.Sites {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			rep, err := MeasureLifetime(ctx, labConfig(t, site.LAN[0], srv), DefaultLifetimeConfig())
			if err != nil {
				t.Errorf("%s: %v", site.Config.Name, err)
				return
			}
			t.Logf("%s site:\n%s", site.Config.Name, rep)
			for _, c := range []struct {
				b    Bound
				want time.Duration
			}{{rep.Stream, site.Config.UDPStreamTimeout}, {rep.Unreplied, site.Config.UDPTimeout}} {
				b := c.b
				if !b.Measured() {
					t.Errorf("%s site, %s state: not measured: %s", site.Config.Name, b.State, b.Err)
					continue
				}
				// The estimate is a lower bound; conntrack counts in
				// jiffies, hence the small slack above.
				if b.Estimate() < c.want*9/10 || b.Estimate() > c.want+50*time.Millisecond {
					t.Errorf("%s site, %s state: estimate %v for a %v timeout", site.Config.Name, b.State, b.Estimate(), c.want)
				}
				if b.Took > 2*c.want {
					t.Errorf("%s site, %s state: measuring a %v timeout took %v", site.Config.Name, b.State, c.want, b.Took)
				}
			}
		}()
	}
	wg.Wait()
}
