package portmap

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// FuzzParsePMPResponse: any datagram from the LAN either parses into
// fields that are the bytes it came from, or is refused; never a panic.
func FuzzParsePMPResponse(f *testing.F) {
	f.Add([]byte{0, 128, 0, 0, 0, 0, 3, 232, 198, 51, 100, 7})
	f.Add([]byte{0, 129, 0, 0, 0, 0, 3, 232, 19, 196, 19, 196, 0, 0, 14, 16})
	f.Add([]byte{0, 129, 0, 2, 0, 0, 3, 232})
	f.Add([]byte{2, 129, 0, 0})
	f.Add([]byte{0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parsePMPResponse(b)
		if err != nil {
			return
		}
		if len(b) < 8 || b[0] != pmpVersion || b[1]&pmpOpReplyFlag == 0 {
			t.Fatalf("accepted %x", b)
		}
		if r.Code != binary.BigEndian.Uint16(b[2:]) || r.Epoch != binary.BigEndian.Uint32(b[4:]) {
			t.Fatalf("header fields %+v from %x", r, b)
		}
		if r.Code == 0 && (r.Op == pmpOpMapUDP || r.Op == pmpOpMapTCP) &&
			(len(b) < 16 || r.Mapped != binary.BigEndian.Uint16(b[10:]) || r.Lifetime != binary.BigEndian.Uint32(b[12:])) {
			t.Fatalf("map fields %+v from %x", r, b)
		}
		if r.Code == 0 && r.Op == pmpOpExternal && r.External != netip.AddrFrom4([4]byte(b[8:12])) {
			t.Fatalf("external %v from %x", r.External, b)
		}
	})
}

// FuzzParsePCPResponse: likewise for PCP; a MAP answer's nonce, ports and
// address are the bytes they came from.
func FuzzParsePCPResponse(f *testing.F) {
	var nonce [12]byte
	copy(nonce[:], "abcdefghijkl")
	req := pcpMapRequest(nonce, netip.MustParseAddr("192.168.1.10"), 5060, 5060, netip.Addr{}, 7200)
	ok := append([]byte(nil), req...)
	ok[1] |= pcpReplyFlag
	f.Add(ok)
	ann := pcpAnnounceRequest(netip.MustParseAddr("192.168.1.10"))
	ann[1] |= pcpReplyFlag
	f.Add(ann)
	f.Add([]byte{2, 129, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 129, 0, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parsePCPResponse(b)
		if err != nil {
			return
		}
		if len(b) < pcpHeaderLen || len(b) > pcpMaxLen || len(b)%4 != 0 || b[0] != pcpVersion || b[1]&pcpReplyFlag == 0 {
			t.Fatalf("accepted %x", b)
		}
		if r.Code != b[3] || r.Lifetime != binary.BigEndian.Uint32(b[4:]) || r.Epoch != binary.BigEndian.Uint32(b[8:]) {
			t.Fatalf("header fields %+v from %x", r, b)
		}
		if r.HasMap {
			m := b[pcpHeaderLen:]
			if len(m) < pcpMapLen || string(r.Nonce[:]) != string(m[:12]) ||
				r.Internal != binary.BigEndian.Uint16(m[16:]) || r.External != binary.BigEndian.Uint16(m[18:]) ||
				r.ExternalIP != netip.AddrFrom16([16]byte(m[20:36])).Unmap() {
				t.Fatalf("map fields %+v from %x", r, b)
			}
		} else if r.Op == pcpOpMap && r.Code == 0 {
			t.Fatalf("successful MAP answer without MAP fields from %x", b)
		}
	})
}

// FuzzParseSSDP: an SSDP answer is untrusted input; it parses or is
// refused, and a LOCATION it yields is only followed when trustLocation
// accepts it.
func FuzzParseSSDP(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://192.168.1.1:5000/rootDesc.xml\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://evil.example/x\r\n\r\n"))
	f.Add([]byte("NOTIFY * HTTP/1.1\r\n\r\n"))
	subnet := netip.MustParsePrefix("192.168.1.0/24")
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := parseSSDP(b)
		if err != nil {
			return
		}
		if trustLocation(u, subnet) != nil {
			return
		}
		a, err := netip.ParseAddr(u.Hostname())
		if err != nil || !subnet.Contains(a.Unmap()) || u.Scheme != "http" {
			t.Fatalf("trusted %q", u)
		}
	})
}
