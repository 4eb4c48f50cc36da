package election

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pion/logging"
	"github.com/pion/mdns/v2"
	"github.com/pion/transport/v5"
	"golang.org/x/net/ipv4"

	"github.com/superpeer/superpeer/nat/clock"
)

// DNS-SD service types (RFC 6763). Every peer advertises ServicePeer;
// superpeers also advertise the services softphones and desktop agents
// look for.
const (
	ServicePeer = "_superpeer._udp"
	ServiceSIP  = "_sip._udp"
	ServiceSTUN = "_stun._udp"
	ServiceTURN = "_turn._udp"
)

// DNSSD advertises a peer over multicast DNS (RFC 6762) with DNS-SD
// records, and browses for the site's other peers. What it hears is listed
// by `superpeer discover` but never trusted by the group: DNS-SD carries
// no authentication, so the group relies on the signed multicast
// announcements instead.
type DNSSD struct {
	conn  *mdns.Conn
	pc    net.PacketConn
	ip    net.IP
	log   *slog.Logger
	table *heardTable

	mu         sync.Mutex // guards following
	registered map[string]mdns.ServiceInstance
}

// DNSSDConfig configures DNSSD.
type DNSSDConfig struct {
	// Self is this peer's node ID (its own records are not reported).
	Self string
	// IP is the address the records point at (the group's advertised IP).
	IP    net.IP
	Net   transport.Net
	Clock clock.Clock
	// TTL is how long a browsed peer is listed without being heard again.
	TTL    time.Duration
	Logger *slog.Logger
}

// NewDNSSD binds the mDNS port through Net and starts browsing for peers.
func NewDNSSD(ctx context.Context, cfg DNSSDConfig) (*DNSSD, error) {
	if cfg.Net == nil {
		return nil, errNoNet
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 2 * time.Minute
	}
	lc := cfg.Net.CreateListenConfig(&net.ListenConfig{Control: reuseAddr})
	pc, err := lc.ListenPacket(ctx, "udp4", "0.0.0.0:5353")
	if err != nil {
		return nil, fmt.Errorf("listening for mDNS on UDP 5353: %w", err)
	}
	ifaces, err := cfg.Net.Interfaces()
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("listing interfaces for mDNS: %w", err)
	}
	var use []net.Interface
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp != 0 && ifc.Flags&net.FlagMulticast != 0 {
			use = append(use, ifc.Interface)
		}
	}
	host := dnsLabel(cfg.Self) + "-superpeer.local"
	opts := []mdns.ServerOption{
		mdns.WithName("superpeer-" + cfg.Self),
		mdns.WithLocalNames(host),
		mdns.WithInterfaces(use...),
		mdns.WithIncludeLoopback(true),
		mdns.WithLoggerFactory(pionLogs()),
		mdns.WithResponseTTL(120),
	}
	if cfg.IP != nil {
		opts = append(opts, mdns.WithLocalAddress(cfg.IP))
	}
	conn, err := mdns.NewServer(ipv4.NewPacketConn(pc), nil, opts...)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("starting mDNS on %d interfaces: %w", len(use), err)
	}
	d := &DNSSD{
		conn: conn, pc: pc, ip: cfg.IP, log: cfg.Logger,
		table:      newHeardTable(cfg.Self, cfg.TTL, clock.OrReal(cfg.Clock)),
		registered: map[string]mdns.ServiceInstance{},
	}
	conn.OnServiceDiscovered(d.heard)
	if err := conn.Browse(ctx, ServicePeer); err != nil {
		conn.Close()
		return nil, fmt.Errorf("browsing for %s: %w", ServicePeer, err)
	}
	return d, nil
}

// dnsLabel makes a node ID safe as a DNS label.
func dnsLabel(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '-' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	return strings.Trim(b.String(), "-")
}

// Update advertises a: the peer record always, the SIP, STUN and TURN
// records while a.Superpeer (for each service that has an address).
func (d *DNSSD) Update(a Announcement) {
	_, groupPort, _ := net.SplitHostPort(a.Addr)
	want := map[string]mdns.ServiceInstance{}
	txt := []mdns.TXTEntry{
		mdns.NewTXTString("id", a.ID),
		mdns.NewTXTString("site", a.Site),
		mdns.NewTXTString("role", string(a.Role)),
		mdns.NewTXTString("score", strconv.Itoa(a.Score)),
		mdns.NewTXTString("state", string(a.State)),
		mdns.NewTXTString("superpeer", strconv.FormatBool(a.Superpeer)),
	}
	if a.Leader != "" {
		txt = append(txt, mdns.NewTXTString("leader", a.Leader))
	}
	if p, err := strconv.Atoi(groupPort); err == nil {
		want[ServicePeer] = mdns.ServiceInstance{Instance: instanceName(a.ID), Service: ServicePeer, Port: uint16(p), Text: txt}
	}
	if a.Superpeer {
		for svc, addr := range map[string]string{ServiceSIP: a.Services.SIP, ServiceSTUN: a.Services.STUN, ServiceTURN: a.Services.TURN} {
			_, port, err := net.SplitHostPort(addr)
			p, perr := strconv.Atoi(port)
			if err != nil || perr != nil {
				continue
			}
			want[svc] = mdns.ServiceInstance{Instance: "Superpeer " + instanceName(a.ID), Service: svc, Port: uint16(p),
				Text: []mdns.TXTEntry{mdns.NewTXTString("site", a.Site), mdns.NewTXTString("id", a.ID)}}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for svc, old := range d.registered {
		if nw, ok := want[svc]; !ok || nw.Instance != old.Instance || nw.Port != old.Port {
			d.conn.Unregister(old.Instance, svc)
			delete(d.registered, svc)
		}
	}
	for svc, si := range want {
		old, ok := d.registered[svc]
		switch {
		case !ok:
			if err := d.conn.Register(si); err != nil {
				d.log.Warn("advertising a DNS-SD service failed", "service", svc, "err", err)
				continue
			}
		case !txtEqual(old.Text, si.Text):
			if err := d.conn.UpdateTXT(si.Instance, svc, si.Text); err != nil {
				d.log.Debug("updating a DNS-SD TXT record failed", "service", svc, "err", err)
			}
		}
		d.registered[svc] = si
	}
}

func txtEqual(a, b []mdns.TXTEntry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Key != b[i].Key || string(a[i].Value) != string(b[i].Value) {
			return false
		}
	}
	return true
}

func (d *DNSSD) heard(ev mdns.ServiceEvent) {
	if ev.Instance.Service != ServicePeer {
		return
	}
	txt := map[string]string{}
	for _, e := range ev.Instance.Text {
		txt[e.Key] = string(e.Value)
	}
	score, _ := strconv.Atoi(txt["score"])
	a := Announcement{
		Site: txt["site"], ID: txt["id"], Role: Role(txt["role"]), Score: score,
		State: PeerState(txt["state"]), Leader: txt["leader"], Superpeer: txt["superpeer"] == "true",
		Addr: net.JoinHostPort(ev.Addr.String(), strconv.Itoa(int(ev.Instance.Port))),
	}
	if a.ID == "" {
		a.ID = ev.Instance.Instance
	}
	d.table.add(Heard{Announcement: a, From: ev.Addr.String(), Source: "dns-sd"})
}

// Peers returns the peers heard by DNS-SD (never verified).
func (d *DNSSD) Peers() []Heard { return d.table.list() }

// Close stops advertising and browsing.
func (d *DNSSD) Close() error {
	err := d.conn.Close()
	d.pc.Close()
	return err
}

// quietPionLogs drops pion's own logging: mDNS on a busy LAN is chatty.
type quietPionLogs struct{}

func (quietPionLogs) NewLogger(string) logging.LeveledLogger { return quietLogger{} }

type quietLogger struct{}

func (quietLogger) Trace(string)          {}
func (quietLogger) Tracef(string, ...any) {}
func (quietLogger) Debug(string)          {}
func (quietLogger) Debugf(string, ...any) {}
func (quietLogger) Info(string)           {}
func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Warn(string)           {}
func (quietLogger) Warnf(string, ...any)  {}
func (quietLogger) Error(string)          {}
func (quietLogger) Errorf(string, ...any) {}

func pionLogs() logging.LoggerFactory {
	if os.Getenv("ELECTION_PION_LOG") != "" {
		f := logging.NewDefaultLoggerFactory()
		f.DefaultLogLevel = logging.LogLevelTrace
		return f
	}
	return quietPionLogs{}
}

// instanceName is a node ID short enough for a DNS-SD instance label (63
// bytes, RFC 6763 section 4.1.1); the whole ID rides in the TXT record.
func instanceName(id string) string {
	if len(id) > 16 {
		return id[:16]
	}
	return id
}
