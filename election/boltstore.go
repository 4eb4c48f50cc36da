package election

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// BoltStore is Raft's LogStore and StableStore in one bbolt file. Each
// StoreLogs is one transaction with one fsync, so Raft's batching is also
// the flash's batching.
type BoltStore struct {
	db   *bolt.DB
	path string
}

var (
	bucketLogs   = []byte("logs")
	bucketStable = []byte("stable")
)

// OpenBoltStore opens or creates the store at path.
func OpenBoltStore(path string) (*BoltStore, error) {
	// The timeout turns a second daemon on the same state directory into
	// an error instead of a hang: bbolt holds an exclusive file lock.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoFreelistSync: true})
	if err != nil {
		return nil, fmt.Errorf("opening raft store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketLogs, bucketStable} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("creating buckets in %s: %w", path, err)
	}
	return &BoltStore{db: db, path: path}, nil
}

// Close closes the file.
func (s *BoltStore) Close() error { return s.db.Close() }

func uint64Key(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// FirstIndex implements raft.LogStore.
func (s *BoltStore) FirstIndex() (uint64, error) {
	var idx uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketLogs).Cursor().First(); k != nil {
			idx = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	return idx, err
}

// LastIndex implements raft.LogStore.
func (s *BoltStore) LastIndex() (uint64, error) {
	var idx uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketLogs).Cursor().Last(); k != nil {
			idx = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	return idx, err
}

// GetLog implements raft.LogStore.
func (s *BoltStore) GetLog(index uint64, l *raft.Log) error {
	return s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketLogs).Get(uint64Key(index))
		if v == nil {
			return raft.ErrLogNotFound
		}
		if err := codec.NewDecoderBytes(v, &codec.MsgpackHandle{}).Decode(l); err != nil {
			return fmt.Errorf("decoding raft log %d: %w", index, err)
		}
		return nil
	})
}

// StoreLog implements raft.LogStore.
func (s *BoltStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// StoreLogs implements raft.LogStore: all entries in one transaction.
func (s *BoltStore) StoreLogs(logs []*raft.Log) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketLogs)
		for _, l := range logs {
			var buf []byte
			if err := codec.NewEncoderBytes(&buf, &codec.MsgpackHandle{}).Encode(l); err != nil {
				return fmt.Errorf("encoding raft log %d: %w", l.Index, err)
			}
			if err := b.Put(uint64Key(l.Index), buf); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("storing %d raft logs in %s: %w", len(logs), s.path, err)
	}
	return nil
}

// DeleteRange implements raft.LogStore (inclusive).
func (s *BoltStore) DeleteRange(lo, hi uint64) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketLogs).Cursor()
		for k, _ := c.Seek(uint64Key(lo)); k != nil; k, _ = c.Next() {
			if binary.BigEndian.Uint64(k) > hi {
				break
			}
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("deleting raft logs %d-%d in %s: %w", lo, hi, s.path, err)
	}
	return nil
}

// errKeyNotFound is what hashicorp/raft expects from a StableStore for a
// missing key: it compares the text.
var errKeyNotFound = errors.New("not found")

// Set implements raft.StableStore.
func (s *BoltStore) Set(k, v []byte) error {
	err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketStable).Put(k, v) })
	if err != nil {
		return fmt.Errorf("storing %q in %s: %w", k, s.path, err)
	}
	return nil
}

// Get implements raft.StableStore.
func (s *BoltStore) Get(k []byte) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketStable).Get(k)
		if v == nil {
			return errKeyNotFound
		}
		out = append([]byte(nil), v...)
		return nil
	})
	return out, err
}

// SetUint64 implements raft.StableStore.
func (s *BoltStore) SetUint64(k []byte, v uint64) error { return s.Set(k, uint64Key(v)) }

// GetUint64 implements raft.StableStore.
func (s *BoltStore) GetUint64(k []byte) (uint64, error) {
	v, err := s.Get(k)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("stable key %q holds %d bytes, not a uint64", k, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}
