// Command thanksio-proxy is a credential-injecting reverse proxy for the
// thanks.io API: callers name a tenant in a header, the proxy attaches that
// tenant's OAuth access token and forwards the request. See README.md.
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/oauth2"

	"thanksio-proxy/admin"
	"thanksio-proxy/auth"
	"thanksio-proxy/metrics"
	"thanksio-proxy/proxy"
	"thanksio-proxy/store"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// run starts the proxy and serves until ctx ends, then drains in-flight
// requests. With the argument "healthcheck" it instead checks a running
// proxy's /healthz (for container health checks) and returns.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	if len(args) > 0 {
		switch args[0] {
		case "healthcheck":
			return healthcheck(ctx, cfg.OpsAddr)
		case "caller-key":
			return newCallerKey(args[1:], stdout)
		case "reseal":
			return reseal(ctx, cfg, stdout)
		default:
			return fmt.Errorf("unknown command %q (the commands are healthcheck, caller-key and reseal)", args[0])
		}
	}
	logOut, closeLog := newLogOutput(stdout)
	defer closeLog()
	log := newLogger(cfg, logOut)
	var callers *proxy.Callers
	if cfg.callerKeys != nil {
		callers = proxy.NewCallers(cfg.callerKeys)
		stopReload := reloadCallerKeys(cfg.CallerKeysFile, callers, log)
		defer stopReload()
	} else if !loopback(cfg.ListenAddr) {
		log.Warn("caller authentication is off and LISTEN_ADDR is not loopback: anyone who reaches the proxy can act for any tenant; set CALLER_KEYS_FILE", "listen", cfg.ListenAddr)
	}

	store.SetClientLogger(log.With("component", "store"))
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, version)
	st, closeStore, err := openStore(ctx, cfg, m, log)
	if err != nil {
		return err
	}
	defer closeStore()

	if c, ok := st.(stateCounter); ok {
		metrics.NewTenantStates(reg, func(ctx context.Context) (map[string]int64, error) {
			counts, err := c.CountByState(ctx)
			if err != nil {
				// At most once per 10 s (a read is started by a scrape
				// that finds the counts old): the gauge keeps its last
				// value, and its timestamp stops.
				m.StoreError("count")
				log.Warn("could not read the tenants by state for /metrics", "err", err)
			}
			out := make(map[string]int64, len(counts))
			for state, n := range counts {
				out[string(state)] = n
			}
			return out, err
		})
	}

	tokens := auth.New(auth.Config{
		Store:              st,
		OAuth:              oauthConfig(cfg),
		ReturnURLs:         cfg.returnURLs,
		RefreshAhead:       cfg.RefreshAhead,
		RefreshTimeout:     cfg.RefreshTimeout,
		CacheSize:          cfg.CacheSize,
		CacheRevalidate:    cfg.CacheRevalidate,
		BackgroundInterval: cfg.BackgroundRefreshInterval,
		Observer:           m,
		Logger:             log.With("component", "auth"),
	})
	defer tokens.Close()
	metrics.NewCacheEntries(reg, tokens.CachedTenants)
	startCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = tokens.Start(startCtx)
	cancel()
	if err != nil {
		return err
	}

	handler, err := proxy.New(proxy.Config{
		Tokens:               tokens,
		Upstream:             cfg.upstream,
		TenantHeader:         cfg.TenantHeader,
		Transport:            upstreamTransport(cfg),
		MaxReplayBody:        cfg.MaxReplayBody,
		MaxReplayMemory:      cfg.MaxReplayMemory,
		BodyTimeout:          cfg.RequestBodyTimeout,
		Observer:             m,
		Logger:               log.With("component", "proxy"),
		AccessLog:            cfg.AccessLog,
		Callers:              callers,
		CallerKeyHeader:      cfg.CallerKeyHeader,
		MaxCallerConcurrency: cfg.MaxCallerConcurrency,
	})
	if err != nil {
		return err
	}
	m.KnownErrorCodes(proxy.DataPlaneCodes...)
	metrics.NewReplayMemory(reg, handler.ReplayMemory)
	callback := admin.NewCallback(tokens, log.With("component", "auth"))
	callback.OnOutcome = m.Callback
	data := dataPlane(handler, callback, cfg.RequestBodyTimeout)

	var shuttingDown atomic.Bool
	ops := http.NewServeMux()
	ops.Handle("GET /metrics", metrics.Handler(reg))
	ops.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ok"}`+"\n")
	})
	storeCheck := newStoreCheck(ctx, st, log.With("component", "readiness"))
	go storeCheck.run(ctx)
	ops.Handle("GET /readyz", readiness(storeCheck, tokens, &shuttingDown, cfg.ReadyRequiresStore))
	if cfg.AdminToken != "" {
		adminAPI, err := admin.NewAdmin(tokens, cfg.AdminToken, log.With("component", "admin"))
		if err != nil {
			return err
		}
		adminAPI.OnRefused = m.AdminRefused
		ops.Handle("/admin/", adminAPI)
	}

	dataLn, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("listen on LISTEN_ADDR %s: %w", cfg.ListenAddr, err)
	}
	opsLn, err := net.Listen("tcp", cfg.OpsAddr)
	if err != nil {
		dataLn.Close()
		return fmt.Errorf("listen on OPS_ADDR %s: %w", cfg.OpsAddr, err)
	}
	servers := []*http.Server{
		newServer(cfg, data, log),
		newServer(cfg, ops, log),
	}
	errc := make(chan error, 2)
	for i, ln := range []net.Listener{dataLn, opsLn} {
		go func() {
			if err := servers[i].Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	storeKind := "memory"
	if cfg.RedisURL != "" {
		storeKind = "redis"
	}
	log.Info("thanksio-proxy started",
		"listen", dataLn.Addr().String(), "ops", opsLn.Addr().String(),
		"upstream", cfg.upstream.Redacted(), "store", storeKind,
		"oauth_client", cfg.OAuthClientID != "", "admin_api", cfg.AdminToken != "",
		"caller_auth", callers != nil, "version", version)

	select {
	case <-ctx.Done():
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	}

	log.Info("shutting down", "drain_timeout", cfg.ShutdownTimeout.String())
	shuttingDown.Store(true)
	// A fresh context: the one that ended must not cut the drain short.
	drainCtx, cancelDrain := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancelDrain()
	// The data plane first, so that ops (readiness, metrics) answer during
	// the drain.
	if err := servers[0].Shutdown(drainCtx); err != nil {
		log.Warn("requests still in flight at the drain deadline were cut", "err", err)
	}
	_ = servers[1].Shutdown(drainCtx)
	tokens.Close()
	log.Info("stopped")
	return nil
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

func newLogger(cfg *Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.logLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// openStore returns the configured store and a function that closes it.
func openStore(ctx context.Context, cfg *Config, m *metrics.Metrics, log *slog.Logger) (auth.Store, func(), error) {
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

// healthcheck asks the proxy on opsAddr whether it is alive.
func healthcheck(ctx context.Context, opsAddr string) error {
	host, port, err := net.SplitHostPort(opsAddr)
	if err != nil {
		return &configError{"OPS_ADDR", "not a host:port"}
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/healthz", nil)
	if err != nil {
		return err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: /healthz answered %d", res.StatusCode)
	}
	return nil
}

// reloadCallerKeys rereads the caller keys file on SIGHUP and whenever its
// content changes (checked every callerKeysCheck): a Kubernetes Secret update
// swaps the mounted file through a symlink, and a distroless container has
// no shell to send a signal from. A file that does not load leaves the
// previous keys in force.
func reloadCallerKeys(path string, callers *proxy.Callers, log *slog.Logger) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	last := fileDigest(path)
	reload := func(why string) {
		keys, err := proxy.LoadCallerKeys(path)
		if err != nil {
			log.Error("caller keys not reloaded; the previous keys stay in force", "file", path, "trigger", why, "err", err)
			return
		}
		callers.Set(keys)
		log.Info("caller keys reloaded", "file", path, "trigger", why, "callers", keys.Len())
	}
	go func() {
		tick := time.NewTicker(callerKeysCheck)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-hup:
				last = fileDigest(path)
				reload("SIGHUP")
			case <-tick.C:
				if d := fileDigest(path); d != last {
					last = d
					reload("file changed")
				}
			}
		}
	}()
	return func() { signal.Stop(hup); close(done) }
}

// callerKeysCheck is how often the caller keys file is checked for changes.
const callerKeysCheck = 5 * time.Second

// fileDigest returns the SHA-256 of the file at path (following symlinks),
// or zero when it cannot be read.
func fileDigest(path string) [32]byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return [32]byte{}
	}
	return sha256.Sum256(b)
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

// newCallerKey makes a random caller key and prints it with the line that
// allows it in the caller keys file.
func newCallerKey(args []string, stdout io.Writer) error {
	if len(args) < 2 || !proxy.ValidTenant(args[0]) {
		return errors.New("usage: thanksio-proxy caller-key NAME TENANT-PATTERN... (NAME of [A-Za-z0-9._-])")
	}
	if _, err := proxy.ParseCallerKeys(strings.NewReader(args[0] + " " + proxy.HashCallerKey("x") + " " + strings.Join(args[1:], " ") + "\n")); err != nil {
		return fmt.Errorf("caller-key: %w", err)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	key := base64.RawURLEncoding.EncodeToString(b[:])
	fmt.Fprintf(stdout, "# Give this key to the caller (shown once, not stored):\n# %s\n# Add this line to CALLER_KEYS_FILE:\n%s %s %s\n",
		key, args[0], proxy.HashCallerKey(key), strings.Join(args[1:], " "))
	return nil
}

// stateCounter is a store that counts tenants by state without a scan.
type stateCounter interface {
	CountByState(ctx context.Context) (map[store.State]int64, error)
}

// reseal rewrites every Redis record that is not sealed under the first
// TOKEN_ENCRYPTION_KEY, so that an old key can be retired.
func reseal(ctx context.Context, cfg *Config, stdout io.Writer) error {
	if cfg.RedisURL == "" {
		return &configError{"REDIS_URL", "reseal works on the Redis store; REDIS_URL is empty"}
	}
	st, closeStore, err := openStore(ctx, cfg, metrics.New(prometheus.NewRegistry(), version), slog.New(slog.NewTextHandler(stdout, nil)))
	if err != nil {
		return err
	}
	defer closeStore()
	r := st.(*store.Redis)
	failed := 0
	n, err := r.Reseal(ctx, func(tenant string) {
		failed++
		fmt.Fprintf(stdout, "tenant %s: the record does not open with any configured key; left as it is\n", tenant)
	})
	fmt.Fprintf(stdout, "resealed %d records under the first key; %d could not be opened\n", n, failed)
	if err != nil {
		return fmt.Errorf("reseal: %w", err)
	}
	if failed > 0 {
		return fmt.Errorf("reseal: %d records could not be opened", failed)
	}
	return nil
}
