package superpeer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/superpeer/superpeer/election"
	"github.com/superpeer/superpeer/netlab"
	"github.com/superpeer/superpeer/superpeer/control"
)

// The lab tests run the real `superpeer` binary: one process per peer,
// each inside a host of a netlab site, each with its own configuration
// file and state directory, and talk to them as an operator and as phones
// would (the control socket, the CLI, SIP over UDP).

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// superpeerBinary builds cmd/superpeer once per test binary, the first
// time a lab test needs it.
func superpeerBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "superpeer-lab-bin-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "superpeer")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", "build", "-o", binPath, "github.com/superpeer/superpeer/cmd/superpeer").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("building superpeer: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

const labDomain = "home.example"

// labNode is one peer of the site: a superpeer process on a lab host.
type labNode struct {
	name  string
	host  *netlab.Host
	dir   string // state directory, kept across restarts
	conf  string
	role  string // "auto" or "peer" (the desktop agent, by `run --role peer`)
	class string
	id    string // node ID, known once it answered

	mu    sync.Mutex // guards following
	proc  *netlab.Proc
	runs  []*netlab.Proc // every run, for the logs of a failed test
	began time.Time
}

// labSite is the acceptance site: the router (the NAT host itself, with
// miniupnpd and a public WAN address), a board, a desktop, a desktop
// agent and a laptop, all joined with one join token made beforehand.
type labSite struct {
	t      testing.TB
	lab    *netlab.Lab
	site   *netlab.Site
	bin    string
	token  string
	nodes  []*labNode
	byName map[string]*labNode
}

func newLabSite(t testing.TB) *labSite {
	t.Helper()
	lab := netlab.Start(t, netlab.Topology{Sites: []netlab.SiteConfig{{
		Name: "home", Mapping: netlab.PortPreserving, UPnP: true, LANHosts: 4,
	}}})
	bin := superpeerBinary(t)
	secret, err := election.NewSiteSecret()
	if err != nil {
		t.Fatal(err)
	}
	site := lab.Sites[0]
	s := &labSite{t: t, lab: lab, site: site, bin: bin, token: secret.Token(), byName: map[string]*labNode{}}
	for _, n := range []*labNode{
		{name: "router", host: site.NAT, role: "auto", class: "router"},
		{name: "board", host: site.LAN[0], role: "auto", class: "board"},
		{name: "desktop", host: site.LAN[1], role: "auto", class: "desktop"},
		{name: "agent", host: site.LAN[2], role: "peer", class: "desktop"},
		{name: "laptop", host: site.LAN[3], role: "auto", class: "laptop"},
	} {
		// Short paths: the control socket's path must fit a sockaddr_un.
		dir, err := os.MkdirTemp("", "sp-"+n.name+"-")
		if err != nil {
			t.Fatal(err)
		}
		n.dir = dir
		n.conf = filepath.Join(dir, "superpeer.conf")
		if err := os.WriteFile(n.conf, []byte(s.config(n)), 0o600); err != nil {
			t.Fatal(err)
		}
		s.nodes = append(s.nodes, n)
		s.byName[n.name] = n
	}
	// Registered after netlab.Start's, so it runs first: the daemons go
	// before their namespaces do.
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, n := range s.nodes {
			wg.Add(1)
			go func() { defer wg.Done(); n.kill() }()
		}
		wg.Wait()
		if t.Failed() {
			// The whole logs go to files; the test's output gets the end
			// of each.
			logs, _ := os.MkdirTemp("", "superpeer-lab-logs-")
			for _, n := range s.nodes {
				n.mu.Lock()
				for i, p := range n.runs {
					path := filepath.Join(logs, fmt.Sprintf("%s-run%d.log", n.name, i+1))
					os.WriteFile(path, []byte(p.Output()), 0o644)
					t.Logf("---- %s (run %d), whole log in %s ----\n%s", n.name, i+1, path, tail(p.Output(), 40))
				}
				n.mu.Unlock()
			}
		}
		for _, n := range s.nodes {
			os.RemoveAll(n.dir)
		}
	})
	return s
}

// config is a node's configuration file: the defaults but for the site's
// domain, the device class, the lab's STUN server and the join token.
// The flood limit is raised: the tests send hundreds of requests from one
// address (a hundred phones on one host).
func (s *labSite) config(n *labNode) string {
	level := "info"
	if os.Getenv("SUPERPEER_LAB_DEBUG") != "" {
		level = "debug"
	}
	return fmt.Sprintf(`[daemon]
log_level = %s
[site]
domain = %s
device_class = %s
[nat]
stun_servers = %s
[election]
join_token = %s
[sip]
flood_requests = 100000
`, level, labDomain, n.class, s.lab.STUN, s.token)
}

// start starts the nodes' processes at the same moment.
func (s *labSite) start(nodes ...*labNode) {
	s.t.Helper()
	for _, n := range nodes {
		args := []string{"run", "--state-dir", n.dir, "--config", n.conf}
		if n.role == "peer" {
			args = append(args, "--role", "peer")
		}
		p, err := n.host.Start(s.bin, args...)
		if err != nil {
			s.t.Fatal(err)
		}
		n.mu.Lock()
		n.proc, n.began = p, time.Now()
		n.runs = append(n.runs, p)
		n.mu.Unlock()
	}
}

func (s *labSite) all() []*labNode { return s.nodes }

// full are the nodes that may become superpeers.
func (s *labSite) full() []*labNode {
	var out []*labNode
	for _, n := range s.nodes {
		if n.role != "peer" {
			out = append(out, n)
		}
	}
	return out
}

// running are the nodes whose process runs.
func (s *labSite) running() []*labNode {
	var out []*labNode
	for _, n := range s.nodes {
		if n.alive() {
			out = append(out, n)
		}
	}
	return out
}

func (s *labSite) byID(id string) *labNode {
	for _, n := range s.nodes {
		if n.id == id {
			return n
		}
	}
	return nil
}

// learnIDs records every node's ID once its control socket answers.
func (s *labSite) learnIDs(timeout time.Duration) {
	s.t.Helper()
	netlab.Eventually(s.t, timeout, func() error {
		for _, n := range s.nodes {
			if n.id != "" {
				continue
			}
			st, err := n.status()
			if err != nil {
				return fmt.Errorf("%s: %w", n.name, err)
			}
			n.id = st.Node
		}
		return nil
	})
}

func (n *labNode) alive() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc != nil && !n.proc.Exited()
}

// kill ends the process at once (SIGKILL), as a crash or a power cut.
func (n *labNode) kill() {
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if p != nil {
		p.Kill()
	}
}

// stop ends the process as the init system does (SIGTERM) and reports
// how it exited.
func (n *labNode) stop(timeout time.Duration) error {
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if p == nil {
		return nil
	}
	p.Signal(syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			p.Kill()
			return fmt.Errorf("%s still running %v after SIGTERM", n.name, timeout)
		}
		return fmt.Errorf("%s exited with %v", n.name, err)
	}
	return nil
}

func (n *labNode) client() *control.Client {
	return control.NewClient(filepath.Join(n.dir, "control.sock"))
}

func (n *labNode) get(path string, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return n.client().Get(ctx, path, out)
}

func (n *labNode) status() (Status, error) {
	var st Status
	err := n.get("/v1/status", &st)
	return st, err
}

func (n *labNode) peers() (election.Status, error) {
	var st election.Status
	err := n.get("/v1/peers", &st)
	return st, err
}

// sipAddr is where the node serves SIP on the LAN.
func (n *labNode) sipAddr() netip.AddrPort { return netip.AddrPortFrom(n.host.Addr, 5060) }

// formed: every running node follows one leader, which has every node of
// the site as a member; every node sees the same committed set of k
// superpeers, all of them running full nodes, with each of with among them.
func (s *labSite) formed(k int, with ...*labNode) error {
	leader := ""
	var set []string
	for _, n := range s.running() {
		ps, err := n.peers()
		if err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
		if ps.Leader == "" || (leader != "" && ps.Leader != leader) {
			return fmt.Errorf("%s follows %q, another node follows %q", n.name, ps.Leader, leader)
		}
		leader = ps.Leader
		if set != nil && !slices.Equal(set, ps.Superpeers.IDs) {
			return fmt.Errorf("%s sees superpeers %v, another node %v", n.name, s.names(ps.Superpeers.IDs), s.names(set))
		}
		set = ps.Superpeers.IDs
	}
	if len(set) != k {
		return fmt.Errorf("superpeers %v, want %d", s.names(set), k)
	}
	for _, id := range set {
		if n := s.byID(id); n == nil || !n.alive() || n.role == "peer" {
			return fmt.Errorf("superpeer %s is not a running full node", s.names([]string{id}))
		}
	}
	for _, n := range with {
		if !slices.Contains(set, n.id) {
			return fmt.Errorf("superpeers %v, without %s", s.names(set), n.name)
		}
	}
	ln := s.byID(leader)
	if ln == nil {
		return fmt.Errorf("leader %q is not a node of the site", leader)
	}
	ps, err := ln.peers()
	if err != nil {
		return err
	}
	if len(ps.Members) != len(s.nodes) {
		return fmt.Errorf("the leader %s has %d members, want %d", ln.name, len(ps.Members), len(s.nodes))
	}
	return nil
}

// settled: formed, and the committed set has not changed for a second.
func (s *labSite) settled(k int, with ...*labNode) error {
	ln := s.running()[0]
	before, err := ln.peers()
	if err != nil {
		return err
	}
	if err := s.formed(k, with...); err != nil {
		return err
	}
	time.Sleep(time.Second) // the span being checked: a second without a new set
	after, err := ln.peers()
	if err != nil {
		return err
	}
	if after.Superpeers.Epoch != before.Superpeers.Epoch {
		return fmt.Errorf("the set changed from epoch %d to %d", before.Superpeers.Epoch, after.Superpeers.Epoch)
	}
	return nil
}

// superpeers is the committed set as n sees it, as nodes.
func (s *labSite) superpeers(n *labNode) ([]*labNode, error) {
	st, err := n.status()
	if err != nil {
		return nil, err
	}
	var out []*labNode
	for _, r := range st.Superpeers {
		if sp := s.byID(r.Node); sp != nil {
			out = append(out, sp)
		}
	}
	return out, nil
}

func (s *labSite) names(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		if n := s.byID(id); n != nil {
			out[i] = n.name
		} else {
			out[i] = id[:min(8, len(id))]
		}
	}
	return out
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// labPhone is a softphone of one UDP socket on a lab host: it registers,
// calls and sends OPTIONS as a UAC (RFC 3261 retransmissions), and
// answers every request it receives with 200 OK (an INVITE with its
// Contact), as a phone that picks up at once.
type labPhone struct {
	user string
	conn *net.UDPConn
	addr netip.AddrPort // its Via and Contact address
	tag  string

	regCallID string
	cseq      atomic.Uint32

	mu      sync.Mutex // guards following
	pending map[string]chan *sip.Response

	answered atomic.Int64 // requests answered (ACK aside)
	invites  atomic.Int64
	acks     atomic.Int64
	byes     atomic.Int64
	done     chan struct{}
}

// newLabPhone opens a phone's socket on h at bind (port 0 picks one).
func newLabPhone(t testing.TB, h *netlab.Host, bind netip.AddrPort, user string) *labPhone {
	t.Helper()
	c, err := h.UDP(bind)
	if err != nil {
		t.Fatal(err)
	}
	p := &labPhone{user: user, conn: c, addr: c.LocalAddr().(*net.UDPAddr).AddrPort(), tag: randHex(4),
		regCallID: randHex(8) + "@" + h.Name, pending: map[string]chan *sip.Response{}, done: make(chan struct{})}
	go p.read()
	t.Cleanup(p.close)
	return p
}

func (p *labPhone) close() {
	p.conn.Close()
	<-p.done
}

func (p *labPhone) aor() string { return "sip:" + p.user + "@" + labDomain }

func (p *labPhone) read() {
	defer close(p.done)
	buf := make([]byte, 65535)
	for {
		n, src, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if len(strings.TrimSpace(string(buf[:n]))) == 0 || buf[0] < 'A' {
			continue // keepalives: CRLF or STUN
		}
		msg, err := sip.ParseMessage(append([]byte(nil), buf[:n]...))
		if err != nil {
			continue
		}
		switch m := msg.(type) {
		case *sip.Request:
			p.answer(m, src)
		case *sip.Response:
			via := m.Via()
			if via == nil {
				continue
			}
			branch, _ := via.Params.Get("branch")
			p.mu.Lock()
			ch := p.pending[branch]
			p.mu.Unlock()
			if ch != nil {
				select {
				case ch <- m:
				default:
				}
			}
		}
	}
}

func (p *labPhone) answer(req *sip.Request, src netip.AddrPort) {
	switch req.Method {
	case sip.ACK:
		p.acks.Add(1)
		return
	case sip.INVITE:
		p.invites.Add(1)
	case sip.BYE:
		p.byes.Add(1)
	}
	req.SetSource(src.String())
	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	if to := res.To(); to != nil {
		if _, ok := to.Params.Get("tag"); !ok {
			to.Params.Add("tag", p.tag)
		}
	}
	if req.Method == sip.INVITE {
		res.AppendHeader(sip.NewHeader("Contact", "<sip:"+p.user+"@"+p.addr.String()+">"))
	}
	// Symmetric response routing (RFC 3581): back where it came from.
	if _, err := p.conn.WriteToUDPAddrPort([]byte(res.String()), src); err == nil {
		p.answered.Add(1)
	}
}

// request writes a request from this phone.
func (p *labPhone) request(method, ruri, to, callID string, cseq uint32, extra ...string) (msg, branch string) {
	branch = "z9hG4bK" + randHex(8)
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s SIP/2.0\r\n", method, ruri)
	fmt.Fprintf(&b, "Via: SIP/2.0/UDP %s;branch=%s;rport\r\n", p.addr, branch)
	b.WriteString("Max-Forwards: 70\r\n")
	fmt.Fprintf(&b, "From: <%s>;tag=%s\r\n", p.aor(), p.tag)
	fmt.Fprintf(&b, "To: %s\r\n", to)
	fmt.Fprintf(&b, "Call-ID: %s\r\n", callID)
	fmt.Fprintf(&b, "CSeq: %d %s\r\n", cseq, method)
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("Content-Length: 0\r\n\r\n")
	return b.String(), branch
}

// transact sends a request to dst and waits for its final response,
// retransmitting as RFC 3261 section 17.1 does (from 250 ms, doubling,
// until a provisional response or the context's end).
func (p *labPhone) transact(ctx context.Context, dst netip.AddrPort, msg, branch string) (*sip.Response, error) {
	ch := make(chan *sip.Response, 8)
	p.mu.Lock()
	p.pending[branch] = ch
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.pending, branch)
		p.mu.Unlock()
	}()
	send := func() error {
		_, err := p.conn.WriteToUDPAddrPort([]byte(msg), dst)
		return err
	}
	if err := send(); err != nil {
		return nil, err
	}
	rto := 250 * time.Millisecond
	t := time.NewTimer(rto)
	defer t.Stop()
	provisional := false
	for {
		select {
		case res := <-ch:
			if res.StatusCode >= 200 {
				return res, nil
			}
			provisional = true
		case <-t.C:
			if !provisional {
				send()
			}
			rto = min(2*rto, 2*time.Second)
			t.Reset(rto)
		case <-ctx.Done():
			method, _, _ := strings.Cut(msg, " ")
			return nil, fmt.Errorf("%s to %v from %s: no final response: %w", method, dst, p.user, ctx.Err())
		}
	}
}

// register registers the phone's Contact for an hour through registrar.
func (p *labPhone) register(ctx context.Context, registrar netip.AddrPort) error {
	msg, branch := p.request("REGISTER", "sip:"+labDomain, "<"+p.aor()+">", p.regCallID, p.cseq.Add(1),
		"Contact: <sip:"+p.user+"@"+p.addr.String()+">", "Expires: 3600")
	res, err := p.transact(ctx, registrar, msg, branch)
	if err != nil {
		return err
	}
	if res.StatusCode != 200 {
		return &statusError{code: res.StatusCode, what: fmt.Sprintf("REGISTER %s at %v: %d %s", p.aor(), registrar, res.StatusCode, res.Reason)}
	}
	return nil
}

// statusError is a final response other than 2xx.
type statusError struct {
	code int
	what string
}

func (e *statusError) Error() string { return e.what }

// options sends OPTIONS for aor through proxy and returns the final
// response's status: 200 means the phone registered for aor answered.
func (p *labPhone) options(ctx context.Context, proxy netip.AddrPort, aor string) (int, error) {
	msg, branch := p.request("OPTIONS", aor, "<"+aor+">", randHex(8)+"@"+p.addr.Addr().String(), 1)
	res, err := p.transact(ctx, proxy, msg, branch)
	if err != nil {
		return 0, err
	}
	return res.StatusCode, nil
}

// call calls aor through proxy: INVITE, ACK along the dialog's route set,
// BYE; nil when the callee answered the INVITE and the BYE.
func (p *labPhone) call(ctx context.Context, proxy netip.AddrPort, aor string) error {
	callID := randHex(8) + "@" + p.addr.Addr().String()
	msg, branch := p.request("INVITE", aor, "<"+aor+">", callID, 1, "Contact: <sip:"+p.user+"@"+p.addr.String()+">")
	res, err := p.transact(ctx, proxy, msg, branch)
	if err != nil {
		return err
	}
	if res.StatusCode != 200 {
		return fmt.Errorf("INVITE %s through %v: %d %s", aor, proxy, res.StatusCode, res.Reason)
	}
	contact := res.Contact()
	if contact == nil {
		return fmt.Errorf("INVITE %s: 200 without Contact", aor)
	}
	target := contact.Address.String()
	// The UAC's route set is the Record-Route of the 2xx, reversed
	// (RFC 3261 section 12.1.2); requests go to its first entry.
	var routes []string
	for _, h := range res.GetHeaders("Record-Route") {
		for v := range strings.SplitSeq(h.Value(), ",") {
			routes = append(routes, strings.TrimSpace(v))
		}
	}
	slices.Reverse(routes)
	hop := proxy
	var extra []string
	if len(routes) > 0 {
		var u sip.Uri
		if err := sip.ParseUri(strings.Trim(routes[0], "<>"), &u); err == nil {
			if a, err := netip.ParseAddr(u.Host); err == nil {
				port := u.Port
				if port == 0 {
					port = 5060
				}
				hop = netip.AddrPortFrom(a, uint16(port))
			}
		}
		extra = append(extra, "Route: "+strings.Join(routes, ", "))
	}
	to := res.To().Value()
	ack, _ := p.request("ACK", target, to, callID, 1, extra...)
	if _, err := p.conn.WriteToUDPAddrPort([]byte(ack), hop); err != nil {
		return err
	}
	bye, branch := p.request("BYE", target, to, callID, 2, extra...)
	res, err = p.transact(ctx, hop, bye, branch)
	if err != nil {
		return err
	}
	if res.StatusCode != 200 {
		return fmt.Errorf("BYE %s through %v: %d %s", aor, hop, res.StatusCode, res.Reason)
	}
	return nil
}

// reachAll sends OPTIONS for every phone's AOR through proxy, all at
// once, and returns nil when every phone answered.
func reachAll(ctx context.Context, caller *labPhone, proxy netip.AddrPort, phones []*labPhone) error {
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed []string
	)
	for _, ph := range phones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, err := caller.options(ctx, proxy, ph.aor())
			if err != nil || code != 200 {
				mu.Lock()
				if err != nil {
					failed = append(failed, fmt.Sprintf("%s: %v", ph.user, err))
				} else {
					failed = append(failed, fmt.Sprintf("%s: %d", ph.user, code))
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(failed) > 0 {
		slices.Sort(failed)
		return fmt.Errorf("%d of %d phones not reached through %v, e.g. %s", len(failed), len(phones), proxy, failed[0])
	}
	return nil
}

// registerAll registers every phone through registrar, a few at a time.
// A phone answered 5xx (the site's state store between leaders) tries
// again after a moment, as phones do.
func registerAll(ctx context.Context, registrar netip.AddrPort, phones []*labPhone) error {
	var (
		wg   sync.WaitGroup
		errs = make(chan error, len(phones))
		sem  = make(chan struct{}, 10)
	)
	for _, ph := range phones {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			for {
				err := ph.register(ctx, registrar)
				var se *statusError
				if !errors.As(err, &se) || se.code < 500 || ctx.Err() != nil {
					if err != nil {
						errs <- err
					}
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
