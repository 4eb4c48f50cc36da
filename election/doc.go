// Package election finds the site's peers on the LAN (multicast, DNS-SD
// RFC 6763), runs the site's Raft group, scores each peer's capability,
// commits the superpeer set and replicates the site state (registrations,
// credentials) so that a superpeer's death loses nothing. It knows nothing
// of SIP message handling or overlay routing.
package election
