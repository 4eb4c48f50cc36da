package nat

import "time"

// LifetimeSource is where the keeper learns how long the NAT keeps an idle
// UDP binding. The binding-lifetime measurement (RFC 5780 section 4.6) is
// the production source; tests give a fixed one.
//
// Lifetime returns the estimate of the lifetime of an established flow
// (one that has exchanged traffic both ways, the state keepalives keep a
// flow in), its uncertainty (the keeper subtracts it, so a wide estimate
// costs keepalives, never pinholes), and whether it is a measurement at all;
// until it is, the keeper uses its conservative default.
//
// ObserveRemap tells the source that a keepalive found a binding replaced
// after the flow had been idle for idle: the lifetime is at most idle, and
// the source should lower its estimate at once. A remap after an idle far
// below the estimate may be a router reset rather than a timeout; the
// source decides.
//
// Both are called from the keeper's goroutine and must not block.
type LifetimeSource interface {
	Lifetime() (est, uncertainty time.Duration, measured bool)
	ObserveRemap(idle time.Duration)
}

// FixedLifetime is a LifetimeSource that always reports the same measured
// lifetime: a NAT whose timeout is known from its configuration.
type FixedLifetime time.Duration

// Lifetime reports the fixed lifetime, exactly, as measured.
func (f FixedLifetime) Lifetime() (time.Duration, time.Duration, bool) {
	return time.Duration(f), 0, f > 0
}

// ObserveRemap ignores remaps: a configured timeout does not change.
func (FixedLifetime) ObserveRemap(time.Duration) {}
