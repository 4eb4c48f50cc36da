package portmap

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v4"
	"github.com/pion/transport/v5"
)

// Verifier checks a mapping end to end: something outside sends to
// external, and Verify returns nil once it arrived at the mapped socket.
// Routers that list a mapping but do not forward it are a known field
// failure; a held mapping that fails verification is made again.
//
// The daemon backs it with a STUN server or an overlay neighbour sending to
// the mapped address while the socket's owner watches its read loop.
type Verifier interface {
	Verify(ctx context.Context, external netip.AddrPort) error
}

// VerifierFunc makes a function a Verifier.
type VerifierFunc func(ctx context.Context, external netip.AddrPort) error

// Verify calls f.
func (f VerifierFunc) Verify(ctx context.Context, external netip.AddrPort) error {
	return f(ctx, external)
}

// RFC 5780's attributes.
const (
	attrChangeRequest stun.AttrType = 0x0003
	attrResponsePort  stun.AttrType = 0x0027
)

// STUNVerifier verifies with RFC 5780's RESPONSE-PORT: from a socket of
// its own it asks an RFC 5780 STUN server to send the answer to the
// request's source address with the mapped external port; the answer
// arrives through the mapping or not at all. It reads the mapped socket
// Conn while Verify runs, so nothing else may read it then, and Conn must
// not have talked to Server lately (its own NAT binding would let the
// answer in without the mapping).
//
// Each Verify asks for the answer from the next of the server's four
// addresses (CHANGE-REQUEST: none, port, address, both). A router keeps a
// conntrack entry for an answer that found no mapping, and retransmissions
// keep it alive; a mapping made again right after would be checked
// against that stale entry and look dead. A fresh source does not.
type STUNVerifier struct {
	// Net opens the probe socket.
	Net transport.Net
	// Server is an RFC 5780 STUN server (coturn without no-rfc5780, or
	// ours).
	Server netip.AddrPort
	// Conn is the mapped socket.
	Conn net.PacketConn

	turn atomic.Uint32
}

// Verify reports nil if the server's answer reached Conn through external.
func (v *STUNVerifier) Verify(ctx context.Context, external netip.AddrPort) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	probe, err := v.Net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		return fmt.Errorf("verifying %v: probe socket: %w", external, err)
	}
	defer probe.Close()
	port := make([]byte, 4) // port, then two bytes of padding
	binary.BigEndian.PutUint16(port, external.Port())
	change := []byte{0, 0, 0, [4]byte{0, 0x02, 0x04, 0x06}[(v.turn.Add(1)-1)%4]}
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest,
		stun.RawAttribute{Type: attrChangeRequest, Value: change},
		stun.RawAttribute{Type: attrResponsePort, Value: port}, stun.Fingerprint)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { v.Conn.SetReadDeadline(time.Now()) })
	defer stop()
	defer v.Conn.SetReadDeadline(time.Time{})
	buf := make([]byte, 1500)
	rto := 500 * time.Millisecond // RFC 5389's initial RTO
	to := net.UDPAddrFromAddrPort(v.Server)
	for {
		if _, err := probe.WriteTo(req.Raw, to); err != nil {
			return fmt.Errorf("verifying %v: sending to %v: %w", external, v.Server, err)
		}
		v.Conn.SetReadDeadline(time.Now().Add(rto))
		for {
			n, _, err := v.Conn.ReadFrom(buf)
			if ctx.Err() != nil {
				return fmt.Errorf("verifying %v: no answer from %v arrived through the mapping: %w", external, v.Server, ctx.Err())
			}
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return fmt.Errorf("verifying %v: reading the mapped socket: %w", external, err)
			}
			m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if m.Decode() != nil || m.TransactionID != req.TransactionID {
				continue
			}
			if m.Type.Class == stun.ClassErrorResponse {
				var code stun.ErrorCodeAttribute
				code.GetFrom(m)
				return fmt.Errorf("verifying %v: %v refused RESPONSE-PORT: %v", external, v.Server, code)
			}
			return nil
		}
		rto = min(2*rto, 2*time.Second)
	}
}
