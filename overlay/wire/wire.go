// Package wire encodes the frames that overlay links carry inside their
// DTLS sessions, and the plain probes used to punch holes. Routed messages
// follow RELOAD (RFC 6940): a forward carries the destination, a hop limit
// and the via list of nodes it passed, and its reply travels that list
// back (symmetric recursive routing). Decoding never panics: malformed
// input is an error wrapping ErrMalformed.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/superpeer/superpeer/overlay/routing"
)

// Type is a frame's type.
type Type uint8

// The frame types.
const (
	TypeHello   Type = 1 // link-state advertisement, first frame each way
	TypePing    Type = 2
	TypePong    Type = 3
	TypeForward Type = 4 // a routed message on its way to a key or node
	TypeReply   Type = 5 // the answer, on its way back along the via list
	TypeData    Type = 6 // an application payload for the linked peer
	TypeRelay   Type = 7 // a datagram relayed for a third node
	TypeClose   Type = 8 // the sender is dropping the link
	TypeAck     Type = 9 // a forward arrived (Nonce is its message ID)
	TypeReach   Type = 10
)

// Limits that bound what a peer can make a node allocate.
const (
	MaxFrame   = 64 << 10
	MaxVia     = 64
	MaxLinks   = 1024
	MaxAddrs   = 8
	MaxAddrLen = 64
	MaxText    = 256
)

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed frame")

// Contact is a node and how to reach it.
type Contact struct {
	ID           routing.ID
	Reachability uint8
	Addrs        []string
}

// Hello is the link-state advertisement a node sends on a session when it
// opens and whenever its links change.
type Hello struct {
	Self     Contact
	Observed string       // the address the receiver's packets come from
	Links    []routing.ID // the sender's links, for the lookahead
	Linked   bool         // the sender holds this session as a table link
}

// Forward is a routed message. Each hop acknowledges it (TypeAck) to the
// node that sent it; a node that gets no acknowledgement adds the silent
// neighbour to Dead and sends the message to its next best neighbour.
type Forward struct {
	ID    uint64
	Kind  uint8
	Exact bool // deliver only at the node whose ID is Dest
	TTL   uint8
	Dest  routing.ID
	Via   []routing.ID // origin first
	// Dead are nodes that did not acknowledge the message on its way: the
	// nodes after keep away from them (at most routing.MaxDead).
	Dead    []routing.ID
	Payload []byte
}

// Reply answers a Forward; Path is the remaining way back, origin first.
type Reply struct {
	ID      uint64
	Kind    uint8
	Path    []routing.ID
	Payload []byte
}

// Relay carries a datagram between two nodes through the sender's link:
// Peer is the far node (the destination from the sender's side, the source
// from the relay's side).
type Relay struct {
	Peer routing.ID
	Data []byte
}

// Frame is one decoded frame; exactly the field of its Type is set.
type Frame struct {
	Type    Type
	Hello   *Hello
	Nonce   uint64 // ping, pong
	Forward *Forward
	Reply   *Reply
	Data    []byte // data
	Relay   *Relay
	Reason  string // close
	// Reach is the sender's reach (routing.Table.Reach): the ID prefixes
	// of the nodes its neighbours link to, sorted, at most
	// routing.MaxReach, so that a frame fits one datagram.
	Reach []uint32
}

// Encoder builds frames.
type Encoder struct{ b []byte }

func (e *Encoder) u8(v uint8)   { e.b = append(e.b, v) }
func (e *Encoder) u16(v uint16) { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *Encoder) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *Encoder) id(v routing.ID) {
	e.b = append(e.b, v[:]...)
}
func (e *Encoder) bytes(p []byte) { e.u16(uint16(len(p))); e.b = append(e.b, p...) }
func (e *Encoder) text(s string)  { e.bytes([]byte(s)) }
func (e *Encoder) ids(v []routing.ID) {
	e.u16(uint16(len(v)))
	for _, x := range v {
		e.id(x)
	}
}
func (e *Encoder) contact(c Contact) {
	e.id(c.ID)
	e.u8(c.Reachability)
	e.u8(uint8(len(c.Addrs)))
	for _, a := range c.Addrs {
		e.text(a)
	}
}

// Contacts encodes a list of contacts (used as a payload).
func Contacts(cs []Contact) []byte {
	var e Encoder
	e.u16(uint16(len(cs)))
	for _, c := range cs {
		e.contact(c)
	}
	return e.b
}

// Marshal encodes f.
func Marshal(f *Frame) ([]byte, error) {
	var e Encoder
	e.u8(uint8(f.Type))
	switch f.Type {
	case TypeHello:
		h := f.Hello
		if len(h.Links) > MaxLinks || len(h.Self.Addrs) > MaxAddrs {
			return nil, fmt.Errorf("encoding hello: %d links, %d addresses: over the limits", len(h.Links), len(h.Self.Addrs))
		}
		e.contact(h.Self)
		e.text(h.Observed)
		e.ids(h.Links)
		if h.Linked {
			e.u8(1)
		} else {
			e.u8(0)
		}
	case TypePing, TypePong, TypeAck:
		e.u64(f.Nonce)
	case TypeReach:
		if len(f.Reach) > routing.MaxReach {
			return nil, fmt.Errorf("encoding reach: %d entries, limit %d", len(f.Reach), routing.MaxReach)
		}
		e.u16(uint16(len(f.Reach)))
		for _, p := range f.Reach {
			e.b = binary.BigEndian.AppendUint32(e.b, p)
		}
	case TypeForward:
		m := f.Forward
		if len(m.Via) > MaxVia {
			return nil, fmt.Errorf("encoding forward: via list of %d, limit %d", len(m.Via), MaxVia)
		}
		if len(m.Dead) > routing.MaxDead {
			return nil, fmt.Errorf("encoding forward: dead list of %d, limit %d", len(m.Dead), routing.MaxDead)
		}
		e.u64(m.ID)
		e.u8(m.Kind)
		if m.Exact {
			e.u8(1)
		} else {
			e.u8(0)
		}
		e.u8(m.TTL)
		e.id(m.Dest)
		e.ids(m.Via)
		e.ids(m.Dead)
		e.bytes(m.Payload)
	case TypeReply:
		m := f.Reply
		if len(m.Path) > MaxVia {
			return nil, fmt.Errorf("encoding reply: path of %d, limit %d", len(m.Path), MaxVia)
		}
		e.u64(m.ID)
		e.u8(m.Kind)
		e.ids(m.Path)
		e.bytes(m.Payload)
	case TypeData:
		e.bytes(f.Data)
	case TypeRelay:
		e.id(f.Relay.Peer)
		e.bytes(f.Relay.Data)
	case TypeClose:
		e.text(f.Reason)
	default:
		return nil, fmt.Errorf("encoding frame: unknown type %d", f.Type)
	}
	if len(e.b) > MaxFrame {
		return nil, fmt.Errorf("encoding frame type %d: %d bytes, limit %d", f.Type, len(e.b), MaxFrame)
	}
	return e.b, nil
}

// Decoder reads fields; the first error sticks.
type Decoder struct {
	p   []byte
	err error
}

// NewDecoder reads p.
func NewDecoder(p []byte) *Decoder { return &Decoder{p: p} }

// Err returns the first error, wrapping ErrMalformed.
func (d *Decoder) Err() error { return d.err }

func (d *Decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
	}
	d.p = nil
}

func (d *Decoder) take(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.p) {
		d.fail("%s: need %d bytes, have %d", what, n, len(d.p))
		return nil
	}
	b := d.p[:n:n]
	d.p = d.p[n:]
	return b
}

// U8 reads a byte.
func (d *Decoder) U8(what string) uint8 {
	if b := d.take(1, what); b != nil {
		return b[0]
	}
	return 0
}

// U16 reads a big-endian uint16.
func (d *Decoder) U16(what string) uint16 {
	if b := d.take(2, what); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

// U64 reads a big-endian uint64.
func (d *Decoder) U64(what string) uint64 {
	if b := d.take(8, what); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// ID reads a node ID.
func (d *Decoder) ID(what string) routing.ID {
	var id routing.ID
	copy(id[:], d.take(routing.IDLen, what))
	return id
}

// Bytes reads a length-prefixed byte string (aliasing the input).
func (d *Decoder) Bytes(what string) []byte {
	n := int(d.U16(what))
	return d.take(n, what)
}

// Text reads a length-prefixed string of at most MaxText bytes.
func (d *Decoder) Text(what string) string {
	b := d.Bytes(what)
	if len(b) > MaxText {
		d.fail("%s: %d bytes, limit %d", what, len(b), MaxText)
		return ""
	}
	return string(b)
}

// IDs reads a counted list of IDs of at most limit entries.
func (d *Decoder) IDs(what string, limit int) []routing.ID {
	n := int(d.U16(what))
	if n > limit {
		d.fail("%s: %d entries, limit %d", what, n, limit)
		return nil
	}
	if d.err != nil || n*routing.IDLen > len(d.p) {
		d.fail("%s: %d entries, %d bytes left", what, n, len(d.p))
		return nil
	}
	out := make([]routing.ID, n)
	for i := range out {
		out[i] = d.ID(what)
	}
	return out
}

// Contact reads a contact.
func (d *Decoder) Contact() Contact {
	c := Contact{ID: d.ID("contact ID"), Reachability: d.U8("reachability")}
	n := int(d.U8("address count"))
	if n > MaxAddrs {
		d.fail("contact with %d addresses, limit %d", n, MaxAddrs)
		return c
	}
	for i := 0; i < n && d.err == nil; i++ {
		a := d.Text("address")
		if len(a) > MaxAddrLen {
			d.fail("address of %d bytes, limit %d", len(a), MaxAddrLen)
		}
		c.Addrs = append(c.Addrs, a)
	}
	return c
}

// Done fails when input is left over.
func (d *Decoder) Done() error {
	if d.err == nil && len(d.p) != 0 {
		d.fail("%d trailing bytes", len(d.p))
	}
	return d.err
}

// ParseContacts decodes a list made by Contacts.
func ParseContacts(p []byte) ([]Contact, error) {
	d := NewDecoder(p)
	n := int(d.U16("contact count"))
	if n > MaxLinks {
		d.fail("%d contacts, limit %d", n, MaxLinks)
	}
	var out []Contact
	for i := 0; i < n && d.Err() == nil; i++ {
		out = append(out, d.Contact())
	}
	if err := d.Done(); err != nil {
		return nil, fmt.Errorf("decoding contacts: %w", err)
	}
	return out, nil
}

// Unmarshal decodes a frame. The result may alias p.
func Unmarshal(p []byte) (*Frame, error) {
	if len(p) > MaxFrame {
		return nil, fmt.Errorf("decoding frame: %w: %d bytes, limit %d", ErrMalformed, len(p), MaxFrame)
	}
	d := NewDecoder(p)
	f := &Frame{Type: Type(d.U8("type"))}
	switch f.Type {
	case TypeHello:
		h := &Hello{Self: d.Contact(), Observed: d.Text("observed address")}
		h.Links = d.IDs("links", MaxLinks)
		h.Linked = d.U8("linked") == 1
		f.Hello = h
	case TypePing, TypePong, TypeAck:
		f.Nonce = d.U64("nonce")
	case TypeReach:
		n := int(d.U16("reach count"))
		if n > routing.MaxReach {
			d.fail("reach: %d entries, limit %d", n, routing.MaxReach)
			break
		}
		b := d.take(4*n, "reach")
		if d.Err() == nil {
			f.Reach = make([]uint32, n)
			for i := range f.Reach {
				f.Reach[i] = binary.BigEndian.Uint32(b[4*i:])
			}
		}
	case TypeForward:
		m := &Forward{ID: d.U64("message ID"), Kind: d.U8("kind"), Exact: d.U8("exact") == 1, TTL: d.U8("ttl")}
		m.Dest = d.ID("destination")
		m.Via = d.IDs("via list", MaxVia)
		m.Dead = d.IDs("dead list", routing.MaxDead)
		m.Payload = d.Bytes("payload")
		f.Forward = m
	case TypeReply:
		m := &Reply{ID: d.U64("message ID"), Kind: d.U8("kind")}
		m.Path = d.IDs("path", MaxVia)
		m.Payload = d.Bytes("payload")
		f.Reply = m
	case TypeData:
		f.Data = d.Bytes("data")
	case TypeRelay:
		f.Relay = &Relay{Peer: d.ID("relay peer"), Data: d.Bytes("relay data")}
	case TypeClose:
		f.Reason = d.Text("reason")
	default:
		if d.Err() == nil {
			return nil, fmt.Errorf("decoding frame: %w: unknown type %d", ErrMalformed, f.Type)
		}
	}
	if err := d.Done(); err != nil {
		return nil, fmt.Errorf("decoding frame type %d: %w", f.Type, err)
	}
	return f, nil
}

// Probe is the plain datagram both ends of a hole punch send at once. It
// carries the sender's node ID so the receiver can tell whose it is; the
// DTLS handshake that follows authenticates.
const ProbeMagic = 0xF7 // outside DTLS (20-63) and STUN (0-3), RFC 7983

// ProbeLen is the length of a probe.
const ProbeLen = 1 + routing.IDLen

// MarshalProbe returns a probe from id.
func MarshalProbe(id routing.ID) []byte { return append([]byte{ProbeMagic}, id[:]...) }

// UnmarshalProbe decodes a probe.
func UnmarshalProbe(p []byte) (routing.ID, error) {
	var id routing.ID
	if len(p) != ProbeLen || p[0] != ProbeMagic {
		return id, fmt.Errorf("decoding probe: %w: %d bytes", ErrMalformed, len(p))
	}
	copy(id[:], p[1:])
	return id, nil
}
