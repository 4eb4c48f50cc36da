package superpeer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/superpeer/superpeer/netlab"
	"github.com/superpeer/superpeer/superpeer/control"
	"github.com/superpeer/superpeer/superpeer/turn"
)

// The calls lab: real `superpeer` processes, one per site and one public
// bootstrap node, each in a netlab host with its own configuration file,
// and real third-party clients (SIPp, coturn's turnutils) as the phones
// and TURN users.
//
//	WAN[0]  turnutils_peer (and the lab's own STUN server for miniupnpd)
//	WAN[1]  bootstrap node: public, RFC 5780 STUN on both addresses, TURN
//	site A  fully random NAT: daemon, SIPp UAC, turnutils_uclient (then a
//	        SIPp UAS)
//	site B  port-preserving NAT (with miniupnpd, for turnutils_peer's
//	        forward; the daemon asks for no mappings): daemon, SIPp UAS,
//	        turnutils_peer
//	site C  fully random NAT: daemon, SIPp UAC

// callsDaemon is one `superpeer run` process in a lab host.
type callsDaemon struct {
	name string
	host *netlab.Host
	dir  string // state directory; holds the configuration too
	proc *netlab.Proc
}

func (d *callsDaemon) client() *control.Client {
	return control.NewClient(filepath.Join(d.dir, "control.sock"))
}

// status is the daemon's `superpeer status --json`.
func (d *callsDaemon) status(ctx context.Context) (Status, error) {
	var st Status
	err := d.client().Get(ctx, "/v1/status", &st)
	return st, err
}

func (d *callsDaemon) nat(ctx context.Context) (NATStatus, error) {
	var st NATStatus
	err := d.client().Get(ctx, "/v1/nat", &st)
	return st, err
}

func (d *callsDaemon) turnStatus(ctx context.Context) (turn.Status, error) {
	var st turn.Status
	err := d.client().Get(ctx, "/v1/turn", &st)
	return st, err
}

// logs is the tail of what the daemon printed, for failure messages.
func (d *callsDaemon) logs() string {
	if d.proc == nil {
		return ""
	}
	out := d.proc.Output()
	if len(out) > 6000 {
		out = out[len(out)-6000:]
	}
	return fmt.Sprintf("--- %s daemon log (tail) ---\n%s", d.name, out)
}

type callsLab struct {
	t             *testing.T
	lab           *netlab.Lab
	bin           string
	boot, a, b, c *callsDaemon
	bootstrap     string // host:port/nodekey
}

// startDaemon writes conf into a fresh state directory and starts
// the daemon on h. The directory is short: the control socket's path must
// fit a sockaddr_un.
func (l *callsLab) startDaemon(name string, h *netlab.Host, conf string) *callsDaemon {
	l.t.Helper()
	dir, err := os.MkdirTemp("", "spc-"+name+"-")
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "superpeer.conf")
	conf = "[daemon]\nstate_dir = " + dir + "\n" + conf
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		l.t.Fatal(err)
	}
	p, err := h.Start(l.bin, "run", "--config", path)
	if err != nil {
		l.t.Fatal(err)
	}
	d := &callsDaemon{name: name, host: h, dir: dir, proc: p}
	// Registered after netlab.Start's cleanup, so it runs first: the
	// daemon stops before its namespace goes.
	l.t.Cleanup(func() { p.Stop() })
	return d
}

// callsSiteConfig is a site daemon's configuration: the lab's WAN is
// documentation space, which relays refuse unless allowed; SIPp as a UAC
// is a whole office behind one address, which the flood limit would ban.
func callsSiteConfig(domain string, h *netlab.Host, bootstrap string) string {
	return fmt.Sprintf(`[site]
domain = %s
device_class = board
[nat]
port_mapping = false
[election]
dnssd = false
[overlay]
bootstrap = %s
[sip]
flood_requests = 100000
[turn]
allow_peers = 203.0.113.0/24
[metrics]
listen = %s:9100
`, domain, bootstrap, h.Addr)
}

// waitSuperpeer waits until d runs its superpeer services.
func (l *callsLab) waitSuperpeer(ctx context.Context, d *callsDaemon) Status {
	l.t.Helper()
	var st Status
	if err := netlab.Wait(ctx, 60*time.Second, func() error {
		if d.proc.Exited() {
			return fmt.Errorf("%s daemon exited", d.name)
		}
		var err error
		if st, err = d.status(ctx); err != nil {
			return err
		}
		if !strings.Contains(st.Role, "superpeer") {
			return fmt.Errorf("%s is %q, not a superpeer yet", d.name, st.Role)
		}
		for _, p := range st.Parts {
			if (p.Name == "sip" || p.Name == "turn" || p.Name == "overlay") && p.State != "running" {
				return fmt.Errorf("%s: %s is %s", d.name, p.Name, p.State)
			}
		}
		return nil
	}); err != nil {
		l.t.Fatalf("%v\n%s", err, d.logs())
	}
	return st
}

func startCallsLab(t *testing.T) *callsLab {
	if testing.Short() {
		t.Skip("lab test: skipped in -short mode")
	}
	lab := netlab.Start(t, netlab.Topology{WANHosts: 2, Sites: []netlab.SiteConfig{
		{Name: "sitea", Mapping: netlab.Random, LANHosts: 3},
		{Name: "siteb", Mapping: netlab.PortPreserving, UPnP: true, LANHosts: 3},
		{Name: "sitec", Mapping: netlab.Random, LANHosts: 2},
	}})
	l := &callsLab{t: t, lab: lab, bin: buildCallsBinary(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	w := lab.WAN[1]
	l.boot = l.startDaemon("boot", w, fmt.Sprintf(`[site]
domain = boot.example
public = true
device_class = board
[nat]
stun_listen = %s:3478
stun_alternate = %s:3479
[election]
dnssd = false
[turn]
listen = :3480
allow_peers = 203.0.113.0/24
`, w.Addrs[0], w.Addrs[1]))
	st := l.waitSuperpeer(ctx, l.boot)
	l.bootstrap = fmt.Sprintf("%s:4790/%s", w.Addrs[0], st.NodeKey)

	l.a = l.startDaemon("sitea", lab.Sites[0].LAN[0], callsSiteConfig("sitea.example", lab.Sites[0].LAN[0], l.bootstrap))
	l.b = l.startDaemon("siteb", lab.Sites[1].LAN[0], callsSiteConfig("siteb.example", lab.Sites[1].LAN[0], l.bootstrap))
	l.c = l.startDaemon("sitec", lab.Sites[2].LAN[0], callsSiteConfig("sitec.example", lab.Sites[2].LAN[0], l.bootstrap))
	for _, d := range []*callsDaemon{l.a, l.b, l.c} {
		l.waitSuperpeer(ctx, d)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, d := range []*callsDaemon{l.boot, l.a, l.b, l.c} {
				t.Log(d.logs())
			}
		}
	})
	return l
}

// buildCallsBinary builds cmd/superpeer into the test's directory.
func buildCallsBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "superpeer")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/superpeer/superpeer/cmd/superpeer").CombinedOutput()
	if err != nil {
		t.Fatalf("building superpeer: %v\n%s", err, out)
	}
	return bin
}

func callsNeedTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is not installed; CI must run this test", tool)
			}
			t.Skipf("%s is not installed (make test installs it as root)", tool)
		}
	}
}

// TestLabCallsAcrossSites is issue 6's acceptance and issue 7's TURN
// acceptance through the daemons. Site A is behind a fully random NAT,
// site B behind a port-preserving one, a public bootstrap node on the WAN;
// one superpeer daemon per site elects itself.
//
//   - The daemons find their NATs: A symmetric, B endpoint-independent.
//   - turnutils_uclient on a LAN host allocates on its site's superpeer
//     (credentials from the daemon's control API) and relays to
//     turnutils_peer on the WAN and at site B without loss, behind both
//     NAT kinds.
//   - SIPp as UAS registers sip:bob@siteb.example at B's superpeer; SIPp
//     as UAC at site A calls bob by AOR 100 times with G.711 media: every
//     call succeeds, every BYE reaches the UAS through B's proxy (the
//     Record-Route path), and the RTP reaches the UAS from B's superpeer
//     and comes back, echoed, to the UAC from A's superpeer: the media is
//     anchored in both, through a TURN allocation on the public node (A,
//     whose NAT is symmetric) and on B's own relay (B).
//   - Both sites behind symmetric NATs: SIPp as UAC at site C (fully
//     random NAT, like A) calls carol, a SIPp UAS at site A: both
//     superpeers relay the media on the public node's TURN, each on an
//     allocation of its own, and the RTP gets through both ways.
//   - An unregistered AOR gets 404 within 1 s; with B's daemon killed,
//     bob gets 408 or 480 within 5 s.
func TestLabCallsAcrossSites(t *testing.T) {
	callsNeedTools(t, "sipp", "turnutils_uclient", "turnutils_peer", "upnpc")
	l := startCallsLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	siteA, siteB := l.lab.Sites[0], l.lab.Sites[1]

	for _, c := range []struct {
		d    *callsDaemon
		want string
	}{{l.a, "symmetric"}, {l.b, "endpoint-independent"}, {l.c, "symmetric"}} {
		ns, err := c.d.nat(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ns.Reachability != c.want {
			t.Fatalf("%s daemon found its NAT %s (%s), want %s", c.d.name, ns.Reachability, ns.Error, c.want)
		}
	}

	t.Run("turn", func(t *testing.T) { labTURN(ctx, t, l) })
	if t.Failed() {
		return
	}

	// SIPp as bob at site B, echoing media.
	dir := t.TempDir()
	proxyA, proxyB := netip.AddrPortFrom(l.a.host.Addr, 5060), netip.AddrPortFrom(l.b.host.Addr, 5060)
	uasHost, uacHost := siteB.LAN[1], siteA.LAN[1]
	uasIP := uasHost.Addr.String()
	const mediaPort = 6000
	uas, err := uasHost.Start("sipp", "-sf", callsScenario(t, dir, "uas.xml", proxyB), "-i", uasIP, "-p", "5070",
		"-mi", uasIP, "-mp", strconv.Itoa(mediaPort), "-rtp_echo")
	if err != nil {
		t.Fatal(err)
	}
	defer uas.Stop()
	reg := uasHost.Command(ctx, "sipp", proxyB.String(), "-sf", callsScenario(t, dir, "register.xml", proxyB),
		"-s", "bob", "-key", "domain", "siteb.example", "-key", "uasport", "5070", "-i", uasIP, "-p", "5071", "-mp", "6100",
		"-m", "1", "-timeout", "20s", "-timeout_error")
	reg.Dir = dir
	if out, err := reg.CombinedOutput(); err != nil {
		t.Fatalf("SIPp REGISTER at site B failed: %v\n%s", err, callsTail(out))
	}

	// The phones count the RTP that reaches them from their superpeer.
	uasRTP := callsCountRTP(ctx, t, uasHost, l.b.host.Addr, mediaPort)
	uacRTP := callsCountRTP(ctx, t, uacHost, l.a.host.Addr, mediaPort)

	uac := func(calls, rate int, timeout time.Duration) ([]byte, error) {
		return callsUAC(ctx, t, uacHost, dir, proxyA, "bob@siteb.example", mediaPort, calls, rate, timeout)
	}
	// Bob's record reaches the overlay and site A's lookups within a few
	// seconds of the REGISTER: one call at a time until one succeeds.
	if err := netlab.Wait(ctx, 60*time.Second, func() error {
		if out, err := uac(1, 1, 15*time.Second); err != nil {
			return fmt.Errorf("first call to bob: %v\n%s", err, callsTail(out))
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\nUAS:\n%s", err, callsHead(uas.Output()))
	}
	out, err := uac(100, 5, 150*time.Second)
	if err != nil {
		t.Fatalf("SIPp UAC at site A: %v (not every call succeeded)\n%s\nUAS:\n%s", err, callsTail(out), callsHead(uas.Output()))
	}
	if m := regexp.MustCompile(`Successful call\s*\|\s*\d+\s*\|\s*(\d+)`).FindSubmatch(out); m == nil || string(m[1]) != "100" {
		t.Errorf("SIPp did not report 100 successful calls:\n%s", callsTail(out))
	}

	// Media went both ways through both superpeers' relays.
	t.Logf("RTP packets: %d to the UAS from site B's superpeer, %d back to the UAC from site A's", uasRTP(), uacRTP())
	if n := uasRTP(); n < 1000 {
		t.Errorf("the UAS got %d RTP packets from site B's superpeer, want at least 1000 (101 calls of G.711)", n)
	}
	if n := uacRTP(); n < 1000 {
		t.Errorf("the UAC got %d echoed RTP packets from site A's superpeer, want at least 1000", n)
	}
	ma, mb := callsMetrics(ctx, t, l.a), callsMetrics(ctx, t, l.b)
	for _, c := range []struct {
		site   string
		m      map[string]float64
		relay  string
		server *callsDaemon
	}{{"A", ma, relayRemoteTURN, l.boot}, {"B", mb, relayOwnTURN, l.b}} {
		if got := c.m[`superpeer_media_sockets_total{relay="`+c.relay+`"}`]; got < 101 {
			t.Errorf("site %s's superpeer made %v %s relays, want one per call (101)", c.site, got, c.relay)
		}
		if c.m[`superpeer_media_packets_total{to="callee"}`] < 1000 || c.m[`superpeer_media_packets_total{to="caller"}`] < 1000 {
			t.Errorf("site %s's superpeer relayed %v packets to the callee and %v to the caller, want at least 1000 each", c.site,
				c.m[`superpeer_media_packets_total{to="callee"}`], c.m[`superpeer_media_packets_total{to="caller"}`])
		}
		ts, err := c.server.turnStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ts.ToPeer.Packets < 1000 || ts.FromPeer.Packets < 1000 {
			t.Errorf("the TURN relay of %s carried %d packets to peers and %d from them, want at least 1000 each",
				c.server.name, ts.ToPeer.Packets, ts.FromPeer.Packets)
		}
	}
	netlab.Eventually(t, 15*time.Second, func() error {
		m := callsMetrics(ctx, t, l.a)
		if n := m["superpeer_media_calls"]; n != 0 {
			return fmt.Errorf("site A's superpeer still holds relays of %v calls after their BYE", n)
		}
		return nil
	})

	t.Run("both-symmetric", func(t *testing.T) { labBothSymmetric(ctx, t, l) })

	// An AOR nobody registered: 404 at once.
	if code, took := callsInvite(t, uacHost, proxyA, "nobody"); code != 404 || took > time.Second {
		t.Errorf("call to an unregistered AOR: %d after %v, want 404 within 1 s", code, took)
	}
	// Site B goes down as in a power cut; bob's record lingers in the
	// overlay until it expires.
	l.b.proc.Kill()
	if code, took := callsInvite(t, uacHost, proxyA, "bob"); (code != 408 && code != 480) || took > 5*time.Second {
		t.Errorf("call to bob with site B down: %d after %v, want 408 or 480 within 5 s", code, took)
	}
}

// labBothSymmetric: SIPp as UAC at site C calls carol, a SIPp UAS at site
// A, ten times with G.711 media. Both sites are behind fully random NATs,
// so both superpeers relay the media on the public node's TURN relay, each
// on an allocation of its own whose peer is the other's: every call
// succeeds and the RTP reaches the UAS from A's superpeer and comes back,
// echoed, to the UAC from C's.
func labBothSymmetric(ctx context.Context, t *testing.T, l *callsLab) {
	siteA, siteC := l.lab.Sites[0], l.lab.Sites[2]
	dir := t.TempDir()
	proxyA, proxyC := netip.AddrPortFrom(l.a.host.Addr, 5060), netip.AddrPortFrom(l.c.host.Addr, 5060)
	// Site A's third host ran turnutils_uclient, which has ended.
	uasHost, uacHost := siteA.LAN[2], siteC.LAN[1]
	uasIP := uasHost.Addr.String()
	const mediaPort = 6000
	uas, err := uasHost.Start("sipp", "-sf", callsScenario(t, dir, "uas.xml", proxyA), "-i", uasIP, "-p", "5070",
		"-mi", uasIP, "-mp", strconv.Itoa(mediaPort), "-rtp_echo")
	if err != nil {
		t.Fatal(err)
	}
	defer uas.Stop()
	reg := uasHost.Command(ctx, "sipp", proxyA.String(), "-sf", callsScenario(t, dir, "register.xml", proxyA),
		"-s", "carol", "-key", "domain", "sitea.example", "-key", "uasport", "5070", "-i", uasIP, "-p", "5071", "-mp", "6100",
		"-m", "1", "-timeout", "20s", "-timeout_error")
	reg.Dir = dir
	if out, err := reg.CombinedOutput(); err != nil {
		t.Fatalf("SIPp REGISTER at site A failed: %v\n%s", err, callsTail(out))
	}
	uasRTP := callsCountRTP(ctx, t, uasHost, l.a.host.Addr, mediaPort)
	uacRTP := callsCountRTP(ctx, t, uacHost, l.c.host.Addr, mediaPort)
	const relay = `superpeer_media_sockets_total{relay="` + relayRemoteTURN + `"}`
	aBefore := callsMetrics(ctx, t, l.a)[relay]
	bootBefore, err := l.boot.turnStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Carol's record reaches the overlay and site C's lookups within a
	// few seconds of the REGISTER.
	if err := netlab.Wait(ctx, 60*time.Second, func() error {
		if out, err := callsUAC(ctx, t, uacHost, dir, proxyC, "carol@sitea.example", mediaPort, 1, 1, 15*time.Second); err != nil {
			return fmt.Errorf("first call to carol: %v\n%s", err, callsTail(out))
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\nUAS:\n%s", err, callsHead(uas.Output()))
	}
	const calls = 10
	out, err := callsUAC(ctx, t, uacHost, dir, proxyC, "carol@sitea.example", mediaPort, calls, 5, 60*time.Second)
	if err != nil {
		t.Fatalf("SIPp UAC at site C: %v (not every call succeeded)\n%s\nUAS:\n%s", err, callsTail(out), callsHead(uas.Output()))
	}
	if m := regexp.MustCompile(`Successful call\s*\|\s*\d+\s*\|\s*(\d+)`).FindSubmatch(out); m == nil || string(m[1]) != strconv.Itoa(calls) {
		t.Errorf("SIPp did not report %d successful calls:\n%s", calls, callsTail(out))
	}

	t.Logf("RTP packets: %d to the UAS from site A's superpeer, %d back to the UAC from site C's", uasRTP(), uacRTP())
	// 11 calls of a second of G.711 each, counted as the first phase
	// counts them; a tenth of it shows the media crossed both ways.
	if n := uasRTP(); n < 100 {
		t.Errorf("the UAS got %d RTP packets from site A's superpeer, want at least 100", n)
	}
	if n := uacRTP(); n < 100 {
		t.Errorf("the UAC got %d echoed RTP packets from site C's superpeer, want at least 100", n)
	}
	if got := callsMetrics(ctx, t, l.c)[relay]; got < calls+1 {
		t.Errorf("site C's superpeer made %v relays on the public node, want one per call (%d)", got, calls+1)
	}
	if got := callsMetrics(ctx, t, l.a)[relay] - aBefore; got < calls+1 {
		t.Errorf("site A's superpeer made %v relays on the public node for carol's calls, want one per call (%d)", got, calls+1)
	}
	// On the public node, each packet crosses from one allocation to the
	// other: it counts once to a peer and once from one.
	bootAfter, err := l.boot.turnStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := bootAfter.ToPeer.Packets - bootBefore.ToPeer.Packets; d < 200 {
		t.Errorf("the public node's relay carried %d packets to peers during carol's calls, want at least 200", d)
	}
}

// callsUAC runs SIPp as a UAC on h calling aor (user@domain) through proxy
// with G.711 media from mediaPort: calls calls at rate a second, each a
// second long.
func callsUAC(ctx context.Context, t *testing.T, h *netlab.Host, dir string, proxy netip.AddrPort, aor string, mediaPort, calls, rate int, timeout time.Duration) ([]byte, error) {
	user, domain, _ := strings.Cut(aor, "@")
	ip := h.Addr.String()
	c := h.Command(ctx, "sipp", proxy.String(), "-sf", callsScenario(t, dir, "uac_rtp.xml", proxy),
		"-s", user, "-key", "domain", domain, "-i", ip, "-p", "5061",
		"-mi", ip, "-mp", strconv.Itoa(mediaPort),
		"-m", strconv.Itoa(calls), "-r", strconv.Itoa(rate), "-d", "1000",
		"-timeout", fmt.Sprintf("%ds", int(timeout.Seconds())), "-timeout_error")
	c.Dir = dir
	return c.CombinedOutput()
}

// labTURN: turnutils_uclient on a LAN host allocates on its site's
// superpeer daemon with credentials from the daemon's control API and
// relays to turnutils_peer on the WAN and behind site B's NAT (through a
// UPnP forward), without loss; from site A (fully random NAT) and from
// site B (port-preserving).
func labTURN(ctx context.Context, t *testing.T, l *callsLab) {
	const peerPort = 3480
	w, b := l.lab.WAN[0], l.lab.Sites[1]
	wanPeer := netip.AddrPortFrom(w.Addrs[1], peerPort)
	callsTURNPeer(ctx, t, w, wanPeer)
	peerHost := b.LAN[2]
	callsTURNPeer(ctx, t, peerHost, netip.AddrPortFrom(peerHost.Addr, peerPort))
	for _, port := range []int{peerPort, peerPort + 1} {
		if out, err := peerHost.Run(ctx, "upnpc", "-i", "-e", "peer", "-a", peerHost.Addr.String(),
			strconv.Itoa(port), strconv.Itoa(port), "UDP"); err != nil {
			t.Fatalf("forwarding site B's peer: %v\n%s", err, out)
		}
	}
	siteBPeer := netip.AddrPortFrom(b.External, peerPort)
	for _, run := range []struct {
		name   string
		d      *callsDaemon
		client *netlab.Host
		peer   netip.AddrPort
	}{
		{"random-nat/wan-peer", l.a, l.lab.Sites[0].LAN[2], wanPeer},
		{"random-nat/site-b-peer", l.a, l.lab.Sites[0].LAN[2], siteBPeer},
		{"port-preserving-nat/wan-peer", l.b, l.lab.Sites[1].LAN[1], wanPeer},
	} {
		var creds turn.Credentials
		if err := run.d.client().Post(ctx, "/v1/turn/credentials?user=uclient", &creds); err != nil {
			t.Fatalf("%s: credentials from the daemon: %v", run.name, err)
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		out, err := run.client.Run(rctx, "turnutils_uclient", "-u", creds.Username, "-w", creds.Password,
			"-e", run.peer.Addr().String(), "-r", strconv.Itoa(int(run.peer.Port())),
			"-n", "50", "-l", "172", "-m", "2", "-p", "3478", run.d.host.Addr.String())
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", run.name, err)
		}
		lost := regexp.MustCompile(`Total lost packets (\d+) `).FindStringSubmatch(out)
		msgs := regexp.MustCompile(`start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)`).FindStringSubmatch(out)
		if lost == nil || msgs == nil {
			t.Fatalf("%s: no summary in uclient's output:\n%s", run.name, out)
		}
		if lost[1] != "0" || msgs[1] != "100" || msgs[2] != "100" {
			t.Errorf("%s: uclient lost %s packets, sent %s, received %s; want 100 and 100 without loss\n%s", run.name, lost[1], msgs[1], msgs[2], out)
		}
	}
}

func callsTURNPeer(ctx context.Context, t *testing.T, h *netlab.Host, at netip.AddrPort) {
	t.Helper()
	if _, err := h.Start("turnutils_peer", "-L", at.Addr().String(), "-p", strconv.Itoa(int(at.Port()))); err != nil {
		t.Fatal(err)
	}
	if err := netlab.Wait(ctx, 10*time.Second, func() error {
		out, err := h.Run(ctx, "ss", "-Hlnu", fmt.Sprintf("sport = :%d", at.Port()))
		if err == nil && out == "" {
			return fmt.Errorf("turnutils_peer not listening on %v yet", at)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// countRTP counts, in h's own firewall, the UDP packets from src to h's
// media port, and returns a function that reads the count.
func callsCountRTP(ctx context.Context, t *testing.T, h *netlab.Host, src netip.Addr, port int) func() int {
	t.Helper()
	for _, args := range [][]string{
		{"add", "table", "inet", "rtpcount"},
		{"add", "chain", "inet", "rtpcount", "in", "{ type filter hook input priority 0; }"},
		{"add", "rule", "inet", "rtpcount", "in", "ip", "saddr", src.String(), "udp", "dport", strconv.Itoa(port), "counter"},
	} {
		if out, err := h.Run(ctx, "nft", args...); err != nil {
			t.Fatalf("counting RTP on %s: %v\n%s", h.Name, err, out)
		}
	}
	return func() int {
		out, err := h.Run(ctx, "nft", "list", "chain", "inet", "rtpcount", "in")
		if err != nil {
			t.Fatalf("reading the RTP count on %s: %v", h.Name, err)
		}
		m := regexp.MustCompile(`counter packets (\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no counter in:\n%s", out)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
}

// scrapeMetrics reads the daemon's /metrics from inside its host.
func callsMetrics(ctx context.Context, t *testing.T, d *callsDaemon) map[string]float64 {
	t.Helper()
	n, err := d.host.Net()
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, network, addr string) (net.Conn, error) { return n.Dial(network, addr) },
	}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.host.Addr.String()+":9100/metrics", nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("metrics of %s: %v", d.name, err)
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] += v
		}
	}
	return m
}

// rawInvite sends one INVITE for user@siteb.example from h to the proxy
// and returns the final response's code (0 if none came within 10 s) and
// how long it took.
func callsInvite(t *testing.T, h *netlab.Host, proxy netip.AddrPort, user string) (int, time.Duration) {
	t.Helper()
	c, err := h.UDP(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	id := user + strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	inv := strings.Join([]string{
		"INVITE sip:" + user + "@siteb.example SIP/2.0",
		"Via: SIP/2.0/UDP " + h.Addr.String() + ";branch=z9hG4bK-" + id + ";rport",
		"Max-Forwards: 70",
		"To: <sip:" + user + "@siteb.example>",
		"From: <sip:tester@sitea.example>;tag=" + id,
		"Call-ID: " + id,
		"CSeq: 1 INVITE",
		"Contact: <sip:tester@" + h.Addr.String() + ">",
		"Content-Length: 0",
		"", ""}, "\r\n")
	start := time.Now()
	if _, err := c.WriteToUDPAddrPort([]byte(inv), proxy); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	c.SetReadDeadline(start.Add(10 * time.Second))
	status := regexp.MustCompile(`^SIP/2\.0 (\d{3}) `)
	for {
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return 0, time.Since(start)
			}
			t.Fatal(err)
		}
		if m := status.FindSubmatch(buf[:n]); m != nil {
			if code, _ := strconv.Atoi(string(m[1])); code >= 200 {
				return code, time.Since(start)
			}
		}
	}
}

// callsScenario writes one of the SIP package's SIPp scenarios into dir
// with the proxy's address filled in.
func callsScenario(t *testing.T, dir, name string, proxy netip.AddrPort) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("sip", "testdata", "sipp", name))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(b), "@PROXY@", regexp.QuoteMeta(proxy.String()))), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func callsTail(out []byte) string {
	if len(out) > 3000 {
		out = out[len(out)-3000:]
	}
	return string(out)
}

func callsHead(out string) string {
	if len(out) > 3000 {
		out = out[:3000]
	}
	return out
}
