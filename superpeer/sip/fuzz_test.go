package sip

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// FuzzCheckMessage feeds arbitrary bytes to the validator, as a datagram
// and as a stream. It must not panic, must not change its input, must
// refuse with one of the codes it documents, and what it lets through
// must have the headers a proxy relies on, once each.
func FuzzCheckMessage(f *testing.F) {
	for _, tc := range tortureCases() {
		f.Add(tc.data)
	}
	f.Add(ping("seed"))
	f.Add([]byte("INVITE sip:bob@site.test SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:bob@site.test>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		orig := bytes.Clone(data)
		for _, datagram := range []bool{true, false} {
			v := checkMessage(data, datagram)
			if !bytes.Equal(data, orig) {
				t.Fatal("checkMessage changed its input")
			}
			switch v.code {
			case 0, 400, 416, 505:
			default:
				t.Fatalf("unexpected code %d", v.code)
			}
			if v.size > len(data) {
				t.Fatalf("size %d beyond the input's %d bytes", v.size, len(data))
			}
			if v.code == 0 && v.size > 0 && v.kind == kindRequest {
				m := data[:v.size]
				for _, h := range []string{"\nvia:", "\ncseq:", "\ncall-id:", "\nfrom:", "\nto:", "\nmax-forwards:"} {
					if !containsHeader(m, h) {
						t.Fatalf("passed a request without %q:\n%q", h, m)
					}
				}
				// What passes, sipgo's parser must not choke on for a
				// reason we promised to catch: a CSeq it cannot read.
				if msg, err := sip.ParseMessage(m); err == nil {
					if req, ok := msg.(*sip.Request); ok && req.CSeq() != nil && string(req.CSeq().MethodName) != string(req.Method) {
						t.Fatalf("passed a CSeq method mismatch: %q vs %q", req.CSeq().MethodName, req.Method)
					}
				}
			}
			if v.code != 0 && v.kind == kindRequest {
				res := refusalResponse(v, "")
				if !bytes.HasPrefix(res, []byte("SIP/2.0 ")) || !bytes.HasSuffix(res, []byte("\r\n\r\n")) {
					t.Fatalf("malformed refusal %q", res)
				}
			}
		}
	})
}

func containsHeader(m []byte, h string) bool {
	lower := strings.ToLower(string(m))
	if strings.Contains(lower, h) {
		return true
	}
	compact := map[string]string{"\nvia:": "\nv:", "\ncall-id:": "\ni:", "\nfrom:": "\nf:", "\nto:": "\nt:"}
	if c, ok := compact[h]; ok && strings.Contains(lower, c) {
		return true
	}
	// Header names may have whitespace before the colon.
	name := strings.TrimSuffix(strings.TrimPrefix(h, "\n"), ":")
	short := strings.TrimSuffix(strings.TrimPrefix(compact[h], "\n"), ":")
	for l := range strings.SplitSeq(lower, "\n") {
		if n, _, ok := strings.Cut(l, ":"); ok && (strings.TrimSpace(n) == name || short != "" && strings.TrimSpace(n) == short) {
			return true
		}
	}
	return false
}

// FuzzRewriteSDP: the SDP rewriter never panics, and whatever it returns
// names only relay addresses in its connection lines.
func FuzzRewriteSDP(f *testing.F) {
	f.Add([]byte(testSDP))
	f.Add([]byte(tortureSDP))
	f.Add([]byte("v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 0 RTP/AVP 0\r\nm=video 5000 RTP/AVP 96\r\nc=IN IP4 10.0.0.2\r\na=rtcp:5001\r\n"))
	relay := netip.MustParseAddr("198.51.100.7")
	f.Fuzz(func(t *testing.T, body []byte) {
		n := 0
		out, err := rewriteSDP(body, func(stream int, ep netip.AddrPort) (netip.AddrPort, error) {
			n++
			return netip.AddrPortFrom(relay, uint16(20000+stream)), nil
		})
		if err != nil || n == 0 {
			return
		}
		for l := range strings.SplitSeq(string(out), "\r\n") {
			if strings.HasPrefix(l, "c=") && !strings.HasSuffix(l, relay.String()) {
				if a, err := connAddr(l); err == nil && a != relay {
					// A stream with port 0 keeps its own address; any other
					// connection line must name the relay.
					if !bytes.Contains(out, []byte(" 0 ")) {
						t.Fatalf("connection line %q survived the rewrite:\n%s", l, out)
					}
				}
			}
		}
	})
}
