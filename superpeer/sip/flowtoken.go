package sip

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/netip"
	"strings"
)

// A flow token (RFC 5626 section 5.2) names the flow a request arrived on,
// so that a later request can be sent back over it: the registrar puts it
// into the binding, and the proxy into the user part of its Record-Route
// and of the Route it adds when it forwards to a flow held by another
// superpeer. It is the transport, the phone's address and the superpeer's
// local address, authenticated with an HMAC so that nobody can make the
// proxy send into a flow it did not see.

// flowID is the decoded content of a flow token.
type flowID struct {
	Transport string // udp, tcp or tls
	Remote    netip.AddrPort
	Local     netip.AddrPort
}

var errBadToken = errors.New("sip: flow token not ours or damaged")

const flowMACLen = 10

func makeFlowToken(key []byte, f flowID) string {
	plain := f.Transport + "|" + f.Remote.String() + "|" + f.Local.String()
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(plain))
	raw := append(mac.Sum(nil)[:flowMACLen], plain...)
	return base64.RawURLEncoding.EncodeToString(raw)
}

func parseFlowToken(key []byte, tok string) (flowID, error) {
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(raw) <= flowMACLen {
		return flowID{}, errBadToken
	}
	mac := hmac.New(sha256.New, key)
	mac.Write(raw[flowMACLen:])
	if !hmac.Equal(mac.Sum(nil)[:flowMACLen], raw[:flowMACLen]) {
		return flowID{}, errBadToken
	}
	parts := strings.Split(string(raw[flowMACLen:]), "|")
	if len(parts) != 3 {
		return flowID{}, errBadToken
	}
	var f flowID
	f.Transport = parts[0]
	if f.Remote, err = netip.ParseAddrPort(parts[1]); err != nil {
		return flowID{}, errBadToken
	}
	if f.Local, err = netip.ParseAddrPort(parts[2]); err != nil {
		return flowID{}, errBadToken
	}
	switch f.Transport {
	case "udp", "tcp", "tls":
	default:
		return flowID{}, errBadToken
	}
	return f, nil
}
