package auth_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/proxy"
	"thanksio-proxy/store"
)

func TestThreeReplicasRefreshAnExpiredTokenOnce(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	open := testutil.RedisStores(t, "")
	replicas := []*auth.Tokens{replica(t, open(), double), replica(t, open(), double), replica(t, open(), double)}
	g := importExpired(t, double, replicas[0], "acme")
	double.SetTokenFault(thanksiotest.TokenFault{Delay: 50 * time.Millisecond})

	var wg sync.WaitGroup
	var failures atomic.Int32
	for i := range 1000 {
		wg.Go(func() {
			got, err := replicas[i%3].Token(t.Context(), "acme")
			if err != nil || got == g.AccessToken || !double.AccessValid(got) {
				failures.Add(1)
			}
		})
	}
	wg.Wait()
	if n := failures.Load(); n != 0 {
		t.Errorf("%d of 1000 calls failed or got an unusable token", n)
	}
	if n := double.TokenCalls(); n != 1 {
		t.Errorf("token endpoint calls = %d; want exactly 1", n)
	}
}

func TestSteadyLoadOverManyRefreshCycles(t *testing.T) {
	const lifetime, ahead, cycles = 2 * time.Second, time.Second, 10
	double := thanksiotest.NewServer(t, thanksiotest.Options{AccessLifetime: lifetime, StrictReuse: true})
	open := testutil.RedisStores(t, "")
	var replicas []*auth.Tokens
	for range 3 {
		replicas = append(replicas, replica(t, open(), double, func(c *auth.Config) {
			c.RefreshAhead = ahead
			c.BackgroundInterval = 100 * time.Millisecond
		}))
	}
	g := double.NewGrant()
	importGrant(t, replicas[0], "acme", g, g.Expiry)

	// Callers hit three proxies (one per replica) until the token has been
	// refreshed `cycles` times. A replica that still holds a token another
	// replica just rotated away gets a 401 from thanks.io and replays with
	// the current token, so no caller may see a 401 or a proxy error.
	var proxies []string
	for _, r := range replicas {
		h, err := proxy.New(proxy.Config{Tokens: r, Upstream: mustParse(t, double.APIURL())})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		proxies = append(proxies, srv.URL)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Duration(cycles+5)*(lifetime-ahead))
	defer cancel()
	var wg sync.WaitGroup
	var calls, bad atomic.Int64
	for i := range 12 {
		wg.Go(func() {
			for ctx.Err() == nil && double.RefreshCalls() < cycles {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, proxies[i%3]+"/ping", nil)
				req.Header.Set("X-Tenant-ID", "acme")
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						bad.Add(1)
					}
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				calls.Add(1)
				if res.StatusCode != http.StatusOK {
					if bad.Add(1) <= 3 {
						t.Logf("%s: %d %s", time.Now().Format("15:04:05.000"), res.StatusCode, res.Header.Get(proxy.ErrorHeader))
					}
				}
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("only %d refreshes before the deadline", double.RefreshCalls())
	}
	if n := bad.Load(); n != 0 {
		t.Errorf("%d of %d calls failed; want none", n, calls.Load())
	}
	for i, r := range double.TokenRequests() {
		if r.Status != 200 {
			t.Errorf("token request %d answered %d %s; want every refresh to succeed", i, r.Status, r.Error)
		}
	}
	if st, _ := replicas[1].Status(t.Context(), "acme"); st.State != store.StateActive || double.IsRevoked(currentRefresh(t, open(), "acme")) {
		t.Errorf("the grant was revoked during the run")
	}
	// One refresh per cycle: never two while a token was fresh.
	elapsed := time.Since(g.Expiry.Add(-lifetime))
	if max := int(elapsed/(lifetime-ahead)) + 1; double.RefreshCalls() > max {
		t.Errorf("%d refreshes in %v; at most %d cycles fit", double.RefreshCalls(), elapsed.Round(time.Millisecond), max)
	}
}

func mustParse(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func currentRefresh(t *testing.T, st auth.Store, tenant string) string {
	t.Helper()
	rec, err := st.Get(t.Context(), tenant)
	if err != nil {
		t.Fatal(err)
	}
	return rec.RefreshToken
}

func TestDeadLockHolderIsTakenOver(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	open := testutil.RedisStores(t, "")
	st := open()
	tokens := replica(t, open(), double, func(c *auth.Config) { c.LockWait = 10 * time.Second })
	g := importExpired(t, double, tokens, "acme")

	// A replica took the lock and died: it never renews nor releases it.
	if ok, err := st.TryLock(t.Context(), "acme", "dead-replica", 500*time.Millisecond); !ok || err != nil {
		t.Fatalf("TryLock = %v, %v", ok, err)
	}
	got, err := tokens.Token(t.Context(), "acme")
	if err != nil || !double.AccessValid(got) || got == g.AccessToken {
		t.Fatalf("Token after the holder died = %v; want a fresh token once its lease ran out", err)
	}
	if n := double.RefreshCalls(); n != 1 {
		t.Errorf("refresh calls = %d; want 1", n)
	}
}

// lockLosingStore cannot renew locks, as a replica cut off from Redis.
type lockLosingStore struct{ auth.Store }

func (lockLosingStore) RenewLock(context.Context, string, string, time.Duration) (bool, error) {
	return false, errors.New("connection refused")
}

func TestStalledHolderPastItsLeaseLosesCleanly(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	open := testutil.RedisStores(t, "")
	lease := func(c *auth.Config) { c.LockLease = 600 * time.Millisecond; c.RefreshTimeout = 20 * time.Second }
	a := replica(t, lockLosingStore{open()}, double, lease)
	b := replica(t, open(), double, lease)
	importExpired(t, double, a, "acme")

	// a's refresh stalls at the token endpoint past its lease.
	stall, aDone := stalledToken(t, double, a, "acme")
	// b takes over once a's lease has run out, and its refresh wins.
	bGot, err := b.Token(t.Context(), "acme")
	if err != nil || !double.AccessValid(bGot) {
		t.Fatalf("b.Token = %v; want b to refresh after a's lease ran out", err)
	}
	close(stall)
	aRes := <-aDone
	if aRes.err != nil {
		t.Fatalf("a.Token after losing the race = %v; want b's token", aRes.err)
	}
	if aRes.token != bGot {
		t.Errorf("a and b hand out different tokens; want b's, the winner's")
	}
	st, _ := b.Status(t.Context(), "acme")
	if st.State != store.StateActive || !double.AccessValid(bGot) {
		t.Errorf("after the race: state %q; want active with b's token valid", st.State)
	}
	if rec := currentRefresh(t, open(), "acme"); double.IsRevoked(rec) {
		t.Errorf("the stored refresh token is not the grant's current one: a rotated token was lost")
	}
}

// flakyPutStore fails its first puts, as a Redis that drops a write.
type flakyPutStore struct {
	auth.Store
	failures atomic.Int32
}

func (s *flakyPutStore) Put(ctx context.Context, tenant string, rec store.TokenRecord, prev int64) (int64, error) {
	if s.failures.Add(-1) >= 0 {
		return 0, errors.New("connection reset")
	}
	return s.Store.Put(ctx, tenant, rec, prev)
}

func TestRotatedTokenIsKeptUntilItsWriteLands(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{StrictReuse: true})
	open := testutil.RedisStores(t, "")
	flaky := &flakyPutStore{Store: open()}
	tokens := replica(t, flaky, double)
	importExpired(t, double, tokens, "acme")
	flaky.failures.Store(3)

	got, err := tokens.Token(t.Context(), "acme")
	if err != nil || !double.AccessValid(got) {
		t.Fatalf("Token while the store refuses writes = %v; want the refreshed token from memory", err)
	}
	other := open()
	testutil.Eventually(t, "the rotated pair reaches the store", func() bool {
		rec, err := other.Get(t.Context(), "acme")
		return err == nil && rec.AccessToken == got && !double.IsRevoked(rec.RefreshToken)
	})
	if n := double.RefreshCalls(); n != 1 {
		t.Errorf("refresh calls = %d; want 1 (the old refresh token never sent again)", n)
	}
}

func TestRedisOutageIsSurvived(t *testing.T) {
	// Append-only with fsync on every write, so that a restart keeps the data.
	redis, double, open := ownedRedis(t, thanksiotest.Options{}, "--appendonly", "yes", "--appendfsync", "always")
	a, b := replica(t, open(), double), replica(t, open(), double)
	cached := double.NewGrant()
	importGrant(t, a, "cached", cached, cached.Expiry)
	for _, r := range []*auth.Tokens{a, b} {
		if got, err := r.Token(t.Context(), "cached"); err != nil || got != cached.AccessToken {
			t.Fatalf("warming: %v", err)
		}
	}
	due := double.NewGrant()
	importGrant(t, a, "due", due, time.Now().Add(2*time.Minute)) // within the 5m refresh-ahead window

	redis.Kill()
	for range 100 {
		for _, r := range []*auth.Tokens{a, b} {
			if got, err := r.Token(t.Context(), "cached"); err != nil || got != cached.AccessToken {
				t.Fatalf("Token for a cached tenant with Redis down = %v; want the cached token", err)
			}
		}
		if got, err := a.Token(t.Context(), "due"); err != nil || got != due.AccessToken {
			t.Fatalf("Token for a due tenant with Redis down = %v; want the still-valid token", err)
		}
	}
	if n := double.TokenCalls(); n != 0 {
		t.Errorf("token endpoint calls with Redis down = %d; want 0 (never refresh without the lock)", n)
	}
	if _, err := b.Token(t.Context(), "uncached"); !errors.Is(err, auth.ErrTokenUnavailable) {
		t.Errorf("Token for an uncached tenant with Redis down = %v; want ErrTokenUnavailable", err)
	}

	redis.Restart()
	// Refresh works again without a restart.
	testutil.Eventually(t, "the due tenant is refreshed after Redis returned", func() bool {
		_, _ = a.Token(t.Context(), "due")
		return double.RefreshCalls() == 1 && double.IsRevoked(due.RefreshToken)
	})
	// Invalidation works again: an import through a reaches b's cache.
	fresh := double.NewGrant()
	testutil.Eventually(t, "b serves a token imported through a", func() bool {
		importGrant(t, a, "cached", fresh, fresh.Expiry)
		got, err := b.Token(t.Context(), "cached")
		return err == nil && got == fresh.AccessToken
	})
}
