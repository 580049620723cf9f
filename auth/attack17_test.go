package auth

// Adversarial tests of the token cache (slots reused under generations,
// colliding hashes, times at the edges of what a record holds), of fills
// that race imports, deletions and a data loss, and of the memory store
// that keeps records as structs.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/store"
)

// a17Store counts the Gets that reach the store and fails them while down
// (a Redis that went away).
type a17Store struct {
	Store
	gets atomic.Int64
	down atomic.Bool
}

func (s *a17Store) Get(ctx context.Context, tenant string) (store.TokenRecord, error) {
	s.gets.Add(1)
	if s.down.Load() {
		return store.TokenRecord{}, errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")
	}
	return s.Store.Get(ctx, tenant)
}

func a17Tokens(t *testing.T, st Store, configure ...func(*Config)) *Tokens {
	t.Helper()
	cfg := Config{Store: st, LockLease: 3 * time.Second, LockWait: 5 * time.Second}
	for _, c := range configure {
		c(&cfg)
	}
	tokens := New(cfg)
	if err := tokens.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(tokens.Close)
	return tokens
}

// far is an expiry an operator gives a token that "never" expires (the
// admin API takes any RFC 3339 time): past 2262, where Unix nanoseconds no
// longer fit an int64.
var a17Far = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

// An imported token whose expiry lies after 2262 (the admin API's
// "expiry": "9999-12-31T23:59:59Z", past where Unix nanoseconds fit an
// int64) is served from the cache, with the store down too (rule 7: serve
// cached tokens until they expire), not read from the store every time.
func TestAttack17FarFutureExpiryIsServedFromTheCache(t *testing.T) {
	for _, expiry := range []time.Time{time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC), a17Far} {
		t.Run(fmt.Sprint(expiry.Year()), func(t *testing.T) {
			st := &a17Store{Store: store.NewMemory()}
			tokens := a17Tokens(t, st)
			if _, err := tokens.Import(t.Context(), "acme", Grant{AccessToken: "pat-acme", Expiry: expiry}); err != nil {
				t.Fatalf("Import: %v", err)
			}
			before := st.gets.Load()
			for range 5 {
				if got, err := tokens.Authorization(t.Context(), "acme"); err != nil || got != "Bearer pat-acme" {
					t.Fatalf("Authorization = %q, %v; want the imported token", got, err)
				}
			}
			if n := st.gets.Load() - before; n != 0 {
				t.Errorf("5 requests for a token valid until %v read the store %d times; want 0 (cached)", expiry, n)
			}
			st.down.Store(true)
			if got, err := tokens.Authorization(t.Context(), "acme"); err != nil || got != "Bearer pat-acme" {
				t.Errorf("Authorization with the store down = %q, %v; want the cached token, valid until %v", got, err, expiry)
			}
		})
	}
}

// An expiry of exactly the Unix epoch is an expiry in the past, not "never
// expires": the token is refreshed at first use (README), as one with an
// expiry a nanosecond later.
func TestAttack17EpochExpiryIsNotNeverExpires(t *testing.T) {
	for _, expiry := range []time.Time{time.Unix(0, 1).UTC(), time.Unix(0, 0).UTC()} {
		t.Run(expiry.Format(time.RFC3339Nano), func(t *testing.T) {
			double := thanksiotest.NewServer(t, thanksiotest.Options{})
			tokens := a17Tokens(t, store.NewMemory(), func(c *Config) { c.OAuth = double.OAuthConfig("") })
			g := double.NewGrant()
			if _, err := tokens.Import(t.Context(), "acme", Grant{AccessToken: g.AccessToken, RefreshToken: g.RefreshToken, Expiry: expiry}); err != nil {
				t.Fatalf("Import: %v", err)
			}
			tok, err := tokens.Token(t.Context(), "acme")
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			if tok == g.AccessToken || double.RefreshCalls() != 1 {
				t.Errorf("Token for a token that expired at %v = the imported one: %v, refresh calls %d; want it refreshed at first use",
					expiry, tok == g.AccessToken, double.RefreshCalls())
			}
		})
	}
}

// The write-back after a data loss writes the far-future expiry the cache
// holds as it was: a static token (no refresh token) written back expired
// would be reauthorization_required on every replica, valid as it is.
// Redis of its own, so that it can lose its data.
func TestAttack17WriteBackKeepsAFarFutureExpiry(t *testing.T) {
	redis := testutil.StartRedis(t)
	open := testutil.RedisStores(t, redis.URL())
	a := a17Tokens(t, open())
	if _, err := a.Import(t.Context(), "acme", Grant{AccessToken: "pat-acme", Expiry: a17Far}); err != nil {
		t.Fatalf("Import: %v", err)
	}
	if _, err := a.Token(t.Context(), "acme"); err != nil {
		t.Fatalf("Token before the loss: %v", err)
	}
	if err := redis.Client().FlushAll(t.Context()).Err(); err != nil {
		t.Fatalf("FLUSHALL: %v", err)
	}
	reader := open()
	var rec store.TokenRecord
	testutil.Eventually(t, "the replica writes acme back", func() bool {
		_, _ = a.Token(t.Context(), "acme") // finds the store empty: asks for the epoch check
		var err error
		rec, err = reader.Get(t.Context(), "acme")
		return err == nil
	})
	if !rec.Expiry.Equal(a17Far) {
		t.Errorf("expiry written back = %v; want %v", rec.Expiry, a17Far)
	}
	if tok, err := a.Token(t.Context(), "acme"); err != nil || tok != "pat-acme" {
		t.Errorf("Token after the write-back = %q, %v; want the imported token", tok, err)
	}
}

// a17GatedStore holds the Put of one access token, after it landed, until
// release; and tells when an invalidation of a version reached the
// subscriber.
type a17GatedStore struct {
	Store
	holdAccess string
	holdNext   atomic.Bool // hold the next Put that lands, whatever it writes
	landed     chan struct{}
	release    chan struct{}

	mu    sync.Mutex
	heard map[int64]chan struct{}
}

func (s *a17GatedStore) Put(ctx context.Context, tenant string, rec store.TokenRecord, prev int64) (int64, error) {
	v, err := s.Store.Put(ctx, tenant, rec, prev)
	if err == nil && (rec.AccessToken == s.holdAccess || s.holdNext.CompareAndSwap(true, false)) {
		close(s.landed)
		<-s.release
	}
	return v, err
}

func (s *a17GatedStore) heardVersion(v int64) chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.heard[v] == nil {
		s.heard[v] = make(chan struct{})
	}
	return s.heard[v]
}

func (s *a17GatedStore) Subscribe(ctx context.Context, onInvalidate func(store.Invalidation), onResync func()) error {
	return s.Store.Subscribe(ctx, func(inv store.Invalidation) {
		onInvalidate(inv)
		if inv.Tenant != "" {
			c := s.heardVersion(inv.Version)
			select {
			case <-c:
			default:
				close(c)
			}
		}
	}, onResync)
}

func a17Wait(t *testing.T, what string, c <-chan struct{}) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting until %s", what)
	}
}

// Two imports of one tenant on one replica: the first one's write lands
// (v1) and its goroutine is descheduled; the second one writes v2, caches
// it, and v2's invalidation is applied. The first one's v1 must not then
// replace v2 in the cache, where no invalidation is left to correct it: an
// operator replacing a leaked or wrong-account token would see the old one
// used until it expires or is refused.
func TestAttack17RacingImportsCacheTheNewest(t *testing.T) {
	st := &a17GatedStore{Store: store.NewMemory(), holdAccess: "first", landed: make(chan struct{}), release: make(chan struct{}), heard: map[int64]chan struct{}{}}
	tokens := a17Tokens(t, st)
	expiry := time.Now().Add(time.Hour)
	first := make(chan error, 1)
	go func() {
		_, err := tokens.Import(context.Background(), "acme", Grant{AccessToken: "first", Expiry: expiry})
		first <- err
	}()
	a17Wait(t, "the first import's write lands", st.landed)
	if _, err := tokens.Import(t.Context(), "acme", Grant{AccessToken: "second", Expiry: expiry}); err != nil {
		t.Fatalf("second Import: %v", err)
	}
	a17Wait(t, "the second import's invalidation is applied", st.heardVersion(2))
	close(st.release)
	if err := <-first; err != nil {
		t.Fatalf("first Import: %v", err)
	}
	rec, err := st.Store.Get(t.Context(), "acme")
	if err != nil || rec.AccessToken != "second" {
		t.Fatalf("store holds %q, %v; want the second import", rec.AccessToken, err)
	}
	if tok, err := tokens.Token(t.Context(), "acme"); err != nil || tok != "second" {
		t.Errorf("Token = %q, %v; want %q, the import the store holds (v2), not the older one (v1)", tok, err, "second")
	}
}

// Redis loses its data; the tenant is imported again through replica b (a
// new grant, at version 1 again, since versions restart with the lost
// hash). Replica a cached the old grant at version 1: the invalidation of
// v1 does not drop it (not older), and a's write-back is refused (a record
// written since the loss wins). Once a has noticed the loss it must serve
// the grant the store holds, not the old one (another account, if the
// owner connected another), whose version looks the same.
func TestAttack17ReimportAfterADataLossReachesEveryReplica(t *testing.T) {
	redis := testutil.StartRedis(t)
	open := testutil.RedisStores(t, redis.URL())
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	oauth := func(c *Config) { c.OAuth = double.OAuthConfig("") }
	lost := &a17LossObserver{noticed: make(chan struct{})}
	a := a17Tokens(t, open(), oauth, func(c *Config) { c.Observer = lost })
	b := a17Tokens(t, open(), oauth)
	old := double.NewGrant()
	if _, err := a.Import(t.Context(), "acme", Grant{AccessToken: old.AccessToken, RefreshToken: old.RefreshToken, Expiry: old.Expiry}); err != nil {
		t.Fatalf("Import: %v", err)
	}
	if tok, err := a.Token(t.Context(), "acme"); err != nil || tok != old.AccessToken {
		t.Fatalf("a.Token = %v; want the imported grant", err)
	}
	if err := redis.Client().FlushAll(t.Context()).Err(); err != nil {
		t.Fatalf("FLUSHALL: %v", err)
	}
	fresh := double.NewGrant()
	if _, err := b.Import(t.Context(), "acme", Grant{AccessToken: fresh.AccessToken, RefreshToken: fresh.RefreshToken, Expiry: fresh.Expiry}); err != nil {
		t.Fatalf("b.Import: %v", err)
	}
	// a notices the loss at its next epoch check (every 5 s), writes back
	// (refused: b's record wins) and re-validates what it caches.
	a17Wait(t, "a notices the data loss", lost.noticed)
	noticed := time.Now()
	testutil.Eventually(t, "a re-validates acme after the loss", func() bool {
		for _, cd := range a.cache.snapshots() {
			if cd.tenant == "acme" {
				return cd.filledAt.After(noticed)
			}
		}
		return true // dropped: the next Token reads the store
	})
	if tok, err := a.Token(t.Context(), "acme"); err != nil || tok != fresh.AccessToken {
		t.Errorf("a.Token after its re-validation = old grant %v, %v; want the grant the store holds", tok == old.AccessToken, err)
	}
}

// a17LossObserver closes noticed when its replica notices a data loss.
type a17LossObserver struct {
	nopObserver
	once    sync.Once
	noticed chan struct{}
}

func (o *a17LossObserver) StoreDataLost() { o.once.Do(func() { close(o.noticed) }) }

// a17Waiting counts the goroutines blocked in a select inside fn (a caller
// waiting on a flight).
func a17Waiting(fn string) int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		if strings.Contains(header, "[select") && strings.Contains(g, fn) {
			n++
		}
	}
	return n
}

// An admin refresh (RefreshNow) of acme runs on replica a and its rotated
// pair has landed (v2); acme is then deleted through b and imported again
// (v3), and a hears both. A second RefreshNow on a reads v3 and joins the
// first refresh's flight: its result must not go into an entry made after
// the invalidations (with no floor), or a serves the rotated token of the
// deleted grant (rule 10) while the store holds the new one.
func TestAttack17JoinedFlightAfterADeleteIsNotCached(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	oauth := func(c *Config) { c.OAuth = double.OAuthConfig("") }
	shared := store.NewMemory()
	gated := &a17GatedStore{Store: shared, holdAccess: "\x00none", landed: make(chan struct{}), release: make(chan struct{}), heard: map[int64]chan struct{}{}}
	a := a17Tokens(t, gated, oauth)
	b := a17Tokens(t, shared, oauth)
	old := double.NewGrant()
	if _, err := a.Import(t.Context(), "acme", Grant{AccessToken: old.AccessToken, RefreshToken: old.RefreshToken, Expiry: old.Expiry}); err != nil {
		t.Fatalf("Import: %v", err)
	}

	gated.holdNext.Store(true)
	first := make(chan error, 1)
	go func() {
		_, err := a.RefreshNow(context.Background(), "acme")
		first <- err
	}()
	a17Wait(t, "the first refresh's rotated pair lands (v2)", gated.landed)

	if err := b.Forget(t.Context(), "acme"); err != nil {
		t.Fatalf("b.Forget: %v", err)
	}
	fresh := double.NewGrant()
	if _, err := b.Import(t.Context(), "acme", Grant{AccessToken: fresh.AccessToken, RefreshToken: fresh.RefreshToken, Expiry: fresh.Expiry}); err != nil {
		t.Fatalf("b.Import: %v", err)
	}
	a17Wait(t, "a hears the re-import (v3)", gated.heardVersion(3))

	second := make(chan error, 1)
	go func() {
		_, err := a.RefreshNow(context.Background(), "acme")
		second <- err
	}()
	testutil.Eventually(t, "the second RefreshNow waits on the first one's flight", func() bool {
		return a17Waiting("(*Tokens).RefreshNow(") >= 2
	})
	close(gated.release)
	t.Logf("first RefreshNow = %v", <-first)
	t.Logf("second RefreshNow = %v", <-second)

	rec, err := shared.Get(t.Context(), "acme")
	if err != nil || rec.AccessToken != fresh.AccessToken {
		t.Fatalf("store holds the re-imported grant: %v, %v", rec.AccessToken == fresh.AccessToken, err)
	}
	tok, err := a.Token(t.Context(), "acme")
	if err != nil || tok != fresh.AccessToken {
		cur, rotated := double.CurrentToken(old.AccessToken)
		t.Errorf("a.Token after the delete and re-import = %v (the deleted grant's rotated token: %v); want the re-imported grant",
			err, rotated && tok == cur.AccessToken)
	}
}

// ---- probes of the cache itself (these pass) ----

// a17Tok is the token of tenant at version: it names its tenant, so that a
// token served for another tenant shows.
func a17Tok(tenant string, version int64) *snapshot {
	access := fmt.Sprintf("tok:%s:v%d", tenant, version)
	return &snapshot{access: access, bearer: bearerPrefix + access, refresh: "ref:" + tenant, version: version,
		refreshable: true, expiry: time.Now().Add(time.Hour), state: store.StateActive}
}

func a17Owner(access string) string {
	parts := strings.Split(access, ":")
	if len(parts) != 3 {
		return "?" + access
	}
	return parts[1]
}

// A random walk of entryFor, fill (with current and ended
// handles), put, written, deleted, dropToken, backoff and the refresh flag,
// over tenants that share three hashes, in a cache small enough to evict
// chain heads and middles: no token is ever found under another tenant,
// no ended handle reaches a slot, snapshots lists each tenant with its own
// handle, and the refresh flag or a backoff never passes to a slot's next
// occupant.
func TestAttack17CacheRandomWalkKeepsTenantsApart(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 17))
	c := newCache(12, time.Now, func() {})
	c.hash = func(s string) uint64 { return uint64(len(s) % 3) }
	tenants := make([]string, 40)
	for i := range tenants {
		tenants[i] = strings.Repeat("t", 1+i%5) + fmt.Sprint(i)
	}
	type handle struct {
		tenant string
		e      entry
	}
	var handles []handle
	current := func(tenant string) entry { return c.get(tenant) }
	for step := range 50000 {
		tenant := tenants[rng.IntN(len(tenants))]
		switch op := rng.IntN(10); op {
		case 0, 1:
			e := c.entryFor(tenant)
			handles = append(handles, handle{tenant, e})
		case 2, 3:
			if len(handles) == 0 {
				continue
			}
			h := handles[rng.IntN(len(handles))]
			live := current(h.tenant) == h.e
			if ok := c.fill(h.e, a17Tok(h.tenant, int64(rng.IntN(5)))); ok && !live {
				t.Fatalf("step %d: fill with an ended handle of %q was taken", step, h.tenant)
			}
		case 4:
			if len(handles) == 0 {
				continue
			}
			h := handles[rng.IntN(len(handles))]
			live := current(h.tenant) == h.e
			if ok := c.put(h.e, a17Tok(h.tenant, int64(rng.IntN(5)))); ok && !live {
				t.Fatalf("step %d: put with an ended handle of %q was taken", step, h.tenant)
			}
		case 5:
			c.written(tenant, int64(rng.IntN(5)))
		case 6:
			c.deleted(tenant)
		case 7:
			c.dropToken(tenant, fmt.Sprintf("tok:%s:v%d", tenant, rng.IntN(5)))
		case 8:
			if len(handles) == 0 {
				continue
			}
			h := handles[rng.IntN(len(handles))]
			if current(h.tenant) != h.e {
				c.failed(h.e, func(int) time.Duration { return time.Hour })
				c.startRefresh(h.e, time.Now())
			}
		case 9:
			e := c.entryFor(tenant)
			if c.retryAt(e) == 0 && !c.startRefresh(e, time.Now()) {
				// Only a refresh started through this very entry may hold it.
				if v := c.lookup(tenant); !v.refreshing {
					t.Fatalf("step %d: startRefresh of a fresh entry of %q refused", step, tenant)
				}
			}
			c.endRefresh(e)
		}
		if len(handles) > 200 {
			handles = handles[len(handles)-100:]
		}
		// Invariants.
		n := 0
		for _, tn := range tenants {
			v := c.lookup(tn)
			if !v.entry.found() {
				continue
			}
			n++
			if v.held && a17Owner(v.snap.access) != tn {
				t.Fatalf("step %d: %q is served %q", step, tn, v.snap.access)
			}
			if v.entry != current(tn) {
				t.Fatalf("step %d: lookup and get of %q disagree", step, tn)
			}
		}
		if n != c.len() || n > 12 {
			t.Fatalf("step %d: %d tenants found, len() = %d, max 12", step, n, c.len())
		}
		for _, cd := range c.snapshots() {
			if a17Owner(cd.snap.access) != cd.tenant || current(cd.tenant) != cd.entry {
				t.Fatalf("step %d: snapshots lists %q with %q, handle %v (current %v)", step, cd.tenant, cd.snap.access, cd.entry, current(cd.tenant))
			}
		}
	}
}

// Readers look tenants up while writers fill,
// delete and evict them through one small cache with colliding hashes: no
// reader ever sees another tenant's token, and the race detector finds
// nothing.
func TestAttack17CacheConcurrentReadersSeeOnlyTheirTenant(t *testing.T) {
	c := newCache(8, time.Now, func() {})
	c.hash = func(s string) uint64 { return uint64(s[len(s)-1] % 2) }
	tenants := []string{"a0", "b1", "c2", "d3", "e4", "f5", "g6", "h7", "i8", "j9", "k0", "l1"}
	stop := make(chan struct{})
	var wrong atomic.Value
	var writers, readers sync.WaitGroup
	for w := range 4 {
		writers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				tn := tenants[rng.IntN(len(tenants))]
				switch rng.IntN(4) {
				case 0:
					c.deleted(tn)
				case 1:
					c.written(tn, int64(i))
				default:
					c.fill(c.entryFor(tn), a17Tok(tn, int64(i)))
				}
			}
		})
	}
	for r := range 4 {
		readers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 2))
			for range 50000 {
				tn := tenants[rng.IntN(len(tenants))]
				if v := c.lookup(tn); v.held && a17Owner(v.snap.access) != tn {
					wrong.Store(tn + " served " + v.snap.access)
				}
			}
		})
	}
	readers.Wait()
	close(stop)
	writers.Wait()
	if w := wrong.Load(); w != nil {
		t.Fatalf("a reader saw another tenant's token: %v", w)
	}
}

// A caller that changes the AccessToken of a record it read
// from the memory store (as redeem does with next := rec) and writes it, or
// restores it, leaves no stale Authorization behind: the store and the
// cache hand out the new token.
func TestAttack17MemoryStoreStaleAuthorizationIsRebuilt(t *testing.T) {
	ctx := t.Context()
	m := store.NewMemory()
	if _, err := m.Put(ctx, "acme", store.TokenRecord{AccessToken: "one", RefreshToken: "r1"}, 0); err != nil {
		t.Fatal(err)
	}
	rec, err := m.Get(ctx, "acme")
	if err != nil || rec.Authorization != "Bearer one" {
		t.Fatalf("Get = %q, %v", rec.Authorization, err)
	}
	next := rec
	next.AccessToken = "two" // Authorization still says one
	if s := snapshotOf(next); s.bearer != "Bearer two" || s.access != "two" {
		t.Errorf("snapshotOf a record with a stale Authorization = %q / %q; want two", s.bearer, s.access)
	}
	if _, err := m.Put(ctx, "acme", next, rec.Version); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.Get(ctx, "acme"); got.Authorization != "Bearer two" || got.AccessToken != "two" {
		t.Errorf("after a Put with a stale Authorization: %q / %q; want two", got.Authorization, got.AccessToken)
	}
	back := next
	back.AccessToken, back.Version = "three", 5
	if _, err := m.Restore(ctx, "lost", back); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.Get(ctx, "lost"); got.Authorization != "Bearer three" || got.AccessToken != "three" {
		t.Errorf("after a Restore with a stale Authorization: %q / %q; want three", got.Authorization, got.AccessToken)
	}
}
