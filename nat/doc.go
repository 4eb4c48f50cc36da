// Package nat learns and keeps the site's way through its NAT: behaviour
// discovery and binding-lifetime measurement (RFC 5780), port mapping
// (UPnP IGD, NAT-PMP RFC 6886, PCP RFC 6887), and the pinhole table with
// the keeper that refreshes each pinhole just inside its measured lifetime
// (RFC 5626 keepalives). It knows nothing of SIP, Raft or the overlay.
package nat
