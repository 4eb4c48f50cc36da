package sip

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The messages of RFC 4475 that an element must refuse (sections 3.1.2 and
// 3.3), written from the RFC's text with the defect each one tests. The
// bodies are short SDP; a message's Content-Length is computed unless the
// test is about Content-Length.

const tortureSDP = "v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.15\r\ns=-\r\nc=IN IP4 192.0.2.15\r\nt=0 0\r\nm=audio 49217 RTP/AVP 0 12\r\n"

// msg joins header lines with CRLF, adds the blank line and body, and
// fills "Content-Length: #" with the body's length.
func msg(body string, lines ...string) []byte {
	var b strings.Builder
	for _, l := range lines {
		if strings.HasSuffix(l, ": #") {
			l = strings.TrimSuffix(l, "#") + strconv.Itoa(len(body))
		}
		b.WriteString(l)
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	b.WriteString(body)
	return []byte(b.String())
}

type tortureCase struct {
	name string // the RFC's name of the message
	sect string // its section in RFC 4475
	data []byte
	want int // the response code; 0: no response (a bad response is dropped)
}

func tortureCases() []tortureCase {
	return []tortureCase{
		{"badinv01", "3.1.2.1", msg(tortureSDP,
			"INVITE sip:user@example.com SIP/2.0",
			"To: sip:j.user@example.com",
			"From: sip:caller@example.net;tag=134161461246",
			"Max-Forwards: 7",
			"Call-ID: badinv01.0ha0isndaksdjasdf3234nas",
			"CSeq: 8 INVITE",
			"Via: SIP/2.0/UDP 192.0.2.15;;,;,,",
			"Contact: \"Joe\" <sip:joe@example.org>;;;;",
			"Content-Length: #",
			"Content-Type: application/sdp"), 400},
		{"clerr", "3.1.2.2", msg(tortureSDP,
			"INVITE sip:user@example.com SIP/2.0",
			"Max-Forwards: 80",
			"To: sip:j.user@example.com",
			"From: sip:caller@example.net;tag=93942939o2",
			"Contact: <sip:caller@hungry.example.net>",
			"Call-ID: clerr.0ha0isndaksdjweiafasdk3",
			"CSeq: 8 INVITE",
			"Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523",
			"Content-Type: application/sdp",
			"Content-Length: 9999"), 400},
		{"ncl", "3.1.2.3", msg(tortureSDP,
			"INVITE sip:user@example.com SIP/2.0",
			"Max-Forwards: 254",
			"To: sip:j.user@example.com",
			"From: sip:caller@example.net;tag=32394234",
			"Call-ID: ncl.0ha0isndaksdj2193423r542w35",
			"CSeq: 0 INVITE",
			"Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw",
			"Contact: <sip:caller@example53.example.net>",
			"Content-Type: application/sdp",
			"Content-Length: -999"), 400},
		{"scalar02", "3.1.2.4", msg("",
			"REGISTER sip:example.com SIP/2.0",
			"Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3",
			"To: <sip:user@example.com>",
			"From: <sip:user@example.com>;tag=239232jh3",
			"CSeq: 36893488147419103232 REGISTER",
			"Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32",
			"Max-Forwards: 300",
			"Expires: 1"+strings.Repeat("0", 80),
			"Contact: <sip:user@host129.example.com>;expires=280297596632815",
			"Content-Length: 0"), 400},
		{"scalarlg", "3.1.2.5", msg("",
			"SIP/2.0 503 Service Unavailable",
			"Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129",
			"To: <sip:user@example.com>",
			"From: <sip:other@example.net>;tag=2easdjfejw",
			"CSeq: 9292394834772304023312 OPTIONS",
			"Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r",
			"Retry-After: 949302838503028349304023988",
			"Warning: 1812 overture \"In Progress\"",
			"Content-Length: 0"), 0},
		{"quotbal", "3.1.2.6", msg(tortureSDP,
			"INVITE sip:user@example.com SIP/2.0",
			"To: \"Mr. J. User <sip:j.user@example.com>",
			"From: sip:caller@example.net;tag=93334",
			"Max-Forwards: 10",
			"Call-ID: quotbal.aksdj",
			"Contact: <sip:caller@host59.example.net>",
			"CSeq: 8 INVITE",
			"Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234",
			"Content-Type: application/sdp",
			"Content-Length: #"), 400},
		{"ltgtruri", "3.1.2.7", msg(tortureSDP,
			"INVITE <sip:user@example.com> SIP/2.0",
			"To: sip:user@example.com",
			"From: sip:caller@example.net;tag=39291",
			"Max-Forwards: 23",
			"Call-ID: ltgtruri.1@192.0.2.5",
			"CSeq: 1 INVITE",
			"Via: SIP/2.0/UDP 192.0.2.5",
			"Contact: <sip:caller@host5.example.net>",
			"Content-Type: application/sdp",
			"Content-Length: #"), 400},
		{"lwsruri", "3.1.2.8", msg(tortureSDP,
			"INVITE sip:user@example.com; lr SIP/2.0",
			"To: sip:user@example.com;tag=3xfe-9921883-z9f",
			"From: sip:caller@example.net;tag=231413434",
			"Max-Forwards: 5",
			"Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423",
			"CSeq: 2130706432 INVITE",
			"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395",
			"Contact: <sip:caller@host1.example.net>",
			"Content-Type: application/sdp",
			"Content-Length: #"), 400},
		{"lwsstart", "3.1.2.9", msg(tortureSDP,
			"INVITE  sip:user@example.com  SIP/2.0",
			"Max-Forwards: 8",
			"To: sip:user@example.com",
			"From: sip:caller@example.net;tag=8814",
			"Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com",
			"CSeq: 1893884 INVITE",
			"Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923",
			"Contact: <sip:caller@host1.example.net>",
			"Content-Type: application/sdp",
			"Content-Length: #"), 400},
		{"trws", "3.1.2.10", msg("",
			"OPTIONS sip:remote-target@example.com SIP/2.0  ",
			"Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK299342093",
			"To: <sip:remote-target@example.com>",
			"From: <sip:local-resource@example.com>;tag=329429089",
			"Call-ID: trws.oicu34958239neffasdhr2345r",
			"Accept: application/sdp",
			"CSeq: 238923 OPTIONS",
			"Max-Forwards: 70",
			"Content-Length: 0"), 400},
		{"escruri", "3.1.2.11", msg(tortureSDP,
			"INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0",
			"To: sip:user@example.com",
			"From: sip:caller@example.net;tag=341518",
			"Max-Forwards: 7",
			"Contact: <sip:caller@host39923.example.net>",
			"Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5",
			"CSeq: 39234321 INVITE",
			"Via: SIP/2.0/UDP host-of-the-caller.example.net;branch=z9hG4bKkdjuw",
			"Content-Type: application/sdp",
			"Content-Length: #"), 400},
		{"regbadct", "3.1.2.13", msg("",
			"REGISTER sip:example.com SIP/2.0",
			"To: sip:user@example.com",
			"From: sip:user@example.com;tag=998332",
			"Max-Forwards: 70",
			"Call-ID: regbadct.k345asrl3fdbv@10.0.0.1",
			"CSeq: 1 REGISTER",
			"Via: SIP/2.0/UDP 135.180.130.133:5060;branch=z9hG4bKkdjuw",
			"Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E",
			"l: 0"), 400},
		{"badaspec", "3.1.2.14", msg("",
			"OPTIONS sip:user@example.org SIP/2.0",
			"Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234",
			"Max-Forwards: 70",
			"From: \"Bell, Alexander\" <sip:a.g.bell@example.com>;tag=433423",
			"To: \"Watson, Thomas\" < sip:t.watson@example.org >",
			"Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3",
			"Accept: application/sdp",
			"CSeq: 3923239 OPTIONS",
			"l: 0"), 400},
		{"baddn", "3.1.2.15", msg("",
			"OPTIONS sip:t.watson@example.org SIP/2.0",
			"Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw",
			"Max-Forwards:      70",
			"From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
			"To:      Watson, Thomas <sip:t.watson@example.org>",
			"Call-ID: baddn.31415@c.example.com",
			"Accept: application/sdp",
			"CSeq:    3923239 OPTIONS",
			"l: 0"), 400},
		{"badvers", "3.1.2.16", msg("",
			"OPTIONS sip:t.watson@example.org SIP/7.0",
			"Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw",
			"Max-Forwards:     70",
			"From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe",
			"To:      T. Watson <sip:t.watson@example.org>",
			"Call-ID: badvers.31417@c.example.com",
			"CSeq:    1 OPTIONS",
			"l: 0"), 505},
		{"mismatch01", "3.1.2.17", msg("",
			"OPTIONS sip:user@example.com SIP/2.0",
			"To: sip:j.user@example.com",
			"From: sip:caller@example.net;tag=34525",
			"Max-Forwards: 6",
			"Call-ID: mismatch01.dj0234sxdfl3",
			"CSeq: 8 INVITE",
			"Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw",
			"l: 0"), 400},
		{"mismatch02", "3.1.2.18", msg("",
			"NEWMETHOD sip:user@example.com SIP/2.0",
			"To: sip:j.user@example.com",
			"From: sip:caller@example.net;tag=34525",
			"Max-Forwards: 6",
			"Call-ID: mismatch02.dj0234sxdfl3",
			"CSeq: 8 INVITE",
			"Contact: <sip:caller@host.example.net>",
			"Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw",
			"Content-Type: application/sdp",
			"l: 0"), 400},
		{"bigcode", "3.1.2.19", msg("",
			"SIP/2.0 4294967301 better not break the receiver",
			"Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
			"Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i",
			"CSeq: 353494 INVITE",
			"From: <sip:user@example.com>;tag=39ansfi3",
			"To: <sip:user@example.edu>;tag=902jndnke3",
			"Content-Length: 0",
			"Contact: <sip:user@host105.example.com>"), 0},
		{"insuf", "3.3.1", msg(tortureSDP,
			"INVITE sip:user@example.com SIP/2.0",
			"CSeq: 193942 INVITE",
			"Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf",
			"Content-Type: application/sdp",
			"l: #"), 400},
		{"unkscm", "3.3.2", msg("",
			"OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0",
			"To: sip:user@example.com",
			"From: sip:caller@example.net;tag=384",
			"Max-Forwards: 3",
			"Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34",
			"CSeq: 3923423 OPTIONS",
			"Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234",
			"Content-Length: 0"), 416},
		{"novelsc", "3.3.3", msg("",
			"OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0",
			"To: sip:user@example.com",
			"From: sip:caller@example.net;tag=384",
			"Max-Forwards: 3",
			"Call-ID: novelsc.asdfasser0q239nwsdfasdkl34",
			"CSeq: 3923423 OPTIONS",
			"Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234",
			"Content-Length: 0"), 416},
		{"bext01", "3.3.5", msg("",
			"OPTIONS sip:user@example.com SIP/2.0",
			"To: sip:j_user@example.com",
			"From: sip:caller@example.net;tag=242etr",
			"Max-Forwards: 6",
			"Call-ID: bext01.0ha0isndaksdj",
			"Require: nothingSupportsThis, nothingSupportsThisEither",
			"Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis",
			"CSeq: 8 OPTIONS",
			"Via: SIP/2.0/TLS fold-and-staple.example.com;branch=z9hG4bKkdjuw",
			"Content-Length: 0"), 420},
		{"multi01", "3.3.8", msg(tortureSDP,
			"INVITE sip:user@company.com SIP/2.0",
			"Contact: <sip:caller@host25.example.net>",
			"Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw",
			"Max-Forwards: 70",
			"CSeq: 5 INVITE",
			"Call-ID: multi01.98asdh@192.0.2.1",
			"CSeq: 59 INVITE",
			"Call-ID: multi01.98asdh@192.0.2.2",
			"From: sip:caller@example.com;tag=3413415",
			"To: sip:user@example.com",
			"To: sip:other@example.net",
			"From: sip:caller@example.net;tag=2923420123",
			"Content-Type: application/sdp",
			"l: #",
			"Contact: <sip:caller@host36.example.net>",
			"Max-Forwards: 5"), 400},
		{"mcl01", "3.3.9", msg("",
			"OPTIONS sip:user@example.com SIP/2.0",
			"Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423",
			"To: sip:user@example.com",
			"From: sip:other@example.net;tag=3923942",
			"Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf",
			"CSeq: 15932 OPTIONS",
			"Content-Length: 13",
			"Max-Forwards: 60",
			"Content-Length: 5",
			"Content-Type: text/plain"), 400},
		{"bcast", "3.3.10", msg("",
			"SIP/2.0 200 OK",
			"Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
			"Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23",
			"Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf",
			"CSeq: 35 INVITE",
			"From: sip:user@example.com;tag=11141343",
			"To: sip:user@example.edu;tag=2229",
			"Content-Length: 0",
			"Content-Type: application/sdp",
			"Contact: <sip:user@host28.example.com>"), 0},
		{"zeromf", "3.3.11", msg("",
			"OPTIONS sip:user@example.com SIP/2.0",
			"Call-ID: zeromf.23d0-asdfkl-asd0eiw3@example.com",
			"CSeq: 39234321 OPTIONS",
			"Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i",
			"Max-Forwards: 0",
			"To: <sip:user@example.com>",
			"From: <sip:caller@example.net>;tag=3ghsd41",
			"Content-Length: 0"), 483},
	}
}

// ping is an OPTIONS to the proxy itself, which it answers with 200.
func ping(id string) []byte {
	return msg("",
		"OPTIONS sip:127.0.0.1 SIP/2.0",
		"Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK-ping-"+id+";rport",
		"Max-Forwards: 70",
		"To: <sip:127.0.0.1>",
		"From: <sip:tester@127.0.0.1>;tag=ping",
		"Call-ID: ping-"+id,
		"CSeq: 1 OPTIONS",
		"Content-Length: 0")
}

// withRport adds ;rport to the first Via line that lacks it.
func withRport(b []byte) []byte {
	lines := strings.Split(string(b), "\r\n")
	for i, l := range lines {
		n, _, _ := strings.Cut(l, ":")
		if strings.EqualFold(strings.TrimSpace(n), "via") || strings.TrimSpace(n) == "v" {
			if !strings.Contains(l, "rport") {
				lines[i] = l + ";rport"
			}
			break
		}
		if l == "" {
			break
		}
	}
	return []byte(strings.Join(lines, "\r\n"))
}

// statusLine parses "SIP/2.0 CODE ..." and the Call-ID of a response.
func parseResponse(b []byte) (code int, callID string) {
	line, _, _ := bytes.Cut(b, []byte("\r\n"))
	f := strings.Fields(string(line))
	if len(f) >= 2 {
		code, _ = strconv.Atoi(f[1])
	}
	for l := range strings.SplitSeq(string(b), "\r\n") {
		if n, v, ok := strings.Cut(l, ":"); ok && (strings.EqualFold(n, "Call-ID") || n == "i") {
			callID = strings.TrimSpace(v)
		}
	}
	return code, callID
}

// TestRFC4475MustRefuse sends each message that RFC 4475 says to refuse
// and checks the response code (or that a bad response is dropped), then
// that the proxy still answers.
func TestRFC4475MustRefuse(t *testing.T) {
	s := testServer(t, "sp1", "site.test", nil, Deps{}, nil)
	conn, err := net.Dial("udp", s.addr("udp").String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 65536)
	read := func() (int, string, error) {
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			return 0, "", err
		}
		code, cid := parseResponse(buf[:n])
		return code, cid, nil
	}
	for i, tc := range tortureCases() {
		t.Run(tc.name, func(t *testing.T) {
			// This socket is not at the port its Via names: rport (RFC
			// 3581) brings the answer back to it.
			if _, err := conn.Write(withRport(tc.data)); err != nil {
				t.Fatal(err)
			}
			// The ping's answer comes after the refusal, if there is one;
			// when the message is dropped, it is the only answer.
			if _, err := conn.Write(ping(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
			// Refusals made before parsing come before the ping's answer;
			// those made after parsing may come after it.
			var got []string
			pinged, refused := false, tc.want == 0
			for !pinged || !refused {
				code, cid, err := read()
				if err != nil {
					break
				}
				got = append(got, fmt.Sprintf("%d %s", code, cid))
				if cid == "ping-"+strconv.Itoa(i) {
					pinged = true
					if code != 200 {
						t.Errorf("after %s (RFC 4475 %s) the proxy answered a ping with %d", tc.name, tc.sect, code)
					}
				} else {
					refused = true
				}
			}
			var refusal string
			for _, g := range got {
				if !strings.HasSuffix(g, " ping-"+strconv.Itoa(i)) {
					refusal = g
				}
			}
			if tc.want == 0 {
				if refusal != "" {
					t.Errorf("%s (RFC 4475 %s) is a response to drop, but the proxy sent %q", tc.name, tc.sect, refusal)
				}
			} else if !strings.HasPrefix(refusal, strconv.Itoa(tc.want)+" ") {
				t.Errorf("%s (RFC 4475 %s): got %q, want %d", tc.name, tc.sect, got, tc.want)
			}
			if !pinged {
				t.Errorf("after %s the proxy did not answer a ping: got %q", tc.name, got)
			}
		})
	}
}

// TestStreamFraming: on TCP a message that cannot be framed is answered
// and the connection closed (there is no boundary to resynchronise on); a
// message over the size limit closes the connection; a CRLF ping is
// answered with a CRLF pong (RFC 5626 section 3.5.1); and a refused
// message with a valid length leaves the connection usable.
func TestStreamFraming(t *testing.T) {
	s := testServer(t, "sp1", "site.test", nil, Deps{}, func(c *Config) { c.MaxMessageSize = 4096 })
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", s.addr("tcp").String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		return c, bufio.NewReader(c)
	}
	readResponse := func(r *bufio.Reader) (int, error) {
		var code int
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return 0, err
			}
			if code == 0 {
				code, _ = parseResponse([]byte(line))
			}
			if line == "\r\n" {
				return code, nil
			}
		}
	}
	tcpPing := bytes.Replace(ping("tcp"), []byte("SIP/2.0/UDP"), []byte("SIP/2.0/TCP"), 1)

	c, r := dial()
	c.Write([]byte("\r\n\r\n"))
	if pong, err := r.ReadString('\n'); err != nil || pong != "\r\n" {
		t.Errorf("CRLF ping: got %q, %v; want a CRLF pong", pong, err)
	}
	mf := bytes.Replace(tcpPing, []byte("Max-Forwards: 70"), []byte("Max-Forwards: 70\r\nProxy-Require: nothing"), 1)
	mf = bytes.Replace(mf, []byte("OPTIONS sip:127.0.0.1"), []byte("OPTIONS sip:x@example.com"), 1)
	// A transaction of its own: with the ping's branch, the ping could
	// arrive while the refusal's transaction still lives and get its
	// response again as a retransmission's.
	mf = bytes.Replace(mf, []byte("branch=z9hG4bK-ping-"), []byte("branch=z9hG4bK-refused-"), 1)
	c.Write(mf)
	if code, err := readResponse(r); code != 420 {
		t.Errorf("refused request on a stream: %d %v, want 420", code, err)
	}
	c.Write(tcpPing)
	if code, err := readResponse(r); code != 200 {
		t.Errorf("ping after a refusal on the same stream: %d %v, want 200", code, err)
	}

	c, r = dial()
	c.Write(bytes.Replace(tcpPing, []byte("Content-Length: 0"), []byte("Content-Length: -999"), 1))
	if code, err := readResponse(r); code != 400 {
		t.Errorf("negative Content-Length on a stream: %d %v, want 400", code, err)
	}
	if _, err := r.ReadByte(); err == nil {
		t.Errorf("the stream stayed open after an unframeable message")
	}

	c, r = dial()
	big := bytes.Replace(tcpPing, []byte("Content-Length: 0"), []byte("X-Padding: "+strings.Repeat("a", 8000)+"\r\nContent-Length: 0"), 1)
	c.Write(big)
	if _, err := r.ReadByte(); err == nil {
		t.Errorf("the stream stayed open after a message over the size limit")
	}
	if s.Status().Received == 0 {
		t.Errorf("status counted no messages")
	}
}
