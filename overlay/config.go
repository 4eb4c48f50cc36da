package overlay

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/pion/transport/v5"

	"github.com/superpeer/superpeer/nat/clock"
	"github.com/superpeer/superpeer/overlay/dht"
	"github.com/superpeer/superpeer/overlay/routing"
)

// NodeID is a node's overlay ID: SHA-256 of its ed25519 public key.
type NodeID = routing.ID

// Reachability is what nat/ reports about how this node can be reached
// from the WAN; it decides how links are made.
type Reachability uint8

// The reachability kinds.
const (
	// Unknown: treated like Symmetric (relay when nothing else works).
	Unknown Reachability = iota
	// Public: the node has a public address.
	Public
	// Mapped: a verified port mapping (UPnP IGD, NAT-PMP, PCP) forwards
	// the overlay port.
	Mapped
	// EndpointIndependent: behind a NAT whose mapping is independent of
	// the destination, so a hole can be punched.
	EndpointIndependent
	// Symmetric: behind a NAT that maps per destination; links go
	// through a relay unless the far end is reachable.
	Symmetric
)

var reachNames = [...]string{"unknown", "public", "mapped", "endpoint-independent", "symmetric"}

func (r Reachability) String() string {
	if int(r) < len(reachNames) {
		return reachNames[r]
	}
	return fmt.Sprintf("reachability(%d)", uint8(r))
}

// Reachable reports whether others can open a link to the node directly.
func (r Reachability) Reachable() bool { return r == Public || r == Mapped }

// PathKind is how a link crosses the NATs.
type PathKind uint8

// The path kinds.
const (
	// Direct: to a node with a public address.
	Direct PathKind = iota + 1
	// MappedPath: to a node through its port mapping.
	MappedPath
	// Punched: through both NATs by a hole punch set up by a rendezvous
	// through a neighbour.
	Punched
	// Relayed: through a reachable superpeer that forwards the datagrams.
	Relayed
)

var pathNames = [...]string{"", "direct", "mapped", "punched", "relayed"}

func (k PathKind) String() string {
	if int(k) < len(pathNames) && k > 0 {
		return pathNames[k]
	}
	return fmt.Sprintf("path(%d)", uint8(k))
}

// MarshalText writes the kind's name, for JSON status.
func (k PathKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// MarshalText writes the reachability's name, for JSON status.
func (r Reachability) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// BootstrapNode is a configured entry point: an address and the node key
// pinned for it, so the first link cannot be intercepted.
type BootstrapNode struct {
	Addr string
	Key  ed25519.PublicKey
}

// PinholeRegistrar is told about every link's UDP path so that the NAT
// keeper keeps the pinhole open (the daemon adapts nat's keeper to it).
// Calls must not block.
type PinholeRegistrar interface {
	// LinkUp: a link to peer now uses local -> remote.
	LinkUp(peer NodeID, local, remote net.Addr, kind PathKind)
	// LinkDown: the link to peer is gone.
	LinkDown(peer NodeID)
}

// Config is everything a Node needs. Zero values mean the defaults.
type Config struct {
	// Net opens every socket: stdnet.NewNet() in the appliance, a vnet or
	// a lab host's Net in tests. Required.
	Net transport.Net
	// Key is the node's identity (see LoadOrCreateIdentity). Required.
	Key ed25519.PrivateKey
	// Listen is the UDP address of the overlay socket. Default ":4790".
	Listen string
	// Advertise are the addresses others reach this node at (public
	// address or port mapping), as nat/ found them. Addresses seen by
	// neighbours are learned on top.
	Advertise []string
	// Reachability is nat/'s verdict on this node.
	Reachability Reachability
	// Bootstrap are the nodes to join through.
	Bootstrap []BootstrapNode
	// Table is the routing-table shape (D = 16 by default).
	Table routing.Config
	// Store bounds the records this node keeps for others.
	Store dht.StoreConfig
	// Replicas is r, how many nodes closest to a key store its record.
	// Default 3.
	Replicas int
	// KeepaliveInterval is how often an idle link is pinged; the nat
	// keeper may ask for less. Default 15 s.
	KeepaliveInterval time.Duration
	// DeadAfter is how long a link may stay silent before it is dropped.
	// Default 45 s.
	DeadAfter time.Duration
	// MaintainInterval is how often the table looks for better links
	// (gaps, closer neighbours). Default 1 min.
	MaintainInterval time.Duration
	// RefreshInterval is how often this node re-puts the records it
	// published, so replicas that changed get them. Default 5 min.
	RefreshInterval time.Duration
	// RequestTimeout bounds one routed request (put, get, connect).
	// Default 5 s.
	RequestTimeout time.Duration
	// HopTimeout bounds the wait for a neighbour's acknowledgement of a
	// forwarded message before the next best neighbour is tried (four
	// round trips of the link when measured, at least 150 ms, never more
	// than this). Default 1 s; less than RequestTimeout.
	HopTimeout time.Duration
	// HandshakeTimeout bounds a DTLS handshake or a hole punch.
	// Default 5 s.
	HandshakeTimeout time.Duration
	// Pinholes is told about each link's UDP path; nil means nobody.
	Pinholes PinholeRegistrar
	// Clock decides every timer; nil is the wall clock.
	Clock clock.Clock
	// Logger receives one line per event an operator wants; nil is
	// slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns a Config with every default filled in; callers set
// Net and Key.
func DefaultConfig() Config {
	return Config{
		Listen:            ":4790",
		Table:             routing.DefaultConfig(),
		Store:             dht.DefaultStoreConfig(),
		Replicas:          3,
		KeepaliveInterval: 15 * time.Second,
		DeadAfter:         45 * time.Second,
		MaintainInterval:  time.Minute,
		RefreshInterval:   5 * time.Minute,
		RequestTimeout:    5 * time.Second,
		HopTimeout:        time.Second,
		HandshakeTimeout:  5 * time.Second,
	}
}

// withDefaults fills zero fields from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Listen == "" {
		c.Listen = d.Listen
	}
	if c.Table == (routing.Config{}) {
		c.Table = d.Table
	}
	if c.Store.Quota == 0 && c.Store.MaxLifetime == 0 {
		c.Store.Quota, c.Store.MaxLifetime = d.Store.Quota, d.Store.MaxLifetime
	}
	c.Store.Clock = c.Clock
	setDur := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	if c.Replicas == 0 {
		c.Replicas = d.Replicas
	}
	setDur(&c.KeepaliveInterval, d.KeepaliveInterval)
	setDur(&c.DeadAfter, d.DeadAfter)
	setDur(&c.MaintainInterval, d.MaintainInterval)
	setDur(&c.RefreshInterval, d.RefreshInterval)
	setDur(&c.RequestTimeout, d.RequestTimeout)
	setDur(&c.HopTimeout, d.HopTimeout)
	setDur(&c.HandshakeTimeout, d.HandshakeTimeout)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Clock = clock.OrReal(c.Clock)
	return c
}

// Validate rejects a configuration the node cannot run with (after the
// defaults are filled in).
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.Net == nil {
		errs = append(errs, errors.New("no Net to open sockets with"))
	}
	if len(c.Key) != ed25519.PrivateKeySize {
		errs = append(errs, fmt.Errorf("node key of %d bytes: want an ed25519 private key", len(c.Key)))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen address %q: %w", c.Listen, err))
	}
	for _, a := range c.Advertise {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("advertised address %q: %w", a, err))
		}
	}
	for i, b := range c.Bootstrap {
		if _, _, err := net.SplitHostPort(b.Addr); err != nil {
			errs = append(errs, fmt.Errorf("bootstrap %d address %q: %w", i, b.Addr, err))
		}
		if len(b.Key) != ed25519.PublicKeySize {
			errs = append(errs, fmt.Errorf("bootstrap %d (%s): pinned key of %d bytes, want %d", i, b.Addr, len(b.Key), ed25519.PublicKeySize))
		}
	}
	if err := c.Table.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Store.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Replicas < 1 || c.Replicas > c.Table.Degree {
		errs = append(errs, fmt.Errorf("replicas %d: want 1..degree (%d)", c.Replicas, c.Table.Degree))
	}
	if c.HopTimeout >= c.RequestTimeout {
		errs = append(errs, fmt.Errorf("hop timeout %v must be under the request timeout %v", c.HopTimeout, c.RequestTimeout))
	}
	if c.DeadAfter <= c.KeepaliveInterval {
		errs = append(errs, fmt.Errorf("dead-after %v must exceed the keepalive interval %v", c.DeadAfter, c.KeepaliveInterval))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("overlay config: %w", err)
	}
	return nil
}
