package portmap

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// PCP, RFC 6887: the MAP opcode for inbound mappings and ANNOUNCE to find
// out whether the gateway speaks PCP at all.

const (
	pcpVersion    = 2
	pcpOpAnnounce = 0
	pcpOpMap      = 1
	pcpReplyFlag  = 0x80
	pcpHeaderLen  = 24
	pcpMapLen     = 36
	pcpMaxLen     = 1100
	pcpProtoUDP   = 17
)

// pcpResultText names PCP result codes (RFC 6887 section 7.4).
var pcpResultText = map[uint8]string{
	1:  "UNSUPP_VERSION",
	2:  "NOT_AUTHORIZED",
	3:  "MALFORMED_REQUEST",
	4:  "UNSUPP_OPCODE",
	5:  "UNSUPP_OPTION",
	6:  "MALFORMED_OPTION",
	7:  "NETWORK_FAILURE",
	8:  "NO_RESOURCES",
	9:  "UNSUPP_PROTOCOL",
	10: "USER_EX_QUOTA",
	11: "CANNOT_PROVIDE_EXTERNAL",
	12: "ADDRESS_MISMATCH",
	13: "EXCESSIVE_REMOTE_PEERS",
}

// pcpResponse is a parsed PCP answer.
type pcpResponse struct {
	Op       uint8 // request opcode (reply flag removed)
	Code     uint8
	Lifetime uint32
	Epoch    uint32
	// MAP fields, when Op is MAP and the answer carries them.
	HasMap     bool
	Nonce      [12]byte
	Protocol   uint8
	Internal   uint16
	External   uint16
	ExternalIP netip.Addr
}

func pcpHeader(op uint8, lifetime uint32, client netip.Addr, extra int) []byte {
	b := make([]byte, pcpHeaderLen+extra)
	b[0], b[1] = pcpVersion, op
	binary.BigEndian.PutUint32(b[4:], lifetime)
	ip := client.As16() // IPv4 as ::ffff:a.b.c.d (RFC 6887 section 5)
	copy(b[8:24], ip[:])
	return b
}

func pcpAnnounceRequest(client netip.Addr) []byte {
	return pcpHeader(pcpOpAnnounce, 0, client, 0)
}

func pcpMapRequest(nonce [12]byte, client netip.Addr, internal, external uint16, externalIP netip.Addr, lifetime uint32) []byte {
	b := pcpHeader(pcpOpMap, lifetime, client, pcpMapLen)
	m := b[pcpHeaderLen:]
	copy(m[0:12], nonce[:])
	m[12] = pcpProtoUDP
	binary.BigEndian.PutUint16(m[16:], internal)
	binary.BigEndian.PutUint16(m[18:], external)
	if !externalIP.IsValid() {
		externalIP = netip.IPv4Unspecified() // no preference: ::ffff:0.0.0.0
	}
	ip := externalIP.As16()
	copy(m[20:36], ip[:])
	return b
}

// parsePCPResponse parses a PCP answer. An answer with a non-zero result
// code parses (Code says it); a malformed one is an error.
func parsePCPResponse(b []byte) (pcpResponse, error) {
	var r pcpResponse
	if len(b) < 4 {
		return r, errShort
	}
	switch b[0] {
	case pcpVersion:
	case pmpVersion:
		// A NAT-PMP-only gateway answers a PCP request with its own
		// "unsupported version" (RFC 6887 section 9).
		return r, errPMPVersion
	default:
		return r, fmt.Errorf("PCP version %d", b[0])
	}
	if len(b) < pcpHeaderLen {
		return r, errShort
	}
	if len(b) > pcpMaxLen || len(b)%4 != 0 {
		return r, fmt.Errorf("PCP answer of %d bytes", len(b))
	}
	if b[1]&pcpReplyFlag == 0 {
		return r, errNotReply
	}
	r.Op = b[1] &^ pcpReplyFlag
	r.Code = b[3]
	r.Lifetime = binary.BigEndian.Uint32(b[4:])
	r.Epoch = binary.BigEndian.Uint32(b[8:])
	if r.Op == pcpOpMap {
		if len(b) < pcpHeaderLen+pcpMapLen {
			if r.Code == 0 {
				return r, errShort
			}
			return r, nil
		}
		m := b[pcpHeaderLen:]
		r.HasMap = true
		copy(r.Nonce[:], m[0:12])
		r.Protocol = m[12]
		r.Internal = binary.BigEndian.Uint16(m[16:])
		r.External = binary.BigEndian.Uint16(m[18:])
		r.ExternalIP = netip.AddrFrom16([16]byte(m[20:36])).Unmap()
	}
	return r, nil
}

// probePCP sends ANNOUNCE; the gateway speaks PCP if it answers with
// version 2 (any result code but UNSUPP_VERSION).
func (c *Client) probePCP(ctx context.Context, local netip.Addr) bool {
	var r pcpResponse
	_, err := c.exchange(ctx, pcpAnnounceRequest(local), func(b []byte) bool {
		var perr error
		r, perr = parsePCPResponse(b)
		if errors.Is(perr, errPMPVersion) {
			r.Code = 1
			return true
		}
		return perr == nil && r.Op == pcpOpAnnounce
	})
	if err != nil || r.Code == 1 {
		return false
	}
	c.observeEpoch(PCP, r.Epoch)
	return true
}

// mapPCP asks for a MAP of internal, suggesting external (port and, when
// valid, address). A zero nonce makes a new one; renewals and the release
// reuse the mapping's nonce, as the server requires (RFC 6887 section
// 11.1).
func (c *Client) mapPCP(ctx context.Context, internal netip.AddrPort, external uint16, externalIP netip.Addr, nonce [12]byte) (Mapping, error) {
	gw, _, _, _ := c.route()
	fail := func(code int, reason string, err error) error {
		return &NoMappingError{Protocol: PCP, Gateway: gw, Code: code, Reason: reason, Err: err}
	}
	if nonce == ([12]byte{}) {
		rand.Read(nonce[:])
	}
	lease := uint32(c.cfg.Lease / time.Second)
	r, err := c.pcpMap(ctx, nonce, internal, external, externalIP, lease)
	if err != nil {
		return nil, fail(0, fmt.Sprintf("mapping UDP %d", internal.Port()), err)
	}
	if r.Code != 0 {
		return nil, fail(int(r.Code), pcpResultText[r.Code], nil)
	}
	if r.Internal != internal.Port() || r.External == 0 || r.Lifetime == 0 {
		return nil, fail(0, fmt.Sprintf("answer for internal port %d, external %d, lifetime %d", r.Internal, r.External, r.Lifetime), nil)
	}
	extIP, err := c.usableExternal(ctx, r.ExternalIP)
	if err != nil {
		return nil, fail(0, "", err)
	}
	now := c.clock.Now()
	life := time.Duration(r.Lifetime) * time.Second
	return &pcpMapping{
		c:          c,
		nonce:      nonce,
		internal:   internal,
		external:   netip.AddrPortFrom(extIP, r.External),
		goodUntil:  now.Add(life),
		renewAfter: now.Add(life / 2),
	}, nil
}

// pcpMap sends one MAP request and returns the answer that matches it:
// same nonce, protocol and internal port (others are for someone else).
func (c *Client) pcpMap(ctx context.Context, nonce [12]byte, internal netip.AddrPort, external uint16, externalIP netip.Addr, lifetime uint32) (pcpResponse, error) {
	var r pcpResponse
	req := pcpMapRequest(nonce, internal.Addr(), internal.Port(), external, externalIP, lifetime)
	_, err := c.exchange(ctx, req, func(b []byte) bool {
		var perr error
		r, perr = parsePCPResponse(b)
		if perr != nil || r.Op != pcpOpMap {
			return false
		}
		if !r.HasMap {
			return r.Code != 0 // a short error answer cannot be matched better
		}
		return r.Nonce == nonce && r.Protocol == pcpProtoUDP && r.Internal == internal.Port()
	})
	if err != nil {
		return r, err
	}
	c.observeEpoch(PCP, r.Epoch)
	return r, nil
}

type pcpMapping struct {
	c          *Client
	nonce      [12]byte
	internal   netip.AddrPort
	external   netip.AddrPort
	goodUntil  time.Time
	renewAfter time.Time
}

func (m *pcpMapping) Protocol() Protocol       { return PCP }
func (m *pcpMapping) Internal() netip.AddrPort { return m.internal }
func (m *pcpMapping) External() netip.AddrPort { return m.external }
func (m *pcpMapping) GoodUntil() time.Time     { return m.goodUntil }
func (m *pcpMapping) RenewAfter() time.Time    { return m.renewAfter }

// Release deletes the mapping: a MAP with the same nonce and lifetime 0.
func (m *pcpMapping) Release(ctx context.Context) error {
	m.c.untrack(m)
	r, err := m.c.pcpMap(ctx, m.nonce, m.internal, m.external.Port(), m.external.Addr(), 0)
	if err != nil {
		return fmt.Errorf("releasing PCP mapping %v -> %v: %w", m.external, m.internal, err)
	}
	if r.Code != 0 {
		return fmt.Errorf("releasing PCP mapping %v -> %v: %d %s", m.external, m.internal, r.Code, pcpResultText[r.Code])
	}
	return nil
}
