// Package portmap asks the site's gateway to forward a port: UPnP IGD v1/v2
// (WANIPConnection 1 and 2, WANPPPConnection 1, through goupnp), NAT-PMP
// (RFC 6886) and PCP (RFC 6887 MAP and ANNOUNCE, with nonce and epoch
// checks), probed in parallel. Finite leases are renewed at half-life, the
// routers' quirks are handled (UPnP 725 OnlyPermanentLeasesSupported, 718
// ConflictInMappingEntry, 402 Invalid Args, an external address of 0.0.0.0),
// SSDP answers are untrusted (only URLs on the gateway's own subnet, with
// size and time limits), every mapping is verified end to end by a Verifier
// and re-created when it stops forwarding, and all are released on Close.
// Every socket is opened through a transport.Net and every timer comes from
// a clock.Clock.
package portmap
