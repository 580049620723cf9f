package store

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestClientLoggerRepeatsAreHeldBack(t *testing.T) {
	var buf bytes.Buffer
	l := &clientLogger{log: slog.New(slog.NewTextHandler(&buf, nil)), last: map[string]time.Time{}, skipped: map[string]int{}}
	for range 5 {
		l.Printf(context.Background(), "redis: connection pool: failed to dial after %d attempts: %s", 5, "connection refused")
	}
	l.Printf(context.Background(), "sentinel: new master=%q addr=%q", "thanksio", "127.0.0.1:6380")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "failed to dial after 5 attempts") || !strings.Contains(lines[1], "new master") {
		t.Errorf("logged:\n%s\nwant the dial failure once and the new master once", buf.String())
	}
	if !strings.Contains(lines[0], "level=WARN") || !strings.Contains(lines[0], `msg="redis client"`) {
		t.Errorf("line %q; want a warning named redis client", lines[0])
	}
}
