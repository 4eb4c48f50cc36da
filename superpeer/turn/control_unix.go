//go:build unix

package turn

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePortControl lets several sockets bind one address and port: the
// UDP listeners that share the TURN port (the kernel spreads clients
// over them by 5-tuple hash, one read loop each), and a TCP relay's
// listener and the connections it dials for RFC 6062 Connect.
func reusePortControl(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}
