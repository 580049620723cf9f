// Package auth owns the token lifecycle: which access token a tenant's
// request carries, when it is refreshed, how exactly one replica refreshes it,
// what state the tenant is in, and the OAuth connect flow that gets the first
// token.
package auth

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"

	"thanksio-proxy/store"
)

// Observer is told what the token lifecycle does, for metrics. Methods must be
// cheap and safe for concurrent use. A nil Observer in Config observes nothing.
type Observer interface {
	// CacheLookup counts a lookup in a layer ("memory" or "store") with its
	// result ("hit", "miss", "stale" or "error").
	CacheLookup(layer, result string)
	// Refreshed counts a refresh attempt by result ("success", "lost_race",
	// "revoked" or "error") with its duration.
	Refreshed(result string, d time.Duration)
	// LockWaited records the time spent waiting for the refresh lock, and
	// whether it was taken (false: another replica's refresh was used, or the
	// wait gave up).
	LockWaited(acquired bool, d time.Duration)
	// StoreError counts a failed store operation ("get", "put", "lock", ...).
	StoreError(op string)
	// Injected records how long the token handed to a caller has left; zero
	// for a token that never expires.
	Injected(left time.Duration, expires bool)
	// PendingWrite adds delta (1 or -1) to the rotated tokens held in
	// memory because the store has not accepted their write yet.
	PendingWrite(delta int)
	// StoreDataLost counts a loss of the store's data noticed by this
	// replica (its epoch changed).
	StoreDataLost()
	// CacheEvicted counts a tenant evicted from the full cache.
	CacheEvicted()
	// Invalidations reports, every heartbeat, whether invalidations reach
	// this replica, and when it last heard its own heartbeat (zero: never).
	Invalidations(subscribed bool, lastHeard time.Time)
}

// The defaults of Config's fields that the command's configuration starts
// from too, stated once.
const (
	DefaultRefreshAhead = 5 * time.Minute
	DefaultCacheSize    = 100_000
)

// Config configures Tokens. Zero values take the documented defaults.
type Config struct {
	// Store holds the records, locks and OAuth states. Required.
	Store Store
	// OAuth is the thanks.io OAuth client. Nil means tokens are never
	// refreshed and tenants cannot be connected.
	OAuth *oauth2.Config
	// ReturnURLs are the URLs a connect flow's return_to must fall under;
	// empty allows no return_to (the callback then answers a page).
	ReturnURLs []*url.URL
	// HTTPClient calls the token endpoint; it never follows a redirect
	// (whatever its CheckRedirect), since a form body re-sent to another
	// host would carry the client secret and a refresh token or code. Nil
	// means a client with
	// RefreshTimeout as its timeout.
	HTTPClient *http.Client
	// RefreshAhead is how long before expiry a refresh starts; zero or less
	// means DefaultRefreshAhead.
	RefreshAhead time.Duration
	// RefreshTimeout bounds one call to the token endpoint (default 10s).
	RefreshTimeout time.Duration
	// LockLease is the refresh lock's lifetime (default 45s). The lock is
	// renewed every third of it, or every 5s if that is sooner, for as long
	// as the refresh and the write of its result last. A store that refuses
	// writes refuses renewals too, so the lease is what bounds the write
	// outage a holder survives; it is also how long other replicas wait
	// before taking over from a holder that died.
	LockLease time.Duration
	// LockWait bounds how long a replica waits for another replica's refresh
	// before it gives up (default 15s).
	LockWait time.Duration
	// CacheSize bounds the tenants cached in process; zero or less means
	// DefaultCacheSize.
	CacheSize int
	// CacheRevalidate is how long a cached token is served without reading
	// the store again while invalidations do not reach this replica
	// (default 30s). While they do, a cached token is served until it
	// expires or an invalidation drops it.
	CacheRevalidate time.Duration
	// BackgroundInterval is how often idle tenants due for a refresh are
	// looked for; zero or negative switches the background refresher off.
	BackgroundInterval time.Duration
	// BackgroundConcurrency bounds background refreshes running at once
	// (default 4).
	BackgroundConcurrency int
	// Now is the clock of token time: expiries, the refresh-ahead window,
	// the refresh backoff, the records' timestamps. Nil means time.Now.
	// Waits on real timers (for another replica's lock, for a pending
	// write after Close) and the durations told to the Observer use the
	// wall clock.
	Now func() time.Time
	// Observer is told about lookups and refreshes; nil observes nothing.
	Observer Observer
	// Notifier is told of tenants' state changes (connected,
	// reauthorization required, refresh failing, recovered, deleted) by
	// the replica that stored each; nil tells nobody.
	Notifier Notifier
	// Logger logs refreshes and failures, never a token; nil discards.
	Logger *slog.Logger
}

// Tokens hands out tenants' access tokens and keeps them fresh. It is safe for
// concurrent use by multiple goroutines.
type Tokens struct {
	cfg   Config
	store Store
	now   func() time.Time
	obs   Observer
	log   *slog.Logger
	cache *cache

	flightsMu sync.Mutex
	flights   map[string]*flight

	pendingMu sync.Mutex
	pending   map[string]*pendingWrite

	// epoch is the store's epoch as this replica last saw it; resync
	// asks the store watcher to check it and re-validate the cache.
	epoch  string
	resync chan struct{}

	// id names this replica's heartbeats; heardAt (unix nanoseconds) is
	// when it last heard one of them, and subscribed whether that was
	// recent enough for invalidations to count as reaching it.
	id         string
	heardAt    atomic.Int64
	subscribed atomic.Bool
	subErr     atomic.Pointer[error]

	// dueFailing is set while the background refresher cannot read the
	// tenants due, so that it logs the change, not every attempt.
	dueFailing atomic.Bool

	// ctx outlives every caller: refreshes run under it, never under a
	// request's context. stop ends it.
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// New returns Tokens for cfg. Call Start to follow other replicas' writes,
// and Close to stop.
func New(cfg Config) *Tokens {
	if cfg.RefreshAhead <= 0 {
		cfg.RefreshAhead = DefaultRefreshAhead
	}
	if cfg.RefreshTimeout <= 0 {
		cfg.RefreshTimeout = 10 * time.Second
	}
	if cfg.LockLease <= 0 {
		cfg.LockLease = 45 * time.Second
	}
	if cfg.LockWait <= 0 {
		cfg.LockWait = 15 * time.Second
	}
	if cfg.CacheRevalidate <= 0 {
		cfg.CacheRevalidate = 30 * time.Second
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	if cfg.BackgroundConcurrency <= 0 {
		cfg.BackgroundConcurrency = 4
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: cfg.RefreshTimeout}
	}
	cfg.HTTPClient = noRedirects(cfg.HTTPClient)
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	obs := cfg.Observer
	if obs == nil {
		obs = nopObserver{}
	}
	t := &Tokens{
		cfg:     cfg,
		store:   cfg.Store,
		now:     now,
		obs:     obs,
		log:     cfg.Logger,
		cache:   newCache(cfg.CacheSize, now, obs.CacheEvicted),
		flights: make(map[string]*flight),
		pending: make(map[string]*pendingWrite),
		resync:  make(chan struct{}, 1),
		id:      randomID(),
	}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	t.ctx, t.stop = context.WithCancel(context.Background())
	return t
}

// Start follows other replicas' writes, watches the store for a loss of its
// data, and starts the background refresher when configured. When the store
// cannot be reached within ctx, Start returns nil and keeps trying in the
// background: a replica that starts during a store outage becomes useful
// when the store returns.
func (t *Tokens) Start(ctx context.Context) error {
	first := make(chan error, 1)
	t.wg.Go(func() {
		for attempt := 0; ; attempt++ {
			err := t.store.Subscribe(t.ctx, t.invalidated, t.askResync)
			if attempt == 0 {
				first <- err
			}
			if err != nil {
				t.subErr.Store(&err)
			}
			if err == nil {
				if attempt > 0 {
					// Writes may have been missed until now.
					t.askResync()
				}
				return
			}
			if !sleep(t.ctx.Done(), subscribeRetry) {
				return
			}
		}
	})
	epochCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if ep, err := t.store.Epoch(epochCtx); err == nil {
		t.epoch = ep
	}
	cancel()
	// Counted as heard at start, so that a replica is not reported cut off
	// before its first heartbeat had the time to come back.
	t.heardAt.Store(t.now().UnixNano())
	t.subscribed.Store(true)
	t.wg.Go(t.watchStore)
	t.wg.Go(t.watchInvalidations)
	if t.cfg.BackgroundInterval > 0 {
		t.wg.Go(t.runBackground)
	}
	select {
	case err := <-first:
		if err != nil {
			t.log.Warn("token store unreachable at start; retrying", "err", err)
		}
	case <-ctx.Done():
	}
	return nil
}

// subscribeRetry is the pause between attempts to subscribe to
// invalidations while the store cannot be reached.
const subscribeRetry = 2 * time.Second

// noRedirects returns a copy of c that answers a redirect with the
// redirect itself: the token endpoint's 3xx is then a failed call (never a
// revocation), and no form is sent anywhere else.
func noRedirects(c *http.Client) *http.Client {
	cp := *c
	cp.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &cp
}

// invalidated applies an invalidation published by any replica.
func (t *Tokens) invalidated(inv store.Invalidation) {
	switch {
	case inv.Heartbeat != "":
		if inv.Heartbeat == t.id {
			t.heardAt.Store(t.now().UnixNano())
		}
	case inv.Deleted:
		// A rotation of this tenant still waiting for its write must not
		// bring it back, unless it rotated a grant imported after this
		// deletion (a late message).
		t.clearPendingUpTo(inv.Tenant, inv.Version)
		t.cache.deleted(inv.Tenant)
	default:
		t.cache.written(inv.Tenant, inv.Version)
	}
}

// Close stops background work and waits for it. A refresh already sent to
// the token endpoint runs to its end, and its write is retried for a while
// if the store refuses it (with the tenant's lock held throughout): Close
// can take RefreshTimeout plus about 15 seconds.
func (t *Tokens) Close() {
	t.stop()
	t.wg.Wait()
}

// Token returns a usable access token for tenant. While the cached token is
// valid it returns at once, without network I/O, and starts a refresh in the
// background when the token is within RefreshAhead of expiry. When no valid
// token is cached, callers wait (bounded by ctx) for one load or refresh.
//
// The errors are ErrUnknownTenant, ErrReauthorizationRequired, an
// *UnavailableError, or ctx's error.
func (t *Tokens) Token(ctx context.Context, tenant string) (string, error) {
	s, err := t.current(ctx, tenant)
	if err != nil {
		return "", err
	}
	return s.access, nil
}

// Authorization is Token, returned as the value of an Authorization header
// ("Bearer " and the token), built once per token rather than per call.
func (t *Tokens) Authorization(ctx context.Context, tenant string) (string, error) {
	s, err := t.current(ctx, tenant)
	if err != nil {
		return "", err
	}
	return s.bearer, nil
}

// current returns the snapshot whose token Token hands out.
func (t *Tokens) current(ctx context.Context, tenant string) (snapshot, error) {
	now := t.now()
	v := t.cache.lookup(tenant)
	s := &v.snap
	switch {
	case !v.held:
		t.obs.CacheLookup("memory", "miss")
	case s.state == store.StateReauthorizationRequired:
		if now.UnixNano()-v.filledAt < int64(negativeTTL) {
			t.obs.CacheLookup("memory", "hit")
			return snapshot{}, ErrReauthorizationRequired
		}
		// Held long enough: the owner may have connected again and
		// the invalidation been missed. Read the store again.
		t.obs.CacheLookup("memory", "stale")
	case s.usable(now):
		t.obs.CacheLookup("memory", "hit")
		if s.due(now, t.cfg.RefreshAhead) && !v.refreshing && now.UnixNano() >= v.retryAt {
			t.refreshInBackground(tenant, v.entry, s.version, now)
		}
		t.injected(s, now)
		return *s, nil
	default:
		t.obs.CacheLookup("memory", "stale")
	}

	s, err := t.wait(ctx, t.flight(tenant, func(ctx context.Context) (*snapshot, error) {
		return t.load(ctx, tenant)
	}))
	if err != nil {
		return snapshot{}, err
	}
	now = t.now()
	if s.due(now, t.cfg.RefreshAhead) {
		if e := t.cache.get(tenant); e.found() {
			t.refreshInBackground(tenant, e, s.version, now)
		}
	}
	t.injected(s, now)
	return *s, nil
}

// negativeTTL is how long a tenant that cannot serve
// (reauthorization_required) is answered from the cache before the store is
// read again: a missed invalidation must not keep a reconnected tenant
// refused.
const negativeTTL = 30 * time.Second

func (t *Tokens) injected(s *snapshot, now time.Time) {
	if s.expiry.IsZero() {
		t.obs.Injected(0, false)
		return
	}
	t.obs.Injected(s.expiry.Sub(now), true)
}

// Refused is called when the upstream answered 401 to token, which the proxy
// injected for tenant. It drops the token and returns the current one: the one
// in the store if it differs (another replica rotated it), else a freshly
// refreshed one. ErrNoBetterToken means the refusal stands (a static token, or
// a token refreshed moments ago and refused again).
func (t *Tokens) Refused(ctx context.Context, tenant, token string) (string, error) {
	t.cache.dropToken(tenant, token)
	s, err := t.wait(ctx, t.flight(tenant+"\x00refused\x00"+token, func(ctx context.Context) (*snapshot, error) {
		return t.replace(ctx, tenant, token)
	}))
	if err != nil {
		return "", err
	}
	if s.access == token {
		return "", ErrNoBetterToken
	}
	return s.access, nil
}

// replace finds a token other than refused for tenant.
func (t *Tokens) replace(ctx context.Context, tenant, refused string) (*snapshot, error) {
	e := t.cache.entryFor(tenant)
	rec, err := t.get(ctx, tenant)
	if err != nil {
		return nil, err
	}
	s := snapshotOf(rec)
	if rec.State == store.StateReauthorizationRequired {
		t.cache.fill(e, s)
		return nil, ErrReauthorizationRequired
	}
	if rec.AccessToken != refused && s.usable(t.now()) {
		t.cache.fill(e, s)
		return s, nil
	}
	if !rec.Refreshable() || t.cfg.OAuth == nil {
		return nil, ErrNoBetterToken
	}
	// A token that a forced refresh produced moments ago and that is
	// refused at once will not be cured by another refresh: the refusal
	// stands, so that a broken account cannot turn every request into a
	// refresh. The mark is in the record, so this holds across replicas.
	if rec.RefreshForced && t.now().Sub(rec.LastRefresh) < minForcedRefreshInterval {
		return nil, ErrNoBetterToken
	}
	s, err = t.refresh(ctx, tenant, rec.Version, causeRefused)
	if err != nil {
		return nil, err
	}
	t.cache.fill(e, s)
	return s, nil
}

// refreshFlight suffixes the flight key of background refreshes.
const refreshFlight = "\x00refresh"

// minForcedRefreshInterval is the least time between a refresh and another
// one forced by the upstream refusing the token the first produced.
const minForcedRefreshInterval = 30 * time.Second

// load reads the tenant's record (after a cache miss, or with an expired
// cached token) and refreshes it first when it has expired. When an
// invalidation of the tenant arrives while it runs (a deletion, a newer
// write), its result is not cached, and it reads again once.
func (t *Tokens) load(ctx context.Context, tenant string) (*snapshot, error) {
	s, filled, err := t.loadOnce(ctx, tenant)
	if err != nil || filled {
		return s, err
	}
	s, _, err = t.loadOnce(ctx, tenant)
	return s, err
}

// loadOnce is one attempt of load; filled reports whether its result went
// into the cache.
func (t *Tokens) loadOnce(ctx context.Context, tenant string) (s *snapshot, filled bool, err error) {
	e := t.cache.entryFor(tenant)
	rec, err := t.get(ctx, tenant)
	if err != nil {
		if p := t.pendingRecord(tenant); p != nil {
			ps := snapshotOf(*p)
			switch {
			case !ps.usable(t.now()):
			case errors.Is(err, ErrTokenUnavailable):
				// The store is unreachable and holds an outdated record
				// at best: the rotated token awaiting its write is the
				// current one.
				return ps, t.cache.fill(e, ps), nil
			case errors.Is(err, ErrUnknownTenant):
				// The tenant was deleted (a tombstone), or the store lost
				// its data: the pending writer's next attempt tells which
				// (a tombstone refuses it; after a loss it writes the
				// record back). Until then, no token: a deleted tenant's
				// must never be served, nor cached in an entry made after
				// its deletion.
				return nil, true, unavailable("the token store does not hold the tenant's token, and a refreshed token awaits its write", pendingRetryMax, nil)
			}
		}
		if errors.Is(err, ErrUnknownTenant) {
			if t.cache.heldVersion(e) > 0 {
				// The store forgot a tenant this replica holds: it was
				// deleted (an invalidation missed) or the store lost its
				// data. The entry (never served: its token is not usable,
				// or it would not be loaded) stays until the store watcher
				// has checked the epoch, so that a loss writes it back;
				// its re-validation then drops a deleted one.
				t.askResync()
			} else {
				t.cache.deleted(tenant) // no empty entry for an unknown tenant
			}
		}
		return nil, true, err
	}
	s = snapshotOf(rec)
	now := t.now()
	switch {
	case rec.State == store.StateReauthorizationRequired:
		return nil, t.cache.fill(e, s), ErrReauthorizationRequired
	case s.usable(now):
		return s, t.cache.fill(e, s), nil
	case !rec.Refreshable():
		return nil, true, ErrReauthorizationRequired
	case t.cfg.OAuth == nil:
		return nil, true, unavailable("the token has expired and no OAuth client is configured to refresh it", time.Minute, nil)
	}
	if wait := time.Duration(t.cache.retryAt(e) - now.UnixNano()); wait > 0 {
		return nil, true, unavailable("the token has expired and refreshing it failed; retrying", wait, nil)
	}
	s, err = t.refresh(ctx, tenant, rec.Version, causeDue)
	if err != nil {
		if errors.Is(err, ErrTokenUnavailable) {
			t.backoff(e)
			var ue *UnavailableError
			if errors.As(err, &ue) {
				ue.RetryAfter = max(ue.RetryAfter, time.Duration(t.cache.retryAt(e)-t.now().UnixNano()))
			}
		}
		return nil, true, err
	}
	t.cache.succeeded(e)
	return s, t.cache.fill(e, s), nil
}

// get reads a record, turning store errors into the lifecycle's own.
func (t *Tokens) get(ctx context.Context, tenant string) (store.TokenRecord, error) {
	rec, err := t.store.Get(ctx, tenant)
	switch {
	case err == nil:
		t.obs.CacheLookup("store", "hit")
		if p := t.pendingRecord(tenant); p != nil && p.Version == rec.Version {
			// The store still holds the pair this process rotated away from.
			rec = *p
		}
		return rec, nil
	case errors.Is(err, store.ErrNotFound):
		t.obs.CacheLookup("store", "miss")
		return rec, ErrUnknownTenant
	case errors.Is(err, store.ErrSealed):
		t.obs.CacheLookup("store", "error")
		t.log.Error("stored token record does not open with any configured key", "tenant", tenant)
		return rec, unavailable("the stored token record does not open with any configured encryption key", time.Minute, err)
	case ctx.Err() != nil:
		return rec, ctx.Err()
	default:
		t.obs.CacheLookup("store", "error")
		t.obs.StoreError("get")
		return rec, unavailable("the token store is unreachable", 5*time.Second, err)
	}
}

// refreshInBackground starts a refresh of the token of version, which is
// still valid, unless one is running or a failure holds it back.
func (t *Tokens) refreshInBackground(tenant string, e entry, version int64, now time.Time) {
	if t.cfg.OAuth == nil || !t.cache.startRefresh(e, now) {
		return
	}
	f := t.refreshDueFlight(tenant, version)
	t.wg.Go(func() {
		defer t.cache.endRefresh(e)
		<-f.done
	})
}

// refreshDueFlight returns the flight that refreshes the tenant's token of
// version (-1: whichever is stored) because it is due, starting it if none
// runs. A flight of its own: a caller who finds no cached token loads the
// stored one and does not wait for this refresh. The flight takes the
// tenant's entry before it reads anything and records its outcome there,
// so that whoever joins it later, after a deletion say, does not put its
// result into an entry made since.
func (t *Tokens) refreshDueFlight(tenant string, version int64) *flight {
	return t.flight(tenant+refreshFlight, func(ctx context.Context) (*snapshot, error) {
		e := t.cache.entryFor(tenant)
		s, err := t.refresh(ctx, tenant, version, causeDue)
		t.settle(e, s, err)
		return s, err
	})
}

// settle records the outcome of a background refresh in the tenant's entry:
// a backoff after a failure; after a success, a reset backoff and the new
// token, unless a newer one is cached already.
func (t *Tokens) settle(e entry, s *snapshot, err error) {
	if err != nil {
		t.backoff(e)
		return
	}
	t.cache.succeeded(e)
	t.cache.fill(e, s)
}

// backoff holds the next attempt back exponentially after consecutive
// failures: 1 s, 2 s, 4 s, ... up to 256 s, each with jitter down to half of
// it (so from the ninth failure on, 128 to 256 s).
func (t *Tokens) backoff(e entry) {
	t.cache.failed(e, func(failures int) time.Duration {
		d := exponential(time.Second, 256*time.Second, failures)
		return d/2 + rand.N(d/2+1)
	})
}

// flight is one load or refresh for a key, shared by every caller who asks
// while it runs.
type flight struct {
	done chan struct{}
	snap *snapshot
	err  error
}

// flight returns the running flight for key, or starts fn as a new one. fn
// runs under the Tokens' own context with a timeout, never a caller's.
func (t *Tokens) flight(key string, fn func(ctx context.Context) (*snapshot, error)) *flight {
	t.flightsMu.Lock()
	if f, ok := t.flights[key]; ok {
		t.flightsMu.Unlock()
		return f
	}
	f := &flight{done: make(chan struct{})}
	t.flights[key] = f
	t.flightsMu.Unlock()

	t.wg.Go(func() {
		ctx, cancel := context.WithTimeout(t.ctx, t.cfg.LockWait+2*t.cfg.RefreshTimeout)
		defer cancel()
		f.snap, f.err = fn(ctx)
		t.flightsMu.Lock()
		delete(t.flights, key)
		t.flightsMu.Unlock()
		close(f.done)
	})
	return f
}

func (t *Tokens) wait(ctx context.Context, f *flight) (*snapshot, error) {
	select {
	case <-f.done:
		return f.snap, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// randomID returns 128 random bits in hex: a lock's owner, a replica's
// heartbeat id.
func randomID() string {
	var b [16]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

type nopObserver struct{}

func (nopObserver) CacheLookup(string, string)      {}
func (nopObserver) Refreshed(string, time.Duration) {}
func (nopObserver) LockWaited(bool, time.Duration)  {}
func (nopObserver) StoreError(string)               {}
func (nopObserver) Injected(time.Duration, bool)    {}
func (nopObserver) PendingWrite(int)                {}
func (nopObserver) StoreDataLost()                  {}
func (nopObserver) Invalidations(bool, time.Time)   {}
func (nopObserver) CacheEvicted()                   {}
