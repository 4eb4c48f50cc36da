package election

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// HostCapability measures what this host offers: CPUs, memory available
// (/proc/meminfo) and the one-minute load per CPU (/proc/loadavg), joined
// with what only the daemon knows: the device class and power source (its
// configuration), the reachability nat/ measured, and its uptime. Values
// it cannot read stay zero, which scores lowest.
func HostCapability(class DeviceClass, power Power, reach Reachability, uptime time.Duration) Capability {
	c := Capability{Reachability: reach, Class: class, Power: power, Uptime: uptime, CPUs: runtime.NumCPU()}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		c.FreeMemoryMB = parseMemAvailableMB(f)
		f.Close()
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil && c.CPUs > 0 {
		if l, err := parseLoad1(string(b)); err == nil {
			c.Load = l / float64(c.CPUs)
		}
	}
	return c
}

// parseMemAvailableMB reads MemAvailable (or, on kernels before 3.14,
// MemFree) from /proc/meminfo, in MiB.
func parseMemAvailableMB(f io.Reader) int {
	var free, avail int = -1, -1
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, err := strconv.Atoi(fields[1])
		if err != nil {
			continue
		}
		switch fields[0] {
		case "MemAvailable:":
			avail = kb / 1024
		case "MemFree:":
			free = kb / 1024
		}
	}
	switch {
	case avail >= 0:
		return avail
	case free >= 0:
		return free
	}
	return 0
}

// parseLoad1 reads the one-minute load average from /proc/loadavg.
func parseLoad1(s string) (float64, error) {
	fields := strings.Fields(s)
	if len(fields) == 0 {
		return 0, fmt.Errorf("empty loadavg")
	}
	return strconv.ParseFloat(fields[0], 64)
}
