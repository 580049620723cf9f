package auth

import (
	"context"
	"sync"
	"time"
)

// heldLock is a tenant's refresh lock while this process holds it. It
// renews itself, detached from every context (a caller's, the Tokens'), until
// its holder releases or abandons it: nothing but the holder's own end stops
// it, because the lock is what keeps every other replica from presenting the
// refresh token this one is redeeming, or has redeemed and not yet stored.
type heldLock struct {
	t      *Tokens
	tenant string
	owner  string

	once sync.Once
	stop chan struct{}
	done chan struct{}
}

// renewEvery is how often a held lock is renewed: often, so that a store
// that refuses writes for a while (and so refuses renewals too) leaves the
// lease with nearly all of its length.
func (t *Tokens) renewEvery() time.Duration {
	return min(t.cfg.LockLease/3, 5*time.Second)
}

// tryLock takes the tenant's lock once, and on success returns it renewing
// itself.
func (t *Tokens) tryLock(ctx context.Context, tenant string) (*heldLock, error) {
	owner := randomOwner()
	ok, err := t.store.TryLock(ctx, tenant, owner, t.cfg.LockLease)
	if err != nil || !ok {
		return nil, err
	}
	l := &heldLock{t: t, tenant: tenant, owner: owner, stop: make(chan struct{}), done: make(chan struct{})}
	go l.renew()
	return l, nil
}

func (l *heldLock) renew() {
	defer close(l.done)
	t := l.t
	tick := time.NewTicker(t.renewEvery())
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), t.renewEvery())
		ok, err := t.store.RenewLock(ctx, l.tenant, l.owner, t.cfg.LockLease)
		if err == nil && !ok {
			// The lease ran out (a long store outage) or the store lost its
			// data: take the lock again if nobody else has, so that no
			// other replica starts a refresh while this one still needs it.
			ok, err = t.store.TryLock(ctx, l.tenant, l.owner, t.cfg.LockLease)
			if err == nil && !ok {
				t.log.Warn("refresh lock lost to another replica while still needed", "tenant", l.tenant)
			}
		}
		cancel()
		if err != nil {
			t.obs.StoreError("lock")
		}
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
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := l.t.store.Unlock(ctx, l.tenant, l.owner); err != nil {
		l.t.obs.StoreError("unlock")
	}
}

// Abandon stops the renewal and leaves the lock to run out: for a process
// that stops while the store still holds a refresh token it redeemed, so
// that no other replica presents that token before the lease ends.
func (l *heldLock) Abandon() { l.halt() }
