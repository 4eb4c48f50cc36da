package stunserver

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/superpeer/superpeer/nat/clock"
)

func testHandler(rate float64, burst, maxSources int) *handler {
	h := &handler{
		alt:        true,
		maxPadding: 1500,
		lim:        newLimiter(rate, burst, maxSources),
	}
	h.addrs = [2][2]netip.AddrPort{
		{netip.AddrPortFrom(primary, 3478), netip.AddrPortFrom(primary, 3479)},
		{netip.AddrPortFrom(alternate, 3478), netip.AddrPortFrom(alternate, 3479)},
	}
	return h
}

// TestRateLimitPerSource shows a source held to its burst and then to its
// rate, whatever ports it uses, while another source is served.
func TestRateLimitPerSource(t *testing.T) {
	clk := clock.NewFake(time.Unix(1000, 0))
	h := testHandler(2, 5, 100)
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw
	attacker := netip.MustParseAddr("192.0.2.66")
	answered := func(src netip.Addr, n int) int {
		got := 0
		for i := range n {
			// Every request from a new port, as a spoofer would send them.
			r := h.handle(req, netip.AddrPortFrom(src, uint16(1000+i)), sockID{}, clk.Now())
			if r.verdict == answered {
				got++
			}
		}
		return got
	}
	if got := answered(attacker, 50); got != 5 {
		t.Fatalf("a burst of 50 got %d answers, want the burst of 5", got)
	}
	if got := answered(netip.MustParseAddr("192.0.2.7"), 3); got != 3 {
		t.Fatalf("another source got %d of 3 answers while the first was limited", got)
	}
	clk.Advance(2 * time.Second)
	if got := answered(attacker, 50); got != 4 {
		t.Fatalf("after 2 s at 2/s the source got %d answers, want 4", got)
	}
	clk.Advance(time.Hour)
	if got := answered(attacker, 50); got != 5 {
		t.Fatalf("after an hour the source got %d answers, want no more than the burst of 5", got)
	}
	if st := h.stats(); st.RateLimited != 136 || st.Answered != 17 {
		t.Fatalf("stats %+v, want 136 rate limited and 17 answered", st)
	}
}

// TestRateLimitTableBound shows the limiter's table held to MaxSources:
// a new source waits until an old one's bucket has refilled.
func TestRateLimitTableBound(t *testing.T) {
	clk := clock.NewFake(time.Unix(1000, 0))
	h := testHandler(1, 2, 2)
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw
	src := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 5000)
	}
	for i := range 2 {
		if r := h.handle(req, src(i), sockID{}, clk.Now()); r.verdict != answered {
			t.Fatalf("source %d refused with room in the table: %s", i, r.reason)
		}
	}
	if r := h.handle(req, src(3), sockID{}, clk.Now()); r.verdict != limited {
		t.Fatalf("a third source was served with the table full")
	}
	clk.Advance(2 * time.Second)
	if r := h.handle(req, src(3), sockID{}, clk.Now()); r.verdict != answered {
		t.Fatalf("a third source refused after the others refilled: %s", r.reason)
	}
	if n := h.lim.sources(); n > 2 {
		t.Fatalf("the table holds %d sources, bound is 2", n)
	}
}

// FuzzHandle feeds arbitrary datagrams to the request handler. Whatever
// comes in: no panic; an answer goes only to the sender's IP address, is a
// well-formed STUN response to the same transaction and is not much larger
// than the request (no amplification); only Binding requests get success;
// what is dropped leaves the rate limiter alone.
func FuzzHandle(f *testing.F) {
	seed := func(setters ...stun.Setter) {
		m, err := stun.Build(append([]stun.Setter{stun.TransactionID}, setters...)...)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(m.Raw)
	}
	seed(stun.BindingRequest)
	seed(stun.BindingRequest, stun.Fingerprint)
	seed(stun.BindingRequest, ChangeRequest{ChangeIP: true, ChangePort: true})
	seed(stun.BindingRequest, ChangeRequest{ChangePort: true}, stun.Fingerprint)
	seed(stun.BindingRequest, ResponsePort(40000))
	seed(stun.BindingRequest, Padding(500))
	seed(stun.BindingRequest, Padding(8), ResponsePort(9))
	seed(stun.BindingRequest, stun.RawAttribute{Type: 0x0002, Value: []byte{0, 1, 0, 80, 1, 2, 3, 4}})
	seed(stun.BindingRequest, stun.NewUsername("u"), stun.NewSoftware("s"))
	seed(stun.NewType(stun.MethodAllocate, stun.ClassRequest))
	seed(stun.NewType(stun.MethodBinding, stun.ClassIndication))
	seed(stun.BindingSuccess, &stun.XORMappedAddress{IP: primary.AsSlice(), Port: 1})
	f.Add([]byte("not stun at all"))
	f.Add([]byte{0, 1, 0, 4, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 3, 0, 9})

	src := netip.MustParseAddrPort("192.0.2.1:40000")
	f.Fuzz(func(t *testing.T, pkt []byte) {
		h := testHandler(1000, 1000, 100)
		in := bytes.Clone(pkt)
		r := h.handle(pkt, src, sockID{1, 0}, time.Unix(0, 0))
		if !bytes.Equal(in, pkt) {
			t.Fatal("the handler changed the request's bytes")
		}
		switch r.verdict {
		case dropped, limited:
			if r.raw != nil {
				t.Fatal("a dropped request carries a response")
			}
			if r.verdict == dropped && h.lim.sources() != 0 {
				t.Fatal("a dropped datagram touched the rate limiter")
			}
			if r.reason == "" {
				t.Fatal("dropped without a reason")
			}
			return
		}
		if r.to.Addr() != src.Addr() {
			t.Fatalf("response aimed at %v, the request came from %v", r.to, src)
		}
		if len(r.raw) > len(pkt)+160 {
			t.Fatalf("a %d-byte request drew a %d-byte response", len(pkt), len(r.raw))
		}
		var m stun.Message
		if err := stun.Decode(r.raw, &m); err != nil {
			t.Fatalf("the response does not decode: %v", err)
		}
		if string(m.TransactionID[:]) != string(pkt[8:20]) {
			t.Fatal("response for another transaction")
		}
		if err := stun.Fingerprint.Check(&m); err != nil {
			t.Fatalf("response FINGERPRINT: %v", err)
		}
		var req stun.Message
		reqOK := stun.Decode(pkt, &req) == nil
		switch r.verdict {
		case answered:
			if !reqOK || req.Type != stun.BindingRequest || m.Type != stun.BindingSuccess {
				t.Fatalf("success %v to a %v", m.Type, req.Type)
			}
			var x stun.XORMappedAddress
			if err := x.GetFrom(&m); err != nil || x.Port != int(src.Port()) {
				t.Fatalf("XOR-MAPPED-ADDRESS %v (%v), want %v", x, err, src)
			}
		case refused:
			var ec stun.ErrorCodeAttribute
			if err := ec.GetFrom(&m); err != nil || (ec.Code != 400 && ec.Code != 420) || m.Type.Class != stun.ClassErrorResponse {
				t.Fatalf("error response %v %v (%v)", m.Type, ec, err)
			}
			if r.to != src || r.via != (sockID{1, 0}) {
				t.Fatalf("error response sent to %v via %v, want back to the source on the socket it came in on", r.to, r.via)
			}
		}
	})
}
