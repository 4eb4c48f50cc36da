package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultsWorkAlone(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatalf("the embedded defaults are refused: %v", err)
	}
	if c.SIP.Listen != ":5060" || c.Election.Superpeers != 2 || c.Overlay.MaxLinks != 16 {
		t.Fatalf("defaults not applied: sip %q, superpeers %d, links %d", c.SIP.Listen, c.Election.Superpeers, c.Overlay.MaxLinks)
	}
	if c.Metrics.Listen != "" {
		t.Fatal("metrics endpoint must be off by default")
	}
	if c.ControlSocket() != filepath.Join(c.StateDir(), "control.sock") {
		t.Fatalf("control socket %q is not in the state dir %q", c.ControlSocket(), c.StateDir())
	}
}

func TestFileOverridesDefaults(t *testing.T) {
	path := filepath.Join(t.TempDir(), "superpeer.conf")
	os.WriteFile(path, []byte(`
# a comment
[site]
domain = "example.org"
[sip]
listen = 192.0.2.1:5070
flood_window = 5s
[overlay]
bootstrap = 198.51.100.7:4790/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa, 203.0.113.9:4790/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
`), 0o600)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Site.Domain != "example.org" || c.SIP.Listen != "192.0.2.1:5070" || c.SIP.FloodWindow != 5*time.Second {
		t.Fatalf("overrides not applied: %+v %+v", c.Site, c.SIP)
	}
	if len(c.Overlay.Bootstrap) != 2 || c.Overlay.Bootstrap[1] != "203.0.113.9:4790/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb" {
		t.Fatalf("list parsed as %q", c.Overlay.Bootstrap)
	}
	if c.TURN.Listen != ":3478" {
		t.Fatalf("untouched default lost: turn.listen = %q", c.TURN.Listen)
	}
	d, _ := Load("")
	if d.Site.Domain != "home.arpa" {
		t.Fatal("loading a file changed the defaults")
	}
}

func TestBadFileRefusedWithLineAndReason(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		line       int
		reason     string
	}{
		{"unknown section", "[sip]\nlisten = :5060\n[sipp]\n", 3, "unknown section [sipp]"},
		{"unknown key", "[sip]\n\nlisen = :5060\n", 3, `unknown key "lisen" in [sip]`},
		{"no equals", "[turn]\nrealm\n", 2, "want key = value"},
		{"outside section", "domain = x\n", 1, "outside any [section]"},
		{"bad number", "[election]\nsuperpeers = two\n", 2, `"two" is not a whole number`},
		{"bad duration", "[sip]\nflood_ban = 5 minutes\n", 2, "not a duration"},
		{"bad bool", "[site]\npublic = yes please\n", 2, "not true or false"},
		{"duplicate", "[sip]\nlisten = :1\nlisten = :2\n", 3, "set twice (first on line 2)"},
		{"unclosed header", "[sip\n", 1, "no closing ]"},
		{"validated value", "# x\n[election]\nsuperpeers = 9\n", 3, "election.superpeers: must be 1 to 5"},
		{"bad listen", "[sip]\nlisten = localhost:5060\n", 2, "listen on an IP address"},
		{"bad port", "[turn]\nlisten = :99999\n", 2, "out of range"},
		{"bad prefix", "[turn]\nallow_peers = 192.168.1.0/24, lan\n", 2, `"lan" is not a prefix`},
		{"bad bootstrap", "[overlay]\nbootstrap = 203.0.113.1:4790\n", 2, "want host:port/nodekey"},
		{"bad node key", "[overlay]\nbootstrap = 203.0.113.1:4790/abc\n", 2, "64 hex digits"},
		{"public without stun", "[site]\npublic = true\n", 2, "needs nat.stun_listen"},
		{"binary", "\xff\xfe[sip]\n", 0, "not UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("test.conf", []byte(tc.file), mustDefault(t))
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("want a *config.Error, got %v", err)
			}
			if ce.Line != tc.line || !strings.Contains(ce.Reason, tc.reason) {
				t.Fatalf("got %q, want line %d with %q", err, tc.line, tc.reason)
			}
			if !strings.HasPrefix(err.Error(), "test.conf:") {
				t.Fatalf("message %q does not name the file", err)
			}
		})
	}
}

func mustDefault(t *testing.T) *Config {
	t.Helper()
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func FuzzParse(f *testing.F) {
	f.Add(Default)
	f.Add([]byte("[sip]\nlisten = :5060\n"))
	f.Add([]byte("[x"))
	f.Fuzz(func(t *testing.T, data []byte) {
		base := mustDefault(t)
		c, err := Parse("fuzz.conf", data, base)
		if err == nil && c == nil {
			t.Fatal("nil config without an error")
		}
		if base.Site.Domain != "home.arpa" || len(base.Overlay.Bootstrap) != 0 {
			t.Fatal("parsing changed the base configuration")
		}
	})
}
