package testutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"thanksio-proxy/store"
)

// RedisURL returns the URL of the Redis the tests were told to use,
// REDIS_URL, or, when that is not set, of a miniredis that the test owns,
// whose clock follows real time: its keys expire, and so lock leases run
// out, as they do in Redis. Tests that share the Redis at REDIS_URL keep
// apart by their key prefix (KeyPrefix); a named Redis that does not answer
// fails the tests that use it, it is never skipped.
func RedisURL(tb testing.TB) string {
	tb.Helper()
	if u := os.Getenv("REDIS_URL"); u != "" {
		return u
	}
	return "redis://" + realTimeMiniredis(tb).Addr()
}

// realTimeMiniredis starts a miniredis for the rest of the test and moves
// its clock, which otherwise moves only when told (FastForward), as real
// time passes.
func realTimeMiniredis(tb testing.TB) *miniredis.Miniredis {
	m := miniredis.RunT(tb)
	stop := make(chan struct{})
	// Registered after RunT's Close, so it runs before it.
	tb.Cleanup(func() { close(stop) })
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				m.FastForward(now.Sub(last))
				last = now
			}
		}
	}()
	return m
}

// KeyPrefix returns a fresh Redis key prefix, "thanksio-proxy-test-" and
// twelve random hex digits and a colon, under which a test's keys stay
// apart from those of every other test sharing the server.
func KeyPrefix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "thanksio-proxy-test-" + hex.EncodeToString(b) + ":"
}

// RedisStores returns a function that opens a store.Redis on a new client
// of the Redis at url ("" for RedisURL's), as another replica's process
// would; every store it opens shares one fresh key prefix (KeyPrefix) and
// one random sealing key. Each store has answered a PING when it is
// returned, and the test's cleanup closes its client. The function fails
// tb when the Redis cannot be reached.
func RedisStores(tb testing.TB, url string) func() *store.Redis {
	tb.Helper()
	if url == "" {
		url = RedisURL(tb)
	}
	prefix := KeyPrefix()
	key := make([]byte, store.KeySize)
	_, _ = rand.Read(key)
	sealer, err := store.NewSealer([][]byte{key})
	if err != nil {
		tb.Fatalf("testutil: RedisStores: %v", err)
	}
	return func() *store.Redis {
		tb.Helper()
		client, err := store.OpenRedisURL(url)
		if err != nil {
			tb.Fatalf("testutil: RedisStores: %v", err)
		}
		tb.Cleanup(func() { _ = client.Close() })
		st := store.NewRedis(client, prefix, sealer)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := st.Ping(ctx); err != nil {
			tb.Fatalf("testutil: RedisStores: the Redis does not answer: %v", err)
		}
		return st
	}
}
