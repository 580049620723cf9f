package store

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// SetClientLogger routes the go-redis client's own messages (failed dials,
// pub/sub reconnects, Sentinel switches) to log, as warnings, instead of
// plain lines on stderr. During an outage go-redis repeats the same message
// several times a second: each kind of message is logged at most once every
// 10 seconds, with the number of repeats left out. go-redis keeps one logger
// for the whole process.
func SetClientLogger(log *slog.Logger) {
	redis.SetLogger(&clientLogger{log: log, last: make(map[string]time.Time), skipped: make(map[string]int)})
}

// clientLoggerEvery is how often one kind of go-redis message is logged.
const clientLoggerEvery = 10 * time.Second

type clientLogger struct {
	log *slog.Logger

	mu      sync.Mutex
	last    map[string]time.Time // by format string: a small, fixed set
	skipped map[string]int
}

func (l *clientLogger) Printf(ctx context.Context, format string, v ...any) {
	now := time.Now()
	l.mu.Lock()
	if now.Sub(l.last[format]) < clientLoggerEvery {
		l.skipped[format]++
		l.mu.Unlock()
		return
	}
	skipped := l.skipped[format]
	l.last[format], l.skipped[format] = now, 0
	l.mu.Unlock()
	attrs := []slog.Attr{slog.String("detail", fmt.Sprintf(format, v...))}
	if skipped > 0 {
		attrs = append(attrs, slog.Int("repeats_not_logged", skipped))
	}
	l.log.LogAttrs(ctx, slog.LevelWarn, "redis client", attrs...)
}
