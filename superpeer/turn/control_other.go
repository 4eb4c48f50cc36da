//go:build !unix

package turn

import (
	"errors"
	"syscall"
)

// reusePortControl: sharing a port needs SO_REUSEPORT; set UDPListeners
// to 1 on systems without it.
func reusePortControl(_, _ string, _ syscall.RawConn) error {
	return errors.New("SO_REUSEPORT is not available on this system")
}
