package probe

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pion/transport/v5/vnet"
)

// conntrack is a vnet chunk filter on a site's router that keeps UDP
// flows the way Linux conntrack does: a flow lives for the unreplied
// timeout after each packet until a packet passes after the first reply
// and more than 2 s into the flow, then for the stream timeout. A packet
// from the WAN with no live flow is dropped.
type conntrack struct {
	unreplied, stream time.Duration
	lan               netip.Prefix

	mu    sync.Mutex // guards following
	flows map[[2]netip.AddrPort]*ctFlow
}

type ctFlow struct {
	created, expires time.Time
	seenReply        bool
}

func newConntrack(unreplied, stream time.Duration) *conntrack {
	return &conntrack{unreplied: unreplied, stream: stream, lan: netip.MustParsePrefix("192.168.1.0/24"),
		flows: map[[2]netip.AddrPort]*ctFlow{}}
}

func (ct *conntrack) filter(c vnet.Chunk) bool {
	if c.Network() != "udp" {
		return true
	}
	src, _ := addrPortOf(c.SourceAddr())
	dst, _ := addrPortOf(c.DestinationAddr())
	var key [2]netip.AddrPort
	var reply bool
	switch {
	case ct.lan.Contains(src.Addr()) && !ct.lan.Contains(dst.Addr()):
		key = [2]netip.AddrPort{src, dst}
	case ct.lan.Contains(dst.Addr()) && !ct.lan.Contains(src.Addr()):
		key, reply = [2]netip.AddrPort{dst, src}, true
	default:
		return true
	}
	now := time.Now() // the synctest bubble's time, as vnet's
	ct.mu.Lock()
	defer ct.mu.Unlock()
	f := ct.flows[key]
	if f != nil && now.After(f.expires) {
		delete(ct.flows, key)
		f = nil
	}
	if f == nil {
		if reply {
			return false
		}
		f = &ctFlow{created: now}
		ct.flows[key] = f
	}
	timeout := ct.unreplied
	if f.seenReply && now.Sub(f.created) > 2*time.Second {
		timeout = ct.stream
	}
	f.expires = now.Add(timeout)
	if reply {
		f.seenReply = true
	}
	return true
}

// checkBound asserts what a keeper relies on: the estimate is never above
// the real lifetime, the interval holds it and is narrow, and the
// measurement took less than twice the lifetime.
func checkBound(t *testing.T, b Bound, want time.Duration, state State) {
	t.Helper()
	if !b.Measured() || b.State != state {
		t.Fatalf("%s: not measured: %+v", state, b)
	}
	// The emulated NAT refreshes a flow on every packet of it, and vnet
	// delivers in steps of its own: a binding can outlive its timeout by a
	// delivery step as the probe sees it. 5% is well inside the keeper's
	// safety margin (and the lab measures real kernel NATs within 10%).
	if b.Alive > want+want/20 || b.Dead <= want {
		t.Errorf("%s lifetime %v: measured alive at %v, dead at %v", state, want, b.Alive, b.Dead)
	}
	if u := b.Uncertainty(); u > want/20 {
		t.Errorf("%s lifetime %v: uncertainty %v is more than 5%%", state, want, u)
	}
	if b.Took > 2*want {
		t.Errorf("%s lifetime %v: measuring took %v, more than twice the lifetime", state, want, b.Took)
	}
}

// TestLifetimeVNet measures vnet's mapping lifetime, which every outbound
// packet refreshes: both states read the same lifetime.
func TestLifetimeVNet(t *testing.T) {
	for _, life := range []time.Duration{10 * time.Second, 45 * time.Second} {
		t.Run(life.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newVWorld(t, &vnet.NATType{MappingBehavior: vnet.EndpointIndependent,
					FilteringBehavior: vnet.EndpointAddrPortDependent, MappingLifeTime: life})
				defer w.close(t)
				rep, err := MeasureLifetime(context.Background(), w.config(), DefaultLifetimeConfig())
				if err != nil {
					t.Fatal(err)
				}
				checkBound(t, rep.Stream, life, StateStream)
				checkBound(t, rep.Unreplied, life, StateUnreplied)
				if rep.External != natExternal {
					t.Errorf("external address %v, want %v", rep.External, natExternal)
				}
			})
		})
	}
}

// TestLifetimeConntrackStates measures a NAT that keeps flows as Linux
// conntrack does, with 10 s unreplied and 30 s stream timeouts, and finds
// each state's timeout.
func TestLifetimeConntrackStates(t *testing.T) {
	for _, m := range []vnet.EndpointDependencyType{vnet.EndpointIndependent, vnet.EndpointAddrPortDependent} {
		synctest.Test(t, func(t *testing.T) {
			ct := newConntrack(10*time.Second, 30*time.Second)
			w := newVWorld(t, &vnet.NATType{MappingBehavior: m, FilteringBehavior: vnet.EndpointAddrPortDependent,
				MappingLifeTime: time.Hour}, ct.filter)
			defer w.close(t)
			rep, err := MeasureLifetime(context.Background(), w.config(), DefaultLifetimeConfig())
			if err != nil {
				t.Fatal(err)
			}
			checkBound(t, rep.Stream, 30*time.Second, StateStream)
			checkBound(t, rep.Unreplied, 10*time.Second, StateUnreplied)
			out := rep.String()
			for _, want := range []string{"stream", "unreplied", "alive at", "dead at"} {
				if !strings.Contains(out, want) {
					t.Errorf("the report for people lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// TestLifetimeBeyondMax reports a binding that outlives the longest probe
// as lasting at least that long.
func TestLifetimeBeyondMax(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newVWorld(t, &vnet.NATType{MappingLifeTime: time.Hour})
		defer w.close(t)
		lc := DefaultLifetimeConfig()
		lc.Max = 20 * time.Second
		lc.States = []State{StateStream}
		rep, err := MeasureLifetime(context.Background(), w.config(), lc)
		if err != nil {
			t.Fatal(err)
		}
		if b := rep.Stream; !b.Measured() || b.Alive != lc.Max || b.Dead != 0 || b.Uncertainty() != 0 {
			t.Fatalf("a 1 h binding probed up to %v: %+v", lc.Max, b)
		}
		if !strings.Contains(rep.String(), "≥ 20.0s") {
			t.Errorf("the report does not say the lifetime is at least the maximum:\n%s", rep)
		}
		if rep.Unreplied.Measured() {
			t.Errorf("the unreplied state was not asked for but is reported measured")
		}
	})
}

func TestLifetimeConfigValidate(t *testing.T) {
	if err := DefaultLifetimeConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*LifetimeConfig){
		"min above max":     func(c *LifetimeConfig) { c.Min = c.Max },
		"step 1":            func(c *LifetimeConfig) { c.Step = 1 },
		"stream after 2 s":  func(c *LifetimeConfig) { c.StreamAfter = 2 * time.Second },
		"no states":         func(c *LifetimeConfig) { c.States = nil },
		"unknown state":     func(c *LifetimeConfig) { c.States = []State{StateUnknown} },
		"too many rungs":    func(c *LifetimeConfig) { c.Min, c.MinStep, c.Step = time.Millisecond, time.Millisecond, 1.0001 },
		"negative lead":     func(c *LifetimeConfig) { c.Lead = -1 },
		"no probe wait":     func(c *LifetimeConfig) { c.ProbeWait = 0 },
		"too much refining": func(c *LifetimeConfig) { c.Refine = 100 },
	} {
		c := DefaultLifetimeConfig()
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
