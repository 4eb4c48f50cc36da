package sip

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/pion/transport/v5/stdnet"

	"github.com/superpeer/superpeer/nat/clock"
)

// testLogger is quiet unless SIP_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("SIP_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testServer starts a server on loopback with the given tweaks.
func testServer(t *testing.T, node, domain string, c clock.Clock, deps Deps, tweak func(*Config)) *Server {
	t.Helper()
	n, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.NodeID = node
	cfg.Domains = []string{domain}
	cfg.Listen = []Listener{{Network: "udp", Addr: "127.0.0.1:0"}, {Network: "tcp", Addr: "127.0.0.1:0"}}
	cfg.LAN = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	cfg.Flood.Requests = 0
	cfg.Logger = testLogger()
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := New(cfg, n, c, deps)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func (s *Server) addr(network string) netip.AddrPort {
	for _, l := range s.Listeners() {
		if l.Network == network {
			return netip.MustParseAddrPort(l.Addr)
		}
	}
	panic("no listener " + network)
}

// phone is a softphone made of sipgo's user agent, client and dialog
// caches: it registers, calls, answers and hangs up.
type phone struct {
	t       *testing.T
	user    string
	ua      *sipgo.UserAgent
	srv     *sipgo.Server
	cli     *sipgo.Client
	addr    netip.AddrPort
	proxy   netip.AddrPort
	network string
	contact sip.ContactHeader
	dcc     *sipgo.DialogClientCache
	dsc     *sipgo.DialogServerCache

	answerSDP  []byte
	offerSDP   []byte
	rejectCode int
	ringOnly   bool // ring until cancelled
	cancels    atomic.Int32
	invites    atomic.Int32
	byes       atomic.Int32
	messages   chan *sip.Request
	mu         sync.Mutex
	lastInvite *sip.Request
	methods    []string // other methods received
	lastDialog *sipgo.DialogServerSession
}

const testSDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"

// newPhone starts a phone on loopback that uses proxy as its outbound
// proxy over network (udp or tcp).
func newPhone(t *testing.T, user string, proxy netip.AddrPort, network string) *phone {
	t.Helper()
	p := &phone{t: t, user: user, proxy: proxy, network: network, answerSDP: []byte(testSDP), offerSDP: []byte(testSDP), messages: make(chan *sip.Request, 16)}
	var err error
	p.ua, err = sipgo.NewUA(sipgo.WithUserAgent(user), sipgo.WithUserAgentHostname("127.0.0.1"),
		sipgo.WithUserAgenTLSConfig(&tls.Config{InsecureSkipVerify: true}),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(testLogger())),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(testLogger())))
	if err != nil {
		t.Fatal(err)
	}
	p.srv, _ = sipgo.NewServer(p.ua, sipgo.WithServerLogger(testLogger()))
	switch network {
	case "udp":
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
		go p.srv.ServeUDP(pc)
		t.Cleanup(func() { pc.Close() })
		waitFor(t, 5*time.Second, "the phone's socket to serve", func() bool {
			_, err := p.ua.TransportLayer().GetConnection("udp", p.addr.String())
			return err == nil
		})
	case "tcp", "tls":
		// A stream phone dials the proxy and keeps the connection (its
		// flow); it listens nowhere.
		p.addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 0)
	}
	opts := []sipgo.ClientOption{sipgo.WithClientHostname("127.0.0.1"), sipgo.WithClientLogger(testLogger())}
	if network == "udp" {
		opts = append(opts, sipgo.WithClientPort(int(p.addr.Port())), sipgo.WithClientConnectionAddr(p.addr.String()))
	}
	p.cli, err = sipgo.NewClient(p.ua, opts...)
	if err != nil {
		t.Fatal(err)
	}
	p.contact = sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: user, Host: "127.0.0.1", Port: int(p.addr.Port())}}
	if network != "udp" {
		p.contact.Address.UriParams = sip.NewParams()
		p.contact.Address.UriParams.Add("transport", network)
	}
	p.dcc = sipgo.NewDialogClientCache(p.cli, p.contact)
	p.dsc = sipgo.NewDialogServerCache(p.cli, p.contact)
	p.srv.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		p.invites.Add(1)
		p.mu.Lock()
		p.lastInvite = req
		p.mu.Unlock()
		if p.rejectCode != 0 {
			tx.Respond(sip.NewResponseFromRequest(req, p.rejectCode, "Rejected", nil))
			return
		}
		d, err := p.dsc.ReadInvite(req, tx)
		if err != nil {
			return
		}
		p.mu.Lock()
		p.lastDialog = d
		p.mu.Unlock()
		d.Respond(180, "Ringing", nil)
		if p.ringOnly {
			tx.OnCancel(func(*sip.Request) { p.cancels.Add(1) })
			<-tx.Done()
			return
		}
		d.RespondSDP(p.answerSDP)
		<-tx.Done()
	})
	p.srv.OnAck(func(req *sip.Request, tx sip.ServerTransaction) { p.dsc.ReadAck(req, tx) })
	p.srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		p.byes.Add(1)
		if err := p.dsc.ReadBye(req, tx); err != nil {
			if err := p.dcc.ReadBye(req, tx); err != nil {
				tx.Respond(sip.NewResponseFromRequest(req, 481, "No Dialog", nil))
			}
		}
	})
	for _, m := range []sip.RequestMethod{sip.SUBSCRIBE, sip.NOTIFY, sip.PRACK, sip.UPDATE, sip.INFO} {
		p.srv.OnRequest(m, func(req *sip.Request, tx sip.ServerTransaction) {
			p.mu.Lock()
			p.methods = append(p.methods, string(req.Method))
			p.mu.Unlock()
			tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
		})
	}
	p.srv.OnMessage(func(req *sip.Request, tx sip.ServerTransaction) {
		tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
		select {
		case p.messages <- req:
		default:
		}
	})
	t.Cleanup(func() { p.ua.Close() })
	return p
}

func (p *phone) route() *sip.RouteHeader {
	u := sip.Uri{Scheme: "sip", Host: p.proxy.Addr().String(), Port: int(p.proxy.Port()), UriParams: sip.NewParams()}
	u.UriParams.Add("lr", "")
	if p.network != "udp" {
		u.UriParams.Add("transport", p.network)
	}
	return &sip.RouteHeader{Address: u}
}

// do sends a request through the proxy and returns the final response.
func (p *phone) do(ctx context.Context, req *sip.Request) (*sip.Response, error) {
	req.SetDestination(p.proxy.String())
	if p.network != "udp" {
		req.SetTransport(strings.ToUpper(p.network))
	}
	return p.cli.Do(ctx, req)
}

// register registers aor with the proxy; extra headers and contact
// parameters go along.
func (p *phone) register(ctx context.Context, aor string, expires int, contactParams map[string]string, extra ...sip.Header) (*sip.Response, error) {
	var to sip.Uri
	if err := sip.ParseUri(aor, &to); err != nil {
		return nil, err
	}
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: to.Host})
	req.AppendHeader(&sip.ToHeader{Address: to})
	from := &sip.FromHeader{Address: to, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(8))
	req.AppendHeader(from)
	c := p.contact.Clone()
	c.Params = sip.NewParams()
	for k, v := range contactParams {
		c.Params.Add(k, v)
	}
	req.AppendHeader(c)
	req.AppendHeader(sip.NewHeader("Expires", fmt.Sprint(expires)))
	for _, h := range extra {
		req.AppendHeader(h)
	}
	return p.do(ctx, req)
}

// call invites target through the proxy and, when answered, ACKs.
func (p *phone) call(ctx context.Context, target string) (*sipgo.DialogClientSession, error) {
	var to sip.Uri
	if err := sip.ParseUri(target, &to); err != nil {
		return nil, err
	}
	req := sip.NewRequest(sip.INVITE, to)
	req.AppendHeader(p.route())
	req.AppendHeader(p.contact.Clone())
	req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	req.SetBody(p.offerSDP)
	if p.network != "udp" {
		req.SetTransport(strings.ToUpper(p.network))
	}
	sess, err := p.dcc.WriteInvite(ctx, req)
	if err != nil {
		return nil, err
	}
	if err := sess.WaitAnswer(ctx, sipgo.AnswerOptions{}); err != nil {
		sess.Close()
		return nil, err
	}
	if err := sess.Ack(ctx); err != nil {
		sess.Close()
		return nil, err
	}
	return sess, nil
}

// statusOf returns the final status code of err from WaitAnswer, or 0.
func statusOf(err error) int {
	var e *sipgo.ErrDialogResponse
	if errors.As(err, &e) {
		return e.Res.StatusCode
	}
	return 0
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMain(m *testing.M) {
	sip.SetDefaultLogger(testLogger())
	os.Exit(m.Run())
}

func sipHeader(name, value string) sip.Header { return sip.NewHeader(name, value) }

// hangUpThrough ends the last call this phone answered with a BYE it
// sends to proxy, whatever the route set names first (a softphone whose
// outbound proxy is the desktop agent).
func (p *phone) hangUpThrough(ctx context.Context, proxy netip.AddrPort) (*sip.Response, error) {
	p.mu.Lock()
	d := p.lastDialog
	p.mu.Unlock()
	inv, res := d.InviteRequest, d.InviteResponse
	bye := sip.NewRequest(sip.BYE, inv.Contact().Address)
	for _, rr := range inv.GetHeaders("Record-Route") {
		bye.AppendHeader(sip.NewHeader("Route", rr.Value()))
	}
	from := res.To().AsFrom()
	bye.AppendHeader(&from)
	to := inv.From().AsTo()
	bye.AppendHeader(&to)
	bye.AppendHeader(sip.HeaderClone(inv.CallID()))
	bye.AppendHeader(&sip.CSeqHeader{SeqNo: inv.CSeq().SeqNo + 100, MethodName: sip.BYE})
	bye.SetDestination(proxy.String())
	return p.cli.Do(ctx, bye)
}
