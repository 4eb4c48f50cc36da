package sip

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
)

// txMethods are the methods transactions are counted by; any other is
// "other", so that a peer inventing methods cannot grow the series.
var txMethods = [...]string{"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "MESSAGE",
	"SUBSCRIBE", "NOTIFY", "PRACK", "UPDATE", "REFER", "INFO", "PUBLISH", "other"}

// txMetrics counts the server transactions this superpeer ended, by method
// and by the class of the final response it sent (RFC 3261 section 21):
// superpeer_sip_transactions_total{method="INVITE",class="2xx"}. Each
// series appears with its first transaction. Refusals of the validation
// (RFC 4475) are counted as transactions of their method too.
type txMetrics struct {
	set *metrics.Set
	by  [len(txMethods)][5]atomic.Pointer[metrics.Counter] // classes 2xx..6xx

	mu     sync.Mutex // guards following; held to create a series
	closed bool
}

func newTxMetrics() *txMetrics { return &txMetrics{set: metrics.NewSet()} }

// count counts a transaction of method that ended with code.
func (m *txMetrics) count(method string, code int) {
	class := code/100 - 2
	if m == nil || class < 0 || class > 4 {
		return
	}
	mi := len(txMethods) - 1
	for i, name := range txMethods[:len(txMethods)-1] {
		if name == method {
			mi = i
			break
		}
	}
	slot := &m.by[mi][class]
	if c := slot.Load(); c != nil {
		c.Inc()
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return // a straggler of a stopped server: its series are gone
	}
	c := slot.Load()
	if c == nil {
		c = m.set.GetOrCreateCounter(fmt.Sprintf(`superpeer_sip_transactions_total{method=%q,class="%dxx"}`, txMethods[mi], class+2))
		slot.Store(c)
	}
	c.Inc()
}

// close unregisters every series; nothing is counted after it.
func (m *txMetrics) close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.set.UnregisterAllMetrics()
}

// Metrics returns the server's metric set for a Prometheus endpoint: the
// transactions it ended by method and response class
// (superpeer_sip_transactions_total). Close unregisters its series, so a
// set kept by a stopped server writes nothing.
func (s *Server) Metrics() *metrics.Set { return s.tx.set }
