package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TenantCounter counts tenants by state, cheaply (the store keeps a set per
// state; nothing is scanned).
type TenantCounter func(ctx context.Context) (map[string]int64, error)

// tenantStates is the thanksio_proxy_tenants gauge, read from the store at
// most once per maxAge so that frequent scrapes cost the store nothing more.
type tenantStates struct {
	desc   *prometheus.Desc
	count  TenantCounter
	maxAge time.Duration

	mu     sync.Mutex
	at     time.Time
	counts map[string]int64
}

// NewTenantStates registers thanksio_proxy_tenants{state} on reg, computed by
// count. Every replica reports the same shared numbers: aggregate with max(),
// not sum().
func NewTenantStates(reg prometheus.Registerer, count TenantCounter) {
	reg.MustRegister(&tenantStates{
		desc: prometheus.NewDesc(namespace+"_tenants",
			"Tenants held, by state (active, reauthorization_required), as the shared store counts them.",
			[]string{"state"}, nil),
		count:  count,
		maxAge: 10 * time.Second,
	})
}

func (c *tenantStates) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *tenantStates) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counts == nil || time.Since(c.at) > c.maxAge {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		counts, err := c.count(ctx)
		cancel()
		if err == nil {
			c.counts, c.at = counts, time.Now()
		}
	}
	for state, n := range c.counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), state)
	}
}
