package election

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"

	"github.com/superpeer/superpeer/nat/clock"
)

// Role says what a peer may become in its site.
type Role string

const (
	// RoleFull is a daemon on a router, board or desktop that may vote in
	// the site's group and may be elected superpeer.
	RoleFull Role = "full"
	// RolePeer is a desktop agent (`superpeer run --role peer`): it always
	// joins as a non-voter, is never elected superpeer, and follows the
	// superpeer set so that a local outbound proxy can forward to it.
	RolePeer Role = "peer"
)

// Well-known ports and names. The group port carries Raft and the group's
// own RPCs over mutual TLS (TCP) and the multicast announcements (UDP).
const (
	DefaultGroupPort      = 5071
	DefaultMulticastGroup = "239.255.50.71"
	// DefaultAnnounceGroup is where announcements go: an administratively
	// scoped IPv4 group (RFC 2365), never routed off the site.
	DefaultAnnounceGroup = "239.255.50.71:5071"
)

// Config is everything a Node needs. Every knob has a default in
// DefaultConfig; Validate rejects nonsense before anything starts.
type Config struct {
	// NodeID names this peer in its site for all time (it survives
	// restarts and address changes). Required. The daemon passes the
	// overlay node ID.
	NodeID string
	// Role is RoleFull (default) or RolePeer.
	Role Role
	// Capability is what this device offers; Score ranks it. Update it
	// while running with Node.SetCapability.
	Capability Capability
	// Services are where this peer serves SIP, STUN and TURN (replicated
	// with its member record; advertised by DNS-SD while a superpeer).
	// Update them while running with Node.SetServices.
	Services Services
	// Secret is the site secret (see OpenSecret). Required: it keys the
	// mutual TLS of the group and authenticates announcements.
	Secret *SiteSecret

	// DataDir holds the Raft log and stable store (raft.db, bbolt) and
	// snapshots. Empty keeps all of it in memory: such a node forgets the
	// site when it stops (tests, and desktop agents that want no state).
	DataDir string

	// Net opens every socket (the group listener, dials, multicast).
	// Nil means the host network (stdnet).
	Net transport.Net
	// Clock drives every timer that decides behaviour here (bootstrap
	// window, announcements, failure and grace periods, refresh flushes,
	// binding expiry). Raft itself keeps wall time. Nil means the wall clock.
	Clock clock.Clock
	// Logger receives one line per event an operator would want, and
	// Raft's own log at Warn and above. Nil means slog.Default().
	Logger *slog.Logger

	// BindAddr is where the group's TCP listener binds, host:port.
	BindAddr string
	// AdvertiseAddr is the host:port other peers dial. Empty means the
	// listener's address, with an unspecified host replaced by the first
	// up, non-loopback IPv4 address of Net's interfaces.
	AdvertiseAddr string
	// Discovery announces this peer and reports the others. Nil means
	// multicast announcements on Net (MulticastGroup, the group port).
	Discovery Discovery
	// MulticastGroup is the IPv4 group and UDP port of the announcements
	// when Discovery is nil.
	MulticastGroup string
	// DNSSD advertises the peer (and, on superpeers, SIP, STUN and TURN)
	// by multicast DNS and DNS-SD, and lists what it browses in Discover.
	DNSSD bool

	// SuperpeerCount is k, how many superpeers the leader commits. The
	// site configuration may override it.
	SuperpeerCount int
	// SuperpeerHysteresis is how many points a challenger's score must
	// exceed a live incumbent's before it takes the incumbent's place, so
	// that the set does not flap on small changes (uptime, load).
	SuperpeerHysteresis int
	// MaxVoters caps the number of voters: 1, 3 or 5. The leader keeps
	// the largest of 5, 3, 1 that the site's eligible devices allow.
	MaxVoters int

	// HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout and
	// CommitTimeout are Raft's (see hashicorp/raft Config). The defaults
	// are tuned for a LAN: Raft's own (1 s) take 1.7-2.7 s to elect.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// RPCTimeout bounds every group RPC (dial, TLS handshake, request and
	// answer) and is Raft's transport I/O deadline.
	RPCTimeout time.Duration
	// ApplyTimeout bounds a write that the caller's context leaves open.
	ApplyTimeout time.Duration

	// DownAfter: the leader counts a member down when heartbeats to it
	// have failed for this long; a down superpeer is replaced at once.
	DownAfter time.Duration
	// DeadMemberGrace: a member down this long is removed from the group
	// (a voter is first replaced by a live eligible device). It comes
	// back by joining again.
	DeadMemberGrace time.Duration
	// ReconcileInterval is how often the leader re-checks voters and the
	// superpeer set when nothing else prompts it.
	ReconcileInterval time.Duration

	// BootstrapWindow is how long a peer without state listens to the LAN
	// before the bootstrap rule may let it found the site's group.
	BootstrapWindow time.Duration
	// AnnounceInterval is the period of multicast announcements; a peer
	// is forgotten after three missed announcements.
	AnnounceInterval time.Duration

	// RefreshFlush bounds how long a registration refresh is held in
	// memory (on this superpeer and on at least one other) before it is
	// written to the replicated log. Zero writes every refresh at once.
	RefreshFlush time.Duration

	// SnapshotThreshold, SnapshotInterval and TrailingLogs are Raft's.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
}

// DefaultConfig returns a Config with every knob at its default. NodeID and
// Secret still have to be set.
func DefaultConfig() Config {
	return Config{
		Role:           RoleFull,
		BindAddr:       fmt.Sprintf("0.0.0.0:%d", DefaultGroupPort),
		MulticastGroup: DefaultAnnounceGroup,
		DNSSD:          true,

		SuperpeerCount: 2,
		// One device-class step (router 300 vs board 250 is 50) does not
		// move the set; a power or reachability change does.
		SuperpeerHysteresis: 150,
		MaxVoters:           5,

		// A LAN round trip is under a millisecond, and followers answer
		// heartbeats without touching flash: 300 ms leaves a busy router
		// room and elects in 0.3-0.9 s (both followers must time out,
		// each after 1-2 timeouts, before a vote succeeds).
		HeartbeatTimeout:   300 * time.Millisecond,
		ElectionTimeout:    300 * time.Millisecond,
		LeaderLeaseTimeout: 150 * time.Millisecond,
		CommitTimeout:      20 * time.Millisecond,
		// A powered-off peer answers nothing: a heartbeat to it fails
		// only at this deadline, so it bounds how soon a silent death is
		// noticed. A busy router answers a LAN request well within it.
		RPCTimeout:   time.Second,
		ApplyTimeout: 5 * time.Second,

		// Raft heartbeats every ~30 ms at the timeout above and backs
		// off after a failure: 200 ms is several failed heartbeats in a
		// row, not one lost packet.
		DownAfter:         200 * time.Millisecond,
		DeadMemberGrace:   30 * time.Minute,
		ReconcileInterval: 2 * time.Second,

		BootstrapWindow:  2 * time.Second,
		AnnounceInterval: time.Second,

		// At most one batch of refreshes per minute reaches flash.
		RefreshFlush: time.Minute,

		SnapshotThreshold: 1024,
		SnapshotInterval:  2 * time.Minute,
		TrailingLogs:      1024,
	}
}

// ConfigError says which field of Config is wrong and why.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("election config: %s: %s", e.Field, e.Reason)
}

// Validate rejects a Config that cannot work.
func (c *Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	if c.NodeID == "" {
		return bad("NodeID", "empty")
	}
	if len(c.NodeID) > 128 {
		return bad("NodeID", "longer than 128 bytes")
	}
	if c.Role != RoleFull && c.Role != RolePeer {
		return bad("Role", "%q is neither %q nor %q", c.Role, RoleFull, RolePeer)
	}
	if err := c.Capability.Validate(); err != nil {
		return bad("Capability", "%v", err)
	}
	if c.Secret == nil {
		return bad("Secret", "missing: create one with OpenSecret or receive it by joining")
	}
	if _, _, err := net.SplitHostPort(c.BindAddr); err != nil {
		return bad("BindAddr", "%v", err)
	}
	if c.AdvertiseAddr != "" {
		host, _, err := net.SplitHostPort(c.AdvertiseAddr)
		if err != nil {
			return bad("AdvertiseAddr", "%v", err)
		}
		if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
			return bad("AdvertiseAddr", "host %q is not a literal, specified IP", host)
		}
	}
	if c.Discovery == nil {
		host, _, err := net.SplitHostPort(c.MulticastGroup)
		if ip := net.ParseIP(host); err != nil || ip == nil || ip.To4() == nil || !ip.IsMulticast() {
			return bad("MulticastGroup", "%q is not an IPv4 multicast address and port", c.MulticastGroup)
		}
	}
	if c.SuperpeerCount < 1 {
		return bad("SuperpeerCount", "%d: a site needs at least one superpeer", c.SuperpeerCount)
	}
	if c.SuperpeerHysteresis < 0 {
		return bad("SuperpeerHysteresis", "negative")
	}
	if c.MaxVoters != 1 && c.MaxVoters != 3 && c.MaxVoters != 5 {
		return bad("MaxVoters", "%d: must be 1, 3 or 5 (two voters stop when either fails)", c.MaxVoters)
	}
	positive := map[string]time.Duration{
		"HeartbeatTimeout":   c.HeartbeatTimeout,
		"ElectionTimeout":    c.ElectionTimeout,
		"LeaderLeaseTimeout": c.LeaderLeaseTimeout,
		"CommitTimeout":      c.CommitTimeout,
		"RPCTimeout":         c.RPCTimeout,
		"ApplyTimeout":       c.ApplyTimeout,
		"DownAfter":          c.DownAfter,
		"DeadMemberGrace":    c.DeadMemberGrace,
		"ReconcileInterval":  c.ReconcileInterval,
		"BootstrapWindow":    c.BootstrapWindow,
		"AnnounceInterval":   c.AnnounceInterval,
		"SnapshotInterval":   c.SnapshotInterval,
	}
	for _, name := range []string{"HeartbeatTimeout", "ElectionTimeout", "LeaderLeaseTimeout",
		"CommitTimeout", "RPCTimeout", "ApplyTimeout", "DownAfter", "DeadMemberGrace",
		"ReconcileInterval", "BootstrapWindow", "AnnounceInterval", "SnapshotInterval"} {
		if positive[name] <= 0 {
			return bad(name, "must be positive, is %v", positive[name])
		}
	}
	if c.HeartbeatTimeout < 10*time.Millisecond {
		return bad("HeartbeatTimeout", "%v is below 10ms", c.HeartbeatTimeout)
	}
	if c.ElectionTimeout < c.HeartbeatTimeout {
		return bad("ElectionTimeout", "%v is shorter than HeartbeatTimeout %v", c.ElectionTimeout, c.HeartbeatTimeout)
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		return bad("LeaderLeaseTimeout", "%v is longer than HeartbeatTimeout %v", c.LeaderLeaseTimeout, c.HeartbeatTimeout)
	}
	if c.DeadMemberGrace < c.DownAfter {
		return bad("DeadMemberGrace", "%v is shorter than DownAfter %v", c.DeadMemberGrace, c.DownAfter)
	}
	if c.BootstrapWindow < c.AnnounceInterval {
		return bad("BootstrapWindow", "%v is shorter than AnnounceInterval %v: a peer could found a group before hearing the others", c.BootstrapWindow, c.AnnounceInterval)
	}
	if c.RefreshFlush < 0 {
		return bad("RefreshFlush", "negative")
	}
	if c.SnapshotThreshold == 0 {
		return bad("SnapshotThreshold", "zero")
	}
	return nil
}

// withDefaults fills the seams left nil.
func (c Config) withDefaults() Config {
	if c.Net == nil {
		n, err := stdnet.NewNet()
		if err == nil {
			c.Net = n
		}
	}
	c.Clock = clock.OrReal(c.Clock)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

var errNoNet = errors.New("no network: Config.Net is nil and the host network could not be opened")
