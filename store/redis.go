package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultPrefix is the key prefix NewRedis uses when it is given none.
const DefaultPrefix = "thanksio-proxy:"

// subscribeTimeout bounds the wait for the server to confirm a subscription
// when the caller's context has no deadline of its own.
const subscribeTimeout = 10 * time.Second

// Redis is the store for any number of replicas, over any go-redis
// UniversalClient: standalone, Sentinel or Cluster. Token records and OAuth
// states are sealed with a Sealer, so Redis never holds a token in plain
// text.
//
// The keys, all under one prefix (P below), are:
//
//	P{tenant}:token        hash: v = version, d = sealed record (tenant id as additional data)
//	P{tenant}:lock         string: the lock owner, with a TTL
//	Ptenants               sorted set of every tenant id, all scores 0 (paged by ZRANGEBYLEX)
//	Pdue                   sorted set: refreshable active tenants, score = expiry in Unix milliseconds
//	Poauth-state:<state>   string: a sealed OAuthState ("oauth-state:<state>" as additional data), with a TTL
//
// and invalidations are published on the channel Pinvalidate as
// "<tenant> <version>". The tenant id sits in a hash tag, so that one
// tenant's keys share a Cluster slot and a conditional write is one script
// on one key; the global keys live in other slots and are updated by separate
// commands after it.
//
// A Redis is safe for concurrent use by multiple goroutines.
type Redis struct {
	client redis.UniversalClient
	prefix string
	sealer *Sealer

	put       *redis.Script
	renewLock *redis.Script
	unlock    *redis.Script
}

// NewRedis returns a Redis store over client whose keys all start with
// prefix ("" means DefaultPrefix), sealing with sealer. It panics if client
// or sealer is nil: Redis never keeps tokens unsealed. The caller keeps
// ownership of client and closes it.
func NewRedis(client redis.UniversalClient, prefix string, sealer *Sealer) *Redis {
	if client == nil || sealer == nil {
		panic("store: NewRedis needs a client and a sealer")
	}
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Redis{
		client: client,
		prefix: prefix,
		sealer: sealer,
		// KEYS[1] is the tenant's token hash; ARGV[1] the expected version
		// (0: none may exist, -1: any), ARGV[2] the sealed record. It returns
		// the new version, or -1 when the expected version was not there.
		put: redis.NewScript(`
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local want = tonumber(ARGV[1])
if want ~= -1 and cur ~= want then
  return -1
end
cur = cur + 1
redis.call('HSET', KEYS[1], 'v', tostring(cur), 'd', ARGV[2])
return cur
`),
		// KEYS[1] is the lock; ARGV[1] the owner, ARGV[2] the new TTL in ms.
		renewLock: redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`),
		// KEYS[1] is the lock; ARGV[1] the owner.
		unlock: redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`),
	}
}

func (r *Redis) tokenKey(tenant string) string { return r.prefix + "{" + tenant + "}:token" }
func (r *Redis) lockKey(tenant string) string  { return r.prefix + "{" + tenant + "}:lock" }
func (r *Redis) tenantsKey() string            { return r.prefix + "tenants" }
func (r *Redis) dueKey() string                { return r.prefix + "due" }
func (r *Redis) stateKey(state string) string  { return r.prefix + "oauth-state:" + state }
func (r *Redis) channel() string               { return r.prefix + "invalidate" }

// stateAD is the additional data an OAuth state is sealed with, so that a
// state moved under another name does not open.
func stateAD(state string) []byte { return []byte("oauth-state:" + state) }

// Get returns the tenant's record with its Version. It returns ErrNotFound
// when there is none, and an error wrapping ErrSealed when no configured key
// opens it (or it was moved from another tenant's key).
func (r *Redis) Get(ctx context.Context, tenant string) (TokenRecord, error) {
	if err := checkTenant(tenant); err != nil {
		return TokenRecord{}, fmt.Errorf("store: get %q: %w", tenant, err)
	}
	vals, err := r.client.HMGet(ctx, r.tokenKey(tenant), "v", "d").Result()
	if err != nil {
		return TokenRecord{}, fmt.Errorf("store: get %q: %w", tenant, err)
	}
	if len(vals) != 2 || (vals[0] == nil && vals[1] == nil) {
		return TokenRecord{}, fmt.Errorf("store: get %q: %w", tenant, ErrNotFound)
	}
	vs, okV := vals[0].(string)
	sealed, okD := vals[1].(string)
	version, err := strconv.ParseInt(vs, 10, 64)
	if !okV || !okD || err != nil || version < 1 {
		return TokenRecord{}, fmt.Errorf("store: get %q: malformed record: %w", tenant, ErrSealed)
	}
	data, err := r.sealer.Open([]byte(sealed), []byte(tenant))
	if err != nil {
		return TokenRecord{}, fmt.Errorf("store: get %q: %w", tenant, err)
	}
	var rec TokenRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return TokenRecord{}, fmt.Errorf("store: get %q: decode: %w", tenant, err)
	}
	rec.Version = version
	return rec, nil
}

// Put writes rec for tenant if the stored version is prevVersion (0: no
// record may exist; AnyVersion: any), and returns the new version; a lost
// condition returns ErrConflict and writes nothing. It then updates the
// tenant list and the expiry index and publishes an Invalidation. If the
// record was written but one of those steps failed, Put returns the new
// version together with the error.
func (r *Redis) Put(ctx context.Context, tenant string, rec TokenRecord, prevVersion int64) (int64, error) {
	if err := checkTenant(tenant); err != nil {
		return 0, fmt.Errorf("store: put %q: %w", tenant, err)
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return 0, fmt.Errorf("store: put %q: encode: %w", tenant, err)
	}
	sealed := r.sealer.Seal(data, []byte(tenant))
	version, err := r.put.Run(ctx, r.client, []string{r.tokenKey(tenant)}, prevVersion, sealed).Int64()
	if err != nil {
		return 0, fmt.Errorf("store: put %q: %w", tenant, err)
	}
	if version < 0 {
		return 0, fmt.Errorf("store: put %q: %w", tenant, ErrConflict)
	}
	// The global keys live in other Cluster slots than the record, so they
	// cannot be part of the script. The record is written first, so that a
	// replica that hears of the new version finds it.
	_, err = r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, r.tenantsKey(), redis.Z{Member: tenant})
		if dueIndexed(rec) {
			p.ZAdd(ctx, r.dueKey(), redis.Z{Score: float64(rec.Expiry.UnixMilli()), Member: tenant})
		} else {
			p.ZRem(ctx, r.dueKey(), tenant)
		}
		p.Publish(ctx, r.channel(), formatInvalidation(Invalidation{Tenant: tenant, Version: version}))
		return nil
	})
	if err != nil {
		return version, fmt.Errorf("store: put %q: index: %w", tenant, err)
	}
	return version, nil
}

// Delete forgets the tenant (record, lock, index entries) and publishes an
// Invalidation with Version 0. Deleting an unknown tenant is not an error.
func (r *Redis) Delete(ctx context.Context, tenant string) error {
	if err := checkTenant(tenant); err != nil {
		return fmt.Errorf("store: delete %q: %w", tenant, err)
	}
	// The record goes first, on its own, so that no replica re-reads it
	// after hearing of the deletion.
	if err := r.client.Del(ctx, r.tokenKey(tenant), r.lockKey(tenant)).Err(); err != nil {
		return fmt.Errorf("store: delete %q: %w", tenant, err)
	}
	_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRem(ctx, r.tenantsKey(), tenant)
		p.ZRem(ctx, r.dueKey(), tenant)
		p.Publish(ctx, r.channel(), formatInvalidation(Invalidation{Tenant: tenant}))
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: delete %q: index: %w", tenant, err)
	}
	return nil
}

// List returns up to limit tenant ids in ascending byte order, starting
// after the id after ("" from the start), and whether more follow.
func (r *Redis) List(ctx context.Context, after string, limit int) ([]string, bool, error) {
	if err := checkLimit(limit); err != nil {
		return nil, false, fmt.Errorf("store: list: %w", err)
	}
	from := "-"
	if after != "" {
		from = "(" + after
	}
	tenants, err := r.client.ZRangeByLex(ctx, r.tenantsKey(), &redis.ZRangeBy{
		Min: from, Max: "+", Count: int64(limit) + 1,
	}).Result()
	if err != nil {
		return nil, false, fmt.Errorf("store: list: %w", err)
	}
	if len(tenants) > limit {
		return tenants[:limit:limit], true, nil
	}
	return tenants, false, nil
}

// DueBefore returns up to limit tenants whose refreshable token (active,
// with a refresh token and an expiry) expires before t, soonest first, and
// in ascending id order among equal expiries. Expiries compare in whole
// milliseconds.
func (r *Redis) DueBefore(ctx context.Context, t time.Time, limit int) ([]string, error) {
	if err := checkLimit(limit); err != nil {
		return nil, fmt.Errorf("store: due before: %w", err)
	}
	tenants, err := r.client.ZRangeByScore(ctx, r.dueKey(), &redis.ZRangeBy{
		Min: "-inf", Max: "(" + strconv.FormatInt(t.UnixMilli(), 10), Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("store: due before: %w", err)
	}
	return tenants, nil
}

// TryLock takes the tenant's lock for owner for ttl if nobody holds it (its
// owner included), and reports whether it did.
func (r *Redis) TryLock(ctx context.Context, tenant, owner string, ttl time.Duration) (bool, error) {
	if err := checkLockCall(ctx, tenant, ttl); err != nil {
		return false, fmt.Errorf("store: lock %q: %w", tenant, err)
	}
	ok, err := r.client.SetNX(ctx, r.lockKey(tenant), owner, ttl).Result()
	if err != nil {
		return false, fmt.Errorf("store: lock %q: %w", tenant, err)
	}
	return ok, nil
}

// RenewLock extends the lock to ttl from now if owner holds it, and reports
// whether it did.
func (r *Redis) RenewLock(ctx context.Context, tenant, owner string, ttl time.Duration) (bool, error) {
	if err := checkLockCall(ctx, tenant, ttl); err != nil {
		return false, fmt.Errorf("store: renew lock %q: %w", tenant, err)
	}
	n, err := r.renewLock.Run(ctx, r.client, []string{r.lockKey(tenant)}, owner, ttl.Milliseconds()).Int64()
	if err != nil {
		return false, fmt.Errorf("store: renew lock %q: %w", tenant, err)
	}
	return n == 1, nil
}

// Unlock releases the lock if owner holds it; otherwise it does nothing.
func (r *Redis) Unlock(ctx context.Context, tenant, owner string) error {
	if err := checkTenant(tenant); err != nil {
		return fmt.Errorf("store: unlock %q: %w", tenant, err)
	}
	if err := r.unlock.Run(ctx, r.client, []string{r.lockKey(tenant)}, owner).Err(); err != nil {
		return fmt.Errorf("store: unlock %q: %w", tenant, err)
	}
	return nil
}

// Subscribe calls onInvalidate for every Invalidation published by any
// replica, and onResync each time the subscription was re-established after
// a lost connection (invalidations may have been missed meanwhile), until
// ctx ends; a nil callback is not called. Messages that are not
// invalidations are ignored. Subscribe returns once Redis has confirmed the
// subscription. The callbacks run on one goroutine and must not block.
func (r *Redis) Subscribe(ctx context.Context, onInvalidate func(Invalidation), onResync func()) error {
	ps := r.client.Subscribe(ctx, r.channel())
	if err := r.awaitSubscribed(ctx, ps); err != nil {
		_ = ps.Close()
		return fmt.Errorf("store: subscribe: %w", err)
	}
	// Created after the first confirmation was read, so every confirmation
	// it delivers is a re-subscription after a reconnect.
	msgs := ps.ChannelWithSubscriptions()
	go func() {
		defer ps.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case msg, ok := <-msgs:
				// Both cases may be ready when ctx ends; the callbacks
				// must not be called after it did.
				if !ok || ctx.Err() != nil {
					return
				}
				switch msg := msg.(type) {
				case *redis.Subscription:
					if msg.Kind == "subscribe" && msg.Channel == r.channel() && onResync != nil {
						onResync()
					}
				case *redis.Message:
					if inv, ok := parseInvalidation(msg.Payload); ok && onInvalidate != nil {
						onInvalidate(inv)
					}
				}
			}
		}
	}()
	return nil
}

// awaitSubscribed reads from ps until Redis confirms the subscription.
func (r *Redis) awaitSubscribed(ctx context.Context, ps *redis.PubSub) error {
	// A read does not watch ctx; closing ps ends it.
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()
	timeout := subscribeTimeout
	if deadline, ok := ctx.Deadline(); ok {
		timeout = time.Until(deadline)
	}
	for {
		msg, err := ps.ReceiveTimeout(ctx, timeout)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return err
		}
		if s, ok := msg.(*redis.Subscription); ok && s.Kind == "subscribe" && s.Channel == r.channel() {
			return nil
		}
	}
}

func formatInvalidation(inv Invalidation) string {
	return inv.Tenant + " " + strconv.FormatInt(inv.Version, 10)
}

// parseInvalidation reads "<tenant> <version>", and reports whether payload
// was one.
func parseInvalidation(payload string) (Invalidation, bool) {
	i := strings.LastIndexByte(payload, ' ')
	if i < 0 {
		return Invalidation{}, false
	}
	tenant := payload[:i]
	version, err := strconv.ParseInt(payload[i+1:], 10, 64)
	if err != nil || version < 0 || checkTenant(tenant) != nil {
		return Invalidation{}, false
	}
	return Invalidation{Tenant: tenant, Version: version}, true
}

// PutOAuthState keeps st, sealed, under the one-time name state for ttl,
// replacing any state of that name.
func (r *Redis) PutOAuthState(ctx context.Context, state string, st OAuthState, ttl time.Duration) error {
	if err := checkTTL(ttl); err != nil {
		return fmt.Errorf("store: put oauth state: %w", err)
	}
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("store: put oauth state: encode: %w", err)
	}
	sealed := r.sealer.Seal(data, stateAD(state))
	if err := r.client.Set(ctx, r.stateKey(state), sealed, ttl).Err(); err != nil {
		return fmt.Errorf("store: put oauth state: %w", err)
	}
	return nil
}

// TakeOAuthState returns and deletes, in one GETDEL, the OAuth state; a
// second take, or one after it expired, is ErrNotFound. A state that no
// configured key opens is an error wrapping ErrSealed.
func (r *Redis) TakeOAuthState(ctx context.Context, state string) (OAuthState, error) {
	sealed, err := r.client.GetDel(ctx, r.stateKey(state)).Bytes()
	if errors.Is(err, redis.Nil) {
		return OAuthState{}, fmt.Errorf("store: take oauth state: %w", ErrNotFound)
	}
	if err != nil {
		return OAuthState{}, fmt.Errorf("store: take oauth state: %w", err)
	}
	data, err := r.sealer.Open(sealed, stateAD(state))
	if err != nil {
		return OAuthState{}, fmt.Errorf("store: take oauth state: %w", err)
	}
	var st OAuthState
	if err := json.Unmarshal(data, &st); err != nil {
		return OAuthState{}, fmt.Errorf("store: take oauth state: decode: %w", err)
	}
	return st, nil
}

// Ping reports whether Redis answers.
func (r *Redis) Ping(ctx context.Context) error {
	if err := r.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("store: ping: %w", err)
	}
	return nil
}
