// Command netlab brings a lab topology up by hand, for debugging:
//
//	go run ./netlab/cmd/netlab up --sites pp,random+upnp --wan 2
//
// prints every host with its namespace and addresses and keeps the lab up
// until Ctrl-C; `ip netns exec <namespace> <program>` runs a program on a
// host meanwhile. `sweep` removes what killed runs left behind; `leftovers`
// does the same but fails when there was anything to remove.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/superpeer/superpeer/netlab"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "up":
		up(os.Args[2:])
	case "sweep":
		for _, ns := range netlab.Sweep() {
			fmt.Println("removed", ns)
		}
	case "leftovers":
		removed := netlab.Sweep()
		for _, ns := range removed {
			fmt.Println("left behind:", ns)
		}
		if len(removed) > 0 {
			os.Exit(1)
		}
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: netlab up [--wan N] [--sites KIND,KIND...] [--udp-timeout D] [--stream-timeout D] [--limit N] [--lan N]
       netlab sweep | leftovers
KIND is pp (port-preserving) or random, optionally with +upnp (miniupnpd) and +cgnat (double NAT).`)
	os.Exit(2)
}

func up(args []string) {
	fs := flag.NewFlagSet("netlab up", flag.ExitOnError)
	wan := fs.Int("wan", 1, "WAN hosts")
	sites := fs.String("sites", "pp,random", "sites, comma-separated")
	udp := fs.Duration("udp-timeout", 0, "conntrack UDP timeout of unreplied flows (0: kernel default)")
	stream := fs.Duration("stream-timeout", 0, "conntrack UDP timeout of stream flows (0: kernel default)")
	limit := fs.Int("limit", 0, "pinhole limit per LAN host (0: none)")
	lan := fs.Int("lan", 1, "LAN hosts per site")
	fs.Parse(args)

	topo := netlab.Topology{WANHosts: *wan}
	for _, s := range strings.Split(*sites, ",") {
		sc := netlab.SiteConfig{UDPTimeout: *udp, UDPStreamTimeout: *stream, PinholeLimit: *limit, LANHosts: *lan}
		for i, part := range strings.Split(s, "+") {
			switch {
			case i == 0 && part == "pp":
				sc.Mapping = netlab.PortPreserving
			case i == 0 && part == "random":
				sc.Mapping = netlab.Random
			case i > 0 && part == "upnp":
				sc.UPnP = true
			case i > 0 && part == "cgnat":
				sc.CGNAT = true
			default:
				fmt.Fprintf(os.Stderr, "netlab: unknown site kind %q\n", s)
				os.Exit(2)
			}
		}
		topo.Sites = append(topo.Sites, sc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	lab, err := netlab.New(ctx, topo)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer lab.Close()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tNAMESPACE\tADDRESSES")
	for _, h := range lab.Hosts() {
		var as []string
		for _, a := range h.Addrs {
			as = append(as, a.String())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", h.Name, h.NS, strings.Join(as, " "))
	}
	tw.Flush()
	for _, s := range lab.Sites {
		fmt.Printf("%s: %s NAT, external %s, LAN %s\n", s.Config.Name, s.Config.Mapping, s.External, s.LANPrefix)
	}
	if lab.STUN.IsValid() {
		fmt.Printf("STUN (coturn) at %s\n", lab.STUN)
	}
	fmt.Println("\nup; Ctrl-C tears it down.")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}
