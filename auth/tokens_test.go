package auth_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/store"
)

// countingStore counts the reads that reach the store.
type countingStore struct {
	auth.Store
	gets atomic.Int64
}

func (s *countingStore) Get(ctx context.Context, tenant string) (store.TokenRecord, error) {
	s.gets.Add(1)
	return s.Store.Get(ctx, tenant)
}

// replica is one auth.Tokens with its own cache, as one proxy process has.
func replica(t *testing.T, st auth.Store, double *thanksiotest.Server, configure ...func(*auth.Config)) *auth.Tokens {
	t.Helper()
	cfg := auth.Config{
		Store:        st,
		OAuth:        double.OAuthConfig(""),
		RefreshAhead: 5 * time.Minute,
		LockLease:    3 * time.Second,
		LockWait:     10 * time.Second,
	}
	for _, c := range configure {
		c(&cfg)
	}
	tokens := auth.New(cfg)
	if err := tokens.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(tokens.Close)
	return tokens
}

// ownedRedis starts a redis-server that the test owns, so that it can lose
// its data, stop or refuse writes, with args as testutil.StartRedis takes
// them, and a double with opts. It returns both, and a function that opens
// a new store on that server, one for each replica.
func ownedRedis(t *testing.T, opts thanksiotest.Options, args ...string) (*testutil.RedisServer, *thanksiotest.Server, func() *store.Redis) {
	t.Helper()
	redis := testutil.StartRedis(t, args...)
	double := thanksiotest.NewServer(t, opts)
	return redis, double, testutil.RedisStores(t, redis.URL())
}

// importGrant stores g for tenant with the given expiry, as an operator's
// import does.
func importGrant(t *testing.T, tokens *auth.Tokens, tenant string, g thanksiotest.Token, expiry time.Time) {
	t.Helper()
	if _, err := tokens.Import(t.Context(), tenant, auth.Grant{AccessToken: g.AccessToken, RefreshToken: g.RefreshToken, Expiry: expiry}); err != nil {
		t.Fatalf("Import(%q): %v", tenant, err)
	}
}

// importExpired imports a new grant of the double for tenant through r,
// with an access token that has already expired, so that the first call of
// Token refreshes it, and returns the grant.
func importExpired(t *testing.T, double *thanksiotest.Server, r *auth.Tokens, tenant string) thanksiotest.Token {
	t.Helper()
	g := double.NewGrant()
	importGrant(t, r, tenant, g, time.Now().Add(-time.Second))
	return g
}

// expiredOnMemory starts a double and one replica over a memory store, and
// imports through the replica, for acme, a grant whose access token has
// expired (as importExpired does). It returns the double, the store, the
// replica and the grant.
func expiredOnMemory(t *testing.T) (*thanksiotest.Server, *store.Memory, *auth.Tokens, thanksiotest.Token) {
	t.Helper()
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	st := store.NewMemory()
	tokens := replica(t, st, double)
	return double, st, tokens, importExpired(t, double, tokens, "acme")
}

// waitTokenCalls waits until the double has received n token requests,
// failing the test after 10 seconds.
func waitTokenCalls(t *testing.T, double *thanksiotest.Server, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := double.WaitTokenCalls(ctx, n); err != nil {
		t.Fatalf("waiting for %d token requests: %v", n, err)
	}
}

// tokenResult is what a call of Tokens.Token returned.
type tokenResult struct {
	token string
	err   error
}

// stalledToken stalls the double's token endpoint for its next request,
// calls r.Token(tenant) in the background, and returns once the refresh
// that the call starts is held at the endpoint. Closing stall lets the
// endpoint answer; the call's result then comes on the returned channel.
func stalledToken(t *testing.T, double *thanksiotest.Server, r *auth.Tokens, tenant string) (stall chan struct{}, result <-chan tokenResult) {
	t.Helper()
	stall = make(chan struct{})
	double.SetTokenFault(thanksiotest.TokenFault{Stall: stall, Times: 1})
	results := make(chan tokenResult, 1)
	go func() {
		tok, err := r.Token(context.Background(), tenant)
		results <- tokenResult{tok, err}
	}()
	waitTokenCalls(t, double, 1)
	return stall, results
}

func TestCachedTokenNeedsNoStore(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	st := &countingStore{Store: store.NewMemory()}
	tokens := replica(t, st, double)
	g := double.NewGrant()
	importGrant(t, tokens, "acme", g, time.Now().Add(time.Hour))

	before := st.gets.Load()
	for range 1000 {
		got, err := tokens.Token(t.Context(), "acme")
		if err != nil || got != g.AccessToken {
			t.Fatalf("Token(acme) = %q, %v; want the imported token", got, err)
		}
	}
	if n := st.gets.Load() - before; n != 0 {
		t.Errorf("1000 cached Token calls read the store %d times; want 0", n)
	}
	if _, err := tokens.Token(t.Context(), "nobody"); !errors.Is(err, auth.ErrUnknownTenant) {
		t.Errorf("Token(nobody) error = %v; want ErrUnknownTenant", err)
	}
}

func TestRefreshAheadIsOneBackgroundRefresh(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{AccessLifetime: time.Hour})
	st := store.NewMemory()
	tokens := replica(t, st, double, func(c *auth.Config) { c.RefreshAhead = 2 * time.Hour })
	old := double.NewGrant()
	importGrant(t, tokens, "acme", old, old.Expiry)
	// The refreshed token will be outside the refresh-ahead window.
	double.SetAccessLifetime(3 * time.Hour)

	stall := make(chan struct{})
	double.SetTokenFault(thanksiotest.TokenFault{Stall: stall})
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 100 {
		wg.Go(func() {
			got, err := tokens.Token(t.Context(), "acme")
			if err == nil && got != old.AccessToken {
				err = errors.New("got a token other than the current one: " + got[:3])
			}
			if err != nil {
				errs <- err
			}
		})
	}
	// Every caller returned while the token endpoint was still stalled: none
	// waited for the refresh.
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Token during refresh-ahead: %v", err)
	}
	waitTokenCalls(t, double, 1)
	if n := double.RefreshCalls(); n != 1 {
		t.Errorf("refresh calls while stalled = %d; want 1", n)
	}
	double.SetTokenFault(thanksiotest.TokenFault{})
	close(stall)

	var rec store.TokenRecord
	testutil.Eventually(t, "the rotated pair is stored", func() bool {
		rec, _ = st.Get(t.Context(), "acme")
		return rec.RefreshToken != old.RefreshToken
	})
	if !double.AccessValid(rec.AccessToken) || double.IsRevoked(rec.RefreshToken) {
		t.Errorf("stored pair is not the double's current grant")
	}
	if !double.IsRevoked(old.RefreshToken) {
		t.Errorf("old refresh token still valid at the double; the refresh did not rotate it")
	}
	testutil.Eventually(t, "callers get the new token", func() bool {
		got, err := tokens.Token(t.Context(), "acme")
		return err == nil && got == rec.AccessToken
	})
	for range 100 {
		_, _ = tokens.Token(t.Context(), "acme")
	}
	if n := double.RefreshCalls(); n != 1 {
		t.Errorf("refresh calls = %d; want exactly 1", n)
	}
	sent := 0
	for _, r := range double.TokenRequests() {
		if r.Form.Get("refresh_token") == old.RefreshToken {
			sent++
		}
	}
	if sent != 1 {
		t.Errorf("the old refresh token was sent %d times; want once", sent)
	}
}

func TestExpiredTokenCallersWaitForOneRefresh(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{AccessLifetime: time.Hour})
	st := store.NewMemory()
	// Three replicas, each with its own cache, share the store.
	replicas := []*auth.Tokens{replica(t, st, double), replica(t, st, double), replica(t, st, double)}
	g := importExpired(t, double, replicas[0], "acme")
	double.SetTokenFault(thanksiotest.TokenFault{Delay: 50 * time.Millisecond})

	var wg sync.WaitGroup
	var failures, wrong atomic.Int32
	tokensSeen := sync.Map{}
	for i := range 300 {
		wg.Go(func() {
			got, err := replicas[i%3].Token(t.Context(), "acme")
			if err != nil {
				failures.Add(1)
				return
			}
			if got == g.AccessToken {
				wrong.Add(1)
			}
			tokensSeen.Store(got, true)
		})
	}
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Errorf("%d of 300 callers failed; want none", n)
	}
	if n := wrong.Load(); n != 0 {
		t.Errorf("%d callers got the expired token", n)
	}
	if n := double.RefreshCalls(); n != 1 {
		t.Errorf("refresh calls = %d; want exactly 1 across three replicas", n)
	}
	distinct := 0
	tokensSeen.Range(func(k, _ any) bool {
		distinct++
		if !double.AccessValid(k.(string)) {
			t.Errorf("a caller got a token the double does not accept")
		}
		return true
	})
	if distinct != 1 {
		t.Errorf("callers got %d distinct tokens; want 1", distinct)
	}
}

func TestStaticTokenIsNeverRefreshed(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	tokens := replica(t, store.NewMemory(), double, func(c *auth.Config) { c.RefreshAhead = 24 * time.Hour })
	pat := double.NewPersonalAccessToken()
	if _, err := tokens.Import(t.Context(), "acme", auth.Grant{AccessToken: pat}); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if got, err := tokens.Token(t.Context(), "acme"); err != nil || got != pat {
			t.Fatalf("Token = %q, %v; want the personal access token", got, err)
		}
	}
	if _, err := tokens.RefreshNow(t.Context(), "acme"); !errors.Is(err, auth.ErrNoBetterToken) {
		t.Errorf("RefreshNow on a static token: %v; want ErrNoBetterToken", err)
	}
	if n := double.TokenCalls(); n != 0 {
		t.Errorf("token endpoint calls = %d; want 0", n)
	}
}

func TestRevokedRefreshTokenNeedsReauthorization(t *testing.T) {
	double, st, tokens, g := expiredOnMemory(t)
	double.Revoke(g.RefreshToken)

	if _, err := tokens.Token(t.Context(), "acme"); !errors.Is(err, auth.ErrReauthorizationRequired) {
		t.Fatalf("Token after revocation: %v; want ErrReauthorizationRequired", err)
	}
	calls := double.TokenCalls()
	// A second replica, with a cold cache, learns it from the store.
	other := replica(t, st, double)
	for _, r := range []*auth.Tokens{tokens, other} {
		if _, err := r.Token(t.Context(), "acme"); !errors.Is(err, auth.ErrReauthorizationRequired) {
			t.Errorf("Token: %v; want ErrReauthorizationRequired", err)
		}
	}
	if n := double.TokenCalls(); n != calls {
		t.Errorf("token endpoint called %d more times after the revocation; want 0", n-calls)
	}
	status, err := other.Status(t.Context(), "acme")
	if err != nil || status.State != store.StateReauthorizationRequired || status.LastError == "" {
		t.Errorf("Status = %+v, %v; want state reauthorization_required with a last error", status, err)
	}

	// Importing a new token recovers the tenant on every replica.
	fresh := double.NewGrant()
	importGrant(t, other, "acme", fresh, fresh.Expiry)
	testutil.Eventually(t, "the first replica serves the new token", func() bool {
		got, err := tokens.Token(t.Context(), "acme")
		return err == nil && got == fresh.AccessToken
	})
}

func TestRefreshRefusedAfterLostRaceIsNotRevocation(t *testing.T) {
	double, st, tokens, g := expiredOnMemory(t)

	// The refresh is held at the token endpoint while another writer
	// rotates the grant and stores the winner's pair.
	stall, done := stalledToken(t, double, tokens, "acme")
	winner, ok := double.Rotate(g.RefreshToken)
	if !ok {
		t.Fatal("Rotate failed")
	}
	rec, _ := st.Get(t.Context(), "acme")
	rec.AccessToken, rec.RefreshToken, rec.Expiry = winner.AccessToken, winner.RefreshToken, winner.Expiry
	if _, err := st.Put(t.Context(), "acme", rec, rec.Version); err != nil {
		t.Fatal(err)
	}
	close(stall)

	res := <-done
	if res.err != nil {
		t.Fatalf("Token after a lost race: %v; want the winner's token", res.err)
	}
	if res.token != winner.AccessToken {
		t.Errorf("Token after a lost race returned another token than the winner's")
	}
	status, _ := tokens.Status(t.Context(), "acme")
	if status.State != store.StateActive {
		t.Errorf("state = %q; want active (a lost race is not a revocation)", status.State)
	}
}

func TestTransientFailuresKeepServingValidToken(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	st := store.NewMemory()
	tokens := replica(t, st, double, func(c *auth.Config) { c.RefreshAhead = 2 * time.Hour })
	g := double.NewGrant()
	importGrant(t, tokens, "acme", g, time.Now().Add(time.Hour))
	double.SetTokenFault(thanksiotest.TokenFault{Status: 503})

	for range 50 {
		if got, err := tokens.Token(t.Context(), "acme"); err != nil || got != g.AccessToken {
			t.Fatalf("Token while the token endpoint fails = %q, %v; want the valid current token", got, err)
		}
		time.Sleep(10 * time.Millisecond) // callers spread over half a second, as real traffic is
	}
	testutil.Eventually(t, "the failure is recorded", func() bool {
		s, _ := tokens.Status(t.Context(), "acme")
		return s.LastError != ""
	})
	// Backoff: 50 calls did not become 50 refresh attempts.
	if n := double.RefreshCalls(); n < 1 || n > 2 {
		t.Errorf("refresh attempts = %d; want 1 or 2 under backoff", n)
	}

	// Once the token has expired, callers are told to come back later.
	importExpired(t, double, tokens, "expired")
	_, err := tokens.Token(t.Context(), "expired")
	var ue *auth.UnavailableError
	if !errors.As(err, &ue) || ue.RetryAfter < time.Second {
		t.Errorf("Token for an expired token while the endpoint fails: %v; want an UnavailableError with RetryAfter", err)
	}
}

func TestRefusedTokenIsReplaced(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	st := store.NewMemory()
	a, b := replica(t, st, double), replica(t, st, double)
	g := double.NewGrant()
	importGrant(t, a, "acme", g, g.Expiry)
	if got, _ := b.Token(t.Context(), "acme"); got != g.AccessToken {
		t.Fatal("replica b does not serve the imported token")
	}

	// Replica a refreshes; b is told by the upstream's 401 before any
	// invalidation: it must find a's token in the store, not refresh again.
	if _, err := a.RefreshNow(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	rec, _ := st.Get(t.Context(), "acme")
	got, err := b.Refused(t.Context(), "acme", g.AccessToken)
	if err != nil || got != rec.AccessToken {
		t.Errorf("Refused(old) = %v; want the stored token", err)
	}
	if n := double.RefreshCalls(); n != 1 {
		t.Errorf("refresh calls = %d; want 1", n)
	}

	// When the store holds the very token that was refused (revoked at
	// thanks.io), it is refreshed once.
	double.RevokeAccess(rec.AccessToken)
	got, err = b.Refused(t.Context(), "acme", rec.AccessToken)
	if err != nil || got == rec.AccessToken || !double.AccessValid(got) {
		t.Errorf("Refused(stored) = %v; want a fresh valid token", err)
	}
	// Refused again at once: no second refresh, the refusal stands.
	if _, err := b.Refused(t.Context(), "acme", got); !errors.Is(err, auth.ErrNoBetterToken) {
		t.Errorf("Refused(just refreshed) = %v; want ErrNoBetterToken", err)
	}
	if n := double.RefreshCalls(); n != 2 {
		t.Errorf("refresh calls = %d; want 2", n)
	}
}

func TestCacheIsBounded(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	st := &countingStore{Store: store.NewMemory()}
	tokens := replica(t, st, double, func(c *auth.Config) { c.CacheSize = 10 })
	want := map[string]string{}
	for i := range 50 {
		tenant := "t" + strconv.Itoa(i)
		g := double.NewGrant()
		importGrant(t, tokens, tenant, g, g.Expiry)
		want[tenant] = g.AccessToken
	}
	for range 3 {
		for tenant, tok := range want {
			if got, err := tokens.Token(t.Context(), tenant); err != nil || got != tok {
				t.Fatalf("Token(%q) = %v; want its own token", tenant, err)
			}
		}
	}
	if n := tokens.CachedTenants(); n > 10 {
		t.Errorf("cached tenants = %d; want at most CacheSize 10", n)
	}
	if st.gets.Load() == 0 {
		t.Errorf("evicted tenants were served without reading the store")
	}
}

func TestDeletedTenantStaysDeletedDuringARefresh(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	tokens := replica(t, store.NewMemory(), double, func(c *auth.Config) { c.RefreshAhead = 2 * time.Hour })
	g := double.NewGrant()
	importGrant(t, tokens, "acme", g, time.Now().Add(time.Hour))

	stall := make(chan struct{})
	double.SetTokenFault(thanksiotest.TokenFault{Stall: stall, Times: 1})
	if _, err := tokens.Token(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	waitTokenCalls(t, double, 1)
	if err := tokens.Forget(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	close(stall)
	testutil.Eventually(t, "the refresh has ended", func() bool {
		s, err := tokens.Status(t.Context(), "acme")
		return errors.Is(err, auth.ErrUnknownTenant) && !s.RefreshPending
	})
	for range 20 {
		if got, err := tokens.Token(t.Context(), "acme"); !errors.Is(err, auth.ErrUnknownTenant) {
			t.Fatalf("Token after Forget = %q, %v; want ErrUnknownTenant", got, err)
		}
		time.Sleep(5 * time.Millisecond) // let a late write show itself, if there were one
	}
}

func TestCloseDuringARefreshKeepsTheRotatedToken(t *testing.T) {
	double, st, tokens, g := expiredOnMemory(t)

	stall, _ := stalledToken(t, double, tokens, "acme")
	closed := make(chan struct{})
	go func() { tokens.Close(); close(closed) }()
	close(stall)
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return")
	}
	rec, err := st.Get(t.Context(), "acme")
	if err != nil || rec.RefreshToken == g.RefreshToken || double.IsRevoked(rec.RefreshToken) {
		t.Errorf("after Close during a refresh, the store holds a revoked refresh token (%v); the rotated one was lost", err)
	}
}
