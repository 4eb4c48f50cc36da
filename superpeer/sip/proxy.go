package sip

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Extensions this element supports (Proxy-Require as a proxy, Require as
// a registrar).
var supported = []string{"outbound", "path"}

// handleRequest is sipgo's entry for every request that is not a
// retransmission, an ACK to a non-2xx response or a CANCEL of a pending
// INVITE (those the transaction layer absorbs).
func (s *Server) handleRequest(req *sip.Request, tx sip.ServerTransaction) {
	src := sourceOf(req)
	fixVia(req, src)
	if isOverlayAddr(src.Addr()) {
		s.pstats.fromOverlay.Add(1)
	}
	if code, reason, extra := s.checkSemantics(req); code != 0 {
		s.reply(tx, req, code, reason, extra...)
		return
	}
	switch req.Method {
	case sip.ACK:
		s.forwardStateless(req)
		return
	case sip.CANCEL:
		// A CANCEL that matched a pending INVITE never gets here.
		s.reply(tx, req, 481, "Call/Transaction Does Not Exist")
		return
	case sip.REGISTER:
		if isOverlayAddr(src.Addr()) {
			// Phones register on their own site; nothing registers
			// through another superpeer.
			s.reply(tx, req, 403, "Register At Your Own Site")
			return
		}
		if req.Route() == nil {
			if !s.isLocalDomain(req.Recipient.Host) {
				// No other registrar exists to forward it to.
				s.reply(tx, req, 403, "Not Our Domain")
				return
			}
			s.register(req, tx, src)
			return
		}
	case sip.OPTIONS:
		if req.Recipient.User == "" && s.isMyURI(&req.Recipient) && req.Route() == nil {
			s.reply(tx, req, 200, "OK", sip.NewHeader("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, MESSAGE, SUBSCRIBE, NOTIFY, PRACK, UPDATE, REFER, INFO, REGISTER"),
				sip.NewHeader("Supported", strings.Join(supported, ", ")))
			return
		}
	}
	s.proxy(req, tx, src)
}

// checkSemantics rejects what parses but must not be processed: unknown
// extensions a proxy or registrar is required to support (RFC 3261
// sections 8.2.2.3 and 16.3 step 6; RFC 4475 section 3.3.5).
func (s *Server) checkSemantics(req *sip.Request) (int, string, []sip.Header) {
	if req.Method == sip.ACK || req.Method == sip.CANCEL {
		return 0, "", nil
	}
	names := []string{"Proxy-Require"}
	if req.Method == sip.REGISTER && s.isLocalDomain(req.Recipient.Host) {
		names = append(names, "Require")
	}
	var unsupported []string
	for _, n := range names {
		for _, h := range req.GetHeaders(n) {
			for opt := range strings.SplitSeq(h.Value(), ",") {
				opt = strings.TrimSpace(opt)
				if opt != "" && !slices.Contains(supported, strings.ToLower(opt)) {
					unsupported = append(unsupported, opt)
				}
			}
		}
	}
	if len(unsupported) > 0 {
		return 420, "Bad Extension", []sip.Header{sip.NewHeader("Unsupported", strings.Join(unsupported, ", "))}
	}
	return 0, "", nil
}

func (s *Server) reply(tx sip.ServerTransaction, req *sip.Request, code int, reason string, extra ...sip.Header) {
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	for _, h := range extra {
		res.AppendHeader(h)
	}
	if code >= 200 {
		s.tx.count(string(req.Method), code)
	}
	if err := tx.Respond(res); err != nil {
		s.log.Debug("sip: responding", "code", code, "to", req.Source(), "err", err)
	}
}

// target is one place to forward a request to.
type target struct {
	ruri    *sip.Uri // new Request-URI, or nil to keep it
	routes  []string // Route values to put first (Path, or the flow holder)
	hop     hop
	token   string // flow token of the hop, for our Record-Route
	binding *Binding
}

// preRoute removes the Route entries that name us (RFC 3261 section 16.4)
// and returns the flow token one of them carried.
func (s *Server) preRoute(req *sip.Request) (tok string) {
	for {
		r := req.Route()
		if r == nil {
			return tok
		}
		mine := s.isMyURI(&r.Address)
		if !mine && !s.isSibling(&r.Address) {
			return tok
		}
		if u := r.Address.User; u != "" {
			// A sibling's token is good here only when the site shares
			// one flow key; otherwise route by the Request-URI.
			if _, err := parseFlowToken(s.flowKey, u); mine || err == nil {
				tok = u
			}
		}
		req.RemoveHeader("Route")
	}
}

// isSibling reports whether u names another superpeer of this site.
func (s *Server) isSibling(u *sip.Uri) bool {
	if s.siblings == nil {
		return false
	}
	a := parseHostAddr(u.Host)
	port := uint16(u.Port)
	if port == 0 {
		port = 5060
	}
	for _, sib := range s.siblings() {
		if sib.Addr() == a && (sib.Port() == port || sib.Port() == 0) {
			return true
		}
	}
	return false
}

// resolve finds the targets of a request after route processing. A
// response code instead says why there is none.
func (s *Server) resolve(ctx context.Context, req *sip.Request, src netip.AddrPort) ([]target, int, string) {
	tok := s.preRoute(req)
	if tok != "" && req.Route() == nil {
		f, err := parseFlowToken(s.flowKey, tok)
		if err != nil {
			return nil, 403, "Bad Flow Token"
		}
		h, err := s.hopForFlow(f)
		if err != nil {
			return nil, 430, "Flow Failed" // RFC 5626 section 5.3
		}
		return []target{{hop: h, token: tok}}, 0, ""
	}
	if r := req.Route(); r != nil {
		h, err := s.hopForURI(&r.Address)
		if err != nil {
			return nil, 404, "No Route To Next Hop"
		}
		return []target{{hop: h}}, 0, ""
	}
	ruri := &req.Recipient
	if req.To() != nil && req.To().Params.Has("tag") || !s.isLocalDomain(ruri.Host) && isAddrHost(ruri.Host) {
		if s.isMyURI(ruri) && ruri.User != "" && !req.To().Params.Has("tag") {
			return s.resolveLocal(ctx, req, s.aorOf(ruri))
		}
		if s.isMyURI(ruri) {
			return nil, 404, "Not Found"
		}
		if !s.mayRelay(src) {
			return nil, 403, "Relaying Denied"
		}
		h, err := s.hopForURI(ruri)
		if err != nil {
			return nil, 480, "Temporarily Unavailable"
		}
		return []target{{hop: h}}, 0, ""
	}
	if ruri.User == "" {
		return nil, 404, "Not Found"
	}
	aor := s.aorOf(ruri)
	if s.isLocalDomain(ruri.Host) {
		return s.resolveLocal(ctx, req, aor)
	}
	return s.resolveOverlay(ctx, aor)
}

func isAddrHost(host string) bool {
	_, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil
}

// mayRelay says whether src may send requests to arbitrary addresses:
// the LAN, the loopback agent and other superpeers may; the WAN may only
// reach the site's own users.
func (s *Server) mayRelay(src netip.AddrPort) bool {
	a := src.Addr()
	return a.IsLoopback() || isOverlayAddr(a) || s.inLAN(a) || len(s.cfg.LAN) == 0
}

// resolveLocal returns the flows of a local AOR, best first: this
// superpeer's own flows, then the newest registration.
func (s *Server) resolveLocal(ctx context.Context, req *sip.Request, aor string) ([]target, int, string) {
	bs, err := s.bindings.Lookup(ctx, aor)
	if err != nil {
		s.log.Warn("sip: looking up bindings", "aor", aor, "err", err)
		return nil, 500, "Binding Store Unavailable"
	}
	if len(bs) == 0 {
		if s.knownAOR(aor) {
			s.pstats.unavailable.Add(1)
			return nil, 480, "Temporarily Unavailable"
		}
		s.pstats.notFound.Add(1)
		return nil, 404, "Not Found"
	}
	slices.SortFunc(bs, func(a, b Binding) int {
		am, bm := a.Flow.Superpeer == s.cfg.NodeID, b.Flow.Superpeer == s.cfg.NodeID
		if am != bm {
			if am {
				return -1
			}
			return 1
		}
		if a.Q != b.Q {
			return b.Q - a.Q
		}
		return b.Registered.Compare(a.Registered)
	})
	var ts []target
	for i := range bs {
		if t, ok := s.targetOfBinding(&bs[i]); ok {
			ts = append(ts, t)
		}
	}
	if len(ts) == 0 {
		s.pstats.unavailable.Add(1)
		return nil, 480, "Temporarily Unavailable"
	}
	return ts, 0, ""
}

// targetOfBinding says how to reach one binding: through its Path, over
// its flow here, directly on the LAN, or through the superpeer holding
// the flow.
func (s *Server) targetOfBinding(b *Binding) (target, bool) {
	var contact sip.Uri
	if err := sip.ParseUri(b.Contact, &contact); err != nil {
		return target{}, false
	}
	t := target{ruri: &contact, binding: b}
	if len(b.Path) > 0 {
		var first sip.Uri
		if err := sip.ParseUri(strings.Trim(b.Path[0], "<>"), &first); err != nil {
			return target{}, false
		}
		h, err := s.hopForURI(&first)
		if err != nil {
			return target{}, false
		}
		t.hop, t.routes = h, b.Path
		return t, true
	}
	remote, err1 := netip.ParseAddrPort(b.Flow.Remote)
	local, err2 := netip.ParseAddrPort(b.Flow.Local)
	if err1 != nil || err2 != nil {
		return target{}, false
	}
	f := flowID{Transport: b.Flow.Transport, Remote: remote, Local: local}
	// A phone on the LAN that registered over UDP without outbound and
	// gave its own address is reached at its Contact; a phone behind a NAT
	// or using outbound only over its flow.
	if f.Transport == "udp" && !b.Outbound && parseHostAddr(contact.Host) == remote.Addr() &&
		(b.Flow.Superpeer == s.cfg.NodeID || s.inLAN(remote.Addr())) {
		if h, err := s.hopForURI(&contact); err == nil {
			t.hop = h
			return t, true
		}
	}
	if b.Flow.Superpeer == s.cfg.NodeID || (f.Transport == "udp" && s.inLAN(remote.Addr())) {
		h, err := s.hopForFlow(f)
		if err != nil {
			return target{}, false
		}
		t.hop, t.token = h, b.Flow.Token
		return t, true
	}
	// Held by another superpeer of the site: send it there with a Route
	// naming the flow, which that superpeer pops and follows.
	h, err := s.hopForOverlay(b.Flow.Superpeer)
	if err != nil {
		return target{}, false
	}
	via := OverlayAddr(b.Flow.Superpeer)
	t.hop = h
	t.routes = []string{"<sip:" + b.Flow.Token + "@[" + via.Addr().String() + "]:" + strconv.Itoa(overlayPort) + ";lr;sp=" + b.Flow.Superpeer + ">"}
	return t, true
}

// resolveOverlay looks a remote AOR up in the overlay.
func (s *Server) resolveOverlay(ctx context.Context, aor string) ([]target, int, string) {
	if s.locator == nil {
		s.pstats.notFound.Add(1)
		return nil, 404, "Not Found"
	}
	lctx, cancel := context.WithTimeout(ctx, s.cfg.ForwardTimeout)
	defer cancel()
	ts, err := s.locator.Lookup(lctx, aor)
	if errors.Is(err, ErrNotFound) || err == nil && len(ts) == 0 {
		s.pstats.notFound.Add(1)
		return nil, 404, "Not Found"
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// The nodes holding the record did not answer in time: most
		// likely the far site itself, gone with its records' root.
		s.pstats.timeouts.Add(1)
		s.log.Info("sip: overlay lookup timed out", "aor", aor, "after", s.cfg.ForwardTimeout)
		return nil, 408, "Request Timeout"
	}
	if err != nil {
		s.log.Info("sip: overlay lookup failed", "aor", aor, "err", err)
		return nil, 503, "Overlay Lookup Failed"
	}
	var out []target
	for _, t := range ts {
		if t.Superpeer == s.cfg.NodeID {
			continue // our own record, but no binding here: stale
		}
		h, err := s.hopForOverlay(t.Superpeer)
		if err != nil {
			continue
		}
		out = append(out, target{hop: h})
	}
	if len(out) == 0 {
		return nil, 480, "Temporarily Unavailable"
	}
	return out, 0, ""
}

// dialogCreating reports whether a request may create a dialog and so
// gets our Record-Route (RFC 3261 section 16.6 step 4).
func dialogCreating(m sip.RequestMethod) bool {
	switch m {
	case sip.INVITE, sip.SUBSCRIBE, sip.REFER, sip.NOTIFY:
		return true
	}
	return false
}

// ingressHop describes how the request reached us, for the upstream half
// of a double Record-Route (RFC 5658).
func (s *Server) ingressHop(req *sip.Request, src netip.AddrPort) (hop, string) {
	if isOverlayAddr(src.Addr()) && s.overlay != nil {
		id, _ := s.overlay.idOf(src)
		return hop{transport: "UDP", overlay: id}, ""
	}
	tr := strings.ToLower(req.Transport())
	h := hop{transport: strings.ToUpper(tr), dest: src}
	if sk := s.socks[tr]; sk != nil {
		h.local = sk
		tok := ""
		// A stream must be followed back over the same connection, and a
		// NATed UDP source cannot be reached at its Contact.
		c := req.Contact()
		if tr != "udp" || c == nil || parseHostAddr(c.Address.Host) != src.Addr() {
			tok = makeFlowToken(s.flowKey, flowID{Transport: tr, Remote: src, Local: sk.bound})
		}
		return h, tok
	}
	return h, ""
}

// proxy forwards a request statefully (RFC 3261 section 16).
func (s *Server) proxy(req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort) {
	mf := req.MaxForwards()
	if mf == nil || mf.Val() == 0 {
		s.reply(tx, req, 483, "Too Many Hops")
		return
	}
	hash := loopHash(req)
	if s.looped(req, hash) {
		s.pstats.loops.Add(1)
		s.reply(tx, req, 482, "Loop Detected")
		return
	}
	ctx := s.ctx
	targets, code, reason := s.resolve(ctx, req, src)
	if code != 0 {
		s.reply(tx, req, code, reason)
		return
	}
	mf.Dec()
	inDialog := req.To() != nil && req.To().Params.Has("tag")
	var inHop hop
	var inTok string
	rr := dialogCreating(req.Method) && !inDialog
	if rr {
		inHop, inTok = s.ingressHop(req, src)
	}
	call := s.startCall(req, src, targets)

	var last *sip.Response
	timedOut := false
	for i, t := range targets {
		fwd := req.Clone()
		fwd.SetBody(req.Body())
		if t.ruri != nil {
			fwd.Recipient = *t.ruri
		}
		for j := len(t.routes) - 1; j >= 0; j-- {
			var ru sip.Uri
			if err := sip.ParseUri(strings.Trim(t.routes[j], "<>"), &ru); err == nil {
				fwd.PrependHeader(&sip.RouteHeader{Address: ru})
			}
		}
		if rr {
			up := s.recordRouteURI(inHop, inTok)
			down := s.recordRouteURI(t.hop, t.token)
			fwd.PrependHeader(&sip.RecordRouteHeader{Address: up})
			if down.String() != up.String() {
				fwd.PrependHeader(&sip.RecordRouteHeader{Address: down})
			}
		}
		s.anchorRequest(ctx, call, fwd, t.hop)
		s.route(fwd, t.hop, makeBranch(hash))
		res, outcome := s.forward(ctx, req, tx, fwd, t, call)
		switch outcome {
		case outcomeDone:
			s.finishCall(call, res)
			return
		case outcomeCancelled:
			s.calls.release(s, call)
			return
		case outcomeTimeout:
			timedOut = true
		}
		if res != nil {
			last = res
		}
		if i < len(targets)-1 {
			s.log.Debug("sip: trying the next target", "call", callIDOf(req), "failed", t.hop)
		}
	}
	s.calls.release(s, call)
	if last != nil {
		s.relay(tx, req, last, call)
		return
	}
	if timedOut {
		s.pstats.timeouts.Add(1)
		s.reply(tx, req, 408, "Request Timeout")
		return
	}
	s.pstats.unavailable.Add(1)
	s.reply(tx, req, 480, "Temporarily Unavailable")
}

type outcome int

const (
	outcomeDone      outcome = iota // a final response went upstream
	outcomeNext                     // try the next target
	outcomeTimeout                  // no answer in time: try the next target
	outcomeCancelled                // the caller cancelled
)

// forward sends fwd on a client transaction and relays its responses
// upstream until a final one. A failure that another target may not have
// (transport error, timeout, 408, 430, 480, 5xx) returns outcomeNext with
// the response, if any.
func (s *Server) forward(ctx context.Context, req *sip.Request, tx sip.ServerTransaction, fwd *sip.Request, t target, call *callState) (*sip.Response, outcome) {
	s.pstats.forwarded.Add(1)
	if t.hop.overlay != "" {
		s.pstats.toOverlay.Add(1)
	}
	ctxTx, err := s.txl.Request(ctx, fwd)
	if err != nil {
		s.log.Debug("sip: forwarding", "call", callIDOf(req), "to", t.hop, "err", err)
		return nil, outcomeNext
	}

	cancelled := make(chan struct{}, 1)
	if req.IsInvite() {
		tx.OnCancel(func(*sip.Request) {
			select {
			case cancelled <- struct{}{}:
			default:
			}
		})
	}
	// A far superpeer answers an INVITE within 200 ms (its 100 Trying); a
	// dead one never does, and the caller must not wait 32 s for it.
	var firstTimeout <-chan time.Time
	if t.hop.overlay != "" && req.IsInvite() {
		tm := time.NewTimer(s.cfg.ForwardTimeout)
		defer tm.Stop()
		firstTimeout = tm.C
	}
	provisional := false
	for {
		select {
		case res, ok := <-ctxTx.Responses():
			if !ok {
				return nil, outcomeNext
			}
			firstTimeout = nil
			if res.StatusCode >= 200 {
				// The transaction lives on to absorb retransmissions
				// (and ACK a non-2xx); keep draining what it passes up.
				go drain(ctxTx)
			}
			if res.StatusCode < 200 {
				provisional = true
				if res.StatusCode > 100 {
					s.relay(tx, req, res, call)
				}
				continue
			}
			if res.StatusCode < 300 || !retryable(res.StatusCode) {
				s.relay(tx, req, res, call)
				return res, outcomeDone
			}
			return res, outcomeNext
		case <-ctxTx.Done():
			if errors.Is(ctxTx.Err(), sip.ErrTransactionTimeout) {
				return nil, outcomeTimeout
			}
			return nil, outcomeNext
		case <-firstTimeout:
			s.log.Info("sip: far superpeer did not answer", "call", callIDOf(req), "superpeer", t.hop.overlay, "after", s.cfg.ForwardTimeout)
			ctxTx.Terminate()
			return nil, outcomeTimeout
		case <-cancelled:
			// The transaction layer answered the CANCEL with 200 and
			// ends the INVITE with 487 (RFC 3261 section 9.2).
			s.tx.count(string(sip.CANCEL), 200)
			s.tx.count(string(sip.INVITE), 487)
			if provisional {
				s.sendCancel(fwd)
				go drain(ctxTx)
			} else {
				// RFC 3261 section 9.1: wait for a provisional response
				// before cancelling; the transaction's own timer ends it.
				go s.cancelWhenProvisional(ctxTx, fwd)
			}
			return nil, outcomeCancelled
		case <-s.ctx.Done():
			ctxTx.Terminate()
			return nil, outcomeCancelled
		}
	}
}

func retryable(code int) bool {
	switch {
	case code == 408, code == 430, code == 480, code >= 500 && code < 600:
		return true
	}
	return false
}

// cancelWhenProvisional sends the CANCEL once the callee sent something.
func (s *Server) cancelWhenProvisional(ctxTx sip.ClientTransaction, fwd *sip.Request) {
	for {
		select {
		case res, ok := <-ctxTx.Responses():
			if !ok {
				return
			}
			if res.StatusCode < 200 {
				s.sendCancel(fwd)
				drain(ctxTx)
			}
			return
		case <-ctxTx.Done():
			return
		}
	}
}

// sendCancel cancels a forwarded INVITE (RFC 3261 section 9.1): same
// Request-URI, top Via, Route, Call-ID, From, To and CSeq number.
func (s *Server) sendCancel(inv *sip.Request) {
	c := sip.NewRequest(sip.CANCEL, *inv.Recipient.Clone())
	if v := inv.Via(); v != nil {
		c.AppendHeader(v.Clone())
	}
	for _, r := range inv.GetHeaders("Route") {
		c.AppendHeader(sip.HeaderClone(r))
	}
	mf := sip.MaxForwardsHeader(70)
	c.AppendHeader(&mf)
	for _, h := range []sip.Header{inv.From(), inv.To(), inv.CallID()} {
		if h != nil {
			c.AppendHeader(sip.HeaderClone(h))
		}
	}
	cseq := inv.CSeq()
	c.AppendHeader(&sip.CSeqHeader{SeqNo: cseq.SeqNo, MethodName: sip.CANCEL})
	c.SetBody(nil)
	c.SetTransport(inv.Transport())
	c.SetDestination(inv.Destination())
	c.Laddr = inv.Laddr
	ctx, cancel := context.WithTimeout(s.ctx, 32*time.Second)
	ctxTx, err := s.txl.Request(ctx, c)
	if err != nil {
		cancel()
		s.log.Debug("sip: sending CANCEL", "call", callIDOf(inv), "err", err)
		return
	}
	go func() {
		defer cancel()
		defer ctxTx.Terminate()
		for {
			select {
			case res, ok := <-ctxTx.Responses():
				if !ok || res.StatusCode >= 200 {
					return
				}
			case <-ctxTx.Done():
				return
			}
		}
	}()
}

// relay sends a downstream response upstream without our Via (RFC 3261
// section 16.7).
//
// The response is changed in place: the client transaction keeps it only
// to absorb retransmissions, and builds its ACKs from the request.
func (s *Server) relay(tx sip.ServerTransaction, req *sip.Request, res *sip.Response, call *callState) {
	out := res
	if v := out.Via(); v == nil || !s.isMyHost(v.Host) {
		return // already relayed (a response relayed twice has lost our Via)
	}
	out.RemoveHeader("Via")
	s.anchorResponse(call, req, out)
	if out.StatusCode >= 200 {
		s.tx.count(string(req.Method), out.StatusCode)
	}
	out.SetTransport(req.Transport())
	if via := out.Via(); via != nil {
		out.SetDestination(upstreamDest(via, req.Transport()))
	}
	if err := tx.Respond(out); err != nil {
		s.log.Debug("sip: relaying a response", "code", res.StatusCode, "call", callIDOf(req), "err", err)
	}
}

// forwardStateless forwards an ACK to a 2xx (its own transaction, RFC 3261
// section 16.11 allows stateless forwarding).
func (s *Server) forwardStateless(req *sip.Request) {
	mf := req.MaxForwards()
	if mf == nil || mf.Val() == 0 {
		return
	}
	src := sourceOf(req)
	targets, code, _ := s.resolve(s.ctx, req, src)
	if code != 0 || len(targets) == 0 {
		return
	}
	mf.Dec()
	t := targets[0]
	fwd := req.Clone()
	fwd.SetBody(req.Body())
	if t.ruri != nil {
		fwd.Recipient = *t.ruri
	}
	s.anchorAck(fwd, t.hop)
	s.route(fwd, t.hop, makeBranch(loopHash(req)))
	if err := s.tp.WriteMsg(fwd); err != nil {
		s.log.Debug("sip: forwarding ACK", "call", callIDOf(req), "to", t.hop, "err", err)
	}
}

// handleStrayResponse forwards responses that match no client transaction
// (2xx retransmissions to INVITE) statelessly along their Via.
func (s *Server) handleStrayResponse(res *sip.Response) {
	via := res.Via()
	if via == nil || !s.isMyHost(via.Host) {
		return
	}
	out := res
	out.RemoveHeader("Via")
	next := out.Via()
	if next == nil {
		return
	}
	out.SetTransport(next.Transport)
	out.SetDestination(upstreamDest(next, next.Transport))
	if err := s.tp.WriteMsg(out); err != nil {
		s.log.Debug("sip: forwarding a stray response", "code", res.StatusCode, "err", err)
	}
}

func callIDOf(m interface{ CallID() *sip.CallIDHeader }) string {
	if c := m.CallID(); c != nil {
		return c.Value()
	}
	return ""
}

// drain consumes what a client transaction passes up until it ends, so
// its state machine never blocks on us.
func drain(ctxTx sip.ClientTransaction) {
	for {
		select {
		case <-ctxTx.Responses():
		case <-ctxTx.Done():
			return
		}
	}
}
