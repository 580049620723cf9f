// Package metrics builds every Prometheus collector of the proxy, on a
// registry the caller provides. Its Metrics satisfies the observer interfaces
// of auth and proxy. No label holds a tenant id, so the number of series is
// bounded whatever the number of tenants.
package metrics

import (
	"net/http"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "thanksio_proxy"

// Metrics holds the proxy's collectors. Its methods are safe for concurrent
// use.
type Metrics struct {
	requests         *prometheus.CounterVec
	requestDuration  *prometheus.HistogramVec
	upstreamDuration prometheus.Histogram
	upstreamAnswers  *prometheus.CounterVec
	replays          prometheus.Counter
	refreshes        *prometheus.CounterVec
	refreshDuration  *prometheus.HistogramVec
	lockWaits        *prometheus.CounterVec
	lockWaitDuration prometheus.Histogram
	lookups          *prometheus.CounterVec
	storeErrors      *prometheus.CounterVec
	tokenTimeLeft    prometheus.Histogram
	staticInjections prometheus.Counter
	pendingWrites    prometheus.Gauge
	storeDataLosses  prometheus.Counter
	invalidationsUp  prometheus.Gauge
	invalidationsAt  prometheus.Gauge
	cacheEvictions   prometheus.Counter
	callbacks        *prometheus.CounterVec
	proxyErrors      *prometheus.CounterVec
	inFlight         atomic.Int64 // read by a GaugeFunc at each scrape
	adminRefused     prometheus.Counter
	rateAdmitted     prometheus.Counter
	rateRejected     prometheus.Counter
	rateWait         prometheus.Histogram
	ratePauses       prometheus.Counter
	rateShared       prometheus.Gauge
	upstreamLimited  *prometheus.CounterVec
	eventDeliveries  *prometheus.CounterVec

	memoryHit prometheus.Counter

	// The children of the per-request series, looked up once instead of
	// hashing their label values on every request: by known method (see
	// methods) and status 100 to 599, made on first use.
	durationBy [len(methods)]prometheus.Observer
	requestsBy [len(methods)][500]atomic.Pointer[prometheus.Counter]
	answersBy  [500]atomic.Pointer[prometheus.Counter]
}

// methods are the method label's values; any other method counts as
// "other", so that the label stays bounded.
var methods = [...]string{
	http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete,
	http.MethodPatch, http.MethodHead, http.MethodOptions, "other",
}

func methodIndex(m string) int {
	for i, k := range methods[:len(methods)-1] {
		if m == k {
			return i
		}
	}
	return len(methods) - 1
}

// inc increments the counter in slot, taking it from vec with the labels
// that labels returns the first time: the labels are made only then (a
// status code's string is an allocation).
func inc(slot *atomic.Pointer[prometheus.Counter], vec *prometheus.CounterVec, labels func() []string) {
	if c := slot.Load(); c != nil {
		(*c).Inc()
		return
	}
	c := vec.WithLabelValues(labels()...)
	slot.Store(&c)
	c.Inc()
}

// New registers the proxy's collectors, with the Go and process collectors
// and build info, on reg.
func New(reg prometheus.Registerer, version string) *Metrics {
	m := &Metrics{
		requests: counterVec("requests_total",
			"Requests proxied, by method and the status code the caller got (the proxy's own errors included).",
			"method", "code"),
		requestDuration: histogramVec("request_duration_seconds",
			"Time from receiving a request to the end of its answer's headers and body, by method.",
			[]float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}, "method"),
		upstreamDuration: histogram("upstream_duration_seconds",
			"Time thanks.io took to answer with headers, per round trip.",
			.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
		upstreamAnswers: counterVec("upstream_responses_total",
			"Upstream round trips by status code (\"error\" when no answer came).",
			"code"),
		replays: counter("replays_total",
			"Requests replayed with a fresh token after thanks.io answered 401 to the injected one."),
		refreshes: counterVec("refreshes_total",
			"Calls to the token endpoint's refresh grant by result: success, lost_race, revoked, error.",
			"result"),
		refreshDuration: histogramVec("refresh_duration_seconds",
			"Time a refresh took at the token endpoint, by result.",
			[]float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}, "result"),
		lockWaits: counterVec("refresh_lock_waits_total",
			"Refresh lock acquisitions by result: acquired, or shared (another replica's refresh was used or awaited).",
			"result"),
		lockWaitDuration: histogram("refresh_lock_wait_duration_seconds",
			"Time spent waiting for the refresh lock.",
			.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 15),
		lookups: counterVec("token_lookups_total",
			"Token lookups by layer (memory, store) and result (hit, miss, stale, error).",
			"layer", "result"),
		storeErrors: counterVec("store_errors_total",
			"Failed store operations, by operation.",
			"operation"),
		tokenTimeLeft: histogram("token_time_left_seconds",
			"Time left before expiry on tokens injected into requests (tokens that never expire are not observed).",
			0, 30, 60, 300, 900, 3600, 6*3600, 86400, 7*86400, 30*86400, 365*86400),
		staticInjections: counter("static_token_injections_total",
			"Requests that carried a token that never expires (a personal access token)."),
		pendingWrites: gauge("refresh_pending_writes",
			"Rotated tokens held only in this replica's memory because the store has not accepted (or confirmed) their write yet; the tenant's lock is held meanwhile."),
		invalidationsUp: gauge("invalidations_subscribed",
			"1 while other replicas' writes and deletions reach this replica (its own heartbeats come back through the store), else 0: cached tokens are then re-read every CACHE_REVALIDATE."),
		invalidationsAt: gauge("invalidations_last_heard_timestamp_seconds",
			"When this replica last heard its own heartbeat on the invalidation channel (Unix seconds)."),
		proxyErrors: counterVec("errors_total",
			"Answers of the proxy's own (not thanks.io's), by error code (unknown_tenant, reauthorization_required, token_unavailable, ...; client_closed_request when the caller hung up).",
			"code"),
		adminRefused: counter("admin_auth_failures_total",
			"Admin API calls refused for a missing or wrong admin token."),
		cacheEvictions: counter("cache_evictions_total",
			"Tenants evicted from the full in-process cache (CACHE_SIZE); each costs a store read at its next call."),
		callbacks: counterVec("oauth_callbacks_total",
			"OAuth callbacks by outcome: connected, or the error code answered (invalid_state, access_denied, code_rejected, ...).",
			"outcome"),
		storeDataLosses: counter("store_data_losses_total",
			"Times this replica found that the store lost its data (its epoch changed) and wrote back the records it held."),
		rateAdmitted: counter("ratelimit_admitted_total",
			"Calls let through to thanks.io by the per-tenant rate limit (RATE_LIMIT), at once or after waiting their turn."),
		rateRejected: counter("ratelimit_rejected_total",
			"Calls answered 429 rate_limited because their turn would not come within RATE_LIMIT_MAX_WAIT."),
		rateWait: histogram("ratelimit_wait_seconds",
			"Time admitted calls waited for their turn under the rate limit (0 for most).",
			0, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30, 60),
		ratePauses: counter("ratelimit_pauses_total",
			"Pauses of a tenant's calls set by this replica because thanks.io answered 429, or said the account had no call left while the proxy had sent fewer than its limit."),
		rateShared: gauge("ratelimit_shared",
			"1 while the rate limit's schedule is shared through Redis; 0 while this replica paces its tenants alone (no Redis, or Redis failing)."),
		upstreamLimited: counterVec("upstream_rate_limited_total",
			"429 answers of thanks.io, by outcome: replayed (after the pause, within the caller's wait) or relayed (the caller got thanks.io's 429).",
			"outcome"),
	}
	m.eventDeliveries = counterVec("event_deliveries_total",
		"Attempts to deliver tenant state change events to EVENTS_WEBHOOK_URL, by result: delivered, failed (retried later), dropped (given up after 24 h).",
		"result")
	for _, r := range []string{"delivered", "failed", "dropped"} {
		m.eventDeliveries.WithLabelValues(r)
	}
	for _, o := range []string{"replayed", "relayed"} {
		m.upstreamLimited.WithLabelValues(o)
	}
	m.memoryHit = m.lookups.WithLabelValues("memory", "hit")
	for i, method := range methods {
		m.durationBy[i] = m.requestDuration.WithLabelValues(method)
	}
	for _, r := range []string{"success", "lost_race", "revoked", "error"} {
		m.refreshes.WithLabelValues(r)
	}

	goVersion, revision := "unknown", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				revision = s.Value
			}
		}
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help:        "Always 1; its labels name the build.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": goVersion},
	})
	buildInfo.Set(1)

	reg.MustRegister(
		m.requests, m.requestDuration, m.upstreamDuration, m.upstreamAnswers, m.replays,
		m.refreshes, m.refreshDuration, m.lockWaits, m.lockWaitDuration, m.lookups,
		m.storeErrors, m.tokenTimeLeft, m.staticInjections, m.pendingWrites,
		m.storeDataLosses, m.invalidationsUp, m.invalidationsAt, m.cacheEvictions, m.callbacks,
		m.proxyErrors, m.adminRefused, buildInfo,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: namespace, Name: "requests_in_flight",
			Help: "Requests being proxied now."}, func() float64 { return float64(m.inFlight.Load()) }),
		m.rateAdmitted, m.rateRejected, m.rateWait, m.ratePauses, m.rateShared, m.upstreamLimited,
		m.eventDeliveries,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// The constructors of the collectors, all in the proxy's namespace.

func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help})
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
}

func gauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help})
}

func histogram(name, help string, buckets ...float64) prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets})
}

func histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets}, labels)
}

// setBool sets g to 1 for true and 0 for false.
func setBool(g prometheus.Gauge, b bool) {
	v := 0.0
	if b {
		v = 1
	}
	g.Set(v)
}

// Served records a finished request.
func (m *Metrics) Served(method string, status int, d time.Duration) {
	i := methodIndex(method)
	if status >= 100 && status < 600 {
		inc(&m.requestsBy[i][status-100], m.requests, func() []string { return []string{methods[i], strconv.Itoa(status)} })
	} else {
		m.requests.WithLabelValues(methods[i], strconv.Itoa(status)).Inc()
	}
	m.durationBy[i].Observe(d.Seconds())
}

// statusClientClosedRequest, as the status of an upstream round trip, is
// the caller hanging up before thanks.io answered.
const statusClientClosedRequest = 499

// Upstream records one upstream round trip; status 0 means no answer
// (label "error": thanks.io failed), 499 that the caller hung up first
// (label "canceled").
func (m *Metrics) Upstream(status int, d time.Duration) {
	switch {
	case status >= 100 && status < 600 && status != statusClientClosedRequest:
		inc(&m.answersBy[status-100], m.upstreamAnswers, func() []string { return []string{strconv.Itoa(status)} })
	case status == 0:
		m.upstreamAnswers.WithLabelValues("error").Inc()
	case status == statusClientClosedRequest:
		m.upstreamAnswers.WithLabelValues("canceled").Inc()
	default:
		m.upstreamAnswers.WithLabelValues(strconv.Itoa(status)).Inc()
	}
	m.upstreamDuration.Observe(d.Seconds())
}

// Replayed counts a 401 replay.
func (m *Metrics) Replayed() { m.replays.Inc() }

// CacheLookup counts a token lookup.
func (m *Metrics) CacheLookup(layer, result string) {
	if layer == "memory" && result == "hit" {
		m.memoryHit.Inc()
		return
	}
	m.lookups.WithLabelValues(layer, result).Inc()
}

// Refreshed counts a refresh by result.
func (m *Metrics) Refreshed(result string, d time.Duration) {
	m.refreshes.WithLabelValues(result).Inc()
	m.refreshDuration.WithLabelValues(result).Observe(d.Seconds())
}

// LockWaited records a wait for the refresh lock.
func (m *Metrics) LockWaited(acquired bool, d time.Duration) {
	result := "shared"
	if acquired {
		result = "acquired"
	}
	m.lockWaits.WithLabelValues(result).Inc()
	m.lockWaitDuration.Observe(d.Seconds())
}

// StoreError counts a failed store operation.
func (m *Metrics) StoreError(op string) { m.storeErrors.WithLabelValues(op).Inc() }

// Injected records the time left on a token handed to a request.
func (m *Metrics) Injected(left time.Duration, expires bool) {
	if !expires {
		m.staticInjections.Inc()
		return
	}
	m.tokenTimeLeft.Observe(max(left, 0).Seconds())
}

// PendingWrite adds delta to the rotated tokens awaiting their write.
func (m *Metrics) PendingWrite(delta int) { m.pendingWrites.Add(float64(delta)) }

// Invalidations records whether invalidations reach this replica.
func (m *Metrics) Invalidations(subscribed bool, lastHeard time.Time) {
	setBool(m.invalidationsUp, subscribed)
	if !lastHeard.IsZero() {
		m.invalidationsAt.Set(float64(lastHeard.UnixNano()) / 1e9)
	}
}

// Failed counts an answer of the proxy's own by code.
func (m *Metrics) Failed(code string) { m.proxyErrors.WithLabelValues(code).Inc() }

// KnownErrorCodes makes the errors_total series of codes exist at zero, so
// that a rate over them works from the first error.
func (m *Metrics) KnownErrorCodes(codes ...string) {
	for _, c := range codes {
		m.proxyErrors.WithLabelValues(c)
	}
}

// InFlight adds delta to the requests in flight.
func (m *Metrics) InFlight(delta int) { m.inFlight.Add(int64(delta)) }

// AdminRefused counts an admin call refused for its token.
func (m *Metrics) AdminRefused() { m.adminRefused.Inc() }

// NewReplayMemory registers thanksio_proxy_replay_memory_bytes on reg, read
// from held at each scrape.
func NewReplayMemory(reg prometheus.Registerer, held func() int64) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "replay_memory_bytes",
		Help: "Bytes of request bodies held so that their requests can be replayed after a 401; bounded by MAX_REPLAY_MEMORY.",
	}, func() float64 { return float64(held()) }))
}

// CacheEvicted counts an eviction from the token cache.
func (m *Metrics) CacheEvicted() { m.cacheEvictions.Inc() }

// Callback counts an OAuth callback by outcome.
func (m *Metrics) Callback(outcome string) { m.callbacks.WithLabelValues(outcome).Inc() }

// NewCacheEntries registers thanksio_proxy_cache_entries on reg, read from
// entries at each scrape (a map length under a read lock: cheap).
func NewCacheEntries(reg prometheus.Registerer, entries func() int) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "cache_entries",
		Help: "Tenants in the in-process token cache; compare with CACHE_SIZE.",
	}, func() float64 { return float64(entries()) }))
}

// StoreDataLost counts a loss of the store's data.
func (m *Metrics) StoreDataLost() { m.storeDataLosses.Inc() }

// Admitted records a call let through by the rate limit after waiting d.
func (m *Metrics) Admitted(d time.Duration) {
	m.rateAdmitted.Inc()
	m.rateWait.Observe(d.Seconds())
}

// Rejected counts a call refused by the rate limit.
func (m *Metrics) Rejected() { m.rateRejected.Inc() }

// Paused counts a pause of a tenant's calls.
func (m *Metrics) Paused() { m.ratePauses.Inc() }

// Shared records whether the rate limit's schedule is shared.
func (m *Metrics) Shared(ok bool) {
	setBool(m.rateShared, ok)
}

// UpstreamLimited counts a 429 of thanks.io: replayed after its pause, or
// relayed to the caller.
func (m *Metrics) UpstreamLimited(relayed bool) {
	outcome := "replayed"
	if relayed {
		outcome = "relayed"
	}
	m.upstreamLimited.WithLabelValues(outcome).Inc()
}

// Delivered counts an attempt to deliver an event, by result.
func (m *Metrics) Delivered(result string) { m.eventDeliveries.WithLabelValues(result).Inc() }

// Handler serves the registry's metrics.
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{})
}
