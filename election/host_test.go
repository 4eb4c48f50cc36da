package election

import (
	"strings"
	"testing"
	"time"
)

func TestHostCapabilityParsing(t *testing.T) {
	cases := []struct {
		meminfo string
		want    int
	}{
		{"MemTotal:  8000000 kB\nMemFree:  100000 kB\nMemAvailable:  2048000 kB\n", 2000},
		{"MemTotal:  65536 kB\nMemFree:  20480 kB\n", 20}, // old kernel: no MemAvailable
		{"garbage", 0},
	}
	for _, c := range cases {
		if got := parseMemAvailableMB(strings.NewReader(c.meminfo)); got != c.want {
			t.Errorf("parseMemAvailableMB(%q) = %d, want %d", c.meminfo, got, c.want)
		}
	}
	if l, err := parseLoad1("0.52 0.58 0.59 1/234 5678\n"); err != nil || l != 0.52 {
		t.Errorf("parseLoad1 = %v, %v", l, err)
	}
	if _, err := parseLoad1(""); err == nil {
		t.Error("parseLoad1 of nothing succeeded")
	}
	c := HostCapability(ClassBoard, PowerMains, ReachEIM, time.Hour)
	if err := c.Validate(); err != nil || c.CPUs < 1 || c.Uptime != time.Hour {
		t.Errorf("HostCapability = %+v, %v", c, err)
	}
}
