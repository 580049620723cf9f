package store_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"thanksio-proxy/auth"
	"thanksio-proxy/store"
)

// Both implementations satisfy the interface that auth defines, and count
// tenants by state.
var (
	_ auth.Store = (*store.Redis)(nil)
	_ auth.Store = (*store.Memory)(nil)

	_ stateCounter = (*store.Redis)(nil)
	_ stateCounter = (*store.Memory)(nil)
)

// stateCounter is the method every store has beside auth.Store, for the
// tenants-by-state metric.
type stateCounter interface {
	CountByState(ctx context.Context) (map[store.State]int64, error)
}

// mustCount returns s's CountByState, failing the test if it cannot.
func mustCount(t *testing.T, s auth.Store) map[store.State]int64 {
	t.Helper()
	c, ok := s.(stateCounter)
	if !ok {
		t.Fatalf("%T has no CountByState", s)
	}
	counts, err := c.CountByState(t.Context())
	if err != nil {
		t.Fatalf("CountByState: %v", err)
	}
	return counts
}

// checkCounts fails the test unless s counts active and reauth tenants in
// those states.
func checkCounts(t *testing.T, s auth.Store, what string, active, reauth int64) {
	t.Helper()
	want := map[store.State]int64{store.StateActive: active, store.StateReauthorizationRequired: reauth}
	if got := mustCount(t, s); !maps.Equal(got, want) {
		t.Errorf("%s: CountByState = %v; want %v", what, got, want)
	}
}

// waitTimeout bounds every wait for an event in these tests.
const waitTimeout = 10 * time.Second

// A backend is one implementation the contract runs against.
type backend struct {
	name string
	// setup returns a fixture over a fresh, empty data set, and removes that
	// data when the test ends.
	setup func(t *testing.T) *fixture
}

// A fixture is one data set and the means to reach it.
type fixture struct {
	// open returns a store over the fixture's data: for Redis a new client
	// (another replica, sharing the server and key prefix), for Memory the
	// one Memory.
	open func(t *testing.T) auth.Store
	// elapse lets d pass for TTLs where the clock is fake (Memory, and
	// miniredis, whose TTLs only move when told). On a real server it does
	// nothing: its time passes by itself, and tests poll for the effect.
	elapse func(d time.Duration)
	// dropConnections breaks the fixture's pub/sub connections, as a network
	// failure would; nil where they cannot break (Memory).
	dropConnections func(t *testing.T)
	// redis is set for the Redis backends.
	redis *redisFixture
}

// redisFixture gives the Redis-only tests raw access to the data.
type redisFixture struct {
	// client reaches the server directly, for reading and altering keys.
	client redis.UniversalClient
	// prefix is this fixture's key prefix.
	prefix string
	// newStore returns a store over the fixture's data on a new client,
	// sealing with sealer.
	newStore func(t *testing.T, sealer *store.Sealer) *store.Redis
}

// backends returns every implementation to test: Memory; Redis at REDIS_URL
// when set, else miniredis; Redis Cluster at REDIS_CLUSTER_URL and Redis
// through Sentinel at REDIS_SENTINEL_URL when set.
func backends(t *testing.T) []backend {
	bs := []backend{{name: "memory", setup: setupMemory}}
	if u := os.Getenv("REDIS_URL"); u != "" {
		mustReach(t, "REDIS_URL", u)
		bs = append(bs, backend{name: "redis", setup: setupRedisServer("REDIS_URL", u)})
	} else {
		t.Log("REDIS_URL is not set: testing Redis against miniredis")
		bs = append(bs, backend{name: "miniredis", setup: setupMiniredis})
	}
	if u := os.Getenv("REDIS_CLUSTER_URL"); u != "" {
		mustReach(t, "REDIS_CLUSTER_URL", u)
		bs = append(bs, backend{name: "redis-cluster", setup: setupRedisServer("REDIS_CLUSTER_URL", u)})
	} else {
		t.Log("REDIS_CLUSTER_URL is not set: the Redis Cluster tests were not run")
	}
	if u := os.Getenv("REDIS_SENTINEL_URL"); u != "" {
		mustReach(t, "REDIS_SENTINEL_URL", u)
		bs = append(bs, backend{name: "redis-sentinel", setup: setupRedisServer("REDIS_SENTINEL_URL", u)})
	} else {
		t.Log("REDIS_SENTINEL_URL is not set: the Redis Sentinel tests were not run")
	}
	return bs
}

// mustReach fails the test at once if the Redis named by the variable env,
// at rawURL, does not answer: a server that was asked for is never skipped.
func mustReach(t *testing.T, env, rawURL string) {
	t.Helper()
	c, err := store.OpenRedisURL(rawURL)
	if err != nil {
		t.Fatalf("OpenRedisURL($%s): %v", env, err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("Redis at $%s does not answer: %v", env, err)
	}
}

// redisBackends returns the backends of backends that are Redis.
func redisBackends(t *testing.T) []backend {
	var bs []backend
	for _, b := range backends(t) {
		if b.name != "memory" {
			bs = append(bs, b)
		}
	}
	return bs
}

// fakeClock is a clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func setupMemory(t *testing.T) *fixture {
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := store.NewMemory()
	m.Now = clock.Now
	return &fixture{
		open:   func(*testing.T) auth.Store { return m },
		elapse: clock.Advance,
	}
}

func setupMiniredis(t *testing.T) *fixture {
	mr := miniredis.RunT(t)
	f := setupRedis(t, "miniredis", "redis://"+mr.Addr(), "")
	f.elapse = mr.FastForward
	f.dropConnections = func(t *testing.T) {
		t.Helper()
		mr.Close()
		if err := mr.Restart(); err != nil {
			t.Fatalf("restart miniredis: %v", err)
		}
	}
	return f
}

// setupRedisServer returns the setup of a real Redis, named by the variable
// env, at rawURL. A server that does not answer fails the test.
func setupRedisServer(env, rawURL string) func(t *testing.T) *fixture {
	return func(t *testing.T) *fixture {
		name := "store-test-" + randomHex(t, 8)
		f := setupRedis(t, env, rawURL, name)
		f.elapse = func(time.Duration) {}
		f.dropConnections = func(t *testing.T) {
			t.Helper()
			if n := killClients(t, f.redis.client, name); n == 0 {
				t.Fatalf("no pub/sub connection named %s to kill", name)
			}
		}
		return f
	}
}

// setupRedis returns a fixture over the Redis at rawURL, under a fresh key
// prefix whose keys it deletes when the test ends. clientName, if not empty,
// names every connection, so that the test can find its own.
func setupRedis(t *testing.T, env, rawURL, clientName string) *fixture {
	t.Helper()
	if clientName != "" {
		u, err := url.Parse(rawURL)
		if err != nil {
			t.Fatalf("%s does not parse", env)
		}
		q := u.Query()
		q.Set("client_name", clientName)
		u.RawQuery = q.Encode()
		rawURL = u.String()
	}
	connect := func(t *testing.T) redis.UniversalClient {
		t.Helper()
		c, err := store.OpenRedisURL(rawURL)
		if err != nil {
			t.Fatalf("OpenRedisURL($%s): %v", env, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	prefix := "test-" + randomHex(t, 8) + ":"
	sealer := mustSealer(t, newKey(t))
	admin := connect(t)
	// Registered after admin's Close, so it runs before it.
	t.Cleanup(func() { deleteKeys(t, admin, prefix) })

	rf := &redisFixture{
		client: admin,
		prefix: prefix,
		newStore: func(t *testing.T, s *store.Sealer) *store.Redis {
			return store.NewRedis(connect(t), prefix, s)
		},
	}
	return &fixture{
		open:  func(t *testing.T) auth.Store { return rf.newStore(t, sealer) },
		redis: rf,
	}
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// forEachServer calls fn with every server behind c: each shard of a
// Cluster, or c itself.
func forEachServer(ctx context.Context, c redis.UniversalClient, fn func(ctx context.Context, c *redis.Client) error) error {
	switch c := c.(type) {
	case *redis.ClusterClient:
		return c.ForEachShard(ctx, fn)
	case *redis.Client:
		return fn(ctx, c)
	default:
		return fmt.Errorf("unknown client type %T", c)
	}
}

// scanKeys returns every key that starts with prefix, on every server.
func scanKeys(t *testing.T, c redis.UniversalClient, prefix string) []string {
	t.Helper()
	var (
		mu   sync.Mutex
		keys []string
	)
	err := forEachServer(context.Background(), c, func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			keys = append(keys, iter.Val())
			mu.Unlock()
		}
		return iter.Err()
	})
	if err != nil {
		t.Fatalf("scan %s*: %v", prefix, err)
	}
	slices.Sort(keys)
	// A Cluster replica would list its master's keys again.
	return slices.Compact(keys)
}

// deleteKeys deletes every key that starts with prefix.
func deleteKeys(t *testing.T, c redis.UniversalClient, prefix string) {
	t.Helper()
	ctx := context.Background()
	for _, key := range scanKeys(t, c, prefix) {
		// One at a time: in a Cluster the keys live in different slots.
		if err := c.Del(ctx, key).Err(); err != nil {
			t.Errorf("clean up %s: %v", key, err)
		}
	}
}

// killClients closes every subscribed connection named name, on every
// server behind c, and returns how many it closed. It goes by id, not by
// CLIENT KILL TYPE pubsub, because a RESP3 subscriber is of type normal, and
// so as not to touch the connections of anyone else sharing the server.
func killClients(t *testing.T, c redis.UniversalClient, name string) int {
	t.Helper()
	var killed atomic.Int64
	err := forEachServer(context.Background(), c, func(ctx context.Context, c *redis.Client) error {
		list, err := c.ClientList(ctx).Result()
		if err != nil {
			return err
		}
		for line := range strings.Lines(list) {
			fields := map[string]string{}
			for f := range strings.FieldsSeq(line) {
				k, v, _ := strings.Cut(f, "=")
				fields[k] = v
			}
			if fields["name"] != name || fields["sub"] == "0" || fields["sub"] == "" {
				continue
			}
			if err := c.ClientKillByFilter(ctx, "ID", fields["id"]).Err(); err != nil {
				return err
			}
			killed.Add(1)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("kill connections named %s: %v", name, err)
	}
	return int(killed.Load())
}

// waitFor polls cond until it holds, failing the test if it does not within
// waitTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", waitTimeout, what)
		}
		<-tick.C
	}
}

// letExpire returns once anything stored with ttl before the call has
// expired: it takes a marker lock with ttl after them, lets the time pass,
// and polls until the marker can be taken again.
func letExpire(t *testing.T, f *fixture, s auth.Store, ttl time.Duration) {
	t.Helper()
	ctx := t.Context()
	marker := "expiry-marker-" + randomHex(t, 4)
	if ok, err := s.TryLock(ctx, marker, "first", ttl); !ok || err != nil {
		t.Fatalf("TryLock(%q) = %v, %v; want true", marker, ok, err)
	}
	f.elapse(ttl + time.Millisecond)
	waitFor(t, "a lock of "+ttl.String()+" to expire", func() bool {
		ok, err := s.TryLock(ctx, marker, "second", time.Minute)
		if err != nil {
			t.Fatalf("TryLock(%q): %v", marker, err)
		}
		return ok
	})
}

// nextInvalidation returns the next invalidation from ch, failing the test
// if none arrives within waitTimeout.
func nextInvalidation(t *testing.T, ch <-chan store.Invalidation) store.Invalidation {
	t.Helper()
	select {
	case inv := <-ch:
		return inv
	case <-time.After(waitTimeout):
		t.Fatalf("no invalidation within %v", waitTimeout)
		return store.Invalidation{}
	}
}

// subscribe subscribes s for the rest of the test and returns the
// invalidations and resyncs it sees.
func subscribe(t *testing.T, s auth.Store) (<-chan store.Invalidation, <-chan struct{}) {
	t.Helper()
	invs := make(chan store.Invalidation, 100)
	resyncs := make(chan struct{}, 100)
	err := s.Subscribe(t.Context(),
		func(inv store.Invalidation) {
			select {
			case invs <- inv:
			default: // Callbacks must not block; the test would fail anyway.
			}
		},
		func() {
			select {
			case resyncs <- struct{}{}:
			default:
			}
		})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	return invs, resyncs
}

// sampleRecord returns a record with every field set, tagged so that
// records differ.
func sampleRecord(tag string) store.TokenRecord {
	zone := time.FixedZone("UTC+2", 2*60*60)
	return store.TokenRecord{
		AccessToken:  "access-" + tag,
		RefreshToken: "refresh-" + tag,
		Expiry:       time.Date(2030, 6, 1, 12, 0, 0, 123456789, zone),
		State:        store.StateActive,
		Version:      99, // ignored by Put
		UpdatedAt:    time.Date(2030, 5, 1, 12, 0, 0, 1, zone),
		LastRefresh:  time.Date(2030, 5, 1, 11, 0, 0, 0, time.UTC),
		LastError:    "token endpoint answered 500 (" + tag + ")",
		LastErrorAt:  time.Date(2030, 4, 1, 11, 0, 0, 0, time.UTC),
	}
}

// recordDiff names the fields in which got and want differ, Version aside;
// times compare as instants.
func recordDiff(got, want store.TokenRecord) []string {
	var diff []string
	check := func(name string, same bool) {
		if !same {
			diff = append(diff, name)
		}
	}
	check("AccessToken", got.AccessToken == want.AccessToken)
	check("RefreshToken", got.RefreshToken == want.RefreshToken)
	check("Expiry", got.Expiry.Equal(want.Expiry))
	check("State", got.State == want.State)
	check("UpdatedAt", got.UpdatedAt.Equal(want.UpdatedAt))
	check("LastRefresh", got.LastRefresh.Equal(want.LastRefresh))
	check("LastError", got.LastError == want.LastError)
	check("LastErrorAt", got.LastErrorAt.Equal(want.LastErrorAt))
	return diff
}

// mustPut writes rec and returns the new version, failing the test if it
// cannot.
func mustPut(t *testing.T, s auth.Store, tenant string, rec store.TokenRecord, prev int64) int64 {
	t.Helper()
	v, err := s.Put(t.Context(), tenant, rec, prev)
	if err != nil {
		t.Fatalf("Put(%q, prev %d): %v", tenant, prev, err)
	}
	return v
}

// mustGet reads the tenant's record, failing the test if it cannot.
func mustGet(t *testing.T, s auth.Store, tenant string) store.TokenRecord {
	t.Helper()
	rec, err := s.Get(t.Context(), tenant)
	if err != nil {
		t.Fatalf("Get(%q): %v", tenant, err)
	}
	return rec
}

func TestContract(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) { testContract(t, b) })
	}
}

// testContract checks that b keeps the auth.Store contract.
func testContract(t *testing.T, b backend) {
	t.Run("get missing is ErrNotFound", func(t *testing.T) {
		s := b.setup(t).open(t)
		if rec, err := s.Get(t.Context(), "nobody"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Get(%q) = %+v, %v; want ErrNotFound", "nobody", rec, err)
		}
	})

	t.Run("round trip of every field", func(t *testing.T) {
		s := b.setup(t).open(t)
		tests := []struct {
			name string
			rec  store.TokenRecord
		}{
			{name: "every field", rec: sampleRecord("full")},
			{name: "static token", rec: store.TokenRecord{AccessToken: "pat", State: store.StateActive}},
			{name: "reauthorization required", rec: store.TokenRecord{
				AccessToken: "a", RefreshToken: "r", State: store.StateReauthorizationRequired,
				LastError: "invalid_grant", LastErrorAt: time.Unix(1e9, 0),
			}},
			// The store keeps an empty State as it is; only its indexes
			// count it as active.
			{name: "empty state", rec: store.TokenRecord{AccessToken: "a", RefreshToken: "r"}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				tenant := "t-" + randomHex(t, 4)
				if v := mustPut(t, s, tenant, tt.rec, 0); v != 1 {
					t.Errorf("Put(%q) = %d; want 1", tenant, v)
				}
				got := mustGet(t, s, tenant)
				if diff := recordDiff(got, tt.rec); len(diff) > 0 {
					t.Errorf("Get(%q) = %+v; differs in %v from %+v", tenant, got, diff, tt.rec)
				}
				if got.Version != 1 {
					t.Errorf("Get(%q).Version = %d; want 1", tenant, got.Version)
				}
			})
		}
	})

	t.Run("versions increase by one", func(t *testing.T) {
		s := b.setup(t).open(t)
		for want := int64(1); want <= 4; want++ {
			rec := sampleRecord(fmt.Sprint(want))
			if v := mustPut(t, s, "acme", rec, want-1); v != want {
				t.Fatalf("Put(prev %d) = %d; want %d", want-1, v, want)
			}
			got := mustGet(t, s, "acme")
			if got.Version != want || got.AccessToken != rec.AccessToken {
				t.Fatalf("Get = version %d, %q; want %d, %q", got.Version, got.AccessToken, want, rec.AccessToken)
			}
		}
	})

	t.Run("a lost condition writes nothing", func(t *testing.T) {
		tests := []struct {
			name string
			prev int64
		}{
			{name: "stale version", prev: 1},
			{name: "future version", prev: 7},
			{name: "must not exist", prev: 0},
			{name: "negative", prev: -2},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				f := b.setup(t)
				s := f.open(t)
				invs, _ := subscribe(t, f.open(t))
				mustPut(t, s, "acme", sampleRecord("one"), 0)
				mustPut(t, s, "acme", sampleRecord("two"), 1)
				nextInvalidation(t, invs)
				nextInvalidation(t, invs)

				v, err := s.Put(t.Context(), "acme", sampleRecord("lost"), tt.prev)
				if !errors.Is(err, store.ErrConflict) {
					t.Fatalf("Put(prev %d) = %d, %v; want ErrConflict", tt.prev, v, err)
				}
				got := mustGet(t, s, "acme")
				if got.Version != 2 || got.AccessToken != "access-two" {
					t.Errorf("Get after conflict = version %d, %q; want 2, %q", got.Version, got.AccessToken, "access-two")
				}
				// The next write still follows version 2, and its
				// invalidation is the next one seen: the conflict published
				// nothing.
				mustPut(t, s, "acme", sampleRecord("three"), 2)
				if inv := nextInvalidation(t, invs); inv.Version != 3 {
					t.Errorf("invalidation after conflict = %+v; want version 3", inv)
				}
			})
		}
	})

	t.Run("AnyVersion writes whatever is stored", func(t *testing.T) {
		s := b.setup(t).open(t)
		if v := mustPut(t, s, "acme", sampleRecord("a"), store.AnyVersion); v != 1 {
			t.Errorf("Put(AnyVersion) on nothing = %d; want 1", v)
		}
		mustPut(t, s, "acme", sampleRecord("b"), 1)
		if v := mustPut(t, s, "acme", sampleRecord("c"), store.AnyVersion); v != 3 {
			t.Errorf("Put(AnyVersion) on version 2 = %d; want 3", v)
		}
		if got := mustGet(t, s, "acme"); got.AccessToken != "access-c" {
			t.Errorf("Get = %q; want %q", got.AccessToken, "access-c")
		}
	})

	t.Run("concurrent conditional writes: one wins", func(t *testing.T) {
		s := b.setup(t).open(t)
		mustPut(t, s, "acme", sampleRecord("base"), 0)
		const writers = 8
		var wins, conflicts atomic.Int64
		var wg sync.WaitGroup
		for i := range writers {
			wg.Go(func() {
				_, err := s.Put(t.Context(), "acme", sampleRecord(fmt.Sprint(i)), 1)
				switch {
				case err == nil:
					wins.Add(1)
				case errors.Is(err, store.ErrConflict):
					conflicts.Add(1)
				default:
					t.Errorf("Put: %v", err)
				}
			})
		}
		wg.Wait()
		if wins.Load() != 1 || conflicts.Load() != writers-1 {
			t.Errorf("%d wins, %d conflicts; want 1, %d", wins.Load(), conflicts.Load(), writers-1)
		}
		if got := mustGet(t, s, "acme"); got.Version != 2 {
			t.Errorf("Get.Version = %d; want 2", got.Version)
		}
	})

	t.Run("delete", func(t *testing.T) {
		f := b.setup(t)
		s := f.open(t)
		invs, _ := subscribe(t, f.open(t))
		ctx := t.Context()
		mustPut(t, s, "acme", sampleRecord("a"), 0)
		mustPut(t, s, "other", sampleRecord("o"), 0)
		if ok, err := s.TryLock(ctx, "acme", "owner", time.Minute); !ok || err != nil {
			t.Fatalf("TryLock = %v, %v; want true", ok, err)
		}
		nextInvalidation(t, invs)
		nextInvalidation(t, invs)

		if err := s.Delete(ctx, "acme"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if inv := nextInvalidation(t, invs); inv != (store.Invalidation{Tenant: "acme", Version: 1, Deleted: true}) {
			t.Errorf("invalidation = %+v; want acme deleted, its tombstone at version 1", inv)
		}
		if rec, err := s.Get(ctx, "acme"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get after Delete = %+v, %v; want ErrNotFound", rec, err)
		}
		if tenants, _, err := s.List(ctx, "", 10); err != nil || !slices.Equal(tenants, []string{"other"}) {
			t.Errorf("List after Delete = %q, %v; want [other]", tenants, err)
		}
		if due, err := s.DueBefore(ctx, time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC), 10); err != nil || !slices.Equal(due, []string{"other"}) {
			t.Errorf("DueBefore after Delete = %q, %v; want [other]", due, err)
		}
		if ok, err := s.TryLock(ctx, "acme", "someone else", time.Minute); !ok || err != nil {
			t.Errorf("TryLock after Delete = %v, %v; want true (the lock is gone)", ok, err)
		}
		if err := s.Delete(ctx, "acme"); err != nil {
			t.Errorf("Delete of a deleted tenant: %v", err)
		}
		if err := s.Delete(ctx, "never-put"); err != nil {
			t.Errorf("Delete of an unknown tenant: %v", err)
		}
		// A deleted tenant's versions go on from where they were.
		if v := mustPut(t, s, "acme", sampleRecord("again"), 0); v != 2 {
			t.Errorf("Put after Delete = %d; want 2", v)
		}
	})

	t.Run("versions never restart", func(t *testing.T) {
		f := b.setup(t)
		s := f.open(t)
		invs, _ := subscribe(t, f.open(t))
		ctx := t.Context()
		mustPut(t, s, "acme", sampleRecord("one"), 0)
		mustPut(t, s, "acme", sampleRecord("two"), 1)
		// A slow writer read version 2 before the tenant was deleted and
		// imported again.
		slow := mustGet(t, s, "acme")
		if err := s.Delete(ctx, "acme"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		for range 3 {
			nextInvalidation(t, invs)
		}

		for _, prev := range []int64{1, 2, 3} {
			if v, err := s.Put(ctx, "acme", sampleRecord("stale"), prev); !errors.Is(err, store.ErrConflict) {
				t.Errorf("Put(prev %d) on a deleted tenant = %d, %v; want ErrConflict", prev, v, err)
			}
		}
		if v := mustPut(t, s, "acme", sampleRecord("reimported"), 0); v != 3 {
			t.Errorf("Put(prev 0) after Delete of version 2 = %d; want 3", v)
		}
		if inv := nextInvalidation(t, invs); inv != (store.Invalidation{Tenant: "acme", Version: 3}) {
			t.Errorf("invalidation of the re-import = %+v; want acme version 3", inv)
		}
		if v, err := s.Put(ctx, "acme", sampleRecord("slow"), slow.Version); !errors.Is(err, store.ErrConflict) {
			t.Errorf("Put(prev %d), the version read before Delete = %d, %v; want ErrConflict", slow.Version, v, err)
		}
		if v, err := s.Put(ctx, "acme", sampleRecord("again"), 0); !errors.Is(err, store.ErrConflict) {
			t.Errorf("Put(prev 0) on a live record = %d, %v; want ErrConflict", v, err)
		}
		if got := mustGet(t, s, "acme"); got.Version != 3 || got.AccessToken != "access-reimported" {
			t.Errorf("Get = version %d, %q; want 3, %q", got.Version, got.AccessToken, "access-reimported")
		}

		if err := s.Delete(ctx, "acme"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if v := mustPut(t, s, "acme", sampleRecord("imported"), store.AnyVersion); v != 4 {
			t.Errorf("Put(AnyVersion) after Delete of version 3 = %d; want 4", v)
		}
		if v := mustPut(t, s, "acme", sampleRecord("refreshed"), 4); v != 5 {
			t.Errorf("Put(prev 4) = %d; want 5", v)
		}
	})

	t.Run("restore writes only where nothing or an older record is", func(t *testing.T) {
		testRestore(t, b)
	})

	t.Run("epoch is stable", func(t *testing.T) {
		f := b.setup(t)
		s1, s2 := f.open(t), f.open(t)
		ctx := t.Context()
		first, err := s1.Epoch(ctx)
		if err != nil || first == "" {
			t.Fatalf("Epoch = %q, %v; want a value", first, err)
		}
		mustPut(t, s1, "acme", sampleRecord("a"), 0)
		if err := s1.Delete(ctx, "acme"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		for i, s := range []auth.Store{s1, s2} {
			if got, err := s.Epoch(ctx); err != nil || got != first {
				t.Errorf("store %d: Epoch after writes = %q, %v; want %q", i+1, got, err, first)
			}
		}
		if other, err := b.setup(t).open(t).Epoch(ctx); err != nil || other == first {
			t.Errorf("Epoch of another data set = %q, %v; want a value other than %q", other, err, first)
		}
	})

	t.Run("epoch is the same for stores that ask at once", func(t *testing.T) {
		f := b.setup(t)
		const stores = 8
		epochs := make([]string, stores)
		var wg sync.WaitGroup
		for i := range stores {
			s := f.open(t)
			wg.Go(func() {
				e, err := s.Epoch(t.Context())
				if err != nil {
					t.Errorf("store %d: Epoch: %v", i, err)
				}
				epochs[i] = e
			})
		}
		wg.Wait()
		if epochs[0] == "" || slices.ContainsFunc(epochs, func(e string) bool { return e != epochs[0] }) {
			t.Errorf("Epochs = %q; want one value", epochs)
		}
	})

	t.Run("delete of an unknown tenant leaves a tombstone", func(t *testing.T) {
		f := b.setup(t)
		s := f.open(t)
		invs, _ := subscribe(t, f.open(t))
		ctx := t.Context()
		if err := s.Delete(ctx, "ghost"); err != nil {
			t.Fatalf("Delete of an unknown tenant: %v", err)
		}
		// The tombstone of a tenant never put keeps version 0.
		if inv := nextInvalidation(t, invs); inv.Tenant != "ghost" || inv.Version != 0 {
			t.Errorf("invalidation = %+v; want ghost version 0", inv)
		}
		if rec, err := s.Get(ctx, "ghost"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get = %+v, %v; want ErrNotFound", rec, err)
		}
		if tenants, _, err := s.List(ctx, "", 10); err != nil || len(tenants) != 0 {
			t.Errorf("List = %q, %v; want none", tenants, err)
		}
		rec := sampleRecord("lost")
		rec.Version = 1
		if ok, err := s.Restore(ctx, "ghost", rec); ok || err != nil {
			t.Errorf("Restore(version 1) over the tombstone = %v, %v; want false, nil", ok, err)
		}
		if v, err := s.Put(ctx, "ghost", sampleRecord("x"), 1); !errors.Is(err, store.ErrConflict) {
			t.Errorf("Put(prev 1) on the tombstone = %d, %v; want ErrConflict", v, err)
		}
		if v := mustPut(t, s, "ghost", sampleRecord("new"), 0); v != 1 {
			t.Errorf("Put(prev 0) on the tombstone = %d; want 1", v)
		}
		if got := mustGet(t, s, "ghost"); got.Version != 1 || got.AccessToken != "access-new" {
			t.Errorf("Get = version %d, %q; want 1, %q", got.Version, got.AccessToken, "access-new")
		}
	})

	t.Run("count by state", func(t *testing.T) {
		s := b.setup(t).open(t)
		ctx := t.Context()
		active := func(tag string) store.TokenRecord { return sampleRecord(tag) }
		reauth := func(tag string) store.TokenRecord {
			rec := sampleRecord(tag)
			rec.State = store.StateReauthorizationRequired
			return rec
		}
		checkCounts(t, s, "empty store", 0, 0)

		mustPut(t, s, "a1", active("a1"), 0)
		mustPut(t, s, "a2", active("a2"), 0)
		mustPut(t, s, "a3", store.TokenRecord{AccessToken: "pat"}, 0) // an empty State counts as active
		mustPut(t, s, "r1", reauth("r1"), 0)
		mustPut(t, s, "r2", reauth("r2"), 0)
		mustPut(t, s, "odd", store.TokenRecord{AccessToken: "x", State: "unheard-of"}, 0)
		checkCounts(t, s, "after puts", 3, 2)

		mustPut(t, s, "a1", active("a1 again"), 1)
		checkCounts(t, s, "after a rewrite", 3, 2)

		if err := s.Delete(ctx, "a2"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if err := s.Delete(ctx, "r2"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		checkCounts(t, s, "after deletes", 2, 1)

		mustPut(t, s, "a1", reauth("a1 revoked"), 2)
		checkCounts(t, s, "after active → reauthorization_required", 1, 2)
		mustPut(t, s, "r1", active("r1 reconnected"), 1)
		checkCounts(t, s, "after reauthorization_required → active", 2, 1)
		mustPut(t, s, "odd", reauth("odd"), 1)
		checkCounts(t, s, "after an unknown state → reauthorization_required", 2, 2)

		mustPut(t, s, "a2", active("a2 reimported"), 0)
		checkCounts(t, s, "after a re-import", 3, 2)
	})

	t.Run("indexes follow the last of concurrent writes", func(t *testing.T) {
		s := b.setup(t).open(t)
		ctx := t.Context()
		base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		// Each writer's record is in another state and index position, so
		// that indexes left by an earlier write show.
		record := func(w int) store.TokenRecord {
			rec := store.TokenRecord{AccessToken: fmt.Sprint(w), RefreshToken: "r", Expiry: base.Add(time.Duration(w) * time.Minute)}
			switch w % 3 {
			case 0:
				rec.State = store.StateActive
			case 1:
				rec.State = store.StateReauthorizationRequired
			}
			return rec
		}
		// Short bursts, each ending in a race between its last writes'
		// index updates.
		const bursts, writers = 40, 6
		for burst := range bursts {
			var wg sync.WaitGroup
			start := make(chan struct{})
			for w := range writers {
				wg.Go(func() {
					<-start
					if (w+burst)%writers == 0 {
						if err := s.Delete(ctx, "acme"); err != nil {
							t.Errorf("Delete: %v", err)
						}
						return
					}
					if _, err := s.Put(ctx, "acme", record(w), store.AnyVersion); err != nil {
						t.Errorf("Put: %v", err)
					}
				})
			}
			close(start)
			wg.Wait()

			var wantDue, wantListed []string
			var wantActive, wantReauth int64
			last, err := s.Get(ctx, "acme")
			switch {
			case errors.Is(err, store.ErrNotFound):
			case err != nil:
				t.Fatalf("Get: %v", err)
			default:
				wantListed = []string{"acme"}
				if last.State == store.StateReauthorizationRequired {
					wantReauth = 1
				} else {
					wantActive = 1
					wantDue = []string{"acme"}
				}
			}
			if got, _, err := s.List(ctx, "", 10); err != nil || !slices.Equal(got, wantListed) {
				t.Fatalf("burst %d: List = %q, %v; want %q", burst, got, err, wantListed)
			}
			due, err := s.DueBefore(ctx, base.Add(time.Hour), 10)
			if err != nil || !slices.Equal(due, wantDue) {
				t.Fatalf("burst %d: DueBefore = %q, %v; want %q", burst, due, err, wantDue)
			}
			if len(due) == 1 {
				// The score is the last record's expiry, not an earlier one's.
				if got, err := s.DueBefore(ctx, last.Expiry, 10); err != nil || len(got) != 0 {
					t.Fatalf("burst %d: DueBefore(the last expiry) = %q, %v; want none", burst, got, err)
				}
			}
			checkCounts(t, s, fmt.Sprintf("burst %d", burst), wantActive, wantReauth)
			if t.Failed() {
				return
			}
		}
	})

	t.Run("list pages in order", func(t *testing.T) {
		s := b.setup(t).open(t)
		for _, tenant := range []string{"t-c", "t-a", "t-e", "T-z", "t-b", "t-d"} {
			mustPut(t, s, tenant, sampleRecord(tenant), 0)
		}
		// A rewrite does not list a tenant twice.
		mustPut(t, s, "t-c", sampleRecord("again"), 1)
		tests := []struct {
			name     string
			after    string
			limit    int
			want     []string
			wantMore bool
		}{
			{name: "first page", after: "", limit: 2, want: []string{"T-z", "t-a"}, wantMore: true},
			{name: "middle page", after: "t-a", limit: 2, want: []string{"t-b", "t-c"}, wantMore: true},
			{name: "exact last page", after: "t-c", limit: 2, want: []string{"t-d", "t-e"}, wantMore: false},
			{name: "short last page", after: "t-c", limit: 5, want: []string{"t-d", "t-e"}, wantMore: false},
			{name: "after an unknown id", after: "t-bb", limit: 2, want: []string{"t-c", "t-d"}, wantMore: true},
			{name: "after the last", after: "t-e", limit: 2, want: nil, wantMore: false},
			{name: "all", after: "", limit: 100, want: []string{"T-z", "t-a", "t-b", "t-c", "t-d", "t-e"}, wantMore: false},
			{name: "one", after: "", limit: 1, want: []string{"T-z"}, wantMore: true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, more, err := s.List(t.Context(), tt.after, tt.limit)
				if err != nil {
					t.Fatalf("List(%q, %d): %v", tt.after, tt.limit, err)
				}
				if !slices.Equal(got, tt.want) || more != tt.wantMore {
					t.Errorf("List(%q, %d) = %q, %v; want %q, %v", tt.after, tt.limit, got, more, tt.want, tt.wantMore)
				}
			})
		}
	})

	t.Run("due before", func(t *testing.T) {
		s := b.setup(t).open(t)
		ctx := t.Context()
		base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		put := func(tenant string, rec store.TokenRecord) {
			t.Helper()
			mustPut(t, s, tenant, rec, store.AnyVersion)
		}
		refreshable := func(expiry time.Time) store.TokenRecord {
			return store.TokenRecord{AccessToken: "a", RefreshToken: "r", Expiry: expiry, State: store.StateActive}
		}
		put("in-3m", refreshable(base.Add(3*time.Minute)))
		put("in-1m", refreshable(base.Add(1*time.Minute)))
		put("in-2m", refreshable(base.Add(2*time.Minute)))
		put("also-2m", refreshable(base.Add(2*time.Minute)))
		put("static", store.TokenRecord{AccessToken: "pat", Expiry: base, State: store.StateActive})
		put("never-expires", refreshable(time.Time{}))
		put("revoked", store.TokenRecord{AccessToken: "a", RefreshToken: "r", Expiry: base, State: store.StateReauthorizationRequired})

		check := func(name string, before time.Time, limit int, want []string) {
			t.Helper()
			got, err := s.DueBefore(ctx, before, limit)
			if err != nil {
				t.Fatalf("%s: DueBefore: %v", name, err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s: DueBefore(base+%v, %d) = %q; want %q", name, before.Sub(base), limit, got, want)
			}
		}
		check("all", base.Add(time.Hour), 10, []string{"in-1m", "also-2m", "in-2m", "in-3m"})
		check("limit", base.Add(time.Hour), 2, []string{"in-1m", "also-2m"})
		check("before excludes equal", base.Add(2*time.Minute), 10, []string{"in-1m"})
		check("none yet", base, 10, nil)

		put("in-3m", refreshable(base.Add(30*time.Second)))
		check("expiry moved", base.Add(time.Hour), 10, []string{"in-3m", "in-1m", "also-2m", "in-2m"})
		put("in-2m", store.TokenRecord{AccessToken: "a", RefreshToken: "r", Expiry: base, State: store.StateReauthorizationRequired})
		check("revoked later", base.Add(time.Hour), 10, []string{"in-3m", "in-1m", "also-2m"})
		put("in-1m", refreshable(time.Time{}))
		check("expiry cleared", base.Add(time.Hour), 10, []string{"in-3m", "also-2m"})
		if err := s.Delete(ctx, "also-2m"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		check("deleted", base.Add(time.Hour), 10, []string{"in-3m"})
		put("static", refreshable(base))
		check("refresh token added", base.Add(time.Hour), 10, []string{"static", "in-3m"})
		put("no-state", store.TokenRecord{AccessToken: "a", RefreshToken: "r", Expiry: base.Add(time.Minute)})
		check("an empty state counts as active", base.Add(time.Hour), 10, []string{"static", "in-3m", "no-state"})
	})

	t.Run("lock is exclusive", func(t *testing.T) {
		f := b.setup(t)
		s1, s2 := f.open(t), f.open(t)
		ctx := t.Context()
		steps := []struct {
			name string
			do   func() (bool, error)
			want bool
		}{
			{"owner takes", func() (bool, error) { return s1.TryLock(ctx, "acme", "one", time.Minute) }, true},
			{"other cannot take", func() (bool, error) { return s2.TryLock(ctx, "acme", "two", time.Minute) }, false},
			{"owner cannot take again", func() (bool, error) { return s1.TryLock(ctx, "acme", "one", time.Minute) }, false},
			{"other tenant is free", func() (bool, error) { return s2.TryLock(ctx, "other", "two", time.Minute) }, true},
			{"other cannot renew", func() (bool, error) { return s2.RenewLock(ctx, "acme", "two", time.Minute) }, false},
			{"other cannot unlock", func() (bool, error) { return true, s2.Unlock(ctx, "acme", "two") }, true},
			{"still held", func() (bool, error) { return s2.TryLock(ctx, "acme", "two", time.Minute) }, false},
			{"owner renews", func() (bool, error) { return s1.RenewLock(ctx, "acme", "one", time.Minute) }, true},
			{"owner unlocks", func() (bool, error) { return true, s1.Unlock(ctx, "acme", "one") }, true},
			{"unlocked renew fails", func() (bool, error) { return s1.RenewLock(ctx, "acme", "one", time.Minute) }, false},
			{"unlock of a free lock", func() (bool, error) { return true, s1.Unlock(ctx, "acme", "one") }, true},
			{"other takes", func() (bool, error) { return s2.TryLock(ctx, "acme", "two", time.Minute) }, true},
		}
		for _, step := range steps {
			got, err := step.do()
			if err != nil || got != step.want {
				t.Fatalf("%s: got %v, %v; want %v", step.name, got, err, step.want)
			}
		}
	})

	t.Run("lock expires", func(t *testing.T) {
		f := b.setup(t)
		s := f.open(t)
		ctx := t.Context()
		const ttl = 200 * time.Millisecond
		if ok, err := s.TryLock(ctx, "acme", "one", ttl); !ok || err != nil {
			t.Fatalf("TryLock = %v, %v; want true", ok, err)
		}
		f.elapse(ttl + time.Millisecond)
		waitFor(t, "the lock to expire", func() bool {
			ok, err := s.TryLock(ctx, "acme", "two", time.Minute)
			if err != nil {
				t.Fatalf("TryLock: %v", err)
			}
			return ok
		})
		if ok, err := s.RenewLock(ctx, "acme", "one", time.Minute); ok || err != nil {
			t.Errorf("RenewLock by the expired owner = %v, %v; want false", ok, err)
		}
	})

	t.Run("renew extends the lock", func(t *testing.T) {
		f := b.setup(t)
		s := f.open(t)
		ctx := t.Context()
		const ttl = 200 * time.Millisecond
		if ok, err := s.TryLock(ctx, "acme", "one", ttl); !ok || err != nil {
			t.Fatalf("TryLock = %v, %v; want true", ok, err)
		}
		if ok, err := s.RenewLock(ctx, "acme", "one", time.Hour); !ok || err != nil {
			t.Fatalf("RenewLock = %v, %v; want true", ok, err)
		}
		letExpire(t, f, s, ttl)
		if ok, err := s.TryLock(ctx, "acme", "two", time.Minute); ok || err != nil {
			t.Errorf("TryLock after the first ttl = %v, %v; want false (renewed)", ok, err)
		}
	})

	t.Run("subscribe reaches every subscriber", func(t *testing.T) {
		f := b.setup(t)
		pub := f.open(t)
		invs1, resyncs := subscribe(t, f.open(t))
		invs2, _ := subscribe(t, f.open(t))
		ctx := t.Context()

		mustPut(t, pub, "acme", sampleRecord("a"), 0)
		mustPut(t, pub, "acme", sampleRecord("b"), 1)
		if err := pub.Delete(ctx, "acme"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		want := []store.Invalidation{{Tenant: "acme", Version: 1}, {Tenant: "acme", Version: 2}, {Tenant: "acme", Version: 2, Deleted: true}}
		for i, invs := range []<-chan store.Invalidation{invs1, invs2} {
			for _, w := range want {
				if got := nextInvalidation(t, invs); got != w {
					t.Errorf("subscriber %d: invalidation = %+v; want %+v", i+1, got, w)
				}
			}
		}
		if len(resyncs) != 0 {
			t.Errorf("onResync called %d times without a reconnect", len(resyncs))
		}
	})

	t.Run("heartbeats reach every subscriber", func(t *testing.T) {
		f := b.setup(t)
		pub := f.open(t)
		invs1, _ := subscribe(t, f.open(t))
		invs2, _ := subscribe(t, f.open(t))
		if err := pub.Heartbeat(t.Context(), "replica-1"); err != nil {
			t.Fatalf("Heartbeat: %v", err)
		}
		for i, invs := range []<-chan store.Invalidation{invs1, invs2} {
			if got := nextInvalidation(t, invs); got != (store.Invalidation{Heartbeat: "replica-1"}) {
				t.Errorf("subscriber %d: got %+v; want the heartbeat of replica-1", i+1, got)
			}
		}
		if err := pub.Heartbeat(t.Context(), ""); err == nil {
			t.Error("Heartbeat with an empty id: nil error; want it refused")
		}
	})

	t.Run("subscribe stops with its context", func(t *testing.T) {
		f := b.setup(t)
		pub := f.open(t)
		ctx, cancel := context.WithCancel(t.Context())
		var calls atomic.Int64
		if err := f.open(t).Subscribe(ctx, func(store.Invalidation) { calls.Add(1) }, nil); err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		invs, _ := subscribe(t, f.open(t))
		mustPut(t, pub, "acme", sampleRecord("a"), 0)
		nextInvalidation(t, invs)
		waitFor(t, "the first subscriber's call", func() bool { return calls.Load() == 1 })
		cancel()
		for v := int64(2); v <= 4; v++ {
			mustPut(t, pub, "acme", sampleRecord("b"), v-1)
			nextInvalidation(t, invs)
		}
		if n := calls.Load(); n != 1 {
			t.Errorf("onInvalidate called %d times after its context ended; want 0", n-1)
		}
	})

	t.Run("subscribe resyncs after a lost connection", func(t *testing.T) {
		f := b.setup(t)
		if f.dropConnections == nil {
			t.Skip("this store's subscriptions cannot lose a connection")
		}
		pub := f.open(t)
		invs, resyncs := subscribe(t, f.open(t))
		mustPut(t, pub, "acme", sampleRecord("a"), 0)
		nextInvalidation(t, invs)

		f.dropConnections(t)
		select {
		case <-resyncs:
		case <-time.After(waitTimeout):
			t.Fatalf("no onResync within %v of losing the connection", waitTimeout)
		}
		mustPut(t, pub, "acme", sampleRecord("b"), 1)
		if got := nextInvalidation(t, invs); got != (store.Invalidation{Tenant: "acme", Version: 2}) {
			t.Errorf("invalidation after resync = %+v; want acme version 2", got)
		}
	})

	t.Run("oauth state is taken once", func(t *testing.T) {
		s := b.setup(t).open(t)
		ctx := t.Context()
		want := store.OAuthState{
			Tenant:       "acme",
			ReturnTo:     "https://app.example/settings?x=1",
			CodeVerifier: "verifier-" + randomHex(t, 16),
			RedirectURL:  "https://proxy.example/oauth/callback",
			CreatedAt:    time.Date(2030, 1, 1, 0, 0, 0, 5, time.UTC),
		}
		if err := s.PutOAuthState(ctx, "state-1", want, time.Minute); err != nil {
			t.Fatalf("PutOAuthState: %v", err)
		}
		got, err := s.TakeOAuthState(ctx, "state-1")
		if err != nil {
			t.Fatalf("TakeOAuthState: %v", err)
		}
		if got.Tenant != want.Tenant || got.ReturnTo != want.ReturnTo || got.CodeVerifier != want.CodeVerifier ||
			got.RedirectURL != want.RedirectURL || !got.CreatedAt.Equal(want.CreatedAt) {
			t.Errorf("TakeOAuthState = %+v; want %+v", got, want)
		}
		for _, name := range []string{"state-1", "never-put"} {
			if st, err := s.TakeOAuthState(ctx, name); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("TakeOAuthState(%q) = %+v, %v; want ErrNotFound", name, st, err)
			}
		}
	})

	t.Run("oauth state expires", func(t *testing.T) {
		f := b.setup(t)
		s := f.open(t)
		ctx := t.Context()
		const ttl = 200 * time.Millisecond
		if err := s.PutOAuthState(ctx, "short", store.OAuthState{Tenant: "acme"}, ttl); err != nil {
			t.Fatalf("PutOAuthState: %v", err)
		}
		if err := s.PutOAuthState(ctx, "long", store.OAuthState{Tenant: "acme"}, time.Hour); err != nil {
			t.Fatalf("PutOAuthState: %v", err)
		}
		letExpire(t, f, s, ttl)
		if st, err := s.TakeOAuthState(ctx, "short"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("TakeOAuthState after its ttl = %+v, %v; want ErrNotFound", st, err)
		}
		if _, err := s.TakeOAuthState(ctx, "long"); err != nil {
			t.Errorf("TakeOAuthState of a live state: %v", err)
		}
	})

	t.Run("bad arguments are refused", func(t *testing.T) {
		s := b.setup(t).open(t)
		ctx := t.Context()
		calls := []struct {
			name string
			call func() error
		}{
			{"Get empty tenant", func() error { _, err := s.Get(ctx, ""); return err }},
			{"Put empty tenant", func() error { _, err := s.Put(ctx, "", sampleRecord("x"), 0); return err }},
			{"Put tenant with a brace", func() error { _, err := s.Put(ctx, "a}b", sampleRecord("x"), 0); return err }},
			{"Put tenant with a blank", func() error { _, err := s.Put(ctx, "a b", sampleRecord("x"), 0); return err }},
			{"Delete empty tenant", func() error { return s.Delete(ctx, "") }},
			{"List limit 0", func() error { _, _, err := s.List(ctx, "", 0); return err }},
			{"DueBefore limit -1", func() error { _, err := s.DueBefore(ctx, time.Now(), -1); return err }},
			{"TryLock ttl 0", func() error { _, err := s.TryLock(ctx, "acme", "o", 0); return err }},
			{"RenewLock ttl below 1ms", func() error { _, err := s.RenewLock(ctx, "acme", "o", time.Microsecond); return err }},
			{"PutOAuthState ttl 0", func() error { return s.PutOAuthState(ctx, "s", store.OAuthState{}, 0) }},
		}
		for _, c := range calls {
			if err := c.call(); err == nil || errors.Is(err, store.ErrNotFound) {
				t.Errorf("%s = %v; want an argument error", c.name, err)
			}
		}
		if tenants, _, err := s.List(ctx, "", 10); err != nil || len(tenants) != 0 {
			t.Errorf("List after refused calls = %q, %v; want nothing written", tenants, err)
		}
	})

	t.Run("ping", func(t *testing.T) {
		if err := b.setup(t).open(t).Ping(t.Context()); err != nil {
			t.Errorf("Ping: %v", err)
		}
	})
}

// restored returns sampleRecord(tag) as a replica holds it at version v,
// in state st.
func restored(tag string, v int64, st store.State) store.TokenRecord {
	rec := sampleRecord(tag)
	rec.Version, rec.State = v, st
	return rec
}

// testRestore checks that b's Restore writes a record back under its own
// version only where the tenant has nothing, or another write-back of a
// lower version.
func testRestore(t *testing.T, b backend) {
	far := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)

	t.Run("no record: written at its version and indexed", func(t *testing.T) {
		f := b.setup(t)
		s := f.open(t)
		invs, _ := subscribe(t, f.open(t))
		ctx := t.Context()
		rec := restored("held", 7, store.StateActive)
		if ok, err := s.Restore(ctx, "acme", rec); !ok || err != nil {
			t.Fatalf("Restore(version 7) on nothing = %v, %v; want true, nil", ok, err)
		}
		got := mustGet(t, s, "acme")
		if diff := recordDiff(got, rec); len(diff) > 0 || got.Version != 7 {
			t.Errorf("Get = %+v (version %d); differs in %v from the restored record, version 7", got, got.Version, diff)
		}
		if inv := nextInvalidation(t, invs); inv != (store.Invalidation{Tenant: "acme", Version: 7}) {
			t.Errorf("invalidation = %+v; want acme version 7", inv)
		}
		if tenants, _, err := s.List(ctx, "", 10); err != nil || !slices.Equal(tenants, []string{"acme"}) {
			t.Errorf("List = %q, %v; want [acme]", tenants, err)
		}
		if due, err := s.DueBefore(ctx, far, 10); err != nil || !slices.Equal(due, []string{"acme"}) {
			t.Errorf("DueBefore = %q, %v; want [acme]", due, err)
		}
		if due, err := s.DueBefore(ctx, rec.Expiry, 10); err != nil || len(due) != 0 {
			t.Errorf("DueBefore(the restored expiry) = %q, %v; want none (indexed at its expiry)", due, err)
		}
		checkCounts(t, s, "after Restore", 1, 0)
		// Versions go on from the restored one.
		if v := mustPut(t, s, "acme", sampleRecord("next"), 7); v != 8 {
			t.Errorf("Put(prev 7) after Restore = %d; want 8", v)
		}
	})

	t.Run("record written since the loss: not written, whatever its version", func(t *testing.T) {
		f := b.setup(t)
		s := f.open(t)
		ctx := t.Context()
		mustPut(t, s, "acme", sampleRecord("reconnected"), 0)
		for _, v := range []int64{2, 5} {
			if ok, err := s.Restore(ctx, "acme", restored("held", v, store.StateReauthorizationRequired)); ok || err != nil {
				t.Errorf("Restore(version %d) over a record Put wrote at version 1 = %v, %v; want false, nil", v, ok, err)
			}
		}
		if got := mustGet(t, s, "acme"); got.Version != 1 || got.AccessToken != "access-reconnected" {
			t.Errorf("Get = version %d, %q; want the record Put wrote", got.Version, got.AccessToken)
		}
	})

	t.Run("older write-back: replaced and reindexed", func(t *testing.T) {
		f := b.setup(t)
		s := f.open(t)
		invs, _ := subscribe(t, f.open(t))
		ctx := t.Context()
		if ok, err := s.Restore(ctx, "acme", restored("stale", 2, store.StateActive)); !ok || err != nil {
			t.Fatalf("Restore(version 2) on nothing = %v, %v", ok, err)
		}
		nextInvalidation(t, invs)

		rec := restored("held", 5, store.StateReauthorizationRequired)
		if ok, err := s.Restore(ctx, "acme", rec); !ok || err != nil {
			t.Fatalf("Restore(version 5) over a write-back of version 2 = %v, %v; want true, nil", ok, err)
		}
		got := mustGet(t, s, "acme")
		if diff := recordDiff(got, rec); len(diff) > 0 || got.Version != 5 {
			t.Errorf("Get = %+v (version %d); differs in %v from the restored record, version 5", got, got.Version, diff)
		}
		if inv := nextInvalidation(t, invs); inv != (store.Invalidation{Tenant: "acme", Version: 5}) {
			t.Errorf("invalidation = %+v; want acme version 5", inv)
		}
		if tenants, _, err := s.List(ctx, "", 10); err != nil || !slices.Equal(tenants, []string{"acme"}) {
			t.Errorf("List = %q, %v; want [acme]", tenants, err)
		}
		if due, err := s.DueBefore(ctx, far, 10); err != nil || len(due) != 0 {
			t.Errorf("DueBefore = %q, %v; want none (the restored record needs reauthorization)", due, err)
		}
		checkCounts(t, s, "after Restore", 0, 1)
	})

	t.Run("equal or newer write-back: not written", func(t *testing.T) {
		tests := []struct {
			name    string
			version int64
		}{
			{name: "equal version", version: 2},
			{name: "older version", version: 1},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				f := b.setup(t)
				s := f.open(t)
				invs, _ := subscribe(t, f.open(t))
				ctx := t.Context()
				if ok, err := s.Restore(ctx, "acme", restored("two", 2, store.StateActive)); !ok || err != nil {
					t.Fatalf("Restore(version 2) on nothing = %v, %v", ok, err)
				}
				nextInvalidation(t, invs)

				rec := restored("held", tt.version, store.StateReauthorizationRequired)
				if ok, err := s.Restore(ctx, "acme", rec); ok || err != nil {
					t.Fatalf("Restore(version %d) over version 2 = %v, %v; want false, nil", tt.version, ok, err)
				}
				if got := mustGet(t, s, "acme"); got.Version != 2 || got.AccessToken != "access-two" {
					t.Errorf("Get = version %d, %q; want 2, %q", got.Version, got.AccessToken, "access-two")
				}
				checkCounts(t, s, "after a refused Restore", 1, 0)
				// The refused Restore published nothing: the next
				// invalidation seen is the next write's.
				mustPut(t, s, "acme", sampleRecord("three"), 2)
				if inv := nextInvalidation(t, invs); inv != (store.Invalidation{Tenant: "acme", Version: 3}) {
					t.Errorf("invalidation after a refused Restore = %+v; want acme version 3", inv)
				}
			})
		}
	})

	t.Run("tombstone: not written", func(t *testing.T) {
		f := b.setup(t)
		s := f.open(t)
		invs, _ := subscribe(t, f.open(t))
		ctx := t.Context()
		mustPut(t, s, "acme", sampleRecord("one"), 0)
		mustPut(t, s, "acme", sampleRecord("two"), 1)
		if err := s.Delete(ctx, "acme"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		for range 3 {
			nextInvalidation(t, invs)
		}

		for _, v := range []int64{1, 2, 3, 100} {
			if ok, err := s.Restore(ctx, "acme", restored("held", v, store.StateActive)); ok || err != nil {
				t.Errorf("Restore(version %d) over the tombstone of version 2 = %v, %v; want false, nil", v, ok, err)
			}
		}
		if rec, err := s.Get(ctx, "acme"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get = %+v, %v; want ErrNotFound", rec, err)
		}
		if tenants, _, err := s.List(ctx, "", 10); err != nil || len(tenants) != 0 {
			t.Errorf("List = %q, %v; want none", tenants, err)
		}
		if due, err := s.DueBefore(ctx, far, 10); err != nil || len(due) != 0 {
			t.Errorf("DueBefore = %q, %v; want none", due, err)
		}
		checkCounts(t, s, "after refused Restores", 0, 0)
		// The tombstone kept its version, and nothing was published.
		if v := mustPut(t, s, "acme", sampleRecord("reimported"), 0); v != 3 {
			t.Errorf("Put(prev 0) after the refused Restores = %d; want 3", v)
		}
		if inv := nextInvalidation(t, invs); inv != (store.Invalidation{Tenant: "acme", Version: 3}) {
			t.Errorf("invalidation after refused Restores = %+v; want acme version 3", inv)
		}
	})

	t.Run("tombstone of a tenant never put: not written", func(t *testing.T) {
		s := b.setup(t).open(t)
		ctx := t.Context()
		if err := s.Delete(ctx, "ghost"); err != nil {
			t.Fatalf("Delete of an unknown tenant: %v", err)
		}
		if ok, err := s.Restore(ctx, "ghost", restored("held", 4, store.StateActive)); ok || err != nil {
			t.Errorf("Restore(version 4) over the tombstone of a tenant never put = %v, %v; want false, nil", ok, err)
		}
		if rec, err := s.Get(ctx, "ghost"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get = %+v, %v; want ErrNotFound", rec, err)
		}
		if tenants, _, err := s.List(ctx, "", 10); err != nil || len(tenants) != 0 {
			t.Errorf("List = %q, %v; want none", tenants, err)
		}
	})

	t.Run("bad arguments are refused", func(t *testing.T) {
		f := b.setup(t)
		s := f.open(t)
		invs, _ := subscribe(t, f.open(t))
		ctx := t.Context()
		mustPut(t, s, "acme", sampleRecord("one"), 0)
		nextInvalidation(t, invs)
		tests := []struct {
			name    string
			tenant  string
			version int64
		}{
			{name: "version 0 on nothing", tenant: "fresh", version: 0},
			{name: "version -1 on nothing", tenant: "fresh", version: -1},
			{name: "version 0 on a record", tenant: "acme", version: 0},
			{name: "AnyVersion on a record", tenant: "acme", version: store.AnyVersion},
			{name: "empty tenant", tenant: "", version: 3},
			{name: "tenant with a brace", tenant: "a{b", version: 3},
		}
		for _, tt := range tests {
			ok, err := s.Restore(ctx, tt.tenant, restored("held", tt.version, store.StateActive))
			if ok || err == nil || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
				t.Errorf("%s: Restore(%q, version %d) = %v, %v; want false and an argument error", tt.name, tt.tenant, tt.version, ok, err)
			}
		}
		if got := mustGet(t, s, "acme"); got.Version != 1 || got.AccessToken != "access-one" {
			t.Errorf("Get(acme) = version %d, %q; want 1, %q", got.Version, got.AccessToken, "access-one")
		}
		if rec, err := s.Get(ctx, "fresh"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get(fresh) = %+v, %v; want ErrNotFound", rec, err)
		}
		if tenants, _, err := s.List(ctx, "", 10); err != nil || !slices.Equal(tenants, []string{"acme"}) {
			t.Errorf("List = %q, %v; want [acme]", tenants, err)
		}
		checkCounts(t, s, "after refused Restores", 1, 0)
		mustPut(t, s, "acme", sampleRecord("two"), 1)
		if inv := nextInvalidation(t, invs); inv != (store.Invalidation{Tenant: "acme", Version: 2}) {
			t.Errorf("invalidation after refused Restores = %+v; want acme version 2 (they published nothing)", inv)
		}
	})
}
