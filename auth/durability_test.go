package auth_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/store"
)

// These tests follow a rotated refresh token through the faults production
// brings, and count, at the test double's token endpoint, every refresh token
// presented twice: one is enough to make a strict server revoke the grant,
// and the account owner then has to connect again by hand.

// refusingPutStore refuses record writes while refusing is set, as a Redis
// that drops the connection or answers OOM, while locks still work.
type refusingPutStore struct {
	auth.Store
	refusing atomic.Bool
}

func (s *refusingPutStore) Put(ctx context.Context, tenant string, rec store.TokenRecord, prev int64) (int64, error) {
	if s.refusing.Load() {
		return 0, errors.New("connection reset by peer")
	}
	return s.Store.Put(ctx, tenant, rec, prev)
}

// checkGrantAlive fails the test if a refresh token was presented twice, or
// if the store does not hold the grant's current refresh token.
func checkGrantAlive(t *testing.T, double *thanksiotest.Server, st auth.Store, tenant string) {
	t.Helper()
	if n := double.RefreshTokenReuses(); n != 0 {
		t.Errorf("refresh tokens presented twice: %d; want 0", n)
	}
	rec, err := st.Get(t.Context(), tenant)
	if err != nil {
		t.Fatalf("Get(%q): %v", tenant, err)
	}
	if double.IsRevoked(rec.RefreshToken) {
		t.Errorf("the stored refresh token of %q is revoked: a rotated token was lost", tenant)
	}
}

// checkRotationLands waits until b serves tok, the token of acme's one
// rotation, once what has happened, and then fails the test unless the
// double saw that one refresh and st holds the grant's live refresh token.
func checkRotationLands(t *testing.T, double *thanksiotest.Server, b *auth.Tokens, st auth.Store, tok, what string) {
	t.Helper()
	testutil.Eventually(t, "b serves the rotated token once "+what, func() bool {
		got, err := b.Token(t.Context(), "acme")
		return err == nil && got == tok
	})
	if n := double.RefreshCalls(); n != 1 {
		t.Errorf("refresh calls = %d; want 1", n)
	}
	checkGrantAlive(t, double, st, "acme")
}

func TestLockIsHeldWhileARotatedTokenAwaitsItsWrite(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{StrictReuse: true})
	open := testutil.RedisStores(t, "")
	refusing := &refusingPutStore{Store: open()}
	a := replica(t, refusing, double)
	b := replica(t, open(), double, func(c *auth.Config) { c.LockWait = time.Second })
	g := importExpired(t, double, b, "acme")
	if _, err := b.Status(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}

	refusing.refusing.Store(true)
	got, err := a.Token(t.Context(), "acme")
	if err != nil || !double.AccessValid(got) {
		t.Fatalf("a.Token while the store refuses writes = %v; want the rotated token, from memory", err)
	}
	// The store still holds the pair thanks.io revoked at the rotation. b
	// must neither refresh with it (its token expired) nor force a refresh
	// after a 401 on it: a holds the lock until its write lands.
	if _, err := b.Token(t.Context(), "acme"); !errors.Is(err, auth.ErrTokenUnavailable) {
		t.Errorf("b.Token while a's write is pending = %v; want ErrTokenUnavailable", err)
	}
	if _, err := b.Refused(t.Context(), "acme", g.AccessToken); !errors.Is(err, auth.ErrTokenUnavailable) {
		t.Errorf("b.Refused while a's write is pending = %v; want ErrTokenUnavailable", err)
	}
	if st, err := a.Status(t.Context(), "acme"); err != nil || !st.RefreshPending {
		t.Errorf("a.Status = %+v, %v; want refresh_pending", st, err)
	}

	refusing.refusing.Store(false)
	checkRotationLands(t, double, b, open(), got, "its write lands")
}

func TestStoreRefusingWritesForTenSecondsLosesNoRotation(t *testing.T) {
	redis, double, open := ownedRedis(t, thanksiotest.Options{StrictReuse: true})
	// The default lease, which must outlast the outage.
	lease := func(c *auth.Config) { c.LockLease = 0; c.LockWait = 200 * time.Millisecond }
	a, b := replica(t, open(), double, lease), replica(t, open(), double, lease)
	importExpired(t, double, a, "acme")

	stall, aDone := stalledToken(t, double, a, "acme")
	// The primary now refuses every write (the lock's renewal included)
	// while reads work, as it does when it loses its replicas.
	admin := redis.Client()
	if err := admin.ConfigSet(t.Context(), "min-replicas-to-write", "1").Err(); err != nil {
		t.Fatal(err)
	}
	close(stall)
	aRes := <-aDone
	if aRes.err != nil || !double.AccessValid(aRes.token) {
		t.Fatalf("a.Token = %v; want the rotated token, served from memory", aRes.err)
	}
	aGot := aRes.token

	// Ten seconds of callers on both replicas while writes are refused,
	// each calling every millisecond.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var served, refused atomic.Int64
	for i := range 4 {
		wg.Go(func() {
			r := []*auth.Tokens{a, b}[i%2]
			pace := time.NewTicker(time.Millisecond)
			defer pace.Stop()
			for ctx.Err() == nil {
				<-pace.C
				tok, err := r.Token(ctx, "acme")
				switch {
				case err == nil && double.AccessValid(tok):
					served.Add(1)
				case errors.Is(err, auth.ErrTokenUnavailable), ctx.Err() != nil:
					refused.Add(1)
				default:
					t.Errorf("Token during the write outage = %v", err)
					return
				}
				if r == b && err == nil {
					_, _ = b.Refused(ctx, "acme", tok)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("during the outage: %d calls served, %d answered token_unavailable", served.Load(), refused.Load())

	if err := admin.ConfigSet(t.Context(), "min-replicas-to-write", "0").Err(); err != nil {
		t.Fatal(err)
	}
	checkRotationLands(t, double, b, open(), aGot, "the rotated pair reaches the store")
}

func TestCloseKeepsTheLockUntilItsRefreshEnds(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{StrictReuse: true})
	open := testutil.RedisStores(t, "")
	lease := func(c *auth.Config) { c.LockLease = 600 * time.Millisecond; c.RefreshTimeout = 20 * time.Second }
	a := replica(t, open(), double, lease)
	b := replica(t, open(), double, lease, func(c *auth.Config) { c.LockWait = 3 * time.Second })
	importExpired(t, double, a, "acme")

	stall, _ := stalledToken(t, double, a, "acme")
	// SIGTERM: a closes while its refresh is stalled at the token endpoint.
	closed := make(chan struct{})
	go func() {
		a.Close()
		close(closed)
	}()

	// b waits five of a's leases and never takes the lock.
	if _, err := b.Token(t.Context(), "acme"); !errors.Is(err, auth.ErrTokenUnavailable) {
		t.Errorf("b.Token while a's refresh runs = %v; want ErrTokenUnavailable", err)
	}
	select {
	case <-closed:
		t.Error("Close returned while its refresh was still running")
	default:
	}
	close(stall)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return after its refresh ended")
	}
	if n := double.RefreshCalls(); n != 1 {
		t.Errorf("refresh calls = %d; want 1", n)
	}
	checkGrantAlive(t, double, open(), "acme")
	if got, err := b.Token(t.Context(), "acme"); err != nil || !double.AccessValid(got) {
		t.Errorf("b.Token after a stopped = %v; want the token a stored", err)
	}
}

func TestRotationSurvivesASentinelFailover(t *testing.T) {
	primary := testutil.StartRedis(t)
	standby := testutil.StartReplica(t, primary)
	sentinel := testutil.StartSentinel(t, primary, "thanksio")
	double := thanksiotest.NewServer(t, thanksiotest.Options{StrictReuse: true})
	open := testutil.RedisStores(t, sentinel.URL())
	a := replica(t, open(), double, func(c *auth.Config) { c.LockLease = 0 })
	importExpired(t, double, a, "acme")

	// Replication lags: the primary acknowledges the rotation alone.
	standby.Pause()
	got, err := a.Token(t.Context(), "acme")
	if err != nil || !double.AccessValid(got) {
		t.Fatalf("a.Token = %v; want the rotated token", err)
	}
	// The primary dies before the replica has the rotation; the replica
	// is promoted with the pair thanks.io revoked.
	primary.Kill()
	standby.Resume()
	sentinel.WaitMaster(t, standby.Addr())

	reader := open()
	testutil.Eventually(t, "the promoted replica holds the rotated pair", func() bool {
		rec, err := reader.Get(t.Context(), "acme")
		return err == nil && rec.AccessToken == got
	})
	checkGrantAlive(t, double, reader, "acme")
	if _, err := a.RefreshNow(t.Context(), "acme"); err != nil {
		t.Errorf("RefreshNow after the failover = %v; want the grant alive", err)
	}
	if n := double.RefreshTokenReuses(); n != 0 {
		t.Errorf("refresh tokens presented twice: %d; want 0", n)
	}
}

// lossObserver counts the store data losses a replica noticed.
type lossObserver struct {
	losses atomic.Int32
}

func (*lossObserver) CacheLookup(string, string)      {}
func (*lossObserver) Refreshed(string, time.Duration) {}
func (*lossObserver) LockWaited(bool, time.Duration)  {}
func (*lossObserver) StoreError(string)               {}
func (*lossObserver) Injected(time.Duration, bool)    {}
func (*lossObserver) PendingWrite(int)                {}
func (*lossObserver) Invalidations(bool, time.Time)   {}
func (*lossObserver) CacheEvicted()                   {}
func (*lossObserver) Callback(string)                 {}
func (o *lossObserver) StoreDataLost()                { o.losses.Add(1) }

func TestRedisRestartedEmptyUnderLoad(t *testing.T) {
	redis, double, open := ownedRedis(t, thanksiotest.Options{StrictReuse: true}) // no persistence
	var replicas []*auth.Tokens
	var observers []*lossObserver
	for range 3 {
		o := &lossObserver{}
		observers = append(observers, o)
		replicas = append(replicas, replica(t, open(), double, func(c *auth.Config) { c.Observer = o }))
	}
	const n = 30
	grants := make(map[string]thanksiotest.Token)
	for i := range n {
		tenant := fmt.Sprintf("tenant-%02d", i)
		g := double.NewGrant()
		grants[tenant] = g
		importGrant(t, replicas[0], tenant, g, g.Expiry)
	}
	gone := double.NewGrant()
	importGrant(t, replicas[0], "gone", gone, gone.Expiry)
	for _, r := range replicas {
		for tenant, g := range grants {
			if got, err := r.Token(t.Context(), tenant); err != nil || got != g.AccessToken {
				t.Fatalf("warming %s: %v", tenant, err)
			}
		}
		if _, err := r.Token(t.Context(), "gone"); err != nil {
			t.Fatal(err)
		}
	}
	// Deleted before the loss: every replica forgets it, so none writes it back.
	if err := replicas[1].Forget(t.Context(), "gone"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "every replica forgets the deleted tenant", func() bool {
		for _, r := range replicas {
			if _, err := r.Token(t.Context(), "gone"); !errors.Is(err, auth.ErrUnknownTenant) {
				return false
			}
		}
		return true
	})

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	var calls, failures atomic.Int64
	for range 6 {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := rand.N(n)
				tenant := fmt.Sprintf("tenant-%02d", i)
				got, err := replicas[i%3].Token(ctx, tenant)
				calls.Add(1)
				if ctx.Err() == nil && (err != nil || got != grants[tenant].AccessToken) {
					if failures.Add(1) <= 3 {
						t.Errorf("Token(%s) across the restart = %v; want the tenant's token", tenant, err)
					}
				}
			}
		})
	}
	redis.Restart() // empty: no persistence

	reader := open()
	testutil.Eventually(t, "every tenant is written back", func() bool {
		for tenant, g := range grants {
			rec, err := reader.Get(t.Context(), tenant)
			if err != nil || rec.AccessToken != g.AccessToken || rec.RefreshToken != g.RefreshToken {
				return false
			}
		}
		return true
	})
	cancel()
	wg.Wait()
	t.Logf("%d calls across the restart, %d failed", calls.Load(), failures.Load())
	if _, err := reader.Get(t.Context(), "gone"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get(gone) after the write-back = %v; want ErrNotFound (a deleted tenant is not resurrected)", err)
	}
	// Two replicas may write everything back before the third reads the
	// epoch (every epochCheckInterval, or after its reconnect): each one
	// notices the loss, and only once.
	testutil.Eventually(t, "every replica notices the data loss", func() bool {
		for _, o := range observers {
			if o.losses.Load() == 0 {
				return false
			}
		}
		return true
	})
	for i, o := range observers {
		if o.losses.Load() != 1 {
			t.Errorf("replica %d noticed %d data losses; want 1", i, o.losses.Load())
		}
	}
	// The indexes follow each write-back, just after its record.
	testutil.Eventually(t, fmt.Sprintf("List shows the %d tenants written back", n), func() bool {
		tenants, _, err := reader.List(t.Context(), "", 100)
		return err == nil && len(tenants) == n
	})
	// The written-back refresh tokens are the live ones.
	for _, tenant := range []string{"tenant-00", "tenant-01"} {
		if _, err := replicas[2].RefreshNow(t.Context(), tenant); err != nil {
			t.Errorf("RefreshNow(%s) after the write-back = %v", tenant, err)
		}
	}
	if n := double.RefreshTokenReuses(); n != 0 {
		t.Errorf("refresh tokens presented twice: %d; want 0", n)
	}
}

func TestRefusedTokenForcesOneRotationAcrossReplicas(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{StrictReuse: true})
	open := testutil.RedisStores(t, "")
	replicas := []*auth.Tokens{replica(t, open(), double), replica(t, open(), double), replica(t, open(), double)}
	g := double.NewGrant()
	importGrant(t, replicas[0], "acme", g, g.Expiry)

	// thanks.io refuses every token of a suspended account, freshly issued
	// ones included: 12 refusals over 3 replicas.
	refusals := 0
	for range 4 {
		for _, r := range replicas {
			tok, err := r.Token(t.Context(), "acme")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.Refused(t.Context(), "acme", tok); errors.Is(err, auth.ErrNoBetterToken) {
				refusals++
			}
		}
	}
	if n := double.RefreshCalls(); n != 1 {
		t.Errorf("refresh calls for 12 refusals over 3 replicas = %d; want 1", n)
	}
	if refusals < 9 {
		t.Errorf("refusals passed to the caller = %d; want at least 9 (every one after the rotation)", refusals)
	}
	checkGrantAlive(t, double, open(), "acme")
}
