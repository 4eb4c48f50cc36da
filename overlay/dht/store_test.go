package dht

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/superpeer/superpeer/nat/clock"
	"github.com/superpeer/superpeer/overlay/routing"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func record(t *testing.T, key ed25519.PrivateKey, aor string, seq uint64, expires time.Time) *Record {
	t.Helper()
	r := &Record{
		AOR:        aor,
		Superpeers: []Contact{{Node: routing.ID{1}, Addrs: []string{"203.0.113.7:4790"}}},
		Expires:    expires,
		Seq:        seq,
	}
	if err := r.Sign(key); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestPutRejectionsSayWhy(t *testing.T) {
	alice, mallory := newKey(t), newKey(t)
	later := t0.Add(time.Hour)

	forged := record(t, alice, "sip:bob@example.org", 1, later)
	forged.Publisher = mallory.Public().(ed25519.PublicKey) // claims another key
	tampered := record(t, alice, "sip:bob@example.org", 1, later)
	tampered.Superpeers[0].Node = routing.ID{9} // redirects the calls

	cases := []struct {
		name  string
		prior []*Record
		put   *Record
		want  Reason // "" means accepted
	}{
		{"fresh record", nil, record(t, alice, "sip:bob@example.org", 1, later), ""},
		{"signed by the wrong key", nil, forged, ReasonBadSignature},
		{"contents changed after signing", nil, tampered, ReasonBadSignature},
		{"already expired", nil, record(t, alice, "sip:bob@example.org", 1, t0), ReasonExpired},
		{"lifetime past the limit", nil, record(t, alice, "sip:bob@example.org", 1, t0.Add(3*time.Hour)), ReasonTooLong},
		{"higher sequence replaces", []*Record{record(t, alice, "sip:bob@example.org", 5, later)},
			record(t, alice, "sip:bob@example.org", 6, later), ""},
		{"lower sequence never replaces", []*Record{record(t, alice, "sip:bob@example.org", 5, later)},
			record(t, alice, "sip:bob@example.org", 4, later), ReasonStaleSequence},
		{"same sequence, other contents", []*Record{record(t, alice, "sip:bob@example.org", 5, later)},
			record(t, alice, "sip:bob@example.org", 5, later.Add(time.Minute)), ReasonStaleSequence},
		{"another publisher's AOR", []*Record{record(t, alice, "sip:bob@example.org", 5, later)},
			record(t, mallory, "sip:bob@example.org", 99, later), ReasonNotOwner},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewStore(StoreConfig{Quota: 10, MaxLifetime: 2 * time.Hour, Clock: clock.NewFake(t0)})
			for _, p := range tc.prior {
				if err := s.Put(p); err != nil {
					t.Fatalf("prior put: %v", err)
				}
			}
			err := s.Put(tc.put)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("put rejected: %v", err)
				}
				got, ok := s.Get(tc.put.Key())
				if !ok || got.Seq != tc.put.Seq {
					t.Fatalf("get after put = %v, %v; want seq %d", got, ok, tc.put.Seq)
				}
				return
			}
			rej, ok := IsRejection(err)
			if !ok {
				t.Fatalf("put = %v, want a rejection %q", err, tc.want)
			}
			if rej.Reason != tc.want {
				t.Fatalf("rejected for %q (%v), want %q", rej.Reason, err, tc.want)
			}
			if len(tc.prior) > 0 {
				got, _ := s.Get(tc.put.Key())
				if got.Seq != tc.prior[len(tc.prior)-1].Seq {
					t.Fatalf("rejected put changed the stored record to seq %d", got.Seq)
				}
			}
		})
	}
}

func TestQuotaPerPublisher(t *testing.T) {
	alice, bob := newKey(t), newKey(t)
	fake := clock.NewFake(t0)
	s := NewStore(StoreConfig{Quota: 2, MaxLifetime: 2 * time.Hour, Clock: fake})
	for _, aor := range []string{"sip:1@a.example", "sip:2@a.example"} {
		if err := s.Put(record(t, alice, aor, 1, t0.Add(time.Minute))); err != nil {
			t.Fatal(err)
		}
	}
	err := s.Put(record(t, alice, "sip:3@a.example", 1, t0.Add(time.Hour)))
	if rej, ok := IsRejection(err); !ok || rej.Reason != ReasonQuota {
		t.Fatalf("third record of a publisher with quota 2: %v, want quota rejection", err)
	}
	// Another publisher has its own quota.
	if err := s.Put(record(t, bob, "sip:1@b.example", 1, t0.Add(time.Hour))); err != nil {
		t.Fatalf("other publisher: %v", err)
	}
	// Refreshing a held record does not count twice.
	if err := s.Put(record(t, alice, "sip:1@a.example", 2, t0.Add(time.Hour))); err != nil {
		t.Fatalf("refresh within quota: %v", err)
	}
	// Once a record expires its slot is free again.
	fake.Advance(2 * time.Minute)
	if err := s.Put(record(t, alice, "sip:3@a.example", 1, t0.Add(time.Hour))); err != nil {
		t.Fatalf("after expiry freed a slot: %v", err)
	}
}

func TestRecordsExpire(t *testing.T) {
	alice := newKey(t)
	fake := clock.NewFake(t0)
	s := NewStore(StoreConfig{Quota: 10, MaxLifetime: time.Hour, Clock: fake})
	r := record(t, alice, "sip:bob@example.org", 1, t0.Add(10*time.Minute))
	if err := s.Put(r); err != nil {
		t.Fatal(err)
	}
	fake.Advance(9 * time.Minute)
	if _, ok := s.Get(r.Key()); !ok {
		t.Fatal("record gone before its expiry")
	}
	fake.Advance(time.Minute)
	if _, ok := s.Get(r.Key()); ok {
		t.Fatal("record still served at its expiry")
	}
	if got := s.PublisherUsage(alice.Public().(ed25519.PublicKey)); got != 0 {
		t.Fatalf("expired record still counts %d against the quota", got)
	}
}

func TestRecordRoundTrip(t *testing.T) {
	r := record(t, newKey(t), "sip:bob@example.org", 7, t0.Add(time.Hour))
	r.Superpeers = append(r.Superpeers, Contact{Node: routing.ID{2}, Addrs: []string{"198.51.100.1:4790", "[2001:db8::1]:4790"}})
	if err := r.Sign(newKey(t)); err != nil {
		t.Fatal(err)
	}
	p, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Verify(); err != nil {
		t.Fatalf("decoded record does not verify: %v", err)
	}
	if got.AOR != r.AOR || got.Seq != r.Seq || !got.Expires.Equal(r.Expires) || len(got.Superpeers) != 2 ||
		got.Superpeers[1].Addrs[1] != "[2001:db8::1]:4790" {
		t.Fatalf("round trip changed the record: %+v", got)
	}
	// Any flipped bit is caught by the decoder or the signature.
	for i := range p {
		q := bytes.Clone(p)
		q[i] ^= 0x10
		d, err := Unmarshal(q)
		if err == nil {
			err = d.Verify()
		}
		if err == nil {
			t.Fatalf("flipping a bit of byte %d went unnoticed", i)
		}
		if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrBadSignature) {
			t.Fatalf("byte %d: error %v is neither malformed nor bad signature", i, err)
		}
	}
}

func FuzzUnmarshalRecord(f *testing.F) {
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	r := &Record{AOR: "sip:a@b", Superpeers: []Contact{{Addrs: []string{"x"}}}, Expires: t0, Seq: 1}
	_ = r.Sign(k)
	p, _ := r.Marshal()
	f.Add(p)
	f.Add([]byte("SPR1"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := Unmarshal(p)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("decoding error %v does not wrap ErrMalformed", err)
			}
			return
		}
		_ = r.Verify()
		if _, err := r.Marshal(); err != nil {
			t.Fatalf("a decoded record does not re-encode: %v", err)
		}
	})
}
