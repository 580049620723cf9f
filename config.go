package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"

	"thanksio-proxy/auth"
	"thanksio-proxy/proxy"
	"thanksio-proxy/ratelimit"
	"thanksio-proxy/store"
)

// Config is the proxy's whole configuration, read from the environment. Every
// field is documented in README.md under the same variable name.
type Config struct {
	// ListenAddr serves the data plane and GET /oauth/callback.
	ListenAddr string `env:"LISTEN_ADDR" envDefault:":8080"`
	// OpsAddr serves /metrics, /healthz, /readyz and /admin/.
	OpsAddr string `env:"OPS_ADDR" envDefault:":9090"`
	// UpstreamURL is the thanks.io API base; request paths go under it.
	UpstreamURL string `env:"UPSTREAM_URL" envDefault:"https://api.thanks.io/api/v2"`

	// OAuthAuthorizeURL is thanks.io's authorize endpoint (connect flow).
	OAuthAuthorizeURL string `env:"OAUTH_AUTHORIZE_URL" envDefault:"https://dashboard.thanks.io/oauth/authorize"`
	// OAuthTokenURL is thanks.io's token endpoint.
	OAuthTokenURL string `env:"OAUTH_TOKEN_URL" envDefault:"https://dashboard.thanks.io/oauth/token"`
	// OAuthClientID and OAuthClientSecret are the OAuth client; without them
	// tokens are never refreshed.
	OAuthClientID     string `env:"OAUTH_CLIENT_ID"`
	OAuthClientSecret string `env:"OAUTH_CLIENT_SECRET"`
	// OAuthRedirectURL is the public URL of this proxy's /oauth/callback.
	OAuthRedirectURL string `env:"OAUTH_REDIRECT_URL"`
	// OAuthScopes are space-separated scopes asked for at connect.
	OAuthScopes string `env:"OAUTH_SCOPES"`
	// OAuthReturnURLs are comma-separated URLs that return_to must fall under.
	OAuthReturnURLs string `env:"OAUTH_RETURN_URLS"`

	// TenantHeader names the header that names the tenant.
	TenantHeader string `env:"TENANT_HEADER"`
	// DefaultTenant is the tenant of a request without the tenant header;
	// empty means none, unless a static token is set ("default" then).
	DefaultTenant string `env:"DEFAULT_TENANT"`
	// ThanksioToken is one account's personal access token, served as
	// DefaultTenant from memory, never stored (single-account mode).
	ThanksioToken string `env:"THANKSIO_TOKEN"`
	// ThanksioTokenFile names a file that holds that token (a mounted
	// Secret), read at start and again when it changes.
	ThanksioTokenFile string `env:"THANKSIO_TOKEN_FILE"`

	// StoreConfig selects and opens the token store.
	StoreConfig

	// RefreshAhead starts a refresh when less than this is left of a token.
	RefreshAhead time.Duration `env:"REFRESH_AHEAD"`
	// RefreshTimeout bounds one call to the token endpoint.
	RefreshTimeout time.Duration `env:"REFRESH_TIMEOUT" envDefault:"10s"`
	// BackgroundRefreshInterval is how often tenants due for a refresh are
	// refreshed without waiting for a request; 0 switches that off.
	BackgroundRefreshInterval time.Duration `env:"BACKGROUND_REFRESH_INTERVAL" envDefault:"30s"`
	// CacheRevalidate bounds how long a cached token is served without
	// reading the store while invalidations do not reach this replica.
	CacheRevalidate time.Duration `env:"CACHE_REVALIDATE" envDefault:"30s"`
	// CacheSize bounds the tenants whose tokens are kept in process.
	CacheSize int `env:"CACHE_SIZE"`

	// CallerKeysFile names the file of caller keys and the tenants each may
	// use; empty switches caller authentication off. Reread on SIGHUP.
	CallerKeysFile string `env:"CALLER_KEYS_FILE"`
	// CallerKeyHeader names the header a caller presents its key in.
	CallerKeyHeader string `env:"CALLER_KEY_HEADER"`

	// AdminToken is the bearer token of /admin/; empty disables the admin API.
	AdminToken string `env:"ADMIN_TOKEN"`

	// EventsWebhookURL receives a signed POST on every tenant state change;
	// empty sends none.
	EventsWebhookURL string `env:"EVENTS_WEBHOOK_URL"`
	// EventsWebhookSecret signs those POSTs (HMAC-SHA256); required with
	// EventsWebhookURL.
	EventsWebhookSecret string `env:"EVENTS_WEBHOOK_SECRET"`

	// MaxReplayBody is the largest request body kept so that a request can be
	// replayed after a 401.
	MaxReplayBody int64 `env:"MAX_REPLAY_BODY"`
	// MaxReplayMemory bounds the bytes of request bodies kept for replays
	// across all requests at once; beyond it, bodies stream unreplayed.
	MaxReplayMemory int64 `env:"MAX_REPLAY_MEMORY" envDefault:"67108864"`
	// RequestBodyTimeout bounds the time a request body takes to arrive.
	RequestBodyTimeout time.Duration `env:"REQUEST_BODY_TIMEOUT" envDefault:"30s"`
	// MaxCallerConcurrency bounds the requests one caller key has in flight
	// when caller authentication is on; 0 means no bound.
	MaxCallerConcurrency int `env:"MAX_CALLER_CONCURRENCY" envDefault:"256"`
	// RateLimit is the calls per period per tenant that reach the upstream,
	// across the replicas sharing the store ("60/1m"), or "off".
	RateLimit string `env:"RATE_LIMIT"`
	// RateLimitMaxWait is how long a call may wait for its turn under
	// RateLimit before it is answered 429 rate_limited.
	RateLimitMaxWait time.Duration `env:"RATE_LIMIT_MAX_WAIT"`
	// PublicURL is the base URL callers use; when set, the upstream's
	// absolute URLs in JSON answers are rewritten to it.
	PublicURL string `env:"PUBLIC_URL"`
	// UpstreamTimeout bounds the wait for the upstream's response headers.
	UpstreamTimeout time.Duration `env:"UPSTREAM_TIMEOUT" envDefault:"60s"`
	// UpstreamDialTimeout bounds connecting to the upstream.
	UpstreamDialTimeout time.Duration `env:"UPSTREAM_DIAL_TIMEOUT" envDefault:"5s"`
	// UpstreamMaxIdleConns is the keep-alive pool size to the upstream.
	UpstreamMaxIdleConns int `env:"UPSTREAM_MAX_IDLE_CONNS" envDefault:"256"`
	// ReadHeaderTimeout bounds how long a client may take to send headers.
	ReadHeaderTimeout time.Duration `env:"READ_HEADER_TIMEOUT" envDefault:"10s"`
	// IdleTimeout closes idle client keep-alive connections.
	IdleTimeout time.Duration `env:"IDLE_TIMEOUT" envDefault:"120s"`
	// ShutdownTimeout bounds the drain of in-flight requests on SIGTERM.
	ShutdownTimeout time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"25s"`
	// ReadyRequiresStore makes /readyz fail while the store is unreachable.
	ReadyRequiresStore bool `env:"READY_REQUIRES_STORE" envDefault:"false"`

	// LogFormat is text or json.
	LogFormat string `env:"LOG_FORMAT" envDefault:"text"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `env:"LOG_LEVEL" envDefault:"info"`
	// AccessLog writes one line per proxied request.
	AccessLog bool `env:"ACCESS_LOG" envDefault:"true"`

	// Derived by load.
	upstream   *url.URL
	returnURLs []*url.URL
	logLevel   slog.Level
	callerKeys *proxy.CallerKeys
	rateLimit  int // 0: off
	ratePeriod time.Duration
	// staticToken is THANKSIO_TOKEN, or the content of THANKSIO_TOKEN_FILE
	// at start; empty without single-account mode.
	staticToken string
}

// singleAccountTenant is DEFAULT_TENANT's default when a static token is
// set.
const singleAccountTenant = "default"

// StoreConfig is the part of Config that selects and opens the token store:
// all that the reseal command reads.
type StoreConfig struct {
	// RedisURL selects the Redis store; empty means the in-memory store.
	RedisURL string `env:"REDIS_URL"`
	// RedisKeyPrefix starts every Redis key.
	RedisKeyPrefix string `env:"REDIS_KEY_PREFIX"`
	// RedisMinReplicasAck is how many replicas must confirm (WAIT) the write
	// of a token record before it counts as done; empty means 1 when the
	// primary has a replica connected at the time of the write, else 0.
	RedisMinReplicasAck string `env:"REDIS_MIN_REPLICAS_ACK"`
	// RedisRequirePubSub refuses to start when the Redis user may not
	// PUBLISH or SUBSCRIBE on the invalidation channel, or run scripts.
	RedisRequirePubSub bool `env:"REDIS_REQUIRE_PUBSUB" envDefault:"true"`
	// TokenEncryptionKey is base64 of 32 bytes, or a comma-separated list of
	// them (the first seals, all open). Required with Redis.
	TokenEncryptionKey string `env:"TOKEN_ENCRYPTION_KEY"`

	// Derived by load.
	minReplicasAck int
	keys           [][]byte
}

// configError names the variable at fault in one line.
type configError struct {
	variable string
	problem  string
}

func (e *configError) Error() string { return "config: " + e.variable + ": " + e.problem }

// loadConfig reads and checks the configuration.
func loadConfig(getenv func(string) string) (*Config, error) {
	// The defaults that a package states for its own zero values are set
	// here from the package, not repeated in envDefault tags: a variable
	// set in the environment replaces them.
	cfg := Config{
		TenantHeader:     proxy.DefaultTenantHeader,
		CallerKeyHeader:  proxy.DefaultCallerKeyHeader,
		MaxReplayBody:    proxy.DefaultMaxReplayBody,
		RefreshAhead:     auth.DefaultRefreshAhead,
		CacheSize:        auth.DefaultCacheSize,
		StoreConfig:      storeDefaults(),
		RateLimit:        ratelimit.FormatRule(ratelimit.DefaultLimit, ratelimit.DefaultPeriod),
		RateLimitMaxWait: ratelimit.DefaultMaxWait,
	}
	if err := readEnv(getenv, &cfg); err != nil {
		return nil, err
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// loadStoreConfig reads and checks the store's variables alone, so that a
// command that needs only the store does not fail, or read files, over the
// rest of the configuration.
func loadStoreConfig(getenv func(string) string) (*StoreConfig, error) {
	cfg := storeDefaults()
	if err := readEnv(getenv, &cfg); err != nil {
		return nil, err
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// loadOpsAddr reads OPS_ADDR alone, with Config's default: all that the
// healthcheck command needs, at every probe.
func loadOpsAddr(getenv func(string) string) (string, error) {
	var cfg Config
	err := readEnv(func(k string) string {
		if k == "OPS_ADDR" {
			return getenv(k)
		}
		return ""
	}, &cfg)
	return cfg.OpsAddr, err
}

// storeDefaults returns the store's settings before the environment is
// read: the defaults that package store states.
func storeDefaults() StoreConfig {
	return StoreConfig{RedisKeyPrefix: store.DefaultPrefix}
}

// readEnv sets the fields of the struct that cfg points to from the
// variables their env tags name, as getenv returns them; a variable that is
// empty or unset leaves its field's default.
func readEnv(getenv func(string) string, cfg any) error {
	params, err := env.GetFieldParams(cfg)
	if err != nil {
		return err
	}
	environ := make(map[string]string, len(params))
	for _, p := range params {
		if v := getenv(p.Key); v != "" {
			environ[p.Key] = v
		}
	}
	if err := env.ParseWithOptions(cfg, env.Options{Environment: environ}); err != nil {
		return describeEnvError(reflect.TypeOf(cfg).Elem(), err)
	}
	return nil
}

// describeEnvError turns caarlos0/env's error about a field of the struct
// type typ into one naming the variable.
func describeEnvError(typ reflect.Type, err error) error {
	var pe env.ParseError
	if errors.As(err, &pe) {
		if f, ok := typ.FieldByName(pe.Name); ok {
			return &configError{variable: f.Tag.Get("env"), problem: "not a valid " + pe.Type.String()}
		}
	}
	return fmt.Errorf("config: %w", err)
}

func (c *Config) check() error {
	bad := func(v, p string) error { return &configError{v, p} }
	var err error
	if c.upstream, err = absoluteURL(c.UpstreamURL); err != nil {
		return bad("UPSTREAM_URL", err.Error())
	}
	for _, v := range []struct{ name, value string }{
		{"OAUTH_AUTHORIZE_URL", c.OAuthAuthorizeURL}, {"OAUTH_TOKEN_URL", c.OAuthTokenURL},
	} {
		if _, err := absoluteURL(v.value); err != nil {
			return bad(v.name, err.Error())
		}
	}
	if c.OAuthRedirectURL != "" {
		if _, err := absoluteURL(c.OAuthRedirectURL); err != nil {
			return bad("OAUTH_REDIRECT_URL", err.Error())
		}
	}
	if (c.OAuthClientID == "") != (c.OAuthClientSecret == "") {
		return bad("OAUTH_CLIENT_SECRET", "OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET must be set together")
	}
	if c.OAuthRedirectURL != "" && c.OAuthClientID == "" {
		return bad("OAUTH_CLIENT_ID", "required when OAUTH_REDIRECT_URL is set")
	}
	if c.returnURLs, err = auth.ParseReturnURLs(c.OAuthReturnURLs); err != nil {
		return bad("OAUTH_RETURN_URLS", err.Error())
	}
	if err := c.checkSingleAccount(); err != nil {
		return err
	}
	if !validHeaderName(c.TenantHeader) {
		return bad("TENANT_HEADER", "not a valid header name, or one the proxy must not take over")
	}
	if !validHeaderName(c.CallerKeyHeader) || strings.EqualFold(c.CallerKeyHeader, c.TenantHeader) {
		return bad("CALLER_KEY_HEADER", "not a valid header name, or the same as TENANT_HEADER")
	}
	if c.CallerKeysFile != "" {
		if c.callerKeys, err = proxy.LoadCallerKeys(c.CallerKeysFile); err != nil {
			return bad("CALLER_KEYS_FILE", err.Error())
		}
	}
	if err := c.StoreConfig.check(); err != nil {
		return err
	}
	if c.EventsWebhookURL != "" {
		if _, err := absoluteURL(c.EventsWebhookURL); err != nil {
			// The URL itself is not repeated: it may hold a credential.
			return bad("EVENTS_WEBHOOK_URL", "must be an absolute http or https URL")
		}
		if len(c.EventsWebhookSecret) < 16 {
			return bad("EVENTS_WEBHOOK_SECRET", "must be at least 16 characters when EVENTS_WEBHOOK_URL is set (openssl rand -hex 32)")
		}
	} else if c.EventsWebhookSecret != "" {
		return bad("EVENTS_WEBHOOK_URL", "required when EVENTS_WEBHOOK_SECRET is set")
	}
	if c.AdminToken != "" && len(c.AdminToken) < 16 {
		return bad("ADMIN_TOKEN", "must be at least 16 characters (openssl rand -hex 32)")
	}
	for _, d := range []struct {
		name  string
		value time.Duration
		zero  bool
	}{
		{"REFRESH_AHEAD", c.RefreshAhead, false}, {"REFRESH_TIMEOUT", c.RefreshTimeout, false},
		{"BACKGROUND_REFRESH_INTERVAL", c.BackgroundRefreshInterval, true},
		{"UPSTREAM_TIMEOUT", c.UpstreamTimeout, false}, {"UPSTREAM_DIAL_TIMEOUT", c.UpstreamDialTimeout, false},
		{"READ_HEADER_TIMEOUT", c.ReadHeaderTimeout, false}, {"IDLE_TIMEOUT", c.IdleTimeout, false},
		{"SHUTDOWN_TIMEOUT", c.ShutdownTimeout, false}, {"CACHE_REVALIDATE", c.CacheRevalidate, false},
		{"REQUEST_BODY_TIMEOUT", c.RequestBodyTimeout, false},
		{"RATE_LIMIT_MAX_WAIT", c.RateLimitMaxWait, false},
	} {
		if d.value < 0 || d.value == 0 && !d.zero {
			return bad(d.name, "must be a positive duration such as 30s or 5m")
		}
	}
	if c.rateLimit, c.ratePeriod, err = ratelimit.ParseRule(c.RateLimit); err != nil {
		return bad("RATE_LIMIT", err.Error())
	}
	if c.PublicURL != "" {
		u, err := absoluteURL(c.PublicURL)
		if err == nil && (u.RawQuery != "" || u.Fragment != "" || u.User != nil) {
			err = errors.New("must be a base URL without credentials, query or fragment")
		}
		if err != nil {
			return bad("PUBLIC_URL", err.Error())
		}
	}
	if c.CacheSize < 1 {
		return bad("CACHE_SIZE", "must be at least 1")
	}
	if c.MaxReplayBody < 1 || c.MaxReplayBody > 64<<20 {
		// 0 is refused rather than given a meaning: a proxy that never
		// keeps a body could not replay a request after a 401, which is
		// how replicas get past a token another one just rotated.
		return bad("MAX_REPLAY_BODY", "must be between 1 and 67108864 bytes")
	}
	if c.MaxReplayMemory < c.MaxReplayBody {
		return bad("MAX_REPLAY_MEMORY", fmt.Sprintf("must be a number of bytes, at least MAX_REPLAY_BODY (%d)", c.MaxReplayBody))
	}
	if c.MaxCallerConcurrency < 0 {
		return bad("MAX_CALLER_CONCURRENCY", "must be a number of requests, 0 (no bound) or more")
	}
	if c.UpstreamMaxIdleConns < 1 {
		return bad("UPSTREAM_MAX_IDLE_CONNS", "must be at least 1")
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return bad("LOG_FORMAT", "must be text or json")
	}
	if err := c.logLevel.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return bad("LOG_LEVEL", "must be debug, info, warn or error")
	}
	// Port 0 asks the kernel for a free port, a different one per listener.
	if c.ListenAddr == c.OpsAddr && !strings.HasSuffix(c.OpsAddr, ":0") {
		return bad("OPS_ADDR", "must differ from LISTEN_ADDR")
	}
	return nil
}

// checkSingleAccount reads the static token and settles the default
// tenant. No message names the token.
func (c *Config) checkSingleAccount() error {
	bad := func(v, p string) error { return &configError{v, p} }
	switch {
	case c.ThanksioToken != "" && c.ThanksioTokenFile != "":
		return bad("THANKSIO_TOKEN_FILE", "set THANKSIO_TOKEN or THANKSIO_TOKEN_FILE, not both")
	case c.ThanksioTokenFile != "":
		token, err := readTokenFile(c.ThanksioTokenFile)
		if err != nil {
			return bad("THANKSIO_TOKEN_FILE", err.Error())
		}
		c.staticToken = token
	case c.ThanksioToken != "":
		token := strings.TrimSpace(c.ThanksioToken)
		if !validToken(token) {
			return bad("THANKSIO_TOKEN", "must be one token: printable characters without spaces")
		}
		c.staticToken = token
	}
	if c.staticToken != "" && c.DefaultTenant == "" {
		c.DefaultTenant = singleAccountTenant
	}
	if c.DefaultTenant != "" && !proxy.ValidTenant(c.DefaultTenant) {
		return bad("DEFAULT_TENANT", "not a valid tenant id ([A-Za-z0-9._-]{1,128}, not . or ..)")
	}
	return nil
}

func (c *StoreConfig) check() error {
	bad := func(v, p string) error { return &configError{v, p} }
	var err error
	if c.RedisURL != "" && c.TokenEncryptionKey == "" {
		return bad("TOKEN_ENCRYPTION_KEY", "required when REDIS_URL is set (base64 of 32 random bytes: openssl rand -base64 32)")
	}
	if c.TokenEncryptionKey != "" {
		if c.keys, err = store.ParseKeys(c.TokenEncryptionKey); err != nil {
			return bad("TOKEN_ENCRYPTION_KEY", err.Error())
		}
	}
	if c.RedisURL != "" && !strings.Contains(c.RedisURL, "://") {
		return bad("REDIS_URL", "must be a redis://, rediss://, redis+cluster:// or redis+sentinel:// URL")
	}
	c.minReplicasAck = store.AutoReplicas
	if c.RedisMinReplicasAck != "" {
		n, err := strconv.Atoi(c.RedisMinReplicasAck)
		if err != nil || n < 0 {
			return bad("REDIS_MIN_REPLICAS_ACK", "must be a whole number of replicas, 0 or more (empty: 1 when the primary has replicas)")
		}
		c.minReplicasAck = n
	}
	if c.RedisKeyPrefix == "" || strings.ContainsAny(c.RedisKeyPrefix, "{}*?[] \t\r\n") {
		return bad("REDIS_KEY_PREFIX", "must be non-empty, without braces, glob characters or spaces")
	}
	return nil
}

func absoluteURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("must be an absolute http or https URL")
	}
	if u.User != nil {
		return nil, errors.New("must not hold a user name or password")
	}
	return u, nil
}

// validHeaderName reports whether name is a header token the proxy may own.
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		b := name[i]
		if !('a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0) {
			return false
		}
	}
	switch http.CanonicalHeaderKey(name) {
	case "Authorization", "Proxy-Authorization", "Host", "Connection", "Content-Length",
		"Transfer-Encoding", "Cookie", "Upgrade", "Te", "Trailer", "Keep-Alive", "X-Request-Id":
		return false
	}
	return true
}
