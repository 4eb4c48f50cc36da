// Package netlab builds NAT test topologies out of Linux network namespaces,
// veth pairs and bridges: a WAN with hosts on documentation addresses
// (RFC 5737), and sites that are each a NAT host (nftables masquerade,
// port-preserving or fully random, per-namespace conntrack UDP timeouts, a
// per-host pinhole limit, no new UDP flows from the WAN to the router
// itself as a home router's WAN zone, optionally miniupnpd as a real UPnP IGD and
// NAT-PMP gateway, optionally a carrier-grade NAT in front) with LAN hosts
// behind it.
//
// Tests call Start, which skips when the process cannot build namespaces
// (not root, tools missing) and tears everything down in t.Cleanup, also
// after a failure or a panic. Programs run inside a host with Host.Command
// and Host.Start; Go code runs there with Host.Do, and Host.Net gives a
// transport.Net whose sockets are all opened inside the host's namespace.
// Every name carries a prefix that encodes the owning process, so two runs
// never collide and Sweep removes what a killed run left behind.
package netlab
