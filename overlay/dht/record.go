// Package dht holds the overlay's signed records and the store that keeps
// them: the SIP location service of Superpeer. A record maps an AOR to the
// superpeers that serve it and lives under the key SHA-256(AOR) on the r
// nodes closest to that key. As in RELOAD (RFC 6940) every stored value is
// signed by its publisher and checked by the storing node and again by
// every reader; a store keeps the highest sequence number, drops records at
// their expiry and bounds what one publisher may store.
package dht

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/superpeer/superpeer/overlay/routing"
)

// Limits of a record on the wire; a record is carried in one datagram.
const (
	MaxAORLen      = 256
	MaxContacts    = 8
	MaxAddrs       = 4
	MaxAddrLen     = 64
	MaxRecordBytes = 1200
)

// Key returns the DHT key of an AOR: SHA-256 of its text.
func Key(aor string) routing.ID { return routing.ID(sha256.Sum256([]byte(aor))) }

// Contact is a superpeer that serves an AOR and how to reach it.
type Contact struct {
	Node  routing.ID `json:"node"`
	Addrs []string   `json:"addrs,omitempty"`
}

// Record is a signed AOR -> superpeers mapping.
type Record struct {
	AOR        string
	Superpeers []Contact
	// Expires is when the record stops being valid, no later than the
	// registration it publishes. Second precision on the wire.
	Expires time.Time
	// Seq orders the versions of a record: a store never lets a lower
	// sequence number replace a higher one.
	Seq       uint64
	Publisher ed25519.PublicKey
	Signature []byte
}

// Key returns the record's DHT key.
func (r *Record) Key() routing.ID { return Key(r.AOR) }

// Sign fills in Publisher and Signature with key.
func (r *Record) Sign(key ed25519.PrivateKey) error {
	r.Publisher = key.Public().(ed25519.PublicKey)
	body, err := r.signedBytes()
	if err != nil {
		return fmt.Errorf("signing record for %q: %w", r.AOR, err)
	}
	r.Signature = ed25519.Sign(key, body)
	return nil
}

// ErrBadSignature is returned by Verify for a record whose signature does
// not match its publisher key and contents.
var ErrBadSignature = errors.New("signature does not verify")

// Verify checks the record's shape and that Signature is the publisher's
// signature over its contents.
func (r *Record) Verify() error {
	body, err := r.signedBytes()
	if err != nil {
		return fmt.Errorf("verifying record for %q: %w", r.AOR, err)
	}
	if len(r.Publisher) != ed25519.PublicKeySize || len(r.Signature) != ed25519.SignatureSize ||
		!ed25519.Verify(r.Publisher, body, r.Signature) {
		return fmt.Errorf("verifying record for %q: %w", r.AOR, ErrBadSignature)
	}
	return nil
}

const recordMagic = "SPR1"

// signedBytes is the canonical encoding of everything but the signature.
func (r *Record) signedBytes() ([]byte, error) {
	if err := r.check(); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString(recordMagic)
	putBytes(&b, []byte(r.AOR))
	b.WriteByte(byte(len(r.Superpeers)))
	for _, c := range r.Superpeers {
		b.Write(c.Node[:])
		b.WriteByte(byte(len(c.Addrs)))
		for _, a := range c.Addrs {
			putBytes(&b, []byte(a))
		}
	}
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(r.Expires.Unix()))
	b.Write(n[:])
	binary.BigEndian.PutUint64(n[:], r.Seq)
	b.Write(n[:])
	b.Write(r.Publisher)
	return b.Bytes(), nil
}

func (r *Record) check() error {
	switch {
	case r.AOR == "" || len(r.AOR) > MaxAORLen:
		return fmt.Errorf("AOR of %d bytes: want 1..%d", len(r.AOR), MaxAORLen)
	case len(r.Superpeers) == 0 || len(r.Superpeers) > MaxContacts:
		return fmt.Errorf("%d superpeers: want 1..%d", len(r.Superpeers), MaxContacts)
	case len(r.Publisher) != ed25519.PublicKeySize:
		return fmt.Errorf("publisher key of %d bytes: want %d", len(r.Publisher), ed25519.PublicKeySize)
	}
	for _, c := range r.Superpeers {
		if len(c.Addrs) > MaxAddrs {
			return fmt.Errorf("superpeer %s with %d addresses: want at most %d", c.Node.Short(), len(c.Addrs), MaxAddrs)
		}
		for _, a := range c.Addrs {
			if len(a) > MaxAddrLen {
				return fmt.Errorf("address of %d bytes: want at most %d", len(a), MaxAddrLen)
			}
		}
	}
	return nil
}

func putBytes(b *bytes.Buffer, p []byte) {
	var n [2]byte
	binary.BigEndian.PutUint16(n[:], uint16(len(p)))
	b.Write(n[:])
	b.Write(p)
}

// Marshal encodes the signed record for the wire.
func (r *Record) Marshal() ([]byte, error) {
	body, err := r.signedBytes()
	if err != nil {
		return nil, fmt.Errorf("encoding record for %q: %w", r.AOR, err)
	}
	if len(r.Signature) != ed25519.SignatureSize {
		return nil, fmt.Errorf("encoding record for %q: unsigned", r.AOR)
	}
	out := append(body, r.Signature...)
	if len(out) > MaxRecordBytes {
		return nil, fmt.Errorf("encoding record for %q: %d bytes, limit %d", r.AOR, len(out), MaxRecordBytes)
	}
	return out, nil
}

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed record")

// Unmarshal decodes a record. It checks the shape, not the signature:
// callers Verify.
func Unmarshal(p []byte) (*Record, error) {
	d := decoder{p: p}
	if len(p) > MaxRecordBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformed, len(p), MaxRecordBytes)
	}
	if string(d.take(len(recordMagic))) != recordMagic {
		return nil, fmt.Errorf("%w: bad magic", ErrMalformed)
	}
	r := &Record{AOR: string(d.bytes())}
	n := int(d.byte())
	if n > MaxContacts {
		return nil, fmt.Errorf("%w: %d superpeers, limit %d", ErrMalformed, n, MaxContacts)
	}
	for i := 0; i < n && d.err == nil; i++ {
		var c Contact
		copy(c.Node[:], d.take(routing.IDLen))
		na := int(d.byte())
		if na > MaxAddrs {
			return nil, fmt.Errorf("%w: %d addresses, limit %d", ErrMalformed, na, MaxAddrs)
		}
		for j := 0; j < na && d.err == nil; j++ {
			c.Addrs = append(c.Addrs, string(d.bytes()))
		}
		r.Superpeers = append(r.Superpeers, c)
	}
	exp := int64(d.uint64())
	r.Expires = time.Unix(exp, 0).UTC()
	r.Seq = d.uint64()
	r.Publisher = ed25519.PublicKey(bytes.Clone(d.take(ed25519.PublicKeySize)))
	r.Signature = bytes.Clone(d.take(ed25519.SignatureSize))
	if d.err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, d.err)
	}
	if len(d.p) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(d.p))
	}
	if err := r.check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return r, nil
}

type decoder struct {
	p   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.p) {
		d.err = fmt.Errorf("truncated: need %d bytes, have %d", n, len(d.p))
		d.p = nil
		return nil
	}
	b := d.p[:n]
	d.p = d.p[n:]
	return b
}

func (d *decoder) byte() byte {
	b := d.take(1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (d *decoder) bytes() []byte {
	b := d.take(2)
	if b == nil {
		return nil
	}
	return d.take(int(binary.BigEndian.Uint16(b)))
}

func (d *decoder) uint64() uint64 {
	b := d.take(8)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}
