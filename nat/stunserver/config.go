package stunserver

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/pion/transport/v5"

	"github.com/superpeer/superpeer/nat/clock"
)

// Config is the server's configuration. Start from DefaultConfig and set
// the addresses.
type Config struct {
	// Net opens the sockets; nil means the host's own network (stdnet).
	Net transport.Net
	// Clock drives the per-source rate limit; nil means the wall clock.
	Clock clock.Clock
	// Logger gets one line when the server starts and one when it stops;
	// nil means slog.Default().
	Logger *slog.Logger

	// Primary is the address clients are given (host:Port). Required, and
	// it must be an address of the host: responses leave from it.
	Primary netip.Addr
	// Alternate is the second address of the host, needed for RFC 5780
	// behaviour discovery (CHANGE-REQUEST change-IP, OTHER-ADDRESS). When it
	// is the zero Addr the server listens on Primary:Port only, leaves out
	// OTHER-ADDRESS and answers a CHANGE-REQUEST that asks for a change with
	// 420; plain Binding, RESPONSE-PORT (lifetime discovery) and PADDING
	// still work.
	Alternate netip.Addr
	// Port is the primary port (3478, the STUN port). 0 picks a free port.
	Port uint16
	// AltPort is the alternate port of CHANGE-REQUEST change-port (3479).
	// 0 picks a free port. Unused without Alternate.
	AltPort uint16

	// MaxPadding caps the PADDING of a response, in bytes. A response
	// carries PADDING only when its request did, and never longer than the
	// request's, so PADDING cannot make the server an amplifier (RFC 5780
	// asks for MTU-sized padding; that would turn a 28-byte request into a
	// 1500-byte response). 0 turns response padding off; at most 4096.
	// Requests larger than 8 KiB are dropped.
	MaxPadding int
	// RatePerSource is how many responses per second one source IP address
	// gets on average; requests beyond it are dropped silently. With a
	// spoofed source address the victim is that address, and RESPONSE-PORT
	// lets the attacker pick the victim's port, so the limit is per IP
	// address, whatever the port.
	RatePerSource float64
	// Burst is how many responses a source may get at once. Behaviour
	// discovery sends about 10 requests at once and lifetime measurement
	// primes tens of sockets in its first seconds.
	Burst int
	// MaxSources bounds the rate limiter's table. When it is full, sources
	// whose bucket has refilled are forgotten; if none has, requests from
	// new sources are dropped until one does.
	MaxSources int
	// Software is the SOFTWARE attribute of responses; empty leaves it out.
	Software string
}

// DefaultConfig returns the defaults: ports 3478 and 3479, response padding
// up to 1500 bytes, 100 responses per second per source with bursts of 200
// (a lifetime measurement peaks near 20 a second, and several peers of one
// site share its address), at most about 10 kB/s towards any victim,
// 10000 tracked sources. Primary (and, for RFC 5780, Alternate) must still
// be set.
func DefaultConfig() Config {
	return Config{
		Port:          3478,
		AltPort:       3479,
		MaxPadding:    1500,
		RatePerSource: 100,
		Burst:         200,
		MaxSources:    10000,
	}
}

// ErrConfig is wrapped by every error of Validate.
var ErrConfig = errors.New("stunserver: invalid config")

// maxPadding is the largest MaxPadding: requests above readBuffer (8 KiB)
// are dropped anyway, and a response this size is already fragmented on
// every path.
const maxPadding = 4096

// Validate reports the first nonsense in c.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
	}
	if !c.Primary.IsValid() {
		return bad("Primary address is required")
	}
	if c.Primary.IsUnspecified() || c.Primary.IsMulticast() {
		return bad("Primary %v is not a unicast address of the host", c.Primary)
	}
	if c.Alternate.IsValid() {
		if c.Alternate.IsUnspecified() || c.Alternate.IsMulticast() {
			return bad("Alternate %v is not a unicast address of the host", c.Alternate)
		}
		if c.Alternate.Unmap() == c.Primary.Unmap() {
			return bad("Alternate %v equals Primary", c.Alternate)
		}
		if c.Alternate.Unmap().Is4() != c.Primary.Unmap().Is4() {
			return bad("Primary %v and Alternate %v are of different families", c.Primary, c.Alternate)
		}
		if c.Port != 0 && c.Port == c.AltPort {
			return bad("Port and AltPort are both %d", c.Port)
		}
	}
	if c.MaxPadding < 0 || c.MaxPadding > maxPadding {
		return bad("MaxPadding %d outside 0..%d", c.MaxPadding, maxPadding)
	}
	if !(c.RatePerSource > 0) {
		return bad("RatePerSource %v must be positive", c.RatePerSource)
	}
	if c.Burst < 1 {
		return bad("Burst %d must be at least 1", c.Burst)
	}
	if c.MaxSources < 1 {
		return bad("MaxSources %d must be at least 1", c.MaxSources)
	}
	if len(c.Software) > 763 {
		return bad("Software is %d bytes, STUN allows 763", len(c.Software))
	}
	return nil
}
