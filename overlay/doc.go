// Package overlay is the structured peer-to-peer overlay between sites
// (RELOAD, RFC 6940, as model): node identity, a XOR-metric routing table
// with a hard bound on links, static links across NATs (direct, mapped,
// hole-punched, relayed) and the DHT of signed records that serves as the
// SIP location service. It knows nothing of SIP or Raft.
//
// A Node (New) owns one UDP socket opened through the injected
// transport.Net; every link is a DTLS 1.2 association (pion/dtls) on that
// socket, authenticated both ways with self-signed ed25519 certificates
// whose keys are the node identities (node ID = SHA-256 of the public key,
// LoadOrCreateIdentity). Links are made through a rendezvous: the request
// is routed to the far node through the overlay, and the far node says how
// to cross the NATs (dial me, I dial you, punch from both sides at once, or
// go through a reachable superpeer that relays the DTLS datagrams). The
// routing decisions are overlay/routing's, the records and their store are
// overlay/dht's, the frames overlay/wire's; overlay/sim drives the same
// routing code with 100,000 simulated nodes.
//
// For the SIP layer: Send carries a payload to a node, Route carries one
// hop by hop to the root of a key, HandleMessages and HandleRouted receive
// them; Publish, Get and Put are the location service. For the daemon:
// Status is the snapshot `superpeer overlay` shows, PinholeRegistrar is
// where the nat keeper learns about each link's UDP path.
package overlay
