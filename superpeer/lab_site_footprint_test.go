package superpeer

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pionturn "github.com/pion/turn/v5"

	"github.com/superpeer/superpeer/netlab"
	"github.com/superpeer/superpeer/superpeer/turn"
)

// Footprint load: what bench/footprint.sh puts on one superpeer.
const (
	footprintPhones      = 1000 // registrations
	footprintAllocations = 100  // TURN allocations
	footprintPeers       = 10   // permissions per allocation, each a pinhole
)

// footprint is one measurement, in kB as /proc reports them.
type footprint struct {
	idleRSS, idleHWM     int64
	loadRSS, loadHWM     int64
	idleFile, loadFile   int64 // RssFile: the binary's pages
	coturnIdle           int64
	coturnLoad, coturnHW int64
	pinholes, regs       int
	allocs               int
}

// BenchmarkLabFootprint measures the daemon's resident memory (VmRSS and
// VmHWM of /proc/PID/status) idle and under load, and coturn's in the same
// run as the baseline (bench/footprint.sh). The superpeer runs with its
// shipped defaults on a LAN host behind a kernel NAT, alone in its site, so
// it is the superpeer; coturn serves STUN to it from the WAN and is the
// TURN server of the baseline. The load: 1,000 phones registered (one UDP
// socket each, on another LAN host), 100 TURN allocations made with
// credentials from the control API, each with permissions for 10 peers on
// the WAN; the relays are behind the NAT, so the keeper holds a pinhole for
// each permitted peer (1,000) and one for each relay's STUN mapping. The
// same 100 allocations and permissions are then made on coturn. With
// FOOTPRINT_REPORT=file it writes the medians as "name value" lines;
// SUPERPEER_BIN names the binary to measure (a release build), else the
// test builds one. Each b.N iteration is FOOTPRINT_RUNS runs, so that
// -benchtime 1x makes exactly that many; without FOOTPRINT_RUNS it is
// skipped (make bench runs it through the script).
func BenchmarkLabFootprint(b *testing.B) {
	n, err := strconv.Atoi(os.Getenv("FOOTPRINT_RUNS"))
	if err != nil || n < 1 {
		b.Skip("bench/footprint.sh runs this (FOOTPRINT_RUNS=n)")
	}
	bin := os.Getenv("SUPERPEER_BIN")
	if bin == "" {
		bin = superpeerBinary(b)
	}
	var runs []footprint
	for range b.N * n {
		runs = append(runs, footprintRun(b, bin))
	}
	b.StopTimer()
	med := func(f func(footprint) int64) int64 {
		v := make([]int64, len(runs))
		for i, r := range runs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	m := footprint{
		idleRSS: med(func(r footprint) int64 { return r.idleRSS }), idleHWM: med(func(r footprint) int64 { return r.idleHWM }),
		loadRSS: med(func(r footprint) int64 { return r.loadRSS }), loadHWM: med(func(r footprint) int64 { return r.loadHWM }),
		idleFile: med(func(r footprint) int64 { return r.idleFile }), loadFile: med(func(r footprint) int64 { return r.loadFile }),
		coturnIdle: med(func(r footprint) int64 { return r.coturnIdle }),
		coturnLoad: med(func(r footprint) int64 { return r.coturnLoad }), coturnHW: med(func(r footprint) int64 { return r.coturnHW }),
		pinholes: int(med(func(r footprint) int64 { return int64(r.pinholes) })),
		regs:     int(med(func(r footprint) int64 { return int64(r.regs) })),
		allocs:   int(med(func(r footprint) int64 { return int64(r.allocs) })),
	}
	b.ReportMetric(float64(m.idleRSS)/1024, "idle-MB")
	b.ReportMetric(float64(m.loadHWM)/1024, "load-peak-MB")
	if path := os.Getenv("FOOTPRINT_REPORT"); path != "" {
		var out strings.Builder
		for _, kv := range []struct {
			k string
			v int64
		}{
			{"runs", int64(len(runs))},
			{"idle_rss_kb", m.idleRSS}, {"idle_hwm_kb", m.idleHWM},
			{"load_rss_kb", m.loadRSS}, {"load_hwm_kb", m.loadHWM},
			{"idle_file_kb", m.idleFile}, {"load_file_kb", m.loadFile},
			{"coturn_idle_rss_kb", m.coturnIdle}, {"coturn_load_rss_kb", m.coturnLoad}, {"coturn_load_hwm_kb", m.coturnHW},
			{"pinholes", int64(m.pinholes)}, {"registrations", int64(m.regs)}, {"allocations", int64(m.allocs)},
		} {
			fmt.Fprintf(&out, "%s %d\n", kv.k, kv.v)
		}
		if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

func footprintRun(b *testing.B, bin string) footprint {
	b.Helper()
	lab := netlab.Start(b, netlab.Topology{WANHosts: 1, Sites: []netlab.SiteConfig{{
		Name: "home", Mapping: netlab.PortPreserving, LANHosts: 2,
	}}})
	wan, spHost, loadHost := lab.WAN[0], lab.Sites[0].LAN[0], lab.Sites[0].LAN[1]
	var fp footprint

	// coturn on the WAN host's two addresses: RFC 5780 STUN for the
	// superpeer's NAT discovery, and the baseline TURN server.
	const secret, realm = "footprint-secret", "footprint"
	conf := filepath.Join(lab.Dir, "turnserver.conf")
	if err := os.WriteFile(conf, nil, 0o600); err != nil {
		b.Fatal(err)
	}
	pidFile := filepath.Join(lab.Dir, "turnserver.pid")
	coturn, err := wan.Start("turnserver", "-c", conf, "--no-cli", "--no-tls", "--no-dtls",
		"-L", wan.Addrs[0].String(), "-L", wan.Addrs[1].String(), "--listening-port", "3478",
		"--use-auth-secret", "--static-auth-secret", secret, "--realm", realm,
		"--log-file", "stdout", "--simple-log", "--pidfile", pidFile, "--no-software-attribute")
	if err != nil {
		b.Fatal(err)
	}
	var coturnPID int
	netlab.Eventually(b, 20*time.Second, func() error {
		if coturn.Exited() {
			return fmt.Errorf("turnserver exited: %s", coturn.Output())
		}
		pid, err := readPID(pidFile)
		if err != nil {
			return err
		}
		out, err := wan.Run(context.Background(), "ss", "-Hlnu", "sport = :3478")
		if err != nil || strings.TrimSpace(out) == "" {
			return fmt.Errorf("turnserver not listening yet")
		}
		coturnPID = pid
		return nil
	})
	// Idle is the state being measured: let the processes settle.
	time.Sleep(3 * time.Second)
	if fp.coturnIdle, _, _, err = procMem(coturnPID); err != nil {
		b.Fatal(err)
	}

	// The superpeer.
	dir, err := os.MkdirTemp("", "sp-fp-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	cfg := fmt.Sprintf(`[site]
domain = %s
[nat]
stun_servers = %s:3478
[sip]
flood_requests = 100000
[turn]
allow_peers = 203.0.113.0/24
`, labDomain, wan.Addrs[0])
	if os.Getenv("FOOTPRINT_DEBUG") != "" {
		cfg += "[metrics]\nlisten = 127.0.0.1:9464\n"
	}
	node := &labNode{name: "superpeer", host: spHost, dir: dir, conf: filepath.Join(dir, "superpeer.conf")}
	if err := os.WriteFile(node.conf, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	p, err := spHost.Start(bin, "run", "--state-dir", dir, "--config", node.conf)
	if err != nil {
		b.Fatal(err)
	}
	node.proc = p
	b.Cleanup(func() {
		p.Kill()
		if b.Failed() {
			b.Logf("---- superpeer ----\n%s", tail(p.Output(), 100))
		}
	})
	netlab.Eventually(b, 30*time.Second, func() error {
		st, err := node.status()
		if err != nil {
			return err
		}
		if !strings.HasPrefix(st.Role, "superpeer") || !strings.Contains(st.NAT, "endpoint-independent mapping") {
			return fmt.Errorf("role %q, NAT %q", st.Role, st.NAT)
		}
		for _, part := range st.Parts {
			if part.State != "running" {
				return fmt.Errorf("%s: %s", part.Name, part.State)
			}
		}
		return nil
	})
	pid, err := readPID(filepath.Join(dir, "superpeer.lock"))
	if err != nil {
		b.Fatal(err)
	}
	// Idle is the state being measured: let the processes settle.
	time.Sleep(5 * time.Second)
	if fp.idleRSS, fp.idleHWM, fp.idleFile, err = procMem(pid); err != nil {
		b.Fatal(err)
	}

	// Load: registrations, then allocations with their permissions.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	phones := make([]*labPhone, footprintPhones)
	for i := range phones {
		phones[i] = newLabPhone(b, loadHost, netip.AddrPortFrom(loadHost.Addr, 0), fmt.Sprintf("fp%04d", i))
	}
	if err := registerAll(ctx, node.sipAddr(), phones); err != nil {
		b.Fatal(err)
	}
	spTURN := netip.AddrPortFrom(spHost.Addr, 3478)
	closeSP := allocateMany(b, loadHost, spTURN, "superpeer", func(i int) (string, string) {
		var c turn.Credentials
		if err := node.client().Post(ctx, fmt.Sprintf("/v1/turn/credentials?user=fp%03d", i), &c); err != nil {
			b.Fatal(err)
		}
		return c.Username, c.Password
	})
	netlab.Eventually(b, 60*time.Second, func() error {
		st, err := node.status()
		if err != nil {
			return err
		}
		if st.Pinholes < footprintAllocations*footprintPeers {
			return fmt.Errorf("%d pinholes", st.Pinholes)
		}
		fp.pinholes = st.Pinholes
		return nil
	})
	var ts turn.Status
	if err := node.get("/v1/turn", &ts); err != nil {
		b.Fatal(err)
	}
	ps, err := node.peers()
	if err != nil {
		b.Fatal(err)
	}
	fp.allocs, fp.regs = ts.Allocations, ps.Registrations
	if fp.allocs != footprintAllocations || fp.regs != footprintPhones {
		b.Fatalf("load: %d allocations, %d registrations", fp.allocs, fp.regs)
	}
	// Holding the load is the state being measured: wait until the
	// registrations' SIP transactions have ended (Timer J, 32 s over
	// UDP), as they do between a site's refreshes, and the daemon has
	// had the time to hand back what the burst left free.
	time.Sleep(70 * time.Second)
	if fp.loadRSS, fp.loadHWM, fp.loadFile, err = procMem(pid); err != nil {
		b.Fatal(err)
	}
	if os.Getenv("FOOTPRINT_DEBUG") != "" {
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		smaps, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
		st = append(st, smaps...)
		out, _ := spHost.Run(context.Background(), "curl", "-s", "http://127.0.0.1:9464/metrics")
		os.WriteFile(os.Getenv("FOOTPRINT_DEBUG"), append(st, out...), 0o644)
	}
	closeSP()

	// The same TURN load on coturn.
	closeCoturn := allocateMany(b, loadHost, netip.AddrPortFrom(wan.Addrs[0], 3478), realm, func(i int) (string, string) {
		u, pw, err := turn.MintCredentials([]byte(secret), fmt.Sprintf("fp%03d", i), time.Now().Add(time.Hour))
		if err != nil {
			b.Fatal(err)
		}
		return u, pw
	})
	time.Sleep(5 * time.Second)
	if fp.coturnLoad, fp.coturnHW, _, err = procMem(coturnPID); err != nil {
		b.Fatal(err)
	}
	closeCoturn()
	return fp
}

// allocateMany makes footprintAllocations allocations at server from
// sockets on h, each with permissions for footprintPeers peers on the WAN,
// and returns a function that closes them.
func allocateMany(b *testing.B, h *netlab.Host, server netip.AddrPort, realm string, creds func(i int) (user, pass string)) (closeAll func()) {
	b.Helper()
	n, err := h.Net()
	if err != nil {
		b.Fatal(err)
	}
	var (
		mu      sync.Mutex
		clients []*pionturn.Client
		relays  []net.PacketConn
		conns   []net.PacketConn
	)
	closeAll = func() {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range relays {
			r.Close()
		}
		for _, c := range clients {
			c.Close()
		}
		for _, c := range conns {
			c.Close()
		}
	}
	b.Cleanup(closeAll)
	for i := range footprintAllocations {
		user, pass := creds(i)
		conn, err := h.UDP(netip.AddrPortFrom(h.Addr, 0))
		if err != nil {
			b.Fatal(err)
		}
		c, err := pionturn.NewClient(&pionturn.ClientConfig{
			STUNServerAddr: server.String(), TURNServerAddr: server.String(),
			Username: user, Password: pass, Realm: realm, Conn: conn, Net: n,
		})
		if err != nil {
			conn.Close()
			b.Fatal(err)
		}
		mu.Lock()
		conns, clients = append(conns, conn), append(clients, c)
		mu.Unlock()
		if err := c.Listen(); err != nil {
			b.Fatal(err)
		}
		relay, err := c.Allocate()
		if err != nil {
			b.Fatalf("allocation %d at %v: %v", i, server, err)
		}
		mu.Lock()
		relays = append(relays, relay)
		mu.Unlock()
		peers := make([]net.Addr, footprintPeers)
		for j := range peers {
			// Peers on the WAN (nothing answers there: a permission is
			// what is being held, not traffic).
			peers[j] = &net.UDPAddr{IP: net.IPv4(203, 0, 113, byte(50+j)), Port: 40000 + i}
		}
		if err := c.CreatePermission(peers...); err != nil {
			b.Fatalf("permissions of allocation %d at %v: %v", i, server, err)
		}
	}
	return closeAll
}

// procMem reads VmRSS, VmHWM and RssFile (kB) of a process.
func procMem(pid int) (rss, hwm, file int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fields[0], 10, 64)
		switch k {
		case "VmRSS":
			rss = n
		case "VmHWM":
			hwm = n
		case "RssFile":
			file = n
		}
	}
	if rss == 0 {
		return 0, 0, 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
	}
	return rss, hwm, file, sc.Err()
}

// readPID reads the process ID a daemon wrote into a file.
func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return pid, nil
}
