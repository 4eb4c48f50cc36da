package turn

import (
	"net/netip"
	"slices"
	"testing"
)

func TestCanonical(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"203.0.113.7", []string{"203.0.113.7"}},
		{"::ffff:127.0.0.1", []string{"127.0.0.1"}},
		{"::ffff:7f00:1", []string{"127.0.0.1"}},
		{"::127.0.0.1", []string{"::7f00:1", "127.0.0.1"}},
		{"::", []string{"::"}},
		{"::1", []string{"::1"}},
		{"::2", []string{"::2", "0.0.0.2"}},
		{"::ffff:0:10.0.0.1", []string{"::ffff:0:a00:1", "10.0.0.1"}},
		{"2002:7f00:1::1", []string{"2002:7f00:1::1", "127.0.0.1"}},
		{"2002:c0a8:101:5::9", []string{"2002:c0a8:101:5::9", "192.168.1.1"}},
		{"64:ff9b::7f00:1", []string{"64:ff9b::7f00:1", "127.0.0.1"}},
		{"64:ff9b::a9fe:a9fe", []string{"64:ff9b::a9fe:a9fe", "169.254.169.254"}},
		// RFC 6052 /48: the IPv4 address straddles the u octet (bits 64-71).
		{"64:ff9b:1:c0a8:1:100::", []string{"64:ff9b:1:c0a8:1:100::", "192.168.1.1"}},
		// Teredo: server 65.54.227.120, client 192.0.2.45 obfuscated.
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", []string{"2001:0:4136:e378:8000:63bf:3fff:fdd2", "65.54.227.120", "192.0.2.45"}},
		{"fe80::5efe:a00:1", []string{"fe80::5efe:a00:1", "10.0.0.1"}},
		{"2001:db8::200:5efe:c0a8:101", []string{"2001:db8::200:5efe:c0a8:101", "192.168.1.1"}},
		{"fe80::1%eth0", []string{"fe80::1"}},
		{"2606:4700::1111", []string{"2606:4700::1111"}},
	}
	for _, tc := range cases {
		var got []string
		for _, a := range Canonical(netip.MustParseAddr(tc.in)) {
			got = append(got, a.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("Canonical(%s) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if got := Canonical(netip.Addr{}); got != nil {
		t.Errorf("Canonical(invalid) = %v, want nothing", got)
	}
}

func TestPeerPolicy(t *testing.T) {
	p := NewPeerPolicy(
		[]netip.Prefix{
			netip.MustParsePrefix("192.168.1.0/24"), // the site's LAN, by the operator's choice
			netip.MustParsePrefix("::ffff:203.0.113.0/120"),
			netip.MustParsePrefix("127.0.0.2/32"),
		},
		[]netip.Prefix{netip.MustParsePrefix("8.8.8.0/24")},
	)
	p.SetOwn([]netip.Addr{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("fd00::2")})
	cases := []struct {
		peer   string
		reason string // "" allowed
	}{
		{"1.1.1.1", ""},
		{"2606:4700::1111", ""},
		{"192.168.1.20", ""},               // allowed LAN
		{"::ffff:192.168.1.20", ""},        // same, mapped
		{"2002:c0a8:114::1", ""},           // same, 6to4
		{"203.0.113.9", ""},                // allowed through a prefix written in mapped form
		{"127.0.0.2", ""},                  // an exact allow
		{"192.168.1.10", ReasonOwnAddress}, // the superpeer inside its allowed LAN
		{"::ffff:192.168.1.10", ReasonOwnAddress},
		{"64:ff9b::c0a8:10a", ReasonOwnAddress},
		{"127.0.0.1", ReasonOwnAddress},
		{"fd00::2", ReasonOwnAddress},
		{"192.168.2.1", ReasonForbiddenPeer},
		{"8.8.8.8", ReasonForbiddenPeer},         // denied by configuration
		{"2002:808:808::1", ReasonForbiddenPeer}, // the same, in 6to4
		{"10.1.2.3", ReasonForbiddenPeer},
		{"100.127.255.254", ReasonForbiddenPeer},
		{"198.19.0.1", ReasonForbiddenPeer},
		{"198.51.100.1", ReasonForbiddenPeer},
		{"192.0.2.1", ReasonForbiddenPeer},
		{"239.255.255.250", ReasonForbiddenPeer},
		{"2001:db8::1", ReasonForbiddenPeer},
		{"2001:2::1", ReasonForbiddenPeer},
		{"ff02::1", ReasonForbiddenPeer},
		{"fec0::1", ReasonForbiddenPeer},
		{"100::1", ReasonForbiddenPeer},
		{"2001:0:4136:e378:8000:63bf:f5ff:fffe", ReasonForbiddenPeer}, // Teredo client 10.0.0.1
	}
	for _, tc := range cases {
		ref := p.Check(netip.MustParseAddr(tc.peer))
		got := ""
		if ref != nil {
			got = ref.Reason
		}
		if got != tc.reason {
			t.Errorf("Check(%s) = %q (%v), want %q", tc.peer, got, ref, tc.reason)
		}
	}
}

// TestDefaultPolicyAttackList: the default policy (no allow list) refuses
// every address of the attack list by itself.
func TestDefaultPolicyAttackList(t *testing.T) {
	p := NewPeerPolicy(nil, nil)
	for _, a := range attackList {
		if p.Check(netip.MustParseAddr(a)) == nil {
			t.Errorf("the default policy allows %s", a)
		}
	}
	if ref := p.Check(netip.MustParseAddr("203.0.113.10")); ref == nil {
		t.Errorf("the default policy allows the lab's documentation-range WAN; tests must allow it explicitly")
	}
}

func FuzzCanonical(f *testing.F) {
	for _, s := range append([]string{"2001:0:4136:e378:8000:63bf:3fff:fdd2", "64:ff9b:1::", "fe80::5efe:a00:1%x"}, attackList...) {
		f.Add(netip.MustParseAddr(s).AsSlice())
	}
	p := NewPeerPolicy([]netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}, nil)
	p.SetOwn([]netip.Addr{netip.MustParseAddr("192.168.1.10")})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, ok := netip.AddrFromSlice(b)
		if !ok {
			return
		}
		forms := Canonical(a)
		if len(forms) == 0 || forms[0] != a.Unmap() {
			t.Fatalf("Canonical(%v) = %v: the address itself must come first", a, forms)
		}
		for _, f := range forms[1:] {
			if !f.Is4() {
				t.Fatalf("Canonical(%v) = %v: embedded forms are IPv4", a, forms)
			}
		}
		// A mapped address and its IPv4 form get the same verdict.
		if a.Is4() {
			m := netip.AddrFrom16(a.As16())
			if (p.Check(a) == nil) != (p.Check(m) == nil) {
				t.Fatalf("%v and %v get different verdicts", a, m)
			}
		}
		// Whatever carries a refused IPv4 address is refused.
		for _, f := range forms[1:] {
			if p.Check(f) != nil && p.Check(a) == nil {
				t.Fatalf("%v is allowed though it carries %v, which is refused", a, f)
			}
		}
	})
}
