package store_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"thanksio-proxy/ratelimit"
	"thanksio-proxy/store"
)

// benchParallelism is the goroutines per GOMAXPROCS that call the limiter at
// once: a proxy under load has many requests waiting for their turn.
const benchParallelism = 32

// BenchmarkLimiterRedis measures the rate limiter's price per admitted call,
// each tenant under its limit: what the proxy calls per call (Wait, then
// Observe of a 200), against the Redis at REDIS_URL (default
// redis://127.0.0.1:6379) under a key prefix of its own, whose keys it
// deletes at the end; and with no shared schedule (local). Besides ns/op and
// allocs/op it reports cpu-ns/op, this process's CPU (user and system) per
// call; redis-cmds/op, the commands Redis ran per call (INFO commandstats,
// INFO itself left out; it counts those a script runs, and other clients of
// the same Redis add to it); round-trips/op, the round trips the limiter's
// client made per call (a pipeline is one), counted by a hook on that
// client; and redis-cpu-ns/op, Redis's CPU per call (INFO cpu).
//
//	REDIS_URL=redis://127.0.0.1:6379 go test -run '^$' -bench LimiterRedis -benchmem ./store/
func BenchmarkLimiterRedis(b *testing.B) {
	url := os.Getenv("REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379"
	}
	for _, tenants := range []int{1, 10000} {
		b.Run("tenants="+strconv.Itoa(tenants), func(b *testing.B) {
			benchLimiter(b, url, tenants)
		})
	}
	for _, tenants := range []int{1, 10000} {
		b.Run("local/tenants="+strconv.Itoa(tenants), func(b *testing.B) {
			benchLimiter(b, "", tenants)
		})
	}
}

// benchLimiter runs the benchmark over tenants tenants with the shared
// schedule in the Redis at url, or with none when url is empty.
func benchLimiter(b *testing.B, url string, tenants int) {
	var (
		shared ratelimit.Schedule
		admin  redis.UniversalClient
		hook   = new(countingHook)
	)
	if url != "" {
		client, err := store.OpenRedisURL(url)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = client.Close() })
		client.AddHook(hook)
		if admin, err = store.OpenRedisURL(url); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = admin.Close() })
		prefix := benchPrefix()
		b.Cleanup(func() { deleteBenchKeys(b, admin, prefix) })
		key := make([]byte, store.KeySize)
		_, _ = rand.Read(key)
		sealer, err := store.NewSealer([][]byte{key})
		if err != nil {
			b.Fatal(err)
		}
		shared = store.NewRedis(client, prefix, sealer).Schedule()
	}
	// So high a limit that no tenant ever waits; a short period keeps the
	// schedules small (two periods and a guard of calls).
	l, err := ratelimit.New(ratelimit.Config{Limit: 1 << 30, Period: time.Second, Shared: shared})
	if err != nil {
		b.Fatal(err)
	}
	names := make([]string, tenants)
	for i := range names {
		names[i] = fmt.Sprintf("bench-%05d", i)
	}
	ctx := context.Background()
	// The scripts loaded, the connections open.
	for i := range min(tenants, 64) {
		if _, err := l.Wait(ctx, names[i], time.Now().Add(time.Minute)); err != nil {
			b.Fatal(err)
		}
	}
	answer := http.Header{"X-Ratelimit-Remaining": {"42"}}
	var next atomic.Uint64

	cmds0, rcpu0 := redisStats(b, admin)
	trips0 := hook.trips.Load()
	cpu0 := processCPU()
	b.ReportAllocs()
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(7919))
		for pb.Next() {
			tenant := names[i%tenants]
			i++
			if _, err := l.Wait(ctx, tenant, time.Now().Add(time.Minute)); err != nil {
				b.Error(err)
				return
			}
			l.Observe(tenant, http.StatusOK, answer, time.Millisecond)
		}
	})
	b.StopTimer()
	cpu := processCPU() - cpu0
	trips := hook.trips.Load() - trips0
	cmds, rcpu := redisStats(b, admin)
	n := float64(b.N)
	b.ReportMetric(float64(cpu.Nanoseconds())/n, "cpu-ns/op")
	if admin != nil {
		b.ReportMetric(float64(cmds-cmds0)/n, "redis-cmds/op")
		b.ReportMetric(float64(trips)/n, "round-trips/op")
		b.ReportMetric(float64((rcpu-rcpu0).Nanoseconds())/n, "redis-cpu-ns/op")
	}
}

// countingHook counts a client's round trips: one per command sent alone,
// one per pipeline.
type countingHook struct{ trips atomic.Int64 }

func (h *countingHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *countingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.trips.Add(1)
		return next(ctx, cmd)
	}
}

func (h *countingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.trips.Add(1)
		return next(ctx, cmds)
	}
}

// redisStats returns the commands the Redis of client has run (INFO
// commandstats, less INFO's own) and the CPU it has used; zeros for a nil
// client.
func redisStats(tb testing.TB, client redis.UniversalClient) (cmds int64, cpu time.Duration) {
	tb.Helper()
	if client == nil {
		return 0, 0
	}
	info, err := client.Info(context.Background(), "commandstats", "cpu").Result()
	if err != nil {
		tb.Fatalf("INFO: %v", err)
	}
	for line := range strings.Lines(info) {
		line = strings.TrimSpace(line)
		if name, rest, ok := strings.Cut(line, ":"); ok && strings.HasPrefix(name, "cmdstat_") && name != "cmdstat_info" {
			calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
			n, err := strconv.ParseInt(calls, 10, 64)
			if err != nil {
				tb.Fatalf("INFO commandstats: %q", line)
			}
			cmds += n
		}
		if name, v, ok := strings.Cut(line, ":"); ok && (name == "used_cpu_sys" || name == "used_cpu_user") {
			s, err := strconv.ParseFloat(v, 64)
			if err != nil {
				tb.Fatalf("INFO cpu: %q", line)
			}
			cpu += time.Duration(s * float64(time.Second))
		}
	}
	return cmds, cpu
}

// processCPU returns the CPU this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchPrefix returns a key prefix of the benchmark's own.
func benchPrefix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "thanksio-proxy-bench-" + hex.EncodeToString(b) + ":"
}

// deleteBenchKeys deletes the keys under prefix, on every primary behind
// client.
func deleteBenchKeys(tb testing.TB, client redis.UniversalClient, prefix string) {
	each := func(ctx context.Context, fn func(context.Context, *redis.Client) error) error {
		if c, ok := client.(*redis.ClusterClient); ok {
			return c.ForEachMaster(ctx, fn)
		}
		return forEachServer(ctx, client, fn)
	}
	err := each(context.Background(), func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		pipe := c.Pipeline()
		for iter.Next(ctx) {
			pipe.Unlink(ctx, iter.Val())
		}
		if err := iter.Err(); err != nil {
			return err
		}
		_, err := pipe.Exec(ctx)
		return err
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		tb.Errorf("delete %s*: %v", prefix, err)
	}
}
