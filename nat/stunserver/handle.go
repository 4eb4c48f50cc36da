package stunserver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v4"
)

// sockID names one of the four sockets: ip 0 is Primary, 1 Alternate; port
// 0 is Port, 1 AltPort.
type sockID struct{ ip, port int }

// verdict is what to do with one datagram.
type verdict int

const (
	// dropped: not STUN, not a request, or a request that gets no answer.
	dropped verdict = iota
	// limited: a response was due but the source is over its rate.
	limited
	// answered: a success response.
	answered
	// refused: an error response (400 or 420).
	refused
)

// reply is the handler's decision about one datagram: for answered and
// refused, send raw from the socket via to the address to.
type reply struct {
	verdict verdict
	raw     []byte
	via     sockID
	to      netip.AddrPort
	code    stun.ErrorCode // for refused
	reason  string         // why, for every verdict but answered
}

// Stats counts what the server did since it started.
type Stats struct {
	// Requests is every datagram received.
	Requests uint64 `json:"requests"`
	// Answered is the success responses sent.
	Answered uint64 `json:"answered"`
	// BadRequests is the 400 responses: malformed requests, a method other
	// than Binding, PADDING together with RESPONSE-PORT.
	BadRequests uint64 `json:"bad_requests"`
	// UnknownAttributes is the 420 responses.
	UnknownAttributes uint64 `json:"unknown_attributes"`
	// Dropped is the datagrams that were not STUN requests (or failed the
	// FINGERPRINT check) and got no answer.
	Dropped uint64 `json:"dropped"`
	// RateLimited is the requests dropped because their source was over
	// RatePerSource.
	RateLimited uint64 `json:"rate_limited"`
	// Sources is how many source addresses the rate limiter tracks now.
	Sources int `json:"sources"`
}

type counters struct {
	requests, answered, badRequests, unknownAttrs, dropped, rateLimited atomic.Uint64
}

// handler is the server's logic without its sockets: it turns one datagram
// into a reply. It is safe for concurrent use.
type handler struct {
	addrs      [2][2]netip.AddrPort // [ip][port]; [1][*] invalid without Alternate
	alt        bool
	maxPadding int
	software   string
	lim        *limiter
	count      counters
}

// knownRequired are the comprehension-required attributes this server
// understands (RFC 8489, RFC 5780). Authentication attributes are read as
// known and ignored: Binding here is unauthenticated, as on every public
// STUN server. RESPONSE-ADDRESS (0x0002, RFC 3489) is deliberately unknown:
// sending a response to a third address would make the server a reflector.
var knownRequired = map[stun.AttrType]bool{
	stun.AttrMappedAddress:          true,
	stun.AttrChangeRequest:          true,
	stun.AttrUsername:               true,
	stun.AttrMessageIntegrity:       true,
	stun.AttrErrorCode:              true,
	stun.AttrUnknownAttributes:      true,
	stun.AttrRealm:                  true,
	stun.AttrNonce:                  true,
	stun.AttrMessageIntegritySHA256: true,
	stun.AttrPasswordAlgorithm:      true,
	stun.AttrUserhash:               true,
	stun.AttrXORMappedAddress:       true,
	stun.AttrPadding:                true,
	stun.AttrResponsePort:           true,
}

const (
	headerSize = 20
	magic      = 0x2112A442
	// maxUnknown bounds the UNKNOWN-ATTRIBUTES list of a 420 response.
	maxUnknown = 8
	// maxReason bounds the reason phrase of an error response.
	maxReason = 96
)

// handle decides what to answer to pkt, received from src on socket on.
func (h *handler) handle(pkt []byte, src netip.AddrPort, on sockID, now time.Time) reply {
	h.count.requests.Add(1)
	r := h.decide(pkt, src, on, now)
	switch r.verdict {
	case dropped:
		h.count.dropped.Add(1)
	case limited:
		h.count.rateLimited.Add(1)
	case answered:
		h.count.answered.Add(1)
	case refused:
		if r.code == stun.CodeUnknownAttribute {
			h.count.unknownAttrs.Add(1)
		} else {
			h.count.badRequests.Add(1)
		}
	}
	return r
}

func (h *handler) decide(pkt []byte, src netip.AddrPort, on sockID, now time.Time) reply {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	if reason := headerProblem(pkt); reason != "" {
		return reply{verdict: dropped, reason: reason}
	}
	var req stun.Message
	if err := stun.Decode(pkt, &req); err != nil {
		// The header is sound, so the sender is a STUN client that can
		// match a 400 to its transaction.
		return h.refuse(pkt, src, on, now, stun.CodeBadRequest, "malformed attributes: "+err.Error(), nil)
	}
	switch req.Type.Class {
	case stun.ClassRequest:
	case stun.ClassIndication:
		return reply{verdict: dropped, reason: "indication (keepalive): nothing to answer"}
	default:
		return reply{verdict: dropped, reason: "a response, not a request"}
	}
	if req.Contains(stun.AttrFingerprint) {
		if err := stun.Fingerprint.Check(&req); err != nil {
			// RFC 8489 section 7.3: a request that fails its FINGERPRINT
			// check is discarded.
			return reply{verdict: dropped, reason: "FINGERPRINT check failed: " + err.Error()}
		}
	}
	if req.Type.Method != stun.MethodBinding {
		return h.refuse(pkt, src, on, now, stun.CodeBadRequest, fmt.Sprintf("method %s is not served, only Binding", req.Type.Method), nil)
	}
	var unknown []stun.AttrType
	for _, a := range req.Attributes {
		if a.Type.Required() && !knownRequired[a.Type] && !contains(unknown, a.Type) && len(unknown) < maxUnknown {
			unknown = append(unknown, a.Type)
		}
	}
	if len(unknown) > 0 {
		return h.refuse(pkt, src, on, now, stun.CodeUnknownAttribute, "unknown comprehension-required attributes", unknown)
	}

	var change ChangeRequest
	if err := change.GetFrom(&req); err != nil && !errors.Is(err, stun.ErrAttributeNotFound) {
		return h.refuse(pkt, src, on, now, stun.CodeBadRequest, err.Error(), nil)
	}
	if (change.ChangeIP || change.ChangePort) && !h.alt {
		// RFC 5780 section 6.1: no alternate address, so CHANGE-REQUEST is
		// not understood.
		return h.refuse(pkt, src, on, now, stun.CodeUnknownAttribute, "no alternate address for CHANGE-REQUEST", []stun.AttrType{stun.AttrChangeRequest})
	}
	var rport ResponsePort
	hasRPort := false
	if err := rport.GetFrom(&req); err == nil {
		hasRPort = true
	} else if !errors.Is(err, stun.ErrAttributeNotFound) {
		return h.refuse(pkt, src, on, now, stun.CodeBadRequest, err.Error(), nil)
	}
	var pad Padding
	hasPad := pad.GetFrom(&req) == nil
	if hasPad && hasRPort {
		// RFC 5780 section 6.1: padded responses to another port are
		// refused.
		return h.refuse(pkt, src, on, now, stun.CodeBadRequest, "PADDING together with RESPONSE-PORT", nil)
	}

	via := on
	if change.ChangeIP {
		via.ip ^= 1
	}
	if change.ChangePort {
		via.port ^= 1
	}
	to := src
	if hasRPort {
		to = netip.AddrPortFrom(src.Addr(), uint16(rport))
	}
	if !h.lim.allow(src.Addr(), now) {
		return reply{verdict: limited, reason: "source over its rate"}
	}
	resp := new(stun.Message)
	setters := []stun.Setter{
		stun.NewTransactionIDSetter(req.TransactionID),
		stun.BindingSuccess,
		&stun.XORMappedAddress{IP: src.Addr().AsSlice(), Port: int(src.Port())},
		&stun.MappedAddress{IP: src.Addr().AsSlice(), Port: int(src.Port())},
		&stun.ResponseOrigin{IP: h.addrs[via.ip][via.port].Addr().AsSlice(), Port: int(h.addrs[via.ip][via.port].Port())},
	}
	if h.alt {
		other := h.addrs[on.ip^1][on.port^1]
		setters = append(setters, &stun.OtherAddress{IP: other.Addr().AsSlice(), Port: int(other.Port())})
	}
	if hasPad && h.maxPadding > 0 {
		setters = append(setters, Padding(min(int(pad), h.maxPadding)))
	}
	if h.software != "" {
		setters = append(setters, stun.NewSoftware(h.software))
	}
	setters = append(setters, stun.Fingerprint)
	if err := resp.Build(setters...); err != nil {
		// Only reachable through a bug: every value above is in range.
		return reply{verdict: dropped, reason: "building the response: " + err.Error()}
	}
	return reply{verdict: answered, raw: resp.Raw, via: via, to: to}
}

// refuse builds an error response, sent back on the socket it came in on
// to the request's source (never to RESPONSE-PORT), if the source is
// within its rate.
func (h *handler) refuse(pkt []byte, src netip.AddrPort, on sockID, now time.Time, code stun.ErrorCode, reason string, unknown []stun.AttrType) reply {
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	if !h.lim.allow(src.Addr(), now) {
		return reply{verdict: limited, code: code, reason: reason}
	}
	var tid [stun.TransactionIDSize]byte
	copy(tid[:], pkt[8:headerSize])
	var mt stun.MessageType
	mt.ReadValue(binary.BigEndian.Uint16(pkt[0:2]))
	setters := []stun.Setter{
		stun.NewTransactionIDSetter(tid),
		stun.NewType(mt.Method, stun.ClassErrorResponse),
		stun.ErrorCodeAttribute{Code: code, Reason: []byte(reason)},
	}
	if len(unknown) > 0 {
		setters = append(setters, stun.UnknownAttributes(unknown))
	}
	setters = append(setters, stun.Fingerprint)
	resp := new(stun.Message)
	if err := resp.Build(setters...); err != nil {
		return reply{verdict: dropped, reason: "building the error response: " + err.Error()}
	}
	return reply{verdict: refused, raw: resp.Raw, via: on, to: src, code: code, reason: reason}
}

// headerProblem applies RFC 8489 section 6.3's checks that tell a STUN
// message from other traffic; a datagram that fails them is not answered.
func headerProblem(pkt []byte) string {
	if len(pkt) < headerSize {
		return fmt.Sprintf("%d bytes, shorter than a STUN header", len(pkt))
	}
	if pkt[0]&0xc0 != 0 {
		return "first two bits are not zero"
	}
	if binary.BigEndian.Uint32(pkt[4:8]) != magic {
		return "no magic cookie"
	}
	n := int(binary.BigEndian.Uint16(pkt[2:4]))
	if n%4 != 0 {
		return fmt.Sprintf("length %d is not a multiple of 4", n)
	}
	if headerSize+n != len(pkt) {
		return fmt.Sprintf("length %d does not match the %d-byte datagram", n, len(pkt))
	}
	return ""
}

func contains(ts []stun.AttrType, t stun.AttrType) bool {
	for _, x := range ts {
		if x == t {
			return true
		}
	}
	return false
}

func (h *handler) stats() Stats {
	return Stats{
		Requests:          h.count.requests.Load(),
		Answered:          h.count.answered.Load(),
		BadRequests:       h.count.badRequests.Load(),
		UnknownAttributes: h.count.unknownAttrs.Load(),
		Dropped:           h.count.dropped.Load(),
		RateLimited:       h.count.rateLimited.Load(),
		Sources:           h.lim.sources(),
	}
}
