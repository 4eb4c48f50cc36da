package portmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/transport/v5/stdnet"
)

// fakeGateway is an in-process router on loopback speaking NAT-PMP and PCP
// (one UDP socket, as on port 5351), SSDP and a UPnP IGD over HTTP, with
// knobs for the quirks real routers have.
type fakeGateway struct {
	t    *testing.T
	pmp  *net.UDPConn
	ssdp *net.UDPConn
	http *httptest.Server

	mu sync.Mutex // guards following
	// NAT-PMP and PCP
	external    netip.Addr
	epoch       uint32
	pmpCode     uint16
	pcpCode     uint8
	pcpOff      bool // answer PCP as a NAT-PMP-only box does
	pmpOff      bool // no answer to NAT-PMP
	wrongNonce  bool // send an answer with another nonce first
	pcpLifetime uint32
	pmpRequests [][]byte
	pcpRequests [][]byte
	// SSDP and UPnP
	location     string // LOCATION answered; "" means the fake's own
	upnpOff      bool
	description  func(w http.ResponseWriter, r *http.Request) // nil: the IGD v1 description
	upnpExternal string
	addCodes     []int  // error codes answered to AddPortMapping, in turn
	v2           bool   // the IGD offers WANIPConnection:2
	reserved     string // AddAnyPortMapping's choice of port
	adds         []map[string]string
	deletes      []map[string]string
}

func newFakeGateway(t *testing.T) *fakeGateway {
	t.Helper()
	g := &fakeGateway{t: t, external: netip.MustParseAddr("198.51.100.7"), epoch: 1000, upnpExternal: "198.51.100.7", pcpLifetime: 7200}
	var err error
	if g.pmp, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	if g.ssdp, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	g.http = httptest.NewServer(http.HandlerFunc(g.serveHTTP))
	go g.servePMP()
	go g.serveSSDP()
	t.Cleanup(func() {
		g.pmp.Close()
		g.ssdp.Close()
		g.http.Close()
	})
	return g
}

func (g *fakeGateway) set(f func(g *fakeGateway)) { g.mu.Lock(); f(g); g.mu.Unlock() }

// client returns a Client for the fake, on the real loopback.
func (g *fakeGateway) client(mod func(*Config)) *Client {
	g.t.Helper()
	n, err := stdnet.NewNet()
	if err != nil {
		g.t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Net = n
	cfg.Gateway = netip.MustParseAddr("127.0.0.1")
	cfg.ProbeTimeout = 500 * time.Millisecond
	cfg.RequestTimeout = 300 * time.Millisecond
	cfg.VerifyInterval = time.Second
	cfg.RetryInterval = 100 * time.Millisecond
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		g.t.Fatal(err)
	}
	c.pmpPort = uint16(g.pmp.LocalAddr().(*net.UDPAddr).Port)
	c.ssdpPort = uint16(g.ssdp.LocalAddr().(*net.UDPAddr).Port)
	g.t.Cleanup(func() { c.Close(t0ctx(g.t)) })
	return c
}

func (g *fakeGateway) servePMP() {
	buf := make([]byte, 1500)
	for {
		n, from, err := g.pmp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		req := append([]byte(nil), buf[:n]...)
		g.mu.Lock()
		var out [][]byte
		switch {
		case len(req) >= 2 && req[0] == pmpVersion && !g.pmpOff:
			g.pmpRequests = append(g.pmpRequests, req)
			out = append(out, g.pmpAnswerLocked(req))
		case len(req) >= 24 && req[0] == pcpVersion:
			g.pcpRequests = append(g.pcpRequests, req)
			if g.pcpOff {
				out = append(out, []byte{0, req[1] | 0x80, 0, 1, 0, 0, 0, 0}) // NAT-PMP: unsupported version
			} else {
				out = append(out, g.pcpAnswersLocked(req)...)
			}
		}
		g.mu.Unlock()
		for _, b := range out {
			g.pmp.WriteToUDPAddrPort(b, from)
		}
	}
}

func (g *fakeGateway) pmpAnswerLocked(req []byte) []byte {
	op := req[1]
	b := make([]byte, 16)
	b[0], b[1] = 0, op|0x80
	binary.BigEndian.PutUint16(b[2:], g.pmpCode)
	binary.BigEndian.PutUint32(b[4:], g.epoch)
	if g.pmpCode != 0 {
		return b[:8]
	}
	switch op {
	case pmpOpExternal:
		ip := g.external.As4()
		copy(b[8:12], ip[:])
		return b[:12]
	case pmpOpMapUDP:
		copy(b[8:10], req[4:6]) // internal port
		ext := req[6:8]
		if binary.BigEndian.Uint16(ext) == 0 && binary.BigEndian.Uint32(req[8:12]) != 0 {
			ext = req[4:6]
		}
		copy(b[10:12], ext)
		copy(b[12:16], req[8:12]) // lifetime granted as asked
		return b
	}
	b[3] = 5
	return b[:8]
}

func (g *fakeGateway) pcpAnswersLocked(req []byte) [][]byte {
	resp := make([]byte, len(req))
	copy(resp, req)
	resp[1] |= 0x80
	resp[2], resp[3] = 0, g.pcpCode
	binary.BigEndian.PutUint32(resp[8:], g.epoch)
	for i := 12; i < 24; i++ {
		resp[i] = 0
	}
	if req[1] == pcpOpAnnounce {
		binary.BigEndian.PutUint32(resp[4:], 0)
		return [][]byte{resp}
	}
	lifetime := binary.BigEndian.Uint32(req[4:])
	if lifetime > g.pcpLifetime {
		lifetime = g.pcpLifetime
	}
	binary.BigEndian.PutUint32(resp[4:], lifetime)
	m := resp[24:]
	if binary.BigEndian.Uint16(m[18:]) == 0 {
		copy(m[18:20], m[16:18])
	}
	ip := g.external.As16()
	copy(m[20:36], ip[:])
	if g.wrongNonce {
		bad := append([]byte(nil), resp...)
		bad[24] ^= 0xff
		binary.BigEndian.PutUint16(bad[24+18:], 1) // a mapping meant for someone else
		return [][]byte{bad, resp}
	}
	return [][]byte{resp}
}

func (g *fakeGateway) serveSSDP() {
	buf := make([]byte, 1500)
	for {
		n, from, err := g.ssdp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if !strings.HasPrefix(string(buf[:n]), "M-SEARCH") {
			continue
		}
		g.mu.Lock()
		loc, off := g.location, g.upnpOff
		g.mu.Unlock()
		if off {
			continue
		}
		if loc == "" {
			loc = g.http.URL + "/rootDesc.xml"
		}
		msg := "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n" +
			"USN: uuid:fake::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nEXT:\r\nSERVER: fake UPnP/1.1\r\nLOCATION: " + loc + "\r\n\r\n"
		g.ssdp.WriteToUDPAddrPort([]byte(msg), from)
	}
}

const igdDescription = `<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
<specVersion><major>1</major><minor>0</minor></specVersion>
%s
<device>
 <deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
 <friendlyName>fake gateway</friendlyName>
 <UDN>uuid:fake</UDN>
 <deviceList><device>
  <deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
  <UDN>uuid:fake-wan</UDN>
  <deviceList><device>
   <deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
   <UDN>uuid:fake-wanconn</UDN>
   <serviceList><service>
    <serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
    <serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
    <controlURL>/ctl/IPConn</controlURL>
    <eventSubURL>/evt/IPConn</eventSubURL>
    <SCPDURL>/WANIPCn.xml</SCPDURL>
   </service></serviceList>
  </device></deviceList>
 </device></deviceList>
</device>
</root>`

var soapArg = regexp.MustCompile(`<(New[A-Za-z]+)>([^<]*)</`)

func (g *fakeGateway) serveHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	desc := g.description
	g.mu.Unlock()
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/rootDesc.xml":
		if desc != nil {
			desc(w, r)
			return
		}
		d := fmt.Sprintf(igdDescription, "")
		g.mu.Lock()
		v2 := g.v2
		g.mu.Unlock()
		if v2 {
			d = strings.Replace(d, "service:WANIPConnection:1", "service:WANIPConnection:2", 1)
		}
		fmt.Fprint(w, d)
		return
	case r.Method == http.MethodPost && r.URL.Path == "/ctl/IPConn":
	default:
		http.NotFound(w, r)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	args := map[string]string{}
	for _, m := range soapArg.FindAllStringSubmatch(string(body), -1) {
		args[m[1]] = m[2]
	}
	action := r.Header.Get("SOAPACTION")
	action = strings.Trim(action[strings.LastIndex(action, "#")+1:], `"`)
	g.mu.Lock()
	var code int
	var inner string
	switch action {
	case "GetExternalIPAddress":
		inner = "<NewExternalIPAddress>" + g.upnpExternal + "</NewExternalIPAddress>"
	case "AddPortMapping":
		g.adds = append(g.adds, args)
		if len(g.addCodes) > 0 {
			code, g.addCodes = g.addCodes[0], g.addCodes[1:]
		}
	case "AddAnyPortMapping":
		g.adds = append(g.adds, args)
		inner = "<NewReservedPort>" + g.reserved + "</NewReservedPort>"
	case "DeletePortMapping":
		g.deletes = append(g.deletes, args)
	default:
		code = 401
	}
	g.mu.Unlock()
	w.Header().Set("Content-Type", `text/xml; charset="utf-8"`)
	const env = `<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>%s</s:Body></s:Envelope>`
	if code != 0 {
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintf(w, env, fmt.Sprintf(`<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>%d</errorCode><errorDescription>%s</errorDescription></UPnPError></detail></s:Fault>`, code, upnpErrorText[code]))
		return
	}
	svc := "urn:schemas-upnp-org:service:WANIPConnection:1"
	g.mu.Lock()
	v2 := g.v2
	g.mu.Unlock()
	if v2 {
		svc = "urn:schemas-upnp-org:service:WANIPConnection:2"
	}
	fmt.Fprintf(w, env, fmt.Sprintf(`<u:%sResponse xmlns:u="%s">%s</u:%sResponse>`, action, svc, inner, action))
}
