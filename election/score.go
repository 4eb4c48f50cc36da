package election

import (
	"fmt"
	"time"
)

// Reachability is how the rest of the world can reach a peer, as nat/
// measured it. Higher is better.
type Reachability int

const (
	// ReachUnknown: not measured yet; ranks below everything measured.
	ReachUnknown Reachability = iota
	// ReachSymmetric: address- and port-dependent mapping; links across
	// the NAT need a relay or luck.
	ReachSymmetric
	// ReachEIM: endpoint-independent mapping; hole punching works.
	ReachEIM
	// ReachMapped: a port mapping (UPnP IGD, NAT-PMP, PCP) that was
	// verified from outside.
	ReachMapped
	// ReachPublic: a public address on the device itself.
	ReachPublic
)

var reachNames = [...]string{"unknown", "symmetric", "endpoint-independent", "mapped", "public"}

func (r Reachability) String() string {
	if r < 0 || int(r) >= len(reachNames) {
		return fmt.Sprintf("reachability(%d)", int(r))
	}
	return reachNames[r]
}

// MarshalText writes the name, so status JSON reads "public".
func (r Reachability) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads a name written by MarshalText.
func (r *Reachability) UnmarshalText(b []byte) error {
	for i, n := range reachNames {
		if n == string(b) {
			*r = Reachability(i)
			return nil
		}
	}
	return fmt.Errorf("unknown reachability %q", b)
}

// DeviceClass says how permanent a device is.
type DeviceClass string

const (
	ClassRouter  DeviceClass = "router"  // the home gateway: always on, on the path anyway
	ClassBoard   DeviceClass = "board"   // an always-on board (Raspberry Pi, NAS)
	ClassDesktop DeviceClass = "desktop" // on while someone works
	ClassLaptop  DeviceClass = "laptop"  // comes and goes
)

// Power is a device's power source.
type Power string

const (
	PowerMains   Power = "mains"
	PowerBattery Power = "battery"
)

// Capability is what a peer tells its site about itself. Score and
// Stability turn it into the two rankings the leader uses.
type Capability struct {
	Reachability Reachability `json:"reachability"`
	Class        DeviceClass  `json:"class"`
	Power        Power        `json:"power"`
	// Uptime of the daemon (not of the host).
	Uptime time.Duration `json:"uptime_ns"`
	// CPUs is the number of logical CPUs.
	CPUs int `json:"cpus"`
	// FreeMemoryMB is memory available to new work, in MiB.
	FreeMemoryMB int `json:"free_memory_mb"`
	// Load is the one-minute load average divided by CPUs.
	Load float64 `json:"load"`
}

// Validate rejects values that no device reports.
func (c Capability) Validate() error {
	switch c.Class {
	case ClassRouter, ClassBoard, ClassDesktop, ClassLaptop:
	default:
		return fmt.Errorf("device class %q is not router, board, desktop or laptop", c.Class)
	}
	switch c.Power {
	case PowerMains, PowerBattery:
	default:
		return fmt.Errorf("power %q is not mains or battery", c.Power)
	}
	if c.Reachability < ReachUnknown || c.Reachability > ReachPublic {
		return fmt.Errorf("reachability %d out of range", c.Reachability)
	}
	if c.Uptime < 0 || c.CPUs < 0 || c.FreeMemoryMB < 0 || c.Load < 0 {
		return fmt.Errorf("negative uptime, CPUs, memory or load")
	}
	return nil
}

// Score ranks a peer as a superpeer candidate. It is a sum of points:
//
//	reachability  public 4000, mapped 3000, endpoint-independent 2000,
//	              symmetric 1000, unknown 0
//	device class  router 300, board 250, desktop 150, laptop 50
//	power         mains 200, battery 0
//	uptime        <10 min 0, <1 h 40, <1 day 80, <1 week 120, more 150
//	CPUs          10 per logical CPU, at most 80
//	free memory   <32 MiB 0, <128 MiB 30, <512 MiB 60, more 80
//	load per CPU  <0.5 40, <1.0 20, more 0
//
// The parts other than reachability add up to at most 850, so reachability
// always decides first: a superpeer must hold links across the NAT, and
// that is what the NAT allows. Continuous inputs (uptime, memory, load) are
// counted in coarse steps so that the score, which is replicated, changes
// rarely. The result is deterministic: equal capabilities score equal.
func Score(c Capability) int {
	s := 0
	switch c.Reachability {
	case ReachPublic:
		s += 4000
	case ReachMapped:
		s += 3000
	case ReachEIM:
		s += 2000
	case ReachSymmetric:
		s += 1000
	}
	s += classPoints(c.Class)
	if c.Power == PowerMains {
		s += 200
	}
	s += uptimePoints(c.Uptime)
	s += min(max(c.CPUs, 0), 8) * 10
	switch {
	case c.FreeMemoryMB >= 512:
		s += 80
	case c.FreeMemoryMB >= 128:
		s += 60
	case c.FreeMemoryMB >= 32:
		s += 30
	}
	switch {
	case c.Load < 0.5:
		s += 40
	case c.Load < 1.0:
		s += 20
	}
	return s
}

func classPoints(c DeviceClass) int {
	switch c {
	case ClassRouter:
		return 300
	case ClassBoard:
		return 250
	case ClassDesktop:
		return 150
	case ClassLaptop:
		return 50
	}
	return 0
}

func uptimePoints(d time.Duration) int {
	switch {
	case d >= 7*24*time.Hour:
		return 150
	case d >= 24*time.Hour:
		return 120
	case d >= time.Hour:
		return 80
	case d >= 10*time.Minute:
		return 40
	}
	return 0
}

// VoterEligible says whether a peer may hold a vote: a full daemon on a
// mains-powered router, board or desktop. Laptops and desktop agents
// (RolePeer) come and go, and a voter that comes and goes costs the site
// its quorum.
func VoterEligible(role Role, c Capability) bool {
	return role == RoleFull && c.Power == PowerMains && c.Class != ClassLaptop
}

// Stability ranks voter candidates: device class first, then uptime. It
// leaves reachability out: a vote needs a device that stays, not one the
// Internet can reach.
func Stability(c Capability) int {
	s := classPoints(c.Class) * 10
	if c.Power == PowerMains {
		s += 1000
	}
	return s + uptimePoints(c.Uptime)
}
