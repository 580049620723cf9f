package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/store"
)

// hooked is a shared schedule (a LocalSchedule standing in for Redis) whose
// methods can be made to fail, as a Redis that goes away would.
type hooked struct {
	*store.LocalSchedule
	down    atomic.Bool
	confirm func(ctx context.Context) error // run before each Confirm; an error is returned
}

func (h *hooked) Reserve(ctx context.Context, tenant string, rule store.RateRule, maxWait, floor time.Duration) (store.Slot, error) {
	if h.down.Load() {
		return store.Slot{}, errDown
	}
	return h.LocalSchedule.Reserve(ctx, tenant, rule, maxWait, floor)
}

func (h *hooked) Confirm(ctx context.Context, tenant, id string) (time.Duration, error) {
	if h.down.Load() {
		return 0, errDown
	}
	if h.confirm != nil {
		if err := h.confirm(ctx); err != nil {
			return 0, err
		}
	}
	return h.LocalSchedule.Confirm(ctx, tenant, id)
}

func (h *hooked) Release(ctx context.Context, tenant, id string) error {
	if h.down.Load() {
		return errDown
	}
	return h.LocalSchedule.Release(ctx, tenant, id)
}

func (h *hooked) Pause(ctx context.Context, tenant string, rule store.RateRule, d time.Duration, others bool, took time.Duration) (bool, error) {
	if h.down.Load() {
		return false, errDown
	}
	return h.LocalSchedule.Pause(ctx, tenant, rule, d, others, took)
}

// A caller that goes away while its waiter confirms its slot (go-redis
// returns the context's error then) is a caller gone, not a Redis outage:
// the replica must not pace every tenant alone for retryShared, and the
// call must not count as admitted.
func TestAttackCallerGoneDuringConfirmIsNotAnOutage(t *testing.T) {
	const period = 400 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	shared := &hooked{LocalSchedule: store.NewLocalSchedule()}
	shared.confirm = func(cctx context.Context) error {
		// The caller hangs up while the command is in flight.
		cancel()
		<-cctx.Done()
		return fmt.Errorf("store: confirm %q: %w", "acme", cctx.Err())
	}
	l, obs := newLimiter(t, 1, period, time.Minute, shared)
	if _, err := l.Wait(context.Background(), "acme", time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	_, err := l.Wait(ctx, "acme", time.Now().Add(time.Minute))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Wait of a caller that went away during Confirm = %v; want context.Canceled", err)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if slices.Contains(obs.shared, false) {
		t.Errorf("Shared reported %v: a caller going away marked the shared schedule down (this replica then paces alone for %v)", obs.shared, retryShared)
	}
	if obs.admitted != 1 {
		t.Errorf("admitted = %d; want 1 (the call whose caller went away was not let through)", obs.admitted)
	}
}

// One replica whose Redis fails keeps pacing at the full rate, not at twice
// it: the calls it sent through Redis in the last period still count.
func TestAttackSharedFailureDoesNotDoubleTheRate(t *testing.T) {
	const limit, period = 3, 2 * time.Second
	shared := &hooked{LocalSchedule: store.NewLocalSchedule()}
	l, _ := newLimiter(t, limit, period, 100*time.Millisecond, shared)
	checkNoSecondWindow(t, l, limit, period, "Redis failed", func() { shared.down.Store(true) })
}

// A Redis restarted without its data (a crash, no persistence) must not
// hand one replica a second full window: the calls it sent in the last
// period still count.
func TestAttackRedisRestartedEmptyDoesNotDoubleTheRate(t *testing.T) {
	const limit, period = 3, 3 * time.Second
	srv := testutil.StartRedis(t)
	sched := testutil.RedisStores(t, srv.URL())().Schedule()
	l, _ := newLimiter(t, limit, period, 100*time.Millisecond, sched)
	// The first command after the restart may fail on its dead
	// connection: that is a Redis failure, paced locally.
	checkNoSecondWindow(t, l, limit, period, "Redis restarted empty", srv.Restart)
}

// checkNoSecondWindow sends limit calls of one tenant through l, lets
// fault happen, and sends limit more: within a period, no more than limit
// may go.
func checkNoSecondWindow(t *testing.T, l *Limiter, limit int, period time.Duration, what string, fault func()) {
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	admitted := 0
	for round := range 2 {
		if round == 1 {
			fault()
		}
		for range limit {
			if _, err := l.Wait(ctx, "acme", time.Now().Add(100*time.Millisecond)); err == nil {
				admitted++
			}
		}
	}
	if d := time.Since(start); d < period && admitted > limit {
		t.Errorf("one replica let %d calls of one tenant through within %v (%s after the first %d); want at most %d in any window of %v",
			admitted, d.Round(time.Millisecond), what, limit, limit, period)
	}
}

// A 429 of thanks.io that pauses the tenant past a waiting call's deadline
// refuses that call at once, not when its old slot comes: the caller does
// not wait in vain.
func TestAttackPauseBeyondDeadlineRefusesWaitersAtOnce(t *testing.T) {
	const period = 3 * time.Second
	l, sched := afterOneCall(t, period)
	done := waitForLaterSlot(t, l, sched.reserved, period)
	// thanks.io: 429, come back in a minute (past the waiter's 10 s).
	paused := time.Now()
	if d := l.Observe("acme", http.StatusTooManyRequests, http.Header{"Retry-After": {"60"}}, 0); d != time.Minute {
		t.Fatalf("Observe = %v; want a minute", d)
	}
	refusedSoon(t, done, paused, " that made its turn impossible; want at once (it waited in vain for its old slot)")
}

// afterOneCall returns a limiter of one call per period, with a maximum
// wait of 10 s, over a local schedule that announces its reservations, once
// acme's first call went (and its announcement was taken).
func afterOneCall(t *testing.T, period time.Duration) (*Limiter, announcing) {
	t.Helper()
	sched := announcing{store.NewLocalSchedule(), make(chan store.Slot, 10)}
	l, _ := newLimiter(t, 1, period, 10*time.Second, sched)
	if _, err := l.Wait(context.Background(), "acme", time.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	<-sched.reserved
	return l, sched
}

// waitResult is how a Wait started by waitForLaterSlot ended, and when.
type waitResult struct {
	err error
	at  time.Time
}

// waitForLaterSlot starts a Wait of acme in the background, whose slot,
// announced on reserved, must be a period away at least.
func waitForLaterSlot(t *testing.T, l *Limiter, reserved <-chan store.Slot, period time.Duration) <-chan waitResult {
	t.Helper()
	done := make(chan waitResult, 1)
	go func() {
		_, err := l.Wait(context.Background(), "acme", time.Now().Add(10*time.Second))
		done <- waitResult{err, time.Now()}
	}()
	if slot := <-reserved; !slot.Reserved() || slot.Wait < period {
		t.Fatalf("the second call's slot = %+v; want one a period away", slot)
	}
	return done
}

// refusedSoon checks that the Wait behind done was refused within a
// second of paused; why ends the message when it was not.
func refusedSoon(t *testing.T, done <-chan waitResult, paused time.Time, why string) {
	t.Helper()
	select {
	case r := <-done:
		var re *RefusedError
		if !errors.As(r.err, &re) {
			t.Fatalf("the waiter's Wait = %v; want a *RefusedError", r.err)
		}
		if d := r.at.Sub(paused); d > time.Second {
			t.Errorf("the waiter was refused %v after the pause%s", d.Round(time.Millisecond), why)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the waiter never returned")
	}
}

// X-RateLimit-Remaining: 0 on the answer to the proxy's own last call of a
// window, when that answer took a while, is the proxy's own spending: it
// must not pause the tenant for a whole period.
func TestAttackSlowAnswerWithRemainingZeroIsNotOthersSpending(t *testing.T) {
	const limit, period = 5, 2 * time.Second
	clock := testutil.NewClock(time.Now())
	shared := store.NewLocalSchedule()
	shared.Now = clock.Now
	l, obs := newLimiter(t, limit, period, 500*time.Millisecond, shared)
	l.local.Now = clock.Now // the replica's own history is on the same clock
	ctx := context.Background()
	// The proxy alone spends the account: one call every 300 ms.
	for i := range limit {
		if i > 0 {
			clock.Advance(300 * time.Millisecond)
		}
		if d, err := l.Wait(ctx, "acme", time.Now().Add(500*time.Millisecond)); err != nil || d > 100*time.Millisecond {
			t.Fatalf("call %d = %v, %v; want at once", i+1, d, err)
		}
	}
	// The fifth call (sent at 1.2 s) is a slow one: its answer, which
	// says the window is spent, comes at 2.2 s. thanks.io's window (from
	// 0 s) has ended by then.
	clock.Advance(time.Second)
	l.Observe("acme", http.StatusOK, http.Header{"X-Ratelimit-Remaining": {"0"}}, time.Second)
	obs.mu.Lock()
	paused := obs.paused
	obs.mu.Unlock()
	if paused != 0 {
		t.Errorf("paused %d times; want none: the %d calls in thanks.io's window were the proxy's own", paused, limit)
	}
	// The window of the first call (0 s) and its guard are over.
	clock.Advance(Guard(period))
	if _, err := l.Wait(ctx, "acme", time.Now().Add(500*time.Millisecond)); err != nil {
		t.Errorf("a call at 2.2 s and a guard, with 4 calls in the last %v = %v; want it let through", period, err)
	}
}

// Several replicas sharing one RedisSchedule, with callers that give up and
// pauses arriving while calls sleep: in no window of the period do more
// than the limit of calls go.
func TestAttackReplicasWithPausesAndCancelsKeepTheLimit(t *testing.T) {
	const limit, period = 4, 500 * time.Millisecond
	stores := testutil.RedisStores(t, "")
	var limiters []*Limiter
	var observed []*counts
	for range 3 {
		l, obs := newLimiter(t, limit, period, 3*time.Second, stores().Schedule())
		limiters = append(limiters, l)
		observed = append(observed, obs)
	}
	var mu sync.Mutex
	var sent []time.Time
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := limiters[i%len(limiters)]
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if i%7 == 3 {
				time.AfterFunc(time.Duration(rand.IntN(1500))*time.Millisecond, cancel)
			}
			if _, err := l.Wait(ctx, "acme", time.Now().Add(3*time.Second)); err != nil {
				return
			}
			mu.Lock()
			sent = append(sent, time.Now())
			mu.Unlock()
			if i%11 == 5 {
				l.Observe("acme", http.StatusTooManyRequests, http.Header{"Retry-After": {"0"}}, 0)
			}
		}()
	}
	wg.Wait()
	checkWindows(t, sent, limit, period)
	if t.Failed() {
		for i, obs := range observed {
			obs.mu.Lock()
			t.Logf("replica %d: the shared schedule's state changes: %v (false: it fell back to pacing alone)", i, obs.shared)
			obs.mu.Unlock()
		}
	}
	if len(sent) < 10 {
		t.Errorf("only %d calls went", len(sent))
	}
}

// checkWindows fails t when more than limit of the calls sent at the times
// sent went in one window of period.
func checkWindows(t *testing.T, sent []time.Time, limit int, period time.Duration) {
	t.Helper()
	slices.SortFunc(sent, func(a, b time.Time) int { return a.Compare(b) })
	for i := limit; i < len(sent); i++ {
		if gap := sent[i].Sub(sent[i-limit]); gap < period {
			t.Errorf("calls %d and %d went %v apart: %d calls in a window of %v", i-limit+1, i+1, gap, limit+1, period)
		}
	}
}

// A pause set on one replica, after callers of another gave up their
// reservations, must not let that replica's remaining waiter (which the
// pause's wake does not reach: it sleeps until its old slot) go in a
// window that the calls placed after the pause fill.
func TestAttackPauseOnOneReplicaAfterReleasesOnAnother(t *testing.T) {
	const limit, period = 3, 300 * time.Millisecond
	stores := testutil.RedisStores(t, "")
	a, _ := newLimiter(t, limit, period, 10*time.Second, stores().Schedule())
	onB := announcing{stores().Schedule(), make(chan store.Slot, 10)}
	b, _ := newLimiter(t, limit, period, 10*time.Second, onB)
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	var mu sync.Mutex
	var sent []time.Time
	send := func(l *Limiter, ctx context.Context) error {
		_, err := l.Wait(ctx, "acme", deadline)
		if err == nil {
			mu.Lock()
			sent = append(sent, time.Now())
			mu.Unlock()
		}
		return err
	}
	for range limit {
		if err := send(a, ctx); err != nil {
			t.Fatal(err)
		}
	}
	// On b: a window's worth of callers who will give up, then one who
	// waits on, two windows ahead.
	giveUp, cancel := context.WithCancel(ctx)
	var gone, wg sync.WaitGroup
	for range limit {
		gone.Add(1)
		go func() {
			defer gone.Done()
			_ = send(b, giveUp)
		}()
		<-onB.reserved
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = send(b, ctx)
	}()
	if slot := <-onB.reserved; slot.Wait < 2*period {
		t.Fatalf("the waiter's slot = %+v; want one two windows ahead", slot)
	}
	cancel()
	gone.Wait()
	a.Observe("acme", http.StatusTooManyRequests, http.Header{"Retry-After": {"0"}}, 0)
	for range 2*limit - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = send(a, ctx)
		}()
	}
	wg.Wait()
	if len(sent) != 3*limit {
		t.Fatalf("%d calls went; want %d", len(sent), 3*limit)
	}
	checkWindows(t, sent, limit, period)
}

// A caller that goes away while its reservation is on its way to Redis
// (Redis slow for a moment) must not leave that reservation behind: a
// slot that no call will use would push every later call of the tenant
// back by a period.
func TestAttackCallerGoneDuringReserveLeavesNoPhantomSlot(t *testing.T) {
	const period = 3 * time.Second
	srv := testutil.StartRedis(t)
	sched := testutil.RedisStores(t, srv.URL())().Schedule()
	l, _ := newLimiter(t, 1, period, 200*time.Millisecond, sched)
	// Another tenant's call loads the script (EVALSHA finds it from now on).
	if _, err := l.Wait(context.Background(), "other", time.Now().Add(200*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	srv.Pause()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err := l.Wait(ctx, "acme", time.Now().Add(200*time.Millisecond))
	srv.Resume()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait of a caller gone during Reserve = %v; want context.Canceled", err)
	}
	// Once Redis has run what was sent while it stalled, the schedule
	// holds nothing of the call that did not go.
	testutil.Eventually(t, "the schedule holds no reservation of acme", func() bool {
		keys, err := srv.Client().Keys(context.Background(), "*{acme}:rate").Result()
		if err != nil || len(keys) == 0 {
			return err == nil
		}
		n, err := srv.Client().ZCard(context.Background(), keys[0]).Result()
		return err == nil && n == 0
	})
	// Nothing went to thanks.io: the tenant's next call goes at once.
	if _, err := l.Wait(context.Background(), "acme", time.Now().Add(200*time.Millisecond)); err != nil {
		t.Errorf("the first call that actually goes = %v; want it let through (the canceled call left a slot behind in Redis)", err)
	}
}

// stalled is a schedule whose reservations, once made, wait for the test
// to let them return: the test acts between a call's reservation and what
// the call does next.
type stalled struct {
	*store.LocalSchedule
	reserved chan store.Slot
	resume   chan struct{}
}

func (s stalled) Reserve(ctx context.Context, tenant string, rule store.RateRule, maxWait, floor time.Duration) (store.Slot, error) {
	slot, err := s.LocalSchedule.Reserve(ctx, tenant, rule, maxWait, floor)
	s.reserved <- slot
	<-s.resume
	return slot, err
}

// A pause that comes after a call reserved its slot but before it began
// to sleep (the pause's wake finds no sleeper) reaches the call all the
// same: it is refused at once, not when its old slot comes.
func TestAttackPauseBeforeTheWaiterSleeps(t *testing.T) {
	const period = 3 * time.Second
	sched := stalled{store.NewLocalSchedule(), make(chan store.Slot, 10), make(chan struct{}, 10)}
	l, _ := newLimiter(t, 1, period, 10*time.Second, sched)
	sched.resume <- struct{}{}
	if _, err := l.Wait(context.Background(), "acme", time.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	<-sched.reserved
	done := waitForLaterSlot(t, l, sched.reserved, period)
	// The call has its slot and does not sleep yet: thanks.io answers
	// 429, come back in a minute (past the call's 10 s).
	paused := time.Now()
	l.Observe("acme", http.StatusTooManyRequests, http.Header{"Retry-After": {"60"}}, 0)
	sched.resume <- struct{}{}
	refusedSoon(t, done, paused, "; want at once (the pause's wake came before it slept)")
}

// flaky is a shared schedule (a LocalSchedule standing in for Redis) whose
// Confirm can be told to fail, or to lose the slot, as Redis would.
type flaky struct {
	*store.LocalSchedule
	reserved chan store.Slot

	mu         sync.Mutex
	confirmed  int
	onConfirm  func(n int, tenant, id string) error // before the inner Confirm
	reserveErr error                                // returned by Reserve when set
}

func (f *flaky) Reserve(ctx context.Context, tenant string, rule store.RateRule, maxWait, floor time.Duration) (store.Slot, error) {
	f.mu.Lock()
	err := f.reserveErr
	f.mu.Unlock()
	if err != nil {
		return store.Slot{}, err
	}
	slot, err := f.LocalSchedule.Reserve(ctx, tenant, rule, maxWait, floor)
	if f.reserved != nil {
		f.reserved <- slot
	}
	return slot, err
}

func (f *flaky) Confirm(ctx context.Context, tenant, id string) (time.Duration, error) {
	f.mu.Lock()
	f.confirmed++
	n := f.confirmed
	on := f.onConfirm
	f.mu.Unlock()
	if on != nil {
		if err := on(n, tenant, id); err != nil {
			return 0, err
		}
	}
	return f.LocalSchedule.Confirm(ctx, tenant, id)
}

// A waiter that a pause woke long before its slot, whose Confirm then
// fails (a Redis timeout, or a Redis come back empty that fails the next
// reservation), is paced by the local schedule for the rest of its wait:
// it goes neither before its slot nor inside the pause that thanks.io
// asked for.
func TestAttackConfirmFailedAfterAPauseWokeTheCall(t *testing.T) {
	for _, tc := range []struct {
		name string
		// fault makes the waiter's first Confirm fail, as Redis would.
		fault func(f *flaky) func(n int, tenant, id string) error
	}{
		{"confirm times out", func(f *flaky) func(int, string, string) error {
			return func(n int, _, _ string) error {
				if n == 1 {
					return fmt.Errorf("store: confirm: %w", context.DeadlineExceeded)
				}
				return nil
			}
		}},
		{"slot lost, then the re-reserve fails", func(f *flaky) func(int, string, string) error {
			return func(n int, tenant, id string) error {
				if n == 1 {
					// Redis came back empty, and fails the next command.
					_ = f.LocalSchedule.Release(context.Background(), tenant, id)
					f.mu.Lock()
					f.reserveErr = errDown
					f.mu.Unlock()
				}
				return nil
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const limit, period = 1, 300 * time.Millisecond
			f := &flaky{LocalSchedule: store.NewLocalSchedule(), reserved: make(chan store.Slot, 10)}
			f.onConfirm = tc.fault(f)
			l, _ := newLimiter(t, limit, period, 10*time.Second, f)
			first := time.Now()
			if _, err := l.Wait(context.Background(), "acme", time.Now().Add(10*time.Second)); err != nil {
				t.Fatal(err)
			}
			<-f.reserved
			done := make(chan waitResult, 1)
			go func() {
				_, err := l.Wait(context.Background(), "acme", time.Now().Add(10*time.Second))
				done <- waitResult{err, time.Now()}
			}()
			if slot := <-f.reserved; !slot.Reserved() || slot.Wait < period {
				t.Fatalf("the waiter's slot = %+v; want one a period away", slot)
			}
			// thanks.io: 429, come back in a second. The waiter is woken
			// to confirm its slot (moved past the pause).
			paused := time.Now()
			l.Observe("acme", http.StatusTooManyRequests, http.Header{"Retry-After": {"1"}}, 0)
			r := <-done
			if r.err != nil {
				t.Fatalf("the waiter's Wait = %v", r.err)
			}
			if gap := r.at.Sub(first); gap < period {
				t.Errorf("with a limit of %d per %v, the second call went %v after the first (its slot was a period and a guard away)",
					limit, period, gap.Round(time.Millisecond))
			}
			if d := r.at.Sub(paused); d < time.Second {
				t.Errorf("the waiter went %v into a pause of 1s that thanks.io had just asked for", d.Round(time.Millisecond))
			}
		})
	}
}

// A sleeper woken by a pause whose goroutine ends its watch only after
// another call began to sleep (on a new signal) must not take that call's
// signal away: the next pause's wake reaches the call at once. The late
// sleeper is played by l.watch and l.unwatch, in the order a busy
// scheduler can run them.
func TestAttackLateUnwatchKeepsTheNextSleepersSignal(t *testing.T) {
	const period = 3 * time.Second
	l, sched := afterOneCall(t, period)
	// A call sleeps until its turn...
	first := l.watch("acme")
	// ...and a pause wakes it; its goroutine does not run yet.
	l.Observe("acme", http.StatusTooManyRequests, http.Header{"Retry-After": {"0"}}, 0)
	// Another call reserves and begins to sleep, on a new signal.
	done := waitForLaterSlot(t, l, sched.reserved, period)
	testutil.Eventually(t, "the second call sleeps", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.sleepers["acme"] != nil
	})
	// The first sleeper's goroutine runs now: its deferred unwatch.
	l.unwatch("acme", first)
	// thanks.io: 429, come back in a minute (past the sleeper's 10 s).
	paused := time.Now()
	l.Observe("acme", http.StatusTooManyRequests, http.Header{"Retry-After": {"60"}}, 0)
	refusedSoon(t, done, paused, "; want at once (a pause's wake must reach every sleeper of the tenant)")
}

// A Redis that loses its data after thanks.io's 429 (restarted empty,
// failed over to an empty replica) loses the tenant's pause with it; the
// replica that set the pause still keeps it: its next call does not go
// before the pause ends.
func TestAttackRedisLostDataKeepsThePauseForNewCalls(t *testing.T) {
	const period = 300 * time.Millisecond
	sched, forget := redisSchedule(t)
	l, _ := newLimiter(t, 1, period, 10*time.Second, sched)
	ctx := context.Background()
	if _, err := l.Wait(ctx, "acme", time.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	if d := l.Observe("acme", http.StatusTooManyRequests, http.Header{"Retry-After": {"2"}}, 0); d != 2*time.Second {
		t.Fatalf("Observe = %v; want 2s", d)
	}
	if err := forget("acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Wait(ctx, "acme", time.Now().Add(10*time.Second)); err != nil {
		t.Fatalf("the call after the pause = %v; want it let through", err)
	}
	if d := time.Since(paused); d < 2*time.Second {
		t.Errorf("the call went %v into a pause of 2s that thanks.io had asked for (Redis had lost it; this replica had not)", d.Round(time.Millisecond))
	}
}

// A waiter woken by a pause, whose Confirm finds its reservation gone
// because Redis lost its data meanwhile, is placed again no earlier than
// the end of the pause that this replica set.
func TestAttackRedisLostDataKeepsThePauseForAWokenWaiter(t *testing.T) {
	const period = 300 * time.Millisecond
	shared, forget := redisSchedule(t)
	sched := &forgetting{announcing: announcing{shared, make(chan store.Slot, 10)}, forget: func(tenant string) {
		if err := forget(tenant); err != nil {
			t.Error(err)
		}
	}}
	l, _ := newLimiter(t, 1, period, 10*time.Second, sched)
	if _, err := l.Wait(context.Background(), "acme", time.Now().Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	<-sched.reserved
	done := waitForLaterSlot(t, l, sched.reserved, period)
	// thanks.io: 429, come back in 2 s. The waiter is woken to confirm its
	// slot, which Redis no longer has.
	paused := time.Now()
	l.Observe("acme", http.StatusTooManyRequests, http.Header{"Retry-After": {"2"}}, 0)
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("the waiter's Wait = %v; want it let through", r.err)
		}
		if d := r.at.Sub(paused); d < 2*time.Second {
			t.Errorf("the waiter went %v into a pause of 2s that thanks.io had asked for (Redis had lost it; this replica had not)", d.Round(time.Millisecond))
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the waiter never returned")
	}
}

// forgetting is a shared schedule that loses a tenant's data just before
// the first Confirm, as a Redis that restarted empty while a call slept
// would.
type forgetting struct {
	announcing
	forget func(tenant string)
	once   sync.Once
}

func (f *forgetting) Confirm(ctx context.Context, tenant, id string) (time.Duration, error) {
	f.once.Do(func() { f.forget(tenant) })
	return f.announcing.Confirm(ctx, tenant, id)
}

// redisSchedule opens a RedisSchedule on the tests' Redis
// (testutil.RedisURL), under a key prefix of its own, and returns it with
// a function that deletes a tenant's keys, as a Redis that lost its data
// would; that function fails when the tenant had no pause to lose.
func redisSchedule(t *testing.T) (*store.RedisSchedule, func(tenant string) error) {
	t.Helper()
	client, err := store.OpenRedisURL(testutil.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	// The schedule seals nothing; the store wants a sealer all the same.
	sealer, err := store.NewSealer([][]byte{make([]byte, store.KeySize)})
	if err != nil {
		t.Fatal(err)
	}
	prefix := testutil.KeyPrefix()
	forget := func(tenant string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		keys, err := client.Keys(ctx, prefix+"{"+tenant+"}:*").Result()
		if err != nil {
			return fmt.Errorf("listing the keys of %q: %w", tenant, err)
		}
		if pause := prefix + "{" + tenant + "}:pause"; !slices.Contains(keys, pause) {
			return fmt.Errorf("the keys of %q are %q; want %q among them", tenant, keys, pause)
		}
		if err := client.Del(ctx, keys...).Err(); err != nil {
			return fmt.Errorf("deleting the keys of %q: %w", tenant, err)
		}
		return nil
	}
	return store.NewRedis(client, prefix, sealer).Schedule(), forget
}
