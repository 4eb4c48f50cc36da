package election

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/superpeer/superpeer/nat/clock"
)

// A refresh of a binding far from expiry is held in memory on this
// superpeer and on the other one, writes nothing to the log, survives the
// death of the superpeer that accepted it, and reaches the log at the next
// flush.
func TestRefreshIsHeldOnTwoPeersAndFlushedLater(t *testing.T) {
	s := threeSite(t, false)
	s.makeLeader("a-router")
	eventually(t, 10*time.Second, func() (bool, string) {
		set := s.node("c-desktop").Superpeers()
		return sameMembers(set.IDs, []string{"a-router", "b-board"}), fmt.Sprintf("superpeers %v", set.IDs)
	})
	a, b, c := s.node("a-router"), s.node("b-board"), s.node("c-desktop")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Registered through the board (a superpeer, not the leader).
	reg := put(t, b, "sip:bob@site")
	eventually(t, 5*time.Second, func() (bool, string) {
		return len(a.Registrations().Lookup("sip:bob@site")) == 1, "the leader lacks the binding"
	})
	watch := a.Registrations().Watch(ctx)
	logBefore := a.raft.LastIndex()

	later := reg.Expires.Add(30 * time.Minute)
	got, err := b.Registrations().Refresh(ctx, reg.AOR, reg.Key(), later)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Expires.Equal(later) {
		t.Errorf("refresh returned expiry %v, want %v", got.Expires, later)
	}
	if idx := a.raft.LastIndex(); idx != logBefore {
		t.Errorf("a refresh far from expiry wrote %d log entries", idx-logBefore)
	}
	// The leader (the other superpeer here) holds it and says so.
	select {
	case ev := <-watch:
		if ev.Kind != BindingRefreshed || !ev.Binding.Expires.Equal(later) {
			t.Errorf("watch event %+v", ev)
		}
	case <-ctx.Done():
		t.Fatal("no refresh event at the other superpeer")
	}
	if bs := a.Registrations().Lookup(reg.AOR); len(bs) != 1 || !bs[0].Expires.Equal(later) {
		t.Fatalf("the other superpeer answers %+v", bs)
	}

	// The board dies before any flush: nothing accepted is lost.
	s.kill("b-board")
	if bs := a.Registrations().Lookup(reg.AOR); len(bs) != 1 || !bs[0].Expires.Equal(later) {
		t.Fatalf("after the board died the leader answers %+v", bs)
	}
	// The flush writes it, once, for everyone (the desktop held nothing).
	a.FlushRefreshes(ctx)
	eventually(t, 5*time.Second, func() (bool, string) {
		bs := c.Registrations().Lookup(reg.AOR)
		return len(bs) == 1 && bs[0].Expires.Equal(later), "the desktop has not got the flushed refresh"
	})
	if a.Status().HeldRefreshes != 0 {
		t.Errorf("%d refreshes still held after the flush", a.Status().HeldRefreshes)
	}
}

func TestRefreshNearExpiryIsWrittenAtOnce(t *testing.T) {
	s := threeSite(t, false)
	a := s.node("a-router")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reg, err := a.Registrations().Put(ctx, Binding{AOR: "sip:carol@site", Contact: "sip:carol@10.0.0.9",
		Expires: time.Now().Add(20 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if _, err := a.Registrations().Refresh(ctx, reg.AOR, reg.Key(), later); err != nil {
		t.Fatal(err)
	}
	// In the log at once: every peer's replica has it without a flush.
	for _, n := range s.live() {
		var exp time.Time
		n.Barrier(ctx)
		n.fsm.Read(func(st *SiteState) { exp = st.Registrations[reg.AOR][reg.Key()].Expires })
		if !exp.Equal(later) {
			t.Errorf("%s's replica has expiry %v, want %v", n.id, exp, later)
		}
	}
	if _, err := a.Registrations().Refresh(ctx, reg.AOR, "sip:nobody@x", later); !errors.Is(err, ErrNoBinding) {
		t.Errorf("refreshing an unknown binding: %v", err)
	}
}

func TestMemStoreSemantics(t *testing.T) {
	fake := clock.NewFake(t0)
	m := NewMemStore(fake)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := m.Watch(ctx)

	b, err := m.Put(ctx, Binding{AOR: "sip:a@s", Contact: "sip:a@1", Expires: t0.Add(time.Minute)})
	if err != nil || b.Index == 0 {
		t.Fatalf("put: %+v, %v", b, err)
	}
	if ev := <-w; ev.Kind != BindingPut || ev.Binding.Contact != "sip:a@1" {
		t.Errorf("event %+v", ev)
	}
	if _, err := m.Refresh(ctx, "sip:a@s", "sip:a@1", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if ev := <-w; ev.Kind != BindingRefreshed {
		t.Errorf("event %+v", ev)
	}
	fake.Advance(30 * time.Minute)
	if got := m.Lookup("sip:a@s"); len(got) != 1 {
		t.Fatalf("refreshed binding gone after 30 min: %+v", got)
	}
	fake.Advance(31 * time.Minute)
	if got, _ := m.LookupCurrent(ctx, "sip:a@s"); len(got) != 0 {
		t.Errorf("expired binding still returned: %+v", got)
	}
	if _, err := m.Refresh(ctx, "sip:a@s", "sip:a@1", t0.Add(2*time.Hour)); !errors.Is(err, ErrNoBinding) {
		t.Errorf("refreshing an expired binding: %v, want ErrNoBinding", err)
	}
	if err := m.Remove(ctx, "sip:a@s", "sip:a@1"); err != nil {
		t.Fatal(err)
	}
	if ev := <-w; ev.Kind != BindingRemoved {
		t.Errorf("event %+v", ev)
	}
	if err := m.Remove(ctx, "sip:a@s", "sip:a@1"); !errors.Is(err, ErrNoBinding) {
		t.Errorf("removing twice: %v", err)
	}
	// A reader that falls behind is told to resync.
	for i := range bindingWatchBuffer + 10 {
		m.Put(ctx, Binding{AOR: "sip:flood@s", Contact: string(rune('a' + i%26)), Expires: fake.Now().Add(time.Hour)})
	}
	resync := false
	for len(w) > 0 {
		if ev := <-w; ev.Kind == BindingsResync {
			resync = true
		}
	}
	if !resync {
		t.Error("a reader that fell behind was not told to resync")
	}
	cancel()
	eventually(t, 5*time.Second, func() (bool, string) {
		_, open := <-w
		return !open, "watch channel still open after its context ended"
	})
}
