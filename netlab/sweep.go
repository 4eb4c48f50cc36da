package netlab

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Sweep removes the namespaces of labs whose owning process is gone (a test
// binary killed by a timeout or SIGKILL gets no chance to clean up). It
// returns the names it removed.
func Sweep() []string {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil
	}
	var removed []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		name := f[0]
		pid, ok := ownerPID(name)
		if !ok || processAlive(pid) {
			continue
		}
		if err := exec.Command("ip", "netns", "del", name).Run(); err == nil {
			removed = append(removed, name)
		}
	}
	return removed
}

// Leftovers lists the lab namespaces that exist now, of any owner.
func Leftovers() []string {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 {
			if _, ok := ownerPID(f[0]); ok {
				names = append(names, f[0])
			}
		}
	}
	return names
}

// ownerPID parses "nl<pid base36>x<seq>-<host>".
func ownerPID(ns string) (int, bool) {
	if !strings.HasPrefix(ns, "nl") {
		return 0, false
	}
	dash := strings.IndexByte(ns, '-')
	x := strings.IndexByte(ns, 'x')
	if dash < 0 || x < 3 || x > dash {
		return 0, false
	}
	pid, err := strconv.ParseInt(ns[2:x], 36, 64)
	if err != nil {
		return 0, false
	}
	return int(pid), true
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}

// Wait calls cond until it returns nil or timeout passes (or ctx ends), and
// returns cond's last error then. It polls every 50 ms.
func Wait(ctx context.Context, timeout time.Duration, cond func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %v: %w", timeout, err)
		case <-tick.C:
		}
	}
}

// Eventually fails the test unless cond returns nil within timeout.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	if err := Wait(context.Background(), timeout, cond); err != nil {
		t.Fatal(err)
	}
}
