package turn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"strings"
	"time"
	"unicode"
)

// DefaultPort is the TURN port for UDP and TCP (RFC 8656 section 4).
const DefaultPort = 3478

// Config is every knob of the relay. DefaultConfig fills each one;
// Validate rejects nonsense before a socket is opened.
type Config struct {
	// Realm is the long-term credential realm (RFC 8489 section 9.2).
	Realm string
	// Listen are the addresses the client listeners bind (UDP and TCP, on
	// Port). Empty means every address of every up interface except
	// loopback and link-local, IPv4 and IPv6. Unspecified addresses are
	// refused: a relay must know which address it answers from.
	Listen []netip.Addr
	// Port is the TURN port of every listener; 0 picks a free one (tests).
	Port uint16
	// UDPListeners is how many UDP sockets share each listen address with
	// SO_REUSEPORT, each with its own read loop: one loop caps pion at
	// about 40-50 kpps. 1 opens a single plain socket (pion's vnet cannot
	// share a port).
	UDPListeners int
	// UDPReadBuffer is the receive buffer asked for each UDP client
	// listener (SO_RCVBUF, capped by the kernel's rmem_max): every
	// client's packets queue there while the read loop is busy.
	UDPReadBuffer int
	// TCP opens TCP client listeners and allows RFC 6062 TCP relays.
	TCP bool
	// MaxTCPConnections bounds concurrent TCP client connections; more are
	// closed at once.
	MaxTCPConnections int
	// TCPAuthTimeout is how long a TCP client connection may stay open
	// without an allocation; TCPIdleTimeout, how long one with an
	// allocation may stay silent (longer than the longest allocation
	// lifetime a client may ask for, one hour).
	TCPAuthTimeout, TCPIdleTimeout time.Duration

	// RelayPortMin and RelayPortMax bound the local ports of relays.
	RelayPortMin, RelayPortMax uint16
	// ExternalIP, when set, is the address the outside reaches this host
	// at with the same ports (a public host, or a 1:1 NAT): relays report
	// it with their local port and no mapping is learnt.
	ExternalIP netip.Addr
	// STUNServer, when set, is asked from each IPv4 relay socket for the
	// socket's endpoint-independent mapping (RFC 8489 Binding), which the
	// relay then reports, unless PortMapper gave a verified mapping. The
	// daemon passes a bootstrap superpeer's STUN server.
	STUNServer netip.AddrPort
	// STUNTimeout bounds one mapping discovery (with retransmissions).
	STUNTimeout time.Duration
	// ReadyRelays is how many IPv4 relay sockets are kept bound with their
	// mapping learnt ahead of need, so that an Allocate does not wait for
	// a STUN round trip or a port mapping inside pion's read loop. 0 learns
	// on demand.
	ReadyRelays int
	// MappingMaxAge is how old the STUN-learnt mapping of a ready socket
	// may be before it is learnt again (which also refreshes it): well
	// inside the shortest unreplied UDP timeout of home NATs (30 s).
	MappingMaxAge time.Duration
	// OpenFilters makes a relay send an empty datagram to a peer when a
	// permission for it is created, so that an address-and-port-dependent
	// filter of the superpeer's NAT lets the peer's packets in before the
	// client has sent anything.
	OpenFilters bool

	// AllowPeers are ranges a relay may reach even though the built-in
	// deny list refuses them: e.g. the site's own LAN when the operator
	// wants LAN peers relayed, or a documentation range in a test lab. A
	// single address (/32, /128) also unlocks one of the superpeer's own
	// addresses; a wider range never does.
	AllowPeers []netip.Prefix
	// DenyPeers are ranges refused in addition to the built-in list.
	DenyPeers []netip.Prefix
	// RelayBetweenAllocations lets an allocation have another UDP
	// allocation of this server as its peer, though that peer's relayed
	// address is one of the superpeer's own: a public node sets it, since
	// two sites behind symmetric NATs both relay their calls' media on
	// it and one allocation must reach the other. Only the relayed
	// addresses of live allocations are opened, never another port of
	// the node's own addresses, and an allocation that holds such a
	// permission takes packets from its own addresses only from the
	// relays it asked for.
	RelayBetweenAllocations bool

	// UserQuota bounds concurrent allocations per user (the user part of
	// the credential); TotalQuota bounds them all. Beyond either an
	// Allocate gets 486 Allocation Quota Reached. 0 means no bound.
	UserQuota, TotalQuota int
	// PermissionsPerAllocation bounds the peer addresses one allocation
	// may hold permissions for; beyond it CreatePermission and ChannelBind
	// get 403.
	PermissionsPerAllocation int
	// BandwidthPerAllocation caps each direction of a UDP allocation, in
	// bytes a second, with a burst of a quarter second (at least 16 KiB);
	// packets beyond it are dropped. 0 means no cap.
	BandwidthPerAllocation int

	// UnauthorizedRate and UnauthorizedBurst limit 401 answers per source
	// address (answers a second, burst): a password guesser or a
	// reflection attacker gets nothing beyond them.
	UnauthorizedRate  float64
	UnauthorizedBurst int

	// MaxCredentialLifetime caps the lifetime of minted credentials, and
	// the server refuses credentials whose expiry lies further ahead.
	MaxCredentialLifetime time.Duration
	// AllocationLifetime is the default allocation lifetime (clients may
	// ask for up to an hour); PermissionLifetime and ChannelLifetime are
	// those of permissions and channel bindings (RFC 8656: 300 s, 600 s).
	AllocationLifetime, PermissionLifetime, ChannelLifetime time.Duration

	// Secret returns the site's shared secret for credentials; the daemon
	// reads it from the replicated site state. Required. It is called for
	// every authenticated request, so it must be cheap.
	Secret func() []byte
	// PortMapper, when set, asks the gateway for a verified port mapping
	// for each relay port (the daemon backs it with nat/portmap).
	PortMapper PortMapper
	// Pinholes, when set, keeps each relay's flows through the NAT open
	// while its allocation lives (the daemon adapts nat's keeper).
	Pinholes Pinholes
	// Logger gets one line per event an operator cares about. Nil means
	// slog.Default().
	Logger *slog.Logger
}

// PortMapper asks the gateway to forward an external port to a local one.
// Map returns only a mapping that has been verified end to end (a packet
// sent to external from outside arrived), and release removes it. A
// mapping must outlive the call: renewing its lease is the mapper's job.
type PortMapper interface {
	Map(ctx context.Context, proto string, local netip.AddrPort) (external netip.AddrPort, release func(), err error)
}

// Pinholes keeps flows through the NAT open (the keeper). Keep asks for
// p to be held until release is called.
type Pinholes interface {
	Keep(p Pinhole) (release func())
}

// Pinhole is one flow of a relay socket through the NAT.
type Pinhole struct {
	// Proto is "udp".
	Proto string
	// Local is the relay socket; External the relayed address the outside
	// reaches it at; Remote the far end of the flow: the STUN server the
	// mapping was learnt from, or a permitted peer.
	Local, External, Remote netip.AddrPort
	// Refresh sends a keepalive from the relay socket itself. Towards the
	// STUN server it is a Binding request and returns the mapped address
	// in the answer, so the keeper sees a remap; towards a peer it is an
	// empty datagram that refreshes the filter and returns the zero
	// AddrPort.
	Refresh func(ctx context.Context) (mapped netip.AddrPort, err error)
}

// DefaultConfig returns a hardened configuration: loopback, private,
// shared, link-local, multicast, documentation, benchmarking and reserved
// peers refused, quotas and caps on. Secret must still be set.
func DefaultConfig() Config {
	return Config{
		Realm:                    "superpeer",
		Port:                     DefaultPort,
		UDPListeners:             min(runtime.GOMAXPROCS(0), 8),
		UDPReadBuffer:            1 << 20,
		TCP:                      true,
		MaxTCPConnections:        256,
		TCPAuthTimeout:           10 * time.Second,
		TCPIdleTimeout:           time.Hour + time.Minute,
		RelayPortMin:             49152,
		RelayPortMax:             65535,
		STUNTimeout:              1500 * time.Millisecond,
		ReadyRelays:              2,
		MappingMaxAge:            20 * time.Second,
		OpenFilters:              true,
		UserQuota:                10,
		TotalQuota:               500,
		PermissionsPerAllocation: 32,
		BandwidthPerAllocation:   512 << 10, // 4 Mbit/s: voice and SD video
		UnauthorizedRate:         5,
		UnauthorizedBurst:        20,
		MaxCredentialLifetime:    24 * time.Hour,
		AllocationLifetime:       10 * time.Minute,
		PermissionLifetime:       5 * time.Minute,
		ChannelLifetime:          10 * time.Minute,
	}
}

// Validate reports every knob that makes no sense.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Realm == "" || len(c.Realm) > 127 || strings.IndexFunc(c.Realm, unicode.IsControl) >= 0 {
		bad("Realm %q: want 1 to 127 printable characters", c.Realm)
	}
	for _, a := range c.Listen {
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
			bad("Listen %v: want a unicast address of this host (leave Listen empty for all of them)", a)
		}
	}
	if c.UDPListeners < 1 || c.UDPListeners > 64 {
		bad("UDPListeners %d: want 1 to 64", c.UDPListeners)
	}
	if c.UDPReadBuffer < 0 || c.UDPReadBuffer > 64<<20 {
		bad("UDPReadBuffer %d: want 0 (the kernel's default) to 64 MiB", c.UDPReadBuffer)
	}
	if c.TCP {
		if c.MaxTCPConnections < 1 {
			bad("MaxTCPConnections %d: want at least 1", c.MaxTCPConnections)
		}
		if c.TCPAuthTimeout <= 0 || c.TCPIdleTimeout < time.Hour {
			bad("TCPAuthTimeout %v, TCPIdleTimeout %v: want > 0 and at least an hour", c.TCPAuthTimeout, c.TCPIdleTimeout)
		}
	}
	if c.RelayPortMin == 0 || c.RelayPortMin > c.RelayPortMax {
		bad("relay ports %d-%d: want 1 <= min <= max", c.RelayPortMin, c.RelayPortMax)
	}
	if c.ExternalIP.IsValid() && (c.ExternalIP.IsUnspecified() || c.ExternalIP.IsMulticast()) {
		bad("ExternalIP %v: want a unicast address", c.ExternalIP)
	}
	if c.STUNServer.IsValid() && (c.STUNServer.Port() == 0 || c.STUNServer.Addr().IsUnspecified()) {
		bad("STUNServer %v: want an address and a port", c.STUNServer)
	}
	if c.STUNTimeout < 100*time.Millisecond || c.STUNTimeout > 30*time.Second {
		bad("STUNTimeout %v: want 100ms to 30s", c.STUNTimeout)
	}
	if c.ReadyRelays < 0 || c.ReadyRelays > 64 {
		bad("ReadyRelays %d: want 0 to 64", c.ReadyRelays)
	}
	if c.MappingMaxAge < time.Second {
		bad("MappingMaxAge %v: want at least 1s", c.MappingMaxAge)
	}
	for _, p := range append(append([]netip.Prefix(nil), c.AllowPeers...), c.DenyPeers...) {
		if !p.IsValid() {
			bad("peer range %v is not a valid prefix", p)
		}
	}
	if c.UserQuota < 0 || c.TotalQuota < 0 {
		bad("quotas %d per user, %d total: want >= 0 (0: no bound)", c.UserQuota, c.TotalQuota)
	}
	if c.PermissionsPerAllocation < 1 {
		bad("PermissionsPerAllocation %d: want at least 1", c.PermissionsPerAllocation)
	}
	if c.BandwidthPerAllocation < 0 {
		bad("BandwidthPerAllocation %d: want >= 0 (0: no cap)", c.BandwidthPerAllocation)
	}
	if c.UnauthorizedRate <= 0 || c.UnauthorizedBurst < 1 {
		bad("401 limit %v/s burst %d: want a positive rate and a burst of at least 1", c.UnauthorizedRate, c.UnauthorizedBurst)
	}
	if c.MaxCredentialLifetime < time.Minute || c.MaxCredentialLifetime > 30*24*time.Hour {
		bad("MaxCredentialLifetime %v: want 1m to 30 days", c.MaxCredentialLifetime)
	}
	if c.AllocationLifetime < time.Minute || c.AllocationLifetime > time.Hour {
		bad("AllocationLifetime %v: want 1m to 1h (RFC 8656)", c.AllocationLifetime)
	}
	if c.PermissionLifetime < 10*time.Second || c.ChannelLifetime < 10*time.Second {
		bad("PermissionLifetime %v, ChannelLifetime %v: want at least 10s", c.PermissionLifetime, c.ChannelLifetime)
	}
	if c.Secret == nil {
		bad("Secret: required (the site's shared secret)")
	}
	if len(errs) > 0 {
		return fmt.Errorf("turn config: %w", errors.Join(errs...))
	}
	return nil
}
