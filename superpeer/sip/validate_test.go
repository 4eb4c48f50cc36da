package sip

import "testing"

// BenchmarkCheckMessage measures the validator on a typical INVITE; it
// runs on every datagram before the parser, so it must stay cheap and not
// allocate.
func BenchmarkCheckMessage(b *testing.B) {
	inv := msg(testSDP,
		"INVITE sip:bob@site.test SIP/2.0",
		"Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK-524287-1---6d3b9c2f;rport",
		"Max-Forwards: 70",
		"Contact: <sip:alice@192.168.1.20:5060>",
		"To: <sip:bob@site.test>",
		"From: \"Alice\" <sip:alice@site.test>;tag=8a7b6c5d",
		"Call-ID: 4f3e2d1c0b9a@192.168.1.20",
		"CSeq: 1 INVITE",
		"Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE",
		"Content-Type: application/sdp",
		"User-Agent: Softphone 1.0",
		"Content-Length: #")
	b.ReportAllocs()
	b.SetBytes(int64(len(inv)))
	for b.Loop() {
		if v := checkMessage(inv, true); v.code != 0 {
			b.Fatalf("refused: %d %s", v.code, v.reason)
		}
	}
}
