package auth

import (
	"context"
	"time"

	"thanksio-proxy/store"
)

// Store is what the token lifecycle needs of persistence. Implementations
// (store.Redis, store.Memory) must be safe for concurrent use by multiple
// goroutines, and must return store.ErrNotFound, store.ErrConflict and
// store.ErrSealed (wrapped or not) where this contract names them.
type Store interface {
	// Get returns the tenant's record with its Version. It returns
	// store.ErrNotFound when there is none and store.ErrSealed when no
	// configured key opens it.
	Get(ctx context.Context, tenant string) (store.TokenRecord, error)
	// Put writes rec for tenant if the stored version equals prevVersion (0:
	// no record may exist; store.AnyVersion: any), and returns the new version.
	// A lost condition is store.ErrConflict and writes nothing. A successful Put
	// updates the expiry index and publishes an Invalidation.
	Put(ctx context.Context, tenant string, rec store.TokenRecord, prevVersion int64) (int64, error)
	// Delete forgets the tenant (record, lock, index entry) and publishes an
	// Invalidation with Version 0. Deleting an unknown tenant is not an error.
	Delete(ctx context.Context, tenant string) error
	// List returns up to limit tenant ids in ascending order, starting after
	// the id named by after ("" from the start), and whether more follow.
	List(ctx context.Context, after string, limit int) (tenants []string, more bool, err error)
	// DueBefore returns up to limit tenants whose refreshable token expires
	// before t, soonest first.
	DueBefore(ctx context.Context, t time.Time, limit int) ([]string, error)

	// TryLock takes the tenant's refresh lock for owner for ttl if nobody holds
	// it, and reports whether it did.
	TryLock(ctx context.Context, tenant, owner string, ttl time.Duration) (bool, error)
	// RenewLock extends the lock to ttl from now if owner still holds it, and
	// reports whether it did.
	RenewLock(ctx context.Context, tenant, owner string, ttl time.Duration) (bool, error)
	// Unlock releases the lock if owner still holds it (compare and delete).
	Unlock(ctx context.Context, tenant, owner string) error

	// Subscribe calls onInvalidate for every Invalidation published by any
	// replica, and onResync after the subscription was re-established (messages
	// may have been missed meanwhile), until ctx ends. It returns once the
	// subscription is active. Callbacks must not block.
	Subscribe(ctx context.Context, onInvalidate func(store.Invalidation), onResync func()) error

	// PutOAuthState keeps st under the one-time name state for ttl.
	PutOAuthState(ctx context.Context, state string, st store.OAuthState, ttl time.Duration) error
	// TakeOAuthState returns and deletes, atomically, the OAuth state; a second
	// take, or one after it expired, is store.ErrNotFound.
	TakeOAuthState(ctx context.Context, state string) (store.OAuthState, error)

	// Ping reports whether the store is reachable.
	Ping(ctx context.Context) error
}
