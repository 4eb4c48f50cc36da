package election

import (
	"context"
	"io"
	"log"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// raftLogger carries hashicorp/raft's log into slog. Raft's Info lines
// (state changes) become Debug; its Warn and Error lines stay, but each
// distinct message at most once per repeatEvery: while a peer is down,
// Raft logs a failed heartbeat several times a second.
type raftLogger struct {
	log  *slog.Logger
	name string
	args []any
	rate *repeatLimiter
}

const repeatEvery = 10 * time.Second

type repeatLimiter struct {
	mu   sync.Mutex // guards following
	last map[string]time.Time
}

func (r *repeatLimiter) allow(msg string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if t, ok := r.last[msg]; ok && now.Sub(t) < repeatEvery {
		return false
	}
	if len(r.last) > 256 {
		clear(r.last)
	}
	r.last[msg] = now
	return true
}

func newRaftLogger(l *slog.Logger) hclog.Logger {
	return &raftLogger{log: l, name: "raft", rate: &repeatLimiter{last: map[string]time.Time{}}}
}

func (l *raftLogger) Log(level hclog.Level, msg string, args ...any) {
	var lv slog.Level
	switch {
	case level >= hclog.Error:
		lv = slog.LevelWarn // a peer's trouble is this node's warning
	case level == hclog.Warn:
		lv = slog.LevelWarn
	default:
		lv = slog.LevelDebug
	}
	if lv >= slog.LevelWarn && !l.rate.allow(msg) {
		return
	}
	ctx := context.Background()
	if !l.log.Enabled(ctx, lv) {
		return
	}
	all := append(append([]any{"component", l.name}, l.args...), args...)
	l.log.Log(ctx, lv, msg, all...)
}

func (l *raftLogger) Trace(msg string, args ...any) { l.Log(hclog.Trace, msg, args...) }
func (l *raftLogger) Debug(msg string, args ...any) { l.Log(hclog.Debug, msg, args...) }
func (l *raftLogger) Info(msg string, args ...any)  { l.Log(hclog.Info, msg, args...) }
func (l *raftLogger) Warn(msg string, args ...any)  { l.Log(hclog.Warn, msg, args...) }
func (l *raftLogger) Error(msg string, args ...any) { l.Log(hclog.Error, msg, args...) }
func (l *raftLogger) IsTrace() bool                 { return false }
func (l *raftLogger) IsDebug() bool                 { return l.log.Enabled(context.Background(), slog.LevelDebug) }
func (l *raftLogger) IsInfo() bool                  { return l.IsDebug() }
func (l *raftLogger) IsWarn() bool                  { return true }
func (l *raftLogger) IsError() bool                 { return true }
func (l *raftLogger) ImpliedArgs() []any            { return l.args }
func (l *raftLogger) Name() string                  { return l.name }
func (l *raftLogger) SetLevel(hclog.Level)          {}
func (l *raftLogger) GetLevel() hclog.Level         { return hclog.Debug }

func (l *raftLogger) With(args ...any) hclog.Logger {
	c := *l
	c.args = append(append([]any(nil), l.args...), args...)
	return &c
}

func (l *raftLogger) Named(name string) hclog.Logger {
	c := *l
	c.name = l.name + "." + name
	return &c
}

func (l *raftLogger) ResetNamed(name string) hclog.Logger {
	c := *l
	c.name = name
	return &c
}

func (l *raftLogger) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return log.New(l.StandardWriter(nil), "", 0)
}

func (l *raftLogger) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		l.Log(hclog.Info, string(p))
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
