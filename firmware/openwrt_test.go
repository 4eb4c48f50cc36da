package firmware

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/superpeer/superpeer/superpeer/config"
)

// The OpenWrt package's scripts, run by sh with testdata/functions.sh in
// place of OpenWrt's /lib/functions.sh. By default the sources in
// openwrt/; with SUPERPEER_IPK_ROOT set (firmware/test-emulated.sh sets it
// to an unpacked .ipk), the files as the package installs them.
type openwrtFiles struct {
	root    string // IPKG_INSTROOT for the init script ("" for sources)
	uciSh   string
	initSh  string
	uciConf string
}

func packageFiles(t *testing.T) openwrtFiles {
	t.Helper()
	if root := os.Getenv("SUPERPEER_IPK_ROOT"); root != "" {
		return openwrtFiles{
			root:    root,
			uciSh:   filepath.Join(root, "usr/share/superpeer/uci.sh"),
			initSh:  filepath.Join(root, "etc/init.d/superpeer"),
			uciConf: filepath.Join(root, "etc/config/superpeer"),
		}
	}
	// The init script sources $IPKG_INSTROOT/usr/share/superpeer/uci.sh:
	// lay the sources out that way.
	root := t.TempDir()
	dir := filepath.Join(root, "usr/share/superpeer")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("openwrt/uci.sh")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "uci.sh"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	return openwrtFiles{root: root, uciSh: filepath.Join(dir, "uci.sh"), initSh: abs("openwrt/superpeer.init"), uciConf: abs("openwrt/superpeer.uci")}
}

// shell runs script under sh with the shim and uci.sh loaded, the UCI
// directory holding uci as "superpeer", and a fake superpeer binary that
// prints the embedded defaults as `run --print-default-config` does.
func shell(t *testing.T, f openwrtFiles, uci, script string) (stdout, stderr string, err error) {
	t.Helper()
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "superpeer"), []byte(uci), 0o644); err != nil {
		t.Fatal(err)
	}
	defaults := filepath.Join(dir, "default.conf")
	if err := os.WriteFile(defaults, config.Default, 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "superpeer-bin")
	fake := fmt.Sprintf("#!/bin/sh\n[ \"$1 $2\" = \"run --print-default-config\" ] && exec cat %q\nexit 2\n", defaults)
	if err := os.WriteFile(bin, []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	shim, err := filepath.Abs("testdata/functions.sh")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", fmt.Sprintf(". %q; . %q; %s", shim, f.uciSh, script))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "UCI_CONFIG_DIR="+dir, "SUPERPEER_BIN="+bin, "IPKG_INSTROOT=", "SHIM="+shim, "UCISH="+f.uciSh)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// translate returns the daemon configuration superpeer_uci_conf writes
// for uci, parsed the way `superpeer run --config` parses it.
func translate(t *testing.T, uci string) (*config.Config, string, error) {
	t.Helper()
	out, stderr, err := shell(t, packageFiles(t), uci, "superpeer_uci_conf")
	if err != nil {
		return nil, out, fmt.Errorf("translation refused: %v: %s", err, stderr)
	}
	base, err := config.Parse("(default)", config.Default, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse("/var/etc/superpeer.conf", []byte(out), base)
	return c, out, err
}

func TestUCITranslation(t *testing.T) {
	t.Parallel()
	shipped, err := os.ReadFile(packageFiles(t).uciConf)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		uci   string
		check func(t *testing.T, c *config.Config)
	}{
		{"the package's /etc/config/superpeer", string(shipped), func(t *testing.T, c *config.Config) {
			want(t, c.Daemon.StateDir, "/etc/superpeer")
			want(t, c.ControlSocket(), "/var/lib/superpeer/control.sock")
			want(t, c.Site.DeviceClass, "router")
			want(t, c.SIP.Listen, ":5060")
			want(t, c.TURN.Listen, ":3478")
			want(t, c.Overlay.Listen, ":4790")
			want(t, c.Election.Listen, ":5071")
		}},
		{"keys not set keep the defaults", "config site 'site'\n\toption domain 'example.org'\n", func(t *testing.T, c *config.Config) {
			want(t, c.Site.Domain, "example.org")
			want(t, c.SIP.Listen, ":5060")
			want(t, c.Election.Superpeers, 2)
			want(t, c.NAT.PortMapping, true)
		}},
		{"lists become comma-separated lists, in order", `
config nat 'nat'
	list stun_servers 'stun1.example.org:3478'
	list stun_servers '[2001:db8::1]:3478'
	option default_lifetime '45s'
config turn 'turn'
	list allow_peers '192.168.1.0/24'
	option realm 'home'
	list allow_peers 'fd00::/8'
`, func(t *testing.T, c *config.Config) {
			want(t, c.NAT.STUNServers, []string{"stun1.example.org:3478", "[2001:db8::1]:3478"})
			want(t, c.TURN.AllowPeers, []string{"192.168.1.0/24", "fd00::/8"})
			want(t, c.TURN.Realm, "home")
			want(t, c.NAT.DefaultLifetime, 45*time.Second)
		}},
		{"values keep spaces, quotes and #", `
config turn 'turn'
	option realm 'it'\''s "our" #1 realm'
config sip 'sip'
	option tls_listen ':5061'
	option tls_cert '/etc/ssl/my cert.pem'
	option tls_key '/etc/ssl/my key.pem'
`, func(t *testing.T, c *config.Config) {
			want(t, c.TURN.Realm, `it's "our" #1 realm`)
			want(t, c.SIP.TLSCert, "/etc/ssl/my cert.pem")
			want(t, c.SIP.TLSListen, ":5061")
		}},
		{"booleans as UCI writes them", "config nat 'nat'\n\toption port_mapping '0'\nconfig site 'site'\n\toption public '0'\n", func(t *testing.T, c *config.Config) {
			want(t, c.NAT.PortMapping, false)
			want(t, c.Site.Public, false)
		}},
		{"an empty value empties the key", "config metrics 'metrics'\n\toption listen ''\nconfig daemon 'daemon'\n\toption control_group ''\n", func(t *testing.T, c *config.Config) {
			want(t, c.Metrics.Listen, "")
			want(t, c.Daemon.ControlGroup, "")
		}},
		{"anonymous sections, named by their type", "config sip\n\toption listen '192.168.1.1:5070'\nconfig metrics\n\toption listen '127.0.0.1:9464'\n", func(t *testing.T, c *config.Config) {
			want(t, c.SIP.Listen, "192.168.1.1:5070")
			want(t, c.Metrics.Listen, "127.0.0.1:9464")
		}},
		{"the service section is the init script's alone", "config service 'service'\n\toption enabled '1'\n\toption firewall_zone 'guest'\nconfig site 'site'\n\toption role 'peer'\n", func(t *testing.T, c *config.Config) {
			want(t, c.Site.Role, "peer")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, out, err := translate(t, tc.uci)
			if err != nil {
				t.Fatalf("%v\ngenerated:\n%s", err, out)
			}
			tc.check(t, c)
		})
	}
}

func TestUCITranslationRefuses(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, uci string
		// translation is refused by the script (inScript) or the
		// generated file by the daemon; either way the message names it.
		inScript bool
		message  string
	}{
		{"a comma inside a list item", "config nat 'nat'\n\tlist stun_servers 'a:3478,b:3478'\n", true, "list nat.stun_servers: item 'a:3478,b:3478' contains a comma"},
		{"a line break in a value", "config turn 'turn'\n\toption realm 'two\nlines'\n", true, "turn.realm: the value has a line break"},
		{"an unknown option", "config sip 'sip'\n\toption lisen ':5060'\n", false, `unknown key "lisen" in [sip]`},
		{"an unknown section type", "config sipp 'sip'\n\toption listen ':5060'\n", false, "unknown section [sipp]"},
		{"a boolean the daemon does not read", "config nat 'nat'\n\toption port_mapping 'maybe'\n", false, `nat.port_mapping: "maybe" is not true or false`},
		{"a value the daemon refuses", "config election 'election'\n\toption superpeers '9'\n", false, "election.superpeers: must be 1 to 5"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.inScript {
				out, stderr, err := shell(t, packageFiles(t), tc.uci, "superpeer_uci_conf")
				if err == nil {
					t.Fatalf("translated, want refused; generated:\n%s", out)
				}
				if !strings.Contains(stderr, tc.message) {
					t.Fatalf("message %q does not say %q", stderr, tc.message)
				}
				return
			}
			_, out, err := translate(t, tc.uci)
			if err == nil {
				t.Fatalf("accepted, want refused; generated:\n%s", out)
			}
			if !strings.Contains(err.Error(), tc.message) || !strings.Contains(err.Error(), "/var/etc/superpeer.conf:") {
				t.Fatalf("error %q does not say %q at a line of the generated file", err, tc.message)
			}
		})
	}
}

func TestFirewallPorts(t *testing.T) {
	t.Parallel()
	f := packageFiles(t)
	shipped, err := os.ReadFile(f.uciConf)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, uci string
		want      string
	}{
		{"the package's configuration", string(shipped),
			"udp 5353,5060,3478,4790,5071\ntcp 5060,3478,5071\nudp 49152-65535\n"},
		{"nothing configured: the daemon's defaults", "",
			"udp 5353,5060,3478,4790,5071\ntcp 5060,3478,5071\nudp 49152-65535\n"},
		{"moved ports, TLS, a public node's STUN, a narrower relay range", `
config sip 'sip'
	option listen '192.168.1.1:5070'
	option tls_listen ':5061'
config turn 'turn'
	option relay_port_min '50000'
	option relay_port_max '50999'
config nat 'nat'
	option stun_listen '203.0.113.1:3478'
	option stun_alternate '203.0.113.2:3479'
`, "udp 5353,5070,3478,4790,5071,3479\ntcp 5070,3478,5071,5061\nudp 50000-50999\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, stderr, err := shell(t, f, tc.uci, "superpeer_lan_ports")
			if err != nil {
				t.Fatalf("%v: %s", err, stderr)
			}
			if out != tc.want {
				t.Fatalf("ports:\n%s\nwant:\n%s", out, tc.want)
			}
		})
	}
}

// TestFirewallInclude applies the firewall include to a stand-in for fw4's
// table with the real nft, in a network namespace of its own, twice: the
// zone's hosts reach the ports, and a second run changes nothing.
func TestFirewallInclude(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace with an nftables ruleset")
	}
	for _, tool := range []string{"nft", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not installed (CI must run this)", tool)
			}
			t.Skipf("%s not installed", tool)
		}
	}
	f := packageFiles(t)
	uci := "config service 'service'\n\toption firewall_zone 'guest'\nconfig sip 'sip'\n\toption listen ':5070'\n"
	script := `
nft add table inet fw4 && nft add chain inet fw4 input_guest || exit 1
superpeer_firewall || exit 1
superpeer_firewall || exit 1
nft list chain inet fw4 input_guest
nft list chain inet fw4 superpeer_input`
	out, stderr, err := shell(t, f, uci, "unshare --net sh -c "+shellQuote(". \"$SHIM\"; . \"$UCISH\"; "+script))
	if err != nil {
		t.Fatalf("%v: %s\n%s", err, stderr, out)
	}
	if n := strings.Count(out, "jump superpeer_input"); n != 1 {
		t.Errorf("input_guest jumps to superpeer_input %d times, want once:\n%s", n, out)
	}
	for _, rule := range []string{
		"udp dport { 3478, 4790, 5070, 5071, 5353 } accept",
		"tcp dport { 3478, 5070, 5071 } accept",
		"udp dport 49152-65535 accept",
	} {
		if !strings.Contains(out, rule) {
			t.Errorf("no rule %q in:\n%s", rule, out)
		}
	}
}

func TestInitScript(t *testing.T) {
	t.Parallel()
	f := packageFiles(t)
	// procd's helpers, recording what the script asks of procd.
	procd := `
procd_open_instance() { echo "open"; }
procd_set_param() { echo "param $*"; }
procd_close_instance() { echo "close"; }
logger() { echo "logger $*" >&2; }
superpeer_firewall() { echo "firewall"; }
`
	run := func(t *testing.T, root, uci string) (string, string, error) {
		script := fmt.Sprintf("%s IPKG_INSTROOT=%q; . %q; %s start_service", procd, root, f.initSh, procd)
		return shell(t, f, uci, script)
	}
	shipped, err := os.ReadFile(f.uciConf)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "usr/share/superpeer"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(f.uciSh, filepath.Join(root, "usr/share/superpeer/uci.sh")); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(root, "var/etc/superpeer.conf")

	out, stderr, err := run(t, root, string(shipped))
	if err != nil {
		t.Fatalf("start_service: %v: %s", err, stderr)
	}
	for _, line := range []string{
		"firewall",
		"param command /usr/bin/superpeer run --config /var/etc/superpeer.conf",
		"param respawn 3600 5 5",
		"param file /var/etc/superpeer.conf",
		"close",
	} {
		if !strings.Contains(out, line+"\n") {
			t.Errorf("start_service did not %q:\n%s", line, out)
		}
	}
	written, err := os.ReadFile(conf)
	if err != nil {
		t.Fatalf("the daemon's configuration was not written: %v", err)
	}
	base, err := config.Parse("(default)", config.Default, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := config.Parse(conf, written, base); err != nil {
		t.Fatalf("the written configuration is refused: %v", err)
	} else {
		want(t, c.Daemon.StateDir, "/etc/superpeer")
	}

	t.Run("a refused translation keeps the previous configuration and starts nothing", func(t *testing.T) {
		out, stderr, err := run(t, root, "config nat 'nat'\n\tlist stun_servers 'a:1,b:2'\n")
		if err == nil {
			t.Fatalf("start_service succeeded:\n%s", out)
		}
		if strings.Contains(out, "open") {
			t.Errorf("an instance was started:\n%s", out)
		}
		if !strings.Contains(stderr, "contains a comma") {
			t.Errorf("the reason is not logged: %s", stderr)
		}
		now, _ := os.ReadFile(conf)
		if !bytes.Equal(now, written) {
			t.Errorf("the configuration changed:\n%s", now)
		}
	})
	t.Run("disabled", func(t *testing.T) {
		out, _, err := run(t, root, "config service 'service'\n\toption enabled '0'\n")
		if err != nil || strings.Contains(out, "open") {
			t.Fatalf("a disabled service started (err %v):\n%s", err, out)
		}
	})
}

func want[T any](t *testing.T, got, w T) {
	t.Helper()
	if !reflect.DeepEqual(got, w) {
		t.Errorf("got %#v, want %#v", got, w)
	}
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
