package election

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// SiteSecret is the secret every peer of a site holds. It is made once, at
// the first start of the site's first peer, and reaches other peers only by
// an explicit join step (Token, ParseJoinToken) or an operator-approved
// pairing. From it each peer derives the same certificate authority: group
// connections use mutual TLS 1.3 with leaf certificates signed by that
// authority, so a device without the secret can neither connect to the
// group nor accept its connections, and announcements carry an HMAC keyed
// by it.
type SiteSecret struct {
	key    [32]byte
	caKey  ed25519.PrivateKey
	caCert *x509.Certificate
	pool   *x509.CertPool
}

const (
	secretFile = "site.secret"
	// tokenPrefix marks a join token and its format version.
	tokenPrefix = "sp1-"
	// siteServerName is the name every leaf certificate carries and every
	// dialer verifies: the certificate authority, not the name, says who
	// belongs to the site.
	siteServerName = "group.superpeer.invalid"
)

// ErrNoSecret is returned by OpenSecret when the state directory holds no
// secret and creating one was not asked for.
var ErrNoSecret = errors.New("no site secret")

// NewSiteSecret makes a new secret, that is, a new site.
func NewSiteSecret() (*SiteSecret, error) {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return nil, fmt.Errorf("drawing a site secret: %w", err)
	}
	return secretFromKey(k)
}

// OpenSecret reads the secret from dir, or with create makes and stores a
// new one when there is none (the first start of a site's first peer).
func OpenSecret(dir string, create bool) (*SiteSecret, error) {
	path := filepath.Join(dir, secretFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		s, perr := ParseJoinToken(strings.TrimSpace(string(b)))
		if perr != nil {
			return nil, fmt.Errorf("reading site secret %s: %w", path, perr)
		}
		return s, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("reading site secret %s: %w", path, err)
	case !create:
		return nil, fmt.Errorf("%s: %w", path, ErrNoSecret)
	}
	s, err := NewSiteSecret()
	if err != nil {
		return nil, err
	}
	if err := s.Save(dir); err != nil {
		return nil, err
	}
	return s, nil
}

// Save writes the secret into dir (mode 0600, atomically).
func (s *SiteSecret) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating state directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, secretFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s.Token()+"\n"), 0o600); err != nil {
		return fmt.Errorf("writing site secret %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("storing site secret %s: %w", path, err)
	}
	return nil
}

// Token is the secret as text for the explicit join step: the operator
// copies it from a member to the new peer. Whoever holds it is in the site.
func (s *SiteSecret) Token() string {
	return tokenPrefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(s.key[:]))
}

// ParseJoinToken reads a token made by Token.
func ParseJoinToken(tok string) (*SiteSecret, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(tok), tokenPrefix)
	if !ok {
		return nil, fmt.Errorf("join token does not start with %q", tokenPrefix)
	}
	b, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(strings.ToUpper(rest))
	if err != nil || len(b) != 32 {
		return nil, fmt.Errorf("join token is not 32 bytes of base32")
	}
	var k [32]byte
	copy(k[:], b)
	return secretFromKey(k)
}

// SiteID names the site in announcements without revealing the secret.
func (s *SiteSecret) SiteID() string {
	return hex.EncodeToString(s.derive("superpeer site id", 8))
}

func (s *SiteSecret) derive(info string, n int) []byte {
	b, err := hkdf.Key(sha256.New, s.key[:], nil, info, n)
	if err != nil {
		panic(err) // only for n beyond 255*32
	}
	return b
}

// mac authenticates an announcement.
func (s *SiteSecret) mac(msg []byte) []byte {
	h := hmac.New(sha256.New, s.derive("superpeer announcement", 32))
	h.Write(msg)
	return h.Sum(nil)[:16]
}

// The authority and every leaf are valid from 1970 to 9999: routers
// without a real-time clock boot in 1970 and learn the time later, and the
// secret, not a date, decides membership.
var (
	certNotBefore = time.Unix(0, 0).UTC()
	certNotAfter  = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
)

func secretFromKey(k [32]byte) (*SiteSecret, error) {
	s := &SiteSecret{key: k}
	s.caKey = ed25519.NewKeyFromSeed(s.derive("superpeer site CA", ed25519.SeedSize))
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "superpeer site " + s.SiteID()},
		NotBefore:             certNotBefore,
		NotAfter:              certNotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, s.caKey.Public(), s.caKey)
	if err != nil {
		return nil, fmt.Errorf("making the site certificate authority: %w", err)
	}
	if s.caCert, err = x509.ParseCertificate(der); err != nil {
		return nil, fmt.Errorf("parsing the site certificate authority: %w", err)
	}
	s.pool = x509.NewCertPool()
	s.pool.AddCert(s.caCert)
	return s, nil
}

// TLSConfig returns the mutual TLS configuration of node id: a fresh leaf
// key signed by the site authority, and peers verified against it.
func (s *SiteSecret) TLSConfig(id string) (*tls.Config, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("making a TLS key for %s: %w", id, err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, fmt.Errorf("drawing a certificate serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: id},
		DNSNames:     []string{siteServerName},
		NotBefore:    certNotBefore,
		NotAfter:     certNotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.caCert, key.Public(), s.caKey)
	if err != nil {
		return nil, fmt.Errorf("signing the TLS certificate of %s: %w", id, err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		RootCAs:      s.pool,
		ClientCAs:    s.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ServerName:   siteServerName,
	}, nil
}
