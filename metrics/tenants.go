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

// TenantStates is the thanksio_proxy_tenants gauge. A scrape reads memory
// only and never waits on the store: when the counts it finds are older than
// 10 s, it starts one read of them in the background, for the next scrape.
// thanksio_proxy_tenants_updated_timestamp_seconds tells how old they are, so
// that counts the store stopped giving are seen to be stale.
type TenantStates struct {
	desc, updated *prometheus.Desc
	count         TenantCounter
	maxAge        time.Duration

	mu       sync.Mutex
	at       time.Time
	counts   map[string]int64
	updating bool
}

// NewTenantStates registers thanksio_proxy_tenants{state} and its update
// time on reg, computed by count. Every replica reports the same shared
// numbers: aggregate with max(), not sum().
func NewTenantStates(reg prometheus.Registerer, count TenantCounter) *TenantStates {
	c := &TenantStates{
		desc: prometheus.NewDesc(namespace+"_tenants",
			"Tenants held, by state (active, reauthorization_required), as the shared store counts them.",
			[]string{"state"}, nil),
		updated: prometheus.NewDesc(namespace+"_tenants_updated_timestamp_seconds",
			"When thanksio_proxy_tenants was last read from the store (Unix seconds); absent until it was.",
			nil, nil),
		count:  count,
		maxAge: 10 * time.Second,
	}
	reg.MustRegister(c)
	return c
}

// update reads the counts once, bounded by maxAge; on a failure the last
// counts stay, and their age grows.
func (c *TenantStates) update() {
	ctx, cancel := context.WithTimeout(context.Background(), c.maxAge)
	defer cancel()
	counts, err := c.count(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.updating = false
	if err == nil {
		c.counts, c.at = counts, time.Now()
	}
}

// Describe sends the descriptions of both series.
func (c *TenantStates) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	ch <- c.updated
}

// Collect sends the last counts read, from memory, and starts a read of
// newer ones when they are old.
func (c *TenantStates) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.updating && time.Since(c.at) > c.maxAge {
		c.updating = true
		go c.update()
	}
	if c.counts == nil {
		return
	}
	for state, n := range c.counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(c.updated, prometheus.GaugeValue, float64(c.at.UnixNano())/1e9)
}
