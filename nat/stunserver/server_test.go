package stunserver

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun/v4"
	"github.com/pion/transport/v5/vnet"
)

var (
	primary   = netip.MustParseAddr("198.51.100.4")
	alternate = netip.MustParseAddr("198.51.100.5")
	clientIP  = netip.MustParseAddr("198.51.100.20")
)

// world is a vnet WAN with the server on two addresses and a client host.
type world struct {
	srv    *Server
	client *vnet.Net
	stop   func()
}

func newWorld(t *testing.T, mutate func(*Config)) *world {
	t.Helper()
	lf := logging.NewDefaultLoggerFactory()
	wan, err := vnet.NewRouter(&vnet.RouterConfig{CIDR: "198.51.100.0/24", LoggerFactory: lf})
	if err != nil {
		t.Fatal(err)
	}
	srvNet, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{primary.String(), alternate.String()}})
	if err != nil {
		t.Fatal(err)
	}
	cliNet, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{clientIP.String()}})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*vnet.Net{srvNet, cliNet} {
		if err := wan.AddNet(n); err != nil {
			t.Fatal(err)
		}
	}
	if err := wan.Start(); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Net, cfg.Primary, cfg.Alternate = srvNet, primary, alternate
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(context.Background()) }()
	return &world{srv: srv, client: cliNet, stop: func() {
		srv.Close()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
		wan.Stop()
	}}
}

func (w *world) socket(t *testing.T) net.PacketConn {
	t.Helper()
	c, err := w.client.ListenPacket("udp4", netip.AddrPortFrom(clientIP, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recv reads one STUN message from c within 2 s (of the bubble's time).
func recv(c net.PacketConn) (*stun.Message, netip.AddrPort, bool) {
	buf := make([]byte, 70000)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, from, err := c.ReadFrom(buf)
	if err != nil {
		return nil, netip.AddrPort{}, false
	}
	m := new(stun.Message)
	if err := stun.Decode(buf[:n], m); err != nil {
		return nil, netip.AddrPort{}, false
	}
	ap, _ := addrPortOf(from)
	return m, ap, true
}

func addrAttr(t *testing.T, m *stun.Message, at stun.AttrType) netip.AddrPort {
	t.Helper()
	if at == stun.AttrXORMappedAddress {
		var x stun.XORMappedAddress
		if err := x.GetFrom(m); err != nil {
			t.Fatalf("XOR-MAPPED-ADDRESS: %v", err)
		}
		ip, _ := netip.AddrFromSlice(x.IP)
		return netip.AddrPortFrom(ip.Unmap(), uint16(x.Port))
	}
	var a stun.MappedAddress
	if err := a.GetFromAs(m, at); err != nil {
		t.Fatalf("%s: %v", at, err)
	}
	ip, _ := netip.AddrFromSlice(a.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(a.Port))
}

func binding(t *testing.T, extra ...stun.Setter) *stun.Message {
	t.Helper()
	m, err := stun.Build(append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func send(t *testing.T, c net.PacketConn, to netip.AddrPort, raw []byte) {
	t.Helper()
	if _, err := c.WriteTo(raw, net.UDPAddrFromAddrPort(to)); err != nil {
		t.Fatal(err)
	}
}

// TestBindingAnswers shows each RFC 5780 request form answered from the
// socket it asks for, with the attributes a client reads.
func TestBindingAnswers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t, nil)
		defer w.stop()
		a := w.srv.Addrs()
		p1, p2 := a[0].Port(), a[1].Port()
		ap := func(ip netip.Addr, p uint16) netip.AddrPort { return netip.AddrPortFrom(ip, p) }
		cases := []struct {
			name      string
			to        netip.AddrPort
			change    *ChangeRequest
			wantFrom  netip.AddrPort
			wantOther netip.AddrPort
		}{
			{"plain", ap(primary, p1), nil, ap(primary, p1), ap(alternate, p2)},
			{"change port", ap(primary, p1), &ChangeRequest{ChangePort: true}, ap(primary, p2), ap(alternate, p2)},
			{"change IP", ap(primary, p1), &ChangeRequest{ChangeIP: true}, ap(alternate, p1), ap(alternate, p2)},
			{"change both", ap(primary, p1), &ChangeRequest{ChangeIP: true, ChangePort: true}, ap(alternate, p2), ap(alternate, p2)},
			{"no change asked", ap(primary, p1), &ChangeRequest{}, ap(primary, p1), ap(alternate, p2)},
			{"to the alternate pair", ap(alternate, p2), nil, ap(alternate, p2), ap(primary, p1)},
			{"alternate pair, change IP", ap(alternate, p2), &ChangeRequest{ChangeIP: true}, ap(primary, p2), ap(primary, p1)},
		}
		for _, tc := range cases {
			c := w.socket(t)
			var req *stun.Message
			if tc.change != nil {
				req = binding(t, *tc.change)
			} else {
				req = binding(t)
			}
			send(t, c, tc.to, req.Raw)
			resp, from, ok := recv(c)
			if !ok {
				t.Fatalf("%s: no response", tc.name)
			}
			if resp.Type != stun.BindingSuccess || resp.TransactionID != req.TransactionID {
				t.Fatalf("%s: got %v for transaction %x", tc.name, resp.Type, resp.TransactionID)
			}
			me, _ := addrPortOf(c.LocalAddr())
			me = netip.AddrPortFrom(clientIP, me.Port())
			if from != tc.wantFrom {
				t.Errorf("%s: response came from %v, want %v", tc.name, from, tc.wantFrom)
			}
			if got := addrAttr(t, resp, stun.AttrResponseOrigin); got != from {
				t.Errorf("%s: RESPONSE-ORIGIN %v but the response came from %v", tc.name, got, from)
			}
			if got := addrAttr(t, resp, stun.AttrXORMappedAddress); got != me {
				t.Errorf("%s: XOR-MAPPED-ADDRESS %v, want %v", tc.name, got, me)
			}
			if got := addrAttr(t, resp, stun.AttrMappedAddress); got != me {
				t.Errorf("%s: MAPPED-ADDRESS %v, want %v", tc.name, got, me)
			}
			if got := addrAttr(t, resp, stun.AttrOtherAddress); got != tc.wantOther {
				t.Errorf("%s: OTHER-ADDRESS %v, want %v", tc.name, got, tc.wantOther)
			}
			if err := stun.Fingerprint.Check(resp); err != nil {
				t.Errorf("%s: FINGERPRINT: %v", tc.name, err)
			}
		}
	})
}

// TestResponsePortAndPadding shows RESPONSE-PORT sending the response to
// another port of the source address, and PADDING echoed in size but
// capped, and refused together with RESPONSE-PORT.
func TestResponsePortAndPadding(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t, func(c *Config) { c.MaxPadding = 1200 })
		defer w.stop()
		x, y := w.socket(t), w.socket(t)
		xPort := x.LocalAddr().(*net.UDPAddr).Port

		req := binding(t, ResponsePort(xPort))
		send(t, y, w.srv.Addr(), req.Raw)
		resp, from, ok := recv(x)
		if !ok {
			t.Fatal("RESPONSE-PORT response did not reach the named port")
		}
		if resp.TransactionID != req.TransactionID || from != w.srv.Addr() {
			t.Fatalf("got transaction %x from %v", resp.TransactionID, from)
		}
		if got := addrAttr(t, resp, stun.AttrXORMappedAddress); got.Port() == uint16(xPort) {
			t.Errorf("XOR-MAPPED-ADDRESS %v is the response port, want the request's source", got)
		}
		if _, _, ok := recv(y); ok {
			t.Error("the requesting socket got a response too")
		}

		for _, pad := range []int{100, 1000, 3000} {
			req := binding(t, Padding(pad))
			send(t, y, w.srv.Addr(), req.Raw)
			resp, _, ok := recv(y)
			if !ok {
				t.Fatalf("no response to a request with %d bytes of PADDING", pad)
			}
			var got Padding
			if err := got.GetFrom(resp); err != nil {
				t.Fatalf("response to PADDING %d has none: %v", pad, err)
			}
			if want := min(pad, 1200); int(got) != want {
				t.Errorf("PADDING %d answered with %d bytes, want %d", pad, got, want)
			}
		}

		req = binding(t, Padding(64), ResponsePort(xPort))
		send(t, y, w.srv.Addr(), req.Raw)
		resp, _, ok = recv(y)
		if !ok {
			t.Fatal("PADDING with RESPONSE-PORT got no error response")
		}
		var ec stun.ErrorCodeAttribute
		if err := ec.GetFrom(resp); err != nil || ec.Code != stun.CodeBadRequest {
			t.Fatalf("PADDING with RESPONSE-PORT answered %v (%v), want 400", resp.Type, err)
		}
		if _, _, ok := recv(x); ok {
			t.Error("a response reached the RESPONSE-PORT of a refused request")
		}
	})
}

// TestRefusals shows the errors a client sees for requests the server
// will not serve, and the silence for what is not a request.
func TestRefusals(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t, nil)
		defer w.stop()
		raw := func(setters ...stun.Setter) []byte {
			m, err := stun.Build(setters...)
			if err != nil {
				t.Fatal(err)
			}
			return m.Raw
		}
		rawAttr := func(at stun.AttrType, v []byte) stun.Setter {
			return stun.RawAttribute{Type: at, Value: v}
		}
		badFP := raw(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
		badFP[len(badFP)-1] ^= 0xff
		cases := []struct {
			name        string
			pkt         []byte
			wantCode    stun.ErrorCode // 0: no answer at all
			wantUnknown []stun.AttrType
		}{
			{"not STUN", []byte("hello, is this a STUN server?"), 0, nil},
			{"binding indication", raw(stun.TransactionID, stun.NewType(stun.MethodBinding, stun.ClassIndication)), 0, nil},
			{"a response", raw(stun.TransactionID, stun.BindingSuccess), 0, nil},
			{"bad fingerprint", badFP, 0, nil},
			{"allocate", raw(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest)), stun.CodeBadRequest, nil},
			{"RESPONSE-ADDRESS", raw(stun.TransactionID, stun.BindingRequest, rawAttr(0x0002, []byte{0, 1, 0, 80, 1, 2, 3, 4})), stun.CodeUnknownAttribute, []stun.AttrType{0x0002}},
			{"two unknown", raw(stun.TransactionID, stun.BindingRequest, rawAttr(0x7001, nil), rawAttr(0x0019, []byte{17, 0, 0, 0})), stun.CodeUnknownAttribute, []stun.AttrType{0x7001, 0x0019}},
			{"short CHANGE-REQUEST", raw(stun.TransactionID, stun.BindingRequest, rawAttr(stun.AttrChangeRequest, []byte{0, 6})), stun.CodeBadRequest, nil},
			{"RESPONSE-PORT 0", raw(stun.TransactionID, stun.BindingRequest, ResponsePort(0)), stun.CodeBadRequest, nil},
			{"RESPONSE-PORT of 3 bytes", raw(stun.TransactionID, stun.BindingRequest, rawAttr(stun.AttrResponsePort, []byte{1, 2, 3})), stun.CodeBadRequest, nil},
		}
		for _, tc := range cases {
			c := w.socket(t)
			before := w.srv.Stats()
			send(t, c, w.srv.Addr(), tc.pkt)
			resp, _, ok := recv(c)
			if tc.wantCode == 0 {
				if ok {
					t.Errorf("%s: answered %v, want silence", tc.name, resp.Type)
				}
				if got := w.srv.Stats().Dropped - before.Dropped; got != 1 {
					t.Errorf("%s: Dropped grew by %d, want 1", tc.name, got)
				}
				continue
			}
			if !ok {
				t.Fatalf("%s: no answer, want %d", tc.name, tc.wantCode)
			}
			var ec stun.ErrorCodeAttribute
			if err := ec.GetFrom(resp); err != nil || ec.Code != tc.wantCode || resp.Type.Class != stun.ClassErrorResponse {
				t.Errorf("%s: answered %v %v (%v), want error %d", tc.name, resp.Type, ec, err, tc.wantCode)
				continue
			}
			if len(ec.Reason) == 0 {
				t.Errorf("%s: error %d without a reason", tc.name, ec.Code)
			}
			if string(resp.TransactionID[:]) != string(tc.pkt[8:20]) {
				t.Errorf("%s: error for another transaction", tc.name)
			}
			if tc.wantUnknown != nil {
				var ua stun.UnknownAttributes
				if err := ua.GetFrom(resp); err != nil {
					t.Errorf("%s: no UNKNOWN-ATTRIBUTES: %v", tc.name, err)
				} else if len(ua) != len(tc.wantUnknown) || ua[0] != tc.wantUnknown[0] || ua[len(ua)-1] != tc.wantUnknown[len(ua)-1] {
					t.Errorf("%s: UNKNOWN-ATTRIBUTES %v, want %v", tc.name, ua, tc.wantUnknown)
				}
			}
		}
		// An unknown comprehension-optional attribute is ignored.
		c := w.socket(t)
		send(t, c, w.srv.Addr(), raw(stun.TransactionID, stun.BindingRequest, rawAttr(0x8099, []byte("x"))))
		if resp, _, ok := recv(c); !ok || resp.Type != stun.BindingSuccess {
			t.Errorf("an unknown optional attribute was not ignored")
		}
	})
}

// TestNoAlternate shows a one-address server: plain STUN and RESPONSE-PORT
// work, CHANGE-REQUEST is refused with 420 and no OTHER-ADDRESS is given.
func TestNoAlternate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld(t, func(c *Config) { c.Alternate = netip.Addr{} })
		defer w.stop()
		if n := len(w.srv.Addrs()); n != 1 {
			t.Fatalf("listening on %d sockets, want 1", n)
		}
		c := w.socket(t)
		send(t, c, w.srv.Addr(), binding(t).Raw)
		resp, _, ok := recv(c)
		if !ok || resp.Type != stun.BindingSuccess {
			t.Fatal("no success response")
		}
		if resp.Contains(stun.AttrOtherAddress) {
			t.Error("OTHER-ADDRESS without an alternate address")
		}
		send(t, c, w.srv.Addr(), binding(t, ChangeRequest{ChangePort: true}).Raw)
		resp, _, ok = recv(c)
		var ec stun.ErrorCodeAttribute
		if !ok || ec.GetFrom(resp) != nil || ec.Code != stun.CodeUnknownAttribute {
			t.Fatalf("CHANGE-REQUEST without an alternate: want 420")
		}
	})
}

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	good.Primary, good.Alternate = primary, alternate
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	cases := map[string]func(*Config){
		"no primary":       func(c *Config) { c.Primary = netip.Addr{} },
		"unspecified":      func(c *Config) { c.Primary = netip.IPv4Unspecified() },
		"same addresses":   func(c *Config) { c.Alternate = c.Primary },
		"mixed families":   func(c *Config) { c.Alternate = netip.MustParseAddr("2001:db8::1") },
		"same ports":       func(c *Config) { c.AltPort = c.Port },
		"negative padding": func(c *Config) { c.MaxPadding = -1 },
		"huge padding":     func(c *Config) { c.MaxPadding = 5000 },
		"zero rate":        func(c *Config) { c.RatePerSource = 0 },
		"zero burst":       func(c *Config) { c.Burst = 0 },
		"zero sources":     func(c *Config) { c.MaxSources = 0 },
	}
	for name, mutate := range cases {
		c := good
		mutate(&c)
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: Validate = %v, want ErrConfig", name, err)
		}
		if _, err := New(c); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
}
