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

// refreshCause says why a refresh runs.
type refreshCause int

const (
	// causeDue: the token is within RefreshAhead of expiry, or expired.
	causeDue refreshCause = iota
	// causeAdmin: an operator asked for a refresh now.
	causeAdmin
	// causeRefused: thanks.io refused the access token before it expired.
	causeRefused
)

// refresh runs the refresh-token grant for tenant under the tenant's lock, so
// that one replica at a time refreshes. seen is the version of the record the
// caller judged due (or refused): if the record changed since, another replica
// refreshed and its token is used instead. A cause other than causeDue
// refreshes a token that is not yet due.
func (t *Tokens) refresh(ctx context.Context, tenant string, seen int64, cause refreshCause) (*snapshot, error) {
	force := cause != causeDue
	if t.cfg.OAuth == nil {
		return nil, unavailable("no OAuth client is configured to refresh the token", time.Minute, ErrNotConfigured)
	}
	s, lock, err := t.acquire(ctx, tenant, seen)
	if err != nil || lock == nil {
		return s, err
	}
	// The lock is released when this returns, unless a rotated token's
	// write is still pending: the pending write then holds it.
	kept := false
	defer func() {
		if !kept {
			lock.Release()
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
	if quiet := t.restoreQuiet() - now.Sub(rec.RestoredAt); !rec.RestoredAt.IsZero() && quiet > 0 {
		// Written back moments ago, after the store lost its data and the
		// locks with it: a replica may be redeeming this very refresh
		// token, and take its lock back only at its next renewal.
		if cur.usable(now) {
			return cur, nil
		}
		return nil, unavailable("the token store lost its data moments ago; the token is refreshed once any refresh in flight has ended", quiet, nil)
	}
	s, kept, err = t.redeem(ctx, tenant, rec, cause == causeRefused, lock)
	return s, err
}

// restoreQuiet is how long after a write-back its refresh token is not
// presented: two renewals of a held lock, by which time every holder whose
// lock went with the store's data has taken it back.
func (t *Tokens) restoreQuiet() time.Duration {
	return 2 * renewEvery(t.cfg.LockLease)
}

// acquire takes the tenant's refresh lock. While another replica holds it,
// acquire waits (up to LockWait) and returns that replica's token, with a
// nil lock, as soon as the record moves past seen.
//
// The wait is bounded and measured by the wall clock, not Config.Now: it is
// time spent sleeping on real timers, not token time, and a test clock that
// stands still must not make it endless.
func (t *Tokens) acquire(ctx context.Context, tenant string, seen int64) (*snapshot, *heldLock, error) {
	start := time.Now()
	deadline := start.Add(t.cfg.LockWait)
	for attempt := 1; ; attempt++ {
		lock, err := t.obtainLock(ctx, tenant)
		if err != nil {
			t.obs.StoreError("lock")
			// Rule: never refresh without the lock.
			return nil, nil, unavailable("the token store is unreachable, so the token cannot be refreshed", 5*time.Second, err)
		}
		if lock != nil {
			t.obs.LockWaited(true, time.Since(start))
			return nil, lock, nil
		}
		rec, err := t.get(ctx, tenant)
		if err == nil && rec.Version != seen {
			s := snapshotOf(rec)
			if rec.State == store.StateReauthorizationRequired {
				t.obs.LockWaited(false, time.Since(start))
				return nil, nil, ErrReauthorizationRequired
			}
			if s.usable(t.now()) {
				t.obs.LockWaited(false, time.Since(start))
				return s, nil, nil
			}
		}
		if time.Now().After(deadline) {
			t.obs.LockWaited(false, time.Since(start))
			return nil, nil, unavailable("another replica is refreshing the token", time.Second, nil)
		}
		// Polled often at first, as a holder's refresh is one call to the
		// token endpoint; with jitter, so waiters spread out.
		pause := exponential(20*time.Millisecond, 250*time.Millisecond, attempt)
		if !sleep(ctx.Done(), pause+rand.N(pause)) {
			return nil, nil, unavailable("gave up waiting for another replica's refresh", time.Second, ctx.Err())
		}
	}
}

// redeem calls the token endpoint with rec's refresh token and stores the
// rotated pair, under lock; refused marks a refresh forced by thanks.io
// refusing the access token. kept reports that the write did not land and
// is pending: the pending write then holds lock until it lands, and the
// caller must not release it.
func (t *Tokens) redeem(ctx context.Context, tenant string, rec store.TokenRecord, refused bool, lock *heldLock) (s *snapshot, kept bool, err error) {
	// Once the refresh token is sent, thanks.io may rotate it: the call and
	// the write of its answer go on even when Tokens closes meanwhile, or
	// the rotated token would be lost.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.cfg.RefreshTimeout+5*time.Second)
	defer cancel()
	sent := rec.RefreshToken
	start := time.Now() // for the Observer: wall-clock time, as acquire's
	tok, err := t.callTokenEndpoint(ctx, sent)
	if err != nil {
		s, err := t.refreshFailed(ctx, tenant, sent, start, err)
		return s, false, err
	}
	// From the answer to the write, nothing else: no log line, no metric,
	// no other I/O. A process killed in between loses the only copy of
	// the new refresh token.
	now := t.now()
	next := rec
	next.AccessToken = tok.AccessToken
	next.RefreshToken = tok.RefreshToken
	next.Expiry = tok.Expiry
	next.State = store.StateActive
	next.LastRefresh = now
	next.RefreshForced = refused
	next.UpdatedAt = now
	next.LastError = ""
	next.LastErrorAt = time.Time{}
	next.RestoredAt = time.Time{}
	next.Failures = 0
	next = next.WithAuthorization() // one copy of the token, for the store and the cache
	v, err := t.write(ctx, tenant, next, rec.Version, sent)

	if errors.Is(err, errSuperseded) {
		// A newer grant (an import, a connect) or a deletion won: the
		// rotated pair is of no use.
		t.obs.Refreshed("lost_race", time.Since(start))
		cur, gerr := t.get(ctx, tenant)
		if gerr != nil {
			return nil, false, gerr
		}
		return snapshotOf(cur), false, nil
	}
	t.obs.Refreshed("success", time.Since(start))
	if err != nil {
		// Rule: a rotated refresh token is never dropped. The old one is
		// revoked already, so the new pair is served from memory and its
		// write retried, under the lock, until it lands.
		t.obs.StoreError("put")
		next.Version = rec.Version
		t.keepPending(tenant, next, sent, lock, rec.Failures >= RefreshFailingAfter)
		t.log.Warn("refreshed token kept in memory until the store accepts it", "tenant", tenant, "err", err)
		s := snapshotOf(next)
		s.redeemed = true
		return s, true, nil
	}
	next.Version = v
	t.log.Info("token refreshed", "tenant", tenant, "expires_in", tok.Expiry.Sub(now).Round(time.Second).String())
	if rec.Failures >= RefreshFailingAfter {
		t.notify(tenant, ChangeRecovered, "token refreshed")
	}
	s = snapshotOf(next)
	s.redeemed = true
	return s, false, nil
}

// errSuperseded means another writer replaced the tenant's grant (an import,
// a connect, a refresh by a replica whose lock had run out) or deleted the
// tenant while this refresh ran: its record wins.
var errSuperseded = errors.New("auth: record superseded")

// write stores rec if the record is still at prev. On a conflict it looks:
// when the stored refresh token is one this process rotated from or to
// (ours), the conflicting write only touched status fields, or was this
// write itself landing unconfirmed, and rec is written on top. A tenant
// deleted meanwhile is errSuperseded: its token must not come back. A tenant
// the store holds nothing of at all (not even the tombstone a deletion
// leaves) was lost with the store's data, and rec is written back.
func (t *Tokens) write(ctx context.Context, tenant string, rec store.TokenRecord, prev int64, ours ...string) (int64, error) {
	ours = append(ours, rec.RefreshToken)
	for range 5 {
		v, err := t.store.Put(ctx, tenant, rec, prev)
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return 0, err
		}
		cur, err := t.store.Get(ctx, tenant)
		if errors.Is(err, store.ErrNotFound) {
			back := rec
			back.Version = prev + 1
			ok, rerr := t.store.Restore(ctx, tenant, back)
			if rerr != nil {
				return 0, rerr
			}
			if ok {
				return back.Version, nil
			}
			// A tombstone, or a record restored meanwhile: look again.
			cur, err = t.store.Get(ctx, tenant)
			if errors.Is(err, store.ErrNotFound) {
				return 0, errSuperseded
			}
		}
		if err != nil {
			return 0, err
		}
		if !slices.Contains(ours, cur.RefreshToken) {
			return 0, errSuperseded
		}
		prev = cur.Version
	}
	return 0, fmt.Errorf("auth: write %q: %w", tenant, store.ErrConflict)
}

// refreshFailed decides what a failed token-endpoint call means.
func (t *Tokens) refreshFailed(ctx context.Context, tenant, sent string, start time.Time, err error) (*snapshot, error) {
	d := time.Since(start)
	e := t.cache.get(tenant) // taken before the reads, as for every fill
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
		// Only the replica whose write landed tells: the others' writes
		// conflict, or they find the state already stored.
		t.notify(tenant, ChangeReauthorizationRequired, cur.LastError)
	}
	t.cache.fill(e, snapshotOf(cur))
	t.log.Warn("refresh token revoked; tenant needs reauthorization", "tenant", tenant)
	return nil, ErrReauthorizationRequired
}

// noteError records a failed refresh in the tenant's status, if the record is
// still the one that was refreshed, and counts it in the record's Failures.
// The write is conditional, so that of the replicas failing in turn exactly
// one sees the count reach RefreshFailingAfter, and tells. It is best
// effort: the status is only informative.
func (t *Tokens) noteError(ctx context.Context, tenant, sent, reason string) {
	for range 3 {
		cur, err := t.store.Get(ctx, tenant)
		if err != nil || cur.RefreshToken != sent || cur.State == store.StateReauthorizationRequired {
			return
		}
		now := t.now()
		cur.LastError = reason
		cur.LastErrorAt = now
		cur.Failures++
		_, err = t.store.Put(ctx, tenant, cur, cur.Version)
		switch {
		case err == nil:
			if cur.Failures == RefreshFailingAfter {
				t.notify(tenant, ChangeRefreshFailing, reason)
			}
			return
		case !errors.Is(err, store.ErrConflict):
			t.obs.StoreError("put")
			return
		}
		// Another write (a status, a replica's count) came first: count
		// on top of it.
	}
}

// callTokenEndpoint runs the refresh-token grant, bounded by RefreshTimeout.
// x/oauth2 does the rest: a token without an access token is never valid, so
// the source goes to the token endpoint at once; an answer without an access
// token is an error; an answer without a refresh token keeps the one sent.
// The Expiry it returns is wall-clock time (x/oauth2 has no clock to
// inject), which Config.Now is outside tests.
func (t *Tokens) callTokenEndpoint(ctx context.Context, refreshToken string) (*oauth2.Token, error) {
	ctx, cancel := context.WithTimeout(ctx, t.cfg.RefreshTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, t.cfg.HTTPClient)
	return t.cfg.OAuth.TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken}).Token()
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
	lock     *heldLock         // held until the write lands or is superseded
	// recovers reports that the record it replaces was refresh_failing:
	// its landing is the tenant's recovery.
	recovers bool
}

// pendingRetryMax is the longest pause between two attempts of a pending
// write, so that it lands within moments of the store accepting writes again,
// long before the lock's lease could run out.
const pendingRetryMax = 2 * time.Second

// pendingCloseGrace is how long a pending write goes on being retried after
// Close, before the process gives up on it.
const pendingCloseGrace = 10 * time.Second

func (t *Tokens) pendingRecord(tenant string) *store.TokenRecord {
	t.pendingMu.Lock()
	defer t.pendingMu.Unlock()
	if p, ok := t.pending[tenant]; ok {
		rec := p.rec
		return &rec
	}
	return nil
}

// clearPending forgets the tenant's pending write (an import or a deletion
// replaced the grant); its writer then releases the lock and stops.
func (t *Tokens) clearPending(tenant string) {
	t.pendingMu.Lock()
	delete(t.pending, tenant)
	t.pendingMu.Unlock()
}

// clearPendingUpTo forgets the tenant's pending write if the version it
// replaces is at most version (a deletion's tombstone).
func (t *Tokens) clearPendingUpTo(tenant string, version int64) {
	t.pendingMu.Lock()
	if p, ok := t.pending[tenant]; ok && p.rec.Version <= version {
		delete(t.pending, tenant)
	}
	t.pendingMu.Unlock()
}

// stillPending reports whether p is the tenant's pending write.
func (t *Tokens) stillPending(tenant string, p *pendingWrite) bool {
	t.pendingMu.Lock()
	defer t.pendingMu.Unlock()
	return t.pending[tenant] == p
}

// finishPending forgets p if it is still the tenant's pending write.
func (t *Tokens) finishPending(tenant string, p *pendingWrite) {
	t.pendingMu.Lock()
	if t.pending[tenant] == p {
		delete(t.pending, tenant)
	}
	t.pendingMu.Unlock()
}

// keepPending holds rec in memory, with lock, and retries its write until it
// lands or is superseded. After Close it goes on for pendingCloseGrace.
func (t *Tokens) keepPending(tenant string, rec store.TokenRecord, redeemed string, lock *heldLock, recovers bool) {
	p := &pendingWrite{rec: rec, redeemed: redeemed, lock: lock, recovers: recovers}
	t.pendingMu.Lock()
	t.pending[tenant] = p
	t.pendingMu.Unlock()
	t.wg.Go(func() { t.retryPending(tenant, p) })
}

// retryPending retries p's write until it lands or is superseded, and then
// releases its lock. After Close it gives up once pendingCloseGrace has
// passed, by the wall clock (a wait on real timers, as acquire's), and
// abandons the lock.
func (t *Tokens) retryPending(tenant string, p *pendingWrite) {
	t.obs.PendingWrite(1)
	defer t.obs.PendingWrite(-1)
	closing := t.ctx.Done()
	var giveUp time.Time
	for attempt := 1; ; attempt++ {
		if !sleep(closing, exponential(100*time.Millisecond, pendingRetryMax, attempt)) {
			closing = nil
			giveUp = time.Now().Add(pendingCloseGrace)
		}
		if !t.stillPending(tenant, p) {
			p.lock.Release()
			return
		}
		// The entry is taken before the write: a deletion that lands
		// after the write removes it, and the token is then not cached.
		e := t.cache.get(tenant)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		v, err := t.write(ctx, tenant, p.rec, p.rec.Version, p.redeemed)
		cancel()
		switch {
		case err == nil:
			t.finishPending(tenant, p)
			rec := p.rec
			rec.Version = v
			t.cache.fill(e, snapshotOf(rec))
			p.lock.Release()
			t.log.Info("refreshed token stored after retrying", "tenant", tenant)
			if p.recovers {
				t.notify(tenant, ChangeRecovered, "token refreshed")
			}
			return
		case errors.Is(err, errSuperseded):
			t.finishPending(tenant, p)
			p.lock.Release()
			return
		case !giveUp.IsZero() && time.Now().After(giveUp):
			// The lock is left to run out rather than released: until it
			// does, no replica presents the refresh token the store still
			// holds, which thanks.io has revoked.
			t.finishPending(tenant, p)
			p.lock.Abandon()
			t.log.Error("stopping with a refreshed token the store never accepted: the tenant will need reauthorization", "tenant", tenant)
			return
		}
	}
}
