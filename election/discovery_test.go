package election

import (
	"context"
	"crypto/ecdh"
	crand "crypto/rand"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pion/transport/v5/stdnet"
)

// multicastOrSkip opens a multicast announcer on a random port of the
// host network, or skips when the host cannot do multicast.
func multicastOrSkip(t *testing.T, id string, secret *SiteSecret, port int) *MulticastDiscovery {
	t.Helper()
	n, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewMulticastDiscovery(context.Background(), id, MulticastConfig{
		Group:    fmt.Sprintf("%s:%d", DefaultMulticastGroup, port),
		Interval: 100 * time.Millisecond,
		Secret:   secret,
		Net:      n,
		Logger:   testLogger(t),
	})
	if err != nil {
		t.Skipf("this host cannot join a multicast group: %v", err)
	}
	// A multicast send needs a route; hosts without one cannot run this.
	probe, err := net.ListenUDP("udp4", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	if _, err := probe.WriteTo([]byte("x"), &net.UDPAddr{IP: net.ParseIP(DefaultMulticastGroup), Port: port}); err != nil {
		d.Close()
		t.Skipf("this host has no multicast route: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestMulticastAnnouncementsAreAuthenticated(t *testing.T) {
	port := 20000 + rand.IntN(20000)
	site, _ := NewSiteSecret()
	other, _ := NewSiteSecret()
	a := multicastOrSkip(t, "a", site, port)
	b := multicastOrSkip(t, "b", site, port)
	x := multicastOrSkip(t, "x", other, port)

	a.Announce(Announcement{Site: site.SiteID(), ID: "a", Addr: "192.0.2.10:5071", Role: RoleFull, Score: 4000, State: StateMember})
	b.Announce(Announcement{Site: site.SiteID(), ID: "b", Addr: "192.0.2.11:5071", Role: RoleFull, State: StateNew})
	x.Announce(Announcement{Site: other.SiteID(), ID: "x", Addr: "192.0.2.66:5071", Role: RoleFull, State: StateMember})
	// A forgery: the site's ID, a member's name, no valid MAC.
	forged, _ := json.Marshal(Announcement{Site: site.SiteID(), ID: "a", Addr: "192.0.2.66:5071", State: StateMember})
	msg, _ := json.Marshal(wireMessage{A: forged, MAC: make([]byte, 16)})
	conn, err := net.ListenUDP("udp4", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	eventually(t, 10*time.Second, func() (bool, string) {
		conn.WriteTo(msg, &net.UDPAddr{IP: net.ParseIP(DefaultMulticastGroup), Port: port})
		heard := map[string]Heard{}
		for _, h := range b.Peers() {
			heard[h.ID] = h
		}
		ha, hx := heard["a"], heard["x"]
		if !ha.Verified || ha.Addr != "192.0.2.10:5071" || ha.Score != 4000 {
			return false, fmt.Sprintf("b hears a as %+v", ha)
		}
		if hx.ID == "" || hx.Verified {
			return false, fmt.Sprintf("b hears the other site's peer as %+v", hx)
		}
		return true, ""
	})
	// The forgery never displaced the real announcement.
	for range 5 {
		conn.WriteTo(msg, &net.UDPAddr{IP: net.ParseIP(DefaultMulticastGroup), Port: port})
	}
	for _, h := range b.Peers() {
		if h.ID == "a" && h.Addr != "192.0.2.10:5071" {
			t.Errorf("a forged announcement moved a to %s", h.Addr)
		}
	}
	// Only the site's own peers are acted upon.
	for _, h := range verifiedOnly(b.Peers()) {
		if h.ID == "x" {
			t.Error("the other site's peer counts as verified")
		}
	}
}

func TestDNSSDAdvertisesSuperpeerServices(t *testing.T) {
	n, err := stdnet.NewNet()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	adv, err := NewDNSSD(ctx, DNSSDConfig{Self: "sp-1", Net: n, Logger: testLogger(t)})
	if err != nil {
		t.Skipf("no mDNS on this host: %v", err)
	}
	defer adv.Close()
	browser, err := NewDNSSD(ctx, DNSSDConfig{Self: "browser", Net: n, Logger: testLogger(t)})
	if err != nil {
		t.Skipf("no second mDNS responder on this host: %v", err)
	}
	defer browser.Close()

	adv.Update(Announcement{Site: "s1", ID: "sp-1", Addr: "127.0.0.1:5071", Role: RoleFull, Score: 4321,
		State: StateMember, Superpeer: true, Services: Services{SIP: "127.0.0.1:5060", STUN: "127.0.0.1:3478", TURN: "127.0.0.1:3478"}})
	adv.mu.Lock()
	for _, svc := range []string{ServicePeer, ServiceSIP, ServiceSTUN, ServiceTURN} {
		if _, ok := adv.registered[svc]; !ok {
			t.Errorf("%s not advertised by a superpeer", svc)
		}
	}
	adv.mu.Unlock()

	probe := multicastProbe(t)
	deadline := time.Now().Add(8 * time.Second)
	for {
		var got *Heard
		for _, h := range browser.Peers() {
			if h.ID == "sp-1" {
				got = &h
			}
		}
		if got != nil {
			if got.Score != 4321 || !got.Superpeer || got.Verified || got.Source != "dns-sd" {
				t.Errorf("browsed %+v", *got)
			}
			break
		}
		if time.Now().After(deadline) {
			if !probe {
				t.Skip("mDNS queries do not loop back on this host")
			}
			t.Fatal("the browser never found the advertised peer")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// No longer a superpeer: the SIP, STUN and TURN records go.
	adv.Update(Announcement{Site: "s1", ID: "sp-1", Addr: "127.0.0.1:5071", Role: RoleFull, State: StateMember})
	adv.mu.Lock()
	defer adv.mu.Unlock()
	if len(adv.registered) != 1 {
		t.Errorf("after losing the superpeer role %d services stay advertised", len(adv.registered))
	}
}

// multicastProbe reports whether a multicast datagram sent on this host
// comes back to a listener on it.
func multicastProbe(t *testing.T) bool {
	port := 20000 + rand.IntN(20000)
	site, _ := NewSiteSecret()
	n, _ := stdnet.NewNet()
	d, err := NewMulticastDiscovery(context.Background(), "probe-a", MulticastConfig{
		Group: fmt.Sprintf("%s:%d", DefaultMulticastGroup, port), Interval: 50 * time.Millisecond,
		Secret: site, Net: n, Logger: testLogger(t)})
	if err != nil {
		return false
	}
	defer d.Close()
	e, err := NewMulticastDiscovery(context.Background(), "probe-b", MulticastConfig{
		Group: fmt.Sprintf("%s:%d", DefaultMulticastGroup, port), Interval: 50 * time.Millisecond,
		Secret: site, Net: n, Logger: testLogger(t)})
	if err != nil {
		return false
	}
	defer e.Close()
	d.Announce(Announcement{Site: site.SiteID(), ID: "probe-a"})
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if len(e.Peers()) > 0 {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// The production path: nodes that find each other by multicast
// announcements (no in-memory LAN) form one site.
func TestSiteFormsOverMulticastAnnouncements(t *testing.T) {
	if !multicastProbe(t) {
		t.Skip("multicast does not loop back on this host")
	}
	s := newTestSite(t, nil, nil)
	group := fmt.Sprintf("%s:%d", DefaultMulticastGroup, 20000+rand.IntN(20000))
	var nodes []*Node
	for _, c := range []struct {
		id  string
		cap Capability
	}{{"m-router", capRouter}, {"m-board", capBoard}, {"m-desktop", capDesktop}} {
		cfg := s.config(c.id, RoleFull, c.cap, false)
		cfg.MulticastGroup = group
		cfg.Net = newFaultNet(t)
		n, err := Start(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
		t.Cleanup(func() { n.stop() })
	}
	eventually(t, 20*time.Second, func() (bool, string) {
		leader := nodes[0].LeaderID()
		for _, n := range nodes {
			if n.LeaderID() != leader || leader == "" {
				return false, n.id + " follows " + n.LeaderID()
			}
			if len(n.Superpeers().IDs) != 2 || len(n.Status().Members) != 3 {
				return false, fmt.Sprintf("%s: %d members, superpeers %v", n.id, len(n.Status().Members), n.Superpeers().IDs)
			}
		}
		return true, ""
	})
	for _, h := range nodes[2].Discover() {
		if h.Source == "multicast" && !h.Verified {
			t.Errorf("a site peer's announcement is not verified: %+v", h)
		}
	}
}

func TestOperatorApprovedPairing(t *testing.T) {
	port := 20000 + rand.IntN(20000)
	site, _ := NewSiteSecret()
	member := multicastOrSkip(t, "member", site, port)
	n, _ := stdnet.NewNet()

	codes := make(chan string, 1)
	result := make(chan *SiteSecret, 1)
	errs := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	go func() {
		s, err := Pair(ctx, PairConfig{ID: "newcomer", Group: fmt.Sprintf("%s:%d", DefaultMulticastGroup, port), Net: n, Logger: testLogger(t)},
			func(code string) { codes <- code })
		if err != nil {
			errs <- err
			return
		}
		result <- s
	}()
	code := <-codes

	// Until the operator approves, nothing is given away; a wrong code
	// approves nobody.
	eventually(t, 10*time.Second, func() (bool, string) {
		for _, r := range member.PairingRequests() {
			if r.ID == "newcomer" && r.Code == code {
				return true, ""
			}
		}
		return false, fmt.Sprintf("the member hears requests %+v", member.PairingRequests())
	})
	if _, err := member.approve("AAAAA-AAAAA", site); err == nil {
		t.Fatal("approved a code nobody shows")
	}
	select {
	case s := <-result:
		t.Fatalf("the newcomer got a secret (%s) before approval", s.SiteID())
	default:
	}
	if _, err := member.approve(strings.ToLower(code), site); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-result:
		if s.SiteID() != site.SiteID() {
			t.Errorf("the newcomer got site %s, want %s", s.SiteID(), site.SiteID())
		}
	case err := <-errs:
		t.Fatal(err)
	case <-ctx.Done():
		t.Fatal("the newcomer never received the approved secret")
	}
}

func TestPairingOfferOpensOnlyForItsKey(t *testing.T) {
	site, _ := NewSiteSecret()
	newcomer, _ := ecdh.X25519().GenerateKey(crand.Reader)
	eavesdropper, _ := ecdh.X25519().GenerateKey(crand.Reader)
	offer, err := sealOffer(site, pairRequest{ID: "n1", Pub: newcomer.PublicKey().Bytes()})
	if err != nil {
		t.Fatal(err)
	}
	got, err := openOffer(newcomer, "n1", offer)
	if err != nil || got.SiteID() != site.SiteID() {
		t.Fatalf("the newcomer could not open its offer: %v", err)
	}
	if _, err := openOffer(eavesdropper, "n1", offer); err == nil {
		t.Error("another key opened the offer")
	}
	if _, err := openOffer(newcomer, "n2", offer); err == nil {
		t.Error("an offer for one ID opened under another")
	}
	if PairingCode(newcomer.PublicKey().Bytes()) == PairingCode(eavesdropper.PublicKey().Bytes()) {
		t.Error("two keys show the same code")
	}
}
