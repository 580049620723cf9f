package auth_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/store"
)

// These tests check that an operator's decision (a DELETE, an import that
// replaces a grant) is never undone by a replica's cache: thanks.io does not
// refuse the old token, so nothing else would correct it.

// gatedGetStore holds each Get, after it read the record, until release is
// closed, and tells entered when one is held.
type gatedGetStore struct {
	auth.Store
	entered chan struct{}
	release chan struct{}
}

func (s *gatedGetStore) Get(ctx context.Context, tenant string) (store.TokenRecord, error) {
	rec, err := s.Store.Get(ctx, tenant)
	select {
	case s.entered <- struct{}{}:
		<-s.release
	default:
	}
	return rec, err
}

func TestFillStartedBeforeADeletionIsDropped(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	open := testutil.RedisStores(t, "")
	gated := &gatedGetStore{Store: open(), entered: make(chan struct{}), release: make(chan struct{})}
	a, b := replica(t, open(), double), replica(t, gated, double)
	g := double.NewGrant()
	importGrant(t, a, "acme", g, g.Expiry)

	// b reads the record, and is held before it caches it.
	done := make(chan error, 1)
	go func() {
		_, err := b.Token(context.Background(), "acme")
		done <- err
	}()
	<-gated.entered
	if err := a.Forget(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "b hears of the deletion", func() bool { return b.CachedTenants() == 0 })
	close(gated.release)
	if err := <-done; !errors.Is(err, auth.ErrUnknownTenant) {
		t.Errorf("b.Token whose read started before the DELETE = %v; want ErrUnknownTenant", err)
	}
	checkForgotten(t, "b", b, "after the DELETE")
}

func TestDeletedDuringRefreshIsNeverServed(t *testing.T) {
	const tenants, rounds = 300, 3
	for round := range rounds {
		t.Run(fmt.Sprintf("round %d", round), func(t *testing.T) {
			double := thanksiotest.NewServer(t, thanksiotest.Options{})
			open := testutil.RedisStores(t, "")
			a := replica(t, open(), double)
			b := replica(t, open(), double, func(c *auth.Config) { c.LockWait = 2 * time.Second })
			// Half the tokens have expired (callers wait for the refresh),
			// half are due (refreshed in the background while served).
			for i := range tenants {
				g := double.NewGrant()
				expiry := time.Now().Add(-time.Second)
				if i%2 == 1 {
					expiry = time.Now().Add(2 * time.Minute)
				}
				importGrant(t, a, fmt.Sprintf("t%03d", i), g, expiry)
			}
			// Refreshes take a while, so deletions land while they finish.
			double.SetTokenFault(thanksiotest.TokenFault{Delay: 20 * time.Millisecond})

			var wg sync.WaitGroup
			var served atomic.Int64
			for i := range tenants {
				tenant := fmt.Sprintf("t%03d", i)
				wg.Go(func() { _, _ = b.Token(context.Background(), tenant) })
				wg.Go(func() {
					// Around the moment the refresh's answer arrives (the
					// token endpoint takes 20 ms), where a fill and a
					// deletion cross.
					time.Sleep(18*time.Millisecond + rand.N(8*time.Millisecond))
					if err := a.Forget(context.Background(), tenant); err != nil {
						t.Errorf("Forget(%s): %v", tenant, err)
						return
					}
					// The bound under test: 100 ms after the DELETE answered.
					time.Sleep(100 * time.Millisecond)
					if _, err := b.Token(context.Background(), tenant); !errors.Is(err, auth.ErrUnknownTenant) {
						if served.Add(1) <= 3 {
							t.Errorf("b.Token(%s) 100 ms after the DELETE = %v; want ErrUnknownTenant", tenant, err)
						}
					}
				})
			}
			wg.Wait()
			if n := served.Load(); n != 0 {
				t.Errorf("%d of %d deleted tenants still served 100 ms after the DELETE", n, tenants)
			}
		})
	}
}

// publishFailingStore deletes, then reports that the invalidation failed.
type publishFailingStore struct{ auth.Store }

func (s publishFailingStore) Delete(ctx context.Context, tenant string) (bool, error) {
	removed, err := s.Store.Delete(ctx, tenant)
	if err != nil {
		return removed, err
	}
	return removed, errors.New("store: delete: publish: NOPERM this user has no permissions to access one of the channels")
}

func TestForgetDropsItsCacheWhenTheInvalidationFails(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	// Its own invalidation does not come back either.
	a := replica(t, publishFailingStore{deafStore{testutil.RedisStores(t, "")()}}, double)
	g := double.NewGrant()
	importGrant(t, a, "acme", g, g.Expiry)
	if _, err := a.Token(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	if err := a.Forget(t.Context(), "acme"); !errors.Is(err, auth.ErrTokenUnavailable) {
		t.Errorf("Forget with the invalidation failing = %v; want ErrTokenUnavailable (repeat the DELETE)", err)
	}
	checkForgotten(t, "a", a, "on the replica that deleted")
}

// deafStore never delivers invalidations, as a replica whose subscription
// was lost without its knowing.
type deafStore struct{ auth.Store }

func (deafStore) Subscribe(context.Context, func(store.Invalidation), func()) error { return nil }

func TestReauthorizationIsReadAgainAfterAWhile(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	open := testutil.RedisStores(t, "")
	c := testutil.NewClock(time.Now())
	a := replica(t, open(), double)
	b := replica(t, deafStore{open()}, double, func(cfg *auth.Config) { cfg.Now = c.Now })
	g := importExpired(t, double, a, "acme")
	double.Revoke(g.RefreshToken)
	if _, err := b.Token(t.Context(), "acme"); !errors.Is(err, auth.ErrReauthorizationRequired) {
		t.Fatalf("b.Token with a revoked grant = %v; want ErrReauthorizationRequired", err)
	}

	// The owner connects again; b misses the invalidation.
	fresh := double.NewGrant()
	importGrant(t, a, "acme", fresh, fresh.Expiry)
	if _, err := b.Token(t.Context(), "acme"); !errors.Is(err, auth.ErrReauthorizationRequired) {
		t.Fatalf("b.Token at once = %v; want the cached ErrReauthorizationRequired", err)
	}
	c.Advance(31 * time.Second)
	if got, err := b.Token(t.Context(), "acme"); err != nil || got != fresh.AccessToken {
		t.Errorf("b.Token 31 s later = %v; want the reconnected tenant's token", err)
	}
}

func TestReplicaWithoutChannelPermissionSaysSoAndRevalidates(t *testing.T) {
	redis := testutil.StartRedis(t)
	// A Redis 7 user with every command and key, but no channel: the
	// default of acl-pubsub-default, made explicit.
	if err := redis.Client().Do(t.Context(), "ACL", "SETUSER", "proxy", "on", ">secret", "~*", "+@all", "resetchannels").Err(); err != nil {
		t.Fatal(err)
	}
	url := strings.Replace(redis.URL(), "redis://", "redis://proxy:secret@", 1)
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	open := testutil.RedisStores(t, url)
	const revalidate = time.Second
	fast := func(c *auth.Config) { c.CacheRevalidate = revalidate }
	a, b := replica(t, open(), double, fast), replica(t, open(), double, fast)
	g := double.NewGrant()
	if _, err := a.Import(t.Context(), "acme", auth.Grant{AccessToken: g.AccessToken, RefreshToken: g.RefreshToken, Expiry: g.Expiry}); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Token(t.Context(), "acme"); err != nil || got != g.AccessToken {
		t.Fatalf("b.Token = %v", err)
	}

	testutil.Eventually(t, "b reports that invalidations do not reach it", func() bool {
		ok, _ := b.Invalidations()
		return !ok
	})
	// The DELETE cannot be announced; the record is gone all the same.
	deleted := time.Now()
	if err := a.Forget(t.Context(), "acme"); !errors.Is(err, auth.ErrTokenUnavailable) {
		t.Errorf("Forget without channel permission = %v; want ErrTokenUnavailable (the invalidation failed)", err)
	}
	testutil.Eventually(t, "b stops serving the deleted tenant", func() bool {
		_, err := b.Token(t.Context(), "acme")
		return errors.Is(err, auth.ErrUnknownTenant)
	})
	// Entries are re-read once older than CACHE_REVALIDATE, by a pass every
	// heartbeat (2 s).
	if took, bound := time.Since(deleted), revalidate+2*time.Second+time.Second; took > bound {
		t.Errorf("b served the deleted tenant for %v; want at most %v", took.Round(time.Millisecond), bound)
	}
}
