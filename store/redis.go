package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultPrefix is the key prefix NewRedis uses when it is given none.
const DefaultPrefix = "thanksio-proxy:"

// subscribeTimeout bounds the wait for the server to confirm a subscription
// when the caller's context has no deadline of its own.
const subscribeTimeout = 10 * time.Second

// followUpTimeout bounds what follows a record's write (the index updates
// and the invalidation). They run even when the caller's context has ended
// meanwhile: the record is written by then, and the indexes should agree
// with it.
const followUpTimeout = 5 * time.Second

// maxSettle bounds how many times one write re-applies the indexes because
// other writes to the same tenant kept racing with its own index updates.
// Giving up early could leave them describing an older record, so the bound
// is generous; a write to one tenant is rare, and the wait is bounded by
// followUpTimeout anyway.
const maxSettle = 50

// resealPage is how many tenant ids Reseal reads from the tenant index at a
// time, and resealAttempts how many times it tries one record that other
// writes keep changing.
const (
	resealPage     = 100
	resealAttempts = 3
)

// Redis is the store for any number of replicas, over any go-redis
// UniversalClient: standalone, Sentinel or Cluster. Token records and OAuth
// states are sealed with a Sealer, so Redis never holds a token in plain
// text.
//
// The keys, all under one prefix (P below), are:
//
//	P{tenant}:token                   hash: v = version, d = sealed record (tenant id as additional data), r = 1 on a write-back (Restore)
//	P{tenant}:lock                    string: the lock owner, with a TTL
//	Ptenants                          sorted set of every tenant id, all scores 0 (paged by ZRANGEBYLEX)
//	Pdue                              sorted set: refreshable active (or empty-State) tenants, score = expiry in Unix milliseconds
//	Pstate:active                     set: the tenants whose record is active (or has an empty State)
//	Pstate:reauthorization_required   set: the tenants whose record needs reauthorization
//	Poauth-state:<state>              string: a sealed OAuthState ("oauth-state:<state>" as additional data), with a TTL
//
// and invalidations are published on the channel Pinvalidate as
// "<tenant> <version>". The tenant id sits in a hash tag, so that one
// tenant's keys share a Cluster slot and a conditional write is one script
// on one key; the global keys live in other slots and are updated by separate
// commands after it.
//
// Delete removes the d field and keeps v: a token hash with no d is a
// tombstone, which Get, List, DueBefore and CountByState do not show, and
// from whose version the tenant's next record continues. Tombstones are
// never removed; each costs one small hash per deleted tenant id.
//
// A Redis is safe for concurrent use by multiple goroutines.
type Redis struct {
	// OnIndexError, if non-nil, is called when Put or Reseal stored a record
	// but a step that follows the write failed, even after one retry: op is
	// "index" (the tenant index, the expiry index or the per-state sets) or
	// "publish" (the Invalidation), and err names the call and the tenant.
	// Those failures are reported here rather than returned, because the
	// record is stored and what follows it is a hint: DueBefore only
	// proposes tenants to refresh ahead of time, and the refresher re-reads
	// the record under the tenant's lock before it acts; a replica that
	// missed an invalidation keeps its cached token until thanks.io refuses
	// it, and the 401 replay then re-reads the store. nil means such
	// failures are ignored. It is called on the goroutine of the call that
	// wrote, and must not block. Set it before the first call.
	OnIndexError func(op string, err error)

	// MinReplicasAck is how many replicas must acknowledge (WAIT) a write
	// of a record (Put, Delete, Restore) before it counts as done;
	// AutoReplicas (what NewRedis sets) asks for one when the primary has
	// a replica connected at the time of the write, and none otherwise.
	// When the server has AOF on and knows WAITAOF (Redis 7.2 and later),
	// the local fsync is confirmed too. A write that is not confirmed
	// within DurableTimeout returns an error wrapping ErrUnconfirmed,
	// although the primary holds it. A server that refuses INFO to the
	// client's user (which lacks @dangerous) is taken to have no replica
	// and no AOF: set MinReplicasAck to wait for replicas there. Set it
	// before the first call.
	MinReplicasAck int
	// DurableTimeout bounds the wait for those acknowledgements; zero
	// means DefaultDurableTimeout.
	DurableTimeout time.Duration

	client redis.UniversalClient
	prefix string
	sealer *Sealer

	put       *redis.Script
	del       *redis.Script
	renewLock *redis.Script
	unlock    *redis.Script
	restore   *redis.Script

	// noWaitAOF is set once the server refused WAITAOF (before Redis 7.2).
	noWaitAOF atomic.Bool
}

// NewRedis returns a Redis store over client whose keys all start with
// prefix ("" means DefaultPrefix), sealing with sealer. It panics if client
// or sealer is nil: Redis never keeps tokens unsealed. The caller keeps
// ownership of client and closes it. A client not opened by OpenRedisURL
// should have go-redis's maintenance notifications off, as those are, or
// concurrent writes race inside go-redis (see OpenRedisURL).
func NewRedis(client redis.UniversalClient, prefix string, sealer *Sealer) *Redis {
	if client == nil || sealer == nil {
		panic("store: NewRedis needs a client and a sealer")
	}
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Redis{
		MinReplicasAck: AutoReplicas,
		client:         client,
		prefix:         prefix,
		sealer:         sealer,
		// KEYS[1] is the tenant's token hash; ARGV[1] the expected version
		// (0: no record may exist, -1: any), ARGV[2] the sealed record. It
		// returns the new version, or -1 when the expected version was not
		// there. A tombstone (v without d) is no record, but its version
		// goes on counting, so that a writer that read the deleted record
		// cannot overwrite the next one.
		put: redis.NewScript(`
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local live = redis.call('HEXISTS', KEYS[1], 'd') == 1
local want = tonumber(ARGV[1])
if want ~= -1 then
  if (live and cur ~= want) or (not live and want ~= 0) then
    return -1
  end
end
cur = cur + 1
redis.call('HSET', KEYS[1], 'v', tostring(cur), 'd', ARGV[2])
redis.call('HDEL', KEYS[1], 'r')
return cur
`),
		// KEYS[1] is the tenant's token hash, KEYS[2] its lock. It leaves a
		// tombstone, even for a tenant that had no hash (version 0), so that
		// a replica that held the tenant before Redis lost its data cannot
		// write it back; it returns twice the version the tombstone
		// keeps, plus 1 when it removed a live record.
		del: redis.NewScript(`
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local live = redis.call('HEXISTS', KEYS[1], 'd')
redis.call('HDEL', KEYS[1], 'd', 'r')
redis.call('HSET', KEYS[1], 'v', tostring(v))
redis.call('DEL', KEYS[2])
return v * 2 + live
`),
		// KEYS[1] is the tenant's token hash; ARGV[1] the version to
		// restore, ARGV[2] the sealed record. It writes only where there
		// is no hash at all (Redis lost it) or another write-back (marked
		// r) of a lower version: never over a tombstone, nor over a record
		// written since the loss, whose version may be lower, as versions
		// restart with a lost hash. It returns the version written, or -1
		// when it wrote nothing.
		restore: redis.NewScript(`
local want = tonumber(ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HEXISTS', KEYS[1], 'd') == 0 or redis.call('HEXISTS', KEYS[1], 'r') == 0 then
    return -1
  end
  if tonumber(redis.call('HGET', KEYS[1], 'v') or '0') >= want then
    return -1
  end
end
redis.call('HSET', KEYS[1], 'v', tostring(want), 'd', ARGV[2], 'r', '1')
return want
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

func (r *Redis) tokenKey(tenant string) string     { return r.prefix + "{" + tenant + "}:token" }
func (r *Redis) lockKey(tenant string) string      { return r.prefix + "{" + tenant + "}:lock" }
func (r *Redis) tenantsKey() string                { return r.prefix + "tenants" }
func (r *Redis) dueKey() string                    { return r.prefix + "due" }
func (r *Redis) stateSetKey(s State) string        { return r.prefix + "state:" + string(s) }
func (r *Redis) oauthStateKey(state string) string { return r.prefix + "oauth-state:" + state }
func (r *Redis) channel() string                   { return r.prefix + "invalidate" }

// stateAD is the additional data an OAuth state is sealed with, so that a
// state moved under another name does not open.
func stateAD(state string) []byte { return []byte("oauth-state:" + state) }

// Get returns the tenant's record with its Version. It returns ErrNotFound
// when there is none (or it was deleted), and an error wrapping ErrSealed
// when no configured key opens it (or it was moved from another tenant's
// key).
func (r *Redis) Get(ctx context.Context, tenant string) (TokenRecord, error) {
	if err := checkTenant(tenant); err != nil {
		return TokenRecord{}, fmt.Errorf("store: get %q: %w", tenant, err)
	}
	h, err := r.load(ctx, tenant)
	if err != nil {
		return TokenRecord{}, fmt.Errorf("store: get %q: %w", tenant, err)
	}
	if !h.live {
		return TokenRecord{}, fmt.Errorf("store: get %q: %w", tenant, ErrNotFound)
	}
	rec, err := r.open(tenant, h.sealed)
	if err != nil {
		return TokenRecord{}, fmt.Errorf("store: get %q: %w", tenant, err)
	}
	rec.Version = h.version
	return rec, nil
}

// tokenHash is what a tenant's token hash holds.
type tokenHash struct {
	// version is the stored version; 0 when there is no hash.
	version int64
	// live reports whether the hash holds a record: false when there is no
	// hash, or it is a tombstone.
	live bool
	// sealed is the sealed record, when live.
	sealed []byte
}

// load reads the tenant's token hash. A hash that is neither a record nor a
// tombstone is an error wrapping ErrSealed.
func (r *Redis) load(ctx context.Context, tenant string) (tokenHash, error) {
	vals, err := r.client.HMGet(ctx, r.tokenKey(tenant), "v", "d").Result()
	if err != nil {
		return tokenHash{}, err
	}
	if len(vals) != 2 {
		return tokenHash{}, fmt.Errorf("malformed record: %w", ErrSealed)
	}
	var h tokenHash
	if vals[0] != nil {
		vs, ok := vals[0].(string)
		v, err := strconv.ParseInt(vs, 10, 64)
		if !ok || err != nil || v < 0 {
			return tokenHash{}, fmt.Errorf("malformed record: %w", ErrSealed)
		}
		h.version = v
	}
	if vals[1] != nil {
		sealed, ok := vals[1].(string)
		if !ok || h.version < 1 {
			return tokenHash{}, fmt.Errorf("malformed record: %w", ErrSealed)
		}
		h.live, h.sealed = true, []byte(sealed)
	}
	return h, nil
}

// open unseals and decodes the tenant's sealed record.
func (r *Redis) open(tenant string, sealed []byte) (TokenRecord, error) {
	data, err := r.sealer.Open(sealed, []byte(tenant))
	if err != nil {
		return TokenRecord{}, err
	}
	var rec TokenRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		return TokenRecord{}, fmt.Errorf("decode: %w", err)
	}
	return rec, nil
}

// Put writes rec for tenant if the stored version is prevVersion (0: no
// record may exist, a deleted one included; AnyVersion: any), and returns
// the new version: one more than the stored one, or than the deleted
// record's. A lost condition returns ErrConflict and writes nothing.
//
// A nil error means the record is stored. What follows the write (the
// tenant index, the expiry index, the per-state sets and the Invalidation)
// is best effort: a failed step is retried once and then reported to
// OnIndexError, not returned. Any other error leaves it unknown whether the
// record was written; re-read it.
func (r *Redis) Put(ctx context.Context, tenant string, rec TokenRecord, prevVersion int64) (int64, error) {
	if err := checkTenant(tenant); err != nil {
		return 0, fmt.Errorf("store: put %q: %w", tenant, err)
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return 0, fmt.Errorf("store: put %q: encode: %w", tenant, err)
	}
	sealed := r.sealer.Seal(data, []byte(tenant))
	key := r.tokenKey(tenant)
	version, err := r.runDurable(ctx, r.put, key, []string{key}, wrote, prevVersion, sealed)
	if err != nil && !errors.Is(err, ErrUnconfirmed) {
		return 0, fmt.Errorf("store: put %q: %w", tenant, err)
	}
	if version < 0 {
		return 0, fmt.Errorf("store: put %q: %w", tenant, ErrConflict)
	}
	// An unconfirmed write is on the primary, where every replica reads:
	// the indexes and the other replicas learn of it all the same.
	indexErr, publishErr := r.followUp(ctx, tenant, written{version: version, rec: &rec})
	r.reportFollowUp("put", tenant, indexErr, publishErr)
	if err != nil {
		return 0, fmt.Errorf("store: put %q: %w", tenant, err)
	}
	return version, nil
}

// wrote reports whether the put or restore script's answer is a write.
func wrote(n int64) bool { return n >= 0 }

// Restore writes rec back under its own Version after Redis lost its data:
// only where the tenant has no hash at all, or another write-back of a lower
// version (the highest held wins); never over a tombstone (a tenant deleted
// after the loss stays deleted), nor over a record written by Put since the
// loss, whatever its version (versions restart with a lost hash). It
// reports whether it wrote. A restored record is indexed and published like
// any write, and confirmed durable as Put is.
func (r *Redis) Restore(ctx context.Context, tenant string, rec TokenRecord) (bool, error) {
	if err := checkTenant(tenant); err != nil {
		return false, fmt.Errorf("store: restore %q: %w", tenant, err)
	}
	data, err := restoreData(tenant, rec)
	if err != nil {
		return false, err
	}
	sealed := r.sealer.Seal(data, []byte(tenant))
	key := r.tokenKey(tenant)
	version, err := r.runDurable(ctx, r.restore, key, []string{key}, wrote, rec.Version, sealed)
	if err != nil && !errors.Is(err, ErrUnconfirmed) {
		return false, fmt.Errorf("store: restore %q: %w", tenant, err)
	}
	if version < 0 {
		return false, nil
	}
	indexErr, publishErr := r.followUp(ctx, tenant, written{version: version, rec: &rec})
	r.reportFollowUp("restore", tenant, indexErr, publishErr)
	if err != nil {
		return true, fmt.Errorf("store: restore %q: %w", tenant, err)
	}
	return true, nil
}

// Epoch returns the store's epoch: a random value written once, the first
// time any replica asks. A Redis that lost its data (a restart without
// persistence, FLUSHALL) has lost its epoch too, so the next call writes a
// new one: a replica that sees the epoch change knows that records it
// holds may be gone from the store. In Redis Cluster the epoch lives on
// one shard, so it only tells of a loss on that shard.
func (r *Redis) Epoch(ctx context.Context) (string, error) {
	key := r.prefix + "epoch"
	cur, err := r.client.Get(ctx, key).Result()
	if err == nil {
		return cur, nil
	}
	if !errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("store: epoch: %w", err)
	}
	fresh := randomEpoch()
	ok, err := r.client.SetNX(ctx, key, fresh, 0).Result()
	if err != nil {
		return "", fmt.Errorf("store: epoch: %w", err)
	}
	if ok {
		return fresh, nil
	}
	// Another replica wrote it first: its value is the epoch.
	cur, err = r.client.Get(ctx, key).Result()
	if err != nil {
		return "", fmt.Errorf("store: epoch: %w", err)
	}
	return cur, nil
}

// Delete forgets the tenant: its record, leaving a tombstone that keeps the
// version, its lock and its index entries, and publishes an Invalidation
// with Deleted set and the tombstone's version. Deleting an unknown tenant
// is not an error; it leaves a tombstone too.
//
// Unlike Put, Delete returns an error when the index update or the
// Invalidation failed after the record was deleted: a replica that missed
// this invalidation would go on sending the cached token of a tenant that
// was forgotten, and thanks.io would not refuse it. Delete is idempotent, so
// the caller can repeat it; the record is deleted either way.
func (r *Redis) Delete(ctx context.Context, tenant string) (bool, error) {
	if err := checkTenant(tenant); err != nil {
		return false, fmt.Errorf("store: delete %q: %w", tenant, err)
	}
	// The record goes first, on its own, so that no replica re-reads it
	// after hearing of the deletion.
	key := r.tokenKey(tenant)
	n, err := r.runDurable(ctx, r.del, key, []string{key, r.lockKey(tenant)}, func(int64) bool { return true })
	if err != nil && !errors.Is(err, ErrUnconfirmed) {
		return false, fmt.Errorf("store: delete %q: %w", tenant, err)
	}
	version, removed := n/2, n%2 == 1
	unconfirmed := err
	if unconfirmed != nil {
		unconfirmed = fmt.Errorf("store: delete %q: %w", tenant, unconfirmed)
	}
	indexErr, publishErr := r.followUp(ctx, tenant, written{version: version})
	if indexErr != nil {
		indexErr = fmt.Errorf("store: delete %q: index: %w", tenant, indexErr)
	}
	if publishErr != nil {
		publishErr = fmt.Errorf("store: delete %q: publish: %w", tenant, publishErr)
	}
	return removed, errors.Join(unconfirmed, indexErr, publishErr)
}

// written is the state of a tenant's token hash that a write left.
type written struct {
	version int64
	// rec is the record written; nil for a tombstone.
	rec *TokenRecord
}

// followUp makes the global indexes agree with w, the tenant's record as a
// write left it, and publishes its Invalidation. The global keys live in
// other Cluster slots than the record, so they cannot be part of the write's
// script; the record is written first, so that a replica that hears of the
// new version finds it. Each step that fails is retried once: the index
// updates are idempotent, and a second copy of an invalidation only makes a
// replica re-read. It returns the error of each step that still failed.
func (r *Redis) followUp(ctx context.Context, tenant string, w written) (indexErr, publishErr error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), followUpTimeout)
	defer cancel()
	inv := Invalidation{Tenant: tenant, Version: w.version, Deleted: w.rec == nil}
	index, publish := true, true
	for range 2 {
		indexErr, publishErr = r.runFollowUp(ctx, tenant, w.rec, index, publish, inv)
		index, publish = indexErr != nil, publishErr != nil
		if !index && !publish {
			break
		}
	}
	if indexErr == nil {
		indexErr = r.settle(ctx, tenant, w)
	}
	return indexErr, publishErr
}

// runFollowUp runs, in one pipeline, the index updates for rec (nil: the
// tenant was deleted) if index is set, and the publication of inv if publish
// is set, and returns the error of each.
func (r *Redis) runFollowUp(ctx context.Context, tenant string, rec *TokenRecord, index, publish bool, inv Invalidation) (indexErr, publishErr error) {
	var (
		indexCmds []redis.Cmder
		pub       *redis.IntCmd
	)
	// The error of each command is looked at below; the pipeline's own
	// error is only the first of them.
	_, _ = r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		if index {
			indexCmds = r.queueIndex(ctx, p, tenant, rec)
		}
		if publish {
			pub = p.Publish(ctx, r.channel(), formatInvalidation(inv))
		}
		return nil
	})
	for _, cmd := range indexCmds {
		if err := cmd.Err(); err != nil {
			indexErr = err
			break
		}
	}
	if pub != nil {
		publishErr = pub.Err()
	}
	return indexErr, publishErr
}

// queueIndex queues on p the commands that make the tenant index, the
// expiry index and the per-state sets agree with rec (nil: the tenant was
// deleted), and returns them.
func (r *Redis) queueIndex(ctx context.Context, p redis.Pipeliner, tenant string, rec *TokenRecord) []redis.Cmder {
	cmds := make([]redis.Cmder, 0, 2+len(knownStates))
	if rec == nil {
		cmds = append(cmds, p.ZRem(ctx, r.tenantsKey(), tenant))
	} else {
		cmds = append(cmds, p.ZAdd(ctx, r.tenantsKey(), redis.Z{Member: tenant}))
	}
	if rec != nil && dueIndexed(*rec) {
		cmds = append(cmds, p.ZAdd(ctx, r.dueKey(), redis.Z{Score: float64(rec.Expiry.UnixMilli()), Member: tenant}))
	} else {
		cmds = append(cmds, p.ZRem(ctx, r.dueKey(), tenant))
	}
	for _, s := range knownStates {
		if rec != nil && indexedState(*rec) == s {
			cmds = append(cmds, p.SAdd(ctx, r.stateSetKey(s), tenant))
		} else {
			cmds = append(cmds, p.SRem(ctx, r.stateSetKey(s), tenant))
		}
	}
	return cmds
}

// settle checks, after the indexes were updated for w, that the tenant's
// token hash still is w, and while it is not, updates them for what it now
// holds. Two writes to one tenant may update the indexes in the opposite
// order of the writes, which would leave them describing the older record;
// whichever write looks last puts them right.
func (r *Redis) settle(ctx context.Context, tenant string, w written) error {
	for round := 0; ; round++ {
		h, err := r.load(ctx, tenant)
		if err != nil {
			return fmt.Errorf("re-read: %w", err)
		}
		if h.version == w.version && h.live == (w.rec != nil) {
			return nil
		}
		if round == maxSettle {
			return fmt.Errorf("the record changed %d times while its indexes were updated", maxSettle)
		}
		w = written{version: h.version}
		if h.live {
			rec, err := r.open(tenant, h.sealed)
			if err != nil {
				return fmt.Errorf("re-read: %w", err)
			}
			w.rec = &rec
		}
		if err, _ := r.runFollowUp(ctx, tenant, w.rec, true, false, Invalidation{}); err != nil {
			return err
		}
	}
}

// reportFollowUp hands the failed steps after call's write to OnIndexError.
func (r *Redis) reportFollowUp(call, tenant string, indexErr, publishErr error) {
	if r.OnIndexError == nil {
		return
	}
	if indexErr != nil {
		r.OnIndexError("index", fmt.Errorf("store: %s %q: index: %w", call, tenant, indexErr))
	}
	if publishErr != nil {
		r.OnIndexError("publish", fmt.Errorf("store: %s %q: publish: %w", call, tenant, publishErr))
	}
}

// List returns up to limit tenant ids in ascending byte order, starting
// after the id after ("" from the start), and whether more follow. Deleted
// tenants are not listed.
func (r *Redis) List(ctx context.Context, after string, limit int) ([]string, bool, error) {
	if err := checkLimit(limit); err != nil {
		return nil, false, fmt.Errorf("store: list: %w", err)
	}
	tenants, more, err := r.listTenants(ctx, after, limit)
	if err != nil {
		return nil, false, fmt.Errorf("store: list: %w", err)
	}
	return tenants, more, nil
}

// listTenants reads one page of the tenant index.
func (r *Redis) listTenants(ctx context.Context, after string, limit int) ([]string, bool, error) {
	from := "-"
	if after != "" {
		from = "(" + after
	}
	tenants, err := r.client.ZRangeByLex(ctx, r.tenantsKey(), &redis.ZRangeBy{
		Min: from, Max: "+", Count: int64(limit) + 1,
	}).Result()
	if err != nil {
		return nil, false, err
	}
	if len(tenants) > limit {
		return tenants[:limit:limit], true, nil
	}
	return tenants, false, nil
}

// DueBefore returns up to limit tenants whose refreshable token (active or
// with an empty State, with a refresh token and an expiry) expires before
// t, soonest first, and in ascending id order among equal expiries.
// Expiries compare in whole milliseconds. The answer is a hint: the index
// is updated after each write, best effort.
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

// CountByState returns how many tenants are in each known state
// (StateActive, which counts records with an empty State too, and
// StateReauthorizationRequired; both are always present, zero included),
// from the per-state sets, without scanning keys. Deleted tenants are not
// counted, and neither are records in a state that is not known. Like the
// other indexes, the sets are updated after each write, best effort.
func (r *Redis) CountByState(ctx context.Context) (map[State]int64, error) {
	cmds := make([]*redis.IntCmd, len(knownStates))
	_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, s := range knownStates {
			cmds[i] = p.SCard(ctx, r.stateSetKey(s))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: count by state: %w", err)
	}
	counts := make(map[State]int64, len(knownStates))
	for i, s := range knownStates {
		counts[s] = cmds[i].Val()
	}
	return counts, nil
}

// Reseal seals again, under the first configured key, every tenant's record
// that is sealed under another one, so that after a rotation of
// TOKEN_ENCRYPTION_KEY ("new,old") the old key can be retired. It walks the
// tenant index in pages. Each record is rewritten on its own, atomically and
// only if its version did not change since it was read (a record changed
// meanwhile is read again); the rewrite is a write like any other: it takes
// the next version, and publishes an Invalidation. Run it once every replica
// seals with the new key, or a replica still sealing with the old one may
// write a record under it again.
//
// A record that does not open with any configured key (or is damaged, or
// kept changing) is left as it is: onFailed, if non-nil, is called with its
// tenant, and Reseal goes on with the others. Reseal returns how many
// records it rewrote, and an error when any record was left so (wrapping
// the first such record's error, ErrSealed for one that does not open) or
// when Redis failed, which stops the walk. Running it again is safe: it
// skips records already sealed under the first key.
//
// OAuth states need no reseal: they live only as long as a connect flow
// (minutes), so keeping the old key configured that long after the rotation
// is enough for the ones sealed under it to be taken.
func (r *Redis) Reseal(ctx context.Context, onFailed func(tenant string)) (resealed int, err error) {
	var (
		failed    int
		firstFail error
	)
	for after := ""; ; {
		tenants, more, err := r.listTenants(ctx, after, resealPage)
		if err != nil {
			return resealed, fmt.Errorf("store: reseal: list: %w", err)
		}
		for _, tenant := range tenants {
			ok, recordErr, err := r.resealRecord(ctx, tenant)
			if err != nil {
				return resealed, fmt.Errorf("store: reseal %q: %w", tenant, err)
			}
			if recordErr != nil {
				failed++
				if firstFail == nil {
					firstFail = fmt.Errorf("%q: %w", tenant, recordErr)
				}
				if onFailed != nil {
					onFailed(tenant)
				}
			}
			if ok {
				resealed++
			}
		}
		if !more {
			break
		}
		after = tenants[len(tenants)-1]
	}
	if failed > 0 {
		return resealed, fmt.Errorf("store: reseal: %d records not resealed; first %w", failed, firstFail)
	}
	return resealed, nil
}

// resealRecord rewrites the tenant's record under the first key if it is
// sealed under another one, and reports whether it did. recordErr says why
// this record could not be resealed; err is a failure of Redis.
func (r *Redis) resealRecord(ctx context.Context, tenant string) (ok bool, recordErr, err error) {
	if err := checkTenant(tenant); err != nil {
		return false, err, nil
	}
	for range resealAttempts {
		h, err := r.load(ctx, tenant)
		if errors.Is(err, ErrSealed) {
			return false, err, nil
		}
		if err != nil {
			return false, nil, err
		}
		if !h.live || !r.sealer.NeedsReseal(h.sealed) {
			return false, nil, nil
		}
		data, err := r.sealer.Open(h.sealed, []byte(tenant))
		if err != nil {
			return false, err, nil
		}
		var rec TokenRecord
		if err := json.Unmarshal(data, &rec); err != nil {
			return false, fmt.Errorf("decode: %w", err), nil
		}
		// The plaintext is sealed again as it was read, not re-encoded, so
		// that the record stays byte for byte what its writer wrote.
		sealed := r.sealer.Seal(data, []byte(tenant))
		version, err := r.put.Run(ctx, r.client, []string{r.tokenKey(tenant)}, h.version, sealed).Int64()
		if err != nil {
			return false, nil, err
		}
		if version < 0 {
			continue // Written or deleted meanwhile: look again.
		}
		indexErr, publishErr := r.followUp(ctx, tenant, written{version: version, rec: &rec})
		r.reportFollowUp("reseal", tenant, indexErr, publishErr)
		return true, nil, nil
	}
	return false, ErrConflict, nil
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

// heartbeatPrefix starts a heartbeat's payload; no tenant id holds a
// control character, so no invalidation starts with it.
const heartbeatPrefix = "\x01heartbeat "

// formatInvalidation writes "<tenant> <version>", "<tenant> <version>
// deleted", or a heartbeat.
func formatInvalidation(inv Invalidation) string {
	if inv.Heartbeat != "" {
		return heartbeatPrefix + inv.Heartbeat
	}
	out := inv.Tenant + " " + strconv.FormatInt(inv.Version, 10)
	if inv.Deleted {
		out += " deleted"
	}
	return out
}

// parseInvalidation reads what formatInvalidation wrote, and reports whether
// payload was one.
func parseInvalidation(payload string) (Invalidation, bool) {
	if id, ok := strings.CutPrefix(payload, heartbeatPrefix); ok {
		return Invalidation{Heartbeat: id}, id != ""
	}
	fields := strings.Split(payload, " ")
	deleted := len(fields) == 3 && fields[2] == "deleted"
	if len(fields) != 2 && !deleted {
		return Invalidation{}, false
	}
	version, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil || version < 0 || checkTenant(fields[0]) != nil {
		return Invalidation{}, false
	}
	// Versions of writes start at 1: "<tenant> 0" is a deletion as
	// replicas before the deleted form announced it.
	return Invalidation{Tenant: fields[0], Version: version, Deleted: deleted || version == 0}, true
}

// Heartbeat publishes a heartbeat carrying id on the invalidation channel,
// for a subscriber to tell that it hears what is published.
func (r *Redis) Heartbeat(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("store: heartbeat: empty id")
	}
	if err := r.client.Publish(ctx, r.channel(), formatInvalidation(Invalidation{Heartbeat: id})).Err(); err != nil {
		return fmt.Errorf("store: heartbeat: %w", err)
	}
	return nil
}

// CheckAccess checks that the Redis user may do what the proxy needs
// beyond reading and writing keys: PUBLISH and SUBSCRIBE on the
// invalidation channel, and run the store's scripts. It returns an error
// naming the first thing refused (a NOPERM answer, typically a Redis 7 ACL
// user without channel permissions), or why Redis could not be asked.
func (r *Redis) CheckAccess(ctx context.Context) error {
	if err := r.client.Publish(ctx, r.channel(), formatInvalidation(Invalidation{Heartbeat: "access-check"})).Err(); err != nil {
		return fmt.Errorf("store: PUBLISH to %s: %w", r.channel(), err)
	}
	ps := r.client.Subscribe(ctx, r.channel())
	err := r.awaitSubscribed(ctx, ps)
	_ = ps.Close()
	if err != nil {
		return fmt.Errorf("store: SUBSCRIBE to %s: %w", r.channel(), err)
	}
	// Compare-and-delete of a lock nobody holds: runs a script, changes
	// nothing.
	if err := r.unlock.Run(ctx, r.client, []string{r.lockKey("access-check")}, "nobody").Err(); err != nil {
		return fmt.Errorf("store: running a script (EVALSHA, EVAL): %w", err)
	}
	return nil
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
	if err := r.client.Set(ctx, r.oauthStateKey(state), sealed, ttl).Err(); err != nil {
		return fmt.Errorf("store: put oauth state: %w", err)
	}
	return nil
}

// TakeOAuthState returns and deletes, in one GETDEL, the OAuth state; a
// second take, or one after it expired, is ErrNotFound. A state that no
// configured key opens is an error wrapping ErrSealed.
func (r *Redis) TakeOAuthState(ctx context.Context, state string) (OAuthState, error) {
	sealed, err := r.client.GetDel(ctx, r.oauthStateKey(state)).Bytes()
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
