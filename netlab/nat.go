package netlab

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// natRuleset is the nftables ruleset of a NAT host: forward only what the
// LAN started (plus what miniupnpd maps), masquerade towards the WAN, and
// optionally cap each LAN host's flows. The empty miniupnpd chains are where
// miniupnpd puts its rules (upnp_*_chain in its config).
func natRuleset(lanIf, wanIf string, m Mapping, limit int, limited, trusted []netip.Addr) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet lab {\n")
	if limit > 0 {
		fmt.Fprintf(&b, "  set pinholes { type ipv4_addr; size 65535; flags dynamic; }\n")
	}
	fmt.Fprintf(&b, "  chain forward {\n    type filter hook forward priority filter; policy drop;\n")
	fmt.Fprintf(&b, "    ct state established,related accept\n")
	// LAN hosts talk to each other through the router's bridge; where the
	// host has br_netfilter loaded, that traffic passes this hook too.
	fmt.Fprintf(&b, "    iifname %q oifname %q accept\n", lanIf, lanIf)
	if limit > 0 {
		set := make([]string, len(limited))
		for i, a := range limited {
			set[i] = a.String()
		}
		fmt.Fprintf(&b, "    iifname %q ip saddr { %s } ct state new add @pinholes { ip saddr ct count over %d } counter drop\n",
			lanIf, strings.Join(set, ", "), limit)
	}
	fmt.Fprintf(&b, "    iifname %q oifname %q accept\n", lanIf, wanIf)
	fmt.Fprintf(&b, "    jump miniupnpd\n  }\n")
	fmt.Fprintf(&b, "  chain miniupnpd {\n  }\n")
	// Like a home router's WAN zone (OpenWrt: input reject), the router
	// itself takes no new UDP flows from outside. Without this a probe that
	// finds no mapping leaves a conntrack entry on the router that later
	// collides with a LAN flow to the same peer, and masquerade then moves
	// that flow to another port.
	fmt.Fprintf(&b, "  chain input {\n    type filter hook input priority filter; policy accept;\n")
	// trusted are the lab's STUN server: miniupnpd's ext_perform_stun must
	// hear its CHANGE-REQUEST answers, which come from addresses it never
	// sent to (a real router with a public WAN address does no STUN).
	if len(trusted) > 0 {
		ts := make([]string, len(trusted))
		for i, a := range trusted {
			ts[i] = a.String()
		}
		fmt.Fprintf(&b, "    iifname %q ip saddr { %s } accept\n", wanIf, strings.Join(ts, ", "))
	}
	fmt.Fprintf(&b, "    iifname %q meta l4proto udp ct state new drop\n  }\n", wanIf)
	fmt.Fprintf(&b, "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump prerouting_miniupnpd\n  }\n")
	fmt.Fprintf(&b, "  chain prerouting_miniupnpd {\n  }\n")
	masq := "masquerade"
	if m == Random {
		masq = "masquerade fully-random"
	}
	fmt.Fprintf(&b, "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n")
	fmt.Fprintf(&b, "    jump postrouting_miniupnpd\n    oifname %q %s\n  }\n", wanIf, masq)
	fmt.Fprintf(&b, "  chain postrouting_miniupnpd {\n  }\n}\n")
	return b.String()
}

// startSTUN runs coturn as a STUN-only server on the first WAN host's two
// addresses, which gives it RFC 5780's alternate address and port; miniupnpd
// needs that to learn that its documentation-range address is reachable.
func (l *Lab) startSTUN(ctx context.Context) error {
	h := l.WAN[0]
	// An empty config file: Debian's /etc/turnserver.conf turns RFC 5780 off.
	conf := filepath.Join(l.Dir, "turnserver.conf")
	if err := os.WriteFile(conf, nil, 0o600); err != nil {
		return err
	}
	p, err := h.Start("turnserver", "-c", conf, "--stun-only", "--no-cli", "--no-tls", "--no-dtls",
		"-L", h.Addrs[0].String(), "-L", h.Addrs[1].String(),
		"--listening-port", fmt.Sprint(stunPort), "--log-file", "stdout", "--simple-log",
		"--pidfile", filepath.Join(l.Dir, "turnserver.pid"), "--no-software-attribute")
	if err != nil {
		return err
	}
	l.STUN = netip.AddrPortFrom(h.Addrs[0], stunPort)
	err = Wait(ctx, 20*time.Second, func() error {
		if p.Exited() {
			return fmt.Errorf("turnserver exited: %s", p.Output())
		}
		return h.listening(ctx, "udp", stunPort)
	})
	if err != nil {
		return fmt.Errorf("netlab: STUN server on %s: %w", h.Name, err)
	}
	return nil
}

func (l *Lab) startMiniupnpd(ctx context.Context, s *Site) error {
	dir := filepath.Join(l.Dir, s.NAT.NS)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	conf := fmt.Sprintf(`ext_ifname=wan0
listening_ip=br-lan
http_port=5000
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=yes
ext_perform_stun=yes
ext_stun_host=%s
ext_stun_port=%d
upnp_table_name=lab
upnp_nat_table_name=lab
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
lease_file=%s
uuid=%x-%x-%x-%x-%x
allow 1024-65535 %s 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
`, l.STUN.Addr(), l.STUN.Port(), filepath.Join(dir, "leases"),
		u[0:4], u[4:6], u[6:8], u[8:10], u[10:16], s.LANPrefix)
	path := filepath.Join(dir, "miniupnpd.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return err
	}
	s.upnpConf = path
	s.upnpPID = filepath.Join(dir, "miniupnpd.pid")
	return s.startUPnP(ctx)
}

// startUPnP starts miniupnpd and waits until it serves NAT-PMP and HTTP.
func (s *Site) startUPnP(ctx context.Context) error {
	p, err := s.NAT.Start("miniupnpd", "-f", s.upnpConf, "-d", "-P", s.upnpPID)
	if err != nil {
		return err
	}
	s.upnp = p
	err = Wait(ctx, 20*time.Second, func() error {
		if p.Exited() {
			return fmt.Errorf("miniupnpd exited: %s", p.Output())
		}
		if err := s.NAT.listening(ctx, "udp", 5351); err != nil {
			return err
		}
		return s.NAT.listening(ctx, "tcp", 5000)
	})
	if err != nil {
		return fmt.Errorf("starting miniupnpd: %w", err)
	}
	return nil
}

// UPnP is the site's miniupnpd process, or nil.
func (s *Site) UPnP() *Proc { return s.upnp }

// RestartUPnP stops miniupnpd, removes every mapping it made (its nftables
// rules and its lease file, as a router reboot does) and starts it again.
func (s *Site) RestartUPnP(ctx context.Context) error {
	if s.upnp == nil {
		return fmt.Errorf("netlab: site %s runs no miniupnpd", s.Config.Name)
	}
	s.upnp.Stop()
	for _, chain := range []string{"miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd"} {
		if _, err := s.NAT.Run(ctx, "nft", "flush", "chain", "inet", "lab", chain); err != nil {
			return err
		}
	}
	os.Remove(filepath.Join(filepath.Dir(s.upnpConf), "leases"))
	return s.startUPnP(ctx)
}
