package store

import (
	"context"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"time"
)

// LocalSchedule keeps the tenants' schedules of upstream calls in this
// process, by the rules of RedisSchedule: for one replica, or for a replica
// whose Redis is down. It is safe for concurrent use. The tenants are
// spread over shards, each with its own lock: a call takes only its
// tenant's shard, and calls of different tenants seldom wait for each
// other.
type LocalSchedule struct {
	// Now is the clock; nil means time.Now. Set it before the first call.
	Now func() time.Time

	ids    idSource
	seed   maphash.Seed
	shards [localShards]localShard
}

// localShards is the number of shards of a LocalSchedule: enough that the
// cores of a large machine seldom meet on one.
const localShards = 64

// localShard is a share of the tenants of a LocalSchedule.
type localShard struct {
	mu      sync.Mutex
	tenants map[string]*localTenantSchedule
	calls   int // calls that may have added a schedule since the last sweep

	// Keeps the locks of two shards off one cache line.
	_ [64 - 24]byte
}

// localTenantSchedule is one tenant's schedule: the calls in time order.
type localTenantSchedule struct {
	at     []time.Time
	ids    []string
	pause  time.Time // the end of a pause; zero when none was set
	expiry time.Time // when the whole schedule can be forgotten
}

// NewLocalSchedule returns an empty LocalSchedule.
func NewLocalSchedule() *LocalSchedule {
	s := &LocalSchedule{ids: newIDSource(), seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].tenants = make(map[string]*localTenantSchedule)
	}
	return s
}

// shard returns the shard that keeps tenant's schedule.
func (s *LocalSchedule) shard(tenant string) *localShard {
	return &s.shards[maphash.String(s.seed, tenant)%localShards]
}

// sweepEvery is how many calls of a shard pass between its sweeps of the
// schedules that nothing uses any more: its map stays as large as its set
// of tenants recently called.
const sweepEvery = 4096 / localShards

func (s *LocalSchedule) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Reserve is RedisSchedule.Reserve, in this process.
func (s *LocalSchedule) Reserve(ctx context.Context, tenant string, rule RateRule, maxWait, floor time.Duration) (Slot, error) {
	if err := checkRule(tenant, rule); err != nil {
		return Slot{}, fmt.Errorf("store: reserve %q: %w", tenant, err)
	}
	sh := s.shard(tenant)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := s.now()
	t := sh.tenantLocked(tenant, now, rule)
	at := t.place(later(now.Add(max(0, floor)), t.pause), rule)
	if wait := at.Sub(now); wait > maxWait {
		return Slot{Wait: wait}, nil
	}
	id := s.ids.next()
	t.at = append(t.at, at)
	t.ids = append(t.ids, id)
	t.expiry = later(t.expiry, t.at[len(t.at)-1].Add(2*rule.Period+rule.Guard))
	return Slot{ID: id, Wait: at.Sub(now)}, nil
}

// Confirm is RedisSchedule.Confirm, in this process.
func (s *LocalSchedule) Confirm(ctx context.Context, tenant, id string) (time.Duration, error) {
	sh := s.shard(tenant)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if t := sh.tenants[tenant]; t != nil {
		if i := slices.Index(t.ids, id); i >= 0 {
			return max(0, t.at[i].Sub(s.now())), nil
		}
	}
	return 0, fmt.Errorf("store: confirm %q: %w", tenant, ErrNotFound)
}

// Release is RedisSchedule.Release, in this process.
func (s *LocalSchedule) Release(ctx context.Context, tenant, id string) error {
	sh := s.shard(tenant)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if t := sh.tenants[tenant]; t != nil {
		if i := slices.Index(t.ids, id); i >= 0 {
			t.at = slices.Delete(t.at, i, i+1)
			t.ids = slices.Delete(t.ids, i, i+1)
		}
	}
	return nil
}

// Pause is RedisSchedule.Pause, in this process.
func (s *LocalSchedule) Pause(ctx context.Context, tenant string, rule RateRule, d time.Duration, others bool, took time.Duration) (bool, error) {
	if err := checkRule(tenant, rule); err != nil {
		return false, fmt.Errorf("store: pause %q: %w", tenant, err)
	}
	if d < time.Millisecond {
		return false, nil
	}
	sh := s.shard(tenant)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := s.now()
	t := sh.tenantLocked(tenant, now, rule)
	if others {
		sent := now.Add(-max(0, took))
		recent := 0
		for _, at := range t.at {
			if !at.Before(sent.Add(-rule.Period)) && !at.After(sent) {
				recent++
			}
		}
		if recent >= rule.Limit {
			return false, nil
		}
	}
	till := now.Add(d)
	if !t.pause.Before(till) {
		return false, nil
	}
	t.pause = till
	// The reservations still to come, placed again from the pause's end,
	// none earlier than it was (see RedisSchedule).
	i, _ := slices.BinarySearchFunc(t.at, now, func(a, b time.Time) int {
		if a.After(b) {
			return 1
		}
		return -1
	})
	aheadAt, aheadIDs := slices.Clone(t.at[i:]), slices.Clone(t.ids[i:])
	t.at, t.ids = t.at[:i], t.ids[:i]
	for j, id := range aheadIDs {
		t.at = append(t.at, later(t.place(till, rule), aheadAt[j]))
		t.ids = append(t.ids, id)
	}
	t.expiry = later(t.expiry, till)
	if n := len(t.at); n > 0 {
		t.expiry = later(t.expiry, t.at[n-1].Add(2*rule.Period+rule.Guard))
	}
	return true, nil
}

// Record notes a call of tenant sent now that another schedule placed
// (this replica's own history, for when that schedule fails or forgets).
func (s *LocalSchedule) Record(tenant string, rule RateRule) {
	sh := s.shard(tenant)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	now := s.now()
	t := sh.tenantLocked(tenant, now, rule)
	// Calls recorded now come after every call recorded before; a
	// reservation of this schedule may lie ahead, so keep the order.
	if n := len(t.at); n == 0 || !t.at[n-1].After(now) {
		t.at = append(t.at, now)
		t.ids = append(t.ids, "")
	} else {
		i, _ := slices.BinarySearchFunc(t.at, now, func(a, b time.Time) int {
			if a.After(b) {
				return 1
			}
			return -1
		})
		t.at = slices.Insert(t.at, i, now)
		t.ids = slices.Insert(t.ids, i, "")
	}
	t.expiry = later(t.expiry, now.Add(2*rule.Period+rule.Guard))
}

// Floor returns how long from now what this schedule knows of tenant keeps
// its next call waiting: the calls in the last period (none when fewer
// than rule.Limit went) and a pause set here. 0 means nothing does.
func (s *LocalSchedule) Floor(tenant string, rule RateRule) time.Duration {
	sh := s.shard(tenant)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	t := sh.tenants[tenant]
	if t == nil || (len(t.at) < rule.Limit && t.pause.IsZero()) {
		// Fewer calls than the limit are known, in the last period or
		// before it, and no pause: nothing to trim, or to wait for.
		return 0
	}
	now := s.now()
	at := t.pause
	if len(t.at) >= rule.Limit {
		t.trim(now, rule)
		if n := len(t.at); n >= rule.Limit {
			at = later(at, t.at[n-rule.Limit].Add(rule.Period+rule.Guard))
		}
	}
	return max(0, at.Sub(now))
}

// trim forgets the calls older than two periods and a guard (see
// RedisSchedule): they no longer count.
func (t *localTenantSchedule) trim(now time.Time, rule RateRule) {
	old := now.Add(-2*rule.Period - rule.Guard)
	i := 0
	for i < len(t.at) && t.at[i].Before(old) {
		i++
	}
	t.at, t.ids = t.at[i:], t.ids[i:]
}

// tenantLocked returns tenant's schedule, made if there is none, without
// the calls that no longer count. sh.mu must be held.
func (sh *localShard) tenantLocked(tenant string, now time.Time, rule RateRule) *localTenantSchedule {
	sh.sweepLocked(now)
	t := sh.tenants[tenant]
	if t == nil {
		t = new(localTenantSchedule)
		sh.tenants[tenant] = t
	}
	t.trim(now, rule)
	return t
}

// place returns where the schedule would put a call, not before floor.
func (t *localTenantSchedule) place(floor time.Time, rule RateRule) time.Time {
	at := floor
	if n := len(t.at); n > 0 {
		at = later(at, t.at[n-1])
		if n >= rule.Limit {
			at = later(at, t.at[n-rule.Limit].Add(rule.Period+rule.Guard))
		}
	}
	return at
}

// sweepLocked forgets, once every sweepEvery calls, the shard's schedules
// whose calls and pause are all past.
func (sh *localShard) sweepLocked(now time.Time) {
	if sh.calls++; sh.calls < sweepEvery {
		return
	}
	sh.calls = 0
	for tenant, t := range sh.tenants {
		if now.After(t.expiry) {
			delete(sh.tenants, tenant)
		}
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
