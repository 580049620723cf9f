package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/oauth2"

	"thanksio-proxy/admin"
	"thanksio-proxy/auth"
	"thanksio-proxy/events"
	"thanksio-proxy/metrics"
	"thanksio-proxy/proxy"
	"thanksio-proxy/ratelimit"
	"thanksio-proxy/store"
)

// Main is one proxy, wired from its configuration: the store, the token
// lifecycle, the data plane and the operations routes. NewMain builds it,
// Run serves it on the listeners it is given, and Close releases what
// NewMain acquired.
type Main struct {
	cfg *Config
	log *slog.Logger
	// logOut is where log lines go: log's, and the access lines.
	logOut io.Writer
	// callers checks caller keys; nil when caller authentication is off.
	callers *proxy.Callers
	tokens  *auth.Tokens
	// events sends tenant state changes to EVENTS_WEBHOOK_URL; nil
	// without one.
	events *events.Dispatcher
	// static serves THANKSIO_TOKEN's tenant; nil without one.
	static     *auth.StaticTenant
	storeCheck *storeCheck
	// data is the data plane's handler, ops the operations routes.
	data, ops http.Handler
	// shuttingDown makes /readyz answer 503 from the start of the drain.
	shuttingDown atomic.Bool
	// closers release what NewMain acquired, in reverse order.
	closers []func()
}

// NewMain builds the proxy that cfg describes, writing its log to stdout:
// it opens the store, starts the token lifecycle (bounded by ctx and 5 s)
// and pings the store once for /readyz. On an error it releases what it
// had acquired.
func NewMain(ctx context.Context, cfg *Config, stdout io.Writer) (_ *Main, err error) {
	m := &Main{cfg: cfg}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	logOut, closeLog := newLogOutput(stdout)
	m.onClose(closeLog)
	m.log, m.logOut = newLogger(cfg, logOut), logOut
	if cfg.callerKeys != nil {
		m.callers = proxy.NewCallers(cfg.callerKeys)
		m.onClose(reloadCallerKeys(cfg.CallerKeysFile, m.callers, m.log))
	} else if !loopback(cfg.ListenAddr) {
		m.log.Warn("caller authentication is off and LISTEN_ADDR is not loopback: anyone who reaches the proxy can act for any tenant; set CALLER_KEYS_FILE", "listen", cfg.ListenAddr)
	}

	store.SetClientLogger(m.log.With("component", "store"))
	reg := prometheus.NewRegistry()
	met := metrics.New(reg, version)
	st, closeStore, err := openStore(ctx, &cfg.StoreConfig, met, m.log)
	if err != nil {
		return nil, err
	}
	m.onClose(closeStore)
	if c, ok := st.(stateCounter); ok {
		metrics.NewTenantStates(reg, tenantsByState(c, met, m.log))
	}

	tokens := m.tokensConfig(st, met)
	if cfg.EventsWebhookURL != "" {
		if m.events, err = newEvents(cfg, st, met, m.log); err != nil {
			return nil, err
		}
		// Registered before the token lifecycle's Close, so it runs
		// after it: the last state changes are sent, or left in the
		// outbox for another replica.
		m.onClose(m.events.Close)
		tokens.Notifier = m.events
	}
	m.tokens = auth.New(tokens)
	m.onClose(m.tokens.Close)
	metrics.NewCacheEntries(reg, m.tokens.CachedTenants)
	startCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = m.tokens.Start(startCtx)
	cancel()
	if err != nil {
		return nil, err
	}

	if cfg.staticToken != "" {
		m.static = auth.NewStaticTenant(cfg.DefaultTenant, cfg.staticToken, m.tokens, m.log.With("component", "auth"))
		if cfg.ThanksioTokenFile != "" {
			m.onClose(watchTokenFile(cfg.ThanksioTokenFile, m.static, m.log))
		}
	}

	var limiter *ratelimit.Limiter
	if cfg.rateLimit > 0 {
		if limiter, err = newLimiter(cfg, st, met, m.log); err != nil {
			return nil, err
		}
	}
	handler, err := proxy.New(m.proxyConfig(met, limiter))
	if err != nil {
		return nil, err
	}
	met.KnownErrorCodes(proxy.DataPlaneCodes...)
	metrics.NewReplayMemory(reg, handler.ReplayMemory)
	callback := admin.NewCallback(m.tokens, m.log.With("component", "auth"))
	callback.OnOutcome = met.Callback
	m.data = dataPlane(handler, callback, cfg.RequestBodyTimeout)

	m.storeCheck = newStoreCheck(ctx, st, m.log.With("component", "readiness"))
	var adminAPI http.Handler
	if cfg.AdminToken != "" {
		a, err := admin.NewAdmin(m.tokens, cfg.AdminToken, m.log.With("component", "admin"))
		if err != nil {
			return nil, err
		}
		a.OnRefused = met.AdminRefused
		a.Checker = handler
		if m.static != nil {
			a.StaticTenant = cfg.DefaultTenant
		}
		adminAPI = a
	}
	m.ops = opsRoutes(reg, readiness(m.storeCheck, m.tokens, &m.shuttingDown, cfg.ReadyRequiresStore), adminAPI)
	return m, nil
}

// onClose adds f to what Close calls.
func (m *Main) onClose(f func()) { m.closers = append(m.closers, f) }

// Run serves the data plane on data and the operations routes on ops, and
// pings the store in the background for /readyz, until ctx ends. Then it
// drains in-flight requests for up to SHUTDOWN_TIMEOUT and stops the token
// lifecycle. The servers close the listeners.
func (m *Main) Run(ctx context.Context, data, ops net.Listener) error {
	go m.storeCheck.run(ctx)
	if m.events != nil {
		go m.events.Run(ctx)
	}
	servers := []*http.Server{
		newServer(m.cfg, m.data, m.log),
		newServer(m.cfg, m.ops, m.log),
	}
	errc := make(chan error, 2)
	for i, ln := range []net.Listener{data, ops} {
		go func() {
			if err := servers[i].Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	storeKind := "memory"
	if m.cfg.RedisURL != "" {
		storeKind = "redis"
	}
	m.log.Info("thanksio-proxy started",
		"listen", data.Addr().String(), "ops", ops.Addr().String(),
		"upstream", m.cfg.upstream.Redacted(), "store", storeKind,
		"oauth_client", m.cfg.OAuthClientID != "", "admin_api", m.cfg.AdminToken != "",
		"caller_auth", m.callers != nil, "default_tenant", m.cfg.DefaultTenant,
		"single_account", m.static != nil, "version", version)

	select {
	case <-ctx.Done():
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	}
	m.shutdown(servers[0], servers[1])
	return nil
}

// shutdown drains the data plane's server, then the operations server,
// within SHUTDOWN_TIMEOUT, and stops the token lifecycle.
func (m *Main) shutdown(data, ops *http.Server) {
	m.log.Info("shutting down", "drain_timeout", m.cfg.ShutdownTimeout.String())
	m.shuttingDown.Store(true)
	// A fresh context: the one that ended must not cut the drain short.
	drainCtx, cancel := context.WithTimeout(context.Background(), m.cfg.ShutdownTimeout)
	defer cancel()
	// The data plane first, so that ops (readiness, metrics) answer during
	// the drain.
	if err := data.Shutdown(drainCtx); err != nil {
		m.log.Warn("requests still in flight at the drain deadline were cut", "err", err)
	}
	_ = ops.Shutdown(drainCtx)
	m.tokens.Close()
	m.log.Info("stopped")
}

// Close releases what NewMain acquired: the token lifecycle, the store, the
// caller keys' reloading and the log's buffer, in that order. It does not
// wait for Run's servers; Run drains them when its context ends.
func (m *Main) Close() {
	for i := len(m.closers) - 1; i >= 0; i-- {
		m.closers[i]()
	}
	m.closers = nil
}

// dataPlane routes /oauth/callback to the connect flow and everything else to
// the proxy. It is not a ServeMux on purpose: a ServeMux would answer unclean
// paths with its own redirects, where the proxy answers invalid_path.
//
// Every route gets proxy.GuardConnection: a chunked request closes its
// connection, and a body must arrive within bodyTimeout. The proxy guards
// its own requests (it must set the guard's headers again after an interim
// answer); the callback, the one path an Ingress exposes to the internet,
// is guarded here.
func dataPlane(data, callback http.Handler, bodyTimeout time.Duration) http.Handler {
	return guarded{http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/oauth/callback" && r.URL.RawPath == "" {
			proxy.GuardConnection(w, r, bodyTimeout)
			callback.ServeHTTP(w, r)
			return
		}
		data.ServeHTTP(w, r)
	})}
}

// guarded is a handler that applies proxy.GuardConnection to its requests
// itself, as dataPlane's does.
type guarded struct{ http.Handler }

// newServer serves h. Every listener bounds request bodies by
// REQUEST_BODY_TIMEOUT: a handler that is not guarded already (the
// operations listener's: /metrics, /healthz, the admin API) gets
// proxy.GuardBodies, so that a body that never comes does not hold its
// connection, answered or not, for as long as its sender likes.
func newServer(cfg *Config, h http.Handler, log *slog.Logger) *http.Server {
	if _, ok := h.(guarded); !ok {
		h = proxy.GuardBodies(h, cfg.RequestBodyTimeout)
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// newLogger returns the log written to w, in LOG_FORMAT, at LOG_LEVEL.
func newLogger(cfg *Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.logLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// newAccessLog returns the writer of the data plane's access lines to w:
// the lines that newLogger's log, given attrs by With, would write. It
// returns nil when ACCESS_LOG is off or LOG_LEVEL hides INFO.
func newAccessLog(cfg *Config, w io.Writer, attrs ...string) *proxy.AccessLogWriter {
	if !cfg.AccessLog || cfg.logLevel > slog.LevelInfo {
		return nil
	}
	format := proxy.LogText
	if cfg.LogFormat == "json" {
		format = proxy.LogJSON
	}
	return proxy.NewAccessLogWriter(w, format, attrs...)
}

// stateCounter is a store that counts tenants by state without a scan.
type stateCounter interface {
	CountByState(ctx context.Context) (map[store.State]int64, error)
}

// tenantsByState reads the tenants by state from c for the tenants gauge.
func tenantsByState(c stateCounter, m *metrics.Metrics, log *slog.Logger) func(context.Context) (map[string]int64, error) {
	return func(ctx context.Context) (map[string]int64, error) {
		counts, err := c.CountByState(ctx)
		if err != nil {
			// At most once per 10 s (a read is started by a scrape that
			// finds the counts old): the gauge keeps its last value, and
			// its timestamp stops.
			m.StoreError("count")
			log.Warn("could not read the tenants by state for /metrics", "err", err)
		}
		out := make(map[string]int64, len(counts))
		for state, n := range counts {
			out[string(state)] = n
		}
		return out, err
	}
}

// openStore returns the configured store and a function that closes it.
func openStore(ctx context.Context, cfg *StoreConfig, m *metrics.Metrics, log *slog.Logger) (auth.Store, func(), error) {
	if cfg.RedisURL == "" {
		return store.NewMemory(), func() {}, nil
	}
	client, err := store.OpenRedisURL(cfg.RedisURL)
	if err != nil {
		return nil, nil, &configError{"REDIS_URL", err.Error()}
	}
	sealer, err := store.NewSealer(cfg.keys)
	if err != nil {
		client.Close()
		return nil, nil, &configError{"TOKEN_ENCRYPTION_KEY", err.Error()}
	}
	st := store.NewRedis(client, cfg.RedisKeyPrefix, sealer)
	st.MinReplicasAck = cfg.minReplicasAck
	// A record is stored, but what follows it failed: an index (hints for
	// the background refresher and the tenants metric) or the invalidation
	// that tells other replicas to drop their copy.
	st.OnIndexError = func(op string, err error) {
		m.StoreError(op)
		log.Warn("a token record was written, but a step after it failed", "step", op, "err", err)
	}
	if cfg.RedisRequirePubSub {
		checkCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := st.CheckAccess(checkCtx)
		cancel()
		switch {
		case err == nil:
		case strings.Contains(err.Error(), "NOPERM"):
			client.Close()
			return nil, nil, &configError{"REDIS_URL", "the Redis user lacks a permission the proxy needs: " + err.Error() +
				" (grant it, e.g. ACL SETUSER <user> &" + cfg.RedisKeyPrefix + "* +@pubsub +@scripting, or set REDIS_REQUIRE_PUBSUB=false to start without invalidations)"}
		default:
			// Unreachable now: start anyway, cached tokens serve when Redis
			// returns.
			log.Warn("could not check the Redis user's permissions at start", "err", err)
		}
	}
	return st, func() { client.Close() }, nil
}

// newEvents returns the sender of tenant state changes to
// EVENTS_WEBHOOK_URL, over the store's outbox when the store is Redis (in
// memory otherwise).
func newEvents(cfg *Config, st auth.Store, met *metrics.Metrics, log *slog.Logger) (*events.Dispatcher, error) {
	var outbox events.Outbox
	if r, ok := st.(*store.Redis); ok {
		outbox = r.Outbox()
	}
	return events.New(events.Config{URL: cfg.EventsWebhookURL, Secret: cfg.EventsWebhookSecret,
		Outbox: outbox, Observer: met, Logger: log.With("component", "events")})
}

// newLimiter returns the limiter of RATE_LIMIT, its schedule shared
// through the store when the store is Redis (in this process otherwise).
func newLimiter(cfg *Config, st auth.Store, met *metrics.Metrics, log *slog.Logger) (*ratelimit.Limiter, error) {
	var shared ratelimit.Schedule
	if r, ok := st.(*store.Redis); ok {
		shared = r.Schedule()
	}
	return ratelimit.New(ratelimit.Config{Limit: cfg.rateLimit, Period: cfg.ratePeriod, MaxWait: cfg.RateLimitMaxWait,
		Shared: shared, Observer: met, Logger: log.With("component", "ratelimit")})
}

// tokensConfig returns the configuration of the token lifecycle over st.
func (m *Main) tokensConfig(st auth.Store, met *metrics.Metrics) auth.Config {
	return auth.Config{
		Store:              st,
		OAuth:              oauthConfig(m.cfg),
		ReturnURLs:         m.cfg.returnURLs,
		RefreshAhead:       m.cfg.RefreshAhead,
		RefreshTimeout:     m.cfg.RefreshTimeout,
		CacheSize:          m.cfg.CacheSize,
		CacheRevalidate:    m.cfg.CacheRevalidate,
		BackgroundInterval: m.cfg.BackgroundRefreshInterval,
		Observer:           met,
		Logger:             m.log.With("component", "auth"),
	}
}

// proxyConfig returns the configuration of the data plane's proxy, over
// m's tokens and caller keys.
func (m *Main) proxyConfig(met *metrics.Metrics, limiter *ratelimit.Limiter) proxy.Config {
	var tokens proxy.Tokens = m.tokens
	if m.static != nil {
		tokens = m.static
	}
	accessLog := newAccessLog(m.cfg, m.logOut, "component", "proxy")
	cfg := proxy.Config{
		Tokens:               tokens,
		DefaultTenant:        m.cfg.DefaultTenant,
		Upstream:             m.cfg.upstream,
		TenantHeader:         m.cfg.TenantHeader,
		Transport:            upstreamTransport(m.cfg),
		MaxReplayBody:        m.cfg.MaxReplayBody,
		MaxReplayMemory:      m.cfg.MaxReplayMemory,
		BodyTimeout:          m.cfg.RequestBodyTimeout,
		Observer:             met,
		Logger:               m.log.With("component", "proxy"),
		AccessLog:            accessLog != nil,
		AccessLogWriter:      accessLog,
		Callers:              m.callers,
		CallerKeyHeader:      m.cfg.CallerKeyHeader,
		MaxCallerConcurrency: m.cfg.MaxCallerConcurrency,
		PublicURL:            m.cfg.PublicURL,
	}
	if limiter != nil {
		// Not a nil *Limiter in the interface: nil means no limit.
		cfg.Limiter = limiter
	}
	return cfg
}

// oauthConfig returns the OAuth client, or nil when none is configured.
func oauthConfig(cfg *Config) *oauth2.Config {
	if cfg.OAuthClientID == "" {
		return nil
	}
	return &oauth2.Config{
		ClientID:     cfg.OAuthClientID,
		ClientSecret: cfg.OAuthClientSecret,
		RedirectURL:  cfg.OAuthRedirectURL,
		Scopes:       strings.Fields(cfg.OAuthScopes),
		Endpoint: oauth2.Endpoint{
			AuthURL:  cfg.OAuthAuthorizeURL,
			TokenURL: cfg.OAuthTokenURL,
			// thanks.io takes the client secret in the form body.
			AuthStyle: oauth2.AuthStyleInParams,
		},
	}
}

// upstreamTransport is tuned for many concurrent requests to one host.
func upstreamTransport(cfg *Config) *http.Transport {
	dialer := &net.Dialer{Timeout: cfg.UpstreamDialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          cfg.UpstreamMaxIdleConns,
		MaxIdleConnsPerHost:   cfg.UpstreamMaxIdleConns,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: cfg.UpstreamTimeout,
		ExpectContinueTimeout: time.Second,
	}
}

// loopback reports whether addr listens on loopback only.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
