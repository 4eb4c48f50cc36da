package election

import (
	"encoding/json"
	"testing"
	"time"
)

func TestScore(t *testing.T) {
	base := Capability{Class: ClassBoard, Power: PowerMains}
	with := func(f func(*Capability)) Capability {
		c := base
		f(&c)
		return c
	}
	cases := []struct {
		name string
		c    Capability
		want int
	}{
		{"bare board, reachability unknown", base, 250 + 200 + 40},
		{"public", with(func(c *Capability) { c.Reachability = ReachPublic }), 4000 + 490},
		{"mapped", with(func(c *Capability) { c.Reachability = ReachMapped }), 3000 + 490},
		{"endpoint-independent", with(func(c *Capability) { c.Reachability = ReachEIM }), 2000 + 490},
		{"symmetric", with(func(c *Capability) { c.Reachability = ReachSymmetric }), 1000 + 490},
		{"router", with(func(c *Capability) { c.Class = ClassRouter }), 300 + 200 + 40},
		{"desktop", with(func(c *Capability) { c.Class = ClassDesktop }), 150 + 200 + 40},
		{"laptop on battery", with(func(c *Capability) { c.Class, c.Power = ClassLaptop, PowerBattery }), 50 + 40},
		{"uptime 9m59s", with(func(c *Capability) { c.Uptime = 10*time.Minute - time.Second }), 490},
		{"uptime 10m", with(func(c *Capability) { c.Uptime = 10 * time.Minute }), 490 + 40},
		{"uptime 1h", with(func(c *Capability) { c.Uptime = time.Hour }), 490 + 80},
		{"uptime 1d", with(func(c *Capability) { c.Uptime = 24 * time.Hour }), 490 + 120},
		{"uptime 1w", with(func(c *Capability) { c.Uptime = 7 * 24 * time.Hour }), 490 + 150},
		{"4 CPUs", with(func(c *Capability) { c.CPUs = 4 }), 490 + 40},
		{"64 CPUs count as 8", with(func(c *Capability) { c.CPUs = 64 }), 490 + 80},
		{"31 MiB free", with(func(c *Capability) { c.FreeMemoryMB = 31 }), 490},
		{"32 MiB free", with(func(c *Capability) { c.FreeMemoryMB = 32 }), 490 + 30},
		{"128 MiB free", with(func(c *Capability) { c.FreeMemoryMB = 128 }), 490 + 60},
		{"512 MiB free", with(func(c *Capability) { c.FreeMemoryMB = 512 }), 490 + 80},
		{"load 0.5 per CPU", with(func(c *Capability) { c.Load = 0.5 }), 490 - 20},
		{"load 1.0 per CPU", with(func(c *Capability) { c.Load = 1.0 }), 490 - 40},
		{"everything best", Capability{Reachability: ReachPublic, Class: ClassRouter, Power: PowerMains,
			Uptime: 30 * 24 * time.Hour, CPUs: 8, FreeMemoryMB: 1024}, 4000 + 850},
	}
	for _, c := range cases {
		if got := Score(c.c); got != c.want {
			t.Errorf("%s: Score = %d, want %d", c.name, got, c.want)
		}
	}
}

func TestScoreReachabilityDecidesFirst(t *testing.T) {
	// The best device one reachability step down loses to the worst
	// device one step up.
	best := Capability{Reachability: ReachEIM, Class: ClassRouter, Power: PowerMains,
		Uptime: 365 * 24 * time.Hour, CPUs: 64, FreeMemoryMB: 1 << 20}
	worst := Capability{Reachability: ReachMapped, Class: ClassLaptop, Power: PowerBattery, Load: 9}
	for r := ReachUnknown; r < ReachPublic; r++ {
		best.Reachability, worst.Reachability = r, r+1
		if Score(best) >= Score(worst) {
			t.Errorf("best %s device scores %d, worst %s device %d", r, Score(best), r+1, Score(worst))
		}
	}
}

func TestVoterEligibilityAndStability(t *testing.T) {
	cases := []struct {
		role Role
		c    Capability
		want bool
	}{
		{RoleFull, capRouter, true},
		{RoleFull, capBoard, true},
		{RoleFull, capDesktop, true},
		{RoleFull, capLaptop, false},
		{RoleFull, Capability{Class: ClassLaptop, Power: PowerMains}, false},
		{RoleFull, Capability{Class: ClassBoard, Power: PowerBattery}, false},
		{RolePeer, capRouter, false},
	}
	for _, c := range cases {
		if got := VoterEligible(c.role, c.c); got != c.want {
			t.Errorf("VoterEligible(%s, %s on %s) = %v", c.role, c.c.Class, c.c.Power, got)
		}
	}
	// A week-old desktop is still less stable than a fresh router.
	old := Capability{Class: ClassDesktop, Power: PowerMains, Uptime: 30 * 24 * time.Hour}
	fresh := Capability{Class: ClassRouter, Power: PowerMains}
	if Stability(old) >= Stability(fresh) {
		t.Errorf("Stability(old desktop) %d >= Stability(fresh router) %d", Stability(old), Stability(fresh))
	}
}

func TestReachabilityJSON(t *testing.T) {
	b, err := json.Marshal(Capability{Reachability: ReachMapped, Class: ClassRouter, Power: PowerMains})
	if err != nil {
		t.Fatal(err)
	}
	var c Capability
	if err := json.Unmarshal(b, &c); err != nil || c.Reachability != ReachMapped {
		t.Fatalf("round trip of %s: %+v, %v", b, c, err)
	}
}

func TestConfigValidate(t *testing.T) {
	secret, err := NewSiteSecret()
	if err != nil {
		t.Fatal(err)
	}
	good := DefaultConfig()
	good.NodeID = "n1"
	good.Secret = secret
	good.Capability = capRouter
	if err := good.Validate(); err != nil {
		t.Fatalf("default config with ID and secret: %v", err)
	}
	cases := map[string]func(*Config){
		"NodeID":             func(c *Config) { c.NodeID = "" },
		"Secret":             func(c *Config) { c.Secret = nil },
		"Role":               func(c *Config) { c.Role = "boss" },
		"Capability":         func(c *Config) { c.Capability.Class = "toaster" },
		"MaxVoters":          func(c *Config) { c.MaxVoters = 2 },
		"SuperpeerCount":     func(c *Config) { c.SuperpeerCount = 0 },
		"ElectionTimeout":    func(c *Config) { c.ElectionTimeout = c.HeartbeatTimeout / 2 },
		"LeaderLeaseTimeout": func(c *Config) { c.LeaderLeaseTimeout = 2 * c.HeartbeatTimeout },
		"BootstrapWindow":    func(c *Config) { c.BootstrapWindow = c.AnnounceInterval / 2 },
		"AdvertiseAddr":      func(c *Config) { c.AdvertiseAddr = "0.0.0.0:5071" },
		"MulticastGroup":     func(c *Config) { c.MulticastGroup = "192.168.1.1" },
		"DeadMemberGrace":    func(c *Config) { c.DeadMemberGrace = c.DownAfter / 2 },
		"RefreshFlush":       func(c *Config) { c.RefreshFlush = -1 },
	}
	for field, breakIt := range cases {
		c := good
		breakIt(&c)
		err := c.Validate()
		ce, ok := err.(*ConfigError)
		if !ok || ce.Field != field {
			t.Errorf("breaking %s: Validate = %v", field, err)
		}
	}
}
