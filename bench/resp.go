//go:build linux

package main

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisConn is the benchmark's Redis client, used only outside the measured
// rounds: to check the server, read INFO commandstats before and after them,
// and delete the benchmark's own keys.
type redisConn struct {
	c *redis.Client
}

func dialRedis(addr string) (*redisConn, error) {
	c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 5 * time.Second, PoolSize: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		return nil, err
	}
	return &redisConn{c: c}, nil
}

func (rc *redisConn) Close() error { return rc.c.Close() }

// do sends one command and returns its reply.
func (rc *redisConn) do(args ...string) (any, error) {
	a := make([]any, len(args))
	for i, s := range args {
		a[i] = s
	}
	return rc.c.Do(context.Background(), a...).Result()
}

// commandCalls returns the calls of every command since the server started
// (INFO commandstats), by command name.
func (rc *redisConn) commandCalls() (map[string]int64, error) {
	s, err := rc.c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		return nil, err
	}
	calls := make(map[string]int64)
	for line := range strings.Lines(s) {
		// cmdstat_get:calls=2,usec=15,usec_per_call=7.50,...
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				calls[strings.TrimPrefix(name, "cmdstat_")] = n
			}
		}
	}
	return calls, nil
}

// readsProcessed returns the read events the server has handled since it
// started (INFO stats total_reads_processed, Redis 6 and later): at least
// one per command, or pipeline, that a client sends and waits for, so a
// bound on the round trips, which INFO commandstats cannot give (it counts
// the commands that scripts run too). It returns -1 when the server does
// not count them.
func (rc *redisConn) readsProcessed() (int64, error) {
	s, err := rc.c.Info(context.Background(), "stats").Result()
	if err != nil {
		return 0, err
	}
	return infoField(s, "total_reads_processed"), nil
}

// infoField returns the integer field name of an INFO answer, or -1.
func infoField(info, name string) int64 {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				return n
			}
		}
	}
	return -1
}

// redisPID returns the process id of the Redis server at addr (INFO
// server), to tell the benchmark's own redis-server from one that holds
// its port.
func redisPID(addr string) (int, error) {
	rc, err := dialRedis(addr)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	s, err := rc.c.Info(context.Background(), "server").Result()
	if err != nil {
		return 0, err
	}
	return int(infoField(s, "process_id")), nil
}

// deletePrefix deletes every key that starts with prefix (SCAN and UNLINK).
func (rc *redisConn) deletePrefix(prefix string) (int, error) {
	ctx := context.Background()
	deleted := 0
	iter := rc.c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := rc.c.Unlink(ctx, batch...).Err(); err != nil {
			return err
		}
		deleted += len(batch)
		batch = batch[:0]
		return nil
	}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 1000 {
			if err := flush(); err != nil {
				return deleted, err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return deleted, err
	}
	return deleted, flush()
}

// callsDelta returns the calls made between two commandCalls readings, by
// command, leaving out the INFO calls that took the readings.
func callsDelta(before, after map[string]int64) map[string]int64 {
	by := make(map[string]int64)
	for name, n := range after {
		if name == "info" {
			continue
		}
		if d := n - before[name]; d > 0 {
			by[name] = d
		}
	}
	return by
}
