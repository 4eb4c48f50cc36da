package firmware

import (
	"bufio"
	"os"
	"strings"
	"testing"

	"github.com/superpeer/superpeer/superpeer/config"
)

// unitSettings reads a systemd unit into key -> values (keys repeat).
func unitSettings(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not key=value", path, line)
		}
		m[k] = append(m[k], v)
	}
	return m
}

// The Debian package's configuration, unit and sysusers file must agree:
// the daemon writes its state where the sandbox lets it, runs as the user
// the package creates, and hands its socket to the group operators join.
func TestDebianPackageAgrees(t *testing.T) {
	data, err := os.ReadFile("debian/superpeer.conf")
	if err != nil {
		t.Fatal(err)
	}
	base, err := config.Parse("(default)", config.Default, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse("/etc/superpeer/superpeer.conf", data, base)
	if err != nil {
		t.Fatalf("the daemon refuses the packaged configuration: %v", err)
	}
	unit := unitSettings(t, "debian/superpeer.service")
	one := func(k string) string {
		t.Helper()
		if len(unit[k]) != 1 {
			t.Fatalf("superpeer.service: %s is set %d times, want once", k, len(unit[k]))
		}
		return unit[k][0]
	}
	want(t, c.StateDir(), "/var/lib/"+one("StateDirectory"))
	want(t, one("ExecStart"), "/usr/bin/superpeer run --config /etc/superpeer/superpeer.conf")
	want(t, one("ProtectSystem"), "strict")
	want(t, one("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE")
	want(t, one("AmbientCapabilities"), "CAP_NET_BIND_SERVICE")
	want(t, one("NoNewPrivileges"), "yes")
	want(t, one("RuntimeDirectory"), "superpeer")
	// The socket lives in the state directory, which the group may enter.
	want(t, c.ControlSocket(), c.StateDir()+"/control.sock")
	want(t, one("StateDirectoryMode"), "0750")
	want(t, c.Daemon.ControlGroup, one("Group"))

	users, err := os.ReadFile("debian/sysusers.conf")
	if err != nil {
		t.Fatal(err)
	}
	var made []string
	for _, line := range strings.Split(string(users), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "u" {
			made = append(made, f[1])
		}
	}
	want(t, made, []string{one("User")})
	want(t, one("User"), one("Group"))
}
