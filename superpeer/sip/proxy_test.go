package sip

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// TestCallWithinSite registers bob and has alice call him through one
// superpeer: the call is answered, the BYE follows the Record-Route back
// through the proxy, and unknown or unregistered users get 404 and 480.
func TestCallWithinSite(t *testing.T) {
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			s := testServer(t, "sp1", "site.test", nil, Deps{}, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			bob := newPhone(t, "bob", s.addr(network), network)
			alice := newPhone(t, "alice", s.addr(network), network)

			res, err := bob.register(ctx, "sip:bob@site.test", 600, nil)
			if err != nil || res.StatusCode != 200 {
				t.Fatalf("REGISTER: %v %v", res, err)
			}
			if c := res.Contact(); c == nil || !strings.Contains(res.String(), "expires=600") {
				t.Errorf("200 to REGISTER does not list the binding with its expiry:\n%s", res)
			}

			sess, err := alice.call(ctx, "sip:bob@site.test")
			if err != nil {
				t.Fatalf("call to bob: %v", err)
			}
			if got := bob.invites.Load(); got != 1 {
				t.Errorf("bob saw %d INVITEs, want 1", got)
			}
			rr := sess.InviteResponse.GetHeaders("Record-Route")
			if len(rr) == 0 {
				t.Fatalf("200 OK has no Record-Route: the proxy would drop out of the dialog")
			}
			if err := sess.Bye(ctx); err != nil {
				t.Fatalf("BYE: %v", err)
			}
			if got := bob.byes.Load(); got != 1 {
				t.Errorf("bob saw %d BYEs, want 1", got)
			}
			if s.Status().Proxy.Forwarded < 2 {
				t.Errorf("the proxy forwarded %d requests, want INVITE and BYE through it", s.Status().Proxy.Forwarded)
			}

			_, err = alice.call(ctx, "sip:nobody@site.test")
			if code := statusOf(err); code != 404 {
				t.Errorf("call to an unknown user: %v, want 404", err)
			}
			res, err = bob.register(ctx, "sip:bob@site.test", 0, nil)
			if err != nil || res.StatusCode != 200 {
				t.Fatalf("unREGISTER: %v %v", res, err)
			}
			_, err = alice.call(ctx, "sip:bob@site.test")
			if code := statusOf(err); code != 480 {
				t.Errorf("call to an unregistered user: %v, want 480", err)
			}
		})
	}
}

// TestMessageAndOptions carries a MESSAGE to a registered phone and
// answers OPTIONS addressed to the proxy itself.
func TestMessageAndOptions(t *testing.T) {
	s := testServer(t, "sp1", "site.test", nil, Deps{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bob := newPhone(t, "bob", s.addr("udp"), "udp")
	alice := newPhone(t, "alice", s.addr("udp"), "udp")
	if res, err := bob.register(ctx, "sip:bob@site.test", 600, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER: %v %v", res, err)
	}
	req := sip.NewRequest(sip.MESSAGE, sip.Uri{Scheme: "sip", User: "bob", Host: "site.test"})
	req.AppendHeader(sip.NewHeader("Content-Type", "text/plain"))
	req.SetBody([]byte("hello bob"))
	res, err := alice.do(ctx, req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("MESSAGE: %v %v", res, err)
	}
	select {
	case m := <-bob.messages:
		if string(m.Body()) != "hello bob" {
			t.Errorf("bob got %q", m.Body())
		}
	case <-ctx.Done():
		t.Fatal("bob never got the MESSAGE")
	}
	opt := sip.NewRequest(sip.OPTIONS, sip.Uri{Scheme: "sip", Host: s.addr("udp").Addr().String(), Port: int(s.addr("udp").Port())})
	res, err = alice.do(ctx, opt)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("OPTIONS to the proxy: %v %v", res, err)
	}
}

// selfSigned returns a TLS configuration with a fresh self-signed
// certificate for 127.0.0.1.
func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "superpeer test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// TestCallOverTLS: with a certificate configured the superpeer serves
// TLS; a phone registers over TLS and is called over its TLS flow.
func TestCallOverTLS(t *testing.T) {
	s := testServer(t, "sp1", "site.test", nil, Deps{}, func(c *Config) {
		c.TLS = selfSigned(t)
		c.Listen = append(c.Listen, Listener{Network: "tls", Addr: "127.0.0.1:0"})
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bob := newPhone(t, "bob", s.addr("tls"), "tls")
	alice := newPhone(t, "alice", s.addr("udp"), "udp")
	if res, err := bob.register(ctx, "sip:bob@site.test", 600, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER over TLS: %v %v", res, err)
	}
	sess, err := alice.call(ctx, "sip:bob@site.test")
	if err != nil {
		t.Fatalf("call to bob over his TLS flow: %v", err)
	}
	if err := sess.Bye(ctx); err != nil {
		t.Fatalf("BYE: %v", err)
	}
	if bob.invites.Load() != 1 || bob.byes.Load() != 1 {
		t.Errorf("bob saw %d INVITEs and %d BYEs, want 1 and 1", bob.invites.Load(), bob.byes.Load())
	}
}

// TestOtherMethods: SUBSCRIBE, NOTIFY, PRACK, UPDATE and INFO are proxied
// to the registered phone and its answer comes back; SUBSCRIBE is
// record-routed (it makes a dialog), the others are not.
func TestOtherMethods(t *testing.T) {
	s := testServer(t, "sp1", "site.test", nil, Deps{}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bob := newPhone(t, "bob", s.addr("udp"), "udp")
	alice := newPhone(t, "alice", s.addr("udp"), "udp")
	if res, err := bob.register(ctx, "sip:bob@site.test", 600, nil); err != nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER: %v %v", res, err)
	}
	methods := []sip.RequestMethod{sip.SUBSCRIBE, sip.NOTIFY, sip.PRACK, sip.UPDATE, sip.INFO}
	for _, m := range methods {
		req := sip.NewRequest(m, sip.Uri{Scheme: "sip", User: "bob", Host: "site.test"})
		if m == sip.SUBSCRIBE || m == sip.NOTIFY {
			req.AppendHeader(sip.NewHeader("Event", "presence"))
		}
		req.AppendHeader(alice.contact.Clone())
		res, err := alice.do(ctx, req)
		if err != nil || res.StatusCode != 200 {
			t.Errorf("%s: %v %v, want bob's 200", m, res, err)
			continue
		}
		if rr := res.GetHeader("Record-Route"); (rr != nil) != (m == sip.SUBSCRIBE || m == sip.NOTIFY) {
			t.Errorf("%s: Record-Route %v", m, rr)
		}
	}
	bob.mu.Lock()
	got := strings.Join(bob.methods, " ")
	bob.mu.Unlock()
	if want := "SUBSCRIBE NOTIFY PRACK UPDATE INFO"; got != want {
		t.Errorf("bob received %q, want %q", got, want)
	}
}

// TestListenersShareAPort: UDP and TCP listeners configured with port 0
// end up on one port, so that the superpeer's SIP service is one
// address for both transports.
func TestListenersShareAPort(t *testing.T) {
	s := testServer(t, "sp", "site.test", nil, Deps{}, nil)
	if u, c := s.addr("udp"), s.addr("tcp"); u != c {
		t.Errorf("UDP listens on %v, TCP on %v; want one address", u, c)
	}
}
