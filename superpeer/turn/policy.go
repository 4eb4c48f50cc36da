package turn

import (
	"fmt"
	"net/netip"
	"sync"
)

// Named special-purpose ranges that a relay refuses by default (the IANA
// IPv4 and IPv6 special-purpose address registries, RFC 6890 and its
// updates). A relay must never become a way into the superpeer's own
// host, its LAN, the carrier's network or anything that is not a unicast
// host on the Internet.
var defaultDenied = []namedPrefix{
	{"0.0.0.0/8", "this network (RFC 791)"},
	{"10.0.0.0/8", "private (RFC 1918)"},
	{"100.64.0.0/10", "shared address space, CGNAT (RFC 6598)"},
	{"127.0.0.0/8", "loopback"},
	{"169.254.0.0/16", "link-local (RFC 3927)"},
	{"172.16.0.0/12", "private (RFC 1918)"},
	{"192.0.0.0/24", "IETF protocol assignments (RFC 6890)"},
	{"192.0.2.0/24", "documentation TEST-NET-1 (RFC 5737)"},
	{"192.88.99.0/24", "6to4 relay anycast (RFC 7526)"},
	{"192.168.0.0/16", "private (RFC 1918)"},
	{"198.18.0.0/15", "benchmarking (RFC 2544)"},
	{"198.51.100.0/24", "documentation TEST-NET-2 (RFC 5737)"},
	{"203.0.113.0/24", "documentation TEST-NET-3 (RFC 5737)"},
	{"224.0.0.0/4", "multicast"},
	{"255.255.255.255/32", "limited broadcast"},
	{"240.0.0.0/4", "reserved (RFC 1112)"},
	{"::/128", "unspecified"},
	{"::1/128", "loopback"},
	{"100::/64", "discard-only (RFC 6666)"},
	{"2001:2::/48", "benchmarking (RFC 5180)"},
	{"2001:10::/28", "ORCHID (RFC 4843)"},
	{"2001:db8::/32", "documentation (RFC 3849)"},
	{"3fff::/20", "documentation (RFC 9637)"},
	{"fc00::/7", "unique local (RFC 4193)"},
	{"fe80::/10", "link-local"},
	{"fec0::/10", "site-local (RFC 3879)"},
	{"ff00::/8", "multicast"},
}

type namedPrefix struct {
	prefix string
	name   string
}

type rangeEntry struct {
	prefix netip.Prefix
	name   string
}

// PeerPolicy decides which peer addresses an allocation may relay to. It
// is what stands between a TURN client and the superpeer's LAN: pion's
// own default grants every peer.
//
// An address is refused when any of its canonical forms (see Canonical)
// is one of the superpeer's own addresses, or falls in a denied range and
// not in an allowed one. An allowed range opens the superpeer's own
// addresses only when it is a single address (/32 or /128): allowing the
// site's LAN must not open the superpeer itself.
type PeerPolicy struct {
	allow []rangeEntry
	deny  []rangeEntry

	mu  sync.RWMutex // guards following
	own map[netip.Addr]bool
}

// Refusal says why a peer address was refused.
type Refusal struct {
	// Addr is the address asked for; Form is the canonical form that was
	// refused (they differ for IPv4 embedded in IPv6).
	Addr, Form netip.Addr
	// Reason is ReasonOwnAddress or ReasonForbiddenPeer.
	Reason string
	// Range names the denied range.
	Range string
}

func (r *Refusal) Error() string {
	if r.Form != r.Addr {
		return fmt.Sprintf("peer %v (carrying %v) refused: %s", r.Addr, r.Form, r.Range)
	}
	return fmt.Sprintf("peer %v refused: %s", r.Addr, r.Range)
}

// NewPeerPolicy returns the default policy (every range in the built-in
// deny list refused) with extra denied ranges and an explicit allow list.
func NewPeerPolicy(allow, deny []netip.Prefix) *PeerPolicy {
	p := &PeerPolicy{own: map[netip.Addr]bool{}}
	for _, np := range defaultDenied {
		p.deny = append(p.deny, rangeEntry{netip.MustParsePrefix(np.prefix), np.name})
	}
	for _, d := range deny {
		p.deny = append(p.deny, rangeEntry{canonicalPrefix(d), "denied by configuration"})
	}
	for _, a := range allow {
		p.allow = append(p.allow, rangeEntry{canonicalPrefix(a), "allowed by configuration"})
	}
	return p
}

// canonicalPrefix turns ::ffff:a.b.c.d/96+n into a.b.c.d/n, so that an
// IPv4 range written in mapped form matches the IPv4 forms Check uses.
func canonicalPrefix(p netip.Prefix) netip.Prefix {
	a := p.Addr()
	if a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked()
	}
	return netip.PrefixFrom(a.WithZone(""), p.Bits()).Masked()
}

// SetOwn replaces the set of the superpeer's own addresses (every address
// of its interfaces, listeners and relays).
func (p *PeerPolicy) SetOwn(addrs []netip.Addr) {
	own := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		for _, f := range Canonical(a) {
			own[f] = true
		}
	}
	p.mu.Lock()
	p.own = own
	p.mu.Unlock()
}

// Check returns nil when a relay may send to a, and the refusal
// otherwise.
func (p *PeerPolicy) Check(a netip.Addr) *Refusal {
	forms := Canonical(a)
	if len(forms) == 0 {
		return &Refusal{Addr: a, Form: a, Reason: ReasonForbiddenPeer, Range: "not an IP address"}
	}
	p.mu.RLock()
	own := p.own
	p.mu.RUnlock()
	for _, f := range forms {
		if own[f] && !p.allowsExactly(f) {
			return &Refusal{Addr: a, Form: f, Reason: ReasonOwnAddress, Range: "the superpeer's own address"}
		}
	}
	return p.checkRanges(a, forms)
}

// refusesAsOwn reports whether Check refuses a, as it is written, for
// being one of the superpeer's own addresses. It runs on the relay path of
// allocations that relay to other allocations, so it does not allocate.
func (p *PeerPolicy) refusesAsOwn(a netip.Addr) bool {
	a = a.WithZone("").Unmap()
	p.mu.RLock()
	own := p.own[a]
	p.mu.RUnlock()
	return own && !p.allowsExactly(a)
}

// checkRanges is Check without the own-address rule: the allowed and
// denied ranges alone decide. forms are a's canonical forms.
func (p *PeerPolicy) checkRanges(a netip.Addr, forms []netip.Addr) *Refusal {
	if len(forms) == 0 {
		return &Refusal{Addr: a, Form: a, Reason: ReasonForbiddenPeer, Range: "not an IP address"}
	}
	for _, f := range forms {
		if p.allows(f) {
			continue
		}
		for _, d := range p.deny {
			if d.prefix.Contains(f) {
				return &Refusal{Addr: a, Form: f, Reason: ReasonForbiddenPeer, Range: d.prefix.String() + " " + d.name}
			}
		}
	}
	return nil
}

func (p *PeerPolicy) allows(a netip.Addr) bool {
	for _, r := range p.allow {
		if r.prefix.Contains(a) {
			return true
		}
	}
	return false
}

func (p *PeerPolicy) allowsExactly(a netip.Addr) bool {
	for _, r := range p.allow {
		if r.prefix.IsSingleIP() && r.prefix.Addr() == a {
			return true
		}
	}
	return false
}

// Canonical returns every address that a datagram sent to a may really
// reach, in canonical form: a itself without zone and with an
// IPv4-mapped address (::ffff:a.b.c.d) reduced to IPv4, followed by each
// IPv4 address embedded in a by a transition mechanism a host or network
// on the path might honour:
//
//   - IPv4-compatible ::a.b.c.d (RFC 4291, deprecated; :: and ::1 are
//     themselves, refused as IPv6)
//   - IPv4-translated ::ffff:0:a.b.c.d (RFC 2765)
//   - 6to4 2002:AABB:CCDD::/48 (RFC 3056)
//   - NAT64 well-known prefix 64:ff9b::/96 and local-use 64:ff9b:1::/48
//     (RFC 6052, RFC 8215)
//   - Teredo 2001::/32: the server and the (obfuscated) client address
//     (RFC 4380)
//   - ISATAP interface identifiers ::0:5efe:a.b.c.d and ::200:5efe:a.b.c.d
//     (RFC 5214), under any prefix
//
// coturn was bypassed through exactly these encodings (CVE-2020-26262,
// CVE-2026-27624). An invalid address yields nothing.
func Canonical(a netip.Addr) []netip.Addr {
	if !a.IsValid() {
		return nil
	}
	a = a.WithZone("").Unmap()
	out := []netip.Addr{a}
	if a.Is4() {
		return out
	}
	b := a.As16()
	v4 := func(i, j, k, l int) netip.Addr { return netip.AddrFrom4([4]byte{b[i], b[j], b[k], b[l]}) }
	zero := func(from, to int) bool {
		for _, x := range b[from:to] {
			if x != 0 {
				return false
			}
		}
		return true
	}
	switch {
	case zero(0, 12) && (b[12] != 0 || b[13] != 0 || b[14] != 0 || b[15] > 1):
		out = append(out, v4(12, 13, 14, 15)) // ::a.b.c.d, but not :: and ::1
	case zero(0, 8) && b[8] == 0xff && b[9] == 0xff && b[10] == 0 && b[11] == 0:
		out = append(out, v4(12, 13, 14, 15)) // ::ffff:0:a.b.c.d
	case b[0] == 0x20 && b[1] == 0x02:
		out = append(out, v4(2, 3, 4, 5)) // 6to4
	case b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4] == 0 && b[5] == 0x01:
		out = append(out, v4(6, 7, 9, 10)) // 64:ff9b:1::/48, RFC 6052 /48 layout
	case b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && zero(4, 12):
		out = append(out, v4(12, 13, 14, 15)) // 64:ff9b::/96
	case b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0:
		out = append(out, v4(4, 5, 6, 7)) // Teredo server
		out = append(out, netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]}))
	}
	if (b[8] == 0 || b[8] == 0x02) && b[9] == 0 && b[10] == 0x5e && b[11] == 0xfe {
		out = append(out, v4(12, 13, 14, 15)) // ISATAP interface identifier
	}
	return out
}
