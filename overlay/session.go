package overlay

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/pion/dtls/v3"

	"github.com/superpeer/superpeer/overlay/wire"
)

// session is an authenticated DTLS association with one peer. It is a
// table link when linked is set; otherwise it is transient (a join query,
// a relay carrier) and is closed when idle.
type session struct {
	node    *Node
	conn    *dtls.Conn
	pipe    *pipeConn
	peer    NodeID
	key     ed25519.PublicKey
	remote  net.Addr
	kind    PathKind
	via     NodeID // relay node of a relayed session
	created time.Time
	client  bool

	writeMu sync.Mutex

	// guarded by node.mu
	linked    bool
	lastHeard time.Time
	rtt       time.Duration
	pingNonce uint64
	pingSent  time.Time
	contact   wire.Contact
	carrying  int  // relayed sessions that run through this one
	suspect   bool // a forward to it went unacknowledged; cleared by any frame
	requested bool // we asked the peer to hold this session as a link
	decided   bool // the peer answered our request
	closed    bool
}

func (s *session) send(f *wire.Frame) error {
	b, err := wire.Marshal(f)
	if err != nil {
		return err
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if _, err := s.conn.Write(b); err != nil {
		return fmt.Errorf("sending to %s: %w", s.peer.Short(), err)
	}
	return nil
}

func (n *Node) dtlsConfig(expect *NodeID) *dtls.Config {
	return &dtls.Config{
		Certificates:         []tls.Certificate{n.cert},
		InsecureSkipVerify:   true, // self-signed: the key is pinned below
		ClientAuth:           dtls.RequireAnyClientCert,
		ExtendedMasterSecret: dtls.RequireExtendedMasterSecret,
		CipherSuites:         []dtls.CipherSuiteID{dtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			pub, err := peerKey(raw)
			if err != nil {
				return err
			}
			if IDOf(pub) == n.id {
				return errors.New("peer proved this node's own key")
			}
			if expect != nil && IDOf(pub) != *expect {
				return fmt.Errorf("%w: got %s, pinned %s", ErrWrongPeer, IDOf(pub).Short(), expect.Short())
			}
			return nil
		},
	}
}

// handshake runs DTLS on pipe as client (dialing) or server, and starts the
// session. expect pins the peer's node ID when known.
func (n *Node) handshake(ctx context.Context, pipe *pipeConn, client bool, expect *NodeID, kind PathKind, via NodeID) (*session, error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.HandshakeTimeout)
	defer cancel()
	var conn *dtls.Conn
	var err error
	if client {
		conn, err = dtls.Client(pipe, pipe.remote, n.dtlsConfig(expect))
	} else {
		conn, err = dtls.Server(pipe, pipe.remote, n.dtlsConfig(expect))
	}
	if err == nil {
		err = conn.HandshakeContext(ctx)
	}
	if err != nil {
		if conn != nil {
			_ = conn.Close()
		}
		_ = pipe.Close()
		return nil, fmt.Errorf("DTLS handshake with %s: %w", pipe.remote, err)
	}
	state, _ := conn.ConnectionState()
	pub, err := peerKey(state.PeerCertificates)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("DTLS handshake with %s: %w", pipe.remote, err)
	}
	s := &session{
		node: n, conn: conn, pipe: pipe, peer: IDOf(pub), key: pub, remote: pipe.remote,
		kind: kind, via: via, created: n.clock.Now(), client: client,
	}
	s.lastHeard = s.created
	return s, nil
}

// readLoop reads frames until the session ends.
func (s *session) readLoop() {
	buf := make([]byte, wire.MaxFrame+1024)
	for {
		k, err := s.conn.Read(buf)
		if err != nil {
			s.node.dropSession(s, "read: "+err.Error())
			return
		}
		f, err := wire.Unmarshal(append([]byte(nil), buf[:k]...))
		if err != nil {
			s.node.log.Debug("overlay: bad frame", "peer", s.peer.Short(), "err", err)
			continue
		}
		s.node.handleFrame(s, f)
	}
}
