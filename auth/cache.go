package auth

import (
	"sync"
	"sync/atomic"
	"time"

	"thanksio-proxy/store"
)

// snapshot is an immutable view of a tenant's token, as the hot path needs it.
type snapshot struct {
	access string
	// bearer is "Bearer " + access, the Authorization header value, built
	// once per token rather than once per request; access is a substring of
	// it, so the token is held once.
	bearer      string
	expiry      time.Time // zero: never expires
	refreshable bool
	state       store.State
	version     int64
	// redeemed is set on the snapshot a refresh in this process produced
	// (not one read from the store).
	redeemed bool
	// refresh and lastRefresh are kept only to write the record back when
	// the store lost its data. A refresh never uses this refresh token: it
	// re-reads the store under the lock, as a cached one may be stale.
	refresh     string
	lastRefresh time.Time
}

func snapshotOf(rec store.TokenRecord) *snapshot {
	bearer := bearerPrefix + rec.AccessToken
	return &snapshot{
		access:      bearer[len(bearerPrefix):],
		bearer:      bearer,
		expiry:      rec.Expiry,
		refreshable: rec.Refreshable(),
		state:       rec.State,
		version:     rec.Version,
		refresh:     rec.RefreshToken,
		lastRefresh: rec.LastRefresh,
	}
}

// record is the token record s was made from, as far as s knows it, for a
// write-back after the store lost its data (marked as one).
func (s *snapshot) record(now time.Time) store.TokenRecord {
	return store.TokenRecord{
		AccessToken:  s.access,
		RefreshToken: s.refresh,
		Expiry:       s.expiry,
		State:        s.state,
		Version:      s.version,
		LastRefresh:  s.lastRefresh,
		UpdatedAt:    now,
		RestoredAt:   now,
	}
}

const bearerPrefix = "Bearer "

// usable reports whether the access token can be sent at now.
func (s *snapshot) usable(now time.Time) bool {
	return s.state != store.StateReauthorizationRequired && s.access != "" &&
		(s.expiry.IsZero() || now.Before(s.expiry))
}

// due reports whether a refresh should start at now.
func (s *snapshot) due(now time.Time, ahead time.Duration) bool {
	return s.refreshable && !s.expiry.IsZero() && !now.Before(s.expiry.Add(-ahead))
}

// entry is one tenant's place in the cache. The snapshot is swapped whole, so
// the hot path reads it without a lock.
//
// A fill (a store read, a refresh) takes the tenant's entry before it starts
// and puts its result into that entry only if it is still the tenant's entry
// (a deletion removes it) and the result is not older than the newest version
// an invalidation announced meanwhile (floor): a fill that started before an
// invalidation cannot undo it.
type entry struct {
	snap atomic.Pointer[snapshot]
	// floor is the lowest version a fill may bring: the newest version an
	// invalidation announced. Written under cache.mu.
	floor atomic.Int64
	// filledAt (unix nanoseconds) is when the snapshot was last read from,
	// or checked against, the store.
	filledAt atomic.Int64
	// refreshing is set while a background refresh for the tenant runs in
	// this process.
	refreshing atomic.Bool
	// retryAt (unix nanoseconds) holds back the next refresh attempt after a
	// failure; failures counts them, for the backoff.
	retryAt  atomic.Int64
	failures atomic.Int32
}

// cache is the bounded in-process map from tenant to entry. When full, adding
// a tenant evicts an arbitrary other one (Go's map order): cheap, and fair
// enough for a cache whose misses cost one store read.
type cache struct {
	mu      sync.RWMutex
	m       map[string]*entry
	max     int
	now     func() time.Time
	evicted func() // called, under mu, for each eviction
}

func newCache(max int, now func() time.Time, evicted func()) *cache {
	return &cache{m: make(map[string]*entry), max: max, now: now, evicted: evicted}
}

func (c *cache) get(tenant string) *entry {
	c.mu.RLock()
	e := c.m[tenant]
	c.mu.RUnlock()
	return e
}

// put stores s, the tenant's newest record as its writer (an import) wrote
// it, in e, the entry taken before the write, if e is still the tenant's
// entry: a deletion that removed it came after the write, and wins. It
// reports whether it stored s.
func (c *cache) put(tenant string, e *entry, s *snapshot) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m[tenant] != e {
		return false
	}
	e.floor.Store(max(e.floor.Load(), s.version))
	c.storeLocked(e, s)
	return true
}

// fill stores s in e, the entry the fill started with, if e is still the
// tenant's entry, s is not older than what an invalidation announced since,
// nor than what e holds. It reports whether it did.
func (c *cache) fill(tenant string, e *entry, s *snapshot) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m[tenant] != e || s.version < e.floor.Load() {
		return false
	}
	if cur := e.snap.Load(); cur != nil && cur.version > s.version {
		return false
	}
	c.storeLocked(e, s)
	return true
}

func (c *cache) storeLocked(e *entry, s *snapshot) {
	e.snap.Store(s)
	e.filledAt.Store(c.now().UnixNano())
}

// addLocked adds an empty entry for tenant, evicting another when full.
func (c *cache) addLocked(tenant string) *entry {
	if len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			c.evicted()
			break
		}
	}
	e := &entry{}
	c.m[tenant] = e
	return e
}

// entryFor returns the tenant's entry, adding an empty one if needed: the
// entry a fill starts with, and where failures are remembered even before
// any token was cached.
func (c *cache) entryFor(tenant string) *entry {
	if e := c.get(tenant); e != nil {
		return e
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[tenant]; ok {
		return e
	}
	return c.addLocked(tenant)
}

// written handles the invalidation of a write of version: fills of older
// versions are refused from now on, and an older cached token is dropped. The
// entry stays, and with it the refresh backoff: a status write (a refresh
// failure noted in the record) must not reset the backoff.
func (c *cache) written(tenant string, version int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[tenant]
	if !ok {
		return
	}
	e.floor.Store(max(e.floor.Load(), version))
	if s := e.snap.Load(); s != nil && s.version < version {
		e.snap.Store(nil)
	}
}

// deleted handles the deletion of the tenant: the entry goes, so that every
// fill that started with it is refused. It goes whatever version it holds:
// versions restart when the store loses its data, so a cached version
// above the tombstone's may be older than the deletion (a record from
// before the loss, deleted after it). A record written after the deletion
// and announced first is read again from the store, at the cost of a miss.
func (c *cache) deleted(tenant string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, tenant)
}

// checked records that the tenant's snapshot s was found current in the
// store just now.
func (c *cache) checked(tenant string, s *snapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[tenant]; ok && e.snap.Load() == s {
		e.filledAt.Store(c.now().UnixNano())
	}
}

// dropToken forgets the tenant's token if it still caches access.
func (c *cache) dropToken(tenant, access string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[tenant]; ok {
		if s := e.snap.Load(); s != nil && s.access == access {
			e.snap.Store(nil)
		}
	}
}

// cached is one tenant's snapshot, as cache.snapshots lists it.
type cached struct {
	tenant   string
	entry    *entry
	snap     *snapshot
	filledAt time.Time
}

// snapshots lists the tenants cached with a snapshot.
func (c *cache) snapshots() []cached {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]cached, 0, len(c.m))
	for tenant, e := range c.m {
		if s := e.snap.Load(); s != nil {
			out = append(out, cached{tenant, e, s, time.Unix(0, e.filledAt.Load())})
		}
	}
	return out
}

func (c *cache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
