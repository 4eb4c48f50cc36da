package election

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func bnd(aor, contact string, expires time.Time) *Binding {
	return &Binding{AOR: aor, Contact: contact, Expires: expires, Flow: Flow{Superpeer: "a", Transport: "udp"}}
}

func TestSiteStateApply(t *testing.T) {
	type step struct {
		cmd     Command
		wantErr error
	}
	cases := []struct {
		name  string
		steps []step
		check func(t *testing.T, s *SiteState)
	}{
		{
			name: "put then lookup by key",
			steps: []step{
				{cmd: Command{Op: OpBindingPut, Binding: bnd("sip:a@s", "sip:a@1.2.3.4", t0.Add(time.Hour))}},
			},
			check: func(t *testing.T, s *SiteState) {
				b := s.Registrations["sip:a@s"]["sip:a@1.2.3.4"]
				if b.Index != 1 || !b.Expires.Equal(t0.Add(time.Hour)) {
					t.Errorf("binding %+v", b)
				}
			},
		},
		{
			name: "RFC 5626 bindings are keyed by instance and reg-id, not contact",
			steps: []step{
				{cmd: Command{Op: OpBindingPut, Binding: &Binding{AOR: "sip:a@s", Contact: "sip:a@1.1.1.1", InstanceID: "<urn:uuid:1>", RegID: 1, Expires: t0}}},
				{cmd: Command{Op: OpBindingPut, Binding: &Binding{AOR: "sip:a@s", Contact: "sip:a@2.2.2.2", InstanceID: "<urn:uuid:1>", RegID: 1, Expires: t0}}},
				{cmd: Command{Op: OpBindingPut, Binding: &Binding{AOR: "sip:a@s", Contact: "sip:a@2.2.2.2", InstanceID: "<urn:uuid:1>", RegID: 2, Expires: t0}}},
			},
			check: func(t *testing.T, s *SiteState) {
				if n := len(s.Registrations["sip:a@s"]); n != 2 {
					t.Errorf("%d bindings, want 2 (reg-id 1 replaced, reg-id 2 added)", n)
				}
				if c := s.Registrations["sip:a@s"]["<urn:uuid:1>;reg-id=1"].Contact; c != "sip:a@2.2.2.2" {
					t.Errorf("reg-id 1 contact %q", c)
				}
			},
		},
		{
			name: "refresh extends only the named version, only later",
			steps: []step{
				{cmd: Command{Op: OpBindingPut, Binding: bnd("sip:a@s", "c1", t0)}},
				{cmd: Command{Op: OpBindingRefresh, Refreshes: []Refresh{
					{AOR: "sip:a@s", Key: "c1", Index: 1, Expires: t0.Add(time.Hour)},
					{AOR: "sip:a@s", Key: "c1", Index: 1, Expires: t0.Add(time.Minute)}, // earlier: ignored
					{AOR: "sip:a@s", Key: "gone", Index: 1, Expires: t0.Add(time.Hour)},
				}}},
				{cmd: Command{Op: OpBindingPut, Binding: bnd("sip:b@s", "c2", t0)}},
				{cmd: Command{Op: OpBindingRemove, AOR: "sip:b@s", Key: "c2"}},
				{cmd: Command{Op: OpBindingPut, Binding: bnd("sip:b@s", "c2", t0)}},
				// names the removed version (index 3): must not revive or extend
				{cmd: Command{Op: OpBindingRefresh, Refreshes: []Refresh{{AOR: "sip:b@s", Key: "c2", Index: 3, Expires: t0.Add(time.Hour)}}}},
			},
			check: func(t *testing.T, s *SiteState) {
				if got := s.Registrations["sip:a@s"]["c1"].Expires; !got.Equal(t0.Add(time.Hour)) {
					t.Errorf("c1 expires %v", got)
				}
				if got := s.Registrations["sip:b@s"]["c2"].Expires; !got.Equal(t0) {
					t.Errorf("a refresh of the removed version moved the new one to %v", got)
				}
			},
		},
		{
			name: "remove unknown binding is refused",
			steps: []step{
				{cmd: Command{Op: OpBindingRemove, AOR: "sip:a@s", Key: "nope"}, wantErr: ErrNoBinding},
			},
		},
		{
			name: "expire removes what lapsed before the cutoff, keeps the rest",
			steps: []step{
				{cmd: Command{Op: OpBindingPut, Binding: bnd("sip:a@s", "old", t0)}},
				{cmd: Command{Op: OpBindingPut, Binding: bnd("sip:a@s", "new", t0.Add(time.Hour))}},
				{cmd: Command{Op: OpRecordPut, Record: &OverlayRecord{Key: "r-old", Value: []byte("x"), Expires: t0}}},
				{cmd: Command{Op: OpRecordPut, Record: &OverlayRecord{Key: "r-new", Value: []byte("y"), Expires: t0.Add(time.Hour)}}},
				{cmd: Command{Op: OpExpire, At: t0.Add(time.Minute)}},
			},
			check: func(t *testing.T, s *SiteState) {
				if _, ok := s.Registrations["sip:a@s"]["old"]; ok {
					t.Error("lapsed binding kept")
				}
				if _, ok := s.Registrations["sip:a@s"]["new"]; !ok {
					t.Error("live binding expired")
				}
				if _, ok := s.Records["r-old"]; ok {
					t.Error("lapsed record kept")
				}
				if _, ok := s.Records["r-new"]; !ok {
					t.Error("live record expired")
				}
			},
		},
		{
			name: "remove an AOR removes all its contacts",
			steps: []step{
				{cmd: Command{Op: OpBindingPut, Binding: bnd("sip:a@s", "c1", t0)}},
				{cmd: Command{Op: OpBindingPut, Binding: bnd("sip:a@s", "c2", t0)}},
				{cmd: Command{Op: OpAORRemove, AOR: "sip:a@s"}},
			},
			check: func(t *testing.T, s *SiteState) {
				if len(s.Registrations) != 0 {
					t.Errorf("registrations left: %v", s.Registrations)
				}
			},
		},
		{
			name: "members, superpeers, TURN rotation, config",
			steps: []step{
				{cmd: Command{Op: OpMemberPut, Member: &Member{ID: "a", Addr: "10.0.0.1:5071", Role: RoleFull, Capability: capRouter, Score: 1}}},
				{cmd: Command{Op: OpSuperpeers, IDs: []string{"a"}, Reason: "filling", At: t0}},
				{cmd: Command{Op: OpTURNSecret, Secret: bytes.Repeat([]byte{1}, 32), At: t0}},
				{cmd: Command{Op: OpTURNSecret, Secret: bytes.Repeat([]byte{2}, 32), At: t0.Add(time.Hour)}},
				{cmd: Command{Op: OpTURNSecret, Secret: []byte("short")}, wantErr: ErrBadCommand},
				{cmd: Command{Op: OpConfigSet, Config: &SiteConfig{Domain: "s", SuperpeerCount: 3}}},
				{cmd: Command{Op: OpMemberRemove, ID: "zz"}, wantErr: ErrUnknownMember},
			},
			check: func(t *testing.T, s *SiteState) {
				if m := s.Members["a"]; m.Score != Score(capRouter) {
					t.Errorf("member score %d: the state recomputes it from the capability, want %d", m.Score, Score(capRouter))
				}
				if s.Superpeers.Epoch != 2 || !s.Superpeers.Contains("a") || !s.Superpeers.Committed.Equal(t0) {
					t.Errorf("superpeers %+v", s.Superpeers)
				}
				if s.TURN.Current[0] != 2 || s.TURN.Previous[0] != 1 || !s.TURN.Rotated.Equal(t0.Add(time.Hour)) {
					t.Errorf("TURN %+v", s.TURN)
				}
				if s.Config.SuperpeerCount != 3 {
					t.Errorf("config %+v", s.Config)
				}
			},
		},
		{
			name: "unknown op",
			steps: []step{
				{cmd: Command{Op: "launch"}, wantErr: ErrBadCommand},
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := NewSiteState()
			for i, st := range c.steps {
				res, _ := s.Apply(uint64(i+1), st.cmd)
				if !errors.Is(res.Err, st.wantErr) || (st.wantErr == nil && res.Err != nil) {
					t.Fatalf("step %d (%s): err %v, want %v", i+1, st.cmd.Op, res.Err, st.wantErr)
				}
			}
			if c.check != nil {
				c.check(t, s)
			}
		})
	}
}

// The same commands give the same state everywhere: nothing in Apply reads
// a clock, a random source or map order.
func TestSiteStateApplyIsDeterministic(t *testing.T) {
	var cmds []Command
	for i := range 50 {
		aor := []string{"sip:a@s", "sip:b@s", "sip:c@s"}[i%3]
		cmds = append(cmds, Command{Op: OpBindingPut, Binding: bnd(aor, string(rune('a'+i%7)), t0.Add(time.Duration(i)*time.Minute))})
		if i%5 == 0 {
			cmds = append(cmds, Command{Op: OpExpire, At: t0.Add(time.Duration(i/2) * time.Minute)})
		}
	}
	run := func() ([]byte, []Change) {
		s := NewSiteState()
		var changes []Change
		for i, c := range cmds {
			_, ch := s.Apply(uint64(i+1), c)
			changes = append(changes, ch)
		}
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		return b, changes
	}
	s1, c1 := run()
	s2, c2 := run()
	if !bytes.Equal(s1, s2) || !reflect.DeepEqual(c1, c2) {
		t.Fatal("two replicas applying the same commands differ")
	}
}

func TestFSMSnapshotRestore(t *testing.T) {
	var changes []Change
	f := NewFSM(func(c Change) { changes = append(changes, c) })
	for i, c := range []Command{
		{Op: OpBindingPut, Binding: bnd("sip:a@s", "c1", t0)},
		{Op: OpMemberPut, Member: &Member{ID: "a", Capability: capBoard}},
		{Op: OpSuperpeers, IDs: []string{"a"}},
	} {
		data, err := EncodeCommand(c)
		if err != nil {
			t.Fatal(err)
		}
		if res := f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: data}).(ApplyResult); res.Err != nil {
			t.Fatal(res.Err)
		}
	}
	if res := f.Apply(&raft.Log{Index: 4, Type: raft.LogCommand, Data: []byte("{")}).(ApplyResult); !errors.Is(res.Err, ErrBadCommand) {
		t.Errorf("garbage command: %v", res.Err)
	}
	if len(changes) != 3 || !changes[2].Superpeers {
		t.Errorf("changes %+v", changes)
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	g := NewFSM(nil)
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	var a, b []byte
	f.Read(func(s *SiteState) { a, _ = json.Marshal(s) })
	g.Read(func(s *SiteState) { b, _ = json.Marshal(s) })
	if !bytes.Equal(a, b) {
		t.Errorf("restored state differs:\n%s\n%s", a, b)
	}
}

type memSink struct{ bytes.Buffer }

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { return nil }
func (s *memSink) Close() error  { return nil }
