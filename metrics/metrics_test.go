package metrics_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/metrics"
)

func TestExpositionPassesLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test")
	m.Served("GET", 200, 3*time.Millisecond)
	m.Served("BREW", 418, time.Millisecond)
	m.Upstream(200, 2*time.Millisecond)
	m.Upstream(0, time.Second)
	m.Replayed()
	m.CacheLookup("memory", "hit")
	m.CacheLookup("store", "miss")
	m.Refreshed("success", 40*time.Millisecond)
	m.Refreshed("error", time.Second)
	m.LockWaited(true, time.Millisecond)
	m.StoreError("get")
	m.Injected(time.Hour, true)
	m.Injected(0, false)

	rec := httptest.NewRecorder()
	metrics.Handler(reg).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	testutil.LintMetrics(t, body)
	for _, want := range []string{
		`thanksio_proxy_requests_total{code="418",method="other"} 1`,
		`thanksio_proxy_upstream_responses_total{code="error"} 1`,
		`thanksio_proxy_refreshes_total{result="revoked"} 0`,
		`thanksio_proxy_token_lookups_total{layer="memory",result="hit"} 1`,
		`thanksio_proxy_build_info{`,
		`go_goroutines `,
		`process_resident_memory_bytes `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("exposition lacks %s", want)
		}
	}
}

func TestTenantStatesNeverWaitOnTheStore(t *testing.T) {
	reg := prometheus.NewRegistry()
	release := make(chan struct{})
	defer close(release)
	var calls atomic.Int32
	metrics.NewTenantStates(reg, func(ctx context.Context) (map[string]int64, error) {
		if calls.Add(1) == 1 {
			return map[string]int64{"active": 3}, nil
		}
		select { // a hung store
		case <-release:
		case <-ctx.Done():
		}
		return nil, ctx.Err()
	})
	gather := func() map[string]float64 {
		start := time.Now()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > 100*time.Millisecond {
			t.Errorf("a scrape took %v; want it to read memory only", took)
		}
		out := map[string]float64{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				out[mf.GetName()] = m.GetGauge().GetValue()
			}
		}
		return out
	}
	if got := gather(); len(got) != 0 {
		t.Errorf("first scrape = %v; want nothing before the first read", got)
	}
	var got map[string]float64
	testutil.Eventually(t, "the counts arrive", func() bool {
		got = gather()
		return got["thanksio_proxy_tenants"] == 3
	})
	if got["thanksio_proxy_tenants_updated_timestamp_seconds"] <= 0 {
		t.Errorf("no update time: %v", got)
	}
}

// TestPerRequestObservationsDoNotAllocate checks the observations made on
// every proxied request, once their series exist: no allocation (a status
// code's string was one, twice a request).
func TestPerRequestObservationsDoNotAllocate(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "test")
	observe := func() {
		m.InFlight(1)
		m.Upstream(201, 2*time.Millisecond)
		m.InFlight(-1)
		m.Served("POST", 201, 3*time.Millisecond)
	}
	observe()
	if n := testing.AllocsPerRun(100, observe); n != 0 {
		t.Errorf("a request's observations allocate %v times; want 0", n)
	}
	m.InFlight(2)
	rec := httptest.NewRecorder()
	metrics.Handler(reg).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	samples := testutil.MetricSamples(t, rec.Body.String())
	for sample, want := range map[string]float64{
		"thanksio_proxy_requests_in_flight":                            2,
		`thanksio_proxy_requests_total{code="201",method="POST"}`:      102,
		`thanksio_proxy_upstream_responses_total{code="201"}`:          102,
		`thanksio_proxy_request_duration_seconds_count{method="POST"}`: 102,
		`thanksio_proxy_upstream_duration_seconds_count`:               102,
	} {
		if got, ok := samples[sample]; !ok || got != want {
			t.Errorf("%s = %v (present: %v); want %v", sample, got, ok, want)
		}
	}
}
