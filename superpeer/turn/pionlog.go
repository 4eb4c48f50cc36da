package turn

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/pion/logging"

	"github.com/superpeer/superpeer/nat/clock"
)

// pionLogs routes pion's logs into slog. pion logs per packet at Debug and
// Info ("no permission for ..."), so only its Warn and Error lines pass,
// at Warn, and at most one a second (the rest are counted and reported
// with the next line that passes).
type pionLogs struct {
	log   *slog.Logger
	limit *logLimiter
}

func (f pionLogs) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{log: f.log.With("pion", scope), limit: f.limit}
}

type logLimiter struct {
	clk clock.Clock

	mu         sync.Mutex // guards following
	last       time.Time
	suppressed int
}

func newLogLimiter(clk clock.Clock) *logLimiter { return &logLimiter{clk: clk} }

// pass reports whether a line may be logged now, and how many were
// suppressed before it.
func (l *logLimiter) pass() (bool, int) {
	now := l.clk.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < time.Second {
		l.suppressed++
		return false, 0
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	return true, n
}

type pionLogger struct {
	log   *slog.Logger
	limit *logLimiter
}

// warn logs msg() at Warn unless the limiter holds it back; msg is only
// formatted when it is logged.
func (p pionLogger) warn(msg func() string) {
	ok, suppressed := p.limit.pass()
	if !ok {
		return
	}
	if suppressed > 0 {
		p.log.Warn("turn: "+msg(), "suppressed_before", suppressed)
		return
	}
	p.log.Warn("turn: " + msg())
}

func (pionLogger) Trace(string)          {}
func (pionLogger) Tracef(string, ...any) {}
func (pionLogger) Debug(string)          {}
func (pionLogger) Debugf(string, ...any) {}
func (pionLogger) Info(string)           {}
func (pionLogger) Infof(string, ...any)  {}
func (p pionLogger) Warn(msg string)     { p.warn(func() string { return msg }) }
func (p pionLogger) Error(msg string)    { p.warn(func() string { return msg }) }
func (p pionLogger) Warnf(format string, args ...any) {
	p.warn(func() string { return fmt.Sprintf(format, args...) })
}
func (p pionLogger) Errorf(format string, args ...any) {
	p.warn(func() string { return fmt.Sprintf(format, args...) })
}
