package auth

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// heldLock is a tenant's refresh lock while this process holds it: the
// handle the lifecycle passes around, from the refresh that took it to the
// pending write that may inherit it. It renews itself, detached from every
// context (a caller's, the Tokens'), until its holder calls Release or
// Abandon: nothing but the holder's own end stops it, because the lock is
// what keeps every other replica from presenting the refresh token this one
// is redeeming, or has redeemed and not yet stored.
//
// The renewal is not Tokens' to stop, and Close does not end it: every
// holder runs under Tokens' WaitGroup and ends its lock before it returns,
// so no renewal outlives Close.
type heldLock struct {
	locks  Locks
	tenant string
	// owner is the lock's value in the store, which only this process
	// knows; it never leaves the handle.
	owner string
	lease time.Duration
	obs   Observer
	log   *slog.Logger

	once sync.Once
	stop chan struct{}
	done chan struct{}
}

// renewEvery is how often a lock with the given lease is renewed: often, so
// that a store that refuses writes for a while (and so refuses renewals too)
// leaves the lease with nearly all of its length.
func renewEvery(lease time.Duration) time.Duration {
	return min(lease/3, 5*time.Second)
}

// unlockTimeout bounds the compare-and-delete of Release; a lock it fails
// to delete runs out with its lease.
const unlockTimeout = 2 * time.Second

// obtainLock takes the tenant's refresh lock, for Config.LockLease, if
// nobody holds it. It returns the lock, renewing itself, or nil when another
// holder has it.
func (t *Tokens) obtainLock(ctx context.Context, tenant string) (*heldLock, error) {
	l := &heldLock{
		locks:  t.store,
		tenant: tenant,
		owner:  randomID(),
		lease:  t.cfg.LockLease,
		obs:    t.obs,
		log:    t.log,
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	ok, err := l.locks.TryLock(ctx, tenant, l.owner, l.lease)
	if err != nil || !ok {
		return nil, err
	}
	go l.renew()
	return l, nil
}

// renew refreshes the lease every renewEvery until the holder ends the lock.
func (l *heldLock) renew() {
	defer close(l.done)
	every := renewEvery(l.lease)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
		l.refresh(every)
	}
}

// refresh extends the lease once, within timeout. A failure is counted and
// left to the next renewal: only the holder ends the lock.
func (l *heldLock) refresh(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ok, err := l.locks.RenewLock(ctx, l.tenant, l.owner, l.lease)
	if err == nil && !ok {
		// The lease ran out (a long store outage) or the store lost its
		// data: take the lock again if nobody else has, so that no other
		// replica starts a refresh while this one still needs it.
		ok, err = l.locks.TryLock(ctx, l.tenant, l.owner, l.lease)
		if err == nil && !ok {
			l.log.Warn("refresh lock lost to another replica while still needed", "tenant", l.tenant)
		}
	}
	if err != nil {
		l.obs.StoreError("lock")
	}
}

// halt stops the renewal and waits for it.
func (l *heldLock) halt() {
	l.once.Do(func() { close(l.stop) })
	<-l.done
}

// Release stops the renewal and frees the lock (compare and delete).
func (l *heldLock) Release() {
	l.halt()
	ctx, cancel := context.WithTimeout(context.Background(), unlockTimeout)
	defer cancel()
	if err := l.locks.Unlock(ctx, l.tenant, l.owner); err != nil {
		l.obs.StoreError("unlock")
	}
}

// Abandon stops the renewal and leaves the lock to run out: for a process
// that stops while the store still holds a refresh token it redeemed, so
// that no other replica presents that token before the lease ends.
func (l *heldLock) Abandon() { l.halt() }
