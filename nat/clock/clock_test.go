package clock

import (
	"context"
	"testing"
	"time"
)

func TestFakeFiresInDeadlineOrder(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := NewFake(start)
	late := f.NewTimer(30 * time.Second)
	early := f.NewTimer(10 * time.Second)
	stopped := f.NewTimer(20 * time.Second)
	if !stopped.Stop() {
		t.Fatal("Stop of an armed timer reported inactive")
	}

	f.Advance(15 * time.Second)
	select {
	case got := <-early.C():
		if want := start.Add(10 * time.Second); !got.Equal(want) {
			t.Fatalf("early fired at %v, want %v", got, want)
		}
	default:
		t.Fatal("10 s timer did not fire after 15 s")
	}
	select {
	case <-late.C():
		t.Fatal("30 s timer fired after 15 s")
	default:
	}
	f.Advance(15 * time.Second)
	select {
	case <-late.C():
	default:
		t.Fatal("30 s timer did not fire after 30 s")
	}
	select {
	case <-stopped.C():
		t.Fatal("stopped timer fired")
	default:
	}
	if f.Timers() != 0 {
		t.Fatalf("%d timers still armed", f.Timers())
	}
}

func TestFakeAfterFuncAndWaitTimers(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	done := make(chan time.Time, 1)
	go func() {
		<-f.After(time.Minute)
		done <- f.Now()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.WaitTimers(ctx, 1); err != nil {
		t.Fatalf("goroutine never armed its timer: %v", err)
	}
	ran := make(chan struct{})
	f.AfterFunc(2*time.Minute, func() { close(ran) })
	f.Advance(3 * time.Minute)
	select {
	case got := <-done:
		if got.Before(time.Unix(60, 0)) {
			t.Fatalf("After returned at %v, before its deadline", got)
		}
	case <-ctx.Done():
		t.Fatal("After never fired")
	}
	select {
	case <-ran:
	case <-ctx.Done():
		t.Fatal("AfterFunc never ran")
	}
}
