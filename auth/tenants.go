package auth

import (
	"context"
	"errors"
	"fmt"
	"time"

	"thanksio-proxy/store"
)

// Grant is a token handed to the proxy by an operator or by the connect flow.
type Grant struct {
	AccessToken string
	// RefreshToken is empty for a personal access token, which is never
	// refreshed.
	RefreshToken string
	// Expiry is zero for a token that never expires. One in the past is
	// accepted: the token is refreshed at first use.
	Expiry time.Time
}

// State is a tenant's health, as TenantStatus reports it and ListByState
// selects by. It is the store's record state, named here so that callers of
// auth need not import the store.
type State = store.State

// The states of a tenant.
const (
	// StateActive: the tenant's token is used and refreshed.
	StateActive = store.StateActive
	// StateReauthorizationRequired: the refresh token was revoked; the
	// account owner must connect again (or an operator import a token).
	StateReauthorizationRequired = store.StateReauthorizationRequired
)

// TenantStatus describes a tenant without its tokens.
type TenantStatus struct {
	Tenant          string      `json:"tenant"`
	State           store.State `json:"state"`
	Expiry          *time.Time  `json:"expiry,omitempty"`
	Expired         bool        `json:"expired"`
	HasRefreshToken bool        `json:"has_refresh_token"`
	LastRefresh     *time.Time  `json:"last_refresh,omitempty"`
	LastError       string      `json:"last_error,omitempty"`
	LastErrorAt     *time.Time  `json:"last_error_at,omitempty"`
	UpdatedAt       *time.Time  `json:"updated_at,omitempty"`
	// RefreshPending is true while a refreshed token waits in this process
	// for the store to accept it.
	RefreshPending bool `json:"refresh_pending,omitempty"`
}

// Import stores g as the tenant's token, replacing whatever was there, and
// makes the tenant active (this is how a tenant that needs reauthorization
// recovers without the connect flow).
func (t *Tokens) Import(ctx context.Context, tenant string, g Grant) (TenantStatus, error) {
	st, err := t.storeGrant(ctx, tenant, g)
	if err == nil {
		t.notify(tenant, ChangeConnected, "token imported")
	}
	return st, err
}

// storeGrant is Import without telling the Notifier: the caller tells, with
// its own reason.
func (t *Tokens) storeGrant(ctx context.Context, tenant string, g Grant) (TenantStatus, error) {
	if g.AccessToken == "" {
		return TenantStatus{}, errors.New("auth: an access token is required")
	}
	now := t.now()
	rec := store.TokenRecord{
		AccessToken:  g.AccessToken,
		RefreshToken: g.RefreshToken,
		Expiry:       g.Expiry,
		State:        store.StateActive,
		UpdatedAt:    now,
	}.WithAuthorization() // one copy of the token, for the store and the cache
	// The entry is taken before the write: a deletion that lands after
	// the write removes it, and the imported token is then not cached.
	e := t.cache.entryFor(tenant)
	v, err := t.store.Put(ctx, tenant, rec, store.AnyVersion)
	if err != nil {
		t.obs.StoreError("put")
		return TenantStatus{}, fmt.Errorf("auth: import %q: %w", tenant, err)
	}
	t.clearPending(tenant)
	rec.Version = v
	t.cache.put(e, snapshotOf(rec))
	t.cache.succeeded(e)
	return t.statusOf(tenant, rec), nil
}

// Status describes the tenant. It returns ErrUnknownTenant when none is held,
// and an *UnavailableError when the store is down or the record does not open.
func (t *Tokens) Status(ctx context.Context, tenant string) (TenantStatus, error) {
	rec, err := t.get(ctx, tenant)
	if err != nil {
		return TenantStatus{}, err
	}
	return t.statusOf(tenant, rec), nil
}

func (t *Tokens) statusOf(tenant string, rec store.TokenRecord) TenantStatus {
	st := TenantStatus{
		Tenant:          tenant,
		State:           rec.State,
		HasRefreshToken: rec.Refreshable(),
		LastError:       rec.LastError,
		Expiry:          timePtr(rec.Expiry),
		Expired:         !rec.Expiry.IsZero() && !t.now().Before(rec.Expiry),
		LastRefresh:     timePtr(rec.LastRefresh),
		LastErrorAt:     timePtr(rec.LastErrorAt),
		UpdatedAt:       timePtr(rec.UpdatedAt),
	}
	if st.State == "" {
		st.State = store.StateActive
	}
	t.pendingMu.Lock()
	_, st.RefreshPending = t.pending[tenant]
	t.pendingMu.Unlock()
	return st
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// List returns up to limit tenant ids after the id after, in order, and
// whether more follow.
func (t *Tokens) List(ctx context.Context, after string, limit int) ([]string, bool, error) {
	ids, more, err := t.store.List(ctx, after, limit)
	if err != nil {
		t.obs.StoreError("list")
		return nil, false, unavailable("the token store is unreachable", 5*time.Second, err)
	}
	return ids, more, nil
}

// listScanLimit bounds the records ListByState reads in one call.
const listScanLimit = 2000

// ListByState returns up to limit tenants in state, in id order, after the
// id after, reading each record (a store read per tenant: meant for
// operators, not for a hot path). It reads at most listScanLimit records per
// call; next is where the next call resumes (pass it as after) and more
// reports whether there is anything left to read.
func (t *Tokens) ListByState(ctx context.Context, state State, after string, limit int) (tenants []string, next string, more bool, err error) {
	scanned := 0
	for {
		ids, pageMore, err := t.List(ctx, after, min(limit, 200))
		if err != nil {
			return nil, "", false, err
		}
		for i, id := range ids {
			rec, err := t.get(ctx, id)
			scanned++
			after = id
			if err == nil && (rec.State == state || rec.State == "" && state == store.StateActive) {
				tenants = append(tenants, id)
			}
			if len(tenants) == limit || scanned >= listScanLimit {
				return tenants, after, pageMore || i < len(ids)-1, nil
			}
		}
		if !pageMore {
			return tenants, "", false, nil
		}
	}
}

// Forget deletes the tenant's token. Later calls for it are
// ErrUnknownTenant. This replica stops serving the tenant whatever the store
// answers: an error may come after the record was deleted (the invalidation
// that tells other replicas failed), and an *UnavailableError then says that
// the deletion should be repeated.
func (t *Tokens) Forget(ctx context.Context, tenant string) error {
	removed, err := t.store.Delete(ctx, tenant)
	t.clearPending(tenant)
	t.cache.deleted(tenant)
	// Only the Delete that removed the record tells, even when what
	// followed it failed: a repeated DELETE finds nothing to remove.
	if removed {
		t.notify(tenant, ChangeDeleted, "tenant deleted")
	}
	if err != nil {
		t.obs.StoreError("delete")
		return unavailable("the token store did not confirm the deletion to every replica", 5*time.Second, err)
	}
	return nil
}

// RefreshNow refreshes the tenant's token at once, under the same lock as
// every other refresh, and returns the new status. A token without a refresh
// token cannot be refreshed: ErrNoBetterToken.
func (t *Tokens) RefreshNow(ctx context.Context, tenant string) (TenantStatus, error) {
	rec, err := t.get(ctx, tenant)
	if err != nil {
		return TenantStatus{}, err
	}
	if rec.State == store.StateReauthorizationRequired {
		return TenantStatus{}, ErrReauthorizationRequired
	}
	if !rec.Refreshable() {
		return TenantStatus{}, ErrNoBetterToken
	}
	if t.cfg.OAuth == nil {
		return TenantStatus{}, ErrNotConfigured
	}
	_, err = t.wait(ctx, t.flight(tenant+"\x00now", func(ctx context.Context) (*snapshot, error) {
		e := t.cache.entryFor(tenant) // taken before the reads, as for every fill
		s, err := t.refresh(ctx, tenant, rec.Version, causeAdmin)
		if err == nil {
			t.cache.fill(e, s)
		}
		return s, err
	}))
	if err != nil {
		return TenantStatus{}, err
	}
	return t.Status(ctx, tenant)
}

// CachedTenants reports how many tenants are cached in this process.
func (t *Tokens) CachedTenants() int { return t.cache.len() }

// runBackground refreshes tenants that are due, whether or not anyone calls
// for them, so that idle tenants' tokens do not expire.
func (t *Tokens) runBackground() {
	t.every(t.cfg.BackgroundInterval, t.refreshDue)
}

// refreshDue refreshes, with bounded concurrency, the tenants whose tokens
// are due now.
func (t *Tokens) refreshDue() {
	ctx, cancel := context.WithTimeout(t.ctx, t.cfg.BackgroundInterval)
	defer cancel()
	due, err := t.store.DueBefore(ctx, t.now().Add(t.cfg.RefreshAhead), 1000)
	if err != nil {
		if t.ctx.Err() == nil {
			t.obs.StoreError("due")
			if t.dueFailing.CompareAndSwap(false, true) {
				t.log.Warn("the background refresher cannot read the tenants due from the store; idle tenants' tokens may expire", "err", err)
			}
		}
		return
	}
	if t.dueFailing.CompareAndSwap(true, false) {
		t.log.Info("the background refresher reads the store again")
	}
	forEach(ctx, t.cfg.BackgroundConcurrency, due, func(tenant string) {
		e := t.cache.entryFor(tenant)
		if t.now().UnixNano() < t.cache.retryAt(e) {
			return
		}
		// An unknown version (-1): if another replica holds the lock, its
		// usable token is taken rather than refreshing again.
		_, _ = t.wait(ctx, t.refreshDueFlight(tenant, -1))
	})
}
