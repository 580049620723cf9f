package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// OutboxItem is an entry of an outbox as Claim returns it.
type OutboxItem struct {
	// ID names the entry, as Add was given it.
	ID string
	// Data is what Add stored, unchanged.
	Data []byte
	// Attempts counts the calls of Retry on the entry so far.
	Attempts int
}

// An outbox keeps entries (events to deliver) until Done removes them. Each
// entry has a time from which it is due; Claim takes due entries and makes
// each not due again for a lease, atomically, so that of several callers of
// Claim (replicas) one only gets a given entry until its lease ends: what its
// holder does not finish within the lease (a replica that stopped) comes back
// to the next Claim. Add keeps a new entry claimed by its adder for a lease.
// Retry and Release end a claim early (after a failed attempt, at shutdown);
// Done removes the entry.
//
// Leases and due times are measured by the outbox's own clock (Redis's TIME
// for RedisOutbox), so replicas' clocks do not matter.

// RedisOutbox is an outbox in Redis, shared by every replica that uses the
// same Redis and key prefix. Its keys, all in the {events} hash tag so that
// they share one Cluster slot and every operation is one script, are
//
//	P{events}:data       hash: id → the entry's data
//	P{events}:due        sorted set: id → when the entry is due (Unix milliseconds)
//	P{events}:attempts   hash: id → the attempts counted by Retry
//
// It is safe for concurrent use by multiple goroutines.
type RedisOutbox struct {
	client redis.UniversalClient
	keys   []string // data, due, attempts
}

// Outbox returns the outbox kept beside r's records.
func (r *Redis) Outbox() *RedisOutbox {
	p := r.prefix + "{events}:"
	return &RedisOutbox{client: r.client, keys: []string{p + "data", p + "due", p + "attempts"}}
}

// outboxNow is the prelude of the outbox scripts: now is Redis's time in
// Unix milliseconds. Redis 5 and later replicate a script's effects, not
// the script, so TIME is allowed.
const outboxNow = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

var (
	// KEYS: data, due, attempts. ARGV: id, data, lease ms.
	outboxAddScript = redis.NewScript(outboxNow + `
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 1
`)

	// KEYS: data, due, attempts. ARGV: n, lease ms. It returns id, data
	// and attempts of each entry claimed, flat. An id in the due set
	// without data (which no operation leaves, but a partial restore of
	// the keys could) is removed.
	outboxClaimScript = redis.NewScript(outboxNow + `
local n, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, n)
local out = {}
for _, id in ipairs(ids) do
  local d = redis.call('HGET', KEYS[1], id)
  if d then
    redis.call('ZADD', KEYS[2], now + lease, id)
    out[#out + 1] = id
    out[#out + 1] = d
    out[#out + 1] = tonumber(redis.call('HGET', KEYS[3], id) or '0')
  else
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
return out
`)

	// KEYS: data, due, attempts. ARGV: id, after ms, "1" to count an
	// attempt. It returns 0 when the entry is gone.
	outboxRetryScript = redis.NewScript(outboxNow + `
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return 0
end
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
end
redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[2]), ARGV[1])
return 1
`)
)

// Add keeps data under id, claimed by the caller for lease (zero: due at
// once). Adding an id again replaces its data and claim, and keeps its
// attempts.
func (o *RedisOutbox) Add(ctx context.Context, id string, data []byte, lease time.Duration) error {
	if err := checkOutboxArgs(id, lease); err != nil {
		return fmt.Errorf("store: outbox add: %w", err)
	}
	if len(data) == 0 {
		return errors.New("store: outbox add: empty data")
	}
	if err := outboxAddScript.Run(ctx, o.client, o.keys, id, data, lease.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("store: outbox add %q: %w", id, err)
	}
	return nil
}

// Claim takes up to n (at least 1) entries that are due, oldest due first,
// each made not due for lease, and returns them.
func (o *RedisOutbox) Claim(ctx context.Context, n int, lease time.Duration) ([]OutboxItem, error) {
	if n < 1 || lease < 0 {
		return nil, errors.New("store: outbox claim: n must be at least 1 and lease not negative")
	}
	res, err := outboxClaimScript.Run(ctx, o.client, o.keys, n, lease.Milliseconds()).Slice()
	if err != nil {
		return nil, fmt.Errorf("store: outbox claim: %w", err)
	}
	if len(res)%3 != 0 {
		return nil, fmt.Errorf("store: outbox claim: unexpected answer of %d values", len(res))
	}
	items := make([]OutboxItem, 0, len(res)/3)
	for i := 0; i < len(res); i += 3 {
		id, ok1 := res[i].(string)
		data, ok2 := res[i+1].(string)
		attempts, ok3 := res[i+2].(int64)
		if !ok1 || !ok2 || !ok3 {
			return nil, errors.New("store: outbox claim: unexpected answer")
		}
		items = append(items, OutboxItem{ID: id, Data: []byte(data), Attempts: int(attempts)})
	}
	return items, nil
}

// Retry counts an attempt on the entry and makes it due after after from
// now, ending any claim on it. An entry that is gone (Done) is ErrNotFound.
func (o *RedisOutbox) Retry(ctx context.Context, id string, after time.Duration) error {
	return o.reschedule(ctx, "retry", id, after, true)
}

// Release makes the entry due at once without counting an attempt: its
// holder gives its claim back, for another caller of Claim to take. An entry
// that is gone (Done) is ErrNotFound.
func (o *RedisOutbox) Release(ctx context.Context, id string) error {
	return o.reschedule(ctx, "release", id, 0, false)
}

func (o *RedisOutbox) reschedule(ctx context.Context, op, id string, after time.Duration, count bool) error {
	if err := checkOutboxArgs(id, after); err != nil {
		return fmt.Errorf("store: outbox %s: %w", op, err)
	}
	flag := "0"
	if count {
		flag = "1"
	}
	n, err := outboxRetryScript.Run(ctx, o.client, o.keys, id, after.Milliseconds(), flag).Int64()
	if err != nil {
		return fmt.Errorf("store: outbox %s %q: %w", op, id, err)
	}
	if n == 0 {
		return fmt.Errorf("store: outbox %s %q: %w", op, id, ErrNotFound)
	}
	return nil
}

// Done removes the entry. Removing one that is gone is not an error.
func (o *RedisOutbox) Done(ctx context.Context, id string) error {
	if err := checkOutboxArgs(id, 0); err != nil {
		return fmt.Errorf("store: outbox done: %w", err)
	}
	// One transaction: the keys share a slot, so it reaches one Cluster
	// node.
	_, err := o.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRem(ctx, o.keys[1], id)
		p.HDel(ctx, o.keys[0], id)
		p.HDel(ctx, o.keys[2], id)
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: outbox done %q: %w", id, err)
	}
	return nil
}

// checkOutboxArgs refuses an id that is empty or holds a blank or a
// control character, and a negative duration.
func checkOutboxArgs(id string, d time.Duration) error {
	if id == "" || len(id) > 256 {
		return errors.New("invalid outbox id")
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c == 0x7f {
			return errors.New("invalid outbox id")
		}
	}
	if d < 0 {
		return errors.New("negative duration")
	}
	return nil
}
