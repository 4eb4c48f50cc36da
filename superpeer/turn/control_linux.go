package turn

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// skfNetOff is SKF_NET_OFF: classic BPF loads at this offset read the
// network header rather than the transport header the program sees.
const skfNetOff = -0x100000

// listenerControl makes the n UDP listeners of one address share it and
// attaches a classic BPF program to the group that picks the listener by
// the client's address alone. The kernel's default pick hashes the whole
// 4-tuple, which would put the RTP and the RTCP socket of one client on
// different listeners; each listener has its own pion allocation manager,
// and an RTCP allocation must find the port its RTP allocation reserved
// (EVEN-PORT, RESERVATION-TOKEN: RFC 8656 section 7.2) in the same one.
func listenerControl(n int, v6 bool) func(string, string, syscall.RawConn) error {
	off := int32(skfNetOff + 12) // IPv4 source address
	if v6 {
		off = skfNetOff + 20 // the last 32 bits of the IPv6 source
	}
	src := uint32(off)
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: src},
		{Code: unix.BPF_ALU | unix.BPF_MOD | unix.BPF_K, K: uint32(n)},
		{Code: unix.BPF_RET | unix.BPF_A},
	}
	return func(network, address string, c syscall.RawConn) error {
		if err := reusePortControl(network, address, c); err != nil {
			return err
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF,
				&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
		})
		if err != nil {
			return err
		}
		return serr
	}
}
