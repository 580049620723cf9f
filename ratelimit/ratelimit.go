// Package ratelimit paces each tenant's calls to thanks.io under the
// account's limit (60 requests a minute), across every replica that shares
// a schedule, so that callers wait their turn at the proxy instead of
// collecting thanks.io's 429s.
//
// A call reserves a slot in its tenant's schedule (one Redis command) and
// sleeps until it comes; a call whose slot would come later than its wait
// allows is refused at once, reserving nothing. Waiting costs no polling: a
// call that had to wait confirms its slot once when it wakes (a pause may
// have moved it), so an admitted call costs one Redis command, or two when
// it waited. The commands of calls made at once, of any tenants, share
// round trips (store.RedisSchedule pipelines them).
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"thanksio-proxy/store"
)

// Schedule keeps the tenants' schedules of calls. store.RedisSchedule and
// store.LocalSchedule satisfy it; its methods are theirs. It must be safe
// for concurrent use.
type Schedule interface {
	Reserve(ctx context.Context, tenant string, rule store.RateRule, maxWait, floor time.Duration) (store.Slot, error)
	Confirm(ctx context.Context, tenant, id string) (time.Duration, error)
	Release(ctx context.Context, tenant, id string) error
	Pause(ctx context.Context, tenant string, rule store.RateRule, d time.Duration, others bool, took time.Duration) (bool, error)
}

// Observer is told what the limiter does, for metrics (no tenant in any of
// it). Methods must be cheap and safe for concurrent use. Nil observes
// nothing.
type Observer interface {
	// Admitted records a call let through after waiting d (0 when its
	// turn had come).
	Admitted(d time.Duration)
	// Rejected records a call refused because its turn would not come in
	// time.
	Rejected()
	// Paused records a pause set (or lengthened) because thanks.io said
	// the tenant is over its limit.
	Paused()
	// Shared records whether the shared schedule is in use (false: Redis
	// failed, and this process paces alone).
	Shared(ok bool)
}

// Config configures a Limiter.
type Config struct {
	// Limit and Period are the rule: at most Limit calls per tenant in any
	// window of Period. Both are required.
	Limit  int
	Period time.Duration
	// MaxWait is the longest a call waits for its turn; zero means
	// DefaultMaxWait.
	MaxWait time.Duration
	// Shared is the schedule shared by the replicas (Redis). Nil means
	// this process paces alone, with a store.LocalSchedule.
	Shared Schedule
	// Observer is told what the limiter does; nil observes nothing.
	Observer Observer
	// Logger receives the outages of the shared schedule; nil discards.
	Logger *slog.Logger
}

// Defaults of the command's configuration.
const (
	DefaultLimit   = 60
	DefaultPeriod  = time.Minute
	DefaultMaxWait = 30 * time.Second
)

// ParseRule reads a rule as RATE_LIMIT spells it: "N/period", where the
// period is a Go duration ("60/1m", "20/2s", "1000/1h") or a bare unit
// ("60/m" for one minute), or "off", which returns a limit of 0.
func ParseRule(s string) (limit int, period time.Duration, err error) {
	s = strings.TrimSpace(s)
	if strings.EqualFold(s, "off") {
		return 0, 0, nil
	}
	n, p, ok := strings.Cut(s, "/")
	if !ok {
		return 0, 0, errors.New(`must be "N/period", such as 60/1m, or off`)
	}
	limit, err = strconv.Atoi(strings.TrimSpace(n))
	if err != nil || limit < 1 || limit > 1_000_000 {
		return 0, 0, errors.New("the number of calls must be a whole number from 1 to 1000000")
	}
	p = strings.TrimSpace(p)
	if p == "s" || p == "m" || p == "h" {
		p = "1" + p
	}
	period, err = time.ParseDuration(p)
	if err != nil || period < 100*time.Millisecond || period > 24*time.Hour {
		return 0, 0, errors.New("the period must be a duration from 100ms to 24h, such as 1m or 2s")
	}
	return limit, period, nil
}

// FormatRule spells a rule as ParseRule reads it.
func FormatRule(limit int, period time.Duration) string {
	return strconv.Itoa(limit) + "/" + strings.TrimSuffix(strings.TrimSuffix(period.String(), "0s"), "0m")
}

// retryShared is how long the limiter paces alone after the shared schedule
// failed, before it tries the shared one again: calls do not each wait for
// a Redis that is down. sharedTimeout bounds one call to the shared
// schedule (Redis answers in a millisecond; a busy one, in tens), so that a
// hung Redis delays one call in retryShared by that much, not by its own
// timeouts.
const (
	retryShared   = 5 * time.Second
	sharedTimeout = 500 * time.Millisecond
)

// Limiter paces the calls of each tenant. It is safe for concurrent use.
type Limiter struct {
	rule    store.RateRule
	maxWait time.Duration
	shared  Schedule
	local   *store.LocalSchedule
	obs     Observer
	log     *slog.Logger

	// downUntil is when the shared schedule is tried again after it
	// failed (Unix nanoseconds): until then, the local one is used. Every
	// call reads it, so it is not behind mu.
	downUntil atomic.Int64
	// down reports whether the shared schedule failed and has not
	// answered since; it changes under mu, and is read without it.
	down atomic.Bool
	// pauses counts the wakes of sleepers (pauses this replica set): a
	// call that reserved its slot before a pause, but began to sleep
	// after its wake, learns of it so.
	pauses atomic.Uint64

	mu       sync.Mutex
	sleepers map[string]*pauseSignal
}

// New returns a Limiter for cfg.
func New(cfg Config) (*Limiter, error) {
	if cfg.Limit < 1 || cfg.Period <= 0 {
		return nil, errors.New("ratelimit: the limit and the period must be positive")
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	l := &Limiter{
		rule:     store.RateRule{Limit: cfg.Limit, Period: cfg.Period, Guard: Guard(cfg.Period)},
		maxWait:  cfg.MaxWait,
		shared:   cfg.Shared,
		local:    store.NewLocalSchedule(),
		obs:      cfg.Observer,
		log:      cfg.Logger,
		sleepers: make(map[string]*pauseSignal),
	}
	if l.obs == nil {
		l.obs = nopObserver{}
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	l.obs.Shared(l.shared != nil)
	return l, nil
}

// Guard is the time added between windows, for a period: a fifth of it,
// at least 250 ms and at most a second (and at most a quarter of a very
// short period). thanks.io counts a call when it arrives, and the first
// calls of a burst take longer to arrive than later ones (a new
// connection, a TLS handshake, a busy process), so a call sent at the end
// of a window may reach thanks.io later than the next window's first call
// is sent; the guard keeps the two apart.
func Guard(period time.Duration) time.Duration {
	return min(max(period/5, 250*time.Millisecond), time.Second, period/4)
}

// MaxWait returns the longest a call waits for its turn.
func (l *Limiter) MaxWait() time.Duration { return l.maxWait }

// RefusedError is returned when a call's turn would not come by its
// deadline.
type RefusedError struct {
	// RetryAfter is when the call's turn would have come.
	RetryAfter time.Duration
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("ratelimit: the tenant's turn would come in %v", e.RetryAfter.Round(time.Millisecond))
}

// Wait returns when tenant may send its next call, having waited for it,
// or a *RefusedError at once when its turn would not come by deadline, or
// ctx's error when ctx ends first (its place is given back then). It
// returns the time it waited for its turn: 0 when the turn had come.
func (l *Limiter) Wait(ctx context.Context, tenant string, deadline time.Time) (time.Duration, error) {
	start := time.Now()
	pauses := l.pauses.Load()
	sched, slot, err := l.place(ctx, l.schedule(start), tenant, deadline)
	if err != nil {
		return 0, err
	}
	if !slot.Reserved() {
		l.obs.Rejected()
		return 0, &RefusedError{RetryAfter: slot.Wait}
	}
	if slot.Wait == 0 {
		// Its turn had come: the call waited for nothing but the
		// reservation's round trip.
		l.admitted(sched, tenant, 0)
		return 0, nil
	}
	wait := slot.Wait
	// due is when the slot comes, as last heard: a wake before it is a
	// pause's.
	due := time.Now().Add(wait)
	for wait > 0 {
		if err := l.sleep(ctx, tenant, wait, pauses); err != nil {
			l.release(sched, tenant, slot.ID)
			return time.Since(start), err
		}
		// A pause may have moved the slot while this call slept.
		pauses = l.pauses.Load()
		wait, err = l.confirm(ctx, sched, tenant, slot.ID)
		now := time.Now()
		switch {
		case ctx.Err() != nil:
			// The caller went away: not an outage of the schedule.
			l.release(sched, tenant, slot.ID)
			return time.Since(start), ctx.Err()
		case err == nil && wait > 0 && now.Add(wait).After(deadline):
			// A pause moved the slot past the call's deadline. (A slot
			// that has come goes, even if the wake-up was late.)
			l.release(sched, tenant, slot.ID)
			l.obs.Rejected()
			return time.Since(start), &RefusedError{RetryAfter: wait}
		case err == nil:
			due = now.Add(wait)
		case !errors.Is(err, store.ErrNotFound) && !now.Before(due):
			// The schedule failed when the slot had come by the schedule
			// as it was: the call goes.
			return time.Since(start), l.sendAnyway(sched, tenant, start, err)
		default:
			// The schedule lost the slot (Redis came back empty), or
			// failed before the slot came (a pause woke the call): place
			// the call again, in what remains of its wait, in the local
			// schedule when the shared one failed. This replica's own
			// calls and the pauses it set still count.
			if !errors.Is(err, store.ErrNotFound) {
				sched = l.failed(sched, err)
			}
			if sched, slot, err = l.place(ctx, sched, tenant, deadline); err != nil {
				return time.Since(start), err
			}
			if !slot.Reserved() {
				l.obs.Rejected()
				return time.Since(start), &RefusedError{RetryAfter: slot.Wait}
			}
			wait = slot.Wait
			due = time.Now().Add(wait)
		}
	}
	waited := time.Since(start)
	l.admitted(sched, tenant, waited)
	return waited, nil
}

// place reserves a slot for tenant in sched, or in the local schedule when
// sched fails, and returns the schedule that placed it. It returns ctx's
// error when the caller went away.
func (l *Limiter) place(ctx context.Context, sched Schedule, tenant string, deadline time.Time) (Schedule, store.Slot, error) {
	slot, err := l.reserve(ctx, sched, tenant, deadline)
	if err == nil {
		l.answered(sched)
		return sched, slot, nil
	}
	if ctx.Err() != nil {
		return sched, store.Slot{}, ctx.Err()
	}
	sched = l.failed(sched, err)
	slot, err = l.reserve(ctx, sched, tenant, deadline)
	return sched, slot, err
}

// admitted records a call let through: for the metrics, and in this
// replica's own history when the shared schedule placed it, so that a
// fallback to the local schedule, or a shared schedule that lost its
// data, still counts it.
func (l *Limiter) admitted(sched Schedule, tenant string, waited time.Duration) {
	if sched != Schedule(l.local) {
		l.local.Record(tenant, l.rule)
	}
	l.obs.Admitted(waited)
}

// sendAnyway lets a call go whose slot came but could not be confirmed: it
// was placed under the rule, and only a pause set since could have moved
// it.
func (l *Limiter) sendAnyway(sched Schedule, tenant string, start time.Time, err error) error {
	l.failed(sched, err)
	l.admitted(sched, tenant, time.Since(start))
	return nil
}

// Observe reads an upstream answer to one of tenant's calls, which took
// took from its sending to this answer. A 429 pauses the tenant on every
// replica until the answer's Retry-After (or X-RateLimit-Reset, or one
// period when it names neither), wakes the calls of this replica that
// wait for their turn, and Observe returns that pause. An answer that
// says no call is left (X-RateLimit-Remaining: 0) pauses the tenant
// likewise when fewer calls than the limit went out through the schedule
// in the period before the call was sent: someone else spends the same
// account. Other answers return 0.
func (l *Limiter) Observe(tenant string, status int, h http.Header, took time.Duration) time.Duration {
	limited := status == http.StatusTooManyRequests
	if !limited && strings.TrimSpace(headerValue(h, "X-Ratelimit-Remaining")) != "0" {
		return 0
	}
	d := l.pauseFor(h, time.Now())
	sched := l.schedule(time.Now())
	paused, err := l.pause(sched, tenant, d, !limited, took)
	switch {
	case err != nil:
		paused, _ = l.pause(l.failed(sched, err), tenant, d, !limited, took)
	case paused && sched != Schedule(l.local):
		// The local schedule keeps the pause too, for the calls that
		// fall back to it if the shared one fails.
		_, _ = l.pause(l.local, tenant, d, false, took)
	}
	if paused {
		l.obs.Paused()
		l.wake(tenant)
		reason := "thanks.io answered 429"
		if !limited {
			reason = "thanks.io says the account has no call left, though fewer than the limit went through the proxy"
		}
		l.log.Info("tenant's calls paused", "tenant", tenant, "pause", d, "reason", reason)
	}
	if !limited {
		return 0
	}
	return d
}

// reserve, confirm and pause call sched's methods, within sharedTimeout
// when sched is the shared one. reserve places the call no earlier than
// this replica's own recent calls and the pause it set allow (its floor):
// a shared schedule that lost its data has neither. It reserves nothing
// for a caller that went away meanwhile: the script may have run.
func (l *Limiter) reserve(ctx context.Context, sched Schedule, tenant string, deadline time.Time) (store.Slot, error) {
	rctx, cancel := l.bound(context.WithoutCancel(ctx), sched)
	defer cancel()
	now := time.Now()
	slot, err := sched.Reserve(rctx, tenant, l.rule, max(0, deadline.Sub(now)), l.local.Floor(tenant, l.rule))
	if ctx.Err() != nil {
		if err == nil && slot.Reserved() {
			l.release(sched, tenant, slot.ID)
		}
		return store.Slot{}, ctx.Err()
	}
	return slot, err
}

func (l *Limiter) confirm(ctx context.Context, sched Schedule, tenant, id string) (time.Duration, error) {
	ctx, cancel := l.bound(ctx, sched)
	defer cancel()
	return sched.Confirm(ctx, tenant, id)
}

// pause runs detached from any caller: the caller may be gone, and the
// pause is for the calls after it.
func (l *Limiter) pause(sched Schedule, tenant string, d time.Duration, others bool, took time.Duration) (bool, error) {
	ctx, cancel := l.bound(context.Background(), sched)
	defer cancel()
	return sched.Pause(ctx, tenant, l.rule, d, others, took)
}

func (l *Limiter) bound(ctx context.Context, sched Schedule) (context.Context, context.CancelFunc) {
	if sched == l.local {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, sharedTimeout)
}

// pauseFor returns the pause an answer asks for.
func (l *Limiter) pauseFor(h http.Header, now time.Time) time.Duration {
	if v := strings.TrimSpace(headerValue(h, "Retry-After")); v != "" {
		if s, err := strconv.ParseInt(v, 10, 64); err == nil && s >= 0 {
			return max(time.Duration(min(s, maxPauseSeconds))*time.Second, minPause)
		}
		if t, err := http.ParseTime(v); err == nil {
			return min(max(t.Sub(now), minPause), maxPauseSeconds*time.Second)
		}
	}
	if v := strings.TrimSpace(headerValue(h, "X-Ratelimit-Reset")); v != "" {
		if s, err := strconv.ParseInt(v, 10, 64); err == nil {
			return min(max(time.Unix(s, 0).Sub(now), minPause), maxPauseSeconds*time.Second)
		}
	}
	return l.rule.Period
}

// A pause is at least minPause (a Retry-After of 0 comes with a window that
// ends within the second) and at most maxPauseSeconds (an answer cannot
// stop a tenant for longer than an hour).
const (
	minPause        = 250 * time.Millisecond
	maxPauseSeconds = 3600
)

// headerValue is h.Get for a canonical key, without canonicalizing it
// again.
func headerValue(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// schedule returns the schedule to use now: the shared one, unless it
// failed less than retryShared ago.
func (l *Limiter) schedule(now time.Time) Schedule {
	if l.shared == nil || now.UnixNano() < l.downUntil.Load() {
		return l.local
	}
	return l.shared
}

// failed notes that sched failed with err and returns the schedule to use
// instead. The first failure of an outage is logged.
func (l *Limiter) failed(sched Schedule, err error) Schedule {
	if sched != l.shared || l.shared == nil {
		return l.local
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.downUntil.Store(time.Now().Add(retryShared).UnixNano())
	if !l.down.Load() {
		l.down.Store(true)
		l.obs.Shared(false)
		l.log.Warn("the shared rate limit schedule failed: each replica paces its tenants alone, at the full rate, until it answers; thanks.io's 429s pause tenants meanwhile", "err", err)
	}
	return l.local
}

// answered notes that sched answered, ending an outage of the shared
// schedule.
func (l *Limiter) answered(sched Schedule) {
	if sched != l.shared || l.shared == nil || !l.down.Load() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.down.Load() {
		l.down.Store(false)
		l.obs.Shared(true)
		l.log.Info("the shared rate limit schedule answers again")
	}
}

// release gives back a slot whose call will not be sent, so that a later
// call can have it.
func (l *Limiter) release(sched Schedule, tenant, id string) {
	ctx, cancel := l.bound(context.Background(), sched)
	defer cancel()
	_ = sched.Release(ctx, tenant, id)
}

// sleep waits for d, until ctx ends, or until a pause of tenant's calls
// wakes it (to confirm its slot at once). It does not wait when a pause
// woke sleepers since l.pauses read pauses: it may have been tenant's,
// and come before this call watched.
func (l *Limiter) sleep(ctx context.Context, tenant string, d time.Duration, pauses uint64) error {
	woken := l.watch(tenant)
	defer l.unwatch(tenant, woken)
	if l.pauses.Load() != pauses {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-woken.c:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// pauseSignal wakes the calls of one tenant that sleep until their turn.
type pauseSignal struct {
	c        chan struct{} // closed by wake
	sleepers int
}

// watch returns the signal that a pause of tenant's calls closes; the
// sleeper gives it back to unwatch.
func (l *Limiter) watch(tenant string) *pauseSignal {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.sleepers[tenant]
	if s == nil {
		s = &pauseSignal{c: make(chan struct{})}
		l.sleepers[tenant] = s
	}
	s.sleepers++
	return s
}

// unwatch ends a sleeper's watch of s. A wake may have replaced s already:
// the signal of the sleepers after it is theirs.
func (l *Limiter) unwatch(tenant string, s *pauseSignal) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.sleepers--; s.sleepers == 0 && l.sleepers[tenant] == s {
		delete(l.sleepers, tenant)
	}
}

// wake wakes the calls of tenant that sleep until their turn; the next
// sleepers get a new channel.
func (l *Limiter) wake(tenant string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pauses.Add(1)
	if s := l.sleepers[tenant]; s != nil {
		close(s.c)
		delete(l.sleepers, tenant)
	}
}

type nopObserver struct{}

func (nopObserver) Admitted(time.Duration) {}
func (nopObserver) Rejected()              {}
func (nopObserver) Paused()                {}
func (nopObserver) Shared(bool)            {}
