package nat

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"
)

// Protocol is the transport of a flow.
type Protocol string

// The transports a pinhole can carry.
const (
	UDP Protocol = "udp"
	TCP Protocol = "tcp"
)

// Method is how a pinhole is kept open.
type Method string

// The ways a pinhole is kept: by keepalives through the NAT, or by a
// verified port mapping on the gateway (no keepalives needed).
const (
	MethodKeepalive Method = "keepalive"
	MethodUPnP      Method = "upnp"
	MethodPMP       Method = "pmp"
	MethodPCP       Method = "pcp"
)

// Refresh is the kind of packet that refreshes a pinhole, cheapest first.
type Refresh string

// The refreshes the keeper knows. CRLF is RFC 5626's double-CRLF ping on a
// SIP stream flow (4 bytes, answered by a CRLF pong); STUN is an RFC 5389
// Binding request on a UDP flow (20 bytes, answered with the mapped
// address); Hook is whatever the flow's owner sends (an overlay ping).
const (
	RefreshCRLF Refresh = "crlf"
	RefreshSTUN Refresh = "stun"
	RefreshHook Refresh = "hook"
)

// PinholeSpec describes a flow for Keeper.Add. The owner of the flow keeps
// its socket and its read loop: the keeper only writes refreshes and learns
// of replies from the owner (Keeper.HandleSTUN, Pinhole.Replied).
type PinholeSpec struct {
	// Protocol is the flow's transport; empty means UDP.
	Protocol Protocol
	// Local is the flow's local socket address. It is shown in the table
	// and matched against port mappings (Keeper.Cover); an unspecified
	// address matches a mapping of the same port.
	Local netip.AddrPort
	// Remote is the far end of the flow.
	Remote netip.AddrPort
	// External is the flow's address on the NAT's outside, when the owner
	// knows it already; otherwise the first STUN refresh learns it.
	External netip.AddrPort
	// Opened is when the flow's first packet passed; zero means now.
	Opened time.Time
	// SeenReply says the flow has already had an answer from Remote. Until
	// it has, a NAT keeps it on its short "unreplied" timer, so the keeper
	// refreshes at once.
	SeenReply bool

	// Conn is a UDP flow's socket: when set, the keeper refreshes with STUN
	// Binding requests written to Remote through Conn, and the owner passes
	// every STUN message it reads from Conn to Keeper.HandleSTUN.
	Conn net.PacketConn
	// Stream is a SIP stream flow (TCP or TLS): when set, the keeper
	// refreshes with an RFC 5626 CRLF ping written to it, and the owner
	// calls Pinhole.Replied when it reads the CRLF pong. Writes run on a
	// goroutine of their own and end when the owner closes the stream.
	Stream io.Writer
	// Hook is the owner's own refresh (an overlay ping). It should send and
	// return; the owner calls Pinhole.Replied when the answer arrives. The
	// context ends after the keeper's ReplyTimeout.
	Hook func(ctx context.Context) error
	// Reopen, if set, is called after the flow is found lost, to open it
	// again (a stream flow reconnects). A UDP flow needs none: the keeper's
	// next refresh opens a new binding by itself.
	Reopen func(ctx context.Context) error
	// Notify, if set, is told of losses, remaps and recoveries. It runs on
	// the keeper's goroutine and must not block.
	Notify func(Event)
	// Lifetime, if set, replaces the keeper's lifetime source for this
	// pinhole (a flow through another NAT, a TCP flow).
	Lifetime LifetimeSource
}

func (s *PinholeSpec) refreshes() []Refresh {
	var r []Refresh
	if s.Stream != nil {
		r = append(r, RefreshCRLF)
	}
	if s.Conn != nil {
		r = append(r, RefreshSTUN)
	}
	if s.Hook != nil {
		r = append(r, RefreshHook)
	}
	return r
}

func (s *PinholeSpec) validate() error {
	switch s.Protocol {
	case UDP, TCP:
	default:
		return fmt.Errorf("pinhole protocol %q: want udp or tcp", s.Protocol)
	}
	if !s.Remote.IsValid() {
		return fmt.Errorf("pinhole has no remote endpoint")
	}
	if len(s.refreshes()) == 0 {
		return fmt.Errorf("pinhole %s -> %s has no way to refresh it (Conn, Stream or Hook)", s.Local, s.Remote)
	}
	if s.Protocol == TCP && s.Conn != nil {
		return fmt.Errorf("pinhole %s -> %s: STUN refresh on a TCP flow; use Stream or Hook", s.Local, s.Remote)
	}
	return nil
}

// EventKind says what happened to a pinhole.
type EventKind string

// The events a pinhole's owner is told of.
const (
	// EventRemapped: a refresh's reply showed a new external address. The
	// old binding is gone (whatever was sent to it was lost); the new one
	// is open already.
	EventRemapped EventKind = "remapped"
	// EventLost: refreshes got no reply within the deadline. The keeper
	// calls Reopen, if set, and keeps trying.
	EventLost EventKind = "lost"
	// EventRestored: a lost pinhole answers again.
	EventRestored EventKind = "restored"
)

// Event tells a pinhole's owner what happened to its flow.
type Event struct {
	Kind   EventKind
	Reason string
	// OldExternal and NewExternal are the flow's external addresses before
	// and after (equal when unknown or unchanged).
	OldExternal, NewExternal netip.AddrPort
	// Idle is how long the flow had been silent before the refresh that
	// found the change.
	Idle time.Duration
	// Pinhole is the pinhole's state after the event.
	Pinhole PinholeStatus
}

// PinholeStatus is one row of the pinhole table (`superpeer pinholes`).
// Durations are nanoseconds in JSON, as Go encodes time.Duration.
type PinholeStatus struct {
	ID       uint64         `json:"id"`
	Protocol Protocol       `json:"protocol"`
	Local    netip.AddrPort `json:"local"`
	Remote   netip.AddrPort `json:"remote"`
	External netip.AddrPort `json:"external"`
	Method   Method         `json:"method"`
	Refresh  Refresh        `json:"refresh"`
	// State is "ok", "warming" (a new flow, not yet on the NAT's long
	// timer), "lost" or "mapped" (kept by a port mapping).
	State string `json:"state"`
	// Age is since the pinhole was added; Idle since its last packet
	// either way.
	Age  time.Duration `json:"age"`
	Idle time.Duration `json:"idle"`
	// Lifetime and LifetimeError are the estimate of the NAT's binding
	// lifetime the interval is derived from; Measured says whether it is a
	// measurement or the keeper's default.
	Lifetime      time.Duration `json:"lifetime"`
	LifetimeError time.Duration `json:"lifetime_error"`
	Measured      bool          `json:"measured"`
	// Interval is the current time between refreshes (zero when mapped).
	Interval   time.Duration `json:"interval"`
	Keepalives uint64        `json:"keepalives"`
	Losses     uint64        `json:"losses"`
	Remaps     uint64        `json:"remaps"`
	// BytesOut and BytesIn count keepalive traffic and the traffic the
	// owner reported with Pinhole.Traffic.
	BytesOut uint64 `json:"bytes_out"`
	BytesIn  uint64 `json:"bytes_in"`
}

// FormatPinholes writes the pinhole table for people.
func FormatPinholes(w io.Writer, rows []PinholeStatus) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPROTO\tLOCAL\tREMOTE\tEXTERNAL\tMETHOD\tSTATE\tAGE\tIDLE\tLIFETIME\tINTERVAL\tKEEPALIVES\tLOSSES\tREMAPS\tBYTES OUT/IN")
	for _, r := range rows {
		life := "-"
		if r.Lifetime > 0 {
			life = short(r.Lifetime)
			if r.LifetimeError > 0 {
				life += "±" + short(r.LifetimeError)
			}
			if !r.Measured {
				life += " (default)"
			}
		}
		interval := "-"
		if r.Interval > 0 {
			interval = short(r.Interval)
		}
		method := string(r.Method)
		if r.Method == MethodKeepalive {
			method += "/" + string(r.Refresh)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d/%d\n",
			r.ID, r.Protocol, addrOrDash(r.Local), addrOrDash(r.Remote), addrOrDash(r.External),
			method, r.State, short(r.Age), short(r.Idle), life, interval,
			r.Keepalives, r.Losses, r.Remaps, r.BytesOut, r.BytesIn)
	}
	return tw.Flush()
}

func addrOrDash(a netip.AddrPort) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

// short prints a duration to a tenth of a second ("1m30s", "5.4s").
func short(d time.Duration) string {
	if d >= time.Minute {
		d = d.Round(time.Second)
	} else {
		d = d.Round(100 * time.Millisecond)
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	return s
}
