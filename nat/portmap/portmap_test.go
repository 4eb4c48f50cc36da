package portmap

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

func t0ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var lanSocket = netip.MustParseAddrPort("127.0.0.1:5060")

func noMapping(t *testing.T, err error) *NoMappingError {
	t.Helper()
	var nm *NoMappingError
	if !errors.As(err, &nm) {
		t.Fatalf("error %v (%T) is not a NoMappingError", err, err)
	}
	return nm
}

// TestUPnPQuirks drives the UPnP mapping through what real routers answer.
func TestUPnPQuirks(t *testing.T) {
	const lease = 3600
	for _, tc := range []struct {
		name     string
		codes    []int  // answered to AddPortMapping in turn
		external string // GetExternalIPAddress
		hook     bool   // ExternalAddr set
		// outcome
		wantCode      int // NoMappingError code; -1 any NoMappingError
		wantLeases    []string
		wantPermanent bool
		wantPorts     int // distinct external ports asked for
		wantExternal  string
	}{
		{name: "plain", wantLeases: []string{"3600"}, wantPorts: 1, wantExternal: "198.51.100.7"},
		{name: "725 only permanent leases", codes: []int{725}, wantLeases: []string{"3600", "0"}, wantPermanent: true, wantPorts: 1, wantExternal: "198.51.100.7"},
		{name: "402 invalid args with a lease", codes: []int{402}, wantLeases: []string{"3600", "0"}, wantPermanent: true, wantPorts: 1, wantExternal: "198.51.100.7"},
		{name: "402 always", codes: []int{402, 402}, wantCode: 402, wantLeases: []string{"3600", "0"}},
		{name: "718 conflict twice", codes: []int{718, 718}, wantLeases: []string{"3600", "3600", "3600"}, wantPorts: 3, wantExternal: "198.51.100.7"},
		{name: "718 every time", codes: []int{718, 718, 718, 718, 718, 718}, wantCode: 718, wantLeases: []string{"3600", "3600", "3600", "3600", "3600"}, wantPorts: 5},
		{name: "external 0.0.0.0", external: "0.0.0.0", wantCode: -1},
		{name: "external empty", external: "", wantCode: -1},
		{name: "external 0.0.0.0, asked by STUN", external: "0.0.0.0", hook: true, wantLeases: []string{"3600"}, wantPorts: 1, wantExternal: "203.0.113.9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGateway(t)
			g.set(func(g *fakeGateway) {
				g.addCodes = tc.codes
				if tc.external != "" || strings.HasPrefix(tc.name, "external") {
					g.upnpExternal = tc.external
				}
			})
			c := g.client(func(cfg *Config) {
				cfg.Lease = lease * time.Second
				if tc.hook {
					cfg.ExternalAddr = func(context.Context) (netip.Addr, error) { return netip.MustParseAddr("203.0.113.9"), nil }
				}
			})
			m, err := c.Map(t0ctx(t), UPnP, lanSocket, 0)
			g.mu.Lock()
			adds := g.adds
			g.mu.Unlock()
			var leases []string
			ports := map[string]bool{}
			for _, a := range adds {
				leases = append(leases, a["NewLeaseDuration"])
				ports[a["NewExternalPort"]] = true
				if a["NewInternalClient"] != "127.0.0.1" || a["NewInternalPort"] != "5060" || a["NewProtocol"] != "UDP" {
					t.Errorf("AddPortMapping arguments %v", a)
				}
			}
			if fmt.Sprint(leases) != fmt.Sprint(tc.wantLeases) {
				t.Errorf("leases asked %v, want %v", leases, tc.wantLeases)
			}
			if tc.wantCode != 0 {
				if err == nil {
					t.Fatalf("mapped %v, want no mapping", m.External())
				}
				nm := noMapping(t, err)
				if nm.Protocol != UPnP || (tc.wantCode > 0 && nm.Code != tc.wantCode) {
					t.Fatalf("error %v: protocol %s code %d, want upnp %d", err, nm.Protocol, nm.Code, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(ports) != tc.wantPorts {
				t.Errorf("asked for %d external ports (%v), want %d", len(ports), ports, tc.wantPorts)
			}
			if got := m.External().Addr().String(); got != tc.wantExternal {
				t.Errorf("external address %s, want %s", got, tc.wantExternal)
			}
			last := adds[len(adds)-1]["NewExternalPort"]
			if fmt.Sprint(m.External().Port()) != last {
				t.Errorf("mapping says port %d, the router was asked for %s", m.External().Port(), last)
			}
			if m.GoodUntil().IsZero() != tc.wantPermanent {
				t.Errorf("permanent=%v, want %v", m.GoodUntil().IsZero(), tc.wantPermanent)
			}
			if tc.wantPermanent && m.RenewAfter().IsZero() {
				t.Error("a permanent mapping is never refreshed")
			}
			if err := m.Release(t0ctx(t)); err != nil {
				t.Fatal(err)
			}
			g.mu.Lock()
			dels := g.deletes
			g.mu.Unlock()
			if len(dels) != 1 || dels[0]["NewExternalPort"] != last {
				t.Fatalf("release sent %v", dels)
			}
		})
	}
}

// TestUPnPv2PicksPort: on an IGD v2 a new mapping goes through
// AddAnyPortMapping, and the port the router reserved is the mapping's.
func TestUPnPv2PicksPort(t *testing.T) {
	g := newFakeGateway(t)
	g.set(func(g *fakeGateway) { g.v2, g.reserved = true, "40000" })
	c := g.client(nil)
	a, err := c.Probe(t0ctx(t))
	if err != nil || a.UPnPService != "WANIPConnection:2" {
		t.Fatalf("probe %+v, %v", a, err)
	}
	m, err := c.Map(t0ctx(t), UPnP, lanSocket, 0)
	if err != nil {
		t.Fatal(err)
	}
	if m.External().Port() != 40000 {
		t.Fatalf("mapped %v, want the reserved port 40000", m.External())
	}
	n, err := c.renew(t0ctx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	last := g.adds[len(g.adds)-1]
	g.mu.Unlock()
	if n.External() != m.External() || last["NewExternalPort"] != "40000" {
		t.Fatalf("renewal asked for %v and got %v, want the same port", last, n.External())
	}
}

// TestSSDPUntrusted: an SSDP answer is anyone's on the LAN; only URLs on
// the gateway's subnet are followed, within size and time limits, and the
// probe gives up quickly.
func TestSSDPUntrusted(t *testing.T) {
	for _, tc := range []struct {
		name     string
		location func(g *fakeGateway) string
		desc     func(g *fakeGateway) func(http.ResponseWriter, *http.Request)
	}{
		{name: "off-subnet LOCATION", location: func(*fakeGateway) string { return "http://192.0.2.1:5000/rootDesc.xml" }},
		{name: "hostname LOCATION", location: func(g *fakeGateway) string {
			return strings.Replace(g.http.URL, "127.0.0.1", "localhost", 1) + "/rootDesc.xml"
		}},
		{name: "https LOCATION", location: func(g *fakeGateway) string {
			return strings.Replace(g.http.URL, "http:", "https:", 1) + "/rootDesc.xml"
		}},
		{name: "oversize description", desc: func(*fakeGateway) func(http.ResponseWriter, *http.Request) {
			return func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, igdDescription, "<!--"+strings.Repeat("x", 200<<10)+"-->")
			}
		}},
		{name: "slow description", desc: func(*fakeGateway) func(http.ResponseWriter, *http.Request) {
			return func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusOK)
				w.(http.Flusher).Flush()
				// A router that never finishes: wait until the client
				// gives up (or long past any limit).
				select {
				case <-r.Context().Done():
				case <-time.After(5 * time.Second):
				}
			}
		}},
		{name: "redirect off-subnet", desc: func(*fakeGateway) func(http.ResponseWriter, *http.Request) {
			return func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Location", "http://192.0.2.1:5000/rootDesc.xml")
				w.WriteHeader(http.StatusFound)
			}
		}},
		{name: "URLBase off-subnet", desc: func(*fakeGateway) func(http.ResponseWriter, *http.Request) {
			return func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, igdDescription, "<URLBase>http://192.0.2.1:5000/</URLBase>")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGateway(t)
			g.set(func(g *fakeGateway) {
				g.pmpOff = true
				if tc.location != nil {
					g.location = tc.location(g)
				}
				if tc.desc != nil {
					g.description = tc.desc(g)
				}
			})
			c := g.client(nil)
			start := time.Now()
			a, err := c.Probe(t0ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			if a.UPnP {
				// Only the URLBase case gets this far: the SOAP call must
				// still be refused.
				if _, err := c.Map(t0ctx(t), UPnP, lanSocket, 0); err == nil {
					t.Fatal("mapped through an IGD whose URLs leave the subnet")
				}
			}
			g.mu.Lock()
			adds := len(g.adds)
			g.mu.Unlock()
			if adds != 0 {
				t.Fatalf("%d AddPortMapping requests reached anything", adds)
			}
			if took > c.cfg.ProbeTimeout+time.Second {
				t.Fatalf("probe took %v with a %v limit", took, c.cfg.ProbeTimeout)
			}
		})
	}
	t.Run("trusted answer works", func(t *testing.T) {
		g := newFakeGateway(t)
		c := g.client(nil)
		a, err := c.Probe(t0ctx(t))
		if err != nil || !a.UPnP || a.UPnPService != "WANIPConnection:1" {
			t.Fatalf("probe %+v, %v", a, err)
		}
	})
}

// TestProbeFindsEachProtocol asks all three in parallel: a full gateway,
// a NAT-PMP-only one (it answers PCP with "unsupported version"), and a
// silent one, which costs one probe timeout, not three.
func TestProbeFindsEachProtocol(t *testing.T) {
	for _, tc := range []struct {
		name            string
		set             func(g *fakeGateway)
		upnp, pmp, pcp  bool
		wantExternalSet bool
	}{
		{name: "all", set: func(*fakeGateway) {}, upnp: true, pmp: true, pcp: true, wantExternalSet: true},
		{name: "NAT-PMP only", set: func(g *fakeGateway) { g.pcpOff, g.upnpOff = true, true }, pmp: true, wantExternalSet: true},
		{name: "silent", set: func(g *fakeGateway) { g.pcpOff, g.upnpOff, g.pmpOff = true, true, true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGateway(t)
			g.set(tc.set)
			if tc.name == "silent" {
				g.pmp.Close() // nothing answers at all
			}
			c := g.client(nil)
			start := time.Now()
			a, err := c.Probe(t0ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took > c.cfg.ProbeTimeout+500*time.Millisecond {
				t.Errorf("probe took %v, limit %v", took, c.cfg.ProbeTimeout)
			}
			if a.UPnP != tc.upnp || a.PMP != tc.pmp || a.PCP != tc.pcp {
				t.Fatalf("probe %+v, want upnp %v pmp %v pcp %v", a, tc.upnp, tc.pmp, tc.pcp)
			}
			if a.External.IsValid() != tc.wantExternalSet {
				t.Fatalf("external %v", a.External)
			}
			if tc.name == "NAT-PMP only" {
				m, err := c.MapAny(t0ctx(t), lanSocket, nil, 0)
				if err != nil || m.Protocol() != PMP {
					t.Fatalf("MapAny on a NAT-PMP-only gateway: %v, %v", m, err)
				}
			}
			if tc.name == "silent" {
				_, err := c.MapAny(t0ctx(t), lanSocket, nil, 0)
				noMapping(t, err)
			}
		})
	}
}

func TestPMP(t *testing.T) {
	g := newFakeGateway(t)
	c := g.client(func(cfg *Config) { cfg.Lease = 600 * time.Second })
	before := time.Now()
	m, err := c.Map(t0ctx(t), PMP, lanSocket, 0)
	if err != nil {
		t.Fatal(err)
	}
	if m.External() != netip.MustParseAddrPort("198.51.100.7:5060") || m.Internal() != lanSocket {
		t.Fatalf("mapping %v -> %v", m.External(), m.Internal())
	}
	if d := m.GoodUntil().Sub(before); d < 599*time.Second || d > 601*time.Second {
		t.Fatalf("good for %v, want the 600 s lease", d)
	}
	if d := m.RenewAfter().Sub(before); d < 299*time.Second || d > 301*time.Second {
		t.Fatalf("renew after %v, want half the lease", d)
	}
	if err := m.Release(t0ctx(t)); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	last := g.pmpRequests[len(g.pmpRequests)-1]
	g.mu.Unlock()
	if last[1] != pmpOpMapUDP || binary.BigEndian.Uint16(last[6:]) != 0 || binary.BigEndian.Uint32(last[8:]) != 0 {
		t.Fatalf("release sent %x, want external port 0 and lifetime 0", last)
	}

	g.set(func(g *fakeGateway) { g.external = netip.IPv4Unspecified() })
	_, err = c.Map(t0ctx(t), PMP, lanSocket, 0)
	if nm := noMapping(t, err); !strings.Contains(nm.Error(), "0.0.0.0") {
		t.Fatalf("error for a gateway without external address: %v", err)
	}

	g.set(func(g *fakeGateway) { g.external, g.pmpCode = netip.MustParseAddr("198.51.100.7"), 2 })
	_, err = c.Map(t0ctx(t), PMP, lanSocket, 0)
	if nm := noMapping(t, err); nm.Code != 2 || !strings.Contains(err.Error(), "NotAuthorized") {
		t.Fatalf("refused mapping: %v", err)
	}
}

func TestPCP(t *testing.T) {
	g := newFakeGateway(t)
	g.set(func(g *fakeGateway) { g.wrongNonce = true; g.pcpLifetime = 120 })
	c := g.client(func(cfg *Config) { cfg.Lease = time.Hour })
	m, err := c.Map(t0ctx(t), PCP, lanSocket, 0)
	if err != nil {
		t.Fatal(err)
	}
	if m.External() != netip.MustParseAddrPort("198.51.100.7:5060") {
		t.Fatalf("mapping %v: an answer with another nonce was taken", m.External())
	}
	if d := time.Until(m.GoodUntil()); d > 121*time.Second || d < 110*time.Second {
		t.Fatalf("good for %v, want the 120 s the server granted", d)
	}
	n, err := c.renew(t0ctx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Release(t0ctx(t)); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	reqs := g.pcpRequests
	g.mu.Unlock()
	if len(reqs) != 3 {
		t.Fatalf("%d PCP requests, want map, renew, release", len(reqs))
	}
	nonce := string(reqs[0][24:36])
	for i, r := range reqs {
		if string(r[24:36]) != nonce {
			t.Errorf("request %d has another nonce: renewals and release must reuse it", i)
		}
		if netip.AddrFrom16([16]byte(r[8:24])).Unmap() != lanSocket.Addr() {
			t.Errorf("request %d names client %v", i, netip.AddrFrom16([16]byte(r[8:24])))
		}
	}
	if life := binary.BigEndian.Uint32(reqs[2][4:]); life != 0 {
		t.Fatalf("release asked for lifetime %d", life)
	}
	if binary.BigEndian.Uint16(reqs[1][24+18:]) != m.External().Port() {
		t.Fatal("renewal did not suggest the mapped port")
	}

	g.set(func(g *fakeGateway) { g.pcpCode = 8 })
	_, err = c.Map(t0ctx(t), PCP, lanSocket, 0)
	if nm := noMapping(t, err); nm.Code != 8 || !strings.Contains(err.Error(), "NO_RESOURCES") {
		t.Fatalf("refused mapping: %v", err)
	}
}

// TestEpoch follows RFC 6886 and RFC 6887's rules for noticing a gateway
// that rebooted.
func TestEpoch(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		p           Protocol
		first, next uint32
		elapsed     time.Duration
		lost        bool
	}{
		{PCP, 1000, 1060, time.Minute, false},
		{PCP, 1000, 1001, 0, false},
		{PCP, 1000, 998, 0, true},                 // went back
		{PCP, 1000, 20, time.Minute, true},        // rebooted
		{PCP, 1000, 1010, 10 * time.Minute, true}, // server clock far behind ours
		{PMP, 1000, 1060, time.Minute, false},
		{PMP, 1000, 1051, time.Minute, false}, // 7/8 of 60 s, less 2 s, is allowed
		{PMP, 1000, 30, time.Minute, true},
	} {
		var e epoch
		e.observe(tc.p, tc.first, at)
		if got := e.observe(tc.p, tc.next, at.Add(tc.elapsed)); got != tc.lost {
			t.Errorf("%s epoch %d then %d after %v: lost=%v, want %v", tc.p, tc.first, tc.next, tc.elapsed, got, tc.lost)
		}
	}
}

// TestHeldRecreatesDeadMappings: a held mapping that stops forwarding
// (verification fails) is removed and made again; one the gateway forgot
// (its epoch went back, seen at renewal) is made again at once.
func TestHeldRecreatesDeadMappings(t *testing.T) {
	g := newFakeGateway(t)
	c := g.client(func(cfg *Config) { cfg.Lease = 4 * time.Second })
	var mu sync.Mutex
	forwarding := true
	checks := 0
	v := VerifierFunc(func(ctx context.Context, ext netip.AddrPort) error {
		mu.Lock()
		defer mu.Unlock()
		checks++
		if !forwarding {
			forwarding = true // made again: forwards
			return errors.New("nothing arrived")
		}
		return nil
	})
	changes := make(chan MappingStatus, 64)
	h, err := c.Hold(lanSocket, HoldOptions{Protocols: []Protocol{PMP}, Verifier: v, OnChange: func(s MappingStatus) { changes <- s }})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, changes, func(s MappingStatus) bool { return s.Active && s.Verified })
	mu.Lock()
	forwarding = false
	mu.Unlock()
	s := waitFor(t, changes, func(s MappingStatus) bool { return s.Recreations == 1 && s.Verified })
	if s.VerifyFailures != 1 {
		t.Fatalf("status %+v", s)
	}
	g.mu.Lock()
	var deletes int
	for _, r := range g.pmpRequests {
		if len(r) == 12 && binary.BigEndian.Uint32(r[8:]) == 0 {
			deletes++
		}
	}
	g.mu.Unlock()
	if deletes != 1 {
		t.Fatalf("%d deletions sent for a dead mapping, want 1 before making it again", deletes)
	}

	// The gateway reboots: its epoch restarts; the renewal at half the
	// 4 s lease sees it.
	g.set(func(g *fakeGateway) { g.epoch = 3 })
	waitFor(t, changes, func(s MappingStatus) bool { return s.Recreations == 2 && s.Verified })

	if err := h.Close(t0ctx(t)); err != nil {
		t.Fatal(err)
	}
	if s := h.Status(); s.Active {
		t.Fatalf("active after Close: %+v", s)
	}
	g.mu.Lock()
	last := g.pmpRequests[len(g.pmpRequests)-1]
	g.mu.Unlock()
	if binary.BigEndian.Uint32(last[8:]) != 0 {
		t.Fatal("Close did not release the mapping")
	}
}

func waitFor(t *testing.T, ch <-chan MappingStatus, ok func(MappingStatus) bool) MappingStatus {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case s := <-ch:
			if ok(s) {
				return s
			}
		case <-deadline:
			t.Fatal("held mapping never reached the state")
		}
	}
}

// TestCloseReleasesEverything: every mapping made is released on Close.
func TestCloseReleasesEverything(t *testing.T) {
	g := newFakeGateway(t)
	c := g.client(nil)
	for i, p := range []Protocol{UPnP, PMP, PCP} {
		if _, err := c.Map(t0ctx(t), p, netip.AddrPortFrom(lanSocket.Addr(), uint16(7000+i)), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(t0ctx(t)); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.deletes) != 1 {
		t.Errorf("UPnP deletions: %v", g.deletes)
	}
	last := g.pmpRequests[len(g.pmpRequests)-1]
	if binary.BigEndian.Uint32(last[8:]) != 0 {
		t.Error("NAT-PMP mapping not released")
	}
	lastPCP := g.pcpRequests[len(g.pcpRequests)-1]
	if binary.BigEndian.Uint32(lastPCP[4:]) != 0 {
		t.Error("PCP mapping not released")
	}
	if _, err := c.Map(t0ctx(t), PMP, lanSocket, 0); err == nil {
		t.Error("a closed client still maps")
	}
}

func TestConfigValidate(t *testing.T) {
	g := newFakeGateway(t)
	base := g.client(nil).cfg
	for name, mod := range map[string]func(*Config){
		"no Net":           func(c *Config) { c.Net = nil },
		"1 s lease":        func(c *Config) { c.Lease = time.Second },
		"tiny cap":         func(c *Config) { c.MaxDescription = 10 },
		"unknown protocol": func(c *Config) { c.Protocols = []Protocol{"natpnp"} },
	} {
		cfg := base
		mod(&cfg)
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
