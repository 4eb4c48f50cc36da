// Package sip is the superpeer's SIP registrar and stateful proxy: phones on
// the site's LAN register here, and calls go from a phone to a registered
// flow on the same site, or through the overlay to the superpeer of another
// site and into that site's LAN over the callee's registered flow.
//
// It builds on sipgo for the transport, parser and transaction layers and
// adds what a superpeer needs on top: the registrar (RFC 3261 section 10)
// with rport/received (RFC 3581), SIP Outbound flows, flow tokens and
// keepalives (RFC 5626) and Path (RFC 3327); proxy routing with
// Record-Route, Max-Forwards and loop detection (RFC 3261 section 16);
// strict validation of what the parser lets through (the must-refuse
// messages of RFC 4475); a per-source flood limit; media anchoring through
// relays for endpoints that do not do ICE (RFC 4566 SDP, RFC 8445 ICE
// detection); and a local outbound proxy for desktops that follows the
// current superpeer.
//
// Its seams are interfaces the daemon backs with the other packages:
// Bindings (the site's replicated registrations), Locator and Carrier (the
// overlay's location service and superpeer-to-superpeer links) and
// MediaRelay (the TURN relay). In-memory implementations of each make a
// whole multi-site system run in one test.
package sip
