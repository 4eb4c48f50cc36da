package superpeer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/pion/transport/v5/stdnet"

	"github.com/superpeer/superpeer/election"
)

// startElection joins or founds the site's group. The site secret comes
// from the state directory; at the first start it is made (a lone machine
// founds its site) unless the configuration carries a join token from a
// member of an existing site.
func (d *Daemon) startElection(ctx context.Context) (*election.Node, error) {
	dir := d.cfg.StateDir()
	secret, err := election.OpenSecret(dir, false)
	if errors.Is(err, election.ErrNoSecret) || (err == nil && secret == nil) {
		if tok := d.cfg.Election.JoinToken; tok != "" {
			secret, err = election.ParseJoinToken(tok)
			if err != nil {
				return nil, fmt.Errorf("election.join_token: %w", err)
			}
			if err := secret.Save(dir); err != nil {
				return nil, fmt.Errorf("saving the site secret: %w", err)
			}
			d.log.Info("joined a site with a join token", "site", secret.SiteID())
		} else {
			secret, err = election.OpenSecret(dir, true)
			if err == nil {
				d.log.Info("founded a new site", "site", secret.SiteID())
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("site secret: %w", err)
	}
	d.secret = secret

	cfg := election.DefaultConfig()
	cfg.NodeID = d.nodeID.String()
	cfg.Role = election.RoleFull
	if d.cfg.Site.Role == "peer" {
		cfg.Role = election.RolePeer
	}
	cfg.Capability = d.capability()
	cfg.Secret = secret
	cfg.DataDir = filepath.Join(dir, "election")
	cfg.Net, cfg.Clock, cfg.Logger = d.net, d.clock, d.log.With("part", "election")
	cfg.BindAddr = d.cfg.Election.Listen
	// The peers dial the LAN address: on a router the first interface
	// is often the WAN, which the group must not use.
	if host, port, err := net.SplitHostPort(cfg.BindAddr); err == nil {
		if ip, err := netip.ParseAddr(host); err == nil && !ip.IsUnspecified() {
			cfg.AdvertiseAddr = cfg.BindAddr
		} else if lan := d.lanAddr(); lan.IsValid() {
			cfg.AdvertiseAddr = net.JoinHostPort(lan.String(), port)
		} else {
			// No network at all (a board before its link comes up, a
			// sandbox): a site of one on loopback, so the daemon still
			// serves its socket; it rejoins the LAN when restarted.
			cfg.BindAddr = net.JoinHostPort("127.0.0.1", port)
			cfg.Discovery = election.NewMemLAN(d.clock, time.Minute).Discovery(cfg.NodeID)
			d.log.Warn("no LAN address: the site's group runs on loopback only")
		}
	}
	cfg.SuperpeerCount = d.cfg.Election.Superpeers
	// pion/mdns opens sockets of its own, outside the Net seam: DNS-SD only
	// where the daemon runs on the host's own network.
	_, onHost := d.net.(*stdnet.Net)
	cfg.DNSSD = onHost && d.cfg.Election.DNSSD
	cfg.Services = d.serviceAddrs(cfg.Role)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n, err := election.Start(ctx, cfg)
	if err != nil && cfg.Discovery == nil {
		// Multicast refused (no multicast route, a sandbox, an emulator
		// without IP_ADD_MEMBERSHIP): the daemon still runs, as a site of
		// one that peers cannot find on the LAN.
		d.log.Warn("LAN discovery unavailable: running without it; other devices cannot find this one", "err", err)
		cfg.Discovery = election.NewMemLAN(d.clock, time.Minute).Discovery(cfg.NodeID)
		n, err = election.Start(ctx, cfg)
	}
	return n, err
}

// serviceAddrs are where this node would serve the LAN as a superpeer.
func (d *Daemon) serviceAddrs(role election.Role) election.Services {
	if role == election.RolePeer {
		return election.Services{}
	}
	lan := d.lanAddr()
	// A listener on one address is served there; one on all addresses
	// is served to the LAN on the LAN address.
	port := func(listen string) string {
		h, p, err := net.SplitHostPort(listen)
		if err != nil {
			return ""
		}
		if ip, err := netip.ParseAddr(h); err == nil && !ip.IsUnspecified() {
			return listen
		}
		if !lan.IsValid() {
			return ""
		}
		return net.JoinHostPort(lan.String(), p)
	}
	s := election.Services{SIP: port(d.cfg.SIP.Listen), TURN: port(d.cfg.TURN.Listen)}
	if d.cfg.Site.Public {
		s.STUN = d.cfg.NAT.STUNListen
	}
	return s
}

// deviceClass is the configured class, or a guess: a host that forwards
// IPv4 is the router; a battery means a laptop; ARM and MIPS boards are
// always-on boards; the rest are desktops.
func (d *Daemon) deviceClass() election.DeviceClass {
	switch c := d.cfg.Site.DeviceClass; c {
	case "router", "board", "desktop", "laptop":
		return election.DeviceClass(c)
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err == nil && strings.TrimSpace(string(b)) == "1" {
		return election.ClassRouter
	}
	if m, _ := filepath.Glob("/sys/class/power_supply/BAT*"); len(m) > 0 {
		return election.ClassLaptop
	}
	if strings.HasPrefix(runtime.GOARCH, "arm") || strings.HasPrefix(runtime.GOARCH, "mips") {
		return election.ClassBoard
	}
	return election.ClassDesktop
}

// capabilityRefresh is how often a running node re-reads what it offers
// (uptime, load, free memory, reachability). The score counts these in
// coarse steps, so most refreshes change nothing that is replicated.
const capabilityRefresh = 30 * time.Second

// capability is what this device offers the site now.
func (d *Daemon) capability() election.Capability {
	class := d.deviceClass()
	power := election.PowerMains
	if class == election.ClassLaptop {
		power = election.PowerBattery
	}
	return election.HostCapability(class, power, electionReach(d.nat.reachability()), d.clock.Since(d.started))
}

// followCapability tells the site what this device offers: at once when
// NAT discovery has a verdict (the reachability the score ranks first),
// then every capabilityRefresh.
func (d *Daemon) followCapability(ctx context.Context) {
	for {
		t := d.clock.NewTimer(capabilityRefresh)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-d.nat.changed:
			t.Stop()
		case <-t.C():
		}
		if err := d.node.SetCapability(d.capability()); err != nil {
			d.log.Warn("updating this device's capability", "err", err)
		}
	}
}
