package election

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/pion/transport/v5"

	"github.com/superpeer/superpeer/nat/clock"
)

// Node is one peer of a site: it announces itself, founds or joins the
// site's group, and while it leads, keeps the voters and the superpeer set
// right. Every peer reads the replicated site state from its own FSM.
type Node struct {
	cfg   Config
	log   *slog.Logger
	clock clock.Clock
	id    string
	site  string

	fsm   *FSM
	raft  *raft.Raft
	logs  raft.LogStore
	trans *raft.NetworkTransport
	group *groupListener
	rpc   *rpcClient
	disc  Discovery
	sd    *DNSSD // nil when DNS-SD is off or unavailable
	bolt  *BoltStore

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	kick     chan struct{}
	obsCh    chan raft.Observation
	observer *raft.Observer
	started  time.Time

	soft    *softTable
	watches *watchHub

	reconcileMu sync.Mutex   // one reconciliation at a time
	reconciles  atomic.Int64 // completed reconciliation passes (tests wait on it)
	handedOver  atomic.Bool  // Close moved the lead to another voter

	mu          sync.Mutex // guards following
	capability  Capability
	services    Services
	failing     map[string]time.Time // leader: when heartbeats to a member began to fail
	leaderSince time.Time            // when this node last saw a leader (or started)
	closing     bool
	lastJoin    time.Time
	readyTerm   uint64   // leader: the term whose earlier entries are applied here
	following   string   // the leader this node last followed
	foreign     []string // leader: peers of this site in another group
}

// Start opens the group listener and the stores, starts Raft and begins
// announcing. A node without Raft state founds the site's group or joins
// it according to the bootstrap rule (see the package documentation).
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if cfg.Net == nil {
		return nil, errNoNet
	}
	n := &Node{
		cfg:        cfg,
		log:        cfg.Logger.With("node", cfg.NodeID),
		clock:      cfg.Clock,
		id:         cfg.NodeID,
		site:       cfg.Secret.SiteID(),
		kick:       make(chan struct{}, 1),
		obsCh:      make(chan raft.Observation, 64),
		capability: cfg.Capability,
		services:   cfg.Services,
		failing:    map[string]time.Time{},
		watches:    newWatchHub(),
	}
	n.started = n.clock.Now()
	n.leaderSince = n.started
	n.soft = newSoftTable()
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if err := n.open(ctx); err != nil {
		n.cancel()
		if n.raft != nil {
			n.raft.Shutdown()
		}
		n.closeResources()
		return nil, err
	}
	n.wg.Add(3)
	go n.observeLoop()
	go n.controlLoop()
	go n.flushLoop()
	n.log.Info("election node started", "addr", n.Addr(), "site", n.site, "role", cfg.Role,
		"score", Score(cfg.Capability), "data", cfg.DataDir)
	return n, nil
}

func (n *Node) open(ctx context.Context) error {
	cfg := n.cfg
	tlsCfg, err := cfg.Secret.TLSConfig(cfg.NodeID)
	if err != nil {
		return err
	}
	n.group, err = listenGroup(cfg.Net, tlsCfg, cfg.BindAddr, cfg.AdvertiseAddr, cfg.RPCTimeout, n.log)
	if err != nil {
		return err
	}
	n.rpc = newRPCClient(func(ctx context.Context, addr string) (net.Conn, error) {
		return n.group.dial(ctx, addr, kindRPC)
	})

	// Discovery first: Raft asks it for peers' addresses from its first
	// RPC on.
	n.disc = cfg.Discovery
	if n.disc == nil {
		md, err := NewMulticastDiscovery(ctx, cfg.NodeID, MulticastConfig{
			Group:      cfg.MulticastGroup,
			Interfaces: lanInterface(cfg.Net, n.group.advertise.(*net.TCPAddr).IP),
			Interval:   cfg.AnnounceInterval,
			Secret:     cfg.Secret,
			Net:        cfg.Net,
			Clock:      cfg.Clock,
			Logger:     n.log,
		})
		if err != nil {
			return err
		}
		n.disc = md // never a typed nil in the interface: Close checks it
	}
	var (
		logs   raft.LogStore
		stable raft.StableStore
		snaps  raft.SnapshotStore
	)
	hlog := newRaftLogger(n.log)
	if cfg.DataDir == "" {
		mem := raft.NewInmemStore()
		logs, stable, snaps = mem, mem, raft.NewInmemSnapshotStore()
	} else {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("creating election state directory %s: %w", cfg.DataDir, err)
		}
		n.bolt, err = OpenBoltStore(filepath.Join(cfg.DataDir, "raft.db"))
		if err != nil {
			return err
		}
		logs, stable = n.bolt, n.bolt
		if snaps, err = raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hlog); err != nil {
			return fmt.Errorf("opening snapshot store in %s: %w", cfg.DataDir, err)
		}
	}

	n.logs = logs
	n.fsm = NewFSM(n.onApply)
	n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		ServerAddressProvider: addrProvider{n},
		Logger:                hlog,
		Stream:                raftStream{n.group},
		MaxPool:               3,
		Timeout:               cfg.RPCTimeout,
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.Logger = hlog
	// A member removed while it was away rejoins by asking; it must not
	// stop for good when it learns of its removal.
	rc.ShutdownOnRemove = false
	if err := raft.ValidateConfig(rc); err != nil {
		return fmt.Errorf("raft configuration: %w", err)
	}
	n.raft, err = raft.NewRaft(rc, n.fsm, logs, stable, snaps, n.trans)
	if err != nil {
		return fmt.Errorf("starting raft: %w", err)
	}
	n.observer = raft.NewObserver(n.obsCh, false, nil)
	n.raft.RegisterObserver(n.observer)

	n.group.serve(func(c net.Conn) {
		serveRPCConn(n.ctx, c, 5*time.Minute, cfg.RPCTimeout, n.rpcHandlers())
	})

	if cfg.DNSSD {
		ip := n.group.advertise.(*net.TCPAddr).IP
		n.sd, err = NewDNSSD(ctx, DNSSDConfig{Self: cfg.NodeID, IP: ip, Net: cfg.Net, Clock: cfg.Clock, Logger: n.log})
		if err != nil {
			// The group does not need it; softphones lose a way to find us.
			n.log.Warn("DNS-SD unavailable; advertising by multicast announcements only", "err", err)
			n.sd = nil
		}
	}
	n.announce()
	return nil
}

// lanInterface names the multicast-capable interface that holds ip (the
// advertised group address): the LAN. Nil when there is none, which means
// every interface.
func lanInterface(n transport.Net, ip net.IP) []string {
	ifaces, err := n.Interfaces()
	if err != nil {
		return nil
	}
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagMulticast == 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.Equal(ip) {
				return []string{ifc.Name}
			}
		}
	}
	return nil
}

// Addr is the node's advertised group address.
func (n *Node) Addr() string { return n.group.advertise.String() }

// ID is the node's ID.
func (n *Node) ID() string { return n.id }

// addrProvider resolves a server ID to its current address: what the
// member announces (verified) first, so a peer whose DHCP lease changed is
// still reached, then the member table; Raft falls back to the address in
// its configuration.
type addrProvider struct{ n *Node }

func (p addrProvider) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	for _, h := range verifiedOnly(p.n.disc.Peers()) {
		if h.ID == string(id) && h.Addr != "" {
			return raft.ServerAddress(h.Addr), nil
		}
	}
	var addr string
	p.n.fsm.Read(func(s *SiteState) { addr = s.Members[string(id)].Addr })
	if addr == "" {
		return "", fmt.Errorf("no address known for %s", id)
	}
	return raft.ServerAddress(addr), nil
}

func (n *Node) poke() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// member is this node's own record.
func (n *Node) member() Member {
	n.mu.Lock()
	defer n.mu.Unlock()
	return Member{
		ID: n.id, Addr: n.Addr(), Role: n.cfg.Role,
		Capability: n.capability, Score: Score(n.capability), Services: n.services,
		Away: n.closing,
	}
}

// SetCapability updates what this device offers. The new score reaches
// the leader (and the replicated member table) when it changes.
func (n *Node) SetCapability(c Capability) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("setting capability: %w", err)
	}
	n.mu.Lock()
	n.capability = c
	n.mu.Unlock()
	n.announce()
	n.poke()
	return nil
}

// SetServices records where this peer serves SIP, STUN and TURN; they are
// replicated with its member record and advertised when it is a superpeer.
func (n *Node) SetServices(s Services) {
	n.mu.Lock()
	n.services = s
	n.mu.Unlock()
	n.announce()
	n.poke()
}

func (n *Node) hasGroup() bool {
	return n.raft.LastIndex() > 0
}

func (n *Node) announce() {
	m := n.member()
	a := Announcement{
		Site: n.site, ID: n.id, Addr: m.Addr, Role: m.Role, Score: m.Score,
		State: StateNew, Services: m.Services,
		Eligible: VoterEligible(m.Role, m.Capability),
	}
	if n.raft != nil && n.hasGroup() {
		a.State = StateMember
		_, lid := n.raft.LeaderWithID()
		a.Leader = string(lid)
		a.Superpeer = n.Superpeers().Contains(n.id)
	}
	n.disc.Announce(a)
	if n.sd != nil {
		n.sd.Update(a)
	}
}

// controlLoop runs the bootstrap rule, joining, and the leader's
// reconciliation, prompted by announcements, Raft events and a period.
func (n *Node) controlLoop() {
	defer n.wg.Done()
	period := min(n.cfg.AnnounceInterval, n.cfg.ReconcileInterval)
	t := n.clock.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.kick:
		case <-n.disc.Updates():
		case <-t.C():
			t.Reset(period)
		}
		n.step()
	}
}

func (n *Node) step() {
	n.announce()
	if !n.hasGroup() {
		n.bootstrapOrJoin()
		return
	}
	if n.raft.State() == raft.Leader {
		n.reconcile()
		n.checkForeignGroups()
		return
	}
	leaderAddr, _ := n.raft.LeaderWithID()
	n.mu.Lock()
	if leaderAddr != "" {
		n.leaderSince = n.clock.Now()
	}
	quiet := n.clock.Since(n.leaderSince)
	n.mu.Unlock()
	if leaderAddr == "" && quiet > 4*n.cfg.ElectionTimeout {
		// No leader for a while although we have state: we may have been
		// removed while away. Joining again is harmless if we were not.
		n.tryJoin()
		return
	}
	if leaderAddr != "" {
		n.reportIfChanged()
	}
}

// checkForeignGroups looks, on the leader, for a second group of the same
// site: a peer announcing membership whose leader is not in this group.
// That happens only if peers could not hear each other when they founded;
// the groups do not merge by themselves, so the operator is told (log and
// Status) to restart the smaller group's peers with empty state.
func (n *Node) checkForeignGroups() {
	cf := n.raft.GetConfiguration()
	if n.wait(cf) != nil {
		return
	}
	ours := map[string]bool{}
	for _, srv := range cf.Configuration().Servers {
		ours[string(srv.ID)] = true
	}
	var foreign []string
	for _, h := range verifiedOnly(n.disc.Peers()) {
		if h.State == StateMember && h.Leader != "" && !ours[h.ID] && !ours[h.Leader] {
			foreign = append(foreign, h.ID)
		}
	}
	sort.Strings(foreign)
	n.mu.Lock()
	news := !slices.Equal(foreign, n.foreign)
	n.foreign = foreign
	n.mu.Unlock()
	if news && len(foreign) > 0 {
		n.log.Warn("another group of this site is on the LAN; restart its peers with empty state to join this one",
			"peers", foreign, "members_here", len(ours))
	}
}

// bootstrapOrJoin is the bootstrap rule for a node without Raft state:
//
//  1. If any verified peer of the site announces that it is a member of
//     the group, join through it (the leader adds us as a non-voter).
//  2. Otherwise wait until BootstrapWindow has passed since start, so
//     every peer that started at the same moment has been heard.
//  3. Then the founder is the first, in (voter-eligible first, node ID
//     ascending) order, of this node and every verified new peer of role
//     full. If that is this node, it bootstraps a group of itself alone;
//     everyone else waits for its announcement and joins (rule 1).
//
// All peers order the same set of announcements the same way, so exactly
// one founds. Two groups could form only if two peers failed to hear each
// other for a whole window; then the later one would have been heard by
// then as a member, and rule 1 applies.
func (n *Node) bootstrapOrJoin() {
	heard := verifiedOnly(n.disc.Peers())
	for _, h := range heard {
		if h.State == StateMember {
			n.tryJoin()
			return
		}
	}
	if n.cfg.Role != RoleFull || n.clock.Since(n.started) < n.cfg.BootstrapWindow {
		return
	}
	me := n.member()
	type cand struct {
		id       string
		eligible bool
	}
	cands := []cand{{me.ID, VoterEligible(me.Role, me.Capability)}}
	for _, h := range heard {
		if h.State == StateNew && h.Role == RoleFull {
			cands = append(cands, cand{h.ID, h.Eligible})
		}
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].eligible != cands[j].eligible {
			return cands[i].eligible
		}
		return cands[i].id < cands[j].id
	})
	if cands[0].id != n.id {
		return
	}
	n.log.Info("founding the site's group", "peers_heard", len(heard))
	f := n.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
		Suffrage: raft.Voter, ID: raft.ServerID(n.id), Address: raft.ServerAddress(n.Addr()),
	}}})
	if err := n.wait(f); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		n.log.Warn("founding the site's group failed", "err", err)
		return
	}
	n.announce()
}

// tryJoin asks a member (preferably the announced leader) to add us.
func (n *Node) tryJoin() {
	n.mu.Lock()
	if n.clock.Since(n.lastJoin) < n.cfg.AnnounceInterval/2 && !n.lastJoin.IsZero() {
		n.mu.Unlock()
		return
	}
	n.lastJoin = n.clock.Now()
	n.mu.Unlock()

	heard := verifiedOnly(n.disc.Peers())
	var targets []string
	addrOf := map[string]string{}
	for _, h := range heard {
		addrOf[h.ID] = h.Addr
	}
	for _, h := range heard {
		if h.State == StateMember && h.Leader != "" && addrOf[h.Leader] != "" {
			targets = append(targets, addrOf[h.Leader])
		}
	}
	for _, h := range heard {
		if h.State == StateMember {
			targets = append(targets, h.Addr)
		}
	}
	if len(targets) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.RPCTimeout)
	defer cancel()
	if err := n.callLeader(ctx, targets[0], rpcJoin, n.member(), nil); err != nil {
		n.log.Debug("join request not accepted yet", "via", targets[0], "err", err)
		return
	}
	n.log.Info("joined the site's group", "via", targets[0])
}

// callLeader sends a request that only the leader serves, following one
// redirect.
func (n *Node) callLeader(ctx context.Context, addr, method string, req, resp any) error {
	err := n.rpc.call(ctx, addr, method, req, resp)
	var nl *NotLeaderError
	if errors.As(err, &nl) && nl.LeaderAddr != "" && nl.LeaderAddr != addr {
		err = n.rpc.call(ctx, nl.LeaderAddr, method, req, resp)
	}
	return err
}

// reportIfChanged sends our record to the leader when the replicated one
// differs in anything that matters (address, role, services, score).
func (n *Node) reportIfChanged() {
	me := n.member()
	var have Member
	var ok bool
	n.fsm.Read(func(s *SiteState) { have, ok = s.Members[n.id] })
	if ok && !memberChanged(have, me) {
		return
	}
	n.mu.Lock()
	if !n.lastJoin.IsZero() && n.clock.Since(n.lastJoin) < n.cfg.AnnounceInterval/2 {
		n.mu.Unlock()
		return
	}
	n.lastJoin = n.clock.Now()
	n.mu.Unlock()
	leaderAddr, _ := n.raft.LeaderWithID()
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.RPCTimeout)
	defer cancel()
	if err := n.callLeader(ctx, string(leaderAddr), rpcJoin, me, nil); err != nil {
		n.log.Debug("reporting our record to the leader failed", "err", err)
	}
}

func memberChanged(have, want Member) bool {
	return have.Addr != want.Addr || have.Role != want.Role || have.Services != want.Services || have.Away != want.Away ||
		have.Score != want.Score || have.Capability.Class != want.Capability.Class ||
		have.Capability.Power != want.Capability.Power ||
		have.Capability.Reachability != want.Capability.Reachability
}

// observeLoop turns Raft's observations into liveness and prompts.
func (n *Node) observeLoop() {
	defer n.wg.Done()
	for {
		select {
		case <-n.ctx.Done():
			return
		case o := <-n.obsCh:
			switch d := o.Data.(type) {
			case raft.FailedHeartbeatObservation:
				id := string(d.PeerID)
				n.mu.Lock()
				_, already := n.failing[id]
				if !already {
					n.failing[id] = n.clock.Now()
				}
				n.mu.Unlock()
				if !already {
					n.clock.AfterFunc(n.cfg.DownAfter, n.poke)
				}
			case raft.ResumedHeartbeatObservation:
				n.mu.Lock()
				delete(n.failing, string(d.PeerID))
				n.mu.Unlock()
				n.poke()
			case raft.LeaderObservation:
				n.mu.Lock()
				if d.LeaderID != "" {
					n.leaderSince = n.clock.Now()
				}
				if d.LeaderID == raft.ServerID(n.id) {
					// Liveness is the leader's own view; start afresh.
					clear(n.failing)
					if prev := n.following; prev != "" && prev != n.id {
						n.wg.Add(1)
						go n.probePredecessor(prev)
					}
				}
				if d.LeaderID != "" {
					n.following = string(d.LeaderID)
				}
				n.mu.Unlock()
				n.log.Info("leader changed", "leader", d.LeaderID)
				n.poke()
			case raft.RaftState, raft.PeerObservation:
				n.poke()
			}
		}
	}
}

// probePredecessor runs when this node has just won an election: the
// previous leader went silent for an election timeout (or handed over on
// shutdown). If it does not answer a request within 2*DownAfter either, it
// counts as down from now, without waiting for DownAfter of failed
// heartbeats, which for a powered-off device start only after a dial
// timeout.
func (n *Node) probePredecessor(id string) {
	defer n.wg.Done()
	var addr string
	n.fsm.Read(func(s *SiteState) { addr = s.Members[id].Addr })
	if addr == "" {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, 2*n.cfg.DownAfter)
	defer cancel()
	err := n.rpc.call(ctx, addr, rpcPing, struct{}{}, nil)
	if err == nil || n.ctx.Err() != nil || n.raft.State() != raft.Leader {
		return
	}
	n.mu.Lock()
	if since, ok := n.failing[id]; !ok || n.clock.Since(since) < n.cfg.DownAfter {
		n.failing[id] = n.clock.Now().Add(-n.cfg.DownAfter)
	}
	n.mu.Unlock()
	n.log.Info("the previous leader does not answer; counting it down", "member", id, "err", err)
	n.poke()

	// Raft lifts a down mark only when heartbeats resume after failing.
	// This mark came from the probe: a predecessor that restarts before
	// a heartbeat to it has failed would stay down for good (never a
	// superpeer again, removed after the grace period). Ask it again
	// until it answers, while this node leads and it is a member.
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.clock.After(n.cfg.RPCTimeout):
		}
		member := false
		n.fsm.Read(func(s *SiteState) { _, member = s.Members[id] })
		if !member || n.raft.State() != raft.Leader {
			return
		}
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.RPCTimeout)
		err := n.rpc.call(ctx, addr, rpcPing, struct{}{}, nil)
		cancel()
		if err == nil {
			n.mu.Lock()
			delete(n.failing, id)
			n.mu.Unlock()
			n.log.Info("the previous leader answers again", "member", id)
			n.poke()
			return
		}
	}
}

// reconcile is the leader's work: liveness, removals, voters, the
// superpeer set, the TURN secret and expired bindings.
func (n *Node) reconcile() {
	n.reconcileMu.Lock()
	defer n.reconcileMu.Unlock()
	// A new leader first applies everything its predecessors committed;
	// deciding on a stale state would, after a restart, make a second TURN
	// secret or a superpeer set from nothing.
	term := n.raft.CurrentTerm()
	n.mu.Lock()
	ready := n.readyTerm == term
	n.mu.Unlock()
	if !ready {
		if err := n.wait(n.raft.Barrier(n.cfg.ApplyTimeout)); err != nil {
			return
		}
		n.mu.Lock()
		n.readyTerm = term
		n.mu.Unlock()
	}
	defer n.reconciles.Add(1)
	cf := n.raft.GetConfiguration()
	if err := n.wait(cf); err != nil {
		return
	}
	servers := cf.Configuration().Servers
	var st *SiteState
	n.fsm.Read(func(s *SiteState) {
		st = &SiteState{Members: s.Members, Superpeers: s.Superpeers, TURN: s.TURN, Config: s.Config}
		st.Members = make(map[string]Member, len(s.Members))
		for k, v := range s.Members {
			st.Members[k] = v
		}
		st.Superpeers.IDs = append([]string(nil), s.Superpeers.IDs...)
	})

	now := n.clock.Now()
	views := make([]memberView, 0, len(servers))
	inConfig := map[string]bool{}
	n.mu.Lock()
	for _, s := range servers {
		id := string(s.ID)
		inConfig[id] = true
		m, known := st.Members[id]
		v := memberView{ID: id, Known: known, Member: m, Voter: s.Suffrage == raft.Voter}
		if since, ok := n.failing[id]; ok && id != n.id {
			down := now.Sub(since)
			v.Down = down >= n.cfg.DownAfter
			v.Dead = down >= n.cfg.DeadMemberGrace
		}
		if m.Away && id != n.id {
			v.Down = true
		}
		if id == n.id {
			v.Down = n.closing
		}
		views = append(views, v)
	}
	n.mu.Unlock()

	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.ApplyTimeout)
	defer cancel()
	timeout := n.cfg.ApplyTimeout

	// Our own record first: the founder and a re-elected leader may lack it.
	me := n.member()
	if have, ok := st.Members[n.id]; !ok || memberChanged(have, me) {
		if _, err := n.applyLocal(ctx, Command{Op: OpMemberPut, Member: &me}); err != nil {
			return
		}
		st.Members[n.id] = me
		for i := range views {
			if views[i].ID == n.id {
				views[i].Known, views[i].Member = true, Member{ID: me.ID, Addr: me.Addr, Role: me.Role, Capability: me.Capability, Score: Score(me.Capability), Services: me.Services}
			}
		}
	}

	// Removals of the dead.
	for _, v := range views {
		if !v.Dead {
			continue
		}
		n.log.Warn("removing a member that has been down for the grace period", "member", v.ID, "grace", n.cfg.DeadMemberGrace)
		if err := n.wait(n.raft.RemoveServer(raft.ServerID(v.ID), 0, timeout)); err != nil {
			n.log.Warn("removing member failed", "member", v.ID, "err", err)
			return
		}
		n.mu.Lock()
		delete(n.failing, v.ID)
		n.mu.Unlock()
		inConfig[v.ID] = false
	}
	for id := range st.Members {
		if !inConfig[id] {
			if _, err := n.applyLocal(ctx, Command{Op: OpMemberRemove, ID: id}); err != nil && !errors.Is(err, ErrUnknownMember) {
				return
			}
		}
	}

	// Voters.
	promote, demote := planVoters(views, n.cfg.MaxVoters, n.id)
	for _, id := range promote {
		m := st.Members[id]
		n.log.Info("promoting a member to voter", "member", id)
		if err := n.wait(n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(m.Addr), 0, timeout)); err != nil {
			n.log.Warn("promoting member failed", "member", id, "err", err)
			return
		}
	}
	for _, id := range demote {
		n.log.Info("demoting a voter", "member", id)
		if err := n.wait(n.raft.DemoteVoter(raft.ServerID(id), 0, timeout)); err != nil {
			n.log.Warn("demoting voter failed", "member", id, "err", err)
			return
		}
	}

	// The superpeer set.
	k := n.cfg.SuperpeerCount
	if st.Config.SuperpeerCount > 0 {
		k = st.Config.SuperpeerCount
	}
	var live []memberView
	for _, v := range views {
		if !v.Dead {
			live = append(live, v)
		}
	}
	if next, reason := chooseSuperpeers(st.Superpeers.IDs, live, k, n.cfg.SuperpeerHysteresis); reason != "" {
		n.log.Info("committing a new superpeer set", "superpeers", next, "previous", st.Superpeers.IDs, "reason", reason)
		if _, err := n.applyLocal(ctx, Command{Op: OpSuperpeers, IDs: next, Reason: reason, At: now}); err != nil {
			return
		}
	}

	// The TURN secret, made once by the first leader.
	if len(st.TURN.Current) == 0 {
		secret := make([]byte, 32)
		if _, err := rand.Read(secret); err == nil {
			_, _ = n.applyLocal(ctx, Command{Op: OpTURNSecret, Secret: secret, At: now})
		}
	}
	n.expireOld(ctx, now)
}

// expiryBatch is how long an expired binding may sit in the replicated
// state before the leader writes its removal: lookups hide it at once, and
// removing in batches keeps expiry from writing flash every few seconds.
const expiryBatch = 5 * time.Minute

// expiryMargin absorbs clock differences between peers.
const expiryMargin = 30 * time.Second

func (n *Node) expireOld(ctx context.Context, now time.Time) {
	oldest := time.Time{}
	n.fsm.Read(func(s *SiteState) {
		for _, byKey := range s.Registrations {
			for _, b := range byKey {
				if oldest.IsZero() || b.Expires.Before(oldest) {
					oldest = b.Expires
				}
			}
		}
		for _, r := range s.Records {
			if oldest.IsZero() || r.Expires.Before(oldest) {
				oldest = r.Expires
			}
		}
	})
	if oldest.IsZero() || now.Sub(oldest) < expiryBatch+expiryMargin {
		return
	}
	_, _ = n.applyLocal(ctx, Command{Op: OpExpire, At: now.Add(-expiryMargin)})
}

// wait waits for a Raft future, or until the node stops: a future queued
// just before Raft shut down may never be answered.
func (n *Node) wait(f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-n.ctx.Done():
		return raft.ErrRaftShutdown
	}
}

// applyLocal applies cmd on this node, which must be the leader.
func (n *Node) applyLocal(ctx context.Context, cmd Command) (ApplyResult, error) {
	b, err := EncodeCommand(cmd)
	if err != nil {
		return ApplyResult{}, err
	}
	timeout := n.cfg.ApplyTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	f := n.raft.Apply(b, timeout)
	if err := n.wait(f); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			addr, _ := n.raft.LeaderWithID()
			return ApplyResult{}, &NotLeaderError{LeaderAddr: string(addr)}
		}
		return ApplyResult{}, fmt.Errorf("committing %s: %w", cmd.Op, err)
	}
	res, _ := f.Response().(ApplyResult)
	if res.Err != nil {
		return res, res.Err
	}
	return res, nil
}

// Apply commits cmd through the leader, wherever it is, and returns once
// the command is committed, applied there, and applied here (so a read on
// this node that follows sees it). It waits (within ctx) for a
// leader when there is none.
func (n *Node) Apply(ctx context.Context, cmd Command) (ApplyResult, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, n.cfg.ApplyTimeout)
		defer cancel()
	}
	for {
		var res ApplyResult
		var err error
		if n.raft.State() == raft.Leader {
			res, err = n.applyLocal(ctx, cmd)
		} else if addr, _ := n.raft.LeaderWithID(); addr != "" {
			var ans applyAnswer
			err = n.rpc.call(ctx, string(addr), rpcApply, cmd, &ans)
			if err == nil {
				res = ApplyResult{Index: ans.Index, Binding: ans.Binding}
				// Read your writes: the caller's next read here sees it.
				if werr := n.waitApplied(ctx, ans.Index); werr != nil {
					return res, fmt.Errorf("committed %s at %d but not yet applied here: %w", cmd.Op, ans.Index, werr)
				}
			}
		} else {
			err = &NotLeaderError{}
		}
		var nl *NotLeaderError
		var re *RemoteError
		switch {
		case err == nil:
			return res, nil
		case errors.Is(err, ErrNoBinding), errors.Is(err, ErrBadCommand), errors.Is(err, ErrUnknownMember):
			return res, err
		case errors.As(err, &nl), errors.As(err, &re), isTransient(err):
			// No leader, it moved, or it failed to commit (it may be
			// stepping down): ask again.
		default:
			return res, err
		}
		// No leader, or it moved: wait a little and ask again (on the
		// wall clock, which is Raft's).
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("committing %s: no leader answered: %w (last: %v)", cmd.Op, ctx.Err(), err)
		case <-time.After(n.cfg.HeartbeatTimeout / 10):
		}
	}
}

func isTransient(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, net.ErrClosed) || errors.Is(err, raft.ErrEnqueueTimeout) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrNotLeader)
}

type applyAnswer struct {
	Index   uint64   `json:"index"`
	Binding *Binding `json:"binding,omitempty"`
}

// readIndex returns a log index such that once this node has applied it,
// its state includes every write committed before the call: the leader's
// commit index, read after the leader confirmed it still leads.
func (n *Node) readIndex(ctx context.Context) (uint64, error) {
	for {
		var idx uint64
		var err error
		if n.raft.State() == raft.Leader {
			if err = n.wait(n.raft.VerifyLeader()); err == nil {
				idx = n.stateIndex(n.raft.CommitIndex())
			}
		} else if addr, _ := n.raft.LeaderWithID(); addr != "" {
			err = n.rpc.call(ctx, string(addr), rpcReadIndex, struct{}{}, &idx)
		} else {
			err = &NotLeaderError{}
		}
		if err == nil {
			return idx, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("leader check: %w (last: %v)", ctx.Err(), err)
		case <-time.After(n.cfg.HeartbeatTimeout / 10):
		}
	}
}

// waitApplied waits until this node's FSM has seen idx.
func (n *Node) waitApplied(ctx context.Context, idx uint64) error {
	return n.fsm.WaitIndex(ctx, idx)
}

// stateIndex returns the index of the last entry at or below commit that
// reaches the FSM (skipping Raft's no-op and barrier entries): what a
// reader must wait for to see everything committed up to commit.
func (n *Node) stateIndex(commit uint64) uint64 {
	var l raft.Log
	for i := commit; i > 0 && commit-i < 64; i-- {
		if err := n.logs.GetLog(i, &l); err != nil {
			break
		}
		if l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return i
		}
	}
	return min(commit, n.fsm.Index())
}

// Barrier returns once this node's state includes every write committed
// anywhere in the site before the call (a leader check). Reads that must
// be current call it first.
func (n *Node) Barrier(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, n.cfg.ApplyTimeout)
		defer cancel()
	}
	idx, err := n.readIndex(ctx)
	if err != nil {
		return err
	}
	return n.waitApplied(ctx, idx)
}

func (n *Node) rpcHandlers() map[string]rpcHandler {
	return map[string]rpcHandler{
		rpcJoin:      n.handleJoin,
		rpcApply:     n.handleApply,
		rpcReadIndex: n.handleReadIndex,
		rpcRefresh:   n.handleRefresh,
		rpcLeave:     n.handleLeave,
		rpcPing: func(context.Context, json.RawMessage) (any, error) {
			return struct{}{}, nil
		},
	}
}

func (n *Node) notLeader() error {
	addr, _ := n.raft.LeaderWithID()
	return &NotLeaderError{LeaderAddr: string(addr)}
}

func (n *Node) handleJoin(ctx context.Context, body json.RawMessage) (any, error) {
	var m Member
	if err := json.Unmarshal(body, &m); err != nil || m.ID == "" || m.Addr == "" {
		return nil, fmt.Errorf("%w: join without an ID or address", ErrBadCommand)
	}
	if n.raft.State() != raft.Leader {
		return nil, n.notLeader()
	}
	cf := n.raft.GetConfiguration()
	if err := n.wait(cf); err != nil {
		return nil, err
	}
	found := false
	for _, s := range cf.Configuration().Servers {
		if string(s.ID) != m.ID {
			continue
		}
		found = true
		if string(s.Address) != m.Addr {
			// Same member, new address: re-adding with the same
			// suffrage updates the address.
			var f raft.IndexFuture
			if s.Suffrage == raft.Voter {
				f = n.raft.AddVoter(s.ID, raft.ServerAddress(m.Addr), 0, n.cfg.ApplyTimeout)
			} else {
				f = n.raft.AddNonvoter(s.ID, raft.ServerAddress(m.Addr), 0, n.cfg.ApplyTimeout)
			}
			if err := n.wait(f); err != nil {
				return nil, fmt.Errorf("updating the address of %s: %w", m.ID, err)
			}
		}
	}
	if !found {
		n.log.Info("adding a member as non-voter", "member", m.ID, "addr", m.Addr, "role", m.Role)
		if err := n.wait(n.raft.AddNonvoter(raft.ServerID(m.ID), raft.ServerAddress(m.Addr), 0, n.cfg.ApplyTimeout)); err != nil {
			return nil, fmt.Errorf("adding %s: %w", m.ID, err)
		}
	}
	var have Member
	var known bool
	n.fsm.Read(func(s *SiteState) { have, known = s.Members[m.ID] })
	if !known || memberChanged(have, m) {
		if _, err := n.applyLocal(ctx, Command{Op: OpMemberPut, Member: &m}); err != nil {
			return nil, err
		}
	}
	n.poke()
	return struct{}{}, nil
}

func (n *Node) handleApply(ctx context.Context, body json.RawMessage) (any, error) {
	var cmd Command
	if err := json.Unmarshal(body, &cmd); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	if n.raft.State() != raft.Leader {
		return nil, n.notLeader()
	}
	res, err := n.applyLocal(ctx, cmd)
	if err != nil {
		return nil, err
	}
	return applyAnswer{Index: res.Index, Binding: res.Binding}, nil
}

func (n *Node) handleReadIndex(ctx context.Context, _ json.RawMessage) (any, error) {
	if n.raft.State() != raft.Leader {
		return nil, n.notLeader()
	}
	if err := n.wait(n.raft.VerifyLeader()); err != nil {
		return nil, n.notLeader()
	}
	return n.stateIndex(n.raft.CommitIndex()), nil
}

// markAway commits that member id has shut down gracefully: no leader
// elects it superpeer until it reports again.
func (n *Node) markAway(ctx context.Context, id string) error {
	var m Member
	var ok bool
	n.fsm.Read(func(s *SiteState) { m, ok = s.Members[id] })
	if !ok || m.Away {
		return nil
	}
	m.Away = true
	_, err := n.applyLocal(ctx, Command{Op: OpMemberPut, Member: &m})
	return err
}

func (n *Node) handleLeave(ctx context.Context, body json.RawMessage) (any, error) {
	var id string
	if err := json.Unmarshal(body, &id); err != nil || id == "" {
		return nil, fmt.Errorf("%w: leave without an ID", ErrBadCommand)
	}
	if n.raft.State() != raft.Leader {
		return nil, n.notLeader()
	}
	n.log.Info("member is shutting down", "member", id)
	if err := n.markAway(ctx, id); err != nil {
		return nil, err
	}
	n.reconcile()
	return struct{}{}, nil
}

// Superpeers returns the committed superpeer set as this peer knows it.
func (n *Node) Superpeers() SuperpeerSet {
	var set SuperpeerSet
	n.fsm.Read(func(s *SiteState) { set = superpeersOf(s) })
	return set
}

func superpeersOf(s *SiteState) SuperpeerSet {
	set := s.Superpeers
	set.IDs = append([]string(nil), set.IDs...)
	set.Members = nil
	for _, id := range set.IDs {
		if m, ok := s.Members[id]; ok {
			set.Members = append(set.Members, m)
		}
	}
	return set
}

// WatchSuperpeers delivers the current superpeer set at once and every new
// one after it, until ctx ends. A slow reader misses intermediate sets,
// never the latest.
func (n *Node) WatchSuperpeers(ctx context.Context) <-chan SuperpeerSet {
	return n.watches.superpeers(ctx, n.Superpeers())
}

// IsLeader reports whether this node leads the group now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// LeaderID returns the leader's node ID, empty when none is known.
func (n *Node) LeaderID() string {
	_, id := n.raft.LeaderWithID()
	return string(id)
}

// TURNSecret returns the site's TURN shared secret.
func (n *Node) TURNSecret() TURNSecret {
	var t TURNSecret
	n.fsm.Read(func(s *SiteState) { t = s.TURN })
	return t
}

// SiteConfig returns the shared site configuration.
func (n *Node) SiteConfig() SiteConfig {
	var c SiteConfig
	n.fsm.Read(func(s *SiteState) { c = s.Config })
	return c
}

// SetSiteConfig commits a new shared site configuration.
func (n *Node) SetSiteConfig(ctx context.Context, c SiteConfig) error {
	_, err := n.Apply(ctx, Command{Op: OpConfigSet, Config: &c})
	return err
}

// RotateTURNSecret commits a new TURN secret; the old one stays valid as
// Previous.
func (n *Node) RotateTURNSecret(ctx context.Context) error {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return fmt.Errorf("drawing a TURN secret: %w", err)
	}
	_, err := n.Apply(ctx, Command{Op: OpTURNSecret, Secret: secret, At: n.clock.Now()})
	return err
}

// PutOverlayRecord commits a record the site's superpeers publish.
func (n *Node) PutOverlayRecord(ctx context.Context, r OverlayRecord) error {
	_, err := n.Apply(ctx, Command{Op: OpRecordPut, Record: &r})
	return err
}

// RemoveOverlayRecord withdraws a record.
func (n *Node) RemoveOverlayRecord(ctx context.Context, key string) error {
	_, err := n.Apply(ctx, Command{Op: OpRecordRemove, Key: key})
	return err
}

// OverlayRecords returns the unexpired records to publish.
func (n *Node) OverlayRecords() []OverlayRecord {
	now := n.clock.Now()
	var out []OverlayRecord
	n.fsm.Read(func(s *SiteState) {
		for _, k := range sortedKeys(s.Records) {
			if r := s.Records[k]; r.Expires.After(now) {
				out = append(out, r)
			}
		}
	})
	return out
}

// onApply runs on Raft's goroutine after each command: notify, never block.
func (n *Node) onApply(ch Change) {
	if ch.Superpeers || ch.Members {
		var set SuperpeerSet
		n.fsm.Read(func(s *SiteState) { set = superpeersOf(s) })
		n.watches.publishSet(set)
		n.poke()
	}
	if ch.Op == "restore" {
		n.watches.publishBindings(BindingEvent{Kind: BindingsResync})
		return
	}
	kind := BindingPut
	if ch.Op == OpBindingRefresh {
		kind = BindingRefreshed
	}
	for _, b := range ch.Bindings {
		n.watches.publishBindings(BindingEvent{Kind: kind, Binding: b})
	}
	for _, b := range ch.Removed {
		n.watches.publishBindings(BindingEvent{Kind: BindingRemoved, Binding: b})
	}
}

// Close leaves gracefully: a superpeer asks the leader to replace it
// first, a leader commits a set without itself and hands leadership to
// another voter; then Raft and every socket stop. ctx bounds the handover.
func (n *Node) Close(ctx context.Context) error {
	n.mu.Lock()
	if n.closing {
		n.mu.Unlock()
		return nil
	}
	n.closing = true
	n.mu.Unlock()
	n.handOver(ctx)
	return n.stop()
}

func (n *Node) handOver(ctx context.Context) {
	if !n.hasGroup() {
		return
	}
	if n.raft.State() == raft.Leader {
		if err := n.markAway(ctx, n.id); err != nil {
			n.log.Warn("recording our shutdown failed", "err", err)
		}
		n.reconcile() // commits a set without us (closing counts as down)
		if n.hasOtherVoter() {
			if err := n.wait(n.raft.LeadershipTransfer()); err != nil {
				n.log.Warn("leadership transfer on shutdown failed", "err", err)
			} else {
				n.handedOver.Store(true)
				n.log.Info("handed leadership over on shutdown")
			}
		}
		return
	}
	if addr, _ := n.raft.LeaderWithID(); addr != "" {
		if err := n.rpc.call(ctx, string(addr), rpcLeave, n.id, nil); err != nil {
			n.log.Warn("telling the leader we are leaving failed", "err", err)
		}
	}
}

func (n *Node) hasOtherVoter() bool {
	cf := n.raft.GetConfiguration()
	if n.wait(cf) != nil {
		return false
	}
	for _, s := range cf.Configuration().Servers {
		if s.Suffrage == raft.Voter && string(s.ID) != n.id {
			return true
		}
	}
	return false
}

// stop ends everything without handing over (what a crash looks like to
// the others, except that sockets close cleanly).
func (n *Node) stop() error {
	n.mu.Lock()
	n.closing = true
	n.mu.Unlock()
	n.cancel()
	var errs []error
	if n.raft != nil {
		n.raft.DeregisterObserver(n.observer)
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("stopping raft: %w", err))
		}
	}
	n.wg.Wait()
	n.closeResources()
	n.watches.close()
	n.log.Info("election node stopped")
	return errors.Join(errs...)
}

func (n *Node) closeResources() {
	if n.disc != nil {
		n.disc.Close()
	}
	if n.sd != nil {
		n.sd.Close()
	}
	if n.rpc != nil {
		n.rpc.close()
	}
	if n.trans != nil {
		n.trans.Close()
	}
	if n.group != nil {
		n.group.close()
	}
	if n.bolt != nil {
		n.bolt.Close()
	}
}
