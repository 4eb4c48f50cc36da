// Command superpeer is the Superpeer appliance: `superpeer run` is the
// daemon; the other subcommands inspect a running daemon through its local
// control socket. This file parses flags and dispatches, nothing more.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"syscall"
	"time"

	"github.com/superpeer/superpeer/superpeer"
	"github.com/superpeer/superpeer/superpeer/config"
	"github.com/superpeer/superpeer/superpeer/control"
)

type command struct {
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

var commands = map[string]command{
	"run":      {"run the daemon", runDaemon},
	"status":   {"role, superpeer set, NAT summary, uptime, versions", query("/v1/status", true)},
	"pinholes": {"the NAT pinholes this node keeps open", query("/v1/pinholes", true)},
	"peers":    {"the site's members and their scores; --join-token for a new device", peersCommand},
	"overlay":  {"overlay links and routing-table health", query("/v1/overlay", true)},
	"discover": {"what is on the LAN, with roles", query("/v1/discover", false)},
	"nat":      {"the NAT's behaviour and binding lifetime", natCommand},
	"version":  {"print the version", version},
}

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return control.ExitUsage
		}
		return control.ExitOK
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "superpeer: unknown command %q\n\n", args[0])
		usage(stderr)
		return control.ExitUsage
	}
	return c.run(args[1:], stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: superpeer <command> [flags]")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-9s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\n`superpeer <command> -h` lists a command's flags. Exit codes: 0 ok, 1 error,")
	fmt.Fprintln(w, "2 usage, 3 no daemon answers, 4 the daemon lacks that capability.")
}

func runDaemon(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("superpeer run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (default: the built-in defaults)")
	stateDir := fs.String("state-dir", "", "state directory (overrides the configuration)")
	role := fs.String("role", "", "auto or peer (a desktop agent); overrides the configuration")
	printDefault := fs.Bool("print-default-config", false, "print the built-in configuration and exit")
	if err := fs.Parse(args); err != nil {
		return control.ExitUsage
	}
	if *printDefault {
		stdout.Write(config.Default)
		return control.ExitOK
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "superpeer: %v\n", err)
		return control.ExitError
	}
	if *stateDir != "" {
		cfg.Daemon.StateDir = *stateDir
	}
	if *role != "" {
		cfg.Site.Role = *role
		if err := cfg.Validate(); err != nil {
			fmt.Fprintf(stderr, "superpeer: --role: %v\n", err)
			return control.ExitUsage
		}
	}
	d, err := superpeer.New(cfg, superpeer.Options{LogOutput: stderr})
	if err != nil {
		fmt.Fprintf(stderr, "superpeer: %v\n", err)
		return control.ExitError
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := d.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "superpeer: %v\n", err)
		return control.ExitError
	}
	return control.ExitOK
}

// clientFlags are the flags every ops subcommand shares.
type clientFlags struct {
	fs       *flag.FlagSet
	socket   *string
	cfgPath  *string
	stateDir *string
	json     *bool
	watch    *time.Duration
}

func newClientFlags(name string, watch bool, stderr io.Writer) *clientFlags {
	fs := flag.NewFlagSet("superpeer "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &clientFlags{
		fs:       fs,
		socket:   fs.String("socket", "", "the daemon's control socket (default: from the configuration)"),
		cfgPath:  fs.String("config", "", "the daemon's configuration file, to find its socket"),
		stateDir: fs.String("state-dir", "", "the daemon's state directory, to find its socket"),
		json:     fs.Bool("json", false, "print JSON for programs"),
	}
	if watch {
		f.watch = fs.Duration("watch", 0, "repeat every interval (e.g. 2s) until interrupted")
	}
	return f
}

func (f *clientFlags) client() (*control.Client, error) {
	if *f.socket != "" {
		return control.NewClient(*f.socket), nil
	}
	cfg, err := config.Load(*f.cfgPath)
	if err != nil {
		return nil, err
	}
	if *f.stateDir != "" {
		cfg.Daemon.StateDir = *f.stateDir
	}
	return control.NewClient(cfg.ControlSocket()), nil
}

// query returns a subcommand that fetches path from the daemon and prints
// it for people or, with --json, as JSON.
func query(path string, watch bool) func([]string, io.Writer, io.Writer) int {
	return func(args []string, stdout, stderr io.Writer) int {
		name := path[len("/v1/"):]
		f := newClientFlags(name, watch, stderr)
		if err := f.fs.Parse(args); err != nil {
			return control.ExitUsage
		}
		if f.fs.NArg() > 0 {
			fmt.Fprintf(stderr, "superpeer %s: unexpected argument %q\n", name, f.fs.Arg(0))
			return control.ExitUsage
		}
		c, err := f.client()
		if err != nil {
			fmt.Fprintf(stderr, "superpeer %s: %v\n", name, err)
			return control.ExitError
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		interval := time.Duration(0)
		if f.watch != nil {
			interval = *f.watch
		}
		for {
			var raw json.RawMessage
			err := c.Get(ctx, path, &raw)
			if err == nil {
				err = show(stdout, raw, *f.json, interval > 0)
			}
			if err != nil {
				if ctx.Err() != nil {
					return control.ExitOK
				}
				fmt.Fprintf(stderr, "superpeer %s: %v\n", name, err)
				return control.ExitCode(err)
			}
			if interval <= 0 {
				return control.ExitOK
			}
			select {
			case <-ctx.Done():
				return control.ExitOK
			case <-time.After(interval):
			}
		}
	}
}

func show(w io.Writer, raw []byte, asJSON, watching bool) error {
	if asJSON {
		var compact json.RawMessage = raw
		out, err := json.Marshal(compact)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", out)
		return err
	}
	if watching {
		fmt.Fprint(w, "\033[H\033[2J") // clear the terminal between refreshes
	}
	return control.Render(w, raw)
}

// peersCommand is `superpeer peers`, or with --join-token the token an
// operator copies into a new device's configuration ([election]
// join_token) to join it to this site.
func peersCommand(args []string, stdout, stderr io.Writer) int {
	f := newClientFlags("peers", true, stderr)
	token := f.fs.Bool("join-token", false, "print the site's join token for a new device ([election] join_token); keep it secret")
	if err := f.fs.Parse(args); err != nil {
		return control.ExitUsage
	}
	if !*token {
		return query("/v1/peers", true)(args, stdout, stderr)
	}
	if f.fs.NArg() > 0 {
		fmt.Fprintf(stderr, "superpeer peers: unexpected argument %q\n", f.fs.Arg(0))
		return control.ExitUsage
	}
	c, err := f.client()
	if err != nil {
		fmt.Fprintf(stderr, "superpeer peers: %v\n", err)
		return control.ExitError
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var jt struct {
		Site  string `json:"site"`
		Token string `json:"token"`
	}
	if err := c.Get(ctx, "/v1/join-token", &jt); err != nil {
		fmt.Fprintf(stderr, "superpeer peers: %v\n", err)
		return control.ExitCode(err)
	}
	if *f.json {
		if err := json.NewEncoder(stdout).Encode(jt); err != nil {
			return control.ExitError
		}
		return control.ExitOK
	}
	fmt.Fprintln(stdout, jt.Token)
	return control.ExitOK
}

func natCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("superpeer nat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stun := fs.String("stun", "", "ask this RFC 5780 STUN server (host:port) from this host, without the daemon")
	lifetime := fs.Bool("lifetime", false, "with --stun: also measure the UDP binding lifetime (takes a little longer than the lifetime)")
	maxLife := fs.Duration("max-lifetime", 0, "with --lifetime: the longest lifetime probed (default 10m)")
	asJSON := fs.Bool("json", false, "print JSON for programs")
	socket := fs.String("socket", "", "the daemon's control socket")
	cfgPath := fs.String("config", "", "the daemon's configuration file, to find its socket")
	stateDir := fs.String("state-dir", "", "the daemon's state directory, to find its socket")
	if err := fs.Parse(args); err != nil {
		return control.ExitUsage
	}
	if *stun == "" {
		if *lifetime {
			fmt.Fprintln(stderr, "superpeer nat: --lifetime needs --stun HOST:PORT (the daemon reports its own measurement without it)")
			return control.ExitUsage
		}
		var fwd []string
		for _, f := range []struct{ name, v string }{{"socket", *socket}, {"config", *cfgPath}, {"state-dir", *stateDir}} {
			if f.v != "" {
				fwd = append(fwd, "--"+f.name, f.v)
			}
		}
		if *asJSON {
			fwd = append(fwd, "--json")
		}
		return query("/v1/nat", false)(fwd, stdout, stderr)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	check := superpeer.NATCheck{Server: *stun, Lifetime: *lifetime, MaxLifetime: *maxLife, JSON: *asJSON}
	if err := check.Run(ctx, stdout); err != nil {
		fmt.Fprintf(stderr, "superpeer nat: %v\n", err)
		return control.ExitError
	}
	return control.ExitOK
}

func version(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("superpeer version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON for programs")
	if err := fs.Parse(args); err != nil {
		return control.ExitUsage
	}
	v := struct {
		Version   string `json:"version"`
		GoVersion string `json:"go_version"`
		Platform  string `json:"platform"`
	}{superpeer.Version, runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH}
	if *asJSON {
		if err := json.NewEncoder(stdout).Encode(v); err != nil {
			return control.ExitError
		}
		return control.ExitOK
	}
	fmt.Fprintf(stdout, "superpeer %s (%s, %s)\n", v.Version, v.GoVersion, v.Platform)
	return control.ExitOK
}
