// Package superpeer is the appliance: it wires nat, election and overlay
// together with the SIP registrar and proxy (RFC 3261, 3327, 3581, 5626),
// the TURN relay (RFC 8656) and the local control API, and runs them as one
// daemon.
package superpeer
