package testutil_test

import (
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/store"
)

func TestClock(t *testing.T) {
	start := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	c := testutil.NewClock(start)
	if got := c.Now(); !got.Equal(start) {
		t.Fatalf("Now() = %v; want %v", got, start)
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() { c.Advance(time.Second) })
	}
	wg.Wait()
	if got, want := c.Now(), start.Add(10*time.Second); !got.Equal(want) {
		t.Errorf("Now() after 10 × Advance(1s) = %v; want %v", got, want)
	}
	var zero testutil.Clock
	if got := zero.Now(); !got.IsZero() {
		t.Errorf("Now() of the zero Clock = %v; want the zero time", got)
	}
}

func TestRawHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write([]byte("got " + string(b)))
	}))
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	tests := []struct {
		name     string
		addr     string
		raw      string
		wantCode int
		wantBody string
	}{
		{
			name:     "interim answers are skipped",
			addr:     addr,
			raw:      "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
			wantCode: http.StatusOK,
			wantBody: "got hello",
		},
		{
			name:     "a base URL",
			addr:     srv.URL,
			raw:      "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
			wantCode: http.StatusOK,
			wantBody: "got ",
		},
		{
			name:     "a request the server refuses",
			addr:     addr,
			raw:      "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", // no Host
			wantCode: http.StatusBadRequest,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := testutil.RawHTTP(t, tt.addr, tt.raw, 5*time.Second)
			body, err := io.ReadAll(res.Body)
			if err != nil {
				t.Fatalf("reading the body: %v", err)
			}
			if res.StatusCode != tt.wantCode || tt.wantBody != "" && string(body) != tt.wantBody {
				t.Errorf("RawHTTP(%.40q) = %d %q; want %d %q", tt.raw, res.StatusCode, body, tt.wantCode, tt.wantBody)
			}
		})
	}
}

func TestMetricSamples(t *testing.T) {
	const exposition = `# HELP requests_total Requests.
# TYPE requests_total counter
requests_total{method="GET",code="200"} 3
requests_total{code="503",method="GET"} 1
# HELP in_flight Requests in flight.
# TYPE in_flight gauge
in_flight 2
# HELP duration_seconds Durations.
# TYPE duration_seconds histogram
duration_seconds_bucket{method="GET",le="0.1"} 1
duration_seconds_bucket{method="GET",le="+Inf"} 4
duration_seconds_sum{method="GET"} 1.5
duration_seconds_count{method="GET"} 4
`
	testutil.LintMetrics(t, exposition)
	got := testutil.MetricSamples(t, exposition)
	want := map[string]float64{
		`requests_total{code="200",method="GET"}`: 3,
		`requests_total{code="503",method="GET"}`: 1,
		`in_flight`: 2,
		`duration_seconds_bucket{le="0.1",method="GET"}`:  1,
		`duration_seconds_bucket{le="+Inf",method="GET"}`: 4,
		`duration_seconds_sum{method="GET"}`:              1.5,
		`duration_seconds_count{method="GET"}`:            4,
	}
	if !maps.Equal(got, want) {
		t.Errorf("MetricSamples = %v; want %v", got, want)
	}
}

func TestRedisStores(t *testing.T) {
	t.Setenv("REDIS_URL", "") // a miniredis
	open := testutil.RedisStores(t, "")
	a, b := open(), open()
	ctx := t.Context()
	if _, err := a.Put(ctx, "acme", store.TokenRecord{AccessToken: "at"}, 0); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if rec, err := b.Get(ctx, "acme"); err != nil || rec.AccessToken != "at" {
		t.Errorf("Get on another store of the same opener = %+v, %v; want the record Put wrote", rec, err)
	}
	if rec, err := testutil.RedisStores(t, "")().Get(ctx, "acme"); err == nil {
		t.Errorf("Get on another opener's store = %+v; want nothing, under its own key prefix", rec)
	}

	// The miniredis's clock follows real time: a lease runs out by itself.
	if ok, err := a.TryLock(ctx, "acme", "one", 100*time.Millisecond); !ok || err != nil {
		t.Fatalf("TryLock = %v, %v; want true", ok, err)
	}
	testutil.Eventually(t, "the lock's lease runs out", func() bool {
		ok, err := b.TryLock(ctx, "acme", "two", time.Minute)
		return err == nil && ok
	})
}

func TestKeyPrefix(t *testing.T) {
	a, b := testutil.KeyPrefix(), testutil.KeyPrefix()
	if a == b || !strings.HasPrefix(a, "thanksio-proxy-test-") || !strings.HasSuffix(a, ":") {
		t.Errorf("KeyPrefix() = %q, then %q; want two different thanksio-proxy-test-…: prefixes", a, b)
	}
}
