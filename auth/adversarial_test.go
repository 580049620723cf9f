package auth_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/store"
)

// Adversarial interleavings of the token lifecycle: each test forces one
// (with a small store wrapper, or a real Redis losing its data) and checks a
// guarantee of README's "How tokens are kept fresh" and "Durability".

// gatedPutStore refuses Puts while failing is set; while hold is set, the
// next Put that lands is held, after Redis took it, until release is
// closed (landed is closed when it is held): a writer descheduled between
// its write and what it does next.
type gatedPutStore struct {
	auth.Store
	failing atomic.Bool
	hold    atomic.Bool
	landed  chan struct{}
	release chan struct{}
}

func newGatedPutStore(st auth.Store) *gatedPutStore {
	return &gatedPutStore{Store: st, landed: make(chan struct{}), release: make(chan struct{})}
}

func (s *gatedPutStore) Put(ctx context.Context, tenant string, rec store.TokenRecord, prev int64) (int64, error) {
	if s.failing.Load() {
		return 0, errors.New("connection reset by peer")
	}
	v, err := s.Store.Put(ctx, tenant, rec, prev)
	if err == nil && s.hold.CompareAndSwap(true, false) {
		close(s.landed)
		<-s.release
	}
	return v, err
}

// gatedReplicas starts a strict double and two replicas sharing a Redis, a
// writing through a gatedPutStore, and imports through a a grant for acme
// whose access token has expired.
func gatedReplicas(t *testing.T) (double *thanksiotest.Server, gated *gatedPutStore, a, b *auth.Tokens) {
	t.Helper()
	double = thanksiotest.NewServer(t, thanksiotest.Options{StrictReuse: true})
	open := testutil.RedisStores(t, "")
	gated = newGatedPutStore(open())
	a = replica(t, gated, double)
	b = replica(t, open(), double)
	importExpired(t, double, a, "acme")
	return double, gated, a, b
}

// forgetThrough deletes acme through a, or through b when deleter is
// "another replica", and gives the deletion's invalidation 100 ms to reach
// every replica.
func forgetThrough(t *testing.T, deleter string, a, b *auth.Tokens) {
	t.Helper()
	del := a
	if deleter == "another replica" {
		del = b
	}
	if err := del.Forget(t.Context(), "acme"); err != nil {
		t.Fatalf("Forget: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
}

func waitClosed(t *testing.T, what string, c <-chan struct{}) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting until %s", what)
	}
}

// A pending write lands just before a DELETE; its writer caches the
// rotated token after the deletion was applied to the cache. The deleted
// tenant must not be served again, on the replica that deleted it or on
// any other.
func TestAdversarialPendingWriteLandingBeforeADeleteIsNotServedAfterIt(t *testing.T) {
	for _, deleter := range []string{"same replica", "another replica"} {
		t.Run(deleter, func(t *testing.T) {
			double, gated, a, b := gatedReplicas(t)

			gated.failing.Store(true)
			rotated, err := a.Token(t.Context(), "acme")
			if err != nil || !double.AccessValid(rotated) {
				t.Fatalf("a.Token while writes fail = %v; want the rotated token from memory", err)
			}
			// The pending writer's next attempt lands, and is held there.
			gated.hold.Store(true)
			gated.failing.Store(false)
			waitClosed(t, "the pending write lands", gated.landed)

			forgetThrough(t, deleter, a, b)
			close(gated.release)
			time.Sleep(300 * time.Millisecond)

			for name, r := range map[string]*auth.Tokens{"a": a, "b": b} {
				if tok, err := r.Token(t.Context(), "acme"); !errors.Is(err, auth.ErrUnknownTenant) {
					t.Errorf("%s.Token 400 ms after Forget returned = %q, %v; want ErrUnknownTenant (served rotated token: %v)",
						name, short(tok), err, tok == rotated)
				}
			}
		})
	}
}

// An import whose write lands just before a DELETE caches its token after
// the deletion was applied: the store says deleted, the replica serves the
// token until it expires.
func TestAdversarialImportLandingBeforeADeleteIsNotServedAfterIt(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	open := testutil.RedisStores(t, "")
	gated := newGatedPutStore(open())
	a := replica(t, gated, double)
	b := replica(t, open(), double)
	g := double.NewGrant()

	gated.hold.Store(true)
	imported := make(chan error, 1)
	go func() {
		_, err := a.Import(context.Background(), "acme", auth.Grant{AccessToken: g.AccessToken, RefreshToken: g.RefreshToken, Expiry: g.Expiry})
		imported <- err
	}()
	waitClosed(t, "the import's write lands", gated.landed)
	if err := b.Forget(t.Context(), "acme"); err != nil {
		t.Fatalf("Forget: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	close(gated.release)
	if err := <-imported; err != nil {
		t.Fatalf("Import: %v", err)
	}
	if _, err := open().Get(t.Context(), "acme"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("store after the DELETE = %v; want ErrNotFound", err)
	}
	checkForgottenAfter(t, 100*time.Millisecond, "a", a, "for a tenant the store holds deleted")
}

// Redis loses its data (a restart without persistence, a FLUSHALL, a
// Cluster shard's loss); the operator then deletes a tenant before the
// write-back. The deletion's tombstone keeps version 0, and every replica
// that caches the tenant at version 1 or more keeps serving it, although
// invalidations work.
func TestAdversarialDeleteAfterADataLossReachesEveryReplica(t *testing.T) {
	redis, double, open := ownedRedis(t, thanksiotest.Options{})
	a, b := replica(t, open(), double), replica(t, open(), double)
	g := double.NewGrant()
	importGrant(t, a, "acme", g, g.Expiry)
	for _, r := range []*auth.Tokens{a, b} {
		if _, err := r.Token(t.Context(), "acme"); err != nil {
			t.Fatal(err)
		}
	}
	flushAll(t, redis)
	if err := b.Forget(t.Context(), "acme"); err != nil {
		t.Fatalf("b.Forget: %v", err)
	}
	checkForgottenAfter(t, 150*time.Millisecond, "a", a, "150 ms after b's DELETE")
	// a stops only at its next epoch check (up to 5 s later), whose
	// re-validation finds the tombstone; in Redis Cluster, where the
	// epoch lives on another shard than the one that lost its data, never.
}

// A tenant needed reauthorization; Redis loses its data; the account owner
// connects again (a new grant, stored at version 1, since versions restart
// with the lost hash). A replica that cached the revoked record at a higher
// version writes it back over the new grant: the tenant is
// reauthorization_required again and its new grant is lost.
func TestAdversarialWriteBackAfterADataLossDoesNotUndoAReconnect(t *testing.T) {
	redis, double, open := ownedRedis(t, thanksiotest.Options{})
	a, b := replica(t, open(), double), replica(t, open(), double)
	g := importExpired(t, double, a, "acme")
	double.Revoke(g.RefreshToken)
	if _, err := a.Token(t.Context(), "acme"); !errors.Is(err, auth.ErrReauthorizationRequired) {
		t.Fatalf("a.Token with a revoked grant = %v; want ErrReauthorizationRequired", err)
	}
	flushAll(t, redis)
	// The owner connects again, through b.
	fresh := double.NewGrant()
	importGrant(t, b, "acme", fresh, fresh.Expiry)

	// a notices the loss within 5 s (its epoch check) and writes back.
	deadline := time.Now().Add(7 * time.Second)
	reader := open()
	for time.Now().Before(deadline) {
		rec, err := reader.Get(t.Context(), "acme")
		if err != nil || rec.AccessToken != fresh.AccessToken {
			t.Errorf("store after the write-back = state %q, reconnected grant: %v, err %v; want the reconnected grant",
				rec.State, rec.AccessToken == fresh.AccessToken, err)
			if _, err := b.Token(t.Context(), "acme"); err != nil {
				t.Errorf("b.Token for the reconnected tenant = %v", err)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Redis restarts empty while a refresh is at the token endpoint. The lock
// went with the data, and its holder takes it back only at its next renewal
// (up to 5 s later); meanwhile the replicas write back what they cache,
// which is the refresh token being redeemed. Another replica takes the free
// lock, reads the written-back record and presents the same refresh token.
func TestAdversarialDataLossDuringARefreshPresentsNoTokenTwice(t *testing.T) {
	redis, double, open := ownedRedis(t, thanksiotest.Options{StrictReuse: true}) // no persistence
	// The default lease (45 s, renewed every 5 s).
	lease := func(c *auth.Config) { c.LockLease = 0; c.LockWait = 2 * time.Second }
	a, b := replica(t, open(), double, lease), replica(t, open(), double, lease)
	importExpired(t, double, a, "acme")

	stall, aDone := stalledToken(t, double, a, "acme")

	redis.Restart() // empty
	reader := open()
	testutil.Eventually(t, "a replica writes the tenant back", func() bool {
		_, err := reader.Get(t.Context(), "acme")
		return err == nil
	})
	// b's callers find the token expired.
	_, bErr := b.Token(t.Context(), "acme")
	close(stall)
	aRes := <-aDone
	t.Logf("b.Token = %v; a.Token = %v; refresh calls %d", bErr, aRes.err, double.RefreshCalls())
	checkGrantAlive(t, double, reader, "acme")
}

// Redis loses its data; before this replica notices (its epoch check, every
// 5 s), a caller asks for a tenant whose cached token has expired. The
// store says unknown, and the replica drops the only copy it had of the
// tenant's live refresh token, so that its write-back cannot restore it:
// the tenant stays unknown_tenant although a replica held it.
func TestAdversarialHeldTenantIsWrittenBackAfterADataLoss(t *testing.T) {
	redis, double, open := ownedRedis(t, thanksiotest.Options{StrictReuse: true})
	a := replica(t, open(), double)
	importExpired(t, double, a, "acme")
	flushAll(t, redis)
	_, err := a.Token(t.Context(), "acme")
	t.Logf("a.Token right after the loss = %v", err)

	deadline := time.Now().Add(8 * time.Second)
	for {
		tok, err := a.Token(t.Context(), "acme")
		if err == nil && double.AccessValid(tok) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a.Token 8 s after the loss = %v; want the tenant written back and refreshed", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	checkGrantAlive(t, double, open(), "acme")
}

// flushAll empties the Redis, as a restart without persistence does.
func flushAll(t *testing.T, redis *testutil.RedisServer) {
	t.Helper()
	if err := redis.Client().FlushAll(t.Context()).Err(); err != nil {
		t.Fatalf("FLUSHALL: %v", err)
	}
}

// checkForgotten fails the test unless r, the replica named name, answers
// acme's Token with ErrUnknownTenant; when says when it asks.
func checkForgotten(t *testing.T, name string, r *auth.Tokens, when string) {
	t.Helper()
	if tok, err := r.Token(t.Context(), "acme"); !errors.Is(err, auth.ErrUnknownTenant) {
		t.Errorf("%s.Token %s = %q, %v; want ErrUnknownTenant", name, when, short(tok), err)
	}
}

// checkForgottenAfter waits for d, the time that whatever would bring acme
// back on r (a late write, a cache fill, a missed invalidation) is given to
// show itself, and then checks as checkForgotten does.
func checkForgottenAfter(t *testing.T, d time.Duration, name string, r *auth.Tokens, when string) {
	t.Helper()
	time.Sleep(d)
	checkForgotten(t, name, r, when)
}

// short shows no more of a token than its first characters.
func short(tok string) string {
	if len(tok) > 6 {
		return tok[:6] + "…"
	}
	return tok
}

// A tenant is deleted while one of its refreshes is at the token endpoint,
// and the write of the rotated pair then fails (a connection reset, an
// unconfirmed write): the pair is kept pending. The load that finds the
// store saying "unknown tenant" serves the pending pair, and caches it in
// an entry made after the deletion, where it is served until it expires.
func TestAdversarialDeleteDuringARefreshWhoseWriteFails(t *testing.T) {
	for _, deleter := range []string{"same replica", "another replica"} {
		t.Run(deleter, func(t *testing.T) {
			double, gated, a, b := gatedReplicas(t)

			stall, aDone := stalledToken(t, double, a, "acme")
			forgetThrough(t, deleter, a, b)
			gated.failing.Store(true)
			close(stall)
			t.Logf("a.Token whose refresh started before the DELETE = %v", (<-aDone).err)
			if tok, err := a.Token(t.Context(), "acme"); !errors.Is(err, auth.ErrUnknownTenant) && !errors.Is(err, auth.ErrTokenUnavailable) {
				t.Errorf("a.Token after the DELETE = %q, %v; want no token", short(tok), err)
			}
			// Writes work again: the pending writer finds the tombstone and
			// gives up (within 2 s); nothing may be served after that.
			gated.failing.Store(false)
			checkForgottenAfter(t, 2500*time.Millisecond, "a", a, "2.6 s after the DELETE")
		})
	}
}
