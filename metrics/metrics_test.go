package metrics_test

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"thanksio-proxy/metrics"
)

// Lint lints a metrics exposition and reports every problem as a test error.
func Lint(t *testing.T, exposition string) {
	t.Helper()
	problems, err := promlint.New(strings.NewReader(exposition)).Lint()
	if err != nil {
		t.Fatalf("lint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

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
	Lint(t, body)
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
