package sip

import (
	"context"
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// register is the registrar (RFC 3261 section 10.3) with Path (RFC 3327)
// and outbound (RFC 5626 section 6).
func (s *Server) register(req *sip.Request, tx sip.ServerTransaction, src netip.AddrPort) {
	s.pstats.registers.Add(1)
	to := req.To()
	if to == nil || to.Address.User == "" {
		s.reply(tx, req, 400, "Bad To Header")
		return
	}
	toHost := strings.ToLower(to.Address.Host)
	if !s.isLocalDomain(toHost) {
		s.reply(tx, req, 403, "Not Our Domain")
		return
	}
	aor := s.aorOf(&to.Address)
	if ok := s.authorize(req, tx, aor, src); !ok {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()

	var contacts []*sip.ContactHeader
	for _, h := range req.GetHeaders("Contact") {
		if c, ok := h.(*sip.ContactHeader); ok {
			contacts = append(contacts, c)
		}
	}
	callID := callIDOf(req)
	cseq := req.CSeq().SeqNo
	expiresHdr := -1
	if h := req.GetHeader("Expires"); h != nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(h.Value()), 10, 32); err == nil {
			expiresHdr = int(n)
		}
	}
	now := s.clock.Now()

	// Contact: * removes every binding (RFC 3261 section 10.3 step 6).
	for _, c := range contacts {
		if c.Address.Wildcard || c.Address.Host == "*" {
			if len(contacts) != 1 || expiresHdr != 0 {
				s.reply(tx, req, 400, "Bad Wildcard Contact")
				return
			}
			bs, _ := s.bindings.Lookup(ctx, aor)
			for _, b := range bs {
				if b.CallID == callID && cseq <= b.CSeq {
					s.reply(tx, req, 500, "Out Of Order Request")
					return
				}
			}
			if len(bs) > 0 {
				if err := s.bindings.Remove(ctx, aor, ""); err != nil && err != ErrNoBinding {
					s.reply(tx, req, 500, "Binding Store Unavailable")
					return
				}
				s.log.Info("sip: unregistered", "aor", aor, "bindings", len(bs))
			}
			s.replyBindings(tx, req, aor, false)
			return
		}
	}

	supportsOutbound := headerHasToken(req, "Supported", "outbound") || headerHasToken(req, "Require", "outbound")
	var paths []string
	for _, h := range req.GetHeaders("Path") {
		for p := range splitList([]byte(h.Value())) {
			if len(p) > 0 {
				paths = append(paths, string(p))
			}
		}
	}
	tr := strings.ToLower(req.Transport())
	sk := s.socks[tr]
	if sk == nil && !isOverlayAddr(src.Addr()) {
		s.reply(tx, req, 500, "No Listener")
		return
	}
	usedOutbound := false
	existing, err := s.bindings.Lookup(ctx, aor)
	if err != nil {
		s.reply(tx, req, 500, "Binding Store Unavailable")
		return
	}
	for _, c := range contacts {
		exp := time.Duration(expiresHdr) * time.Second
		if expiresHdr < 0 {
			exp = s.cfg.DefaultExpires
		}
		if v, ok := c.Params.Get("expires"); ok {
			if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
				exp = time.Duration(n) * time.Second
			}
		}
		if exp > 0 && exp < s.cfg.MinExpires {
			s.reply(tx, req, 423, "Interval Too Brief", sip.NewHeader("Min-Expires", strconv.Itoa(int(s.cfg.MinExpires/time.Second))))
			return
		}
		exp = min(exp, s.cfg.MaxExpires)
		uri := c.Address
		uri.UriParams = uri.UriParams.Clone()
		b := Binding{
			AOR:        aor,
			Contact:    uri.String(),
			Q:          1000,
			CallID:     callID,
			CSeq:       cseq,
			Expires:    now.Add(exp),
			Registered: now,
		}
		if q, ok := c.Params.Get("q"); ok {
			if f, err := strconv.ParseFloat(q, 64); err == nil && f >= 0 && f <= 1 {
				b.Q = int(f * 1000)
			}
		}
		if inst, ok := c.Params.Get("+sip.instance"); ok {
			b.InstanceID = strings.Trim(inst, "\"")
			if rid, ok := c.Params.Get("reg-id"); ok && supportsOutbound {
				if n, err := strconv.Atoi(rid); err == nil && n > 0 {
					b.RegID, b.Outbound = n, true
					usedOutbound = true
				}
			}
		}
		if len(paths) > 0 {
			b.Path = paths
		}
		if sk != nil {
			f := flowID{Transport: tr, Remote: src, Local: sk.bound}
			b.Flow = Flow{Superpeer: s.cfg.NodeID, Transport: tr, Remote: src.String(), Local: sk.bound.String(), Token: makeFlowToken(s.flowKey, f)}
		}
		var old *Binding
		for i := range existing {
			if existing[i].Key() == b.Key() {
				old = &existing[i]
			}
		}
		if old != nil && old.CallID == callID && cseq <= old.CSeq {
			s.reply(tx, req, 500, "Out Of Order Request")
			return
		}
		switch {
		case exp == 0:
			if old != nil {
				if err := s.bindings.Remove(ctx, aor, b.Key()); err != nil && err != ErrNoBinding {
					s.reply(tx, req, 500, "Binding Store Unavailable")
					return
				}
				s.log.Info("sip: unregistered", "aor", aor, "contact", b.Contact)
			}
		case old != nil && sameBinding(old, &b):
			// A refresh writes only the new expiry.
			if err := s.bindings.Refresh(ctx, aor, b.Key(), b.Expires); err != nil {
				if err := s.bindings.Put(ctx, b); err != nil {
					s.reply(tx, req, 500, "Binding Store Unavailable")
					return
				}
			}
		default:
			if err := s.bindings.Put(ctx, b); err != nil {
				s.reply(tx, req, 500, "Binding Store Unavailable")
				return
			}
			s.log.Info("sip: registered", "aor", aor, "contact", b.Contact, "flow", tr+":"+src.String(), "expires", exp, "outbound", b.Outbound)
		}
	}
	s.rememberAOR(aor)
	s.replyBindings(tx, req, aor, usedOutbound)
}

// sameBinding reports whether b only refreshes old: same contact, flow,
// path and call.
func sameBinding(old, b *Binding) bool {
	return old.Contact == b.Contact && old.Flow == b.Flow && old.CallID == b.CallID && old.Outbound == b.Outbound &&
		slices.Equal(old.Path, b.Path) && old.Q == b.Q
}

// replyBindings answers a REGISTER with the AOR's current bindings.
func (s *Server) replyBindings(tx sip.ServerTransaction, req *sip.Request, aor string, outbound bool) {
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	bs, err := s.bindings.Lookup(ctx, aor)
	if err != nil {
		s.reply(tx, req, 500, "Binding Store Unavailable")
		return
	}
	now := s.clock.Now()
	var extra []sip.Header
	for _, b := range bs {
		v := "<" + b.Contact + ">;expires=" + strconv.Itoa(int(b.Expires.Sub(now).Round(time.Second)/time.Second))
		if b.InstanceID != "" {
			v += ";+sip.instance=\"" + b.InstanceID + "\""
			if b.RegID > 0 {
				v += ";reg-id=" + strconv.Itoa(b.RegID)
			}
		}
		extra = append(extra, sip.NewHeader("Contact", v))
	}
	for _, h := range req.GetHeaders("Path") {
		extra = append(extra, sip.NewHeader("Path", h.Value()))
	}
	if outbound {
		// RFC 5626 section 6: the registrar confirms outbound, and says how
		// often to send keepalives (section 4.4.1).
		extra = append(extra, sip.NewHeader("Require", "outbound"))
		if s.cfg.FlowTimer > 0 {
			extra = append(extra, sip.NewHeader("Flow-Timer", strconv.Itoa(int(s.cfg.FlowTimer/time.Second))))
		}
	}
	extra = append(extra, sip.NewHeader("Supported", strings.Join(supported, ", ")))
	s.reply(tx, req, 200, "OK", extra...)
}

func headerHasToken(req *sip.Request, name, token string) bool {
	for _, h := range req.GetHeaders(name) {
		for opt := range strings.SplitSeq(h.Value(), ",") {
			if strings.EqualFold(strings.TrimSpace(opt), token) {
				return true
			}
		}
	}
	return false
}

// knownAOR reports whether aor is a user of the site (an account, or
// registered here since start): a request for it gets 480 when it has no
// binding now, 404 otherwise.
func (s *Server) knownAOR(aor string) bool {
	if s.account(aor) != nil {
		return true
	}
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	_, ok := s.seen[aor]
	return ok
}

func (s *Server) rememberAOR(aor string) {
	s.seenMu.Lock()
	defer s.seenMu.Unlock()
	if s.seen == nil {
		s.seen = map[string]struct{}{}
	}
	if len(s.seen) < maxSeenAORs {
		s.seen[aor] = struct{}{}
	}
}

// maxSeenAORs bounds the memory of AORs seen (a site has tens of phones).
const maxSeenAORs = 100000

func (s *Server) account(aor string) *Account {
	for i := range s.cfg.Accounts {
		if a, err := CanonicalAOR(s.cfg.Accounts[i].AOR); err == nil && a == aor {
			return &s.cfg.Accounts[i]
		}
	}
	return nil
}

// authorize applies the site's policy to a REGISTER (RFC 3261 section 22,
// digest per RFC 2617 with MD5 and qop=auth). It answers the request
// itself when it returns false.
func (s *Server) authorize(req *sip.Request, tx sip.ServerTransaction, aor string, src netip.AddrPort) bool {
	acct := s.account(aor)
	lan := s.inLAN(src.Addr())
	if acct == nil && s.cfg.Auth == AuthLANOpen && lan {
		return true
	}
	if acct == nil {
		s.reply(tx, req, 403, "Forbidden")
		s.log.Info("sip: registration refused", "aor", aor, "source", src, "reason", "no account")
		return false
	}
	user := acct.User
	if user == "" {
		var u sip.Uri
		sip.ParseUri(acct.AOR, &u)
		user = u.User
	}
	stale := false
	for _, h := range req.GetHeaders("Authorization") {
		cred, ok := parseDigest(h.Value())
		if !ok || cred["username"] != user || cred["realm"] != s.cfg.realm() {
			continue
		}
		if !s.nonceValid(cred["nonce"]) {
			stale = true
			continue
		}
		ha1 := md5hex(user + ":" + s.cfg.realm() + ":" + acct.Password)
		ha2 := md5hex(string(req.Method) + ":" + cred["uri"])
		var want string
		if qop := cred["qop"]; qop == "auth" {
			want = md5hex(ha1 + ":" + cred["nonce"] + ":" + cred["nc"] + ":" + cred["cnonce"] + ":auth:" + ha2)
		} else {
			want = md5hex(ha1 + ":" + cred["nonce"] + ":" + ha2)
		}
		if hmac.Equal([]byte(want), []byte(strings.ToLower(cred["response"]))) {
			return true
		}
		s.log.Info("sip: registration refused", "aor", aor, "source", src, "reason", "wrong credentials")
	}
	chal := `Digest realm="` + s.cfg.realm() + `", nonce="` + s.makeNonce() + `", algorithm=MD5, qop="auth"`
	if stale {
		chal += ", stale=true"
	}
	s.reply(tx, req, 401, "Unauthorized", sip.NewHeader("WWW-Authenticate", chal))
	return false
}

func md5hex(s string) string {
	h := md5.Sum([]byte(s))
	return hex.EncodeToString(h[:])
}

// nonceLifetime bounds how long a challenge may be answered.
const nonceLifetime = 5 * time.Minute

// makeNonce returns a stateless nonce: the time, authenticated.
func (s *Server) makeNonce() string {
	var b [8 + 12]byte
	binary.BigEndian.PutUint64(b[:8], uint64(s.clock.Now().Unix()))
	mac := hmac.New(sha256.New, s.flowKey)
	mac.Write(b[:8])
	copy(b[8:], mac.Sum(nil))
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func (s *Server) nonceValid(n string) bool {
	b, err := base64.RawURLEncoding.DecodeString(n)
	if err != nil || len(b) != 20 {
		return false
	}
	mac := hmac.New(sha256.New, s.flowKey)
	mac.Write(b[:8])
	if !hmac.Equal(mac.Sum(nil)[:12], b[8:]) {
		return false
	}
	t := time.Unix(int64(binary.BigEndian.Uint64(b[:8])), 0)
	age := s.clock.Now().Sub(t)
	return age >= -time.Minute && age < nonceLifetime
}

// parseDigest parses `Digest a="b", c=d` into a map; ok is false for
// other schemes (RFC 4475 section 3.3.7: an unknown scheme is ignored).
func parseDigest(v string) (map[string]string, bool) {
	v = strings.TrimSpace(v)
	scheme, rest, _ := strings.Cut(v, " ")
	if !strings.EqualFold(scheme, "Digest") {
		return nil, false
	}
	out := map[string]string{}
	for part := range splitList([]byte(rest)) {
		k, val, ok := strings.Cut(string(part), "=")
		if !ok {
			continue
		}
		out[strings.ToLower(strings.TrimSpace(k))] = strings.Trim(strings.TrimSpace(val), "\"")
	}
	return out, true
}

// publisher keeps the overlay's records in step with the bindings: an AOR
// with bindings is published until its latest expiry, one without is
// withdrawn. Binding events only mark AORs; one goroutine talks to the
// overlay, so a slow DHT never holds up a REGISTER.
type publisher struct {
	s         *Server
	mu        sync.Mutex // guards following
	pending   map[string]bool
	published map[string]time.Time
	kick      chan struct{}
	cancel    func()
}

func newPublisher(s *Server) *publisher {
	p := &publisher{s: s, pending: map[string]bool{}, published: map[string]time.Time{}, kick: make(chan struct{}, 1)}
	p.cancel = s.bindings.Watch(func(ev BindingEvent) {
		p.mu.Lock()
		p.pending[ev.Binding.AOR] = true
		p.mu.Unlock()
		select {
		case p.kick <- struct{}{}:
		default:
		}
	})
	return p
}

func (p *publisher) run(ctx context.Context) {
	defer p.cancel()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		}
		p.mu.Lock()
		aors := make([]string, 0, len(p.pending))
		for a := range p.pending {
			aors = append(aors, a)
		}
		p.pending = map[string]bool{}
		p.mu.Unlock()
		for _, aor := range aors {
			if ctx.Err() != nil {
				return // stopping: the records expire with their bindings
			}
			p.sync(ctx, aor)
		}
	}
}

// sync publishes or withdraws one AOR. A refresh is published only when
// it moves the record's expiry by more than half its remaining life, so a
// phone re-registering every minute does not rewrite the DHT every minute.
// A failure because the server is stopping (ctx cancelled) is no news to
// an operator and is not logged.
func (p *publisher) sync(parent context.Context, aor string) {
	ctx, cancel := context.WithTimeout(parent, 10*time.Second)
	defer cancel()
	bs, err := p.s.bindings.Lookup(ctx, aor)
	if err != nil {
		return
	}
	var latest time.Time
	for _, b := range bs {
		if b.Expires.After(latest) {
			latest = b.Expires
		}
	}
	now := p.s.clock.Now()
	p.mu.Lock()
	last, had := p.published[aor]
	p.mu.Unlock()
	if len(bs) == 0 {
		if !had {
			return
		}
		if err := p.s.locator.Withdraw(ctx, aor); err != nil {
			if parent.Err() == nil {
				p.s.log.Warn("sip: withdrawing from the overlay", "aor", aor, "err", err)
			}
			return
		}
		p.mu.Lock()
		delete(p.published, aor)
		p.mu.Unlock()
		p.s.log.Info("sip: withdrawn from the overlay", "aor", aor)
		return
	}
	if had && latest.Sub(last) < last.Sub(now)/2 && last.After(now) {
		return
	}
	if err := p.s.locator.Publish(ctx, aor, latest); err != nil {
		if parent.Err() == nil {
			p.s.log.Warn("sip: publishing to the overlay", "aor", aor, "err", err)
		}
		return
	}
	p.mu.Lock()
	p.published[aor] = latest
	p.mu.Unlock()
	p.s.log.Debug("sip: published to the overlay", "aor", aor, "until", latest)
}
