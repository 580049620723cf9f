package store

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// subscriberQueue is how many invalidations a slow Memory subscriber may have
// pending before it misses some and is told to resync.
const subscriberQueue = 1024

// Memory is the store for a single process: the same contract as Redis
// (versions that never restart, conditional writes, locks with a TTL, the
// expiry index, the per-state counts, one-time OAuth states, invalidations),
// kept in maps. Records are kept as Redis would give them back (see kept),
// each token once: a Memory is the store of one process, and the token cache
// shares its strings rather than copying them. Its indexes are computed from the records, so they never
// lag behind a write. A deleted tenant leaves a tombstone that keeps its
// version, as in Redis.
//
// Create it with NewMemory. A Memory is safe for concurrent use by multiple
// goroutines.
type Memory struct {
	// Now, if non-nil, is the clock that lock and OAuth state TTLs are
	// measured against; nil means time.Now. Set it before the first call.
	Now func() time.Time

	epoch string

	mu          sync.Mutex
	records     memoryRecords
	locks       map[string]memoryLease
	states      map[string]memoryState
	subscribers map[*memorySubscriber]struct{}
}

// memoryRecords is the tenants' records: an index from the tenant id to a
// place in pages of records. A record is no object of its own, so that the
// collector marks little per tenant besides its id and its tokens (one
// allocation; see TokenRecord.WithAuthorization), and reads the records
// page by page. Records are never removed (a Delete leaves a tombstone):
// places are only added.
type memoryRecords struct {
	index map[string]int32
	pages [][]memoryRecord // of memoryPage records each
	n     int32
}

const memoryPage = 512

func (rs *memoryRecords) at(i int32) *memoryRecord {
	return &rs.pages[i/memoryPage][i%memoryPage]
}

// get returns tenant's record, and whether it has one (a tombstone
// included).
func (rs *memoryRecords) get(tenant string) (memoryRecord, bool) {
	i, ok := rs.index[tenant]
	if !ok {
		return memoryRecord{}, false
	}
	return *rs.at(i), true
}

// set makes r tenant's record.
func (rs *memoryRecords) set(tenant string, r memoryRecord) {
	i, ok := rs.index[tenant]
	if !ok {
		if rs.n%memoryPage == 0 {
			rs.pages = append(rs.pages, make([]memoryRecord, memoryPage))
		}
		i = rs.n
		rs.n++
		rs.index[tenant] = i
	}
	*rs.at(i) = r
}

// all yields every tenant's record, tombstones included, in no order.
func (rs *memoryRecords) all() iter.Seq2[string, *memoryRecord] {
	return func(yield func(string, *memoryRecord) bool) {
		for tenant, i := range rs.index {
			if !yield(tenant, rs.at(i)) {
				return
			}
		}
	}
}

type memoryRecord struct {
	version int64
	// deleted reports whether this is a tombstone: the tenant was deleted,
	// and only its version is kept.
	deleted bool
	rec     TokenRecord // see kept
	// due reports whether the record is in the expiry index, under the
	// score expiryMilli, as Redis would index it.
	due         bool
	expiryMilli int64
	// state is the state the record counts under in CountByState.
	state State
	// restored reports a record written by Restore, not Put.
	restored bool
}

type memoryLease struct {
	owner string
	until time.Time
}

type memoryState struct {
	data  []byte // the OAuthState's JSON
	until time.Time
}

// NewMemory returns an empty Memory that reads time.Now.
func NewMemory() *Memory {
	return &Memory{
		epoch:       randomEpoch(),
		records:     memoryRecords{index: make(map[string]int32)},
		locks:       make(map[string]memoryLease),
		states:      make(map[string]memoryState),
		subscribers: make(map[*memorySubscriber]struct{}),
	}
}

// kept is rec as a Memory keeps it: with times as Redis would give them back
// (no monotonic clock reading, the zone an RFC 3339 text keeps), and the
// tokens held once, in one allocation with the Authorization value, which
// Get hands out so that a cache of them shares this copy. A record that
// comes in that form keeps its strings: the writer's copy is the one copy.
func kept(rec TokenRecord) TokenRecord {
	rec = rec.WithAuthorization()
	rec.Version = 0
	for _, t := range []*time.Time{&rec.Expiry, &rec.UpdatedAt, &rec.LastRefresh, &rec.RestoredAt, &rec.LastErrorAt} {
		*t = t.Round(0)
	}
	return rec
}

func (m *Memory) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

// Get returns the tenant's record with its Version, or ErrNotFound when
// there is none (or it was deleted).
func (m *Memory) Get(ctx context.Context, tenant string) (TokenRecord, error) {
	if err := checkCall(ctx, tenant); err != nil {
		return TokenRecord{}, fmt.Errorf("store: get %q: %w", tenant, err)
	}
	m.mu.Lock()
	r, ok := m.records.get(tenant)
	m.mu.Unlock()
	if !ok || r.deleted {
		return TokenRecord{}, fmt.Errorf("store: get %q: %w", tenant, ErrNotFound)
	}
	rec := r.rec
	rec.Version = r.version
	return rec, nil
}

// Put writes rec for tenant if the stored version is prevVersion (0: no
// record may exist, a deleted one included; AnyVersion: any), and returns
// the new version: one more than the stored one, or than the deleted
// record's. A lost condition returns ErrConflict and writes nothing. Every
// subscriber is told of the new version. A nil error means the record is
// stored.
func (m *Memory) Put(ctx context.Context, tenant string, rec TokenRecord, prevVersion int64) (int64, error) {
	if err := checkCall(ctx, tenant); err != nil {
		return 0, fmt.Errorf("store: put %q: %w", tenant, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, ok := m.records.get(tenant)
	live := ok && !cur.deleted
	if prevVersion != AnyVersion && ((live && prevVersion != cur.version) || (!live && prevVersion != 0)) {
		return 0, fmt.Errorf("store: put %q: %w", tenant, ErrConflict)
	}
	r := memoryRecord{version: cur.version + 1, rec: kept(rec), due: dueIndexed(rec), state: indexedState(rec)}
	if r.due {
		r.expiryMilli = rec.Expiry.UnixMilli()
	}
	m.records.set(tenant, r)
	// Queued under the lock so that subscribers see a tenant's versions in
	// order; delivery itself never blocks.
	m.publishLocked(Invalidation{Tenant: tenant, Version: r.version})
	return r.version, nil
}

// Delete forgets the tenant's record, leaving a tombstone that keeps its
// version (an unknown tenant too), and its lock, and tells every subscriber
// (Deleted, with the tombstone's version). Deleting an unknown tenant is not
// an error. It reports whether it removed a record.
func (m *Memory) Delete(ctx context.Context, tenant string) (bool, error) {
	if err := checkCall(ctx, tenant); err != nil {
		return false, fmt.Errorf("store: delete %q: %w", tenant, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, had := m.records.get(tenant)
	// A tombstone even for an unknown tenant, as in Redis.
	m.records.set(tenant, memoryRecord{version: cur.version, deleted: true})
	delete(m.locks, tenant)
	m.publishLocked(Invalidation{Tenant: tenant, Version: cur.version, Deleted: true})
	return had && !cur.deleted, nil
}

// Restore writes rec back under its own Version where the tenant has no
// record at all, or another write-back of a lower version; never over a
// tombstone nor over a record written by Put.
// It reports whether it wrote. A Memory never loses its records, so this
// only serves callers that do not know which store they have.
func (m *Memory) Restore(ctx context.Context, tenant string, rec TokenRecord) (bool, error) {
	if err := checkCall(ctx, tenant); err != nil {
		return false, fmt.Errorf("store: restore %q: %w", tenant, err)
	}
	if err := checkRestore(tenant, rec); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.records.get(tenant); ok && (cur.deleted || !cur.restored || cur.version >= rec.Version) {
		return false, nil
	}
	r := memoryRecord{version: rec.Version, rec: kept(rec), due: dueIndexed(rec), state: indexedState(rec), restored: true}
	if r.due {
		r.expiryMilli = rec.Expiry.UnixMilli()
	}
	m.records.set(tenant, r)
	m.publishLocked(Invalidation{Tenant: tenant, Version: r.version})
	return true, nil
}

// Heartbeat tells every subscriber of a heartbeat carrying id.
func (m *Memory) Heartbeat(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: heartbeat: %w", err)
	}
	if id == "" {
		return errors.New("store: heartbeat: empty id")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.publishLocked(Invalidation{Heartbeat: id})
	return nil
}

// Epoch returns the Memory's epoch, fixed for its life: a Memory never
// loses its data.
func (m *Memory) Epoch(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("store: epoch: %w", err)
	}
	return m.epoch, nil
}

// List returns up to limit tenant ids in ascending byte order, starting
// after the id after ("" from the start), and whether more follow. Deleted
// tenants are not listed.
func (m *Memory) List(ctx context.Context, after string, limit int) ([]string, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, fmt.Errorf("store: list: %w", err)
	}
	if err := checkLimit(limit); err != nil {
		return nil, false, fmt.Errorf("store: list: %w", err)
	}
	m.mu.Lock()
	var tenants []string
	for tenant, r := range m.records.all() {
		if !r.deleted && tenant > after {
			tenants = append(tenants, tenant)
		}
	}
	m.mu.Unlock()
	slices.Sort(tenants)
	if len(tenants) > limit {
		return tenants[:limit:limit], true, nil
	}
	return tenants, false, nil
}

// DueBefore returns up to limit tenants whose refreshable token (active or
// with an empty State, with a refresh token and an expiry) expires before
// t, soonest first, and in ascending id order among equal expiries.
// Expiries compare in whole milliseconds, as in Redis.
func (m *Memory) DueBefore(ctx context.Context, t time.Time, limit int) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: due before: %w", err)
	}
	if err := checkLimit(limit); err != nil {
		return nil, fmt.Errorf("store: due before: %w", err)
	}
	type entry struct {
		tenant string
		score  int64
	}
	before := t.UnixMilli()
	m.mu.Lock()
	var due []entry
	for tenant, r := range m.records.all() {
		if !r.deleted && r.due && r.expiryMilli < before {
			due = append(due, entry{tenant, r.expiryMilli})
		}
	}
	m.mu.Unlock()
	slices.SortFunc(due, func(a, b entry) int {
		return cmp.Or(cmp.Compare(a.score, b.score), cmp.Compare(a.tenant, b.tenant))
	})
	tenants := make([]string, 0, min(len(due), limit))
	for _, e := range due[:min(len(due), limit)] {
		tenants = append(tenants, e.tenant)
	}
	return tenants, nil
}

// CountByState returns how many tenants are in each known state
// (StateActive, which counts records with an empty State too, and
// StateReauthorizationRequired; both are always present, zero included).
// Deleted tenants are not counted, and neither are records in a state that
// is not known.
func (m *Memory) CountByState(ctx context.Context) (map[State]int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: count by state: %w", err)
	}
	counts := make(map[State]int64, len(knownStates))
	for _, s := range knownStates {
		counts[s] = 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.records.all() {
		if _, known := counts[r.state]; known && !r.deleted {
			counts[r.state]++
		}
	}
	return counts, nil
}

// TryLock takes the tenant's lock for owner for ttl if nobody holds it (its
// owner included), and reports whether it did.
func (m *Memory) TryLock(ctx context.Context, tenant, owner string, ttl time.Duration) (bool, error) {
	return m.lease(ctx, "lock", tenant, owner, ttl, func(_ memoryLease, held bool) bool { return !held })
}

// RenewLock extends the lock to ttl from now if owner holds it, and reports
// whether it did.
func (m *Memory) RenewLock(ctx context.Context, tenant, owner string, ttl time.Duration) (bool, error) {
	return m.lease(ctx, "renew lock", tenant, owner, ttl, func(l memoryLease, held bool) bool { return held && l.owner == owner })
}

// lease gives the tenant's lock to owner until ttl from now if may, told
// the lease in place and whether it is still held (not expired), allows it,
// and reports whether it did. op names the call in errors.
func (m *Memory) lease(ctx context.Context, op, tenant, owner string, ttl time.Duration, may func(l memoryLease, held bool) bool) (bool, error) {
	if err := checkLockCall(ctx, tenant, ttl); err != nil {
		return false, fmt.Errorf("store: %s %q: %w", op, tenant, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	l, ok := m.locks[tenant]
	if !may(l, ok && now.Before(l.until)) {
		return false, nil
	}
	m.locks[tenant] = memoryLease{owner: owner, until: now.Add(ttl.Truncate(time.Millisecond))}
	return true, nil
}

// Unlock releases the lock if owner holds it; otherwise it does nothing.
func (m *Memory) Unlock(ctx context.Context, tenant, owner string) error {
	if err := checkCall(ctx, tenant); err != nil {
		return fmt.Errorf("store: unlock %q: %w", tenant, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if l, ok := m.locks[tenant]; ok && l.owner == owner && m.now().Before(l.until) {
		delete(m.locks, tenant)
	}
	return nil
}

// Subscribe calls onInvalidate for every later Put and Delete of this
// Memory, from a goroutine of its own, until ctx ends; a nil callback is not
// called. onResync is called when the subscriber fell so far behind that
// invalidations were dropped: when 1024 are pending, later ones are dropped
// until it catches up. Subscribe returns at once: the subscription is
// active when it returns.
func (m *Memory) Subscribe(ctx context.Context, onInvalidate func(Invalidation), onResync func()) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: subscribe: %w", err)
	}
	s := &memorySubscriber{
		queue: make(chan Invalidation, subscriberQueue),
		wake:  make(chan struct{}, 1),
	}
	m.mu.Lock()
	m.subscribers[s] = struct{}{}
	m.mu.Unlock()
	go func() {
		defer func() {
			m.mu.Lock()
			delete(m.subscribers, s)
			m.mu.Unlock()
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case inv := <-s.queue:
				// Both cases may be ready when ctx ends; the callbacks
				// must not be called after it did.
				if ctx.Err() == nil && onInvalidate != nil {
					onInvalidate(inv)
				}
			case <-s.wake:
				if s.overflow.Swap(false) && ctx.Err() == nil && onResync != nil {
					onResync()
				}
			}
		}
	}()
	return nil
}

// publishLocked hands inv to every subscriber without blocking. m.mu must be
// held.
func (m *Memory) publishLocked(inv Invalidation) {
	for s := range m.subscribers {
		s.deliver(inv)
	}
}

// memorySubscriber is one Subscribe call's queue. When the queue is full an
// invalidation is dropped and the subscriber is told to resync instead, as a
// Redis subscriber is after it lost its connection.
type memorySubscriber struct {
	queue    chan Invalidation
	overflow atomic.Bool
	wake     chan struct{}
}

func (s *memorySubscriber) deliver(inv Invalidation) {
	select {
	case s.queue <- inv:
	default:
		s.overflow.Store(true)
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// PutOAuthState keeps st under the one-time name state for ttl, replacing
// any state of that name.
func (m *Memory) PutOAuthState(ctx context.Context, state string, st OAuthState, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: put oauth state: %w", err)
	}
	if err := checkTTL(ttl); err != nil {
		return fmt.Errorf("store: put oauth state: %w", err)
	}
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("store: put oauth state: encode: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	// Drop the expired states here, since nothing else would.
	for name, s := range m.states {
		if !now.Before(s.until) {
			delete(m.states, name)
		}
	}
	m.states[state] = memoryState{data: data, until: now.Add(ttl.Truncate(time.Millisecond))}
	return nil
}

// TakeOAuthState returns and deletes the OAuth state; a second take, or one
// after it expired, is ErrNotFound.
func (m *Memory) TakeOAuthState(ctx context.Context, state string) (OAuthState, error) {
	if err := ctx.Err(); err != nil {
		return OAuthState{}, fmt.Errorf("store: take oauth state: %w", err)
	}
	m.mu.Lock()
	s, ok := m.states[state]
	delete(m.states, state)
	expired := ok && !m.now().Before(s.until)
	m.mu.Unlock()
	if !ok || expired {
		return OAuthState{}, fmt.Errorf("store: take oauth state: %w", ErrNotFound)
	}
	var st OAuthState
	if err := json.Unmarshal(s.data, &st); err != nil {
		return OAuthState{}, fmt.Errorf("store: take oauth state: decode: %w", err)
	}
	return st, nil
}

// Ping reports whether ctx is still live; a Memory is always reachable.
func (m *Memory) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: ping: %w", err)
	}
	return nil
}
