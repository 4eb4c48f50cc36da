package sip

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/pion/stun/v4"
)

// TestRegisterAuth: a phone outside the site's LAN must authenticate
// (digest, RFC 3261 section 22); without an account it is refused.
func TestRegisterAuth(t *testing.T) {
	s := testServer(t, "sp1", "site.test", nil, Deps{}, func(c *Config) {
		c.LAN = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} // loopback is not the LAN here
		c.Accounts = []Account{{AOR: "sip:bob@site.test", Password: "s3cret"}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bob := newPhone(t, "bob", s.addr("udp"), "udp")
	res, err := bob.register(ctx, "sip:bob@site.test", 600, nil)
	if err != nil || res.StatusCode != 401 || res.GetHeader("WWW-Authenticate") == nil {
		t.Fatalf("REGISTER without credentials from outside the LAN: %v %v, want 401 with a challenge", res, err)
	}
	for _, tc := range []struct {
		password string
		want     int
	}{{"wrong", 401}, {"s3cret", 200}} {
		var to sip.Uri
		sip.ParseUri("sip:bob@site.test", &to)
		req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: "site.test"})
		req.AppendHeader(&sip.ToHeader{Address: to})
		req.AppendHeader(bob.contact.Clone())
		req.SetDestination(s.addr("udp").String())
		first, err := bob.cli.Do(ctx, req)
		if err != nil || first.StatusCode != 401 {
			t.Fatalf("first REGISTER: %v %v", first, err)
		}
		got, err := bob.cli.DoDigestAuth(ctx, req, first, sipgo.DigestAuth{Username: "bob", Password: tc.password})
		if err != nil || got.StatusCode != tc.want {
			t.Errorf("REGISTER with password %q: %v %v, want %d", tc.password, got, err, tc.want)
		}
	}
	eve := newPhone(t, "eve", s.addr("udp"), "udp")
	if res, err := eve.register(ctx, "sip:eve@site.test", 600, nil); err != nil || res.StatusCode != 403 {
		t.Errorf("REGISTER for an AOR without an account from outside the LAN: %v %v, want 403", res, err)
	}
	if res, err := bob.register(ctx, "sip:bob@elsewhere.test", 600, nil); err != nil || res.StatusCode != 403 {
		t.Errorf("REGISTER for another domain: %v %v, want 403", res, err)
	}
}

// TestRegisterRules: expiry bounds (423 with Min-Expires), Contact: *
// and bindings listed in the answer.
func TestRegisterRules(t *testing.T) {
	s := testServer(t, "sp1", "site.test", nil, Deps{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bob := newPhone(t, "bob", s.addr("udp"), "udp")
	res, err := bob.register(ctx, "sip:bob@site.test", 10, nil)
	if err != nil || res.StatusCode != 423 || res.GetHeader("Min-Expires") == nil || res.GetHeader("Min-Expires").Value() != "60" {
		t.Errorf("REGISTER with expires 10: %v %v, want 423 with Min-Expires: 60", res, err)
	}
	res, err = bob.register(ctx, "sip:bob@site.test", 999999, nil)
	if err != nil || res.StatusCode != 200 || !strings.Contains(res.String(), "expires=7200") {
		t.Errorf("REGISTER with a long expiry was not cut to the maximum (7200 s):\n%v %v", res, err)
	}
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: "site.test"})
	var to sip.Uri
	sip.ParseUri("sip:bob@site.test", &to)
	req.AppendHeader(&sip.ToHeader{Address: to})
	req.AppendHeader(sip.NewHeader("Contact", "*"))
	req.AppendHeader(sip.NewHeader("Expires", "0"))
	res, err = bob.do(ctx, req)
	if err != nil || res.StatusCode != 200 || res.GetHeader("Contact") != nil {
		t.Errorf("REGISTER Contact: * : %v %v, want 200 with no bindings left", res, err)
	}
}

// TestRegisterPath: a REGISTER that came through an edge proxy carries
// Path (RFC 3327); requests to the contact go through that proxy, with
// the Path as Route.
func TestRegisterPath(t *testing.T) {
	s := testServer(t, "sp1", "site.test", nil, Deps{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	edge, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer edge.Close()
	path := "<sip:127.0.0.1:" + strconv.Itoa(edge.LocalAddr().(*net.UDPAddr).Port) + ";lr>"
	bob := newPhone(t, "bob", s.addr("udp"), "udp")
	res, err := bob.register(ctx, "sip:bob@site.test", 600, nil, sip.NewHeader("Path", path), sip.NewHeader("Supported", "path"))
	if err != nil || res.StatusCode != 200 || res.GetHeader("Path") == nil {
		t.Fatalf("REGISTER with Path: %v %v, want 200 echoing Path", res, err)
	}
	alice := newPhone(t, "alice", s.addr("udp"), "udp")
	go alice.call(ctx, "sip:bob@site.test")
	buf := make([]byte, 4096)
	edge.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := edge.ReadFrom(buf)
	if err != nil {
		t.Fatalf("the INVITE never reached the Path's proxy: %v", err)
	}
	inv := string(buf[:n])
	if !strings.HasPrefix(inv, "INVITE sip:bob@127.0.0.1:"+strconv.Itoa(int(bob.addr.Port()))) || !strings.Contains(inv, "Route: "+path) {
		t.Errorf("INVITE at the edge proxy should target bob's contact with the Path as Route:\n%s", inv)
	}
}

// TestSTUNKeepalive: a STUN Binding request on the SIP port (RFC 5626
// section 4.4.2) is answered with the sender's address.
func TestSTUNKeepalive(t *testing.T) {
	s := testServer(t, "sp1", "site.test", nil, Deps{}, nil)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if _, err := c.WriteToUDPAddrPort(req.Raw, s.addr("udp")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, _, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no STUN answer: %v", err)
	}
	res := &stun.Message{Raw: buf[:n]}
	var xor stun.XORMappedAddress
	if err := res.Decode(); err != nil || res.Type != stun.BindingSuccess || res.TransactionID != req.TransactionID {
		t.Fatalf("bad STUN answer %v: %v", res, err)
	}
	if err := xor.GetFrom(res); err != nil || xor.Port != c.LocalAddr().(*net.UDPAddr).Port {
		t.Errorf("XOR-MAPPED-ADDRESS %v (%v), want %v", xor, err, c.LocalAddr())
	}
}

// TestLoopAndHops: a contact that points back at the proxy makes the
// request loop: 482 (RFC 3261 section 16.3 step 4); Max-Forwards 0 gets
// 483.
func TestLoopAndHops(t *testing.T) {
	s := testServer(t, "sp1", "site.test", nil, Deps{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	loop := newPhone(t, "loop", s.addr("udp"), "udp")
	loop.contact.Address.Port = int(s.addr("udp").Port()) // bob "is" the proxy itself
	if res, err := loop.register(ctx, "sip:loop@site.test", 600, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER: %v %v", res, err)
	}
	alice := newPhone(t, "alice", s.addr("udp"), "udp")
	_, err := alice.call(ctx, "sip:loop@site.test")
	if code := statusOf(err); code != 482 && code != 483 {
		t.Errorf("call into a loop: %v, want 482 (or 483 when the hops run out first)", err)
	}
	if s.Status().Proxy.LoopsDetected == 0 {
		t.Errorf("no loop detected")
	}
	req := sip.NewRequest(sip.MESSAGE, sip.Uri{Scheme: "sip", User: "loop", Host: "site.test"})
	mf := sip.MaxForwardsHeader(0)
	req.AppendHeader(&mf)
	if res, err := alice.do(ctx, req); err != nil || res.StatusCode != 483 {
		t.Errorf("Max-Forwards 0: %v %v, want 483", res, err)
	}
}

// TestCancel: the caller cancels a ringing call; the CANCEL reaches the
// callee, which ends its transaction, and the caller's INVITE gets 487.
func TestCancel(t *testing.T) {
	s := testServer(t, "sp1", "site.test", nil, Deps{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bob := newPhone(t, "bob", s.addr("udp"), "udp")
	bob.ringOnly = true
	if res, err := bob.register(ctx, "sip:bob@site.test", 600, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER: %v %v", res, err)
	}
	alice := newPhone(t, "alice", s.addr("udp"), "udp")
	req := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "bob", Host: "site.test"})
	req.AppendHeader(alice.route())
	req.AppendHeader(alice.contact.Clone())
	req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	req.SetBody([]byte(testSDP))
	sess, err := alice.dcc.WriteInvite(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	ringCtx, stopRinging := context.WithCancel(ctx)
	go func() {
		waitFor(t, 5*time.Second, "bob to ring", func() bool { return bob.invites.Load() == 1 })
		time.Sleep(50 * time.Millisecond) // let the 180 reach alice: CANCEL needs a provisional response first
		stopRinging()
	}()
	err = sess.WaitAnswer(ringCtx, sipgo.AnswerOptions{})
	if err == nil {
		t.Fatal("the call was answered")
	}
	waitFor(t, 5*time.Second, "bob to see the CANCEL", func() bool { return bob.cancels.Load() == 1 })
	// The metrics count the CANCEL's 200 and the INVITE's 487.
	m := scrape(s)
	if m[txSeries("CANCEL", "2xx")] != 1 || m[txSeries("INVITE", "4xx")] != 1 {
		t.Errorf("transactions counted: %v; want the CANCEL's 2xx and the INVITE's 4xx", m)
	}
}
