package netlab

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Host is one network namespace of the lab: a WAN host, a NAT or a LAN host.
type Host struct {
	// Name is for people: "wan0", "site1-nat", "site1-lan0".
	Name string
	// NS is the network namespace's name (ip netns).
	NS string
	// Addr is the host's main address: a WAN host's first address, a NAT's
	// LAN-side address, a LAN host's address.
	Addr netip.Addr
	// Addrs are all its IPv4 addresses.
	Addrs []netip.Addr

	lab    *Lab
	nsFile *os.File
}

func (h *Host) String() string { return h.Name }

// Command returns a command that runs inside the host's namespace.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Run runs a command inside the host and returns its combined output. The
// error carries the output too.
func (h *Host) Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := h.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %s %s: %w: %s", h.Name, name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Start starts a program inside the host in the background. Its output is
// collected; the lab stops it on Close.
func (h *Host) Start(name string, args ...string) (*Proc, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &Proc{Name: name, Host: h, cmd: cmd, done: make(chan struct{})}
	cmd.Stdout = &p.out
	cmd.Stderr = &p.out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: starting %s: %w", h.Name, name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	h.lab.mu.Lock()
	h.lab.procs = append(h.lab.procs, p)
	closed := h.lab.closed
	h.lab.mu.Unlock()
	if closed {
		p.Stop()
		return nil, fmt.Errorf("%s: lab is closed", h.Name)
	}
	return p, nil
}

// Do runs fn on an OS thread that is inside the host's namespace. Sockets
// that fn opens stay in the namespace for their whole life, so Go code can
// open them here and use them anywhere.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("%s: reading this thread's namespace: %w", h.Name, err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(int(h.nsFile.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("%s: entering namespace %s: %w", h.Name, h.NS, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// The thread stays locked and is thrown away with the goroutine.
			errc <- fmt.Errorf("%s: leaving namespace %s: %w", h.Name, h.NS, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Conntrack lists the NAT host's UDP conntrack entries (conntrack -L).
func (h *Host) Conntrack(ctx context.Context) (string, error) {
	return h.Run(ctx, "conntrack", "-L", "-p", "udp")
}

// FlushConntrack drops every conntrack entry of the host (conntrack -F):
// every NAT binding is forgotten at once, as after a router reboot.
func (h *Host) FlushConntrack(ctx context.Context) error {
	_, err := h.Run(ctx, "conntrack", "-F")
	return err
}

func (h *Host) ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", append([]string{"-n", h.NS}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netlab: ip -n %s %s: %v: %s", h.NS, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func (h *Host) addAddr(ctx context.Context, dev string, a netip.Addr, bits int) error {
	return h.ip(ctx, "addr", "add", netip.PrefixFrom(a, bits).String(), "dev", dev)
}

func (h *Host) nft(ctx context.Context, ruleset string) error {
	cmd := h.Command(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("netlab: nft in %s: %v: %s\n%s", h.NS, err, bytes.TrimSpace(out), ruleset)
	}
	return nil
}

func (h *Host) sysctl(ctx context.Context, key, value string) error {
	_, err := h.Run(ctx, "sysctl", "-q", "-w", key+"="+value)
	return err
}

// listening reports nil when something in the host listens on port.
func (h *Host) listening(ctx context.Context, proto string, port uint16) error {
	flag := "-Hlnu"
	if proto == "tcp" {
		flag = "-Hlnt"
	}
	out, err := h.Run(ctx, "ss", flag, fmt.Sprintf("sport = :%d", port))
	if err != nil {
		return err
	}
	if strings.TrimSpace(out) == "" {
		return fmt.Errorf("nothing listens on %s port %d", proto, port)
	}
	return nil
}

func (h *Host) remove() error {
	if h.nsFile != nil {
		h.nsFile.Close()
	}
	out, err := exec.Command("ip", "netns", "del", h.NS).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such file") {
		return fmt.Errorf("netlab: removing namespace %s: %v: %s", h.NS, err, bytes.TrimSpace(out))
	}
	return nil
}

// Proc is a program running inside a host.
type Proc struct {
	Name string
	Host *Host

	cmd  *exec.Cmd
	out  syncBuffer
	done chan struct{}
	err  error // set before done closes
}

// Output returns what the program printed so far (stdout and stderr).
func (p *Proc) Output() string { return p.out.String() }

// Exited reports whether the program has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed when the program ends.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the program to end and returns its exit error.
func (p *Proc) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Signal sends sig to the program's process group.
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	return syscall.Kill(-p.cmd.Process.Pid, sig)
}

// Kill kills the program at once (SIGKILL), as a crash or a power cut
// would, and waits for it to be gone.
func (p *Proc) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop asks the program to end (SIGTERM) and kills it if it has not ended
// within 3 seconds.
func (p *Proc) Stop() {
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
		p.Kill()
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
