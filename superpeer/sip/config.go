package sip

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"
)

// Listener is one socket the server listens on.
type Listener struct {
	// Network is udp, tcp or tls (tls needs Config.TLS).
	Network string `json:"network"`
	// Addr is ip:port. The IP must be a concrete address (it goes into
	// Via and Record-Route), unless Config.Advertise is set.
	Addr string `json:"addr"`
}

// Account is a user that may register with digest credentials (RFC 3261
// section 22, RFC 2617 MD5 with qop=auth).
type Account struct {
	// AOR is "sip:user@domain".
	AOR string `json:"aor"`
	// User is the digest username; defaults to the AOR's user part.
	User string `json:"user,omitempty"`
	// Password is the digest password.
	Password string `json:"password"`
}

// Auth policies: who must authenticate a REGISTER.
const (
	// AuthLANOpen lets sources inside Config.LAN register any AOR of the
	// site's domains without credentials, unless the AOR has an account
	// (then its password is required); sources outside the LAN must
	// authenticate against an account.
	AuthLANOpen = "lan-open"
	// AuthAlways requires digest credentials from everyone.
	AuthAlways = "always"
)

// Media anchoring modes.
const (
	// AnchorRemote anchors the media of calls that leave the site (the
	// endpoints cannot reach each other across two NATs) when they do not
	// do ICE.
	AnchorRemote = "remote"
	// AnchorAlways anchors every call without ICE, also within the site.
	AnchorAlways = "always"
	// AnchorNever leaves SDP alone.
	AnchorNever = "never"
)

// FloodConfig is the per-source request limit. A source that sends more
// than Requests requests within Window is banned for Ban: its packets are
// dropped unread and its TCP connections closed. Kamailio's shipped
// configuration (pike plus an ipban table) uses 16 requests in 2 s and a
// 300 s ban; so does DefaultConfig.
type FloodConfig struct {
	// Requests is the most requests a source may send within Window; zero
	// disables the limit.
	Requests int `json:"requests"`
	// Window is the span the requests are counted over.
	Window time.Duration `json:"window"`
	// Ban is how long a source that broke the limit is ignored.
	Ban time.Duration `json:"ban"`
	// Exempt sources are never limited (loopback, the site's other
	// superpeers, a trusted PBX).
	Exempt []netip.Prefix `json:"exempt,omitempty"`
	// MaxSources bounds the sources tracked at once (memory under a spoofed
	// flood); the oldest unbanned entries are forgotten first.
	MaxSources int `json:"max_sources"`
}

// Config is the registrar and proxy configuration.
type Config struct {
	// NodeID is this superpeer's overlay node ID. It names the flows this
	// superpeer holds in the shared binding store and is the address other
	// superpeers send to through the Carrier. Required.
	NodeID string `json:"node_id"`
	// Domains are the site's own SIP domains; the first is the primary one.
	// A REGISTER for another domain is refused (403). Requests for these
	// domains are served from the site's bindings, others are looked up in
	// the overlay. Required.
	Domains []string `json:"domains"`
	// Listen are the sockets to serve. Default: UDP and TCP on
	// 0.0.0.0:5060 (then Advertise is required).
	Listen []Listener `json:"listen"`
	// Advertise is the address put into Via and Record-Route for the LAN
	// side; default: the IP of the first listener.
	Advertise netip.Addr `json:"advertise,omitzero"`
	// TLS is the certificate configuration for tls listeners.
	TLS *tls.Config `json:"-"`
	// LAN are the site's LAN prefixes: phones there may register without
	// credentials under AuthLANOpen, and UDP flows from there can be reached
	// by any superpeer of the site directly.
	LAN []netip.Prefix `json:"lan"`
	// Auth is AuthLANOpen (default) or AuthAlways.
	Auth string `json:"auth"`
	// Realm is the digest realm; default: the primary domain.
	Realm string `json:"realm"`
	// Accounts are the users that may register with credentials.
	Accounts []Account `json:"accounts,omitempty"`
	// MinExpires, MaxExpires and DefaultExpires bound registration
	// lifetimes (RFC 3261 section 10.3 step 7; 423 below MinExpires).
	MinExpires     time.Duration `json:"min_expires"`
	MaxExpires     time.Duration `json:"max_expires"`
	DefaultExpires time.Duration `json:"default_expires"`
	// FlowTimer is the keepalive interval recommended to RFC 5626 UAs in
	// the Flow-Timer header; the daemon sets it from the NAT's measured
	// binding lifetime. Zero omits the header.
	FlowTimer time.Duration `json:"flow_timer"`
	// MaxMessageSize bounds one SIP message and so each connection's
	// parse buffer.
	MaxMessageSize int `json:"max_message_size"`
	// TCPIdleTimeout closes a stream connection that sent nothing (not
	// even a keepalive) for this long.
	TCPIdleTimeout time.Duration `json:"tcp_idle_timeout"`
	// ForwardTimeout is how long an INVITE forwarded to another superpeer
	// waits for any response before the next target is tried or the caller
	// gets 408: a far site that is down must fail fast.
	ForwardTimeout time.Duration `json:"forward_timeout"`
	// Anchor is AnchorRemote (default), AnchorAlways or AnchorNever.
	Anchor string `json:"anchor"`
	// MaxCallDuration releases a call's anchored media even when no BYE
	// came through (a phone lost power mid-call), so relay ports are not
	// held forever.
	MaxCallDuration time.Duration `json:"max_call_duration"`
	// Flood is the per-source request limit.
	Flood FloodConfig `json:"flood"`
	// FlowKey authenticates flow tokens. Superpeers of one site should
	// share it (the daemon derives it from the site secret) so a token
	// outlives a restart; when empty a random key is made at start.
	FlowKey []byte `json:"-"`
	// UserAgent is the Server/User-Agent header value.
	UserAgent string `json:"user_agent"`
	// Logger receives one line per event an operator cares about.
	Logger *slog.Logger `json:"-"`
}

// DefaultConfig returns a configuration with every knob at its default;
// NodeID and Domains still have to be set.
func DefaultConfig() Config {
	return Config{
		Listen: []Listener{
			{Network: "udp", Addr: "0.0.0.0:5060"},
			{Network: "tcp", Addr: "0.0.0.0:5060"},
		},
		Auth:            AuthLANOpen,
		MinExpires:      60 * time.Second,
		MaxExpires:      2 * time.Hour,
		DefaultExpires:  time.Hour,
		FlowTimer:       120 * time.Second, // RFC 5626 section 4.4.1's default for TCP
		MaxMessageSize:  16 * 1024,
		TCPIdleTimeout:  10 * time.Minute,
		ForwardTimeout:  2 * time.Second,
		Anchor:          AnchorRemote,
		MaxCallDuration: 6 * time.Hour,
		Flood: FloodConfig{
			Requests:   16,
			Window:     2 * time.Second,
			Ban:        300 * time.Second,
			Exempt:     []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
			MaxSources: 65536,
		},
		UserAgent: "superpeer",
	}
}

// Validate rejects a configuration that cannot work, saying why.
func (c *Config) Validate() error {
	var errs []error
	if c.NodeID == "" {
		errs = append(errs, errors.New("node_id is empty"))
	}
	if len(c.Domains) == 0 {
		errs = append(errs, errors.New("domains is empty: the site needs a SIP domain"))
	}
	for _, d := range c.Domains {
		if d == "" || strings.ContainsAny(d, " @:;<>") {
			errs = append(errs, fmt.Errorf("domain %q is not a host name", d))
		}
	}
	if len(c.Listen) == 0 {
		errs = append(errs, errors.New("listen is empty"))
	}
	for _, l := range c.Listen {
		switch l.Network {
		case "udp", "tcp":
		case "tls":
			if c.TLS == nil {
				errs = append(errs, fmt.Errorf("listener %s %s needs a TLS certificate", l.Network, l.Addr))
			}
		default:
			errs = append(errs, fmt.Errorf("listener network %q: want udp, tcp or tls", l.Network))
			continue
		}
		ap, err := netip.ParseAddrPort(l.Addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("listener %s %q: %w", l.Network, l.Addr, err))
			continue
		}
		if ap.Addr().IsUnspecified() && !c.Advertise.IsValid() {
			errs = append(errs, fmt.Errorf("listener %s %s is on the unspecified address: set advertise", l.Network, l.Addr))
		}
	}
	switch c.Auth {
	case AuthLANOpen, AuthAlways:
	default:
		errs = append(errs, fmt.Errorf("auth %q: want %q or %q", c.Auth, AuthLANOpen, AuthAlways))
	}
	for _, a := range c.Accounts {
		if _, err := CanonicalAOR(a.AOR); err != nil {
			errs = append(errs, fmt.Errorf("account %q: %w", a.AOR, err))
		}
	}
	if c.MinExpires <= 0 || c.MaxExpires < c.MinExpires || c.DefaultExpires < c.MinExpires || c.DefaultExpires > c.MaxExpires {
		errs = append(errs, fmt.Errorf("expires: want 0 < min (%v) <= default (%v) <= max (%v)", c.MinExpires, c.DefaultExpires, c.MaxExpires))
	}
	if c.FlowTimer < 0 {
		errs = append(errs, errors.New("flow_timer is negative"))
	}
	if c.MaxMessageSize < 1024 || c.MaxMessageSize > 65535 {
		errs = append(errs, fmt.Errorf("max_message_size %d: want 1024..65535", c.MaxMessageSize))
	}
	if c.TCPIdleTimeout <= 0 {
		errs = append(errs, errors.New("tcp_idle_timeout must be positive"))
	}
	if c.ForwardTimeout <= 0 {
		errs = append(errs, errors.New("forward_timeout must be positive"))
	}
	switch c.Anchor {
	case AnchorRemote, AnchorAlways, AnchorNever:
	default:
		errs = append(errs, fmt.Errorf("anchor %q: want %q, %q or %q", c.Anchor, AnchorRemote, AnchorAlways, AnchorNever))
	}
	if c.MaxCallDuration <= 0 {
		errs = append(errs, errors.New("max_call_duration must be positive"))
	}
	if f := c.Flood; f.Requests < 0 || (f.Requests > 0 && (f.Window <= 0 || f.Ban < 0 || f.MaxSources <= 0)) {
		errs = append(errs, fmt.Errorf("flood: want requests >= 0 and, when limiting, window > 0, ban >= 0, max_sources > 0 (got %+v)", f))
	}
	return errors.Join(errs...)
}

func (c *Config) realm() string {
	if c.Realm != "" {
		return c.Realm
	}
	return c.Domains[0]
}
