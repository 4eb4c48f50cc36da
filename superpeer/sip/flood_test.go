package sip

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/superpeer/superpeer/nat/clock"
)

// TestFloodBan: with Kamailio's default limit (16 requests in 2 s, a 300 s
// ban) a source that keeps to 16 requests per window is always answered;
// the 17th request within a window bans it: its requests are dropped
// unanswered until the ban is over, then it is answered again.
func TestFloodBan(t *testing.T) {
	fc := clock.NewFake(time.Now())
	s := testServer(t, "sp1", "site.test", fc, Deps{}, func(c *Config) {
		c.Flood = DefaultConfig().Flood
		c.Flood.Exempt = nil // the test sends from loopback
	})
	conn, err := net.Dial("udp", s.addr("udp").String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 4096)
	seq := 0
	answered := func() bool {
		t.Helper()
		seq++
		id := "flood-" + strconv.Itoa(seq)
		if _, err := conn.Write(withRport(ping(id))); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return false
			}
			if _, cid := parseResponse(buf[:n]); cid == "ping-"+id {
				return true
			}
		}
	}
	// dropped sends a request and waits until the guard has dropped it.
	dropped := func() {
		t.Helper()
		before := s.Status().Flooded
		seq++
		if _, err := conn.Write(withRport(ping("flood-" + strconv.Itoa(seq)))); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 3*time.Second, "the flood guard to drop a request", func() bool { return s.Status().Flooded > before })
	}

	for window := range 3 {
		for i := range 16 {
			if !answered() {
				t.Fatalf("window %d: request %d of 16 was not answered", window, i+1)
			}
		}
		fc.Advance(2 * time.Second)
	}
	for i := range 16 {
		if !answered() {
			t.Fatalf("request %d of 16 was not answered", i+1)
		}
	}
	dropped() // the 17th in 2 s: banned
	if st := s.Status().Flood; st.Bans != 1 || len(st.Banned) != 1 || st.Banned[0] != "127.0.0.1" {
		t.Errorf("status after the ban: %+v", st)
	}
	fc.Advance(299 * time.Second)
	dropped()
	fc.Advance(2 * time.Second)
	if !answered() {
		t.Errorf("not answered after the 300 s ban")
	}
}
