package turn

import (
	"crypto/hmac"
	"crypto/md5"  //nolint:gosec // RFC 8489 section 9.2.2 defines the long-term key as MD5
	"crypto/sha1" //nolint:gosec // the TURN REST API draft defines the password as HMAC-SHA1
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Credentials are ephemeral TURN credentials in the form of the TURN REST
// API (draft-uberti-behave-turn-rest-00), which coturn reads with
// use-auth-secret: Username is "expiry:user" with expiry in Unix seconds,
// Password is base64(HMAC-SHA1(secret, Username)).
type Credentials struct {
	Username string `json:"username"`
	Password string `json:"password"`
	// TTL is the lifetime in seconds, as the REST API returns it.
	TTL int64 `json:"ttl"`
	// Expires is when the server stops accepting them.
	Expires time.Time `json:"expires"`
	// URIs are TURN URIs of this server (RFC 7065), for a client or an SDP.
	URIs []string `json:"uris,omitempty"`
}

// Limits of a credential's parts.
const (
	// MaxUserLength bounds the user part: it names a LAN peer or service,
	// and keys the per-user quota.
	MaxUserLength = 128
	// clockSkew is how far into the future beyond the lifetime cap an
	// expiry may lie: superpeers of a site mint for each other and their
	// clocks differ a little.
	clockSkew = 5 * time.Minute
)

// Credential errors callers branch on.
var (
	// ErrCredentialExpired: the expiry has passed.
	ErrCredentialExpired = errors.New("credential expired")
	// ErrCredentialLifetime: the expiry lies further ahead than the
	// lifetime cap allows, so it was not minted under the cap.
	ErrCredentialLifetime = errors.New("credential outlives the lifetime cap")
	// ErrCredentialMalformed: the username is not "expiry:user".
	ErrCredentialMalformed = errors.New("malformed credential username")
)

// MintCredentials returns the username and password that a server with
// secret accepts for user until expires.
func MintCredentials(secret []byte, user string, expires time.Time) (username, password string, err error) {
	if err := checkUser(user); err != nil {
		return "", "", err
	}
	if len(secret) == 0 {
		return "", "", errors.New("minting TURN credentials: no shared secret")
	}
	username = strconv.FormatInt(expires.Unix(), 10) + ":" + user
	return username, restPassword(secret, username), nil
}

func restPassword(secret []byte, username string) string {
	mac := hmac.New(sha1.New, secret)
	mac.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// longTermKey is the RFC 8489 long-term credential key,
// MD5(username ":" realm ":" password).
func longTermKey(username, realm, password string) []byte {
	h := md5.New() //nolint:gosec // defined by RFC 8489
	h.Write([]byte(username + ":" + realm + ":" + password))
	return h.Sum(nil)
}

// ParseUsername splits a REST API username "expiry:user" into its expiry
// and user. The expiry is decimal Unix seconds; the user must not be
// empty and may itself contain ':' (only the first one separates).
func ParseUsername(username string) (expires time.Time, user string, err error) {
	ts, user, ok := strings.Cut(username, ":")
	if !ok {
		return time.Time{}, "", fmt.Errorf("%w: %q has no ':'", ErrCredentialMalformed, username)
	}
	if ts == "" || len(ts) > 12 {
		return time.Time{}, "", fmt.Errorf("%w: expiry %q", ErrCredentialMalformed, ts)
	}
	for _, c := range ts {
		if c < '0' || c > '9' {
			return time.Time{}, "", fmt.Errorf("%w: expiry %q is not decimal seconds", ErrCredentialMalformed, ts)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return time.Time{}, "", fmt.Errorf("%w: expiry %q: %v", ErrCredentialMalformed, ts, err)
	}
	if err := checkUser(user); err != nil {
		return time.Time{}, "", err
	}
	return time.Unix(sec, 0), user, nil
}

func checkUser(user string) error {
	if user == "" {
		return fmt.Errorf("%w: empty user (it keys the per-user quota)", ErrCredentialMalformed)
	}
	if len(user) > MaxUserLength {
		return fmt.Errorf("%w: user is %d bytes, at most %d", ErrCredentialMalformed, len(user), MaxUserLength)
	}
	for _, c := range user {
		if c == unicode.ReplacementChar || unicode.IsControl(c) {
			return fmt.Errorf("%w: user %q has a control or invalid character", ErrCredentialMalformed, user)
		}
	}
	return nil
}

// verifier checks REST API usernames against the current secret, the
// clock and the lifetime cap, and yields the long-term key.
type verifier struct {
	secret      func() []byte
	realm       string
	maxLifetime time.Duration
	now         func() time.Time
}

// key returns the user and the RFC 8489 long-term key for username, or
// why it is refused.
func (v *verifier) key(username string) (user string, key []byte, err error) {
	expires, user, err := ParseUsername(username)
	if err != nil {
		return "", nil, err
	}
	now := v.now()
	if !expires.After(now) {
		return "", nil, fmt.Errorf("%w at %v", ErrCredentialExpired, expires.UTC())
	}
	if expires.Sub(now) > v.maxLifetime+clockSkew {
		return "", nil, fmt.Errorf("%w: valid for %v, cap %v", ErrCredentialLifetime, expires.Sub(now).Round(time.Second), v.maxLifetime)
	}
	secret := v.secret()
	if len(secret) == 0 {
		return "", nil, errNoSecret
	}
	return user, longTermKey(username, v.realm, restPassword(secret, username)), nil
}

var errNoSecret = errors.New("no shared secret to check credentials against")
