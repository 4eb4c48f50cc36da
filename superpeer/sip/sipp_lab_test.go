package sip

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/superpeer/superpeer/netlab"
)

// needSIPp skips (or, under CI, fails) without SIPp.
func needSIPp(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("sipp"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("sipp is not installed (Debian sip-tester); CI must run this test")
		}
		t.Skip("sipp is not installed (Debian sip-tester)")
	}
}

// scenario writes a SIPp scenario of testdata/sipp into dir with the
// proxy's address filled in, and returns its path.
func scenario(t *testing.T, dir, name string, proxy netip.AddrPort) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "sipp", name))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(b), "@PROXY@", regexp.QuoteMeta(proxy.String()))), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSIPpCallsWithinSite runs the superpeer in-process on a LAN host of
// a site, SIPp as UAS on a second host registering sip:bob@site.test, and
// SIPp as UAC on a third host calling bob 100 times with G.711 media: all
// 100 calls succeed, every BYE reaches the UAS through the proxy (the UAS
// scenario fails a call otherwise), and the media anchored in the
// superpeer flows to the UAS and, echoed, back to the UAC.
func TestSIPpCallsWithinSite(t *testing.T) {
	needSIPp(t)
	lab := netlab.Start(t, netlab.Topology{Sites: []netlab.SiteConfig{{Mapping: netlab.PortPreserving, LANHosts: 3}}})
	site := lab.Sites[0]
	spHost, uasHost, uacHost := site.LAN[0], site.LAN[1], site.LAN[2]
	n, err := spHost.Net()
	if err != nil {
		t.Fatal(err)
	}
	relay := NewUDPRelay(n, spHost.Addr)
	defer relay.Close()
	proxy := netip.AddrPortFrom(spHost.Addr, 5060)
	cfg := DefaultConfig()
	cfg.NodeID = "sp-" + spHost.Name
	cfg.Domains = []string{"site.test"}
	cfg.Listen = []Listener{{Network: "udp", Addr: proxy.String()}, {Network: "tcp", Addr: proxy.String()}}
	cfg.LAN = []netip.Prefix{site.LANPrefix}
	// SIPp as a UAC is a whole office calling from one address.
	cfg.Flood.Exempt = []netip.Prefix{site.LANPrefix}
	cfg.Anchor = AnchorAlways
	cfg.Logger = testLogger()
	s, err := New(cfg, n, nil, Deps{Media: relay})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	dir := t.TempDir()
	uasIP, uacIP := uasHost.Addr.String(), uacHost.Addr.String()
	uas, err := uasHost.Start("sipp", "-sf", scenario(t, dir, "uas.xml", proxy), "-i", uasIP, "-p", "5070",
		"-mi", uasIP, "-mp", "6000", "-rtp_echo")
	if err != nil {
		t.Fatal(err)
	}
	defer uas.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	reg := uasHost.Command(ctx, "sipp", proxy.String(), "-sf", scenario(t, dir, "register.xml", proxy),
		"-s", "bob", "-key", "domain", "site.test", "-key", "uasport", "5070", "-i", uasIP, "-p", "5071", "-mp", "6100",
		"-m", "1", "-timeout", "20s", "-timeout_error")
	reg.Dir = dir
	if out, err := reg.CombinedOutput(); err != nil {
		t.Fatalf("SIPp REGISTER failed: %v\n%s\nUAS:\n%s", err, tail(out), uas.Output())
	}

	uac := uacHost.Command(ctx, "sipp", proxy.String(), "-sf", scenario(t, dir, "uac_rtp.xml", proxy),
		"-s", "bob", "-key", "domain", "site.test", "-i", uacIP, "-p", "5061", "-mi", uacIP, "-mp", "6000",
		"-m", "100", "-r", "20", "-d", "1000", "-timeout", "120s", "-timeout_error")
	uac.Dir = dir
	out, err := uac.CombinedOutput()
	if err != nil {
		t.Fatalf("SIPp UAC: %v (not every call succeeded)\n%s\nUAS:\n%s", err, tail(out), head(uas.Output()))
	}
	if m := regexp.MustCompile(`Successful call\s*\|\s*\d+\s*\|\s*(\d+)`).FindSubmatch(out); m == nil || string(m[1]) != "100" {
		t.Errorf("SIPp did not report 100 successful calls:\n%s", tail(out))
	}
	if st := s.Status(); st.Proxy.Forwarded < 200 {
		t.Errorf("the proxy forwarded %d requests, want at least 200 (100 INVITEs and 100 BYEs)", st.Proxy.Forwarded)
	}
	if relay.ToCallee.Load() == 0 || relay.ToCaller.Load() == 0 {
		t.Errorf("media did not go both ways through the relay: %d packets to the UAS, %d back to the UAC",
			relay.ToCallee.Load(), relay.ToCaller.Load())
	}
	netlab.Eventually(t, 10*time.Second, func() error {
		if n := relay.Sessions(); n != 0 {
			return fmt.Errorf("%d calls still hold relay sockets after their BYE", n)
		}
		return nil
	})
}

// tail returns the last 3000 bytes of out, for failure messages.
func tail(out []byte) string {
	if len(out) > 3000 {
		out = out[len(out)-3000:]
	}
	return string(out)
}

// head returns the first 3000 bytes of out, for failure messages.
func head(out string) string {
	if len(out) > 3000 {
		out = out[:3000]
	}
	return out
}
