package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// slogLine returns the line that slog's handler in format writes for l,
// with attrs added by WithAttrs as Logger.With adds them.
func slogLine(tb testing.TB, format LogFormat, l *accessLine, attrs ...string) string {
	tb.Helper()
	var buf bytes.Buffer
	var h slog.Handler
	if format == LogJSON {
		h = slog.NewJSONHandler(&buf, nil)
	} else {
		h = slog.NewTextHandler(&buf, nil)
	}
	var with []slog.Attr
	for i := 0; i+1 < len(attrs); i += 2 {
		with = append(with, slog.String(attrs[i], attrs[i+1]))
	}
	if len(with) > 0 {
		h = h.WithAttrs(with)
	}
	r := slog.NewRecord(l.time, slog.LevelInfo, accessMessage, 0)
	fields := l.attrs()
	r.AddAttrs(fields[:]...)
	if err := h.Handle(context.Background(), r); err != nil {
		tb.Fatalf("Handle: %v", err)
	}
	return buf.String()
}

// awkwardStrings are values that slog escapes or quotes, and some it does
// not.
var awkwardStrings = []string{
	"",
	"acme",
	"/orders/list",
	`say "hi"`,
	`back\slash`,
	`\`,
	"ctl \x00\x01\x08\x0b\x0c\x1b\x1f end",
	"tab\tnewline\ncarriage\r",
	"del\x7f",
	"bad utf-8 \xff\xfe and \xc3",
	"truncated \xe2\x82",
	"separators \u2028 \u2029",
	"space here",
	"key=value",
	"=",
	" ",
	"ünïcödé",
	"replacement \ufffd char",
	"emoji 😀",
	"no-break\u00a0space",
	"zero\u200bwidth",
	"ideographic\u3000space",
	"<html> & 'quotes'",
	"/v2/orders/%2F..%5c?x=1#frag",
	strings.Repeat("long/", 300),
}

func TestAccessLineIsSlogs(t *testing.T) {
	zones := []*time.Location{time.UTC, time.FixedZone("IST", 5*3600+1800), time.FixedZone("", -7*3600), time.Local}
	times := []time.Time{
		time.Date(2024, 3, 5, 7, 8, 9, 123456789, time.UTC),
		time.Date(2024, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2025, 6, 1, 12, 0, 0, 100000, time.UTC), // less than a millisecond
		time.Date(2025, 6, 1, 12, 0, 0, 120000000, time.UTC),
		time.Now(),
	}
	durations := []time.Duration{0, 1, 999, time.Microsecond, 1500 * time.Microsecond, 59 * time.Second,
		time.Hour + 2*time.Minute + 3400*time.Millisecond, -5 * time.Millisecond, 1<<63 - 1, -1 << 63}
	type input struct {
		name  string
		line  accessLine
		attrs []string
	}
	var inputs []input
	base := accessLine{requestID: "0123456789abcdef-1", tenant: "acme", caller: "", method: "GET",
		path: "/orders/list", status: 200, duration: 1234567, upstream: 1000000, rateLimitWait: 0}
	for i, tm := range times {
		for _, z := range zones {
			l := base
			l.time = tm.In(z)
			l.duration = durations[i%len(durations)]
			inputs = append(inputs, input{name: "time " + l.time.String(), line: l, attrs: []string{"component", "proxy"}})
		}
	}
	for _, s := range awkwardStrings {
		l := base
		l.time = times[0]
		l.requestID, l.tenant, l.caller, l.method, l.path = s, s, s, s, s
		inputs = append(inputs, input{name: "string " + s, line: l, attrs: []string{"component", "proxy"}})
		inputs = append(inputs, input{name: "attribute " + s, line: l, attrs: []string{s, s}})
	}
	for i, d := range durations {
		l := base
		l.time = times[1]
		l.duration, l.upstream, l.rateLimitWait = d, durations[(i+1)%len(durations)], durations[(i+2)%len(durations)]
		l.replayed = i%2 == 0
		l.status = []int{200, 0, 599, 401, -1}[i%5]
		inputs = append(inputs, input{name: "durations " + d.String(), line: l})
	}
	// Times one after the other, within a second, across seconds and
	// zones: a writer formats the part to the second once per second.
	t0 := time.Date(2025, 6, 1, 23, 59, 58, 999000000, time.UTC)
	for i, step := range []time.Duration{0, time.Nanosecond, 999999, time.Millisecond, 10 * time.Millisecond,
		time.Second, 0, time.Hour, 0, -time.Hour, 1} {
		l := base
		t0 = t0.Add(step)
		l.time = t0.In(zones[i%len(zones)])
		inputs = append(inputs, input{name: "sequence " + l.time.String(), line: l, attrs: []string{"component", "proxy"}})
	}
	for _, format := range []LogFormat{LogText, LogJSON} {
		shared := NewAccessLogWriter(io.Discard, format, "component", "proxy")
		for _, in := range inputs {
			want := slogLine(t, format, &in.line, in.attrs...)
			w := NewAccessLogWriter(io.Discard, format, in.attrs...)
			if got := string(w.appendLine(nil, &in.line)); got != want {
				t.Errorf("format %d, %s:\n got %q\nwant %q", format, in.name, got, want)
			}
			if len(in.attrs) == 2 && in.attrs[0] == "component" && in.attrs[1] == "proxy" {
				if got := string(shared.appendLine(nil, &in.line)); got != want {
					t.Errorf("format %d, %s, after other lines:\n got %q\nwant %q", format, in.name, got, want)
				}
			}
		}
	}
}

func FuzzAccessLineIsSlogs(f *testing.F) {
	for _, s := range awkwardStrings {
		f.Add(s, int64(1234567), int64(1700000000123456789))
	}
	f.Fuzz(func(t *testing.T, s string, d, unixNano int64) {
		l := accessLine{time: time.Unix(0, unixNano).UTC(), requestID: s, tenant: s, caller: s, method: s, path: s,
			status: int(d), duration: time.Duration(d), upstream: time.Duration(-d), rateLimitWait: time.Duration(d / 3)}
		if y := l.time.Year(); y < 0 || y >= 10000 {
			t.Skip("slog's JSON refuses years outside 0 to 9999; the clock gives none")
		}
		for _, format := range []LogFormat{LogText, LogJSON} {
			w := NewAccessLogWriter(io.Discard, format, "component", s)
			got := string(w.appendLine(nil, &l))
			if want := slogLine(t, format, &l, "component", s); got != want {
				t.Errorf("format %d:\n got %q\nwant %q", format, got, want)
			}
			got = string(fuzzWriters[format].appendLine(nil, &l))
			if want := slogLine(t, format, &l, "component", "proxy"); got != want {
				t.Errorf("format %d, after other lines:\n got %q\nwant %q", format, got, want)
			}
		}
	})
}

// fuzzWriters write one fuzzed line after the other.
var fuzzWriters = map[LogFormat]*AccessLogWriter{
	LogText: NewAccessLogWriter(io.Discard, LogText, "component", "proxy"),
	LogJSON: NewAccessLogWriter(io.Discard, LogJSON, "component", "proxy"),
}

// lockedBuffer is an output that takes whole lines from concurrent
// writers, as the log's output does.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// okTransport answers every round trip 200, at once.
type okTransport struct{}

func (okTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
}

// staticTokens holds one token for every tenant.
type staticTokens struct{}

func (staticTokens) Authorization(context.Context, string) (string, error) {
	return "Bearer secret-token", nil
}

func (staticTokens) Refused(context.Context, string, string) (string, error) {
	return "", io.EOF
}

// TestAccessLogWriterLinesMatchLoggers checks that a Handler writes through
// an AccessLogWriter the line it writes through its Logger, its timings
// aside, and never the token.
func TestAccessLogWriterLinesMatchLoggers(t *testing.T) {
	u, _ := url.Parse("http://upstream.invalid/api/v2")
	serve := func(cfg Config) {
		t.Helper()
		cfg.Tokens, cfg.Upstream, cfg.Transport, cfg.AccessLog = staticTokens{}, u, okTransport{}, true
		h, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest(http.MethodPost, `/orders/a%20"b"/list?x=1`, strings.NewReader("{}"))
		req.Header.Set("X-Tenant-ID", "acme")
		req.Header.Set("X-Request-ID", "caller-id-1")
		h.ServeHTTP(httptest.NewRecorder(), req)
	}
	var viaWriter, viaLogger lockedBuffer
	serve(Config{AccessLogWriter: NewAccessLogWriter(&viaWriter, LogJSON, "component", "proxy"),
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	serve(Config{Logger: slog.New(slog.NewJSONHandler(&viaLogger, nil)).With("component", "proxy")})
	fields := func(line string) map[string]any {
		t.Helper()
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not one JSON line: %q: %v", line, err)
		}
		for _, timing := range []string{"time", "duration", "upstream_duration"} {
			if _, ok := m[timing]; !ok {
				t.Errorf("line %q lacks %s", line, timing)
			}
			delete(m, timing)
		}
		return m
	}
	got, want := fields(viaWriter.String()), fields(viaLogger.String())
	if len(got) != len(want) || len(got) != 11 {
		t.Fatalf("fields %v; want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("field %s = %v; want %v", k, got[k], v)
		}
	}
	if got["path"] != `/orders/a "b"/list` || got["request_id"] != "caller-id-1" || got["status"] != 200.0 {
		t.Errorf("line %v; want the request's path, id and status", got)
	}
	if strings.Contains(viaWriter.String(), "secret-token") {
		t.Errorf("the access line holds the token: %s", viaWriter.String())
	}
}

// BenchmarkAccessLine compares the cost of one access line through slog
// and through an AccessLogWriter, both to io.Discard.
func BenchmarkAccessLine(b *testing.B) {
	l := accessLine{requestID: "0123456789abcdef-1", tenant: "tenant-000000", method: "GET",
		path: "/orders/list", status: 200, duration: 1234567, upstream: 1000000}
	for _, format := range []LogFormat{LogText, LogJSON} {
		name := map[LogFormat]string{LogText: "text", LogJSON: "json"}[format]
		b.Run(name+"/slog", func(b *testing.B) {
			var h slog.Handler = slog.NewTextHandler(io.Discard, nil)
			if format == LogJSON {
				h = slog.NewJSONHandler(io.Discard, nil)
			}
			log := slog.New(h).With("component", "proxy")
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				attrs := l.attrs()
				log.LogAttrs(ctx, slog.LevelInfo, accessMessage, attrs[:]...)
			}
		})
		b.Run(name+"/writer", func(b *testing.B) {
			w := NewAccessLogWriter(io.Discard, format, "component", "proxy")
			b.ReportAllocs()
			for b.Loop() {
				l.time = time.Now()
				w.write(&l)
			}
		})
	}
}
