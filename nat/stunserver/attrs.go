package stunserver

import (
	"encoding/binary"
	"fmt"

	"github.com/pion/stun/v4"
)

// The RFC 5780 request attributes that pion/stun knows by number only.
// Clients (nat/probe) use these types to build requests; the server uses
// them to read them.

// AttrError says which attribute of a request is malformed and why. The
// server answers it with 400 Bad Request and the error's text as reason.
type AttrError struct {
	Attr   stun.AttrType
	Reason string
}

func (e *AttrError) Error() string { return fmt.Sprintf("%s: %s", e.Attr, e.Reason) }

// CHANGE-REQUEST flag bits (RFC 5780 section 7.2).
const (
	changeIPFlag   = 0x04
	changePortFlag = 0x02
)

// ChangeRequest is the CHANGE-REQUEST attribute (RFC 5780 section 7.2): the
// client asks for the response to come from the server's other address,
// other port, or both.
type ChangeRequest struct {
	ChangeIP   bool
	ChangePort bool
}

// AddTo adds CHANGE-REQUEST to m.
func (c ChangeRequest) AddTo(m *stun.Message) error {
	var v [4]byte
	if c.ChangeIP {
		v[3] |= changeIPFlag
	}
	if c.ChangePort {
		v[3] |= changePortFlag
	}
	m.Add(stun.AttrChangeRequest, v[:])
	return nil
}

// GetFrom reads CHANGE-REQUEST from m; stun.ErrAttributeNotFound when absent,
// *AttrError when malformed. Unassigned flag bits are ignored.
func (c *ChangeRequest) GetFrom(m *stun.Message) error {
	v, err := m.Get(stun.AttrChangeRequest)
	if err != nil {
		return err
	}
	if len(v) != 4 {
		return &AttrError{stun.AttrChangeRequest, fmt.Sprintf("value is %d bytes, want 4", len(v))}
	}
	c.ChangeIP = v[3]&changeIPFlag != 0
	c.ChangePort = v[3]&changePortFlag != 0
	return nil
}

// ResponsePort is the RESPONSE-PORT attribute (RFC 5780 section 7.5): the
// response goes to the request's source address at this port.
type ResponsePort uint16

// AddTo adds RESPONSE-PORT to m: the port and two bytes of padding, as
// RFC 5780 and coturn encode it.
func (p ResponsePort) AddTo(m *stun.Message) error {
	var v [4]byte
	binary.BigEndian.PutUint16(v[:2], uint16(p))
	m.Add(stun.AttrResponsePort, v[:])
	return nil
}

// GetFrom reads RESPONSE-PORT from m. A 2-byte value (the port without its
// padding inside the value) is accepted too; port 0 is refused.
func (p *ResponsePort) GetFrom(m *stun.Message) error {
	v, err := m.Get(stun.AttrResponsePort)
	if err != nil {
		return err
	}
	if len(v) != 4 && len(v) != 2 {
		return &AttrError{stun.AttrResponsePort, fmt.Sprintf("value is %d bytes, want 4", len(v))}
	}
	port := binary.BigEndian.Uint16(v[:2])
	if port == 0 {
		return &AttrError{stun.AttrResponsePort, "port 0"}
	}
	*p = ResponsePort(port)
	return nil
}

// Padding is the PADDING attribute (RFC 5780 section 7.6), given by its
// length in bytes; its content is zeros and means nothing.
type Padding int

// AddTo adds PADDING of length p to m.
func (p Padding) AddTo(m *stun.Message) error {
	if p < 0 || p > 0xffff {
		return &AttrError{stun.AttrPadding, fmt.Sprintf("length %d out of range", int(p))}
	}
	m.Add(stun.AttrPadding, make([]byte, int(p)))
	return nil
}

// GetFrom reads the length of PADDING from m.
func (p *Padding) GetFrom(m *stun.Message) error {
	v, err := m.Get(stun.AttrPadding)
	if err != nil {
		return err
	}
	*p = Padding(len(v))
	return nil
}
