package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/pion/stun/v4"

	"github.com/superpeer/superpeer/nat/stunserver"
)

// Behavior is a NAT's mapping or filtering behaviour (RFC 4787 terms).
type Behavior string

// The behaviours RFC 5780 sections 4.3 and 4.4 tell apart.
const (
	BehaviorUnknown         Behavior = "unknown"
	EndpointIndependent     Behavior = "endpoint-independent"
	AddressDependent        Behavior = "address-dependent"
	AddressAndPortDependent Behavior = "address-and-port-dependent"
)

// Answer is yes, no, or unknown when the test could not run.
type Answer string

// Answers.
const (
	Yes     Answer = "yes"
	No      Answer = "no"
	Unknown Answer = "unknown"
)

// Report is what Discover learnt about the NAT between this host and the
// STUN server.
type Report struct {
	// Server is the STUN server asked.
	Server netip.AddrPort `json:"server"`
	// OtherAddress is the server's alternate address and port (RFC 5780
	// OTHER-ADDRESS); zero when the server has none.
	OtherAddress netip.AddrPort `json:"other_address,omitzero"`
	// Local is the address of the mapping test's socket on this host.
	Local netip.AddrPort `json:"local"`
	// External is the mapping test's socket as the server saw it: the
	// site's public address and the mapped port.
	External netip.AddrPort `json:"external"`
	// NAT is false when External is Local: no translation on the way.
	NAT bool `json:"nat"`
	// Mapping is how the NAT picks an external endpoint for flows from one
	// socket to different destinations (RFC 5780 section 4.3).
	Mapping Behavior `json:"mapping"`
	// Filtering is which senders may reach a mapped port (section 4.4).
	Filtering Behavior `json:"filtering"`
	// Hairpinning says whether a packet from one LAN socket to another's
	// external address comes back in (section 4.5).
	Hairpinning Answer `json:"hairpinning"`
	// PortPreserving is true when every test socket kept its local port
	// as its external port.
	PortPreserving bool `json:"port_preserving"`
	// Notes say why something is unknown.
	Notes []string `json:"notes,omitempty"`
	// Took is how long the discovery ran.
	Took time.Duration `json:"took_ns"`
}

// Discover runs the behaviour discovery tests of RFC 5780 section 4
// against cfg.Server: mapping, filtering and hairpinning, each on fresh
// sockets and all at once, plus port preservation and the external
// address. It fails only when the server does not answer at all; a test
// that cannot run leaves its field unknown with a note.
func Discover(ctx context.Context, cfg Config) (*Report, error) {
	e, err := cfg.env(ctx)
	if err != nil {
		return nil, err
	}
	start := e.clk.Now()
	rep := &Report{Server: e.server, Mapping: BehaviorUnknown, Filtering: BehaviorUnknown, Hairpinning: Unknown}

	var (
		wg            sync.WaitGroup
		mres, fres    testResult
		hres          testResult
		mapped, fmapd portSample
		hmapd         portSample
	)
	wg.Add(3)
	go func() { defer wg.Done(); mres, mapped = e.mappingTest(ctx, rep) }()
	go func() { defer wg.Done(); fres, fmapd = e.filteringTest(ctx) }()
	go func() { defer wg.Done(); hres, hmapd = e.hairpinTest(ctx) }()
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if mres.err != nil {
		return nil, fmt.Errorf("discovering NAT behaviour via %v: %w", e.server, mres.err)
	}
	rep.Mapping, rep.Filtering, rep.Hairpinning = mres.behavior, fres.behavior, hres.answer
	for _, r := range []testResult{mres, fres, hres} {
		if r.note != "" {
			rep.Notes = append(rep.Notes, r.note)
		}
	}
	rep.External = mapped.external
	rep.Local = netip.AddrPortFrom(e.sourceIP(), mapped.local)
	local := e.localIPs()
	rep.NAT = !(local[mapped.external.Addr()] && mapped.external.Port() == mapped.local)
	rep.PortPreserving = true
	for _, s := range []portSample{mapped, fmapd, hmapd} {
		if s.external.IsValid() && s.external.Port() != s.local {
			rep.PortPreserving = false
		}
	}
	rep.Took = e.clk.Since(start)
	e.cfg.logger().Info("NAT behaviour discovered", "server", e.server, "external", rep.External,
		"mapping", rep.Mapping, "filtering", rep.Filtering, "hairpinning", rep.Hairpinning,
		"port_preserving", rep.PortPreserving, "took", rep.Took.Round(time.Millisecond))
	return rep, nil
}

type testResult struct {
	behavior Behavior
	answer   Answer
	note     string
	err      error // only the mapping test's first request fails the whole run
}

// portSample is one socket's local port and its external endpoint.
type portSample struct {
	local    uint16
	external netip.AddrPort
}

// mappingTest is RFC 5780 section 4.3: one socket asks the primary
// address (test I), the alternate address at the primary port (test II)
// and the alternate address and port (test III), and compares the mapped
// addresses.
func (e *env) mappingTest(ctx context.Context, rep *Report) (testResult, portSample) {
	res := testResult{behavior: BehaviorUnknown}
	c, err := e.open()
	if err != nil {
		res.err = err
		return res, portSample{}
	}
	defer c.Close()
	tm := e.cfg.timing()
	r1, err := bind(ctx, c, e.server, tm)
	if err != nil {
		res.err = fmt.Errorf("test I: %w", err)
		return res, portSample{}
	}
	sample := portSample{local: c.local.Port(), external: r1.mapped}
	rep.OtherAddress = r1.other
	if !r1.other.IsValid() {
		res.note = "the server gave no OTHER-ADDRESS: it does not serve RFC 5780, mapping and filtering unknown"
		return res, sample
	}
	r2, err := bind(ctx, c, netip.AddrPortFrom(r1.other.Addr(), e.server.Port()), tm)
	if err != nil {
		res.note = fmt.Sprintf("mapping test II failed: %v", err)
		return res, sample
	}
	if r2.mapped == r1.mapped {
		res.behavior = EndpointIndependent
		return res, sample
	}
	r3, err := bind(ctx, c, r1.other, tm)
	if err != nil {
		res.note = fmt.Sprintf("mapping test III failed: %v", err)
		return res, sample
	}
	if r3.mapped == r2.mapped {
		res.behavior = AddressDependent
	} else {
		res.behavior = AddressAndPortDependent
	}
	return res, sample
}

// filteringTest is RFC 5780 section 4.4: a fresh socket that has only
// talked to the primary address asks for a response from the alternate
// address and port (test II), then from the primary address's other port
// (test III); which of them get through tells the filtering.
func (e *env) filteringTest(ctx context.Context) (testResult, portSample) {
	res := testResult{behavior: BehaviorUnknown}
	c, err := e.open()
	if err != nil {
		res.note = fmt.Sprintf("filtering test: %v", err)
		return res, portSample{}
	}
	defer c.Close()
	tm := e.cfg.timing()
	r1, err := bind(ctx, c, e.server, tm)
	if err != nil {
		res.note = fmt.Sprintf("filtering test I failed: %v", err)
		return res, portSample{}
	}
	sample := portSample{local: c.local.Port(), external: r1.mapped}
	if !r1.other.IsValid() {
		return res, sample
	}
	r2, err := bind(ctx, c, e.server, tm, stunserver.ChangeRequest{ChangeIP: true, ChangePort: true})
	switch {
	case err == nil:
		if r2.from != r1.other {
			res.note = fmt.Sprintf("asked for a response from %v, it came from %v: the server ignores CHANGE-REQUEST", r1.other, r2.from)
			return res, sample
		}
		res.behavior = EndpointIndependent
		return res, sample
	case !errors.Is(err, ErrNoResponse):
		res.note = fmt.Sprintf("filtering test II failed: %v", err)
		return res, sample
	}
	r3, err := bind(ctx, c, e.server, tm, stunserver.ChangeRequest{ChangePort: true})
	switch {
	case err == nil:
		if r3.from.Addr() != e.server.Addr() || r3.from.Port() == e.server.Port() {
			res.note = fmt.Sprintf("asked for a response from another port of %v, it came from %v", e.server.Addr(), r3.from)
			return res, sample
		}
		res.behavior = AddressDependent
	case errors.Is(err, ErrNoResponse):
		res.behavior = AddressAndPortDependent
	default:
		res.note = fmt.Sprintf("filtering test III failed: %v", err)
	}
	return res, sample
}

// hairpinTest is RFC 5780 section 4.5: a second socket sends a Binding
// request to the first socket's external address; if it arrives, the NAT
// hairpins.
func (e *env) hairpinTest(ctx context.Context) (testResult, portSample) {
	res := testResult{answer: Unknown}
	h1, err := e.open()
	if err != nil {
		res.note = fmt.Sprintf("hairpinning test: %v", err)
		return res, portSample{}
	}
	defer h1.Close()
	h2, err := e.open()
	if err != nil {
		res.note = fmt.Sprintf("hairpinning test: %v", err)
		return res, portSample{}
	}
	defer h2.Close()
	tm := e.cfg.timing()
	r1, err := bind(ctx, h1, e.server, tm)
	if err != nil {
		res.note = fmt.Sprintf("hairpinning test: %v", err)
		return res, portSample{}
	}
	sample := portSample{local: h1.local.Port(), external: r1.mapped}
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest)
	if err != nil {
		res.note = err.Error()
		return res, sample
	}
	_, err = transact(ctx, h2, r1.mapped, h1, req, tm)
	switch {
	case err == nil:
		res.answer = Yes
	case errors.Is(err, ErrNoResponse):
		res.answer = No
	default:
		res.note = fmt.Sprintf("hairpinning test: %v", err)
	}
	return res, sample
}

// sourceIP is the local address the host would send to the server from,
// or the unspecified address when the network cannot tell.
func (e *env) sourceIP() netip.Addr {
	unspec := netip.IPv4Unspecified()
	if e.network == "udp6" {
		unspec = netip.IPv6Unspecified()
	}
	// A connected UDP socket gets its source address from the routing
	// table; nothing is sent.
	if c, err := e.net.DialUDP(e.network, nil, net.UDPAddrFromAddrPort(e.server)); err == nil {
		ap, ok := addrPortOf(c.LocalAddr())
		c.Close()
		if ok && !ap.Addr().IsUnspecified() {
			return ap.Addr()
		}
	}
	// Networks that do not route a connected socket (vnet): the lowest
	// address of the right family that is not loopback.
	best := unspec
	for ip := range e.localIPs() {
		if ip.Is4() == unspec.Is4() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() &&
			(best.IsUnspecified() || ip.Less(best)) {
			best = ip
		}
	}
	return best
}

// Format writes the report for people, as a small aligned table.
func (r *Report) Format(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "NAT behaviour via %v (RFC 5780), %v\n", r.Server, r.Took.Round(100*time.Millisecond))
	row := func(k string, v any) { fmt.Fprintf(tw, "  %s\t%v\n", k, v) }
	row("external address", r.External)
	row("local address", r.Local)
	nat := "yes"
	if !r.NAT {
		nat = "no (the external address is local)"
	}
	row("NAT", nat)
	row("mapping", r.Mapping)
	row("filtering", r.Filtering)
	row("hairpinning", r.Hairpinning)
	row("port preservation", yesNo(r.PortPreserving))
	for _, n := range r.Notes {
		row("note", n)
	}
	return tw.Flush()
}

func (r *Report) String() string {
	var b strings.Builder
	r.Format(&b)
	return b.String()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
