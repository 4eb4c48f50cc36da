// Package probe is Superpeer's NAT discovery client (RFC 5780): it tells
// the NAT's mapping and filtering behaviour, hairpinning, port
// preservation and external address (sections 4.3 to 4.5), and measures
// how long the NAT keeps an idle UDP binding (section 4.6) in both
// conntrack states a Linux or OpenWrt NAT has: a flow whose only exchange
// was in its first 2 seconds ("unreplied") and a flow that carried traffic
// later on ("stream", the state of every long-lived flow). The Estimator
// keeps that measurement current for the keeper. Its server is
// nat/stunserver.
package probe
