package auth

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"thanksio-proxy/store"
)

// epochCheckInterval is how often each replica reads the store's epoch, to
// notice a store that lost its data without dropping a connection (a
// FLUSHALL), besides the check after every reconnect.
const epochCheckInterval = 5 * time.Second

// storeWorkers bounds the store calls a write-back or a re-validation runs
// at once.
const storeWorkers = 8

// askResync asks the store watcher to check the epoch and re-validate the
// cache: invalidations may have been missed. It never blocks.
func (t *Tokens) askResync() {
	select {
	case t.resync <- struct{}{}:
	default:
	}
}

// watchStore checks the store's epoch every epochCheckInterval and after
// each reconnect; after a reconnect or a loss it re-validates the cache.
func (t *Tokens) watchStore() {
	tick := time.NewTicker(epochCheckInterval)
	defer tick.Stop()
	for {
		resync := false
		select {
		case <-t.ctx.Done():
			return
		case <-tick.C:
		case <-t.resync:
			resync = true
		}
		ctx, cancel := context.WithTimeout(t.ctx, time.Minute)
		if t.checkEpoch(ctx) || resync {
			t.revalidate(ctx)
		}
		cancel()
	}
}

// checkEpoch reads the store's epoch and, when it changed, writes back every
// record this replica holds (the highest version wins across replicas; a
// tenant deleted before the loss is in no cache, so it does not come back).
// It reports whether the store lost its data.
func (t *Tokens) checkEpoch(ctx context.Context) bool {
	ep, err := t.store.Epoch(ctx)
	if err != nil {
		return false // Unreachable: the next check, or the reconnect, tells.
	}
	if t.epoch == "" || ep == t.epoch {
		t.epoch = ep
		return false
	}
	t.epoch = ep
	t.obs.StoreDataLost()
	t.cache.dropUnheld()
	held := t.cache.snapshots()
	t.log.Error("the token store lost its data (its epoch changed): writing back the tenants this replica holds; run Redis with persistence (appendonly yes) to avoid this",
		"tenants", len(held))
	now := t.now()
	var mu sync.Mutex
	restored, failed := 0, 0
	forEach(ctx, storeWorkers, held, func(c cached) {
		if c.snap.version < 1 {
			return
		}
		// Restore writes only over nothing or another replica's
		// write-back of a lower version: a record written since the loss
		// (an import, a connect, a refresh) wins, whatever its version, as
		// versions restart with a lost record.
		ok, err := t.store.Restore(ctx, c.tenant, c.snap.record(now))
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			failed++
			t.obs.StoreError("restore")
		case ok:
			restored++
		default:
			// A record written since the loss (at a version that
			// restarted, so it may not look newer) or a newer
			// write-back holds the tenant: this one is outdated.
			t.cache.end(c.entry)
		}
	})
	t.log.Warn("wrote back the tenants held after the store lost its data", "restored", restored, "failed", failed)
	return true
}

// revalidate re-reads every cached tenant's record: a tenant deleted is
// dropped, a newer record replaces the cached one. It runs when
// invalidations may have been missed, so the cache keeps serving meanwhile.
func (t *Tokens) revalidate(ctx context.Context) {
	t.revalidateBefore(ctx, time.Time{})
}

// revalidateBefore re-reads the records of the tenants last read from the
// store before cutoff (zero: every cached tenant).
func (t *Tokens) revalidateBefore(ctx context.Context, cutoff time.Time) {
	held := t.cache.snapshots()
	if !cutoff.IsZero() {
		held = slices.DeleteFunc(held, func(c cached) bool { return !c.filledAt.Before(cutoff) })
	}
	forEach(ctx, storeWorkers, held, func(c cached) {
		if t.pendingRecord(c.tenant) != nil {
			return // Its writer knows better than the store.
		}
		rec, err := t.store.Get(ctx, c.tenant)
		switch {
		case errors.Is(err, store.ErrNotFound):
			t.cache.deleted(c.tenant)
		case err == nil && rec.Version == c.snap.version && rec.AccessToken == c.snap.access:
			// The token too: versions restart when the store loses its
			// data, so a version alone does not tell the record.
			t.cache.checked(c.entry, c.snap.stamp)
		case err == nil:
			t.cache.fill(c.entry, snapshotOf(rec))
		}
	})
}

// heartbeatInterval is how often each replica publishes a heartbeat on the
// invalidation channel; invalidationsDownAfter without hearing its own, it
// counts invalidations as not reaching it.
const (
	heartbeatInterval      = 2 * time.Second
	invalidationsDownAfter = 3 * heartbeatInterval
)

// watchInvalidations publishes this replica's heartbeats and tracks whether
// they come back. While they do not, invalidations may be lost (the
// subscription is down, or the Redis user may not PUBLISH or SUBSCRIBE), so
// it says so (log, metrics, Invalidations) and re-reads every cached tenant
// not read for CacheRevalidate.
func (t *Tokens) watchInvalidations() {
	t.every(heartbeatInterval, t.checkInvalidations)
}

// checkInvalidations publishes one heartbeat and acts on whether the
// previous ones came back.
func (t *Tokens) checkInvalidations() {
	ctx, cancel := context.WithTimeout(t.ctx, heartbeatInterval)
	pubErr := t.store.Heartbeat(ctx, t.id)
	cancel()
	now := t.now()
	heard := time.Unix(0, t.heardAt.Load())
	ok := now.Sub(heard) < invalidationsDownAfter
	if was := t.subscribed.Swap(ok); was != ok {
		if ok {
			t.log.Info("invalidations reach this replica again; re-reading every cached tenant")
			t.askResync()
		} else {
			reason := "no heartbeat came back"
			switch {
			case pubErr != nil:
				reason = pubErr.Error()
			case t.subErr.Load() != nil:
				reason = (*t.subErr.Load()).Error()
			}
			t.log.Warn("invalidations do not reach this replica: deleted or replaced tokens are noticed only by re-reading the store",
				"reason", reason, "revalidate_every", t.cfg.CacheRevalidate.String())
		}
	}
	t.obs.Invalidations(ok, heard)
	if !ok {
		ctx, cancel := context.WithTimeout(t.ctx, t.cfg.CacheRevalidate)
		t.revalidateBefore(ctx, now.Add(-t.cfg.CacheRevalidate))
		cancel()
	}
}

// Invalidations reports whether other replicas' writes and deletions reach
// this replica (its own heartbeats come back through the store), and when it
// last heard one.
func (t *Tokens) Invalidations() (subscribed bool, lastHeard time.Time) {
	return t.subscribed.Load(), time.Unix(0, t.heardAt.Load())
}

// every calls fn every d until Tokens closes.
func (t *Tokens) every(d time.Duration, fn func()) {
	tick := time.NewTicker(d)
	defer tick.Stop()
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-tick.C:
			fn()
		}
	}
}

// forEach calls fn for every item, workers at a time, until ctx ends.
func forEach[T any](ctx context.Context, workers int, items []T, fn func(T)) {
	sem := make(chan struct{}, workers)
	var wg sync.WaitGroup
	for _, item := range items {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(item)
		})
	}
	wg.Wait()
}
