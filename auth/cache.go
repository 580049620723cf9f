package auth

import (
	"hash/maphash"

	"sync"
	"time"

	"thanksio-proxy/store"
)

// snapshot is a view of a tenant's token, as the hot path needs it: made
// from a record (snapshotOf), or copied out of the cache's slot.
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
	// shared reports that bearer and refresh are strings their record's
	// holder keeps (an in-memory store, or the writer of a new token, which
	// hands the same strings to the store), so that the cache keeps them
	// rather than copies: the process then holds each token once.
	shared bool
	// stamp identifies what the cache stored; zero for a snapshot that was
	// not copied out of the cache.
	stamp uint64
}

func snapshotOf(rec store.TokenRecord) *snapshot {
	s := &snapshot{
		expiry:      rec.Expiry,
		refreshable: rec.Refreshable(),
		state:       rec.State,
		version:     rec.Version,
		refresh:     rec.RefreshToken,
		lastRefresh: rec.LastRefresh,
	}
	if rec.Authorization != "" {
		// The record's holder (an in-memory store, the writer of a new
		// token) keeps these strings: share them.
		rec = rec.WithAuthorization()
		s.bearer, s.shared = rec.Authorization, true
	} else {
		s.bearer = bearerPrefix + rec.AccessToken
	}
	s.access = s.bearer[len(bearerPrefix):]
	return s
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

// entry is a handle on one tenant's place in the cache. It stays the
// tenant's until the tenant is deleted or evicted: the place may then be
// reused, for this tenant or another, under a new generation, and the
// handle no longer reaches it.
//
// A fill (a store read, a refresh) takes the tenant's entry before it starts
// and puts its result into that entry only if it is still the tenant's
// (a deletion ends it) and the result is not older than the newest version
// an invalidation announced meanwhile (the floor): a fill that started
// before an invalidation cannot undo it.
type entry struct {
	i   int32
	gen uint64 // zero: no entry
}

// found reports whether e names an entry at all.
func (e entry) found() bool { return e.gen != 0 }

// slot is one tenant's place in the cache. It holds no pointer, so that the
// collector never scans the pages of slots: its text (the tenant id, then
// the Authorization value, the refresh token and a state of no known name,
// end to end) lives in the cache's arena, and its times are kept as numbers.
// A shared snapshot's strings, the store's own, are kept as they are
// instead, beside the slot (cache.shared).
type slot struct {
	text                                 arenaRef
	idLen, bearerLen, refreshLen, auxLen int32
	// The snapshot, when stamp is not zero.
	shared              bool
	state               stateCode
	expiry, lastRefresh slotTime
	version             int64
	refreshable         bool
	redeemed            bool
	stamp               uint64

	gen  uint64 // zero: the slot is free
	hash uint64
	next int32 // the next slot whose id has the same hash; -1 ends the chain

	// floor is the lowest version a fill may bring: the newest version an
	// invalidation announced.
	floor int64
	// filledAt (Unix nanoseconds) is when the snapshot was last read from,
	// or checked against, the store.
	filledAt int64
	// refreshing is set while a background refresh for the tenant runs in
	// this process.
	refreshing bool
	// retryAt (Unix nanoseconds) holds back the next refresh attempt after
	// a failure; failures counts them, for the backoff.
	retryAt  int64
	failures int
}

func (s *slot) textLen() int32 { return s.idLen + s.bearerLen + s.refreshLen + s.auxLen }

// slotTime is a time.Time without its location (times are kept in UTC),
// which would be a pointer: any time a record can hold, the zero time (no
// expiry) included.
type slotTime struct {
	sec  int64
	nsec int32
}

func slotTimeOf(t time.Time) slotTime { return slotTime{t.Unix(), int32(t.Nanosecond())} }

func (t slotTime) time() time.Time { return time.Unix(t.sec, int64(t.nsec)).UTC() }

// sharedText is a shared snapshot's strings, which the record's holder
// keeps.
type sharedText struct{ bearer, refresh string }

// stateCode is a store.State as a slot keeps it: the known states by
// number, any other in the slot's text.
type stateCode uint8

const (
	stateEmpty stateCode = iota
	stateActive
	stateReauthorizationRequired
	stateOther
)

// slotsPerPage is the slots allocated together. Pages never move, and a
// page is one object for the garbage collector, which it does not scan.
const slotsPerPage = 512

// cache is the bounded in-process map from tenant to its token. Its index
// maps a hash of the tenant id to a slot, its slots live in pages, and the
// tenants' strings in an arena of large chunks: none of it holds a pointer
// per tenant, so the collector's work per cycle does not grow with the
// tenants cached. When full, adding a tenant evicts an arbitrary other one
// (Go's map order): cheap, and fair enough for a cache whose misses cost
// one store read.
//
// Every method takes the cache's lock; the hot path (lookup) takes it to
// read.
type cache struct {
	mu     sync.RWMutex
	hash   func(tenant string) uint64
	index  map[uint64]int32 // hash of the id → the first slot of its chain
	pages  []*[slotsPerPage]slot
	text   arena
	shared []*[slotsPerPage]sharedText // by page; nil until a page's slot holds a shared snapshot
	free   []int32                     // slots given back, reused first
	used   int
	gens   uint64 // the last generation handed out
	stamps uint64 // the last stamp handed out

	max     int
	now     func() time.Time
	evicted func() // called, under mu, for each eviction
}

func newCache(max int, now func() time.Time, evicted func()) *cache {
	seed := maphash.MakeSeed()
	return &cache{
		hash:  func(tenant string) uint64 { return maphash.String(seed, tenant) },
		index: make(map[uint64]int32), text: newArena(), max: max, now: now, evicted: evicted,
	}
}

func (c *cache) slot(i int32) *slot {
	return &c.pages[i/slotsPerPage][i%slotsPerPage]
}

// sharedAt returns slot i's shared strings, or nil when its page has none.
func (c *cache) sharedAt(i int32) *sharedText {
	if p := c.shared[i/slotsPerPage]; p != nil {
		return &p[i%slotsPerPage]
	}
	return nil
}

// id returns the tenant id of slot i.
func (c *cache) id(i int32) string {
	s := c.slot(i)
	return c.text.text(s.text, s.idLen)
}

// tokens returns the Authorization value, the refresh token and the state
// of the snapshot slot i holds.
func (c *cache) tokens(i int32) (bearer, refresh string, state store.State) {
	s := c.slot(i)
	all := c.text.text(s.text, s.textLen())
	if s.shared {
		sh := c.sharedAt(i)
		bearer, refresh = sh.bearer, sh.refresh
	} else {
		bearer = all[s.idLen : s.idLen+s.bearerLen]
		refresh = all[s.idLen+s.bearerLen : s.idLen+s.bearerLen+s.refreshLen]
	}
	switch s.state {
	case stateActive:
		state = store.StateActive
	case stateReauthorizationRequired:
		state = store.StateReauthorizationRequired
	case stateOther:
		state = store.State(all[s.idLen+s.bearerLen+s.refreshLen:])
	}
	return bearer, refresh, state
}

// findLocked returns the tenant's slot, or -1.
func (c *cache) findLocked(tenant string) int32 {
	i, ok := c.index[c.hash(tenant)]
	if !ok {
		return -1
	}
	for ; i >= 0; i = c.slot(i).next {
		if c.id(i) == tenant {
			return i
		}
	}
	return -1
}

// valid returns e's slot if e is still its tenant's entry, else nil.
func (c *cache) valid(e entry) *slot {
	if e.gen == 0 {
		return nil
	}
	if s := c.slot(e.i); s.gen == e.gen {
		return s
	}
	return nil
}

// view is what the hot path reads of a tenant: its entry, a copy of the
// snapshot (held reports whether there is one) and when it was filled.
type view struct {
	entry      entry
	snap       snapshot
	held       bool
	filledAt   int64
	retryAt    int64
	refreshing bool
}

// lookup reads the tenant's entry (v.entry is not found without one).
func (c *cache) lookup(tenant string) (v view) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	i := c.findLocked(tenant)
	if i < 0 {
		return v
	}
	s := c.slot(i)
	v = view{entry: entry{i, s.gen}, filledAt: s.filledAt, retryAt: s.retryAt, refreshing: s.refreshing}
	if s.stamp != 0 {
		v.snap, v.held = c.snapshotAt(i), true
	}
	return v
}

// snapshotAt copies out slot i's snapshot.
func (c *cache) snapshotAt(i int32) snapshot {
	s := c.slot(i)
	bearer, refresh, state := c.tokens(i)
	return snapshot{
		access:      bearer[len(bearerPrefix):],
		bearer:      bearer,
		expiry:      s.expiry.time(),
		refreshable: s.refreshable,
		state:       state,
		version:     s.version,
		redeemed:    s.redeemed,
		refresh:     refresh,
		lastRefresh: s.lastRefresh.time(),
		stamp:       s.stamp,
	}
}

// get returns the tenant's entry, if it has one.
func (c *cache) get(tenant string) entry {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if i := c.findLocked(tenant); i >= 0 {
		return entry{i, c.slot(i).gen}
	}
	return entry{}
}

// entryFor returns the tenant's entry, adding an empty one if needed: the
// entry a fill starts with, and where failures are remembered even before
// any token was cached.
func (c *cache) entryFor(tenant string) entry {
	if e := c.get(tenant); e.found() {
		return e
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if i := c.findLocked(tenant); i >= 0 {
		return entry{i, c.slot(i).gen}
	}
	return c.addLocked(tenant)
}

// addLocked adds an empty entry for tenant, evicting another when full.
func (c *cache) addLocked(tenant string) entry {
	if c.used >= c.max {
		for _, i := range c.index {
			c.removeLocked(i)
			c.evicted()
			break
		}
	}
	var i int32
	if n := len(c.free); n > 0 {
		i, c.free = c.free[n-1], c.free[:n-1]
	} else {
		i = int32(len(c.pages) * slotsPerPage)
		c.pages = append(c.pages, new([slotsPerPage]slot))
		c.shared = append(c.shared, nil)
		for j := slotsPerPage - 1; j > 0; j-- {
			c.free = append(c.free, i+int32(j))
		}
	}
	c.gens++
	h := c.hash(tenant)
	next, ok := c.index[h]
	if !ok {
		next = -1
	}
	*c.slot(i) = slot{text: c.text.add(i, tenant), idLen: int32(len(tenant)), gen: c.gens, hash: h, next: next}
	c.index[h] = i
	c.used++
	c.compactLocked()
	return entry{i, c.gens}
}

// removeLocked frees slot i, ending its entry.
func (c *cache) removeLocked(i int32) {
	s := c.slot(i)
	if head := c.index[s.hash]; head == i {
		if s.next >= 0 {
			c.index[s.hash] = s.next
		} else {
			delete(c.index, s.hash)
		}
	} else {
		p := c.slot(head)
		for p.next != i {
			p = c.slot(p.next)
		}
		p.next = s.next
	}
	c.text.release(s.text, s.textLen())
	*s = slot{}
	if sh := c.sharedAt(i); sh != nil {
		*sh = sharedText{}
	}
	c.free = append(c.free, i)
	c.used--
	c.compactLocked()
}

// put stores s, a record as its writer (an import) wrote it, in e, the
// entry taken before the write, if e is still the tenant's entry (a
// deletion that removed it came after the write, and wins) and no newer
// write was announced or cached meanwhile (another import that landed after
// this one). It reports whether it stored s.
func (c *cache) put(e entry, s *snapshot) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	sl := c.valid(e)
	if sl == nil || s.version < sl.floor || (sl.stamp != 0 && sl.version > s.version) {
		return false
	}
	sl.floor = max(sl.floor, s.version)
	c.storeLocked(e.i, s)
	return true
}

// fill stores s in e, the entry the fill started with, if e is still the
// tenant's entry, s is not older than what an invalidation announced since,
// nor than what e holds. It reports whether it did.
func (c *cache) fill(e entry, s *snapshot) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	sl := c.valid(e)
	if sl == nil || s.version < sl.floor || (sl.stamp != 0 && sl.version > s.version) {
		return false
	}
	c.storeLocked(e.i, s)
	return true
}

// storeLocked puts s into slot i: the tenant id and s's strings end to end
// in the arena, or s's strings beside the slot when they are the store's
// own.
func (c *cache) storeLocked(i int32, s *snapshot) {
	sl := c.slot(i)
	var other string
	switch s.state {
	case "":
		sl.state = stateEmpty
	case store.StateActive:
		sl.state = stateActive
	case store.StateReauthorizationRequired:
		sl.state = stateReauthorizationRequired
	default:
		sl.state, other = stateOther, string(s.state)
	}
	old, oldLen := sl.text, sl.textLen()
	id := c.id(i)
	if sl.shared = s.shared; s.shared {
		if c.shared[i/slotsPerPage] == nil {
			c.shared[i/slotsPerPage] = new([slotsPerPage]sharedText)
		}
		*c.sharedAt(i) = sharedText{s.bearer, s.refresh}
		sl.bearerLen, sl.refreshLen = 0, 0
		sl.text = c.text.add(i, id, other)
	} else {
		if sh := c.sharedAt(i); sh != nil {
			*sh = sharedText{}
		}
		sl.bearerLen, sl.refreshLen = int32(len(s.bearer)), int32(len(s.refresh))
		sl.text = c.text.add(i, id, s.bearer, s.refresh, other)
	}
	sl.auxLen = int32(len(other))
	c.text.release(old, oldLen)
	sl.expiry, sl.lastRefresh = slotTimeOf(s.expiry), slotTimeOf(s.lastRefresh)
	sl.version, sl.refreshable, sl.redeemed = s.version, s.refreshable, s.redeemed
	c.stamps++
	sl.stamp = c.stamps
	sl.filledAt = c.now().UnixNano()
	c.compactLocked()
}

// dropLocked forgets slot i's snapshot, keeping the entry.
func (c *cache) dropLocked(i int32) {
	sl := c.slot(i)
	old, oldLen := sl.text, sl.textLen()
	sl.text = c.text.add(i, c.id(i))
	c.text.release(old, oldLen)
	if sh := c.sharedAt(i); sh != nil {
		*sh = sharedText{}
	}
	sl.bearerLen, sl.refreshLen, sl.auxLen, sl.shared = 0, 0, 0, false
	sl.state, sl.stamp = stateEmpty, 0
	c.compactLocked()
}

// compactLocked moves the live texts of one sparse chunk of the arena, if
// there is one, into its current chunk, so that the chunk can go: garbage
// stays under about a quarter of the arena, and the work of one call is
// bounded by one chunk (a write holds the lock that lookups take).
func (c *cache) compactLocked() {
	n, ch := c.text.nextSparse()
	if ch == nil {
		return
	}
	for _, i := range ch.owners {
		// An owner may have moved on since (to another chunk, or to
		// none): only a slot whose text is in this chunk still is one.
		// It is moved once, and is then in another chunk.
		if s := c.slot(i); s.gen != 0 && s.text.chunk == n && s.textLen() > 0 {
			old, oldLen := s.text, s.textLen()
			s.text = c.text.add(i, c.text.text(old, oldLen))
			c.text.release(old, oldLen)
			if ch.live == 0 {
				return // let go
			}
		}
	}
}

// written handles the invalidation of a write of version: fills of older
// versions are refused from now on, and an older cached token is dropped. The
// entry stays, and with it the refresh backoff: a status write (a refresh
// failure noted in the record) must not reset the backoff.
func (c *cache) written(tenant string, version int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := c.findLocked(tenant)
	if i < 0 {
		return
	}
	sl := c.slot(i)
	sl.floor = max(sl.floor, version)
	if sl.stamp != 0 && sl.version < version {
		c.dropLocked(i)
	}
}

// deleted handles the deletion of the tenant: the entry ends, so that every
// fill that started with it is refused. It goes whatever version it holds:
// versions restart when the store loses its data, so a cached version
// above the tombstone's may be older than the deletion (a record from
// before the loss, deleted after it). A record written after the deletion
// and announced first is read again from the store, at the cost of a miss.
func (c *cache) deleted(tenant string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i := c.findLocked(tenant); i >= 0 {
		c.removeLocked(i)
	}
}

// end ends e, if it is still its tenant's entry.
func (c *cache) end(e entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.valid(e) != nil {
		c.removeLocked(e.i)
	}
}

// checked records that the tenant's snapshot stamped stamp was found
// current in the store just now.
func (c *cache) checked(e entry, stamp uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sl := c.valid(e); sl != nil && sl.stamp == stamp {
		sl.filledAt = c.now().UnixNano()
	}
}

// dropToken forgets the tenant's token if it still caches access.
func (c *cache) dropToken(tenant, access string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i := c.findLocked(tenant); i >= 0 {
		if bearer, _, _ := c.tokens(i); c.slot(i).stamp != 0 && bearer[len(bearerPrefix):] == access {
			c.dropLocked(i)
		}
	}
}

// heldVersion is the version of the snapshot e holds; zero without one.
func (c *cache) heldVersion(e entry) int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if sl := c.valid(e); sl != nil && sl.stamp != 0 {
		return sl.version
	}
	return 0
}

// retryAt is when e's tenant may be refreshed again after failures (Unix
// nanoseconds; zero: at once).
func (c *cache) retryAt(e entry) int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if sl := c.valid(e); sl != nil {
		return sl.retryAt
	}
	return 0
}

// failed counts a failed refresh of e's tenant and holds the next one back
// by what backoff gives for the failures in a row; it returns when the next
// may start (Unix nanoseconds).
func (c *cache) failed(e entry, backoff func(failures int) time.Duration) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	sl := c.valid(e)
	if sl == nil {
		return 0
	}
	sl.failures++
	sl.retryAt = c.now().Add(backoff(sl.failures)).UnixNano()
	return sl.retryAt
}

// succeeded resets e's backoff after a successful refresh or a new grant.
func (c *cache) succeeded(e entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sl := c.valid(e); sl != nil {
		sl.failures, sl.retryAt = 0, 0
	}
}

// startRefresh marks a background refresh of e's tenant as running, unless
// one is, or a failure holds it back until after now. It reports whether it
// did.
func (c *cache) startRefresh(e entry, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	sl := c.valid(e)
	if sl == nil || sl.refreshing || now.UnixNano() < sl.retryAt {
		return false
	}
	sl.refreshing = true
	return true
}

// endRefresh marks the background refresh of e's tenant as ended.
func (c *cache) endRefresh(e entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sl := c.valid(e); sl != nil {
		sl.refreshing = false
	}
}

// dropUnheld ends the entries that hold no snapshot. After the store lost
// its data, versions restart: the floors those entries keep would refuse
// every fill of the records written since.
func (c *cache) dropUnheld() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for n, p := range c.pages {
		for i := range p {
			if s := &p[i]; s.gen != 0 && s.stamp == 0 {
				c.removeLocked(int32(n*slotsPerPage + i))
			}
		}
	}
}

// cached is one tenant's snapshot, as cache.snapshots lists it.
type cached struct {
	tenant   string
	entry    entry
	snap     snapshot
	filledAt time.Time
}

// snapshots lists the tenants cached with a snapshot.
func (c *cache) snapshots() []cached {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]cached, 0, c.used)
	for n, p := range c.pages {
		for j := range p {
			if s := &p[j]; s.gen != 0 && s.stamp != 0 {
				i := int32(n*slotsPerPage + j)
				out = append(out, cached{c.id(i), entry{i, s.gen}, c.snapshotAt(i), time.Unix(0, s.filledAt)})
			}
		}
	}
	return out
}

func (c *cache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.used
}
