package store_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/store"
	"thanksio-proxy/store/storetest"
)

// dumpKey returns every value and member of key as text, whatever its type.
func dumpKey(t *testing.T, c redis.UniversalClient, key string) []string {
	t.Helper()
	ctx := t.Context()
	typ, err := c.Type(ctx, key).Result()
	if err != nil {
		t.Fatalf("TYPE %s: %v", key, err)
	}
	var vals []string
	switch typ {
	case "string":
		v, err := c.Get(ctx, key).Result()
		if err != nil {
			t.Fatalf("GET %s: %v", key, err)
		}
		vals = append(vals, v)
	case "hash":
		h, err := c.HGetAll(ctx, key).Result()
		if err != nil {
			t.Fatalf("HGETALL %s: %v", key, err)
		}
		for k, v := range h {
			vals = append(vals, k, v)
		}
	case "zset":
		members, err := c.ZRange(ctx, key, 0, -1).Result()
		if err != nil {
			t.Fatalf("ZRANGE %s: %v", key, err)
		}
		vals = append(vals, members...)
	case "set":
		members, err := c.SMembers(ctx, key).Result()
		if err != nil {
			t.Fatalf("SMEMBERS %s: %v", key, err)
		}
		vals = append(vals, members...)
	default:
		t.Fatalf("key %s is of unexpected type %s", key, typ)
	}
	return vals
}

func TestRedisKeepsNoSecretInPlainText(t *testing.T) {
	for _, b := range redisBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			f := b.setup(t)
			s := f.Open(t)
			ctx := t.Context()
			rec := storetest.SampleRecord(rand.Text())
			verifier := "verifier-" + rand.Text()
			storetest.MustPut(t, s, "acme", rec, 0)
			if err := s.PutOAuthState(ctx, "st", store.OAuthState{Tenant: "acme", CodeVerifier: verifier}, time.Minute); err != nil {
				t.Fatalf("PutOAuthState: %v", err)
			}
			if ok, err := s.TryLock(ctx, "acme", "owner", time.Minute); !ok || err != nil {
				t.Fatalf("TryLock = %v, %v", ok, err)
			}

			p := f.redis.prefix
			keys := scanKeys(t, f.redis.client, p)
			want := []string{p + "due", p + "oauth-state:st", p + "state:active", p + "tenants", p + "{acme}:lock", p + "{acme}:token"}
			if strings.Join(keys, " ") != strings.Join(want, " ") {
				t.Errorf("keys = %q; want %q", keys, want)
			}
			secrets := []string{rec.AccessToken, rec.RefreshToken, verifier}
			for _, key := range keys {
				for _, v := range dumpKey(t, f.redis.client, key) {
					for _, secret := range secrets {
						if strings.Contains(v, secret) {
							t.Errorf("key %s holds %q in plain text", key, secret)
						}
					}
				}
			}
		})
	}
}

func TestRedisSealing(t *testing.T) {
	for _, b := range redisBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			testRedisSealing(t, b)
		})
	}
}

func testRedisSealing(t *testing.T, b backend) {
	t.Run("a record under another key does not open", func(t *testing.T) {
		f := b.setup(t)
		ctx := t.Context()
		owner := f.redis.newStore(t, mustSealer(t, newKey(t)))
		stranger := f.redis.newStore(t, mustSealer(t, newKey(t)))
		rec := storetest.SampleRecord("a")
		storetest.MustPut(t, owner, "acme", rec, 0)
		key := f.redis.prefix + "{acme}:token"
		before := f.redis.client.HGetAll(ctx, key).Val()

		_, err := stranger.Get(ctx, "acme")
		if !errors.Is(err, store.ErrSealed) {
			t.Fatalf("Get with another key = %v; want ErrSealed", err)
		}
		if msg := err.Error(); !strings.Contains(msg, "acme") || strings.Contains(msg, rec.AccessToken) || strings.Contains(msg, rec.RefreshToken) {
			t.Errorf("Get error = %q; want the tenant named and no token", msg)
		}
		if after := f.redis.client.HGetAll(ctx, key).Val(); !maps.Equal(before, after) {
			t.Errorf("the stored record changed on a failed Get")
		}
		if got := storetest.MustGet(t, owner, "acme"); got.AccessToken != rec.AccessToken {
			t.Errorf("Get with the right key = %q; want %q", got.AccessToken, rec.AccessToken)
		}
	})

	t.Run("a record copied to another tenant does not open", func(t *testing.T) {
		f := b.setup(t)
		ctx := t.Context()
		s := f.Open(t)
		storetest.MustPut(t, s, "victim", storetest.SampleRecord("v"), 0)
		fields := f.redis.client.HGetAll(ctx, f.redis.prefix+"{victim}:token").Val()
		if err := f.redis.client.HSet(ctx, f.redis.prefix+"{thief}:token", fields).Err(); err != nil {
			t.Fatalf("HSET: %v", err)
		}
		if rec, err := s.Get(ctx, "thief"); !errors.Is(err, store.ErrSealed) {
			t.Errorf("Get of a copied record = %+v, %v; want ErrSealed", rec, err)
		}
	})

	t.Run("a damaged record does not open", func(t *testing.T) {
		tests := []struct {
			name   string
			fields map[string]string
		}{
			{name: "empty data", fields: map[string]string{"v": "3", "d": ""}},
			{name: "no version", fields: map[string]string{"d": "xyz"}},
			{name: "version 0", fields: map[string]string{"v": "0", "d": "xyz"}},
			{name: "bad version", fields: map[string]string{"v": "x", "d": "xyz"}},
			{name: "garbage data", fields: map[string]string{"v": "1", "d": "\x01xyz"}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				f := b.setup(t)
				if err := f.redis.client.HSet(t.Context(), f.redis.prefix+"{acme}:token", tt.fields).Err(); err != nil {
					t.Fatalf("HSET: %v", err)
				}
				if rec, err := f.Open(t).Get(t.Context(), "acme"); !errors.Is(err, store.ErrSealed) {
					t.Errorf("Get = %+v, %v; want ErrSealed", rec, err)
				}
			})
		}
	})

	t.Run("an oauth state moved to another name does not open", func(t *testing.T) {
		f := b.setup(t)
		ctx := t.Context()
		s := f.Open(t)
		if err := s.PutOAuthState(ctx, "real", store.OAuthState{Tenant: "acme", CodeVerifier: "v"}, time.Minute); err != nil {
			t.Fatalf("PutOAuthState: %v", err)
		}
		sealed := f.redis.client.Get(ctx, f.redis.prefix+"oauth-state:real").Val()
		if err := f.redis.client.Set(ctx, f.redis.prefix+"oauth-state:forged", sealed, time.Minute).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
		if st, err := s.TakeOAuthState(ctx, "forged"); !errors.Is(err, store.ErrSealed) {
			t.Errorf("TakeOAuthState(forged) = %+v, %v; want ErrSealed", st, err)
		}
	})

	t.Run("key rotation", func(t *testing.T) {
		f := b.setup(t)
		ctx := t.Context()
		a, b := newKey(t), newKey(t)
		onlyA := f.redis.newStore(t, mustSealer(t, a))
		rotated := f.redis.newStore(t, mustSealer(t, b, a))
		onlyB := f.redis.newStore(t, mustSealer(t, b))
		sealedData := func() []byte {
			t.Helper()
			return []byte(f.redis.client.HGet(ctx, f.redis.prefix+"{acme}:token", "d").Val())
		}

		storetest.MustPut(t, onlyA, "acme", storetest.SampleRecord("old"), 0)
		if _, err := onlyB.Get(ctx, "acme"); !errors.Is(err, store.ErrSealed) {
			t.Errorf("Get of a record sealed under A by a store with only B = %v; want ErrSealed", err)
		}
		if got := storetest.MustGet(t, rotated, "acme"); got.AccessToken != "access-old" {
			t.Errorf("Get by B,A = %q; want %q", got.AccessToken, "access-old")
		}
		if !mustSealer(t, b, a).NeedsReseal(sealedData()) {
			t.Errorf("NeedsReseal of a record sealed under A, with B first = false; want true")
		}

		storetest.MustPut(t, rotated, "acme", storetest.SampleRecord("new"), 1)
		if mustSealer(t, b, a).NeedsReseal(sealedData()) {
			t.Errorf("NeedsReseal after a write by B,A = true; want false (sealed under B)")
		}
		if got := storetest.MustGet(t, onlyB, "acme"); got.AccessToken != "access-new" || got.Version != 2 {
			t.Errorf("Get by B = %q version %d; want %q version 2", got.AccessToken, got.Version, "access-new")
		}
		if _, err := onlyA.Get(ctx, "acme"); !errors.Is(err, store.ErrSealed) {
			t.Errorf("Get of a record sealed under B by a store with only A = %v; want ErrSealed", err)
		}
	})

	t.Run("malformed invalidations are ignored", func(t *testing.T) {
		f := b.setup(t)
		ctx := t.Context()
		s := f.Open(t)
		invs, _ := storetest.Subscribe(t, f.Open(t))
		for _, payload := range []string{"", "acme", "acme x", "acme -1", " 5", "a{b 3", "acme 1.5"} {
			if err := f.redis.client.Publish(ctx, f.redis.prefix+"invalidate", payload).Err(); err != nil {
				t.Fatalf("PUBLISH: %v", err)
			}
		}
		storetest.MustPut(t, s, "acme", storetest.SampleRecord("a"), 0)
		if got := storetest.NextInvalidation(t, invs); got != (store.Invalidation{Tenant: "acme", Version: 1}) {
			t.Errorf("first invalidation = %+v; want acme version 1, the malformed ones ignored", got)
		}
	})

	t.Run("subscribe fails when its context has ended", func(t *testing.T) {
		s := b.setup(t).Open(t)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := s.Subscribe(ctx, nil, nil); err == nil {
			t.Errorf("Subscribe with an ended context = nil; want an error")
		}
	})
}

func TestRedisTombstone(t *testing.T) {
	for _, b := range redisBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			f := b.setup(t)
			ctx := t.Context()
			s := f.Open(t)
			p := f.redis.prefix
			storetest.MustPut(t, s, "acme", storetest.SampleRecord("a"), 0)
			storetest.MustPut(t, s, "acme", storetest.SampleRecord("b"), 1)
			if ok, err := s.TryLock(ctx, "acme", "owner", time.Minute); !ok || err != nil {
				t.Fatalf("TryLock = %v, %v; want true", ok, err)
			}
			if _, err := s.Delete(ctx, "acme"); err != nil {
				t.Fatalf("Delete: %v", err)
			}
			// The tombstone is the token hash without its data: nothing
			// sealed is left, and nothing else of the tenant.
			if got := f.redis.client.HGetAll(ctx, p+"{acme}:token").Val(); !maps.Equal(got, map[string]string{"v": "2"}) {
				t.Errorf("token hash after Delete = %q; want only v=2", got)
			}
			if keys := scanKeys(t, f.redis.client, p); !slices.Equal(keys, []string{p + "{acme}:token"}) {
				t.Errorf("keys after Delete = %q; want only the tombstone", keys)
			}
		})
	}
}

func TestRedisIndexFailure(t *testing.T) {
	for _, b := range redisBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			f := b.setup(t)
			ctx := t.Context()
			type report struct {
				op  string
				err error
			}
			var reports []report
			s := f.redis.newStore(t, mustSealer(t, newKey(t)))
			s.OnIndexError = func(op string, err error) { reports = append(reports, report{op, err}) }
			invs, _ := storetest.Subscribe(t, f.Open(t))
			// A key of the wrong type makes every update of the tenant
			// index fail, the retry included.
			tenants := f.redis.prefix + "tenants"
			if err := f.redis.client.Set(ctx, tenants, "not a sorted set", 0).Err(); err != nil {
				t.Fatalf("SET: %v", err)
			}

			rec := storetest.SampleRecord("a")
			v, err := s.Put(ctx, "acme", rec, 0)
			if err != nil || v != 1 {
				t.Fatalf("Put with a broken index = %d, %v; want 1, nil (the record is stored)", v, err)
			}
			if got := storetest.MustGet(t, s, "acme"); got.AccessToken != rec.AccessToken || got.Version != 1 {
				t.Errorf("Get = %q version %d; want %q version 1", got.AccessToken, got.Version, rec.AccessToken)
			}
			if inv := storetest.NextInvalidation(t, invs); inv != (store.Invalidation{Tenant: "acme", Version: 1}) {
				t.Errorf("invalidation = %+v; want acme version 1 (publish does not depend on the index)", inv)
			}
			if len(reports) != 1 || reports[0].op != "index" || !strings.Contains(reports[0].err.Error(), `put "acme"`) {
				t.Errorf("OnIndexError calls = %v; want one of op index naming put \"acme\"", reports)
			}
			// The other indexes were still updated.
			if due, err := s.DueBefore(ctx, time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC), 10); err != nil || !slices.Equal(due, []string{"acme"}) {
				t.Errorf("DueBefore = %q, %v; want [acme]", due, err)
			}

			// Delete's follow-up failure is returned: a missed deletion is
			// not covered by the 401 replay.
			reports = nil
			if _, err := s.Delete(ctx, "acme"); err == nil || !strings.Contains(err.Error(), "index") {
				t.Errorf("Delete with a broken index = %v; want an index error", err)
			}
			if rec, err := s.Get(ctx, "acme"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Get after Delete = %+v, %v; want ErrNotFound (the record is deleted)", rec, err)
			}
			if len(reports) != 0 {
				t.Errorf("OnIndexError called by Delete: %v; want its error returned instead", reports)
			}

			// Without a hook, the failure is ignored.
			s.OnIndexError = nil
			if _, err := s.Put(ctx, "other", rec, 0); err != nil {
				t.Errorf("Put without OnIndexError = %v; want nil", err)
			}
		})
	}
}

func TestRedisReseal(t *testing.T) {
	for _, b := range redisBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			testRedisReseal(t, b)
		})
	}
}

func testRedisReseal(t *testing.T, b backend) {
	f := b.setup(t)
	ctx := t.Context()
	keyA, keyB, keyC := newKey(t), newKey(t), newKey(t)
	onlyA := f.redis.newStore(t, mustSealer(t, keyA))
	rotated := f.redis.newStore(t, mustSealer(t, keyB, keyA))
	onlyB := f.redis.newStore(t, mustSealer(t, keyB))
	stranger := f.redis.newStore(t, mustSealer(t, keyC))

	// More than one page of tenants under A, some rewritten, some in
	// another state; one already under B; one under a key no store here
	// has; one deleted.
	const underA = 130
	want := map[string]store.TokenRecord{}
	for i := range underA {
		tenant := fmt.Sprintf("t-%03d", i)
		rec := storetest.SampleRecord(tenant)
		if i%7 == 0 {
			rec.State = store.StateReauthorizationRequired
		}
		storetest.MustPut(t, onlyA, tenant, rec, 0)
		if i%10 == 0 {
			storetest.MustPut(t, onlyA, tenant, rec, 1)
		}
		rec.Version = storetest.MustGet(t, onlyA, tenant).Version
		want[tenant] = rec
	}
	storetest.MustPut(t, onlyB, "already-b", storetest.SampleRecord("b"), 0)
	storetest.MustPut(t, stranger, "lost", storetest.SampleRecord("lost"), 0)
	storetest.MustPut(t, onlyA, "gone", storetest.SampleRecord("gone"), 0)
	if _, err := onlyA.Delete(ctx, "gone"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	countsBefore, err := onlyA.CountByState(ctx)
	if err != nil {
		t.Fatalf("CountByState: %v", err)
	}
	lostBefore := f.redis.client.HGetAll(ctx, f.redis.prefix+"{lost}:token").Val()

	var invalidated sync.Map
	if err := onlyB.Subscribe(ctx, func(inv store.Invalidation) { invalidated.Store(inv, true) }, nil); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}

	var failed []string
	n, err := rotated.Reseal(ctx, func(tenant string) { failed = append(failed, tenant) })
	if n != underA {
		t.Errorf("Reseal = %d resealed; want %d", n, underA)
	}
	if !errors.Is(err, store.ErrSealed) || !strings.Contains(err.Error(), "lost") {
		t.Errorf("Reseal error = %v; want ErrSealed naming %q", err, "lost")
	}
	if !slices.Equal(failed, []string{"lost"}) {
		t.Errorf("Reseal reported %q; want [lost]", failed)
	}

	for tenant, w := range want {
		got, err := onlyB.Get(ctx, tenant)
		if err != nil {
			t.Errorf("Get(%q) by a store with only B after Reseal: %v", tenant, err)
			continue
		}
		w.Version++ // a reseal is a write
		if diff := cmp.Diff(w, got); diff != "" {
			t.Errorf("Get(%q) after Reseal differs from the record written, one version on (-want +got):\n%s", tenant, diff)
		}
	}
	if got := storetest.MustGet(t, onlyB, "already-b"); got.Version != 1 {
		t.Errorf("Get(already-b).Version = %d; want 1 (not rewritten)", got.Version)
	}
	if after := f.redis.client.HGetAll(ctx, f.redis.prefix+"{lost}:token").Val(); !maps.Equal(lostBefore, after) {
		t.Errorf("the record no key opens changed; want it left as it was")
	}
	if rec, err := onlyB.Get(ctx, "gone"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get(gone) after Reseal = %+v, %v; want ErrNotFound (a tombstone stays one)", rec, err)
	}
	if counts, err := onlyB.CountByState(ctx); err != nil || !maps.Equal(counts, countsBefore) {
		t.Errorf("CountByState after Reseal = %v, %v; want %v", counts, err, countsBefore)
	}
	testutil.Eventually(t, "an invalidation of every resealed record", func() bool {
		for tenant, w := range want {
			if _, ok := invalidated.Load(store.Invalidation{Tenant: tenant, Version: w.Version + 1}); !ok {
				return false
			}
		}
		return true
	})

	// A second run finds nothing more to do but the record it cannot open.
	failed = nil
	if n, err := rotated.Reseal(ctx, func(tenant string) { failed = append(failed, tenant) }); n != 0 || !errors.Is(err, store.ErrSealed) {
		t.Errorf("second Reseal = %d, %v; want 0, ErrSealed", n, err)
	}
	if !slices.Equal(failed, []string{"lost"}) {
		t.Errorf("second Reseal reported %q; want [lost]", failed)
	}

	// Without records that fail, Reseal succeeds; a nil callback is fine.
	if _, err := rotated.Delete(ctx, "lost"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if n, err := rotated.Reseal(ctx, nil); n != 0 || err != nil {
		t.Errorf("Reseal with nothing to do = %d, %v; want 0, nil", n, err)
	}
}

// serverStore returns a store over the Redis at srv, which the test owns,
// sealing with sealer and confirming its writes as minAck and timeout ask.
func serverStore(t *testing.T, srv *testutil.RedisServer, sealer *store.Sealer, minAck int, timeout time.Duration) *store.Redis {
	t.Helper()
	s := store.NewRedis(srv.Client(), "", sealer)
	s.MinReplicasAck, s.DurableTimeout = minAck, timeout
	return s
}

// patient bounds the waits for acknowledgements that are expected to come.
const patient = 10 * time.Second

func TestRedisEpochAfterDataLoss(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		lose func(t *testing.T, srv *testutil.RedisServer)
		// wantKept reports whether the data, and so the epoch, survive.
		wantKept bool
	}{
		{
			name: "FLUSHALL",
			lose: func(t *testing.T, srv *testutil.RedisServer) {
				if err := srv.Client().FlushAll(t.Context()).Err(); err != nil {
					t.Fatalf("FLUSHALL: %v", err)
				}
			},
		},
		{
			name: "restart without persistence",
			lose: func(t *testing.T, srv *testutil.RedisServer) { srv.Restart() },
		},
		{
			name:     "restart with an append-only file",
			args:     []string{"--appendonly", "yes", "--appendfsync", "always"},
			lose:     func(t *testing.T, srv *testutil.RedisServer) { srv.Restart() },
			wantKept: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := testutil.StartRedis(t, tt.args...)
			s := serverStore(t, srv, mustSealer(t, newKey(t)), store.AutoReplicas, patient)
			ctx := t.Context()
			before, err := s.Epoch(ctx)
			if err != nil {
				t.Fatalf("Epoch: %v", err)
			}
			storetest.MustPut(t, s, "acme", storetest.SampleRecord("a"), 0)

			tt.lose(t, srv)
			after, err := s.Epoch(ctx)
			if err != nil {
				t.Fatalf("Epoch after the loss: %v", err)
			}
			if tt.wantKept != (after == before) {
				t.Errorf("Epoch = %q before, %q after; want them equal: %v", before, after, tt.wantKept)
			}
			// The epoch tells the truth about the data.
			_, err = s.Get(ctx, "acme")
			if tt.wantKept != (err == nil) {
				t.Errorf("Get after the loss = %v; want the record kept: %v", err, tt.wantKept)
			}
			// Once written again, the epoch holds.
			if again, err := s.Epoch(ctx); err != nil || again != after {
				t.Errorf("Epoch again = %q, %v; want %q", again, err, after)
			}
		})
	}
}

func TestRedisWaitsForReplica(t *testing.T) {
	t.Parallel()
	primary := testutil.StartRedis(t)
	replica := testutil.StartReplica(t, primary)
	sealer := mustSealer(t, newKey(t))
	s := serverStore(t, primary, sealer, store.AutoReplicas, 200*time.Millisecond)
	onReplica := serverStore(t, replica, sealer, store.AutoReplicas, 0)
	invs, _ := storetest.Subscribe(t, serverStore(t, primary, sealer, store.AutoReplicas, 0))
	ctx := t.Context()

	storetest.MustPut(t, s, "acme", storetest.SampleRecord("one"), 0)
	storetest.NextInvalidation(t, invs)
	// WAIT returned: the replica has the record, no polling needed.
	if got := storetest.MustGet(t, onReplica, "acme"); got.Version != 1 || got.AccessToken != "access-one" {
		t.Errorf("Get on the replica = version %d, %q; want 1, %q", got.Version, got.AccessToken, "access-one")
	}

	replica.Pause()
	if v, err := s.Put(ctx, "acme", storetest.SampleRecord("two"), 1); !errors.Is(err, store.ErrUnconfirmed) {
		t.Fatalf("Put with the replica paused = %d, %v; want ErrUnconfirmed", v, err)
	}
	// The primary holds it, and said so.
	if got := storetest.MustGet(t, s, "acme"); got.Version != 2 || got.AccessToken != "access-two" {
		t.Errorf("Get on the primary after the unconfirmed Put = version %d, %q; want 2, %q", got.Version, got.AccessToken, "access-two")
	}
	if inv := storetest.NextInvalidation(t, invs); inv != (store.Invalidation{Tenant: "acme", Version: 2}) {
		t.Errorf("invalidation of the unconfirmed Put = %+v; want acme version 2", inv)
	}

	replica.Resume()
	if v := storetest.MustPut(t, s, "acme", storetest.SampleRecord("three"), 2); v != 3 {
		t.Errorf("Put after Resume = %d; want 3", v)
	}
	if got := storetest.MustGet(t, onReplica, "acme"); got.Version != 3 {
		t.Errorf("Get on the replica after Resume = version %d; want 3", got.Version)
	}

	replica.Pause()
	if _, err := s.Delete(ctx, "acme"); !errors.Is(err, store.ErrUnconfirmed) {
		t.Errorf("Delete with the replica paused = %v; want ErrUnconfirmed", err)
	}
	if rec, err := s.Get(ctx, "acme"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get on the primary after the unconfirmed Delete = %+v, %v; want ErrNotFound", rec, err)
	}
	replica.Resume()
}

func TestRedisMinReplicasAck(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// replica, when set, starts a replica and pauses it before the Put.
		replica bool
		// noInfo, when set, has the store log in as a user that may not
		// run INFO (clientWithoutInfo).
		noInfo          bool
		minAck          int
		wantUnconfirmed bool
	}{
		{name: "0 with a paused replica does not wait", replica: true, minAck: 0},
		{name: "1 with no replica is unconfirmed", minAck: 1, wantUnconfirmed: true},
		{name: "auto with no replica does not wait", minAck: store.AutoReplicas},
		{name: "auto with a paused replica is unconfirmed", replica: true, minAck: store.AutoReplicas, wantUnconfirmed: true},
		{name: "user without INFO, auto: taken to have no replica", noInfo: true, minAck: store.AutoReplicas},
		{name: "user without INFO, 0", noInfo: true, minAck: 0},
		{name: "user without INFO, 1 is still waited for", noInfo: true, minAck: 1, wantUnconfirmed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			primary := testutil.StartRedis(t)
			if tt.replica {
				replica := testutil.StartReplica(t, primary)
				replica.Pause()
				t.Cleanup(replica.Resume) // registered after Kill, so run before it
			}
			c := primary.Client()
			if tt.noInfo {
				c = clientWithoutInfo(t, primary)
			}
			s := store.NewRedis(c, "", mustSealer(t, newKey(t)))
			s.MinReplicasAck, s.DurableTimeout = tt.minAck, 200*time.Millisecond
			checkFirstPut(t, s, tt.wantUnconfirmed)
		})
	}
}

// clientWithoutInfo returns a client of srv that logs in as a user who may
// run every command but those of @dangerous, INFO among them, as restricted
// users often may not; the test's cleanup closes it.
func clientWithoutInfo(t *testing.T, srv *testutil.RedisServer) *redis.Client {
	t.Helper()
	ctx := t.Context()
	err := srv.Client().Do(ctx, "ACL", "SETUSER", "proxy", "on", ">secret", "~*", "&*", "+@all", "-@dangerous").Err()
	if err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "proxy", Password: "secret"})
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Info(ctx, "replication").Err(); err == nil {
		t.Fatalf("INFO as the restricted user = nil; want it refused")
	}
	return c
}

// checkFirstPut writes acme's first record on s, and fails the test unless
// the write is ErrUnconfirmed when wantUnconfirmed is set, and succeeds at
// version 1 when it is not; either way the primary holds it, at version 1.
func checkFirstPut(t *testing.T, s *store.Redis, wantUnconfirmed bool) {
	t.Helper()
	v, err := s.Put(t.Context(), "acme", storetest.SampleRecord("a"), 0)
	if wantUnconfirmed {
		if !errors.Is(err, store.ErrUnconfirmed) {
			t.Fatalf("Put = %d, %v; want ErrUnconfirmed", v, err)
		}
	} else if err != nil || v != 1 {
		t.Fatalf("Put = %d, %v; want 1, nil", v, err)
	}
	if got := storetest.MustGet(t, s, "acme"); got.Version != 1 {
		t.Errorf("Get on the primary = version %d; want 1", got.Version)
	}
}

// checkUnconfirmedWhilePaused pauses replica until it returns, and fails
// the test unless a Put of rec for acme over version prev on s is then
// ErrUnconfirmed; what names that Put in the message.
func checkUnconfirmedWhilePaused(t *testing.T, s *store.Redis, replica *testutil.RedisServer, what string, rec store.TokenRecord, prev int64) {
	t.Helper()
	replica.Pause()
	defer replica.Resume()
	if v, err := s.Put(t.Context(), "acme", rec, prev); !errors.Is(err, store.ErrUnconfirmed) {
		t.Errorf("%s = %d, %v; want ErrUnconfirmed", what, v, err)
	}
}

func TestRedisAppendOnlyWithoutWaitAOF(t *testing.T) {
	t.Parallel()
	primary := testutil.StartRedis(t, "--appendonly", "yes")
	info, err := primary.Client().Info(t.Context(), "persistence").Result()
	if err != nil || !strings.Contains(info, "aof_enabled:1") {
		t.Fatalf("INFO persistence = %v; want aof_enabled:1", err)
	}
	s := serverStore(t, primary, mustSealer(t, newKey(t)), store.AutoReplicas, 200*time.Millisecond)
	ctx := t.Context()
	// Twice: the first write may learn that the server has no WAITAOF
	// (before Redis 7.2), the second goes without asking.
	for want := int64(1); want <= 2; want++ {
		if v, err := s.Put(ctx, "acme", storetest.SampleRecord("a"), want-1); err != nil || v != want {
			t.Fatalf("Put(prev %d) with AOF on = %d, %v; want %d, nil", want-1, v, err, want)
		}
	}
	if _, err := s.Delete(ctx, "acme"); err != nil {
		t.Errorf("Delete with AOF on: %v", err)
	}

	// Falling back from WAITAOF still waits for the replicas.
	replica := testutil.StartReplica(t, primary)
	checkUnconfirmedWhilePaused(t, s, replica, "Put with AOF on and the replica paused", storetest.SampleRecord("b"), 0)
}

func TestRedisPrimaryRefusesWrites(t *testing.T) {
	t.Parallel()
	primary := testutil.StartRedis(t)
	admin := primary.Client()
	s := serverStore(t, primary, mustSealer(t, newKey(t)), store.AutoReplicas, 200*time.Millisecond)
	ctx := t.Context()
	storetest.MustPut(t, s, "acme", storetest.SampleRecord("one"), 0)

	if err := admin.ConfigSet(ctx, "min-replicas-to-write", "1").Err(); err != nil {
		t.Fatalf("CONFIG SET min-replicas-to-write 1: %v", err)
	}
	v, err := s.Put(ctx, "acme", storetest.SampleRecord("two"), 1)
	if err == nil || errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrUnconfirmed) {
		t.Errorf("Put on a primary that refuses writes = %d, %v; want an error, neither ErrConflict nor ErrUnconfirmed (nothing was written)", v, err)
	}
	if got := storetest.MustGet(t, s, "acme"); got.Version != 1 || got.AccessToken != "access-one" {
		t.Errorf("Get while writes are refused = version %d, %q; want 1, %q", got.Version, got.AccessToken, "access-one")
	}

	if err := admin.ConfigSet(ctx, "min-replicas-to-write", "0").Err(); err != nil {
		t.Fatalf("CONFIG SET min-replicas-to-write 0: %v", err)
	}
	if v := storetest.MustPut(t, s, "acme", storetest.SampleRecord("two"), 1); v != 2 {
		t.Errorf("Put once writes are allowed again = %d; want 2", v)
	}
}

func TestRedisSentinelWaitsForReplica(t *testing.T) {
	t.Parallel()
	primary := testutil.StartRedis(t)
	replica := testutil.StartReplica(t, primary)
	sentinel := testutil.StartSentinel(t, primary, "thanksio")
	c, err := store.OpenRedisURL(sentinel.URL())
	if err != nil {
		t.Fatalf("OpenRedisURL(%s): %v", sentinel.URL(), err)
	}
	t.Cleanup(func() { _ = c.Close() })
	s := store.NewRedis(c, "", mustSealer(t, newKey(t)))
	s.DurableTimeout = 200 * time.Millisecond

	storetest.MustPut(t, s, "acme", storetest.SampleRecord("one"), 0)
	checkUnconfirmedWhilePaused(t, s, replica, "Put through Sentinel with the replica paused", storetest.SampleRecord("two"), 1)
}

func TestRedisConcurrentFirstWrites(t *testing.T) {
	for _, b := range redisBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			f := b.setup(t)
			// Each write dials on a fresh client, and waits on a connection
			// of its own: run with -race.
			const rounds, writers = 10, 8
			for round := range rounds {
				s := f.Open(t)
				var wg sync.WaitGroup
				for w := range writers {
					wg.Go(func() {
						tenant := fmt.Sprintf("t-%d-%d", round, w)
						if _, err := s.Put(t.Context(), tenant, storetest.SampleRecord(tenant), 0); err != nil {
							t.Errorf("Put(%q): %v", tenant, err)
						}
					})
				}
				wg.Wait()
			}
		})
	}
}
