// Package overlay is the structured peer-to-peer overlay between sites
// (RELOAD, RFC 6940, as model): node identity, a XOR-metric routing table
// with a hard bound on links, static links across NATs (direct, mapped,
// hole-punched, relayed) and the DHT of signed records that serves as the
// SIP location service. It knows nothing of SIP or Raft.
package overlay
