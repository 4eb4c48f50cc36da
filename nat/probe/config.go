package probe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"

	"github.com/superpeer/superpeer/nat/clock"
)

// Config says which STUN server to ask and how patiently. It is shared by
// Discover, MeasureLifetime and the Estimator.
type Config struct {
	// Net opens the client's sockets; nil means the host's network.
	Net transport.Net
	// Clock times every wait; nil means the wall clock.
	Clock clock.Clock
	// Logger gets one line per finished discovery or measurement; nil
	// means slog.Default().
	Logger *slog.Logger
	// Server is the RFC 5780 STUN server, "host:port" (our nat/stunserver,
	// or any server that honours CHANGE-REQUEST and RESPONSE-PORT).
	Server string
	// RTO is the first retransmission interval of a request; it doubles
	// after each retransmission (RFC 8489 section 6.2.1, but much shorter:
	// these are short tests, not a client that must get through).
	RTO time.Duration
	// Timeout is how long a request waits for its response. In the
	// filtering and hairpinning tests silence is an answer, so it is also
	// how long those tests take when the NAT drops the response.
	Timeout time.Duration
}

// DefaultConfig returns RTO 250 ms and Timeout 2 s; Server must be set.
func DefaultConfig() Config {
	return Config{RTO: 250 * time.Millisecond, Timeout: 2 * time.Second}
}

// ErrConfig is wrapped by every error of Validate.
var ErrConfig = errors.New("probe: invalid config")

// Validate reports the first nonsense in c.
func (c Config) Validate() error {
	if c.Server == "" {
		return fmt.Errorf("%w: Server is required", ErrConfig)
	}
	if c.RTO <= 0 || c.Timeout <= 0 {
		return fmt.Errorf("%w: RTO %v and Timeout %v must be positive", ErrConfig, c.RTO, c.Timeout)
	}
	if c.RTO > c.Timeout {
		return fmt.Errorf("%w: RTO %v is longer than Timeout %v", ErrConfig, c.RTO, c.Timeout)
	}
	return nil
}

func (c Config) timing() timing { return timing{rto: c.RTO, timeout: c.Timeout} }

func (c Config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

// env is a validated Config made ready: the network, the clock and the
// server's resolved address.
type env struct {
	cfg     Config
	net     transport.Net
	clk     clock.Clock
	server  netip.AddrPort
	network string // udp4 or udp6
}

func (c Config) env(ctx context.Context) (*env, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	e := &env{cfg: c, net: c.Net, clk: clock.OrReal(c.Clock)}
	if e.net == nil {
		n, err := stdnet.NewNet()
		if err != nil {
			return nil, fmt.Errorf("opening the host network: %w", err)
		}
		e.net = n
	}
	if ap, err := netip.ParseAddrPort(c.Server); err == nil {
		e.server = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	} else {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ua, err := e.net.ResolveUDPAddr("udp", c.Server)
		if err != nil {
			return nil, fmt.Errorf("resolving STUN server %q: %w", c.Server, err)
		}
		ap, ok := addrPortOf(ua)
		if !ok {
			return nil, fmt.Errorf("resolving STUN server %q: got %v", c.Server, ua)
		}
		e.server = ap
	}
	e.network = "udp4"
	if !e.server.Addr().Is4() {
		e.network = "udp6"
	}
	return e, nil
}

func (e *env) open() (*conn, error) { return openConn(e.net, e.clk, e.network) }

// localIPs lists the addresses of the network's interfaces.
func (e *env) localIPs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	ifs, err := e.net.Interfaces()
	if err != nil {
		return out
	}
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				out[p.Addr().Unmap()] = true
			} else if ip, err := netip.ParseAddr(a.String()); err == nil {
				out[ip.Unmap()] = true
			}
		}
	}
	return out
}
