package turn

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pion/turn/v5"
)

// TestRESTCredentials checks the scheme against a vector computed
// independently (Python's hmac: base64(HMAC-SHA1("north",
// "1700000000:alice"))) and against pion's generator of the same draft.
func TestRESTCredentials(t *testing.T) {
	user, pass, err := MintCredentials([]byte("north"), "alice", time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	if user != "1700000000:alice" || pass != "Cd/49soE35ICqcJF/bCTn8Z4OyE=" {
		t.Fatalf("minted %q / %q", user, pass)
	}
	v := verifier{
		secret: func() []byte { return []byte("north") }, realm: "superpeer", maxLifetime: time.Hour,
		now: func() time.Time { return time.Unix(1700000000-60, 0) },
	}
	got, key, err := v.key(user)
	if err != nil || got != "alice" || hex.EncodeToString(key) != "dd5c41d725b9ba1a616755fc19a70173" {
		t.Fatalf("verifier: user %q key %x err %v", got, key, err)
	}

	pu, pp, err := turn.GenerateLongTermTURNRESTCredentials("north", "bob", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	v.now = time.Now
	got, key, err = v.key(pu)
	if err != nil || got != "bob" || !bytes.Equal(key, turn.GenerateAuthKey(pu, "superpeer", pp)) {
		t.Fatalf("pion's credential %q: user %q err %v, key differs: %v", pu, got, err, !bytes.Equal(key, turn.GenerateAuthKey(pu, "superpeer", pp)))
	}
}

func TestVerifierRefuses(t *testing.T) {
	now := time.Unix(1700000000, 0)
	secret := []byte("north")
	v := verifier{secret: func() []byte { return secret }, realm: "r", maxLifetime: time.Hour, now: func() time.Time { return now }}
	cases := []struct {
		username string
		want     error
	}{
		{"1700000000:alice", ErrCredentialExpired}, // expiry == now
		{"1699999999:alice", ErrCredentialExpired},
		{"1700003600:alice", nil},
		{"1700003900:alice", nil}, // within the clock skew allowance
		{"1700007201:alice", ErrCredentialLifetime},
		{"alice", ErrCredentialMalformed},
		{"1700003600", ErrCredentialMalformed},
		{"1700003600:", ErrCredentialMalformed},
		{":alice", ErrCredentialMalformed},
		{"+1700003600:alice", ErrCredentialMalformed},
		{"17000036000000000000:alice", ErrCredentialMalformed},
		{"1700003600:al\x00ice", ErrCredentialMalformed},
		{"1700003600:" + strings.Repeat("a", MaxUserLength+1), ErrCredentialMalformed},
		{"1700003600:a:b", nil}, // the user may hold ':'
	}
	for _, tc := range cases {
		_, _, err := v.key(tc.username)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("key(%q) = %v, want %v", tc.username, err, tc.want)
		}
	}
	secret = nil
	if _, _, err := v.key("1700003600:alice"); !errors.Is(err, errNoSecret) {
		t.Errorf("without a secret: %v", err)
	}
}

func TestMintRefuses(t *testing.T) {
	if _, _, err := MintCredentials(nil, "alice", time.Now()); err == nil {
		t.Error("minted without a secret")
	}
	if _, _, err := MintCredentials([]byte("s"), "", time.Now()); err == nil {
		t.Error("minted for an empty user")
	}
}

func FuzzParseUsername(f *testing.F) {
	for _, s := range []string{"1700000000:alice", "1:a:b", "", ":", "99999999999:x", "1700000000:\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, username string) {
		expires, user, err := ParseUsername(username)
		if err != nil {
			return
		}
		again, _, err := MintCredentials([]byte("k"), user, expires)
		if err != nil {
			t.Fatalf("ParseUsername(%q) accepted user %q that MintCredentials refuses: %v", username, user, err)
		}
		e2, u2, err := ParseUsername(again)
		if err != nil || !e2.Equal(expires) || u2 != user {
			t.Fatalf("round trip of %q through %q: %v %q %v", username, again, e2, u2, err)
		}
	})
}
