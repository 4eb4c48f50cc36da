// Package turn is the superpeer's media relay: a hardened TURN server
// (RFC 8656, with RFC 6062 TCP relays and RFC 6156 IPv6 allocations) on
// pion/turn, whose relayed addresses are the ones the world can reach.
//
// Three things set it apart from a stock pion server:
//
//   - A NAT-aware relay-address generator. Each allocation binds a local
//     port and reports the address the outside reaches: a verified port
//     mapping from the gateway (UPnP IGD, NAT-PMP or PCP, behind the
//     PortMapper interface) when there is one, else the endpoint-independent
//     mapping (RFC 4787) that a STUN Binding request (RFC 8489) sent from
//     that very socket learns. When a permission is created the relay sends
//     first towards the peer, so an address-and-port-dependent filter lets
//     the peer's media in, and the relay's flows are pinholes under the
//     keeper (the Pinholes interface) while the allocation lives.
//   - Ephemeral credentials in the TURN REST API form
//     (draft-uberti-behave-turn-rest-00, as coturn's use-auth-secret reads
//     them): username "expiry:user", password
//     base64(HMAC-SHA1(secret, username)), with a capped lifetime.
//   - Hardening by default: relaying into loopback, private, shared
//     (RFC 6598), link-local, multicast, documentation, benchmarking and
//     reserved space (the RFC 6890 registries) is refused with 403 after
//     every IPv4-in-IPv6 form (RFC 4291 mapped and compatible, 6to4
//     RFC 3056, NAT64 RFC 6052, Teredo RFC 4380, ISATAP RFC 5214) has been
//     reduced to the IPv4 address it carries; an explicit allow list opens
//     chosen ranges. Per-user and total allocation quotas (486), a
//     permission cap, a bandwidth cap and a rate limit on 401 answers
//     complete it, and every refusal is counted by reason.
//
// Server is the whole of it; Config holds every knob with DefaultConfig
// and Validate; Status and Metrics report allocations, permissions,
// channels, relayed traffic and refusals.
//
// Clients get credentials from Server.Credentials (the daemon's control
// API hands them to LAN peers). The SIP proxy anchors media the same way:
// it mints credentials in process and allocates with an ordinary TURN
// client (pion's turn.Client over the daemon's transport.Net) on one of
// UDPAddrs, so relayed media takes the very path a LAN peer's would, with
// the same policy, quotas and counters; any superpeer of the site accepts
// the credentials, since they share the secret.
package turn
