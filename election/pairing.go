package election

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pion/transport/v5"

	"github.com/superpeer/superpeer/nat/clock"
)

// Operator-approved pairing gives the site secret to a new peer without
// anyone copying a token:
//
//  1. The newcomer (Pair) draws an X25519 key pair, shows a pairing code
//     (50 bits of the SHA-256 of its public key, as "ABCDE-FGHIJ") and
//     announces a pairing request with the public key on the LAN.
//  2. The operator reads the code on the newcomer and approves it on a
//     member (Node.ApprovePairing). The member seals the site secret with
//     AES-256-GCM under a key from X25519 between its own fresh key and
//     the newcomer's, and sends the offer to the newcomer.
//  3. The newcomer opens the offer and has the secret.
//
// The secret is sealed to the key whose code the operator typed, so a
// device the operator did not approve cannot read it; to be approved in
// its place a device would need a key with the same 50-bit code. The
// newcomer takes the first offer it can open: a hostile device on the LAN
// could offer it a different site, which the operator would see in its
// status (the site ID) and undo.

// pairingInterval is how often a newcomer repeats its request.
const pairingInterval = time.Second

type pairRequest struct {
	ID  string `json:"id"`
	Pub []byte `json:"pub"`
}

type pairOffer struct {
	To    string `json:"to"`
	Pub   []byte `json:"pub"`
	Nonce []byte `json:"nonce"`
	Box   []byte `json:"box"`
}

// PairingRequest is a newcomer asking to join, as a member hears it.
type PairingRequest struct {
	ID   string    `json:"id"`
	Code string    `json:"code"`
	From string    `json:"from"`
	Seen time.Time `json:"seen"`

	pub  []byte
	addr net.Addr
}

// ErrUnknownPairingCode: no newcomer with that code is asking.
var ErrUnknownPairingCode = errors.New("no pairing request with that code")

// PairingCode returns the code a newcomer with public key pub shows.
func PairingCode(pub []byte) string {
	sum := sha256.Sum256(pub)
	c := base32.StdEncoding.EncodeToString(sum[:])[:10]
	return c[:5] + "-" + c[5:]
}

func normalizeCode(c string) string {
	return strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(c), " ", ""))
}

// pairingKey derives the sealing key of an offer.
func pairingKey(shared, newcomerPub, memberPub []byte) (cipher.AEAD, error) {
	info := append(append([]byte("superpeer pairing "), newcomerPub...), memberPub...)
	key, err := hkdf.Key(sha256.New, shared, nil, string(info), 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// sealOffer seals secret for the newcomer of req.
func sealOffer(secret *SiteSecret, req pairRequest) (pairOffer, error) {
	peer, err := ecdh.X25519().NewPublicKey(req.Pub)
	if err != nil {
		return pairOffer{}, fmt.Errorf("pairing request of %s has no valid X25519 key: %w", req.ID, err)
	}
	mine, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return pairOffer{}, fmt.Errorf("drawing a pairing key: %w", err)
	}
	shared, err := mine.ECDH(peer)
	if err != nil {
		return pairOffer{}, fmt.Errorf("pairing with %s: %w", req.ID, err)
	}
	aead, err := pairingKey(shared, req.Pub, mine.PublicKey().Bytes())
	if err != nil {
		return pairOffer{}, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return pairOffer{}, err
	}
	return pairOffer{
		To: req.ID, Pub: mine.PublicKey().Bytes(), Nonce: nonce,
		Box: aead.Seal(nil, nonce, secret.key[:], []byte(req.ID)),
	}, nil
}

// openOffer opens an offer made to the holder of key.
func openOffer(key *ecdh.PrivateKey, id string, o pairOffer) (*SiteSecret, error) {
	peer, err := ecdh.X25519().NewPublicKey(o.Pub)
	if err != nil {
		return nil, fmt.Errorf("pairing offer has no valid X25519 key: %w", err)
	}
	shared, err := key.ECDH(peer)
	if err != nil {
		return nil, err
	}
	aead, err := pairingKey(shared, key.PublicKey().Bytes(), o.Pub)
	if err != nil {
		return nil, err
	}
	if len(o.Nonce) != aead.NonceSize() {
		return nil, errors.New("pairing offer has a bad nonce")
	}
	plain, err := aead.Open(nil, o.Nonce, o.Box, []byte(id))
	if err != nil || len(plain) != 32 {
		return nil, errors.New("pairing offer was not sealed for this key")
	}
	var k [32]byte
	copy(k[:], plain)
	return secretFromKey(k)
}

// pairingTable keeps the requests a member hears, by code.
type pairingTable struct {
	clock clock.Clock
	ttl   time.Duration

	mu   sync.Mutex // guards following
	reqs map[string]PairingRequest
}

func newPairingTable(c clock.Clock, ttl time.Duration) *pairingTable {
	return &pairingTable{clock: c, ttl: ttl, reqs: map[string]PairingRequest{}}
}

func (t *pairingTable) add(r pairRequest, from net.Addr) {
	if r.ID == "" || len(r.Pub) != 32 {
		return
	}
	code := PairingCode(r.Pub)
	t.mu.Lock()
	t.reqs[code] = PairingRequest{ID: r.ID, Code: code, From: from.String(), Seen: t.clock.Now(), pub: r.Pub, addr: from}
	t.mu.Unlock()
}

func (t *pairingTable) list() []PairingRequest {
	now := t.clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []PairingRequest
	for code, r := range t.reqs {
		if now.Sub(r.Seen) > t.ttl {
			delete(t.reqs, code)
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Code < out[j].Code })
	return out
}

func (t *pairingTable) get(code string) (PairingRequest, bool) {
	code = normalizeCode(code)
	for _, r := range t.list() {
		if r.Code == code {
			return r, true
		}
	}
	return PairingRequest{}, false
}

// PairingRequests lists newcomers asking to join on the LAN, with the
// codes they show.
func (d *MulticastDiscovery) PairingRequests() []PairingRequest { return d.pairs.list() }

// approve seals the site secret for the newcomer showing code and sends
// it to the newcomer (three times: it is one datagram).
func (d *MulticastDiscovery) approve(code string, secret *SiteSecret) (PairingRequest, error) {
	r, ok := d.pairs.get(code)
	if !ok {
		return PairingRequest{}, fmt.Errorf("approving pairing code %s: %w", code, ErrUnknownPairingCode)
	}
	offer, err := sealOffer(secret, pairRequest{ID: r.ID, Pub: r.pub})
	if err != nil {
		return r, err
	}
	msg, err := json.Marshal(wireMessage{Offer: &offer})
	if err != nil {
		return r, err
	}
	for range 3 {
		if _, err := d.sock.conn.WriteTo(msg, r.addr); err != nil {
			return r, fmt.Errorf("sending the pairing offer to %s at %s: %w", r.ID, r.addr, err)
		}
	}
	return r, nil
}

// pairingDiscovery is a Discovery that can pair.
type pairingDiscovery interface {
	PairingRequests() []PairingRequest
	approve(code string, secret *SiteSecret) (PairingRequest, error)
}

// PairingRequests lists newcomers asking to join (for `superpeer peers`).
func (n *Node) PairingRequests() []PairingRequest {
	if pd, ok := n.disc.(pairingDiscovery); ok {
		return pd.PairingRequests()
	}
	return nil
}

// ApprovePairing gives the site secret to the newcomer that shows code:
// the operator's approval step.
func (n *Node) ApprovePairing(ctx context.Context, code string) error {
	pd, ok := n.disc.(pairingDiscovery)
	if !ok {
		return errors.New("approving a pairing: this node's discovery cannot pair")
	}
	r, err := pd.approve(code, n.cfg.Secret)
	if err != nil {
		return err
	}
	n.log.Info("pairing approved: sent the site secret", "newcomer", r.ID, "code", r.Code, "from", r.From)
	return nil
}

// PairConfig configures Pair.
type PairConfig struct {
	// ID is the newcomer's node ID.
	ID string
	// Group is the announcement group (Config.MulticastGroup).
	Group string
	// Interfaces, as in MulticastConfig.
	Interfaces []string
	Net        transport.Net
	Clock      clock.Clock
	Logger     *slog.Logger
}

// Pair asks the LAN for the site secret and waits for an operator to
// approve it on a member. show is called once with the code to display.
// It returns the secret (for SiteSecret.Save) or ctx's error.
func Pair(ctx context.Context, cfg PairConfig, show func(code string)) (*SiteSecret, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ID == "" {
		return nil, errors.New("pairing: no node ID")
	}
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("drawing a pairing key: %w", err)
	}
	sock, err := openLANSocket(ctx, cfg.Net, cfg.Group, cfg.Interfaces, cfg.Logger)
	if err != nil {
		return nil, err
	}
	defer sock.conn.Close()
	req, err := json.Marshal(wireMessage{Pair: &pairRequest{ID: cfg.ID, Pub: key.PublicKey().Bytes()}})
	if err != nil {
		return nil, err
	}
	show(PairingCode(key.PublicKey().Bytes()))

	got := make(chan *SiteSecret, 1)
	done := make(chan struct{})
	defer close(done)
	go sock.readLoop(done, func(w wireMessage, from net.Addr) {
		if w.Offer == nil || w.Offer.To != cfg.ID {
			return
		}
		s, err := openOffer(key, cfg.ID, *w.Offer)
		if err != nil {
			cfg.Logger.Info("ignored a pairing offer", "from", from, "err", err)
			return
		}
		select {
		case got <- s:
		default:
		}
	})
	t := clock.OrReal(cfg.Clock).NewTimer(pairingInterval)
	defer t.Stop()
	for {
		sock.send(req)
		select {
		case s := <-got:
			cfg.Logger.Info("paired: received the site secret", "site", s.SiteID())
			return s, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a member to approve pairing: %w", ctx.Err())
		case <-t.C():
			t.Reset(pairingInterval)
		}
	}
}
