package probe

import (
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

// FuzzParseBinding feeds arbitrary datagrams, as a hostile or broken
// server could send them, through the client's response parsing: no
// panic, and an accepted response names a valid mapped address.
func FuzzParseBinding(f *testing.F) {
	ip := netip.MustParseAddr("203.0.113.7")
	for _, setters := range [][]stun.Setter{
		{stun.BindingSuccess, &stun.XORMappedAddress{IP: ip.AsSlice(), Port: 4000}},
		{stun.BindingSuccess, &stun.MappedAddress{IP: ip.AsSlice(), Port: 4000}, &stun.OtherAddress{IP: ip.AsSlice(), Port: 3479}},
		{stun.BindingSuccess, &stun.XORMappedAddress{IP: netip.MustParseAddr("2001:db8::1").AsSlice(), Port: 1},
			&stun.ResponseOrigin{IP: ip.AsSlice(), Port: 3478}},
		{stun.BindingError, stun.ErrorCodeAttribute{Code: 420, Reason: []byte("Unknown Attribute")}},
		{stun.BindingRequest},
	} {
		m := stun.MustBuild(append([]stun.Setter{stun.TransactionID}, setters...)...)
		f.Add(m.Raw)
	}
	f.Add([]byte{1, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 4, 0, 1, 2, 3})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		m := new(stun.Message)
		if err := stun.Decode(pkt, m); err != nil {
			return
		}
		b, err := parseBinding(received{msg: m, from: netip.MustParseAddrPort("203.0.113.1:3478"), at: time.Unix(0, 0)})
		if err != nil {
			return
		}
		if m.Type != stun.BindingSuccess {
			t.Fatalf("accepted a %v as a Binding success", m.Type)
		}
		if !b.mapped.IsValid() {
			t.Fatalf("accepted a response without a valid mapped address: %+v", b)
		}
	})
}
