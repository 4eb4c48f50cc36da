package superpeer

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"

	"github.com/superpeer/superpeer/election"
	"github.com/superpeer/superpeer/nat/clock"
	"github.com/superpeer/superpeer/overlay"
	"github.com/superpeer/superpeer/superpeer/config"
	"github.com/superpeer/superpeer/superpeer/control"
	"github.com/superpeer/superpeer/superpeer/sip"
)

// Version is stamped by the build (-ldflags -X).
var Version = "dev"

// Options are the daemon's seams: tests give a lab host's network and a
// fake clock; production leaves them empty.
type Options struct {
	// Net opens every socket; nil means the host's network.
	Net transport.Net
	// Clock decides every timer; nil means the wall clock.
	Clock clock.Clock
	// Log receives the daemon's events; nil means a logger built from the
	// configuration, writing to LogOutput.
	Log *slog.Logger
	// LogOutput is where a logger built from the configuration writes; nil
	// means standard error.
	LogOutput io.Writer
}

// Daemon is one running superpeer node.
type Daemon struct {
	cfg     *config.Config
	net     transport.Net
	clock   clock.Clock
	log     *slog.Logger
	started time.Time
	control *control.Server
	lock    *os.File
	metrics *metricsServer
	ready   chan struct{} // closed once Run has started every part
	key     ed25519.PrivateKey
	nodeID  overlay.NodeID
	secret  *election.SiteSecret
	nat     *natPart
	node    *election.Node
	agent   *sip.Agent

	// setChanges counts the committed superpeer sets this node has seen
	// change (superpeer_superpeer_set_changes_total).
	setChanges atomic.Uint64

	mu         sync.Mutex // guards following
	parts      []part
	metricSets []*metrics.Set
	svc        *services
}

// A part is one capability of the daemon (NAT, election, overlay, SIP,
// TURN); each joins the daemon as it is built.
type part struct {
	name  string
	state string // "running", or why it is not
}

// New checks the configuration's environment and prepares a daemon.
func New(cfg *config.Config, opts Options) (*Daemon, error) {
	d := &Daemon{cfg: cfg, net: opts.Net, clock: clock.OrReal(opts.Clock), log: opts.Log, ready: make(chan struct{})}
	if d.log == nil {
		d.log = NewLogger(cfg, opts.LogOutput)
	}
	if d.net == nil {
		n, err := stdnet.NewNet()
		if err != nil {
			return nil, fmt.Errorf("reading network interfaces: %w", err)
		}
		d.net = n
	}
	return d, nil
}

// NewLogger builds the slog logger the configuration asks for.
func NewLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	if w == nil {
		w = os.Stderr
	}
	var level slog.Level
	level.UnmarshalText([]byte(cfg.Daemon.LogLevel))
	o := &slog.HandlerOptions{Level: level}
	if cfg.Daemon.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, o))
	}
	return slog.New(slog.NewTextHandler(w, o))
}

// Run runs the daemon until ctx ends, then stops every part and removes
// the control socket.
func (d *Daemon) Run(ctx context.Context) (err error) {
	d.started = d.clock.Now()
	dir := d.cfg.StateDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if err := d.lockStateDir(dir); err != nil {
		return err
	}
	defer d.lock.Close()

	key, err := overlay.LoadOrCreateIdentity(dir)
	if err != nil {
		return fmt.Errorf("node identity: %w", err)
	}
	d.key, d.nodeID = key, overlay.IDOf(key.Public().(ed25519.PublicKey))

	d.control = control.NewServer(d.log)
	d.routes()
	sock := d.cfg.ControlSocket()
	if err := d.control.Listen(sock, d.cfg.Daemon.ControlGroup); err != nil {
		return err
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- d.control.Serve() }()
	d.setPart("control", "running")

	runCtx, stopParts := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopParts()
		stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if d.node != nil {
			d.node.FlushRefreshes(stopCtx)
			d.node.Close(stopCtx) // hands leadership over
		}
		wg.Wait()
		if d.agent != nil {
			d.agent.Close()
		}
		if d.nat != nil {
			d.nat.close(stopCtx)
		}
		err = errors.Join(err, d.control.Close(stopCtx), d.stopMetrics(stopCtx))
		d.log.Info("superpeer stopped")
	}()

	if d.nat, err = d.startNAT(runCtx); err != nil {
		return err
	}
	d.setPart("nat", "running")
	// Discovery takes seconds behind a filtering NAT (silence is the
	// answer of its filtering tests): the election does not wait for it.
	// The score's reachability follows the first verdict, within the
	// group's bootstrap window.
	wg.Add(1)
	go func() { defer wg.Done(); d.nat.discover(runCtx) }()
	if _, err := os.Stat(filepath.Join(dir, "election", "raft.db")); err == nil {
		// A member that restarts is back in its group at once: its first
		// record should carry the NAT's verdict, or the leader ranks it
		// unknown for a moment and moves the superpeer set twice.
		select {
		case <-d.nat.quickDone:
		case <-d.clock.After(quickDiscoveryWait):
		case <-runCtx.Done():
		}
	}

	if d.node, err = d.startElection(runCtx); err != nil {
		return fmt.Errorf("election: %w", err)
	}
	d.setPart("election", "running")
	wg.Add(1)
	go func() { defer wg.Done(); d.followCapability(runCtx) }()
	if d.cfg.Site.Role == "peer" {
		ac := sip.DefaultAgentConfig()
		ac.Listen = d.cfg.SIP.AgentListen
		ac.TCP = true
		ac.Superpeers = d.superpeerSIPAddrs
		ac.Logger = d.log.With("part", "agent")
		a, err := sip.NewAgent(ac, d.net, d.clock, d.currentSuperpeer)
		if err != nil {
			return fmt.Errorf("desktop agent: %w", err)
		}
		if err := a.Start(runCtx); err != nil {
			return fmt.Errorf("desktop agent: %w", err)
		}
		d.agent = a
		d.setPart("agent", "running on "+ac.Listen)
		for _, name := range []string{"overlay", "sip", "turn"} {
			d.setPart(name, "off: a desktop agent is never a superpeer")
		}
	} else {
		d.setServices(nil)
		wg.Add(1)
		go func() { defer wg.Done(); d.followSet(runCtx) }()
	}

	wg.Add(1)
	go func() { defer wg.Done(); d.trimMemory(runCtx) }()
	wg.Add(1)
	go func() { defer wg.Done(); d.countSetChanges(runCtx) }()

	own := metrics.NewSet()
	own.NewGauge("superpeer_uptime_seconds", func() float64 { return d.clock.Since(d.started).Seconds() })
	own.NewGauge(fmt.Sprintf("superpeer_build_info{version=%q}", Version), func() float64 { return 1 })
	own.NewGauge("superpeer_superpeer", func() float64 {
		if d.node.Superpeers().Contains(d.nodeID.String()) {
			return 1
		}
		return 0
	})
	d.addMetrics(own)
	if err := d.startMetrics(); err != nil {
		return err
	}
	close(d.ready)
	d.log.Info("superpeer started", "version", Version, "node", d.nodeID.Short(), "site", d.secret.SiteID(),
		"state_dir", dir, "control", sock, "config", d.cfg.Source)

	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("control API stopped: %w", err)
	}
	return err
}

// Ready is closed once Run has started every part and serves the control
// socket.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// lockStateDir refuses a second daemon on the same state directory.
func (d *Daemon) lockStateDir(dir string) error {
	f, err := os.OpenFile(filepath.Join(dir, "superpeer.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("state directory lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return fmt.Errorf("state directory %s is in use by another superpeer daemon", dir)
	}
	f.Truncate(0)
	fmt.Fprintf(f, "%d\n", os.Getpid())
	d.lock = f
	return nil
}

func (d *Daemon) setPart(name, state string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range d.parts {
		if d.parts[i].name == name {
			d.parts[i].state = state
			return
		}
	}
	d.parts = append(d.parts, part{name, state})
}

// Status is the answer of `superpeer status`.
type Status struct {
	Version   string    `json:"version"`
	GoVersion string    `json:"go_version"`
	Platform  string    `json:"platform"`
	Node      string    `json:"node"`
	NodeKey   string    `json:"node_key"`
	Site      string    `json:"site"`
	Role      string    `json:"role"`
	Domain    string    `json:"domain"`
	Started   time.Time `json:"started"`
	UptimeSec float64   `json:"uptime_seconds"`
	StateDir  string    `json:"state_dir"`
	Config    string    `json:"config"`
	// Superpeers are the site's committed superpeers (node, SIP address).
	Superpeers []SuperpeerRef `json:"superpeers"`
	// NAT is the one-line summary of `superpeer nat`.
	NAT      string `json:"nat"`
	Lifetime string `json:"lifetime"`
	Pinholes int    `json:"pinholes"`
	Links    int    `json:"overlay_links"`
	Parts    []Part `json:"parts"`
}

// SuperpeerRef is one superpeer of the site in Status.
type SuperpeerRef struct {
	Node string `json:"node"`
	SIP  string `json:"sip"`
	TURN string `json:"turn"`
}

// Part is one capability's state in Status.
type Part struct {
	Name  string `json:"name"`
	State string `json:"state"`
}

// Status reports what the daemon is and does.
func (d *Daemon) Status() Status {
	d.mu.Lock()
	parts := make([]Part, len(d.parts))
	for i, p := range d.parts {
		parts[i] = Part{p.name, p.state}
	}
	d.mu.Unlock()
	st := Status{
		Version:    Version,
		GoVersion:  runtime.Version(),
		Platform:   runtime.GOOS + "/" + runtime.GOARCH,
		Node:       d.nodeID.String(),
		NodeKey:    hex.EncodeToString(d.key.Public().(ed25519.PublicKey)),
		Domain:     d.cfg.Site.Domain,
		Started:    d.started,
		UptimeSec:  d.clock.Since(d.started).Seconds(),
		StateDir:   d.cfg.StateDir(),
		Config:     d.cfg.Source,
		Superpeers: []SuperpeerRef{},
		Parts:      parts,
		Role:       "starting",
	}
	if d.secret != nil {
		st.Site = d.secret.SiteID()
	}
	if d.node != nil {
		set := d.node.Superpeers()
		for _, m := range set.Members {
			st.Superpeers = append(st.Superpeers, SuperpeerRef{Node: m.ID, SIP: m.Services.SIP, TURN: m.Services.TURN})
		}
		es := d.node.Status()
		switch {
		case d.cfg.Site.Role == "peer":
			st.Role = "desktop agent"
		case set.Contains(st.Node):
			st.Role = "superpeer"
		default:
			st.Role = "peer"
		}
		if es.Voter {
			st.Role += ", voter"
		}
		if d.node.IsLeader() {
			st.Role += ", leader"
		}
	}
	if d.nat != nil {
		ns := d.nat.status()
		st.NAT = ns.Reachability
		if ns.Behaviour != nil {
			st.NAT += fmt.Sprintf(" (%s mapping, %s filtering, external %s)", ns.Behaviour.Mapping, ns.Behaviour.Filtering, ns.Behaviour.External.Addr())
		} else if ns.Error != "" {
			st.NAT += " (" + ns.Error + ")"
		}
		est, unc, measured := d.lifetime()
		if measured {
			st.Lifetime = fmt.Sprintf("%v ± %v (measured)", est.Round(time.Second), unc.Round(100*time.Millisecond))
		} else {
			st.Lifetime = "not measured"
		}
		st.Pinholes = len(d.nat.keeper.Snapshot())
	}
	if s := d.services(); s != nil && s.overlay != nil {
		for _, l := range s.overlay.Status().Links {
			if l.Linked {
				st.Links++
			}
		}
	}
	return st
}

func (d *Daemon) routes() {
	get := func(path string, h func() (any, error)) {
		d.control.Handle(http.MethodGet, path, func(context.Context, *http.Request) (any, error) {
			select {
			case <-d.ready:
			default:
				return nil, &control.UnavailableError{What: path, Why: "the daemon is still starting"}
			}
			return h()
		})
	}
	get("/v1/status", func() (any, error) { return d.Status(), nil })
	get("/v1/pinholes", func() (any, error) {
		return struct {
			Pinholes any `json:"pinholes"`
		}{d.nat.keeper.Snapshot()}, nil
	})
	get("/v1/nat", func() (any, error) { return d.nat.status(), nil })
	get("/v1/peers", func() (any, error) { return d.node.Status(), nil })
	get("/v1/discover", func() (any, error) {
		return struct {
			Heard any `json:"heard"`
		}{d.node.Discover()}, nil
	})
	get("/v1/overlay", func() (any, error) {
		s := d.services()
		if s == nil || s.overlay == nil {
			return nil, &control.UnavailableError{What: "overlay", Why: errNotSuperpeer.Error() + " (only superpeers hold overlay links)"}
		}
		return s.overlay.Status(), nil
	})
	get("/v1/sip", func() (any, error) {
		s := d.services()
		if s == nil || s.sip == nil {
			return nil, &control.UnavailableError{What: "sip", Why: errNotSuperpeer.Error()}
		}
		return s.sip.Status(), nil
	})
	get("/v1/turn", func() (any, error) {
		s := d.services()
		if s == nil || s.turn == nil {
			return nil, &control.UnavailableError{What: "turn", Why: errNotSuperpeer.Error()}
		}
		return s.turn.Status(), nil
	})
	get("/v1/join-token", func() (any, error) {
		return struct {
			Site  string `json:"site"`
			Token string `json:"token"`
		}{d.secret.SiteID(), d.secret.Token()}, nil
	})
	d.control.Handle(http.MethodPost, "/v1/turn/credentials", func(ctx context.Context, r *http.Request) (any, error) {
		s := d.services()
		if s == nil || s.turn == nil {
			return nil, &control.UnavailableError{What: "turn", Why: errNotSuperpeer.Error()}
		}
		user := r.URL.Query().Get("user")
		if user == "" {
			user = "lan"
		}
		return s.turn.Credentials(user, d.cfg.TURN.CredentialLifetime)
	})
}

// countSetChanges counts the changes of the committed superpeer set.
func (d *Daemon) countSetChanges(ctx context.Context) {
	var last uint64
	for set := range d.node.WatchSuperpeers(ctx) {
		if last != 0 && set.Epoch != last {
			d.setChanges.Add(1)
		}
		last = set.Epoch
	}
}

// memoryTrimInterval and memoryTrimMin: how often the daemon looks for
// heap memory that is free but still held from the system, and how much
// makes it hand that back. A burst (a site's phones registering at once
// after a power cut, a conference's relays) leaves the heap grown; Go
// returns such memory only slowly, and on a router with 128 MB every
// resident megabyte counts.
const (
	memoryTrimInterval = 30 * time.Second
	memoryTrimMin      = 2 << 20
)

// trimMemory returns free heap memory to the system when there is enough
// of it. It costs one forced garbage collection per interval at most.
func (d *Daemon) trimMemory(ctx context.Context) {
	free := []rtmetrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.clock.After(memoryTrimInterval):
		}
		rtmetrics.Read(free)
		if free[0].Value.Kind() == rtmetrics.KindUint64 && free[0].Value.Uint64() >= memoryTrimMin {
			debug.FreeOSMemory()
		}
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
