package superpeer

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestRelayMsg: what a public node and a site exchange over the overlay
// for a relay survives the trip, and what is not such a message is
// refused with a reason.
func TestRelayMsg(t *testing.T) {
	offer := relayMsg{Op: opOffer, Nonce: 7, TURN: "203.0.113.10:3480", Username: "1700000000:overlay-1a2b3c4d",
		Password: "c2VjcmV0", Expires: time.Unix(1700000000, 0).UTC()}
	for _, want := range []relayMsg{{Op: opAsk, Nonce: 1}, offer, {Op: opOffer, Nonce: 2, Error: "this node is not public"}} {
		got, err := parseRelayMsg(encodeRelayMsg(want))
		if err != nil || got != want {
			t.Errorf("round trip of %+v: %+v, %v", want, got, err)
		}
	}
	bad := map[string][]byte{
		"empty":               nil,
		"a SIP message":       []byte("INVITE sip:bob@example.org SIP/2.0\r\n"),
		"not JSON":            append([]byte{mediaMsgPrefix}, "{"...),
		"unknown operation":   encodeRelayMsg(relayMsg{Op: "give-me-everything"}),
		"offer without creds": encodeRelayMsg(relayMsg{Op: opOffer, TURN: "203.0.113.10:3480"}),
		"offer to port 0":     encodeRelayMsg(relayMsg{Op: opOffer, TURN: "203.0.113.10:0", Username: "u", Password: "p", Expires: offer.Expires}),
		"offer to loopback":   encodeRelayMsg(relayMsg{Op: opOffer, TURN: "127.0.0.1:3478", Username: "u", Password: "p", Expires: offer.Expires}),
		"offer to a name":     encodeRelayMsg(relayMsg{Op: opOffer, TURN: "relay.example:3478", Username: "u", Password: "p", Expires: offer.Expires}),
		"huge field":          encodeRelayMsg(relayMsg{Op: opOffer, Error: strings.Repeat("x", maxRelayField+1)}),
	}
	for name, p := range bad {
		if msg, err := parseRelayMsg(p); err == nil {
			t.Errorf("%s: accepted as %+v", name, msg)
		}
	}
}

// FuzzRelayMsg: no overlay payload makes the parser panic, and whatever it
// accepts encodes back to a message it accepts the same.
func FuzzRelayMsg(f *testing.F) {
	f.Add(encodeRelayMsg(relayMsg{Op: opAsk, Nonce: 1}))
	f.Add(encodeRelayMsg(relayMsg{Op: opOffer, Nonce: 2, TURN: "203.0.113.10:3480", Username: "1:u", Password: "p", Expires: time.Unix(1, 0).UTC()}))
	f.Add(encodeRelayMsg(relayMsg{Op: opOffer, Nonce: 3, Error: "no"}))
	f.Add([]byte{mediaMsgPrefix, '{', '}'})
	f.Fuzz(func(t *testing.T, p []byte) {
		msg, err := parseRelayMsg(p)
		if err != nil {
			return
		}
		again, err := parseRelayMsg(encodeRelayMsg(msg))
		if err != nil || !again.Expires.Equal(msg.Expires) || again.Op != msg.Op || again.Nonce != msg.Nonce || again.TURN != msg.TURN {
			t.Fatalf("accepted %q as %+v, but its encoding reads as %+v, %v", p, msg, again, err)
		}
	})
}

// TestServicesRestartCleanly: a superpeer's services stopped and started
// again (it lost the election and won it back) open their sockets again
// and leave no metrics of the stopped instance behind: /metrics names
// each series once.
func TestServicesRestartCleanly(t *testing.T) {
	d := startDaemon(t, "[metrics]\nlisten = 127.0.0.1:0\n")
	deadline := time.Now().Add(20 * time.Second)
	for d.services() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the lone daemon never ran its superpeer services")
		}
		time.Sleep(50 * time.Millisecond) // polling the state the daemon reports, within the deadline
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Each instance ends a SIP transaction, so that its series exist.
	pingSIP(t, d.services())
	for i := range 2 {
		s, err := d.startServices(ctx)
		if err != nil {
			t.Fatalf("start %d of the services: %v", i+2, err)
		}
		if s.sip == nil || s.turn == nil || s.media == nil || len(s.turn.UDPAddrs()) == 0 {
			t.Fatalf("start %d: services incomplete: %+v", i+2, s)
		}
		pingSIP(t, s)
		s.close()
	}
	resp, err := http.Get("http://" + d.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	seen := map[string]int{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.LastIndexByte(line, ' '); i > 0 && !strings.HasPrefix(line, "#") {
			seen[line[:i]]++
		}
	}
	for _, name := range []string{"superpeer_media_calls", `superpeer_media_packets_total{to="callee"}`,
		`superpeer_sip_transactions_total{method="OPTIONS",class="2xx"}`} {
		if seen[name] != 1 {
			t.Errorf("/metrics has %s %d times, want once (the running services' only)", name, seen[name])
		}
	}
	for name, n := range seen {
		if n > 1 {
			t.Errorf("/metrics has %s %d times", name, n)
		}
	}
}

// pingSIP sends an OPTIONS to the services' SIP server itself and waits
// for its 200.
func pingSIP(t *testing.T, s *services) {
	t.Helper()
	var addr string
	for _, l := range s.sip.Listeners() {
		if l.Network == "udp" {
			addr = l.Addr
		}
	}
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := c.LocalAddr().String()
	ping := strings.Join([]string{
		"OPTIONS sip:" + addr + " SIP/2.0",
		"Via: SIP/2.0/UDP " + local + ";branch=z9hG4bK-ping" + strconv.FormatInt(time.Now().UnixNano(), 36) + ";rport",
		"Max-Forwards: 70",
		"To: <sip:" + addr + ">",
		"From: <sip:tester@" + local + ">;tag=ping",
		"Call-ID: ping-" + local,
		"CSeq: 1 OPTIONS",
		"Content-Length: 0",
		"", ""}, "\r\n")
	if _, err := c.Write([]byte(ping)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "SIP/2.0 200 ") {
		t.Fatalf("OPTIONS to the SIP server at %s: %q, %v", addr, buf[:n], err)
	}
}
