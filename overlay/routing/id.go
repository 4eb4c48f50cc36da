// Package routing is the overlay's routing logic without sockets: node IDs
// and the XOR metric, the routing table with its hard degree bound, and the
// next-hop choice that uses the neighbours' neighbours. The node runtime and
// the simulator both drive this code, so what the simulator measures is what
// the appliance does.
//
// The model is the symmetric Kademlia metric as used by RELOAD (RFC 6940)
// overlays: distance is XOR, a link sits in the same bucket at both ends
// (the bucket of a pair is the length of their common prefix), and so a link
// is as useful to the node that accepted it as to the one that asked.
package routing

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
)

// IDLen is the length of a node ID or a DHT key in bytes (SHA-256).
const IDLen = 32

// IDBits is the number of bits in an ID and so the number of buckets.
const IDBits = IDLen * 8

// ID is a node ID or a DHT key: both live in the same 256-bit space.
type ID [IDLen]byte

// String returns the ID in hex.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 8 hex digits, for logs.
func (id ID) Short() string { return hex.EncodeToString(id[:4]) }

// IsZero reports whether id is all zeroes (no ID).
func (id ID) IsZero() bool { return id == ID{} }

// MarshalText encodes the ID as hex, for JSON status output.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText parses a hex ID.
func (id *ID) UnmarshalText(b []byte) error {
	p, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = p
	return nil
}

// ParseID parses a 64-digit hex ID.
func ParseID(s string) (ID, error) {
	var id ID
	b, err := hex.DecodeString(s)
	if err != nil {
		return id, fmt.Errorf("parsing node ID %q: %w", s, err)
	}
	if len(b) != IDLen {
		return id, fmt.Errorf("parsing node ID %q: %d bytes, want %d", s, len(b), IDLen)
	}
	copy(id[:], b)
	return id, nil
}

// ErrBadID is returned for IDs that cannot be used (zero or own ID).
var ErrBadID = errors.New("unusable node ID")

func word(id *ID, i int) uint64 { return binary.BigEndian.Uint64(id[i*8:]) }

// Closer reports whether a is strictly closer to target than b in the XOR
// metric.
func Closer(target, a, b ID) bool {
	for i := 0; i < IDLen/8; i++ {
		t := word(&target, i)
		x, y := word(&a, i)^t, word(&b, i)^t
		if x != y {
			return x < y
		}
	}
	return false
}

// CommonPrefixLen returns the number of leading bits a and b share; it is
// the index of the bucket b falls in as seen from a (and a from b).
// Equal IDs share all IDBits bits.
func CommonPrefixLen(a, b ID) int {
	for i := 0; i < IDLen/8; i++ {
		if x := word(&a, i) ^ word(&b, i); x != 0 {
			return i*64 + bits.LeadingZeros64(x)
		}
	}
	return IDBits
}

// Distance returns a XOR b.
func Distance(a, b ID) ID {
	var d ID
	for i := range d {
		d[i] = a[i] ^ b[i]
	}
	return d
}

// RandomInBucket returns a random ID that shares exactly b leading bits
// with self: a lookup for it finds a node of bucket b when there is one.
func RandomInBucket(self ID, b int, rnd *rand.Rand) ID {
	var id ID
	for i := 0; i < IDLen; i += 8 {
		binary.BigEndian.PutUint64(id[i:], rnd.Uint64())
	}
	for i := 0; i < b; i++ {
		setBit(&id, i, bit(&self, i))
	}
	setBit(&id, b, 1-bit(&self, b))
	return id
}

func bit(id *ID, i int) byte { return (id[i/8] >> (7 - uint(i%8))) & 1 }

func setBit(id *ID, i int, v byte) {
	m := byte(1) << (7 - uint(i%8))
	if v == 1 {
		id[i/8] |= m
	} else {
		id[i/8] &^= m
	}
}
