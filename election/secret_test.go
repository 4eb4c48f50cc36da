package election

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestSecretTokenRoundTripAndFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenSecret(dir, false); !errors.Is(err, ErrNoSecret) {
		t.Fatalf("no secret file: %v, want ErrNoSecret", err)
	}
	s, err := OpenSecret(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, secretFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v, mode %v", err, fi.Mode())
	}
	again, err := OpenSecret(dir, true)
	if err != nil || again.SiteID() != s.SiteID() {
		t.Fatalf("reopening made another site: %v", err)
	}
	joined, err := ParseJoinToken(s.Token())
	if err != nil || joined.SiteID() != s.SiteID() {
		t.Fatalf("join token round trip: %v", err)
	}
	for _, bad := range []string{"", "sp1-", "sp2-" + s.Token()[4:], s.Token()[:20]} {
		if _, err := ParseJoinToken(bad); err == nil {
			t.Errorf("ParseJoinToken(%q) accepted", bad)
		}
	}
	other, _ := NewSiteSecret()
	if other.SiteID() == s.SiteID() {
		t.Error("two new sites share an ID")
	}
}

// Mutual TLS: the same secret connects; a different secret fails on both
// sides, whoever dials.
func TestGroupTLSNeedsTheSameSecret(t *testing.T) {
	site, _ := NewSiteSecret()
	stranger, _ := NewSiteSecret()
	member := func(s *SiteSecret, id string) *tls.Config {
		c, err := s.TLSConfig(id)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	handshake := func(server, client *tls.Config) (error, error) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		errs := make(chan error, 1)
		go func() {
			errs <- tls.Server(a, server).HandshakeContext(ctx)
			a.Close()
		}()
		cerr := tls.Client(b, client).HandshakeContext(ctx)
		b.Close()
		return <-errs, cerr
	}
	if s, c := handshake(member(site, "a"), member(site, "b")); s != nil || c != nil {
		t.Fatalf("two members: server %v, client %v", s, c)
	}
	if s, _ := handshake(member(site, "a"), member(stranger, "x")); s == nil {
		t.Error("a member accepted a stranger's connection")
	}
	if _, c := handshake(member(stranger, "x"), member(site, "a")); c == nil {
		t.Error("a member trusted a stranger posing as a member")
	}
	// No client certificate at all.
	noCert := member(site, "a").Clone()
	noCert.Certificates = nil
	if s, _ := handshake(member(site, "b"), noCert); s == nil {
		t.Error("a member accepted a connection without a client certificate")
	}
}
