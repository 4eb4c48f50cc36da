// Command sipserve runs the registrar and proxy alone, on the host's
// network, until it is signalled: bench/sip.sh measures it with SIPp
// beside Kamailio. The daemon, not this, is how Superpeer runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/pion/transport/v5/stdnet"

	"github.com/superpeer/superpeer/superpeer/sip"
)

func main() {
	udp := flag.String("udp", "127.0.0.1:5060", "UDP listen address (empty: none)")
	tcp := flag.String("tcp", "", "TCP listen address (empty: none)")
	domain := flag.String("domain", "site.test", "the site's SIP domain")
	lan := flag.String("lan", "127.0.0.0/8", "the site's LAN prefix (registers without credentials)")
	flood := flag.Int("flood", 0, "per-source request limit per 2 s (0: none)")
	verbose := flag.Bool("v", false, "log at debug level")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile to this file")
	memprofile := flag.String("memprofile", "", "write an allocation profile to this file at exit")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "sipserve:", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg := sip.DefaultConfig()
	cfg.NodeID = "bench"
	cfg.Domains = []string{*domain}
	cfg.Listen = nil
	if *udp != "" {
		cfg.Listen = append(cfg.Listen, sip.Listener{Network: "udp", Addr: *udp})
	}
	if *tcp != "" {
		cfg.Listen = append(cfg.Listen, sip.Listener{Network: "tcp", Addr: *tcp})
	}
	p, err := netip.ParsePrefix(*lan)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sipserve: -lan:", err)
		os.Exit(2)
	}
	cfg.LAN = []netip.Prefix{p}
	cfg.Flood.Requests = *flood
	cfg.Logger = log
	n, err := stdnet.NewNet()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sipserve:", err)
		os.Exit(1)
	}
	s, err := sip.New(cfg, n, nil, sip.Deps{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "sipserve:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := s.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "sipserve:", err)
		os.Exit(1)
	}
	<-ctx.Done()
	s.Close()
	if *memprofile != "" {
		if f, err := os.Create(*memprofile); err == nil {
			pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
	}
}
