package auth

import (
	"context"
	"time"

	"thanksio-proxy/store"
)

// Store is everything the token lifecycle keeps in persistence: Config.Store
// takes one. It is the sum of what each part of the lifecycle needs (Records,
// Locks, Invalidations, OAuthStates), so that a test double of one concern
// embeds a Store and overrides only the methods of that concern.
//
// Implementations (store.Redis, store.Memory) must be safe for concurrent use
// by multiple goroutines, and must return store.ErrNotFound,
// store.ErrConflict and store.ErrSealed (wrapped or not) where this contract
// names them. Both refuse, with an error that is none of those, a call with a
// tenant id that is empty or holds a brace ('{' or '}', which would move the
// Redis Cluster hash tag), a blank or a control character, and the other
// arguments each part names; a refused call changes nothing.
type Store interface {
	Records
	Locks
	Invalidations
	OAuthStates

	// Ping reports whether the store is reachable. The token lifecycle never
	// calls it: it is here for the process's readiness check, which holds
	// the same Store.
	Ping(ctx context.Context) error
}

// Records are the tenants' token records, and the indexes kept beside them.
//
// A tenant's versions never restart: Delete leaves a tombstone that keeps
// the version, so a writer that read a record before it was deleted cannot
// overwrite the record written after it.
type Records interface {
	// Get returns the tenant's record with its Version. It returns
	// store.ErrNotFound when there is none (a deleted tenant included) and
	// store.ErrSealed when no configured key opens it.
	Get(ctx context.Context, tenant string) (store.TokenRecord, error)
	// Put writes rec for tenant if the stored version equals prevVersion (0:
	// no record may exist, a deleted one included; store.AnyVersion: any),
	// and returns the new version: one more than the stored one, or than the
	// deleted record's. A lost condition is store.ErrConflict and writes
	// nothing. A nil error means the record is stored; any other error leaves
	// it unknown whether it was, so re-read before deciding again; among
	// those, store.ErrUnconfirmed means the primary holds the write but it
	// was not confirmed durable (replicas, AOF) in time.
	//
	// After the write, Put updates the tenant list, the expiry index and the
	// per-state counts, and publishes an Invalidation, best effort: those are
	// hints, and their failure is not Put's error (store.Redis reports it to
	// its OnIndexError hook). The refresher re-reads the record under the
	// tenant's lock before it acts, and a replica that missed an
	// invalidation learns of the new token from the 401 replay.
	Put(ctx context.Context, tenant string, rec store.TokenRecord, prevVersion int64) (int64, error)
	// Delete forgets the tenant (record, lock, index entries), leaving a
	// tombstone that keeps its version, and publishes an Invalidation with
	// Deleted set and the tombstone's version. Deleting an unknown tenant is
	// not an error. It reports whether it removed a live record (only one
	// of racing Deletes does), also with an error that came after the
	// record was deleted (the index update or the invalidation failed);
	// Delete can be repeated.
	Delete(ctx context.Context, tenant string) (bool, error)
	// Restore writes rec back under its own Version (at least 1) where the
	// tenant has no record at all (the store lost it) or another
	// write-back of a lower version; never over a deletion's tombstone nor
	// over a record written by Put (since the loss: versions restart with
	// a lost record). It reports whether it wrote. An error may come after
	// the write, as with Put.
	Restore(ctx context.Context, tenant string, rec store.TokenRecord) (bool, error)
	// Epoch returns a value that stays the same for as long as the store
	// keeps its data: a new one means the store lost what it held (a Redis
	// restarted without persistence, a FLUSHALL), and Restore is then how
	// replicas write back what they hold.
	Epoch(ctx context.Context) (string, error)

	// List returns up to limit (at least 1) tenant ids in ascending byte
	// order, starting after the id named by after ("" from the start), and
	// whether more follow. Deleted tenants are not listed.
	List(ctx context.Context, after string, limit int) (tenants []string, more bool, err error)
	// DueBefore returns up to limit (at least 1) tenants whose refreshable
	// token (with a refresh token and an expiry, of a tenant that is active
	// or has an empty State) expires before t, soonest first. The answer is
	// a hint, updated best effort after each write: a tenant may be missing
	// or no longer due, so re-read the record (under the lock) before
	// refreshing it.
	DueBefore(ctx context.Context, t time.Time, limit int) ([]string, error)
}

// Locks are the tenants' refresh locks, one per tenant, each held by an
// owner: a random value that only the lock's holder knows, so that nobody
// else can renew or release it. Within this package only a heldLock calls
// them, and its owner never leaves it: the lifecycle passes the *heldLock
// around. A ttl below one millisecond is refused (Redis counts TTLs in whole
// milliseconds).
type Locks interface {
	// TryLock takes the tenant's refresh lock for owner for ttl if nobody
	// holds it (owner included), and reports whether it did.
	TryLock(ctx context.Context, tenant, owner string, ttl time.Duration) (bool, error)
	// RenewLock extends the lock to ttl from now if owner still holds it,
	// and reports whether it did.
	RenewLock(ctx context.Context, tenant, owner string, ttl time.Duration) (bool, error)
	// Unlock releases the lock if owner still holds it (compare and delete).
	Unlock(ctx context.Context, tenant, owner string) error
}

// Invalidations tell every replica that a tenant's record changed, so that
// it drops its cached copy.
type Invalidations interface {
	// Subscribe calls onInvalidate for every Invalidation published by any
	// replica, and onResync when invalidations may have been missed, until
	// ctx ends; a nil callback is not called. store.Redis calls onResync after
	// the subscription was re-established on a new connection; store.Memory
	// calls it when the subscriber fell 1024 invalidations behind, after
	// which it dropped the ones that did not fit. It returns once the
	// subscription is active. The callbacks run on one goroutine and must not
	// block.
	Subscribe(ctx context.Context, onInvalidate func(store.Invalidation), onResync func()) error
	// Heartbeat publishes a heartbeat carrying id to every subscriber
	// (an Invalidation with Heartbeat set), so that a subscriber that hears
	// its own knows invalidations reach it.
	Heartbeat(ctx context.Context, id string) error
}

// OAuthStates are the one-time states of the connect flow, kept so that any
// replica can finish a flow another one started.
type OAuthStates interface {
	// PutOAuthState keeps st under the one-time name state for ttl (at
	// least one millisecond), replacing any state of that name.
	PutOAuthState(ctx context.Context, state string, st store.OAuthState, ttl time.Duration) error
	// TakeOAuthState returns and deletes, atomically, the OAuth state; a second
	// take, or one after it expired, is store.ErrNotFound.
	TakeOAuthState(ctx context.Context, state string) (store.OAuthState, error)
}
