// Package config is the daemon's configuration: one struct with a documented
// field per knob, the embedded defaults that make `superpeer run` work on a
// lone machine, and a parser for the configuration file that refuses a bad
// file with the line and the reason.
//
// The file format is deliberately small, so that a shell script (OpenWrt's
// UCI translation) can write it: `[section]` headers, `key = value` lines,
// `#` comments. Lists are comma-separated; durations use Go's syntax (30s,
// 5m); booleans are true/false.
package config

import (
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Default is the embedded default configuration; it is also the annotated
// example an operator copies.
//
//go:embed default.conf
var Default []byte

// Config is the whole daemon configuration.
type Config struct {
	Daemon   Daemon   `conf:"daemon"`
	Site     Site     `conf:"site"`
	NAT      NAT      `conf:"nat"`
	Election Election `conf:"election"`
	Overlay  Overlay  `conf:"overlay"`
	SIP      SIP      `conf:"sip"`
	TURN     TURN     `conf:"turn"`
	Metrics  Metrics  `conf:"metrics"`

	// lines maps "section.key" to the line that set it, so that a value
	// refused after parsing is reported at its line.
	lines map[string]int
	// Source is the file the configuration came from ("(default)" for the
	// embedded one).
	Source string `conf:"-"`
}

// Daemon is about the process itself.
type Daemon struct {
	// StateDir holds everything the daemon must keep across restarts (node
	// key, site secret, Raft log). Empty means /var/lib/superpeer for root
	// and $XDG_STATE_HOME/superpeer (~/.local/state/superpeer) otherwise.
	StateDir string `conf:"state_dir"`
	// ControlSocket is the local control API's Unix socket. Empty means
	// control.sock in the state directory.
	ControlSocket string `conf:"control_socket"`
	// ControlGroup is the group that may use the control socket besides
	// root; ignored when the group does not exist.
	ControlGroup string `conf:"control_group"`
	// LogFormat is "text" or "json".
	LogFormat string `conf:"log_format"`
	// LogLevel is "debug", "info", "warn" or "error".
	LogLevel string `conf:"log_level"`
}

// Site is what the peers of one LAN share.
type Site struct {
	// Domain is the SIP domain of the site's phones (sip:alice@Domain).
	Domain string `conf:"domain"`
	// DeviceClass is this device's kind: auto, router, board, desktop or
	// laptop. It weighs in the superpeer election.
	DeviceClass string `conf:"device_class"`
	// Role is "auto" (take part in the election) or "peer" (a desktop
	// agent: never a superpeer, never a voter).
	Role string `conf:"role"`
	// Public makes this node a public bootstrap node: it serves RFC 5780
	// STUN on two addresses and accepts overlay joins.
	Public bool `conf:"public"`
}

// NAT is about the way through the NAT.
type NAT struct {
	// STUNServers are RFC 5780 STUN servers (host:port) used to learn the
	// NAT's behaviour and binding lifetime. Empty: the overlay's bootstrap
	// nodes are asked.
	STUNServers []string `conf:"stun_servers"`
	// PortMapping enables UPnP IGD, NAT-PMP and PCP requests to the gateway.
	PortMapping bool `conf:"port_mapping"`
	// DefaultLifetime is the binding lifetime assumed until one is measured.
	DefaultLifetime time.Duration `conf:"default_lifetime"`
	// STUNListen is where a public node serves RFC 5780 STUN
	// (primary address:port); the alternate address is STUNAlternate.
	STUNListen    string `conf:"stun_listen"`
	STUNAlternate string `conf:"stun_alternate"`
}

// Election is about the site's Raft group.
type Election struct {
	// Listen is the Raft address (TCP, mutual TLS).
	Listen string `conf:"listen"`
	// Superpeers is how many superpeers the site elects.
	Superpeers int `conf:"superpeers"`
	// JoinToken joins an existing site at the first start: the token a
	// member shows with `superpeer peers --join-token`. Empty at the first
	// start founds a new site (a lone machine is a site of one).
	JoinToken string `conf:"join_token"`
	// DNSSD advertises the peer and, on superpeers, SIP, STUN and TURN by
	// multicast DNS (DNS-SD) for softphones and desktop agents.
	DNSSD bool `conf:"dnssd"`
}

// Overlay is about links to other sites.
type Overlay struct {
	// Listen is the overlay's UDP address.
	Listen string `conf:"listen"`
	// MaxLinks is the hard bound on overlay links (each one is a pinhole).
	MaxLinks int `conf:"max_links"`
	// Bootstrap lists bootstrap nodes as "host:port/nodekey" (the node key
	// pins the node's identity).
	Bootstrap []string `conf:"bootstrap"`
}

// SIP is about the registrar and proxy.
type SIP struct {
	// Listen is the SIP address for UDP and TCP.
	Listen string `conf:"listen"`
	// AgentListen is where a desktop agent (site.role = peer) serves
	// softphones: they use it as their outbound proxy and it forwards to
	// whichever superpeer is current.
	AgentListen string `conf:"agent_listen"`
	// TLSListen, TLSCert and TLSKey enable SIP over TLS when all are set.
	TLSListen string `conf:"tls_listen"`
	TLSCert   string `conf:"tls_cert"`
	TLSKey    string `conf:"tls_key"`
	// FloodRequests and FloodWindow: a source sending more requests than
	// this within the window is banned for FloodBan.
	FloodRequests int           `conf:"flood_requests"`
	FloodWindow   time.Duration `conf:"flood_window"`
	FloodBan      time.Duration `conf:"flood_ban"`
}

// TURN is about the media relay.
type TURN struct {
	// Listen is the TURN address for UDP and TCP.
	Listen string `conf:"listen"`
	// Realm is the TURN realm.
	Realm string `conf:"realm"`
	// RelayPortMin and RelayPortMax bound the relay ports.
	RelayPortMin int `conf:"relay_port_min"`
	RelayPortMax int `conf:"relay_port_max"`
	// AllowPeers are prefixes relaying may reach although the default denies
	// them (private, loopback...), e.g. the site's own LAN.
	AllowPeers []string `conf:"allow_peers"`
	// MaxAllocations caps all allocations; UserAllocations caps each user's.
	MaxAllocations  int `conf:"max_allocations"`
	UserAllocations int `conf:"user_allocations"`
	// CredentialLifetime caps the lifetime of minted credentials.
	CredentialLifetime time.Duration `conf:"credential_lifetime"`
}

// Metrics is the Prometheus endpoint.
type Metrics struct {
	// Listen is the HTTP address of /metrics; empty turns it off.
	Listen string `conf:"listen"`
}

// Error is a refused configuration: the file, the line (0 when it is about
// the whole file) and the reason.
type Error struct {
	File   string
	Line   int
	Reason string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Reason)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Reason)
}

// Load returns the defaults overridden by the file at path; an empty path
// means the defaults alone.
func Load(path string) (*Config, error) {
	c, err := Parse("(default)", Default, nil)
	if err != nil {
		return nil, fmt.Errorf("embedded default configuration: %w", err)
	}
	if path == "" {
		return c, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	return Parse(path, data, c)
}

// Parse reads a configuration file over base (a copy of base is changed;
// nil base means an empty Config) and validates the result.
func Parse(name string, data []byte, base *Config) (*Config, error) {
	c := &Config{}
	if base != nil {
		*c = *base
		c.NAT.STUNServers = append([]string(nil), base.NAT.STUNServers...)
		c.Overlay.Bootstrap = append([]string(nil), base.Overlay.Bootstrap...)
		c.TURN.AllowPeers = append([]string(nil), base.TURN.AllowPeers...)
	}
	c.lines = map[string]int{}
	c.Source = name
	if err := decode(name, data, c); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Validate refuses nonsense with the line that set it.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, &Error{File: c.Source, Line: c.lines[key], Reason: key + ": " + fmt.Sprintf(format, args...)})
	}
	switch c.Daemon.LogFormat {
	case "text", "json":
	default:
		bad("daemon.log_format", "must be text or json, not %q", c.Daemon.LogFormat)
	}
	switch c.Daemon.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("daemon.log_level", "must be debug, info, warn or error, not %q", c.Daemon.LogLevel)
	}
	if c.Site.Domain == "" || strings.ContainsAny(c.Site.Domain, " @:/;") {
		bad("site.domain", "must be a domain name, not %q", c.Site.Domain)
	}
	switch c.Site.DeviceClass {
	case "auto", "router", "board", "desktop", "laptop":
	default:
		bad("site.device_class", "must be auto, router, board, desktop or laptop, not %q", c.Site.DeviceClass)
	}
	switch c.Site.Role {
	case "auto", "peer":
	default:
		bad("site.role", "must be auto or peer, not %q", c.Site.Role)
	}
	for _, kv := range []struct{ key, v string }{
		{"election.listen", c.Election.Listen},
		{"overlay.listen", c.Overlay.Listen},
		{"sip.listen", c.SIP.Listen},
		{"turn.listen", c.TURN.Listen},
	} {
		if err := checkListen(kv.v); err != nil {
			bad(kv.key, "%v", err)
		}
	}
	for _, kv := range []struct{ key, v string }{
		{"sip.tls_listen", c.SIP.TLSListen},
		{"metrics.listen", c.Metrics.Listen},
		{"nat.stun_listen", c.NAT.STUNListen},
		{"nat.stun_alternate", c.NAT.STUNAlternate},
	} {
		if kv.v != "" {
			if err := checkListen(kv.v); err != nil {
				bad(kv.key, "%v", err)
			}
		}
	}
	if (c.SIP.TLSCert == "") != (c.SIP.TLSKey == "") {
		bad("sip.tls_cert", "tls_cert and tls_key go together")
	}
	if c.Site.Public && (c.NAT.STUNListen == "" || c.NAT.STUNAlternate == "") {
		bad("site.public", "a public node needs nat.stun_listen and nat.stun_alternate (two addresses)")
	}
	for _, s := range c.NAT.STUNServers {
		if _, _, err := splitHostPort(s); err != nil {
			bad("nat.stun_servers", "%q: %v", s, err)
		}
	}
	if c.NAT.DefaultLifetime < 5*time.Second || c.NAT.DefaultLifetime > time.Hour {
		bad("nat.default_lifetime", "must be between 5s and 1h, not %v", c.NAT.DefaultLifetime)
	}
	if c.Election.Superpeers < 1 || c.Election.Superpeers > 5 {
		bad("election.superpeers", "must be 1 to 5, not %d", c.Election.Superpeers)
	}
	if c.Overlay.MaxLinks < 4 || c.Overlay.MaxLinks > 64 {
		bad("overlay.max_links", "must be 4 to 64, not %d", c.Overlay.MaxLinks)
	}
	for _, b := range c.Overlay.Bootstrap {
		addr, key, ok := strings.Cut(b, "/")
		if !ok || key == "" {
			bad("overlay.bootstrap", "%q: want host:port/nodekey", b)
			continue
		}
		if k, err := hex.DecodeString(key); err != nil || len(k) != 32 {
			bad("overlay.bootstrap", "%q: the node key must be 64 hex digits (an ed25519 public key)", b)
			continue
		}
		if _, _, err := splitHostPort(addr); err != nil {
			bad("overlay.bootstrap", "%q: %v", b, err)
		}
	}
	if c.SIP.FloodRequests < 1 || c.SIP.FloodWindow <= 0 || c.SIP.FloodBan < 0 {
		bad("sip.flood_requests", "flood_requests, flood_window must be positive and flood_ban not negative")
	}
	if c.TURN.RelayPortMin < 1024 || c.TURN.RelayPortMax > 65535 || c.TURN.RelayPortMin > c.TURN.RelayPortMax {
		bad("turn.relay_port_min", "relay ports must be a range within 1024-65535, not %d-%d", c.TURN.RelayPortMin, c.TURN.RelayPortMax)
	}
	for _, p := range c.TURN.AllowPeers {
		if _, err := netip.ParsePrefix(p); err != nil {
			bad("turn.allow_peers", "%q is not a prefix such as 192.168.1.0/24", p)
		}
	}
	if c.TURN.MaxAllocations < 1 || c.TURN.UserAllocations < 1 || c.TURN.UserAllocations > c.TURN.MaxAllocations {
		bad("turn.max_allocations", "need 1 <= user_allocations <= max_allocations, not %d and %d", c.TURN.UserAllocations, c.TURN.MaxAllocations)
	}
	if c.TURN.CredentialLifetime < time.Minute || c.TURN.CredentialLifetime > 7*24*time.Hour {
		bad("turn.credential_lifetime", "must be between 1m and 168h, not %v", c.TURN.CredentialLifetime)
	}
	return errors.Join(errs...)
}

// StateDir returns the state directory, resolving the empty default.
func (c *Config) StateDir() string {
	if c.Daemon.StateDir != "" {
		return c.Daemon.StateDir
	}
	return DefaultStateDir()
}

// ControlSocket returns the control socket's path, resolving the default.
func (c *Config) ControlSocket() string {
	if c.Daemon.ControlSocket != "" {
		return c.Daemon.ControlSocket
	}
	return filepath.Join(c.StateDir(), "control.sock")
}

// DefaultStateDir is /var/lib/superpeer for root, else the user's state
// directory.
func DefaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/superpeer"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "superpeer")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "superpeer")
	}
	return filepath.Join(os.TempDir(), "superpeer")
}

func checkListen(s string) error {
	host, port, err := splitHostPort(s)
	if err != nil {
		return err
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("%q: listen on an IP address or on all (\":%s\")", s, port)
		}
	}
	return nil
}

func splitHostPort(s string) (host, port string, err error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", "", fmt.Errorf("missing port in %q", s)
	}
	host, port = strings.Trim(s[:i], "[]"), s[i+1:]
	n := 0
	for _, r := range port {
		if r < '0' || r > '9' {
			return "", "", fmt.Errorf("port %q is not a number", port)
		}
		n = n*10 + int(r-'0')
		if n > 65535 {
			return "", "", fmt.Errorf("port %q is out of range", port)
		}
	}
	if port == "" {
		return "", "", fmt.Errorf("missing port in %q", s)
	}
	return host, port, nil
}
