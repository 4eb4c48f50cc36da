// Command turnbench measures a TURN server relaying RTP-sized packets over
// many allocations: the same client and packet schedule against Superpeer's
// relay and against coturn (bench/turn.sh runs both).
//
//	turnbench server -listen 127.0.0.1 -port 3478 -secret S -allow 127.0.0.2/32
//	turnbench client -server 127.0.0.1:3478 -secret S -peer 127.0.0.2 -allocs 200 -rate 10000 -pid PID
//	turnbench ping -server 127.0.0.1:3478
//	turnbench report -coturn "4.6.1" < results.jsonl
//
// The client makes -allocs UDP allocations with TURN REST credentials,
// binds a channel on each towards one echoing peer socket, and sends
// ChannelData of -size bytes at -rate packets a second in all, spread
// evenly over the allocations (50 pps each is one RTP stream). Every packet
// goes client -> relay -> peer -> relay -> client: two relayed packets. It
// prints one JSON line: what was offered, what came back, the server's CPU
// time per relayed packet (from /proc/PID/stat over the measured window)
// and the round-trip latency percentiles. -direct skips the relay (client
// -> peer -> client), the physical floor of the same machinery; server
// -bare runs pion/turn as it comes, to tell pion's cost from Superpeer's.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pion/stun/v4"
	pionturn "github.com/pion/turn/v5"
	"golang.org/x/net/ipv4"

	"github.com/superpeer/superpeer/superpeer/turn"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: turnbench server|client|ping|report [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = server(os.Args[2:])
	case "client":
		err = client(os.Args[2:])
	case "ping":
		err = ping(os.Args[2:])
	case "report":
		err = report(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "turnbench:", err)
		os.Exit(1)
	}
}

// server runs Superpeer's relay with its shipped defaults (hardening,
// quotas, bandwidth cap, counters) until SIGTERM.
func server(args []string) error {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1", "listen address")
	port := fs.Uint("port", turn.DefaultPort, "TURN port")
	secret := fs.String("secret", "", "REST API shared secret")
	realm := fs.String("realm", "superpeer", "realm")
	allow := fs.String("allow", "", "comma-separated peer ranges to allow")
	listeners := fs.Int("udp-listeners", 0, "UDP listeners sharing the port (0: the default, GOMAXPROCS)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run here")
	bare := fs.Bool("bare", false, "run pion/turn as it comes (no policy, caps, NAT handling or counters) instead")
	fs.Parse(args)
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}

	cfg := turn.DefaultConfig()
	cfg.Listen = []netip.Addr{netip.MustParseAddr(*listen)}
	cfg.Port = uint16(*port)
	cfg.Realm = *realm
	cfg.TotalQuota = 0 // coturn's default: no total quota
	if *listeners > 0 {
		cfg.UDPListeners = *listeners
	}
	key := []byte(*secret)
	cfg.Secret = func() []byte { return key }
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	for _, p := range strings.Split(*allow, ",") {
		if p != "" {
			cfg.AllowPeers = append(cfg.AllowPeers, netip.MustParsePrefix(p))
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	if *bare {
		return barePion(cfg, key, sig)
	}
	s, err := turn.New(cfg, nil, nil)
	if err != nil {
		return err
	}
	if err := s.Start(context.Background()); err != nil {
		return err
	}
	fmt.Println("ready", s.UDPAddrs())
	<-sig
	return s.Close()
}

// barePion is the baseline of what Superpeer's layer costs: pion/turn with
// its REST handler, its default (allow-all) permission handler and a
// plain relay-address generator, one UDP listener.
func barePion(cfg turn.Config, secret []byte, sig <-chan os.Signal) error {
	addr := netip.AddrPortFrom(cfg.Listen[0], cfg.Port)
	conn, err := net.ListenPacket("udp4", addr.String())
	if err != nil {
		return err
	}
	s, err := pionturn.NewServer(pionturn.ServerConfig{
		Realm:       cfg.Realm,
		AuthHandler: pionturn.LongTermTURNRESTAuthHandler(string(secret), nil),
		PacketConnConfigs: []pionturn.PacketConnConfig{{
			PacketConn:            conn,
			RelayAddressGenerator: &pionturn.RelayAddressGeneratorNone{Address: addr.Addr().String()},
		}},
	})
	if err != nil {
		return err
	}
	fmt.Println("ready", addr)
	<-sig
	return s.Close()
}

// Result is the client's one line of output.
type Result struct {
	Server       string  `json:"server"`
	Allocations  int     `json:"allocations"`
	OfferedPPS   float64 `json:"offered_pps"` // packets the client sent a second
	RelayedPPS   float64 `json:"relayed_pps"` // packets a second that crossed the relay, both directions
	Loss         float64 `json:"loss"`        // fraction of sent packets that never came back
	ServerCPU    float64 `json:"server_cpu"`  // server CPU seconds over the window
	CPUPerPacket float64 `json:"cpu_per_packet_us"`
	RTTp50       float64 `json:"rtt_p50_us"`
	RTTp99       float64 `json:"rtt_p99_us"`
	ClientCPU    float64 `json:"client_cpu"` // the client's own CPU seconds: near the window, it was the limit
	Window       float64 `json:"window_s"`
}

const (
	hdrSize    = 4 // ChannelData header
	channel    = 0x4000
	stampBytes = 20 // allocation index, sequence, send time
)

func client(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	serverAddr := fs.String("server", "127.0.0.1:3478", "TURN server")
	secret := fs.String("secret", "", "REST API shared secret")
	peerIP := fs.String("peer", "127.0.0.2", "address of the echoing peer socket")
	allocs := fs.Int("allocs", 200, "allocations")
	rate := fs.Float64("rate", 10000, "packets a second sent by the client, all allocations together")
	size := fs.Int("size", 172, "payload bytes (172: G.711 20 ms RTP)")
	duration := fs.Duration("duration", 10*time.Second, "measured window")
	warmup := fs.Duration("warmup", 2*time.Second, "sending before the window opens")
	pid := fs.Int("pid", 0, "server process to read CPU time of")
	direct := fs.Bool("direct", false, "send to the peer directly, without a relay")
	label := fs.String("label", "", "label of the result line")
	fs.Parse(args)
	if *size < stampBytes {
		return fmt.Errorf("-size must be at least %d", stampBytes)
	}

	peer, err := net.ListenPacket("udp4", net.JoinHostPort(*peerIP, "0"))
	if err != nil {
		return err
	}
	defer peer.Close()
	peer.(*net.UDPConn).SetReadBuffer(4 << 20)
	peerAddr := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	var atPeer atomic.Uint64
	go echo(peer, &atPeer)

	server := netip.MustParseAddrPort(*serverAddr)
	conns := make([]*net.UDPConn, *allocs)
	txns := make([]*txn, *allocs)
	for i := range conns {
		dst := server
		if *direct {
			dst = peerAddr
		}
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadBuffer(1 << 20)
		conns[i] = c
		if !*direct {
			if txns[i], err = setup(c, *secret, fmt.Sprintf("bench-%d", i), peerAddr); err != nil {
				return fmt.Errorf("allocation %d: %w", i, err)
			}
		}
	}

	start := time.Now()
	type recv struct {
		n   atomic.Uint64
		rtt []float64
	}
	recvs := make([]*recv, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		r := &recv{}
		recvs[i] = r
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				p := buf[:n]
				if !*direct {
					if n < hdrSize || binary.BigEndian.Uint16(p) != channel {
						continue
					}
					p = p[hdrSize:]
				}
				if len(p) < stampBytes {
					continue
				}
				sent := int64(binary.BigEndian.Uint64(p[12:20]))
				if sent == 0 {
					continue // warm-up traffic
				}
				r.n.Add(1)
				r.rtt = append(r.rtt, float64(time.Since(start).Nanoseconds()-sent)/1e3)
			}
		}()
	}

	// The schedule: every millisecond, the packets due by then, round robin
	// over the allocations.
	pkt := make([]byte, hdrSize+*size)
	binary.BigEndian.PutUint16(pkt[0:2], channel)
	binary.BigEndian.PutUint16(pkt[2:4], uint16(*size))
	var sentMeasured uint64
	var seq uint64
	next := 0
	end := *warmup + *duration
	var cpu0, cpu1, self0, self1 float64
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	window := false
	for range tick.C {
		el := time.Since(start)
		if !window && el >= *warmup {
			window = true
			cpu0, self0 = procCPU(*pid), procCPU(os.Getpid())
		}
		if el >= end {
			break
		}
		due := uint64(el.Seconds()**rate) - seq
		for range due {
			c := conns[next]
			p := pkt
			if *direct {
				p = pkt[hdrSize:]
			}
			body := pkt[hdrSize:]
			binary.BigEndian.PutUint32(body[0:4], uint32(next))
			binary.BigEndian.PutUint64(body[4:12], seq)
			stamp := time.Since(start).Nanoseconds()
			if !window {
				stamp = 0
			}
			binary.BigEndian.PutUint64(body[12:20], uint64(stamp))
			c.Write(p)
			seq++
			if window {
				sentMeasured++
			}
			next = (next + 1) % len(conns)
		}
	}
	cpu1, self1 = procCPU(*pid), procCPU(os.Getpid())
	winSecs := time.Since(start).Seconds() - warmup.Seconds()
	// Let the last packets come back, then stop the readers and free the
	// allocations (Refresh with lifetime 0; answers are not awaited).
	time.Sleep(200 * time.Millisecond)
	for _, t := range txns {
		if t != nil {
			t.release()
		}
	}
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()

	var got uint64
	var rtts []float64
	for _, r := range recvs {
		got += r.n.Load()
		rtts = append(rtts, r.rtt...)
	}
	slices.Sort(rtts)
	res := Result{
		Server:      *label,
		Allocations: len(conns),
		OfferedPPS:  float64(sentMeasured) / winSecs,
		Window:      winSecs,
		ServerCPU:   cpu1 - cpu0,
		ClientCPU:   self1 - self0,
	}
	if sentMeasured > 0 {
		res.Loss = 1 - float64(got)/float64(sentMeasured)
	}
	// Relayed: what reached the peer through the relay plus what came back
	// through it.
	relayed := float64(atPeer.Load() + got)
	if *direct {
		relayed = 0
	}
	res.RelayedPPS = relayed / winSecs
	if relayed > 0 && *pid > 0 {
		res.CPUPerPacket = res.ServerCPU / relayed * 1e6
	}
	if len(rtts) > 0 {
		res.RTTp50 = rtts[len(rtts)/2]
		res.RTTp99 = rtts[len(rtts)*99/100]
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// echo sends every datagram back where it came from, many at a time, and
// counts the stamped (measured) ones.
func echo(c net.PacketConn, stamped *atomic.Uint64) {
	pc := ipv4.NewPacketConn(c)
	msgs := make([]ipv4.Message, 64)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	out := make([]ipv4.Message, 64)
	for {
		n, err := pc.ReadBatch(msgs, 0)
		if err != nil {
			return
		}
		for i := range n {
			p := msgs[i].Buffers[0][:msgs[i].N]
			out[i] = ipv4.Message{Buffers: [][]byte{p}, Addr: msgs[i].Addr}
			if len(p) >= stampBytes && binary.BigEndian.Uint64(p[12:20]) != 0 {
				stamped.Add(1)
			}
		}
		for k := 0; k < n; {
			w, err := pc.WriteBatch(out[k:n], 0)
			if err != nil {
				break
			}
			k += w
		}
	}
}

// setup allocates on c with REST credentials for user and binds the
// channel towards peer.
func setup(c *net.UDPConn, secret, user string, peer netip.AddrPort) (*txn, error) {
	username, password, err := turn.MintCredentials([]byte(secret), user, time.Now().Add(time.Hour))
	if err != nil {
		return nil, err
	}
	t := &txn{c: c, user: username, pass: password}
	transport := rawAttr{stun.AttrRequestedTransport, []byte{17, 0, 0, 0}}
	lifetime := rawAttr{stun.AttrLifetime, []byte{0, 0, 0x0e, 0x10}} // an hour
	if _, err := t.do(stun.MethodAllocate, transport, lifetime); err != nil {
		return nil, err
	}
	xp := &stun.XORMappedAddress{IP: peer.Addr().AsSlice(), Port: int(peer.Port())}
	if _, err := t.do(stun.MethodChannelBind, peerAttr{xp}, rawAttr{stun.AttrChannelNumber, []byte{0x40, 0, 0, 0}}); err != nil {
		return nil, err
	}
	return t, nil
}

// release deletes the allocation without waiting for the answer.
func (t *txn) release() {
	req, err := stun.Build(stun.TransactionID, stun.NewType(stun.MethodRefresh, stun.ClassRequest),
		rawAttr{stun.AttrLifetime, []byte{0, 0, 0, 0}}, stun.NewUsername(t.user), stun.NewRealm(t.realm),
		stun.NewNonce(t.nonce), stun.NewLongTermIntegrity(t.user, t.realm, t.pass))
	if err == nil {
		t.c.Write(req.Raw)
	}
}

type txn struct {
	c                        *net.UDPConn
	user, pass, realm, nonce string
}

func (t *txn) do(method stun.Method, attrs ...stun.Setter) (*stun.Message, error) {
	for attempt := 0; attempt < 3; attempt++ {
		setters := []stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}
		setters = append(setters, attrs...)
		if t.nonce != "" {
			setters = append(setters, stun.NewUsername(t.user), stun.NewRealm(t.realm), stun.NewNonce(t.nonce),
				stun.NewLongTermIntegrity(t.user, t.realm, t.pass))
		}
		req, err := stun.Build(setters...)
		if err != nil {
			return nil, err
		}
		resp, err := t.roundTrip(req)
		if err != nil {
			return nil, err
		}
		if resp.Type.Class == stun.ClassSuccessResponse {
			return resp, nil
		}
		var ec stun.ErrorCodeAttribute
		ec.GetFrom(resp)
		var n stun.Nonce
		var r stun.Realm
		if (ec.Code == stun.CodeUnauthorized || ec.Code == stun.CodeStaleNonce) && n.GetFrom(resp) == nil && r.GetFrom(resp) == nil {
			t.nonce, t.realm = n.String(), r.String()
			continue
		}
		return nil, fmt.Errorf("%v: error %d %s", method, ec.Code, ec.Reason)
	}
	return nil, fmt.Errorf("%v: not authenticated", method)
}

func (t *txn) roundTrip(req *stun.Message) (*stun.Message, error) {
	buf := make([]byte, 1500)
	for try := 0; try < 5; try++ {
		if _, err := t.c.Write(req.Raw); err != nil {
			return nil, err
		}
		t.c.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, err := t.c.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return nil, err
			}
			m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if m.Decode() == nil && m.TransactionID == req.TransactionID {
				t.c.SetReadDeadline(time.Time{})
				return m, nil
			}
		}
	}
	return nil, errors.New("no answer")
}

type rawAttr struct {
	t stun.AttrType
	v []byte
}

func (r rawAttr) AddTo(m *stun.Message) error {
	m.Add(r.t, r.v)
	return nil
}

type peerAttr struct{ a *stun.XORMappedAddress }

func (p peerAttr) AddTo(m *stun.Message) error { return p.a.AddToAs(m, stun.AttrXORPeerAddress) }

// procCPU returns the user+system CPU seconds of process pid (all its
// threads) from /proc/pid/stat; 0 when it cannot.
func procCPU(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name may hold spaces: fields start after its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/pid/stat times (100 on Linux).
const clockTicks = 100
