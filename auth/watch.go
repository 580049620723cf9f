package auth

import (
	"context"
	"errors"
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
	held := t.cache.snapshots()
	t.log.Error("the token store lost its data (its epoch changed): writing back the tenants this replica holds; run Redis with persistence (appendonly yes) to avoid this",
		"tenants", len(held))
	now := t.now()
	var mu sync.Mutex
	restored, failed := 0, 0
	t.each(ctx, held, func(c cached) {
		if c.snap.version < 1 {
			return
		}
		ok, err := t.store.Restore(ctx, c.tenant, c.snap.record(now))
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			failed++
			t.obs.StoreError("restore")
		case ok:
			restored++
		}
	})
	t.log.Warn("wrote back the tenants held after the store lost its data", "restored", restored, "failed", failed)
	return true
}

// revalidate re-reads every cached tenant's record: a tenant deleted is
// dropped, a newer record replaces the cached one. It runs when
// invalidations may have been missed, so the cache keeps serving meanwhile.
func (t *Tokens) revalidate(ctx context.Context) {
	t.each(ctx, t.cache.snapshots(), func(c cached) {
		if t.pendingRecord(c.tenant) != nil {
			return // Its writer knows better than the store.
		}
		rec, err := t.store.Get(ctx, c.tenant)
		switch {
		case errors.Is(err, store.ErrNotFound):
			t.cache.drop(c.tenant, 0)
		case err == nil:
			t.cache.refill(c.tenant, snapshotOf(rec))
		}
	})
}

// each calls fn for every item of held, storeWorkers at a time, until ctx
// ends.
func (t *Tokens) each(ctx context.Context, held []cached, fn func(cached)) {
	sem := make(chan struct{}, storeWorkers)
	var wg sync.WaitGroup
	for _, c := range held {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(c)
		})
	}
	wg.Wait()
}
