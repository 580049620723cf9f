package testutil_test

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"thanksio-proxy/internal/testutil"
)

func TestKillRestart(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		wantKept bool
	}{
		{name: "in memory", wantKept: false},
		{name: "append-only file", args: []string{"--appendonly", "yes", "--appendfsync", "always"}, wantKept: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := testutil.StartRedis(t, tt.args...)
			addr := srv.Addr()
			if host, port, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" || port == "" {
				t.Fatalf("Addr() = %q; want 127.0.0.1:port", addr)
			}
			if got, want := srv.URL(), "redis://"+addr; got != want {
				t.Errorf("URL() = %q; want %q", got, want)
			}
			c := srv.Client()
			ctx := t.Context()
			if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatalf("Set(k) = %v; want nil", err)
			}

			srv.Kill()
			if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				conn.Close()
				t.Fatalf("dialing %s after Kill succeeded; want nothing listening", addr)
			}
			srv.Kill() // a second Kill does nothing

			srv.Restart()
			if got := srv.Addr(); got != addr {
				t.Errorf("Addr() after Restart = %q; want %q", got, addr)
			}
			got, err := c.Get(ctx, "k").Result()
			switch {
			case tt.wantKept && (err != nil || got != "v"):
				t.Errorf("Get(k) after Restart = %q, %v; want %q, nil", got, err, "v")
			case !tt.wantKept && !errors.Is(err, redis.Nil):
				t.Errorf("Get(k) after Restart = %q, %v; want redis.Nil", got, err)
			}
		})
	}
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	srv := testutil.StartRedis(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), ReadTimeout: 200 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	ctx := t.Context()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("Ping() = %v; want nil", err)
	}

	srv.Pause()
	err := c.Ping(ctx).Err()
	if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
		t.Fatalf("Ping() while paused = %v; want a timeout", err)
	}

	srv.Resume()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("Ping() after Resume = %v; want nil", err)
	}
}

func TestReplica(t *testing.T) {
	t.Parallel()
	primary := testutil.StartRedis(t)
	replica := testutil.StartReplica(t, primary)
	ctx := t.Context()
	if err := primary.Client().Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("Set(k) on the primary = %v; want nil", err)
	}
	rc := replica.Client()
	testutil.Eventually(t, "the key set on the primary is on the replica", func() bool {
		got, err := rc.Get(ctx, "k").Result()
		return err == nil && got == "v"
	})
}

func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	primary := testutil.StartRedis(t)
	replica := testutil.StartReplica(t, primary)
	sentinel := testutil.StartSentinel(t, primary, "testmaster")
	ctx := t.Context()
	if got, want := sentinel.URL(), "redis+sentinel://"+sentinel.Addr()+"/testmaster"; got != want {
		t.Errorf("URL() = %q; want %q", got, want)
	}
	if got, err := sentinel.MasterAddr(ctx); err != nil || got != primary.Addr() {
		t.Fatalf("MasterAddr() = %q, %v; want %q, nil", got, err, primary.Addr())
	}

	if got := sentinel.Failover(t, ctx); got != replica.Addr() {
		t.Fatalf("Failover() = %q; want the replica, %q", got, replica.Addr())
	}
	if got, err := sentinel.MasterAddr(ctx); err != nil || got != replica.Addr() {
		t.Fatalf("MasterAddr() after Failover = %q, %v; want %q, nil", got, err, replica.Addr())
	}
	sentinel.WaitMaster(t, replica.Addr())

	fc := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:    sentinel.MasterName(),
		SentinelAddrs: []string{sentinel.Addr()},
	})
	t.Cleanup(func() { _ = fc.Close() })
	if err := fc.Set(ctx, "k", "after failover", 0).Err(); err != nil {
		t.Fatalf("Set(k) through Sentinel after Failover = %v; want nil", err)
	}
	if got, err := replica.Client().Get(ctx, "k").Result(); err != nil || got != "after failover" {
		t.Errorf("Get(k) on the promoted replica = %q, %v; want %q, nil", got, err, "after failover")
	}
}
