package sip

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/transport/v5/stdnet"

	"github.com/superpeer/superpeer/nat/clock"
)

func TestRewriteSDP(t *testing.T) {
	relay := netip.MustParseAddr("198.51.100.7")
	anchor := func(stream int, ep netip.AddrPort) (netip.AddrPort, error) {
		return netip.AddrPortFrom(relay, uint16(30000+2*stream)), nil
	}
	cases := []struct {
		name, in string
		want     []string // lines that must be in the output
		gone     []string // lines that must not
	}{
		{
			name: "session connection, one stream",
			in:   "v=0\r\no=- 1 1 IN IP4 192.168.1.20\r\ns=-\r\nc=IN IP4 192.168.1.20\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:4001\r\n",
			want: []string{"c=IN IP4 198.51.100.7", "m=audio 30000 RTP/AVP 0", "o=- 1 1 IN IP4 192.168.1.20"},
			gone: []string{"c=IN IP4 192.168.1.20", "a=rtcp:4001"},
		},
		{
			name: "media connections, a disabled stream",
			in:   "v=0\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 10.0.0.5\r\nm=video 0 RTP/AVP 96\r\nc=IN IP4 10.0.0.5\r\n",
			want: []string{"m=audio 30000 RTP/AVP 0", "c=IN IP4 198.51.100.7", "m=video 0 RTP/AVP 96", "c=IN IP4 10.0.0.5"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := rewriteSDP([]byte(tc.in), anchor)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(string(out), "\r\n")
			has := func(l string) bool {
				for _, x := range lines {
					if x == l {
						return true
					}
				}
				return false
			}
			for _, w := range tc.want {
				if !has(w) {
					t.Errorf("missing %q in\n%s", w, out)
				}
			}
			for _, g := range tc.gone {
				if has(g) {
					t.Errorf("%q survived in\n%s", g, out)
				}
			}
		})
	}
	if _, err := rewriteSDP([]byte("v=0\r\nm=audio 4000 RTP/AVP 0\r\n"), anchor); err == nil {
		t.Errorf("a stream without a connection address was accepted")
	}
}

// mediaSocket is a phone's RTP socket and the SDP that offers it.
func mediaSocket(t *testing.T, ice bool) (*net.UDPConn, string) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sdp := fmt.Sprintf("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio %d RTP/AVP 0\r\n", c.LocalAddr().(*net.UDPAddr).Port)
	if ice {
		sdp += "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\na=candidate:1 1 UDP 2130706431 127.0.0.1 " +
			fmt.Sprint(c.LocalAddr().(*net.UDPAddr).Port) + " typ host\r\n"
	}
	return c, sdp
}

// sdpMedia returns the address of the first stream of an SDP body.
func sdpMedia(t *testing.T, body []byte) netip.AddrPort {
	var addr netip.Addr
	var port int
	for l := range strings.SplitSeq(string(body), "\r\n") {
		if strings.HasPrefix(l, "c=") && !addr.IsValid() {
			addr, _ = connAddr(l)
		}
		if strings.HasPrefix(l, "m=") && port == 0 {
			fmt.Sscanf(strings.Fields(l)[1], "%d", &port)
		}
	}
	if !addr.IsValid() || port == 0 {
		t.Fatalf("no media address in\n%s", body)
	}
	return netip.AddrPortFrom(addr, uint16(port))
}

// TestMediaAnchoredAcrossSites: a call between two sites without ICE has
// its media anchored in both superpeers' relays, and RTP goes both ways
// through them; with ICE the SDP passes untouched.
func TestMediaAnchoredAcrossSites(t *testing.T) {
	n, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	ov := NewMemOverlay(nil)
	la, ca := ov.Member("a")
	lb, cb := ov.Member("b")
	ra := NewUDPRelay(n, netip.MustParseAddr("127.0.0.1"))
	rb := NewUDPRelay(n, netip.MustParseAddr("127.0.0.1"))
	defer ra.Close()
	defer rb.Close()
	reca, recb := &recordingRelay{MediaRelay: ra}, &recordingRelay{MediaRelay: rb}
	a := testServer(t, "a", "a.test", nil, Deps{Locator: la, Carrier: ca, Media: reca}, nil)
	b := testServer(t, "b", "b.test", nil, Deps{Locator: lb, Carrier: cb, Media: recb}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bob := newPhone(t, "bob", b.addr("udp"), "udp")
	alice := newPhone(t, "alice", a.addr("udp"), "udp")
	if res, err := bob.register(ctx, "sip:bob@b.test", 600, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER: %v %v", res, err)
	}
	waitFor(t, 5*time.Second, "bob's record in the overlay", func() bool { return len(ov.Records("sip:bob@b.test")) == 1 })

	for _, ice := range []bool{false, true} {
		t.Run(fmt.Sprintf("ice=%v", ice), func(t *testing.T) {
			am, asdp := mediaSocket(t, ice)
			bm, bsdp := mediaSocket(t, ice)
			alice.offerSDP, bob.answerSDP = []byte(asdp), []byte(bsdp)
			sess, err := alice.call(ctx, "sip:bob@b.test")
			if err != nil {
				t.Fatalf("call: %v", err)
			}
			bob.mu.Lock()
			offer := bob.lastInvite.Body()
			bob.mu.Unlock()
			answer := sess.InviteResponse.Body()
			if ice {
				if string(offer) != asdp || string(answer) != bsdp {
					t.Errorf("SDP with ICE was changed:\noffer %q\nanswer %q", offer, answer)
				}
			} else {
				toBob, toAlice := sdpMedia(t, answer), sdpMedia(t, offer)
				if toBob == addrPortOf(bm.LocalAddr()) || toAlice == addrPortOf(am.LocalAddr()) {
					t.Fatalf("media not anchored: alice sends to %v, bob to %v", toBob, toAlice)
				}
				// Alice sends to what her answer says; it reaches bob's socket.
				am.WriteToUDPAddrPort([]byte("rtp from alice"), toBob)
				buf := make([]byte, 100)
				bm.SetReadDeadline(time.Now().Add(3 * time.Second))
				k, _, err := bm.ReadFromUDPAddrPort(buf)
				if err != nil || string(buf[:k]) != "rtp from alice" {
					t.Fatalf("bob got %q, %v", buf[:k], err)
				}
				bm.WriteToUDPAddrPort([]byte("rtp from bob"), toAlice)
				am.SetReadDeadline(time.Now().Add(3 * time.Second))
				k, _, err = am.ReadFromUDPAddrPort(buf)
				if err != nil || string(buf[:k]) != "rtp from bob" {
					t.Fatalf("alice got %q, %v", buf[:k], err)
				}
				if ra.Sessions() != 1 || rb.Sessions() != 1 {
					t.Errorf("relay sessions during the call: a %d, b %d; want 1 each", ra.Sessions(), rb.Sessions())
				}
				// The address shown across the overlay must be reachable from
				// the other site; the one shown on the LAN need not.
				if got, want := reca.seen(), "caller:remote callee:lan"; got != want {
					t.Errorf("site A anchored %q, want %q", got, want)
				}
				if got, want := recb.seen(), "caller:lan callee:remote"; got != want {
					t.Errorf("site B anchored %q, want %q", got, want)
				}
			}
			if err := sess.Bye(ctx); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "the relays to be released", func() bool { return ra.Sessions() == 0 && rb.Sessions() == 0 })
		})
	}
}

// recordingRelay notes what was anchored.
type recordingRelay struct {
	MediaRelay
	mu   sync.Mutex
	reqs []AnchorRequest
}

func (r *recordingRelay) Anchor(ctx context.Context, req AnchorRequest) (netip.AddrPort, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req)
	r.mu.Unlock()
	return r.MediaRelay.Anchor(ctx, req)
}

// seen lists leg:side of each anchoring, in order.
func (r *recordingRelay) seen() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, q := range r.reqs {
		side := "lan"
		if q.Remote {
			side = "remote"
		}
		out = append(out, q.Leg.String()+":"+side)
	}
	return strings.Join(out, " ")
}

// TestAnchoredMediaReleasedWithoutBye: a call whose BYE never comes
// through the proxy gives its relay sockets back after MaxCallDuration.
func TestAnchoredMediaReleasedWithoutBye(t *testing.T) {
	n, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	fc := clock.NewFake(time.Now())
	relay := NewUDPRelay(n, netip.MustParseAddr("127.0.0.1"))
	defer relay.Close()
	s := testServer(t, "sp1", "site.test", fc, Deps{Media: relay}, func(c *Config) {
		c.Anchor = AnchorAlways
		c.MaxCallDuration = time.Hour
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bob := newPhone(t, "bob", s.addr("udp"), "udp")
	alice := newPhone(t, "alice", s.addr("udp"), "udp")
	if res, err := bob.register(ctx, "sip:bob@site.test", 600, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER: %v %v", res, err)
	}
	if _, err := alice.call(ctx, "sip:bob@site.test"); err != nil {
		t.Fatalf("call: %v", err)
	}
	if relay.Sessions() != 1 {
		t.Fatalf("%d relay sessions during the call, want 1", relay.Sessions())
	}
	fc.Advance(59 * time.Minute)
	if relay.Sessions() != 1 {
		t.Fatal("the media was released before MaxCallDuration")
	}
	fc.Advance(2 * time.Minute)
	waitFor(t, 5*time.Second, "the relay to be released", func() bool { return relay.Sessions() == 0 })
}
