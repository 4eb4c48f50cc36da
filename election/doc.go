// Package election finds the site's peers on the LAN (signed multicast and
// broadcast announcements; DNS-SD, RFC 6763, over multicast DNS, RFC 6762),
// runs the site's Raft group over mutual TLS, scores each peer's
// capability, commits the superpeer set and replicates the site state
// (registrations, the TURN secret, overlay records, site configuration) so
// that a superpeer's death loses nothing. It knows nothing of SIP message
// handling or overlay routing.
//
// # Pieces
//
//   - Score and VoterEligible rank devices (see Score for the table).
//   - SiteState and FSM: the replicated state and its pure Apply; Command
//     is the only way to change it.
//   - BoltStore: Raft's log and stable store in one bbolt file; snapshots
//     are files next to it.
//   - SiteSecret: the site secret, its join token, and the mutual TLS
//     derived from it. Pair and Node.ApprovePairing hand it over with an
//     operator's approval.
//   - Discovery (MulticastDiscovery on the LAN, MemLAN in tests) and DNSSD.
//   - Node: one peer. Start, Close, Status, Discover, Superpeers,
//     WatchSuperpeers, Registrations, Apply, Barrier.
//   - RegistrationStore: the SIP registrar's store (Node.Registrations, or
//     MemStore in the registrar's own tests).
//
// # Joining a site
//
// The secret is made by the first start of the site's first peer
// (OpenSecret with create). Another peer gets it only by an explicit join
// step (the operator copies SiteSecret.Token to it; ParseJoinToken, Save)
// or by pairing (the newcomer runs Pair and shows a code, the operator
// approves the code on a member). Group connections are TLS 1.3 with both
// sides presenting a certificate signed by an authority derived from the
// secret, so a device without it can neither join nor make the group apply
// anything; announcements carry an HMAC under the secret and unsigned ones
// are listed (Discover) but never acted on.
//
// # Bootstrap
//
// A peer with Raft state just starts. A peer without joins the group
// through any peer that announces membership; if none does, it waits
// BootstrapWindow, then the first of itself and the new peers it hears, in
// (voter-eligible first, node ID) order, founds a group of one and
// everyone else joins it. All peers that hear each other order the same
// set the same way, so exactly one group forms when they all start at
// once. Peers that cannot hear each other at all for a whole window could
// each found a group; announcements go both to the multicast group and to
// the subnet broadcast address so that IGMP-snooping switches do not
// cause that. Should it happen anyway, the groups do not merge by
// themselves: each leader logs it and lists the other group's peers in
// Status.ForeignGroup, and the smaller group's peers rejoin when restarted
// with empty state.
//
// # Membership
//
// The leader adds joiners as non-voters and keeps as voters the most
// stable eligible devices (mains-powered routers, boards and desktops of
// role full): 5, 3 or 1 of them, never 2 or 4. It counts a member down
// after DownAfter of failed heartbeats (at once for a predecessor leader
// that does not answer a probe), replaces a down voter with a live
// eligible device if there is one, and removes a member down for
// DeadMemberGrace. A member that shuts down gracefully is marked away and,
// if it leads, commits a superpeer set without itself and hands the lead
// to another voter first. Desktop agents (RolePeer) never vote and are
// never superpeers; they follow the set with WatchSuperpeers.
//
// # The superpeer set
//
// The leader commits k superpeers (Config.SuperpeerCount, or the site
// configuration's) by score among live full members. A live incumbent
// keeps its place unless a challenger outscores it by more than
// SuperpeerHysteresis; a down or away one is replaced at once. Each set
// has an epoch (its log index) and a reason.
//
// # Writes, reads and flash
//
// Every write goes through the leader (Node.Apply forwards) and returns
// once committed and applied on the calling node. Node.Barrier (and
// LookupCurrent) is the leader check for reads that must be current: the
// leader confirms its lead, names its last committed state entry, and the
// caller waits until it has applied it. Registration refreshes do not
// write flash each time: see RegistrationStore for the bound on what a
// whole-site power loss can lose (the refreshes of the last RefreshFlush)
// and why one superpeer's death loses nothing.
//
// # Timing
//
// The defaults are tuned for a LAN: heartbeat and election timeout 300 ms
// (hashicorp/raft's 1 s defaults take 1.7-2.7 s to elect), DownAfter
// 200 ms, RPCTimeout 1 s (how long a powered-off peer takes to be noticed).
// bench/failover.sh measures the failover; docs/BENCHMARKS.md has the
// figures.
package election
