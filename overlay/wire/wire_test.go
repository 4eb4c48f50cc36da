package wire

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/superpeer/superpeer/overlay/routing"
)

func sampleFrames() []*Frame {
	a, b := routing.ID{1, 2}, routing.ID{3, 4}
	return []*Frame{
		{Type: TypeHello, Hello: &Hello{Self: Contact{ID: a, Reachability: 2, Addrs: []string{"203.0.113.1:4790"}}, Observed: "198.51.100.9:5000", Links: []routing.ID{a, b}, Linked: true}},
		{Type: TypePing, Nonce: 42},
		{Type: TypePong, Nonce: 43},
		{Type: TypeForward, Forward: &Forward{ID: 7, Kind: 3, Exact: true, TTL: 30, Dest: b, Via: []routing.ID{a}, Dead: []routing.ID{}, Payload: []byte("INVITE")}},
		{Type: TypeForward, Forward: &Forward{ID: 8, Kind: 4, TTL: 29, Dest: a, Via: []routing.ID{b, a}, Dead: []routing.ID{b}, Payload: []byte{}}},
		{Type: TypeAck, Nonce: 7},
		{Type: TypeReach, Reach: []uint32{1, 0x80000000, 0xffffffff}},
		{Type: TypeReach, Reach: []uint32{}},
		{Type: TypeReply, Reply: &Reply{ID: 7, Kind: 4, Path: []routing.ID{a, b}, Payload: []byte{}}},
		{Type: TypeData, Data: []byte("SIP/2.0 200 OK")},
		{Type: TypeRelay, Relay: &Relay{Peer: a, Data: []byte{22, 254, 253}}},
		{Type: TypeClose, Reason: "replaced"},
	}
}

func TestFramesRoundTrip(t *testing.T) {
	for _, f := range sampleFrames() {
		p, err := Marshal(f)
		if err != nil {
			t.Fatalf("type %d: %v", f.Type, err)
		}
		got, err := Unmarshal(p)
		if err != nil {
			t.Fatalf("type %d: %v", f.Type, err)
		}
		if !reflect.DeepEqual(got, f) {
			t.Fatalf("type %d: round trip gave %+v, want %+v", f.Type, got, f)
		}
	}
}

func TestMalformedFramesSayWhat(t *testing.T) {
	cases := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "type"},
		{"unknown type", []byte{99}, "unknown type 99"},
		{"truncated ping", []byte{byte(TypePing), 1, 2}, "nonce"},
		{"via list too long", append([]byte{byte(TypeForward)}, append(make([]byte, 11+32), 0xff, 0xff)...), "via list"},
		{"trailing bytes", []byte{byte(TypeClose), 0, 1, 'x', 'y'}, "trailing"},
		{"reach too long", []byte{byte(TypeReach), 0x01, 0x01}, "reach: 257 entries"},
		{"truncated reach", []byte{byte(TypeReach), 0, 2, 0, 0, 0, 1}, "reach"},
		{"dead list too long", append([]byte{byte(TypeForward)}, append(make([]byte, 11+32+2), 0x00, 0x11)...), "dead list"},
	}
	for _, tc := range cases {
		_, err := Unmarshal(tc.in)
		if !errors.Is(err, ErrMalformed) {
			t.Fatalf("%s: error %v does not wrap ErrMalformed", tc.name, err)
		}
		if !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
			t.Fatalf("%s: error %q does not say %q", tc.name, err, tc.want)
		}
	}
}

func FuzzUnmarshal(f *testing.F) {
	for _, fr := range sampleFrames() {
		p, _ := Marshal(fr)
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		fr, err := Unmarshal(p)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		q, err := Marshal(fr)
		if err != nil {
			t.Fatalf("decoded frame does not re-encode: %v", err)
		}
		if _, err := Unmarshal(q); err != nil {
			t.Fatalf("re-encoded frame does not decode: %v", err)
		}
	})
}

func FuzzContacts(f *testing.F) {
	f.Add(Contacts([]Contact{{ID: routing.ID{1}, Addrs: []string{"a"}}}))
	f.Fuzz(func(t *testing.T, p []byte) {
		if _, err := ParseContacts(p); err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("error %v does not wrap ErrMalformed", err)
		}
	})
}
