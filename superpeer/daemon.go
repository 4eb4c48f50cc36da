package superpeer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"

	"github.com/superpeer/superpeer/nat/clock"
	"github.com/superpeer/superpeer/superpeer/config"
	"github.com/superpeer/superpeer/superpeer/control"
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

	mu         sync.Mutex // guards following
	parts      []part
	metricSets []*metrics.Set
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

	d.control = control.NewServer(d.log)
	d.routes()
	sock := d.cfg.ControlSocket()
	if err := d.control.Listen(sock, d.cfg.Daemon.ControlGroup); err != nil {
		return err
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- d.control.Serve() }()

	d.setPart("control", "running")
	for _, name := range []string{"nat", "election", "overlay", "sip", "turn"} {
		d.setPart(name, "not built into this daemon yet")
	}
	own := metrics.NewSet()
	own.NewGauge("superpeer_uptime_seconds", func() float64 { return d.clock.Since(d.started).Seconds() })
	own.NewGauge(fmt.Sprintf("superpeer_build_info{version=%q}", Version), func() float64 { return 1 })
	d.addMetrics(own)
	if err := d.startMetrics(); err != nil {
		d.control.Close(context.Background())
		return err
	}
	close(d.ready)
	d.log.Info("superpeer started", "version", Version, "state_dir", dir, "control", sock, "config", d.cfg.Source)

	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("control API stopped: %w", err)
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cerr := d.control.Close(stopCtx)
	merr := d.stopMetrics(stopCtx)
	d.log.Info("superpeer stopped")
	return errors.Join(err, cerr, merr)
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
	Role      string    `json:"role"`
	Domain    string    `json:"domain"`
	Started   time.Time `json:"started"`
	UptimeSec float64   `json:"uptime_seconds"`
	StateDir  string    `json:"state_dir"`
	Config    string    `json:"config"`
	Parts     []Part    `json:"parts"`
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
	return Status{
		Version:   Version,
		GoVersion: runtime.Version(),
		Platform:  runtime.GOOS + "/" + runtime.GOARCH,
		Role:      "standalone (the election is not built into this daemon yet)",
		Domain:    d.cfg.Site.Domain,
		Started:   d.started,
		UptimeSec: d.clock.Since(d.started).Seconds(),
		StateDir:  d.cfg.StateDir(),
		Config:    d.cfg.Source,
		Parts:     parts,
	}
}

func (d *Daemon) routes() {
	d.control.Handle(http.MethodGet, "/v1/status", func(context.Context, *http.Request) (any, error) {
		return d.Status(), nil
	})
	for path, what := range map[string]string{
		"/v1/pinholes": "the pinhole table (nat)",
		"/v1/nat":      "NAT behaviour discovery (nat)",
		"/v1/peers":    "the site's members (election)",
		"/v1/overlay":  "overlay links (overlay)",
		"/v1/discover": "LAN discovery (election)",
	} {
		d.control.Handle(http.MethodGet, path, func(context.Context, *http.Request) (any, error) {
			return nil, &control.UnavailableError{What: what, Why: "not built into this daemon yet"}
		})
	}
}
