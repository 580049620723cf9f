package store_test

import (
	"context"
	"fmt"
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
	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/store"
	"thanksio-proxy/store/storetest"
)

// Both implementations satisfy the interface that auth defines, and what
// the contract suite checks beside it.
var (
	_ auth.Store = (*store.Redis)(nil)
	_ auth.Store = (*store.Memory)(nil)

	_ storetest.Store = (*store.Redis)(nil)
	_ storetest.Store = (*store.Memory)(nil)
)

// TestContract runs the store contract suite against every backend.
func TestContract(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) *storetest.Fixture { return &b.setup(t).Fixture })
		})
	}
}

// A backend is one implementation the contract runs against.
type backend struct {
	name string
	// setup returns a fixture over a fresh, empty data set, and removes that
	// data when the test ends.
	setup func(t *testing.T) *fixture
}

// A fixture is what the contract suite needs of a data set, and for the
// Redis backends the means to reach its keys.
type fixture struct {
	storetest.Fixture
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

func setupMemory(t *testing.T) *fixture {
	clock := testutil.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	m := store.NewMemory()
	m.Now = clock.Now
	return &fixture{Fixture: storetest.Fixture{
		Open:   func(*testing.T) storetest.Store { return m },
		Elapse: clock.Advance,
	}}
}

func setupMiniredis(t *testing.T) *fixture {
	mr := miniredis.RunT(t)
	f := setupRedis(t, "miniredis", "redis://"+mr.Addr(), "")
	f.Elapse = mr.FastForward
	f.DropConnections = func(t *testing.T) {
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
		name := strings.TrimSuffix(testutil.KeyPrefix(), ":")
		f := setupRedis(t, env, rawURL, name)
		f.DropConnections = func(t *testing.T) {
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
	prefix := testutil.KeyPrefix()
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
		Fixture: storetest.Fixture{
			Open: func(t *testing.T) storetest.Store { return rf.newStore(t, sealer) },
		},
		redis: rf,
	}
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
