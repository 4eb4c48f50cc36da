package election

import (
	"context"
	"sync"
)

// bindingWatchBuffer is how many binding events a watcher may fall behind
// before it is told to resync.
const bindingWatchBuffer = 256

// watchHub fans changes out to watchers without ever blocking the
// publisher (Raft's apply goroutine).
type watchHub struct {
	mu       sync.Mutex // guards following
	sets     map[chan SuperpeerSet]struct{}
	binds    map[chan BindingEvent]struct{}
	lastSet  *SuperpeerSet
	shutdown bool
}

func newWatchHub() *watchHub {
	return &watchHub{sets: map[chan SuperpeerSet]struct{}{}, binds: map[chan BindingEvent]struct{}{}}
}

// superpeers registers a watcher that first receives current.
func (h *watchHub) superpeers(ctx context.Context, current SuperpeerSet) <-chan SuperpeerSet {
	ch := make(chan SuperpeerSet, 1)
	h.mu.Lock()
	if h.shutdown {
		h.mu.Unlock()
		close(ch)
		return ch
	}
	if h.lastSet != nil && h.lastSet.Epoch > current.Epoch {
		current = *h.lastSet
	}
	ch <- current
	h.sets[ch] = struct{}{}
	h.mu.Unlock()
	context.AfterFunc(ctx, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := h.sets[ch]; ok {
			delete(h.sets, ch)
			close(ch)
		}
	})
	return ch
}

// publishSet replaces whatever a watcher has not read yet with set, unless
// set is not newer than the last one published.
func (h *watchHub) publishSet(set SuperpeerSet) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lastSet != nil && set.Epoch < h.lastSet.Epoch {
		return
	}
	h.lastSet = &set
	for ch := range h.sets {
		select {
		case <-ch:
		default:
		}
		ch <- set
	}
}

func (h *watchHub) bindings(ctx context.Context) <-chan BindingEvent {
	ch := make(chan BindingEvent, bindingWatchBuffer)
	h.mu.Lock()
	if h.shutdown {
		h.mu.Unlock()
		close(ch)
		return ch
	}
	h.binds[ch] = struct{}{}
	h.mu.Unlock()
	context.AfterFunc(ctx, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := h.binds[ch]; ok {
			delete(h.binds, ch)
			close(ch)
		}
	})
	return ch
}

func (h *watchHub) publishBindings(ev BindingEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.binds {
		select {
		case ch <- ev:
		default:
			// Behind: drop what is queued and say so.
		drain:
			for {
				select {
				case <-ch:
				default:
					break drain
				}
			}
			ch <- BindingEvent{Kind: BindingsResync}
		}
	}
}

func (h *watchHub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.shutdown = true
	for ch := range h.sets {
		close(ch)
		delete(h.sets, ch)
	}
	for ch := range h.binds {
		close(ch)
		delete(h.binds, ch)
	}
}
