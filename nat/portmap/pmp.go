package portmap

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// NAT-PMP (RFC 6886) and PCP (RFC 6887) share the gateway's port 5351: the
// first byte of every message is the version, 0 for NAT-PMP, 2 for PCP.
//
// The NAT-PMP codec is ours rather than go-nat-pmp's: that module opens
// its own socket with net.DialUDP (outside the transport.Net seam, so not in
// a lab namespace or a virtual network) and takes no context.

const (
	pmpVersion     = 0
	pmpOpExternal  = 0
	pmpOpMapUDP    = 1
	pmpOpMapTCP    = 2
	pmpOpReplyFlag = 0x80

	// RFC 6886 section 3.1: first retransmission after 250 ms, doubling.
	pmpFirstRTO = 250 * time.Millisecond
)

// pmpResultText names NAT-PMP result codes (RFC 6886 section 3.5).
var pmpResultText = map[uint16]string{
	1: "UnsupportedVersion",
	2: "NotAuthorized",
	3: "NetworkFailure",
	4: "OutOfResources",
	5: "UnsupportedOpcode",
}

var (
	errShort      = errors.New("message too short")
	errNotReply   = errors.New("not a reply")
	errPCPVersion = errors.New("answered with PCP (version 2)")
	errPMPVersion = errors.New("answered with NAT-PMP (version 0)")
)

// pmpResponse is a parsed NAT-PMP answer.
type pmpResponse struct {
	Op       uint8 // request opcode (reply flag removed)
	Code     uint16
	Epoch    uint32 // seconds since start of epoch
	External netip.Addr
	Internal uint16
	Mapped   uint16
	Lifetime uint32
}

func pmpExternalRequest() []byte { return []byte{pmpVersion, pmpOpExternal} }

func pmpMapRequest(op uint8, internal, external uint16, lifetime uint32) []byte {
	b := make([]byte, 12)
	b[0], b[1] = pmpVersion, op
	binary.BigEndian.PutUint16(b[4:], internal)
	binary.BigEndian.PutUint16(b[6:], external)
	binary.BigEndian.PutUint32(b[8:], lifetime)
	return b
}

// parsePMPResponse parses a NAT-PMP answer. An answer with a non-zero
// result code parses (Code says it); a malformed one is an error.
func parsePMPResponse(b []byte) (pmpResponse, error) {
	var r pmpResponse
	if len(b) < 8 {
		return r, errShort
	}
	switch b[0] {
	case pmpVersion:
	case pcpVersion:
		return r, errPCPVersion
	default:
		return r, fmt.Errorf("NAT-PMP version %d", b[0])
	}
	if b[1]&pmpOpReplyFlag == 0 {
		return r, errNotReply
	}
	r.Op = b[1] &^ pmpOpReplyFlag
	r.Code = binary.BigEndian.Uint16(b[2:])
	r.Epoch = binary.BigEndian.Uint32(b[4:])
	if r.Code != 0 {
		return r, nil // error answers may be short (RFC 6886 section 3.5)
	}
	switch r.Op {
	case pmpOpExternal:
		if len(b) < 12 {
			return r, errShort
		}
		r.External = netip.AddrFrom4([4]byte(b[8:12]))
	case pmpOpMapUDP, pmpOpMapTCP:
		if len(b) < 16 {
			return r, errShort
		}
		r.Internal = binary.BigEndian.Uint16(b[8:])
		r.Mapped = binary.BigEndian.Uint16(b[10:])
		r.Lifetime = binary.BigEndian.Uint32(b[12:])
	default:
		return r, fmt.Errorf("NAT-PMP opcode %d", r.Op)
	}
	return r, nil
}

// exchange sends req to the gateway's NAT-PMP/PCP port and returns the
// first answer accept takes, retransmitting from 250 ms, doubling, until
// ctx ends or RequestTimeout passes.
func (c *Client) exchange(ctx context.Context, req []byte, accept func([]byte) bool) ([]byte, error) {
	gw, local, _, err := c.route()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	conn, err := c.net.ListenPacket("udp4", net.JoinHostPort(local.String(), "0"))
	if err != nil {
		return nil, fmt.Errorf("opening a socket towards %v: %w", gw, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(gw, c.pmpPort))
	buf := make([]byte, 1100) // PCP's maximum message size
	rto := pmpFirstRTO
	for {
		if _, err := conn.WriteTo(req, to); err != nil {
			return nil, fmt.Errorf("sending to %v: %w", to, err)
		}
		// The read deadline is wall time: it only paces retransmissions
		// within the context's deadline.
		conn.SetReadDeadline(time.Now().Add(rto))
		for {
			n, from, err := conn.ReadFrom(buf)
			if ctx.Err() != nil {
				return nil, fmt.Errorf("no answer from %v: %w", to, ctx.Err())
			}
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return nil, fmt.Errorf("reading from %v: %w", to, err)
			}
			ua, ok := from.(*net.UDPAddr)
			if !ok || ua.AddrPort().Addr().Unmap() != gw || ua.Port != int(c.pmpPort) {
				continue // not the gateway: ignore (RFC 6886 section 3.1)
			}
			if accept(buf[:n]) {
				return append([]byte(nil), buf[:n]...), nil
			}
		}
		rto *= 2
	}
}

func (c *Client) pmpCall(ctx context.Context, req []byte) (pmpResponse, error) {
	var r pmpResponse
	var perr error
	_, err := c.exchange(ctx, req, func(b []byte) bool {
		r, perr = parsePMPResponse(b)
		if errors.Is(perr, errPCPVersion) {
			return true
		}
		return perr == nil && r.Op == req[1]
	})
	if err != nil {
		return r, err
	}
	if perr != nil {
		return r, perr
	}
	c.observeEpoch(PMP, r.Epoch)
	return r, nil
}

// probePMP asks for the external address; the gateway speaks NAT-PMP if
// it answers.
func (c *Client) probePMP(ctx context.Context) (netip.Addr, bool) {
	r, err := c.pmpCall(ctx, pmpExternalRequest())
	if err != nil || r.Code != 0 {
		return netip.Addr{}, false
	}
	return r.External, true
}

func (c *Client) mapPMP(ctx context.Context, internal netip.AddrPort, external uint16) (Mapping, error) {
	gw, _, _, _ := c.route()
	fail := func(code int, reason string, err error) error {
		return &NoMappingError{Protocol: PMP, Gateway: gw, Code: code, Reason: reason, Err: err}
	}
	ext, err := c.pmpCall(ctx, pmpExternalRequest())
	if err != nil {
		return nil, fail(0, "asking the external address", err)
	}
	if ext.Code != 0 {
		return nil, fail(int(ext.Code), pmpResultText[ext.Code], nil)
	}
	extIP, err := c.usableExternal(ctx, ext.External)
	if err != nil {
		return nil, fail(0, "", err)
	}
	lease := uint32(c.cfg.Lease / time.Second)
	r, err := c.pmpCall(ctx, pmpMapRequest(pmpOpMapUDP, internal.Port(), external, lease))
	if err != nil {
		return nil, fail(0, "mapping UDP "+fmt.Sprint(internal.Port()), err)
	}
	if r.Code != 0 {
		return nil, fail(int(r.Code), pmpResultText[r.Code], nil)
	}
	if r.Internal != internal.Port() || r.Mapped == 0 || r.Lifetime == 0 {
		return nil, fail(0, fmt.Sprintf("answer for internal port %d, external %d, lifetime %d", r.Internal, r.Mapped, r.Lifetime), nil)
	}
	now := c.clock.Now()
	life := time.Duration(r.Lifetime) * time.Second
	return &pmpMapping{
		c:          c,
		internal:   internal,
		external:   netip.AddrPortFrom(extIP, r.Mapped),
		goodUntil:  now.Add(life),
		renewAfter: now.Add(life / 2),
	}, nil
}

// usableExternal is the gateway's external address, or, when it reports
// none (0.0.0.0, empty), what ExternalAddr says.
func (c *Client) usableExternal(ctx context.Context, a netip.Addr) (netip.Addr, error) {
	if a.IsValid() && !a.IsUnspecified() {
		return a.Unmap(), nil
	}
	if c.cfg.ExternalAddr == nil {
		return netip.Addr{}, errors.New("the gateway reports no external address (0.0.0.0)")
	}
	ext, err := c.cfg.ExternalAddr(ctx)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("the gateway reports no external address, and asking elsewhere failed: %w", err)
	}
	if !ext.IsValid() || ext.IsUnspecified() {
		return netip.Addr{}, errors.New("the gateway reports no external address, nor does ExternalAddr")
	}
	return ext, nil
}

type pmpMapping struct {
	c          *Client
	internal   netip.AddrPort
	external   netip.AddrPort
	goodUntil  time.Time
	renewAfter time.Time
}

func (m *pmpMapping) Protocol() Protocol       { return PMP }
func (m *pmpMapping) Internal() netip.AddrPort { return m.internal }
func (m *pmpMapping) External() netip.AddrPort { return m.external }
func (m *pmpMapping) GoodUntil() time.Time     { return m.goodUntil }
func (m *pmpMapping) RenewAfter() time.Time    { return m.renewAfter }

// Release deletes the mapping: lifetime 0 and external port 0 (RFC 6886
// section 3.4).
func (m *pmpMapping) Release(ctx context.Context) error {
	m.c.untrack(m)
	r, err := m.c.pmpCall(ctx, pmpMapRequest(pmpOpMapUDP, m.internal.Port(), 0, 0))
	if err != nil {
		return fmt.Errorf("releasing NAT-PMP mapping %v -> %v: %w", m.external, m.internal, err)
	}
	if r.Code != 0 {
		return fmt.Errorf("releasing NAT-PMP mapping %v -> %v: %d %s", m.external, m.internal, r.Code, pmpResultText[r.Code])
	}
	return nil
}
