//go:build !linux

package turn

import "syscall"

// listenerControl shares the port among the UDP listeners with the
// kernel's default pick (a hash of the 4-tuple): an RTCP allocation that
// lands on another listener than its RTP allocation does not find its
// port reservation there.
func listenerControl(int, bool) func(string, string, syscall.RawConn) error {
	return reusePortControl
}
