package auth

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"thanksio-proxy/store"
)

// refresh runs the refresh-token grant for tenant under the tenant's lock, so
// that one replica at a time refreshes. seen is the version of the record the
// caller judged due (or refused): if the record changed since, another replica
// refreshed and its token is used instead. force refreshes a token that is not
// yet due (the upstream refused it).
func (t *Tokens) refresh(ctx context.Context, tenant string, seen int64, force bool) (*snapshot, error) {
	if t.cfg.OAuth == nil {
		return nil, unavailable("no OAuth client is configured to refresh the token", time.Minute, ErrNotConfigured)
	}
	owner := randomOwner()
	s, locked, err := t.acquire(ctx, tenant, owner, seen)
	if err != nil || !locked {
		return s, err
	}
	ctx, stopRenewing := t.keepLock(ctx, tenant, owner)
	defer func() {
		stopRenewing()
		// Release even when ctx ended: a fresh, short context.
		uctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := t.store.Unlock(uctx, tenant, owner); err != nil {
			t.obs.StoreError("unlock")
		}
	}()

	rec, err := t.get(ctx, tenant)
	if err != nil {
		return nil, err
	}
	now := t.now()
	cur := snapshotOf(rec)
	switch {
	case rec.State == store.StateReauthorizationRequired:
		return nil, ErrReauthorizationRequired
	case rec.Version != seen && cur.usable(now) && !cur.due(now, t.cfg.RefreshAhead):
		// Another replica refreshed while this one waited for the lock.
		return cur, nil
	case !rec.Refreshable():
		if cur.usable(now) {
			return cur, nil
		}
		return nil, ErrReauthorizationRequired
	case !force && !cur.due(now, t.cfg.RefreshAhead):
		return cur, nil
	}
	return t.redeem(ctx, tenant, rec)
}

// acquire takes the tenant's refresh lock for owner. While another replica
// holds it, acquire waits (up to LockWait) and returns that replica's token as
// soon as the record moves past seen.
func (t *Tokens) acquire(ctx context.Context, tenant, owner string, seen int64) (*snapshot, bool, error) {
	start := t.now()
	deadline := time.Now().Add(t.cfg.LockWait)
	pause := 20 * time.Millisecond
	for {
		ok, err := t.store.TryLock(ctx, tenant, owner, t.cfg.LockLease)
		if err != nil {
			t.obs.StoreError("lock")
			// Rule: never refresh without the lock.
			return nil, false, unavailable("the token store is unreachable, so the token cannot be refreshed", 5*time.Second, err)
		}
		if ok {
			t.obs.LockWaited(true, t.now().Sub(start))
			return nil, true, nil
		}
		rec, err := t.get(ctx, tenant)
		if err == nil && rec.Version != seen {
			s := snapshotOf(rec)
			if rec.State == store.StateReauthorizationRequired {
				t.obs.LockWaited(false, t.now().Sub(start))
				return nil, false, ErrReauthorizationRequired
			}
			if s.usable(t.now()) {
				t.obs.LockWaited(false, t.now().Sub(start))
				return s, false, nil
			}
		}
		if time.Now().After(deadline) {
			t.obs.LockWaited(false, t.now().Sub(start))
			return nil, false, unavailable("another replica is refreshing the token", time.Second, nil)
		}
		select {
		case <-time.After(pause + rand.N(pause)):
		case <-ctx.Done():
			return nil, false, unavailable("gave up waiting for another replica's refresh", time.Second, ctx.Err())
		}
		pause = min(2*pause, 250*time.Millisecond)
	}
}

// keepLock renews the lock every third of its lease until the returned
// function is called. If the lock is lost (the lease ran out while the store
// was unreachable), the refresh goes on: its conditional write protects a
// newer record.
func (t *Tokens) keepLock(ctx context.Context, tenant, owner string) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(t.cfg.LockLease / 3)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				ok, err := t.store.RenewLock(ctx, tenant, owner, t.cfg.LockLease)
				if err != nil {
					t.obs.StoreError("lock")
				} else if !ok {
					t.log.Warn("refresh lock lost while refreshing", "tenant", tenant)
				}
			}
		}
	}()
	return ctx, func() { cancel(); <-done }
}

// redeem calls the token endpoint with rec's refresh token and stores the
// rotated pair. The caller holds the lock.
func (t *Tokens) redeem(ctx context.Context, tenant string, rec store.TokenRecord) (*snapshot, error) {
	// Once the refresh token is sent, thanks.io may rotate it: the call and
	// the write of its answer go on even when Tokens closes meanwhile, or
	// the rotated token would be lost.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.cfg.RefreshTimeout+5*time.Second)
	defer cancel()
	sent := rec.RefreshToken
	start := t.now()
	tok, err := t.callTokenEndpoint(ctx, sent)
	if err != nil {
		return t.refreshFailed(ctx, tenant, sent, start, err)
	}
	now := t.now()
	next := rec
	next.AccessToken = tok.AccessToken
	if tok.RefreshToken != "" {
		next.RefreshToken = tok.RefreshToken
	}
	next.Expiry = tok.Expiry
	next.State = store.StateActive
	next.LastRefresh = now
	next.UpdatedAt = now
	next.LastError = ""
	next.LastErrorAt = time.Time{}

	// What the store holds: the token just redeemed, or, while an earlier
	// rotation awaits its write, the one that rotation started from.
	stored := sent
	t.pendingMu.Lock()
	if p, ok := t.pending[tenant]; ok {
		stored = p.redeemed
	}
	t.pendingMu.Unlock()

	v, err := t.write(ctx, tenant, next, rec.Version, stored, sent)
	if err != nil {
		if errors.Is(err, errSuperseded) {
			cur, gerr := t.get(ctx, tenant)
			if gerr != nil {
				return nil, gerr
			}
			t.obs.Refreshed("lost_race", t.now().Sub(start))
			return snapshotOf(cur), nil
		}
		// Rule: a rotated refresh token is never dropped. The old one is
		// revoked already, so the new pair is served from memory while the
		// write is retried until it lands.
		t.obs.StoreError("put")
		next.Version = rec.Version
		t.keepPending(tenant, next, stored)
		t.obs.Refreshed("success", t.now().Sub(start))
		t.log.Warn("refreshed token kept in memory until the store accepts it", "tenant", tenant, "err", err)
		s := snapshotOf(next)
		s.redeemed = true
		return s, nil
	}
	next.Version = v
	t.obs.Refreshed("success", t.now().Sub(start))
	t.log.Info("token refreshed", "tenant", tenant, "expires_in", tok.Expiry.Sub(now).Round(time.Second).String())
	s := snapshotOf(next)
	s.redeemed = true
	return s, nil
}

// errSuperseded means another writer replaced the tenant's grant (an import,
// a connect, a refresh by a replica whose lock had run out) while this
// refresh ran: its record wins.
var errSuperseded = errors.New("auth: record superseded")

// write stores rec if the record is still at prev. On a conflict it looks:
// when the stored refresh token is still one this process rotated from
// (ours), the conflicting write only touched status fields or stored an
// earlier rotation of ours, and rec is written on top. A tenant deleted
// meanwhile is errSuperseded too: its token must not come back.
func (t *Tokens) write(ctx context.Context, tenant string, rec store.TokenRecord, prev int64, ours ...string) (int64, error) {
	for range 5 {
		v, err := t.store.Put(ctx, tenant, rec, prev)
		if err == nil {
			t.clearPending(tenant)
			return v, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return 0, err
		}
		cur, err := t.store.Get(ctx, tenant)
		if errors.Is(err, store.ErrNotFound) {
			t.clearPending(tenant)
			return 0, errSuperseded
		}
		if err != nil {
			return 0, err
		}
		if !slices.Contains(ours, cur.RefreshToken) {
			t.clearPending(tenant)
			return 0, errSuperseded
		}
		prev = cur.Version
	}
	return 0, fmt.Errorf("auth: write %q: %w", tenant, store.ErrConflict)
}

// refreshFailed decides what a failed token-endpoint call means.
func (t *Tokens) refreshFailed(ctx context.Context, tenant, sent string, start time.Time, err error) (*snapshot, error) {
	d := t.now().Sub(start)
	if !isRevocation(err) {
		t.obs.Refreshed("error", d)
		reason := describeTokenError(err)
		t.log.Warn("token refresh failed", "tenant", tenant, "reason", reason)
		t.noteError(ctx, tenant, sent, reason)
		return nil, unavailable("the token endpoint failed: "+reason, 5*time.Second, nil)
	}
	// Rule: a refused refresh token is a revocation only if it is still the
	// stored one; otherwise another writer rotated it first.
	cur, gerr := t.get(ctx, tenant)
	if gerr != nil {
		t.obs.Refreshed("error", d)
		return nil, gerr
	}
	if cur.RefreshToken != sent {
		t.obs.Refreshed("lost_race", d)
		s := snapshotOf(cur)
		if cur.State == store.StateReauthorizationRequired {
			return nil, ErrReauthorizationRequired
		}
		return s, nil
	}
	t.obs.Refreshed("revoked", d)
	now := t.now()
	cur.State = store.StateReauthorizationRequired
	cur.LastError = "the refresh token was refused (" + describeTokenError(err) + "); the account must be connected again"
	cur.LastErrorAt = now
	cur.UpdatedAt = now
	if v, perr := t.store.Put(ctx, tenant, cur, cur.Version); perr != nil {
		t.obs.StoreError("put")
		t.log.Error("could not record revocation", "tenant", tenant, "err", perr)
	} else {
		cur.Version = v
	}
	t.cache.put(tenant, snapshotOf(cur))
	t.log.Warn("refresh token revoked; tenant needs reauthorization", "tenant", tenant)
	return nil, ErrReauthorizationRequired
}

// noteError records a failed refresh in the tenant's status, if the record is
// still the one that was refreshed. It is best effort: the status is only
// informative.
func (t *Tokens) noteError(ctx context.Context, tenant, sent, reason string) {
	cur, err := t.store.Get(ctx, tenant)
	if err != nil || cur.RefreshToken != sent {
		return
	}
	now := t.now()
	cur.LastError = reason
	cur.LastErrorAt = now
	if _, err := t.store.Put(ctx, tenant, cur, cur.Version); err != nil && !errors.Is(err, store.ErrConflict) {
		t.obs.StoreError("put")
	}
}

// callTokenEndpoint runs the refresh-token grant, bounded by RefreshTimeout.
func (t *Tokens) callTokenEndpoint(ctx context.Context, refreshToken string) (*oauth2.Token, error) {
	ctx, cancel := context.WithTimeout(ctx, t.cfg.RefreshTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, t.cfg.HTTPClient)
	// An expired token with only a refresh token makes the source refresh.
	src := t.cfg.OAuth.TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken, Expiry: time.Unix(1, 0)})
	return src.Token()
}

// isRevocation reports whether the token endpoint refused the refresh token
// itself: invalid_grant, or Passport's 401 invalid_request "The refresh token
// is invalid.".
func isRevocation(err error) bool {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		return false
	}
	if re.ErrorCode == "invalid_grant" {
		return true
	}
	return re.ErrorCode == "invalid_request" && re.Response != nil &&
		re.Response.StatusCode == http.StatusUnauthorized &&
		strings.Contains(strings.ToLower(re.ErrorDescription+" "+string(re.Body)), "refresh token is invalid")
}

// describeTokenError says what went wrong in words that carry no secret: the
// OAuth error code and HTTP status, never the response body.
func describeTokenError(err error) string {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		status := 0
		if re.Response != nil {
			status = re.Response.StatusCode
		}
		if re.ErrorCode != "" {
			return fmt.Sprintf("token endpoint answered %d %s", status, re.ErrorCode)
		}
		return fmt.Sprintf("token endpoint answered %d", status)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "token endpoint timed out"
	}
	return "token endpoint unreachable"
}

// pendingWrite is a rotated record the store has not accepted yet.
type pendingWrite struct {
	rec      store.TokenRecord // Version: the stored version it replaces
	redeemed string            // the refresh token it was rotated from
}

func (t *Tokens) pendingRecord(tenant string) *store.TokenRecord {
	t.pendingMu.Lock()
	defer t.pendingMu.Unlock()
	if p, ok := t.pending[tenant]; ok {
		rec := p.rec
		return &rec
	}
	return nil
}

func (t *Tokens) clearPending(tenant string) {
	t.pendingMu.Lock()
	delete(t.pending, tenant)
	t.pendingMu.Unlock()
}

// keepPending holds rec in memory and retries its write, with backoff, until
// it lands, is superseded, or Tokens closes.
func (t *Tokens) keepPending(tenant string, rec store.TokenRecord, redeemed string) {
	t.pendingMu.Lock()
	_, running := t.pending[tenant]
	t.pending[tenant] = &pendingWrite{rec: rec, redeemed: redeemed}
	t.pendingMu.Unlock()
	if running {
		return
	}
	t.wg.Go(func() {
		pause := 100 * time.Millisecond
		for {
			select {
			case <-time.After(pause):
			case <-t.ctx.Done():
				// One last bounded attempt: the old refresh token is revoked
				// already, so this write is the only copy that survives.
				t.pendingMu.Lock()
				p, ok := t.pending[tenant]
				t.pendingMu.Unlock()
				if ok {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					_, err := t.write(ctx, tenant, p.rec, p.rec.Version, p.redeemed, p.rec.RefreshToken)
					cancel()
					if err != nil && !errors.Is(err, errSuperseded) {
						t.log.Error("shutting down with a refreshed token not yet stored", "tenant", tenant)
					}
				}
				return
			}
			pause = min(2*pause, 10*time.Second)
			t.pendingMu.Lock()
			p, ok := t.pending[tenant]
			t.pendingMu.Unlock()
			if !ok {
				return
			}
			ctx, cancel := context.WithTimeout(t.ctx, 5*time.Second)
			v, err := t.write(ctx, tenant, p.rec, p.rec.Version, p.redeemed, p.rec.RefreshToken)
			cancel()
			switch {
			case err == nil:
				t.log.Info("refreshed token stored after retrying", "tenant", tenant)
				rec := p.rec
				rec.Version = v
				t.cache.put(tenant, snapshotOf(rec))
				return
			case errors.Is(err, errSuperseded):
				return
			}
		}
	})
}
