package turn

import (
	"net"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// listenerBatch is how many datagrams one read of a client listener
// takes from the kernel (recvmmsg on Linux): a loaded listener, which
// carries every client's packets, pays one system call for many. Relay
// sockets read one at a time: each carries one allocation's peers at RTP
// rates, where a batch read costs more than the datagram it finds
// (measured with bench/turn.sh).
const listenerBatch = 32

// batchReader reads a UDP socket a batch at a time and hands the
// datagrams out one by one. One goroutine reads it.
type batchReader struct {
	read func([]ipv4.Message, int) (int, error)
	msgs []ipv4.Message
	n, i int
}

// newBatchReader returns nil when c cannot read batches (not a kernel
// UDP socket, e.g. pion's vnet).
func newBatchReader(c net.PacketConn, size, bufLen int) *batchReader {
	u, ok := c.(*net.UDPConn)
	if !ok {
		return nil
	}
	b := &batchReader{msgs: make([]ipv4.Message, size)}
	for i := range b.msgs {
		b.msgs[i].Buffers = [][]byte{make([]byte, bufLen)}
	}
	if la, ok := u.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() == nil {
		b.read = ipv6.NewPacketConn(u).ReadBatch
	} else {
		b.read = ipv4.NewPacketConn(u).ReadBatch
	}
	return b
}

// ReadFrom has net.PacketConn's contract; a datagram longer than p is
// cut to len(p), as the kernel would.
func (b *batchReader) ReadFrom(p []byte) (int, net.Addr, error) {
	for b.i >= b.n {
		n, err := b.read(b.msgs, 0)
		if err != nil {
			return 0, nil, err
		}
		b.n, b.i = n, 0
	}
	m := &b.msgs[b.i]
	b.i++
	n := copy(p, m.Buffers[0][:m.N])
	return n, m.Addr, nil
}
