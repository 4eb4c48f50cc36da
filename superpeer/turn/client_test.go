package turn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

// rawClient speaks TURN with hand-built STUN messages over a connected
// UDP socket or a TCP connection, so tests see every error code exactly
// as the server sent it.
type rawClient struct {
	t     testing.TB
	conn  net.Conn
	tcp   bool
	user  string
	pass  string
	realm string
	nonce string
	buf   []byte // TCP: bytes read, not yet framed
}

func newRawClient(t testing.TB, conn net.Conn, user, pass string) *rawClient {
	t.Helper()
	_, tcp := conn.(*net.TCPConn)
	if !tcp {
		_, tcp = conn.LocalAddr().(*net.TCPAddr)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn, tcp: tcp, user: user, pass: pass}
}

// errorCodeOf returns the response's error code, 0 for a success.
func errorCodeOf(m *stun.Message) stun.ErrorCode {
	if m.Type.Class == stun.ClassSuccessResponse {
		return 0
	}
	var ec stun.ErrorCodeAttribute
	if err := ec.GetFrom(m); err != nil {
		return -1
	}
	return ec.Code
}

// do sends a request (authenticated once a nonce is known) and returns
// the response; on 401 or 438 with a nonce it retries once with
// credentials, as a client does.
func (c *rawClient) do(method stun.Method, attrs ...stun.Setter) (*stun.Message, error) {
	for attempt := 0; ; attempt++ {
		resp, err := c.once(method, attrs...)
		if err != nil {
			return nil, err
		}
		code := errorCodeOf(resp)
		if (code == stun.CodeUnauthorized || code == stun.CodeStaleNonce) && attempt == 0 {
			var n stun.Nonce
			var r stun.Realm
			if n.GetFrom(resp) == nil && r.GetFrom(resp) == nil {
				c.nonce, c.realm = n.String(), r.String()
				continue
			}
		}
		return resp, nil
	}
}

func (c *rawClient) once(method stun.Method, attrs ...stun.Setter) (*stun.Message, error) {
	setters := []stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}
	setters = append(setters, attrs...)
	if c.nonce != "" {
		setters = append(setters, stun.NewUsername(c.user), stun.NewRealm(c.realm), stun.NewNonce(c.nonce),
			stun.NewLongTermIntegrity(c.user, c.realm, c.pass))
	}
	req, err := stun.Build(setters...)
	if err != nil {
		return nil, err
	}
	return c.roundTrip(req)
}

// roundTrip sends req and waits up to 3 s for its response, resending
// over UDP every 500 ms.
func (c *rawClient) roundTrip(req *stun.Message) (*stun.Message, error) {
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := c.conn.Write(req.Raw); err != nil {
			return nil, err
		}
		wait := time.Now().Add(500 * time.Millisecond)
		if c.tcp {
			wait = deadline
		}
		c.conn.SetReadDeadline(wait)
		for {
			b, err := c.read()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return nil, err
			}
			if !stun.IsMessage(b) {
				continue // ChannelData, Data indications
			}
			m := &stun.Message{Raw: b}
			if err := m.Decode(); err != nil {
				return nil, err
			}
			if m.TransactionID == req.TransactionID {
				return m, nil
			}
		}
	}
	return nil, fmt.Errorf("no response to %v within 3s", req.Type)
}

// read returns one datagram, or one frame of the TCP stream.
func (c *rawClient) read() ([]byte, error) {
	if !c.tcp {
		b := make([]byte, 1600)
		n, err := c.conn.Read(b)
		return b[:n], err
	}
	for {
		if size, _, ok := frameSize(c.buf); ok && size > 0 && len(c.buf) >= size {
			b := append([]byte(nil), c.buf[:size]...)
			c.buf = c.buf[size:]
			return b, nil
		}
		var tmp [2048]byte
		n, err := c.conn.Read(tmp[:])
		c.buf = append(c.buf, tmp[:n]...)
		if err != nil {
			if n == 0 {
				return nil, err
			}
		}
	}
}

// allocate makes an allocation (transport 17 UDP or 6 TCP; family 1 IPv4,
// 2 IPv6, 0 the server's default) and returns the relayed address and
// the error code.
func (c *rawClient) allocate(transport byte, family byte) (netip.AddrPort, stun.ErrorCode) {
	c.t.Helper()
	attrs := []stun.Setter{rawAttr(stun.AttrRequestedTransport, []byte{transport, 0, 0, 0})}
	if family != 0 {
		attrs = append(attrs, rawAttr(stun.AttrRequestedAddressFamily, []byte{family, 0, 0, 0}))
	}
	resp, err := c.do(stun.MethodAllocate, attrs...)
	if err != nil {
		c.t.Fatalf("allocate: %v", err)
	}
	if code := errorCodeOf(resp); code != 0 {
		return netip.AddrPort{}, code
	}
	var relayed stun.XORMappedAddress
	if err := relayed.GetFromAs(resp, stun.AttrXORRelayedAddress); err != nil {
		c.t.Fatalf("allocate: success without XOR-RELAYED-ADDRESS: %v", err)
	}
	a, _ := netip.AddrFromSlice(relayed.IP)
	return netip.AddrPortFrom(a.Unmap(), uint16(relayed.Port)), 0
}

// peerRequest sends CreatePermission, ChannelBind (channel 0x4000) or
// Connect for peer and returns the error code (0: success).
func (c *rawClient) peerRequest(method stun.Method, peer netip.AddrPort) stun.ErrorCode {
	c.t.Helper()
	attrs := []stun.Setter{xorPeer(peer)}
	if method == stun.MethodChannelBind {
		attrs = append(attrs, rawAttr(stun.AttrChannelNumber, []byte{0x40, 0, 0, 0}))
	}
	resp, err := c.do(method, attrs...)
	if err != nil {
		c.t.Fatalf("%v %v: %v", method, peer, err)
	}
	return errorCodeOf(resp)
}

// send sends data to peer in a Send indication.
func (c *rawClient) send(peer netip.AddrPort, data []byte) {
	c.t.Helper()
	m, err := stun.Build(stun.TransactionID, stun.NewType(stun.MethodSend, stun.ClassIndication),
		xorPeer(peer), rawAttr(stun.AttrData, data))
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.conn.Write(m.Raw); err != nil {
		c.t.Fatal(err)
	}
}

// receive waits up to timeout for a Data indication and returns its peer
// and data.
func (c *rawClient) receive(timeout time.Duration) (netip.AddrPort, []byte, error) {
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		b, err := c.read()
		if err != nil {
			return netip.AddrPort{}, nil, err
		}
		if !stun.IsMessage(b) {
			continue
		}
		m := &stun.Message{Raw: b}
		if m.Decode() != nil || m.Type != stun.NewType(stun.MethodData, stun.ClassIndication) {
			continue
		}
		var pa stun.XORMappedAddress
		if err := pa.GetFromAs(m, stun.AttrXORPeerAddress); err != nil {
			return netip.AddrPort{}, nil, err
		}
		data, err := m.Get(stun.AttrData)
		if err != nil {
			return netip.AddrPort{}, nil, err
		}
		a, _ := netip.AddrFromSlice(pa.IP)
		return netip.AddrPortFrom(a.Unmap(), uint16(pa.Port)), data, nil
	}
}

type rawAttrSetter struct {
	t stun.AttrType
	v []byte
}

func (r rawAttrSetter) AddTo(m *stun.Message) error {
	m.Add(r.t, r.v)
	return nil
}

func rawAttr(t stun.AttrType, v []byte) stun.Setter { return rawAttrSetter{t, v} }

// xorPeer encodes XOR-PEER-ADDRESS for any address, including IPv4 in
// its mapped IPv6 form (pion's encoder would shorten it to IPv4).
func xorPeer(peer netip.AddrPort) stun.Setter {
	return xorPeerSetter(peer)
}

type xorPeerSetter netip.AddrPort

func (x xorPeerSetter) AddTo(m *stun.Message) error {
	ap := netip.AddrPort(x)
	ip := ap.Addr().AsSlice()
	family := byte(1)
	if ap.Addr().Is6() {
		family = 2
	}
	v := make([]byte, 4+len(ip))
	v[1] = family
	binary.BigEndian.PutUint16(v[2:4], ap.Port()^uint16(magicCookie>>16))
	var key [16]byte
	binary.BigEndian.PutUint32(key[0:4], magicCookie)
	copy(key[4:], m.TransactionID[:])
	for i := range ip {
		v[4+i] = ip[i] ^ key[i]
	}
	m.Add(stun.AttrXORPeerAddress, v)
	return nil
}
