// Command demo shows a call between two home sites through Superpeer, for
// a newcomer: `make demo` (as root) builds the lab of two sites behind
// kernel NATs (site A fully random, site B port-preserving) and a public
// bootstrap node on the WAN, starts a `superpeer` daemon on each, registers
// a phone (SIPp) at each site, has alice at site A call bob at site B by
// his address of record, and prints what happened: the superpeers the
// sites elected, the NATs they found, the path the INVITE took, the relays
// the media went through and the pinholes each superpeer holds. Everything
// is torn down at the end, and on Ctrl-C.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/superpeer/superpeer/netlab"
	"github.com/superpeer/superpeer/superpeer/sip"
)

func main() {
	bin := flag.String("bin", "bin/superpeer", "the superpeer binary")
	scenarios := flag.String("scenarios", "superpeer/sip/testdata/sipp", "directory of the SIPp scenarios")
	hold := flag.Duration("hold", 4*time.Second, "how long the call lasts")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *scenarios, *hold); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "\ninterrupted: the lab is torn down")
		} else {
			fmt.Fprintln(os.Stderr, "demo:", err)
		}
		stop()
		os.Exit(1)
	}
}

// daemon is one `superpeer run` in a lab host.
type daemon struct {
	name string
	host *netlab.Host
	dir  string
	bin  string
	proc *netlab.Proc
}

func (d *daemon) socket() string { return filepath.Join(d.dir, "control.sock") }

// cli runs a superpeer subcommand against the daemon's control socket.
func (d *daemon) cli(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, d.bin, append(args, "--socket", d.socket())...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("superpeer %s on %s: %v: %s", args[0], d.name, err, out)
	}
	return string(out), nil
}

// get runs `superpeer WHAT --json` and decodes its answer into out.
func (d *daemon) get(ctx context.Context, what string, out any) error {
	s, err := d.cli(ctx, what, "--json")
	if err != nil {
		return err
	}
	return json.Unmarshal([]byte(s), out)
}

type status struct {
	Node       string `json:"node"`
	NodeKey    string `json:"node_key"`
	Role       string `json:"role"`
	Domain     string `json:"domain"`
	Superpeers []struct {
		Node string `json:"node"`
		SIP  string `json:"sip"`
		TURN string `json:"turn"`
	} `json:"superpeers"`
	NAT   string `json:"nat"`
	Links int    `json:"overlay_links"`
	Parts []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	} `json:"parts"`
}

func (s status) running(parts ...string) bool {
	for _, want := range parts {
		ok := false
		for _, p := range s.Parts {
			if p.Name == want && p.State == "running" {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

type natStatus struct {
	STUNServer   string `json:"stun_server"`
	Reachability string `json:"reachability"`
	Behaviour    *struct {
		External       string `json:"external"`
		Mapping        string `json:"mapping"`
		Filtering      string `json:"filtering"`
		PortPreserving bool   `json:"port_preserving"`
	} `json:"behaviour"`
	Error   string   `json:"error"`
	Serving []string `json:"serving_stun"`
}

func run(ctx context.Context, bin, scenarios string, hold time.Duration) error {
	if reason := netlab.Unavailable(netlab.Topology{}); reason != "" {
		return errors.New(reason)
	}
	for _, tool := range []string{"sipp", bin} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is needed: %w", tool, err)
		}
	}
	bin, _ = filepath.Abs(bin)
	scenarios, _ = filepath.Abs(scenarios)
	work, err := os.MkdirTemp("", "spdemo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	step("Building the lab", "Two home sites behind Linux kernel NATs and a public host on the WAN (203.0.113.0/24):\n"+
		"  site A: fully random NAT (symmetric: a new external port for every destination)\n"+
		"  site B: port-preserving NAT (endpoint-independent mapping, filtering by address and port)")
	lctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	lab, err := netlab.New(lctx, netlab.Topology{WANHosts: 1, Sites: []netlab.SiteConfig{
		{Name: "sitea", Mapping: netlab.Random, LANHosts: 2},
		{Name: "siteb", Mapping: netlab.PortPreserving, LANHosts: 2},
	}})
	cancel()
	if err != nil {
		return fmt.Errorf("building the lab: %w", err)
	}
	defer func() {
		fmt.Println("\nTearing the lab down.")
		lab.Close()
	}()
	siteA, siteB := lab.Sites[0], lab.Sites[1]
	fmt.Printf("  site A: NAT %s outside, LAN %s; site B: NAT %s outside, LAN %s\n",
		siteA.External, siteA.LANPrefix, siteB.External, siteB.LANPrefix)

	step("Starting the superpeer daemons", "One `superpeer run` per site on a LAN host, and one on the WAN host as the public\n"+
		"bootstrap node (it also serves RFC 5780 STUN on its two addresses, and a TURN relay).")
	w := lab.WAN[0]
	start := func(name string, h *netlab.Host, conf string) (*daemon, error) {
		dir, err := os.MkdirTemp("", "spd-"+name+"-")
		if err != nil {
			return nil, err
		}
		d := &daemon{name: name, host: h, dir: dir, bin: bin}
		path := filepath.Join(dir, "superpeer.conf")
		if err := os.WriteFile(path, []byte("[daemon]\nstate_dir = "+dir+"\n"+conf), 0o600); err != nil {
			return nil, err
		}
		if d.proc, err = h.Start(bin, "run", "--config", path); err != nil {
			return nil, err
		}
		return d, nil
	}
	var daemons []*daemon
	defer func() {
		for _, d := range daemons {
			d.proc.Stop()
			os.RemoveAll(d.dir)
		}
	}()
	boot, err := start("bootstrap", w, fmt.Sprintf(`[site]
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
	if err != nil {
		return err
	}
	daemons = append(daemons, boot)
	bst, err := waitSuperpeer(ctx, boot)
	if err != nil {
		return err
	}
	bootstrap := fmt.Sprintf("%s:4790/%s", w.Addrs[0], bst.NodeKey)
	fmt.Printf("  bootstrap node %s at %s\n", short(bst.Node), bootstrap)
	siteConf := func(domain string) string {
		// The lab's WAN is documentation space, which relays refuse
		// unless allowed.
		return fmt.Sprintf("[site]\ndomain = %s\ndevice_class = board\n[nat]\nport_mapping = false\n[election]\ndnssd = false\n"+
			"[overlay]\nbootstrap = %s\n[turn]\nallow_peers = 203.0.113.0/24\n", domain, bootstrap)
	}
	a, err := start("site A", siteA.LAN[0], siteConf("sitea.example"))
	if err != nil {
		return err
	}
	daemons = append(daemons, a)
	b, err := start("site B", siteB.LAN[0], siteConf("siteb.example"))
	if err != nil {
		return err
	}
	daemons = append(daemons, b)

	step("1. The superpeers each site elected", "Each site is one machine here: it founds its site's Raft group and elects itself.\n"+
		"(`superpeer status`)")
	for _, d := range []*daemon{boot, a, b} {
		st, err := waitSuperpeer(ctx, d)
		if err != nil {
			return err
		}
		var set []string
		for _, m := range st.Superpeers {
			set = append(set, short(m.Node)+" (SIP "+m.SIP+", TURN "+m.TURN+")")
		}
		fmt.Printf("  %-9s on %-14s node %s, %s; superpeers: %s\n", d.name, d.host.Addr, short(st.Node), st.Role, strings.Join(set, ", "))
	}

	step("2. The NATs the superpeers found", "RFC 5780 behaviour discovery against the bootstrap node's STUN server.\n"+
		"(`superpeer nat --json`)")
	for _, d := range []*daemon{a, b} {
		var ns natStatus
		if err := d.get(ctx, "nat", &ns); err != nil {
			return err
		}
		if ns.Behaviour == nil {
			fmt.Printf("  %s: %s (%s)\n", d.name, ns.Reachability, ns.Error)
			continue
		}
		fmt.Printf("  %s: %s — mapping %s, filtering %s, port-preserving %v, external %s (asked %s)\n", d.name, ns.Reachability,
			ns.Behaviour.Mapping, ns.Behaviour.Filtering, ns.Behaviour.PortPreserving, ns.Behaviour.External, ns.STUNServer)
	}
	fmt.Println("  So site A's own relayed addresses are useless to anyone but the STUN server: its calls' media\n" +
		"  will go through a TURN relay on the public node. Site B's relay can show its NAT's mapping.")
	if err := waitLinks(ctx, a, b); err != nil {
		return err
	}
	var ov struct {
		Links []struct {
			Peer   string  `json:"peer"`
			Path   string  `json:"path"`
			Via    *string `json:"via"`
			Remote string  `json:"remote"`
		} `json:"links"`
	}
	if err := a.get(ctx, "overlay", &ov); err == nil {
		fmt.Println("  Site A's overlay links (`superpeer overlay`):")
		for _, l := range ov.Links {
			fmt.Printf("    to %s: %s, %s\n", short(l.Peer), l.Path, l.Remote)
		}
	}

	step("3. Phones register", "SIPp plays the phones: bob@siteb.example at site B (answers and echoes media),\n"+
		"alice@sitea.example at site A. Each registers with its own site's superpeer on the LAN.")
	proxyA, proxyB := netip.AddrPortFrom(a.host.Addr, 5060), netip.AddrPortFrom(b.host.Addr, 5060)
	alice, bob := siteA.LAN[1], siteB.LAN[1]
	sc := func(name string, proxy netip.AddrPort) (string, error) {
		body, err := os.ReadFile(filepath.Join(scenarios, name))
		if err != nil {
			return "", err
		}
		p := filepath.Join(work, name)
		return p, os.WriteFile(p, []byte(strings.ReplaceAll(string(body), "@PROXY@", regexp.QuoteMeta(proxy.String()))), 0o644)
	}
	uasXML, err := sc("uas.xml", proxyB)
	if err != nil {
		return err
	}
	bobLog := filepath.Join(work, "bob-messages.log")
	uas, err := bob.Start("sipp", "-sf", uasXML, "-i", bob.Addr.String(), "-p", "5070", "-mi", bob.Addr.String(), "-mp", "6000",
		"-rtp_echo", "-trace_msg", "-message_file", bobLog, "-nostdin")
	if err != nil {
		return err
	}
	defer uas.Stop()
	register := func(h *netlab.Host, user, domain string, proxy netip.AddrPort, contactPort string) error {
		x, err := sc("register.xml", proxy)
		if err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		c := h.Command(rctx, "sipp", proxy.String(), "-sf", x, "-s", user, "-key", "domain", domain, "-key", "uasport", contactPort,
			"-i", h.Addr.String(), "-p", "5071", "-mp", "6100", "-m", "1", "-timeout", "20s", "-timeout_error", "-nostdin")
		c.Dir = work
		if out, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("registering %s@%s: %v\n%s", user, domain, err, tail(string(out), 1500))
		}
		fmt.Printf("  %s@%s registered at %s from %s\n", user, domain, proxy, h.Addr)
		return nil
	}
	if err := register(bob, "bob", "siteb.example", proxyB, "5070"); err != nil {
		return err
	}
	if err := register(alice, "alice", "sitea.example", proxyA, "5061"); err != nil {
		return err
	}
	fmt.Println("  Site B's superpeer publishes bob's record (AOR -> superpeers, signed) in the overlay's DHT.")

	step("4. alice calls sip:bob@siteb.example", fmt.Sprintf("The INVITE goes to site A's superpeer, which looks bob up in the DHT and sends it\n"+
		"through the overlay to site B's superpeer, which delivers it over bob's registered flow.\n"+
		"The call lasts %v with G.711 audio from alice, echoed by bob.", hold))
	uacXML, err := sc("uac_rtp.xml", proxyA)
	if err != nil {
		return err
	}
	aliceLog := filepath.Join(work, "alice-messages.log")
	var relays []relayRow
	var pinA, pinB []pinhole
	placed := false
	for attempt := 0; attempt < 10 && !placed; attempt++ {
		uac, err := alice.Start("sipp", proxyA.String(), "-sf", uacXML, "-s", "bob", "-key", "domain", "siteb.example",
			"-i", alice.Addr.String(), "-p", "5061", "-mi", alice.Addr.String(), "-mp", "6000",
			"-m", "1", "-d", strconv.Itoa(int(hold.Milliseconds())), "-timeout", "30s", "-timeout_error",
			"-trace_msg", "-message_file", aliceLog, "-nostdin")
		if err != nil {
			return err
		}
		// While the call is up: the relays and the pinholes.
		mid := time.Now().Add(hold / 2)
		for time.Now().Before(mid) && !uac.Exited() {
			select {
			case <-ctx.Done():
				uac.Stop()
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		if !uac.Exited() {
			relays = collectRelays(ctx, boot, b)
			pinA, pinB = pinholes(ctx, a), pinholes(ctx, b)
		}
		if err := uac.Wait(ctx); err == nil {
			placed = true
			break
		}
		// Bob's record may not have reached the overlay yet.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	if !placed {
		return fmt.Errorf("the call did not succeed; site A's superpeer said:\n%s", tail(a.proc.Output(), 3000))
	}
	fmt.Println("  The call was answered (200 OK), acknowledged, held and hung up (BYE): success.")

	step("5. The path the INVITE took", "The INVITE as bob's phone received it: the Via headers, newest first, are the way it came;\n"+
		"the Record-Route headers the way the ACK and the BYE took after it. Between the superpeers it crossed\n"+
		"the overlay, where a superpeer's SIP address is made from its node ID (fd53:5050::/32, never routed).\n"+
		"Both sites number their LAN 192.168.1.0/24, as homes do. The SDP shows bob the relay, not alice.")
	names := map[netip.Addr]string{}
	for _, d := range []*daemon{a, b} {
		if st, err := waitSuperpeer(ctx, d); err == nil {
			names[sip.OverlayAddr(st.Node).Addr()] = d.name + "'s superpeer, overlay side"
		}
	}
	if inv, err := receivedInvite(bobLog); err == nil {
		for i, h := range inv {
			note := ""
			for addr, name := range names {
				if strings.Contains(h, addr.String()) {
					note = name
				}
			}
			switch {
			case note != "":
			case strings.HasPrefix(h, "Via:") && strings.Contains(h, alice.Addr.String()+":"):
				note = "alice's phone"
			case strings.HasPrefix(h, "Via:") && i <= 1, strings.HasPrefix(h, "Record-Route:") && i <= 2:
				note = "site B's superpeer, LAN side"
			case strings.HasPrefix(h, "Record-Route:"):
				note = "site A's superpeer, LAN side"
			case strings.HasPrefix(h, "c="):
				note = "media address shown to bob: site B's superpeer"
			}
			if note != "" {
				note = "   <- " + note
			}
			fmt.Println("  " + h + note)
		}
	} else {
		fmt.Println("  (no trace:", err, ")")
	}

	step("6. The relays the media used", "alice and bob do no ICE, so each superpeer rewrote the SDP and anchored the media in a relay\n"+
		"stream: a LAN socket for its own phone, and for the far side a TURN allocation reachable across the NATs.\n"+
		"(the daemons' \"media relayed\" log lines, and `GET /v1/turn` of the relays, taken during the call)")
	for _, d := range []*daemon{a, b} {
		for _, l := range grepLines(d.proc.Output(), `msg="media relayed"`) {
			fmt.Printf("  %s: %s\n", d.name, compactLog(l))
		}
	}
	for _, r := range relays {
		fmt.Printf("  TURN relay of %s: allocation for %s (user %s) relayed at %s, found by %s; %d packets out, %d in so far\n",
			r.Server, r.Client, r.User, r.Relayed, r.Method, r.ToPeer, r.FromPeer)
	}
	fmt.Println("  So RTP went: alice -> site A's superpeer (LAN socket) -> TURN allocation on the public node ->\n" +
		"  site B's NAT -> TURN allocation on site B's superpeer (its relay opened B's NAT filter towards the\n" +
		"  public relay first) -> site B's superpeer (LAN socket) -> bob; and bob's echo back the same way.")

	step("7. The pinholes each superpeer holds", "Every flow through the NAT that must stay open: overlay links, relay flows; the keeper refreshes\n"+
		"each one just inside the NAT's binding lifetime. (`superpeer pinholes`, during the call)")
	for _, site := range []struct {
		name string
		ps   []pinhole
	}{{"site A", pinA}, {"site B", pinB}} {
		fmt.Printf("  %s's superpeer:\n", site.name)
		fmt.Printf("    %-22s %-22s %-22s %-8s %-9s %s\n", "LOCAL", "REMOTE", "EXTERNAL", "STATE", "REFRESH", "EVERY")
		for _, p := range site.ps {
			fmt.Printf("    %-22s %-22s %-22s %-8s %-9s %v\n", p.Local, p.Remote, orDash(p.External), p.State, p.Refresh,
				time.Duration(p.Interval).Round(100*time.Millisecond))
		}
	}
	fmt.Println("  The overlay link to the bootstrap node, and the flows of the call's relays (site A's client flow\n" +
		"  to the public TURN relay; site B's relay socket towards the STUN server and the far relay).")
	return nil
}

type pinhole struct {
	Local    string `json:"local"`
	Remote   string `json:"remote"`
	External string `json:"external"`
	State    string `json:"state"`
	Refresh  string `json:"refresh"`
	Interval int64  `json:"interval"`
}

func pinholes(ctx context.Context, d *daemon) []pinhole {
	var out struct {
		Pinholes []pinhole `json:"pinholes"`
	}
	d.get(ctx, "pinholes", &out)
	return out.Pinholes
}

func orDash(s string) string {
	if s == "" || s == "invalid AddrPort" {
		return "-"
	}
	return s
}

func step(title, text string) {
	fmt.Printf("\n== %s\n%s\n", title, indent(text, "   "))
}

func waitSuperpeer(ctx context.Context, d *daemon) (status, error) {
	var st status
	err := netlab.Wait(ctx, 60*time.Second, func() error {
		if d.proc.Exited() {
			return fmt.Errorf("%s daemon exited:\n%s", d.name, tail(d.proc.Output(), 2000))
		}
		if err := d.get(ctx, "status", &st); err != nil {
			return err
		}
		if !strings.Contains(st.Role, "superpeer") || !st.running("overlay", "sip", "turn") {
			return fmt.Errorf("%s is %q", d.name, st.Role)
		}
		return nil
	})
	return st, err
}

// waitLinks waits until the sites' superpeers have overlay links.
func waitLinks(ctx context.Context, ds ...*daemon) error {
	return netlab.Wait(ctx, 30*time.Second, func() error {
		for _, d := range ds {
			var st status
			if err := d.get(ctx, "status", &st); err != nil {
				return err
			}
			if st.Links < 2 {
				return fmt.Errorf("%s has %d overlay links", d.name, st.Links)
			}
		}
		return nil
	})
}

type relayRow struct {
	Server, Client, User, Relayed, Method string
	ToPeer, FromPeer                      uint64
}

// collectRelays reads the live allocations of the daemons' TURN relays
// from their control sockets (there is no subcommand for it).
func collectRelays(ctx context.Context, ds ...*daemon) []relayRow {
	var rows []relayRow
	for _, d := range ds {
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var dl net.Dialer
				return dl.DialContext(ctx, "unix", d.socket())
			},
		}}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://superpeer/v1/turn", nil)
		resp, err := hc.Do(req)
		if err != nil {
			continue
		}
		out, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			continue
		}
		var st struct {
			Relays []struct {
				Client  string `json:"client"`
				User    string `json:"user"`
				Relayed string `json:"relayed"`
				Method  string `json:"method"`
				ToPeer  struct {
					Packets uint64 `json:"packets"`
				} `json:"to_peer"`
				FromPeer struct {
					Packets uint64 `json:"packets"`
				} `json:"from_peer"`
			} `json:"relays"`
		}
		if json.Unmarshal(out, &st) != nil {
			continue
		}
		for _, r := range st.Relays {
			rows = append(rows, relayRow{Server: d.name, Client: r.Client, User: r.User, Relayed: r.Relayed, Method: r.Method,
				ToPeer: r.ToPeer.Packets, FromPeer: r.FromPeer.Packets})
		}
	}
	return rows
}

// receivedInvite returns the Via and Record-Route headers and the media
// lines of the INVITE that bob's SIPp received.
func receivedInvite(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(l, "INVITE sip:"):
			out = []string{l}
		case out == nil:
		case strings.HasPrefix(l, "----"): // the next message
			return out, nil
		case strings.HasPrefix(l, "Via:"), strings.HasPrefix(l, "Record-Route:"), strings.HasPrefix(l, "c="), strings.HasPrefix(l, "m="):
			out = append(out, l)
		}
	}
	if out == nil {
		return nil, errors.New("no INVITE in " + path)
	}
	return out, nil
}

func grepLines(s, substr string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

// compactLog drops the time and level of a log line.
func compactLog(l string) string {
	l = regexp.MustCompile(`^time=\S+ level=\S+ `).ReplaceAllString(l, "")
	return strings.Replace(l, `msg="media relayed" part=media `, "", 1)
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func indent(s, pre string) string {
	s = strings.TrimRight(s, "\n")
	return pre + strings.ReplaceAll(s, "\n", "\n"+pre)
}
