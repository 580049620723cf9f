//go:build linux

package main

import (
	"context"
	crand "crypto/rand"
	"fmt"
	"net/url"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/store"
)

// tokenEndpointDelay is how long the token endpoint takes to answer.
const tokenEndpointDelay = 50 * time.Millisecond

// herdCallers is how many callers ask for the expired tenant at once.
const herdCallers = 1000

// BenchmarkRefreshHerd releases herdCallers goroutines at once on a tenant
// whose token has just expired, with a token endpoint that answers after
// 50 ms, and reports the calls the token endpoint got per herd (must be 1)
// and each caller's latency beyond those 50 ms. One op is one herd. It runs
// with the in-memory store and, when BENCH_REDIS_URL or REDIS_URL names one,
// a Redis store.
//
//	go test -run '^$' -bench RefreshHerd -benchtime 5x ./bench
func BenchmarkRefreshHerd(b *testing.B) {
	b.Run(fmt.Sprintf("memory/callers=%d", herdCallers), func(b *testing.B) {
		benchHerd(b, store.NewMemory())
	})
	redisURL := os.Getenv("BENCH_REDIS_URL")
	if redisURL == "" {
		redisURL = os.Getenv("REDIS_URL")
	}
	b.Run(fmt.Sprintf("redis/callers=%d", herdCallers), func(b *testing.B) {
		if redisURL == "" {
			b.Skip("no BENCH_REDIS_URL or REDIS_URL")
		}
		benchHerd(b, openRedisStore(b, redisURL))
	})
}

// openRedisStore returns a Redis store under a prefix of its own, whose keys
// are deleted when the benchmark ends.
func openRedisStore(b *testing.B, redisURL string) auth.Store {
	client, err := store.OpenRedisURL(redisURL)
	if err != nil {
		b.Fatalf("OpenRedisURL: %v", err)
	}
	key := make([]byte, store.KeySize)
	_, _ = crand.Read(key)
	sealer, err := store.NewSealer([][]byte{key})
	if err != nil {
		b.Fatal(err)
	}
	prefix := "thanksio-proxy-bench-herd-" + randomHex(6) + ":"
	b.Cleanup(func() {
		client.Close()
		if u, err := url.Parse(redisURL); err == nil && u.Scheme == "redis" && u.User == nil {
			if rc, err := dialRedis(u.Host); err == nil {
				_, _ = rc.deletePrefix(prefix)
				rc.Close()
			}
		}
	})
	return store.NewRedis(client, prefix, sealer)
}

func benchHerd(b *testing.B, st auth.Store) {
	double := thanksiotest.NewServer(b, thanksiotest.Options{AccessLifetime: time.Hour})
	tokens := auth.New(auth.Config{
		Store: st,
		OAuth: &oauth2.Config{
			ClientID:     double.ClientID(),
			ClientSecret: double.ClientSecret(),
			Endpoint: oauth2.Endpoint{
				AuthURL: double.AuthorizeURL(), TokenURL: double.TokenURL(),
				AuthStyle: oauth2.AuthStyleInParams,
			},
		},
		RefreshAhead: 5 * time.Minute,
	})
	ctx := context.Background()
	startCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := tokens.Start(startCtx); err != nil {
		b.Fatalf("Start: %v", err)
	}
	defer tokens.Close()

	var added []float64 // milliseconds beyond the token endpoint's delay
	totalCalls, maxCalls := 0, 0
	for i := range b.N {
		b.StopTimer()
		tenant := fmt.Sprintf("herd-%d-%d", b.N, i)
		g := double.NewGrant()
		// A token that has just expired, cached as such: every caller
		// needs the one refresh.
		if _, err := tokens.Import(ctx, tenant, auth.Grant{
			AccessToken: g.AccessToken, RefreshToken: g.RefreshToken, Expiry: time.Now().Add(-time.Second),
		}); err != nil {
			b.Fatalf("Import: %v", err)
		}
		double.SetTokenFault(thanksiotest.TokenFault{Delay: tokenEndpointDelay})
		before := double.RefreshCalls()

		gate := make(chan struct{})
		var ready, done sync.WaitGroup
		latency := make([]time.Duration, herdCallers)
		var failures, stale atomic.Int64
		for j := range herdCallers {
			ready.Add(1)
			done.Go(func() {
				ready.Done()
				<-gate
				t0 := time.Now()
				tok, err := tokens.Token(ctx, tenant)
				latency[j] = time.Since(t0)
				switch {
				case err != nil:
					failures.Add(1)
				case tok == g.AccessToken:
					stale.Add(1)
				}
			})
		}
		ready.Wait()
		b.StartTimer()
		close(gate)
		done.Wait()
		b.StopTimer()

		if n := failures.Load(); n > 0 {
			b.Fatalf("%d of %d callers failed", n, herdCallers)
		}
		if n := stale.Load(); n > 0 {
			b.Fatalf("%d callers got the expired token", n)
		}
		calls := double.RefreshCalls() - before
		totalCalls += calls
		maxCalls = max(maxCalls, calls)
		for _, d := range latency {
			added = append(added, float64(d-tokenEndpointDelay)/float64(time.Millisecond))
		}
	}
	double.SetTokenFault(thanksiotest.TokenFault{})
	slices.Sort(added)
	q := func(p float64) float64 { return added[int(p*float64(len(added)-1))] }
	b.ReportMetric(float64(totalCalls)/float64(b.N), "token-calls/op")
	b.ReportMetric(float64(maxCalls), "max-token-calls")
	b.ReportMetric(q(0.5), "added-p50-ms")
	b.ReportMetric(q(0.99), "added-p99-ms")
	b.ReportMetric(added[len(added)-1], "added-max-ms")
}
