package sip

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape reads s's metric set as Prometheus would.
func scrape(s *Server) map[string]float64 {
	var b bytes.Buffer
	s.Metrics().WritePrometheus(&b)
	m := map[string]float64{}
	sc := bufio.NewScanner(&b)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.LastIndexByte(line, ' '); i > 0 && !strings.HasPrefix(line, "#") {
			v, _ := strconv.ParseFloat(line[i+1:], 64)
			m[line[:i]] += v
		}
	}
	return m
}

func txSeries(method, class string) string {
	return `superpeer_sip_transactions_total{method="` + method + `",class="` + class + `"}`
}

// TestTransactionMetrics: the server's metric set counts the transactions
// it ended by method and response class: a registration, a call and its
// BYE, a call to nobody (404), a request the validation refuses (505) and
// a ping; a stopped server's set lists nothing.
func TestTransactionMetrics(t *testing.T) {
	s := testServer(t, "sp1", "site.test", nil, Deps{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bob := newPhone(t, "bob", s.addr("udp"), "udp")
	if res, err := bob.register(ctx, "sip:bob@site.test", 600, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER: %v %v", res, err)
	}
	alice := newPhone(t, "alice", s.addr("udp"), "udp")
	sess, err := alice.call(ctx, "sip:bob@site.test")
	if err != nil {
		t.Fatalf("call: %v", err)
	}
	if err := sess.Bye(ctx); err != nil {
		t.Fatalf("BYE: %v", err)
	}
	if _, err := alice.call(ctx, "sip:nobody@site.test"); statusOf(err) != 404 {
		t.Fatalf("call to nobody: %v, want 404", err)
	}
	conn, err := net.Dial("udp", s.addr("udp").String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var badvers []byte
	for _, tc := range tortureCases() {
		if tc.name == "badvers" {
			badvers = tc.data
		}
	}
	buf := make([]byte, 65536)
	for _, m := range [][]byte{withRport(badvers), ping("metrics")} {
		if _, err := conn.Write(m); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := conn.Read(buf); err != nil {
			t.Fatalf("no answer to %q: %v", m[:20], err)
		}
	}

	want := map[string]float64{
		txSeries("REGISTER", "2xx"): 1,
		txSeries("INVITE", "2xx"):   1,
		txSeries("BYE", "2xx"):      1,
		txSeries("INVITE", "4xx"):   1,
		txSeries("OPTIONS", "5xx"):  1,
		txSeries("OPTIONS", "2xx"):  1,
	}
	waitFor(t, 5*time.Second, "the BYE's transaction to end", func() bool { return scrape(s)[txSeries("BYE", "2xx")] == 1 })
	got := scrape(s)
	for name, n := range want {
		if got[name] != n {
			t.Errorf("%s = %v, want %v", name, got[name], n)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("unexpected series %s = %v", name, got[name])
		}
	}

	s.Close()
	if got := scrape(s); len(got) != 0 {
		t.Errorf("a stopped server's metrics still list %v", got)
	}
}
