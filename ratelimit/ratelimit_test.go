package ratelimit

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"thanksio-proxy/store"
)

// counts is an Observer that counts.
type counts struct {
	mu                         sync.Mutex
	admitted, rejected, paused int
	shared                     []bool
	waited                     []time.Duration
}

func (c *counts) Admitted(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.admitted++
	c.waited = append(c.waited, d)
}
func (c *counts) Rejected()     { c.mu.Lock(); c.rejected++; c.mu.Unlock() }
func (c *counts) Paused()       { c.mu.Lock(); c.paused++; c.mu.Unlock() }
func (c *counts) Shared(b bool) { c.mu.Lock(); c.shared = append(c.shared, b); c.mu.Unlock() }

func newLimiter(t *testing.T, limit int, period, maxWait time.Duration, shared Schedule) (*Limiter, *counts) {
	t.Helper()
	obs := new(counts)
	l, err := New(Config{Limit: limit, Period: period, MaxWait: maxWait, Shared: shared, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	return l, obs
}

func TestWaitBurstThenTurns(t *testing.T) {
	const period = 300 * time.Millisecond
	l, obs := newLimiter(t, 3, period, time.Minute, nil)
	ctx := context.Background()
	start := time.Now()
	var sent []time.Time
	for range 7 {
		if _, err := l.Wait(ctx, "acme", time.Now().Add(time.Minute)); err != nil {
			t.Fatalf("Wait = %v", err)
		}
		sent = append(sent, time.Now())
	}
	for i := range 3 {
		if d := sent[i].Sub(start); d > period/3 {
			t.Errorf("call %d of the burst went after %v; want at once", i+1, d)
		}
	}
	// No window of the period holds more than the limit.
	for i := 3; i < len(sent); i++ {
		if gap := sent[i].Sub(sent[i-3]); gap < period {
			t.Errorf("calls %d and %d went %v apart; want at least %v", i-2, i+1, gap, period)
		}
	}
	if obs.admitted != 7 || obs.rejected != 0 {
		t.Errorf("admitted %d, rejected %d; want 7, 0", obs.admitted, obs.rejected)
	}
}

func TestWaitRefusedAtOnce(t *testing.T) {
	l, obs := newLimiter(t, 2, time.Minute, time.Second, nil)
	ctx := context.Background()
	for range 2 {
		if _, err := l.Wait(ctx, "acme", time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	_, err := l.Wait(ctx, "acme", time.Now().Add(time.Second))
	var re *RefusedError
	if !errors.As(err, &re) {
		t.Fatalf("Wait past the limit = %v; want a *RefusedError", err)
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Errorf("the refusal took %v; want it at once", d)
	}
	if re.RetryAfter < 59*time.Second || re.RetryAfter > time.Minute+Guard(time.Minute) {
		t.Errorf("RetryAfter = %v; want about a minute", re.RetryAfter)
	}
	if obs.rejected != 1 {
		t.Errorf("rejected = %d; want 1", obs.rejected)
	}
	// Another tenant waits for nothing.
	if d, err := l.Wait(ctx, "other", time.Now().Add(time.Second)); err != nil || d > 100*time.Millisecond {
		t.Errorf("another tenant's Wait = %v, %v; want at once", d, err)
	}
}

func TestWaitCanceledFreesItsPlace(t *testing.T) {
	const period = 2 * time.Second
	sched := announcing{store.NewLocalSchedule(), make(chan store.Slot, 10)}
	l, _ := newLimiter(t, 1, period, time.Minute, sched)
	if _, err := l.Wait(context.Background(), "acme", time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	<-sched.reserved
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := l.Wait(ctx, "acme", time.Now().Add(time.Minute))
		done <- err
	}()
	// The waiter holds the next slot; once it gives up, the next call
	// takes that slot rather than the one after it.
	if slot := <-sched.reserved; slot.Wait < period {
		t.Fatalf("the second call's slot is %v away; want a period", slot.Wait)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait after cancel = %v; want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return after its context was canceled")
	}
	_, err := l.Wait(context.Background(), "acme", time.Now().Add(period+Guard(period)+period/2))
	if err != nil {
		t.Errorf("the call after a canceled waiter = %v; want it to take the freed slot", err)
	}
}

// failing is a shared schedule that is down.
type failing struct{ calls int }

var errDown = errors.New("redis: connection refused")

func (f *failing) Reserve(context.Context, string, store.RateRule, time.Duration, time.Duration) (store.Slot, error) {
	f.calls++
	return store.Slot{}, errDown
}
func (f *failing) Confirm(context.Context, string, string) (time.Duration, error) { return 0, errDown }
func (f *failing) Release(context.Context, string, string) error                  { return errDown }
func (f *failing) Pause(context.Context, string, store.RateRule, time.Duration, bool, time.Duration) (bool, error) {
	return false, errDown
}

func TestSharedDownPacesAlone(t *testing.T) {
	var logs bytes.Buffer
	shared := &failing{}
	obs := new(counts)
	l, err := New(Config{Limit: 2, Period: time.Minute, MaxWait: time.Second, Shared: shared, Observer: obs,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 2 {
		if _, err := l.Wait(ctx, "acme", time.Now().Add(time.Second)); err != nil {
			t.Fatalf("call %d with the shared schedule down = %v; want it paced locally", i+1, err)
		}
	}
	var re *RefusedError
	if _, err := l.Wait(ctx, "acme", time.Now().Add(time.Second)); !errors.As(err, &re) {
		t.Errorf("a call past the limit with the shared schedule down = %v; want a *RefusedError", err)
	}
	if n := strings.Count(logs.String(), "shared rate limit schedule failed"); n != 1 {
		t.Errorf("the outage was logged %d times; want once:\n%s", n, logs.String())
	}
	if shared.calls != 1 {
		t.Errorf("the shared schedule was tried %d times in its outage; want once (then %v alone)", shared.calls, retryShared)
	}
	if len(obs.shared) != 2 || obs.shared[0] != true || obs.shared[1] != false {
		t.Errorf("Shared reported %v; want [true false]", obs.shared)
	}
}

func TestObservePauses(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name   string
		status int
		header http.Header
		want   time.Duration
	}{
		{"429 with Retry-After", 429, http.Header{"Retry-After": {"7"}}, 7 * time.Second},
		{"429 with Retry-After 0", 429, http.Header{"Retry-After": {"0"}}, minPause},
		{"429 with a date", 429, http.Header{"Retry-After": {now.Add(9 * time.Second).UTC().Format(http.TimeFormat)}}, 9 * time.Second},
		{"429 with X-RateLimit-Reset", 429, http.Header{"X-Ratelimit-Reset": {fmtUnix(now.Add(12 * time.Second))}}, 12 * time.Second},
		{"429 with nothing", 429, http.Header{}, time.Minute},
		{"429 with a huge Retry-After", 429, http.Header{"Retry-After": {"99999999"}}, time.Hour},
		{"200", 200, http.Header{"X-Ratelimit-Remaining": {"5"}}, 0},
		{"200 with nothing left", 200, http.Header{"X-Ratelimit-Remaining": {"0"}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, _ := newLimiter(t, 60, time.Minute, time.Minute, nil)
			got := l.Observe("acme", tc.status, tc.header, 0)
			if got < tc.want-time.Second || got > tc.want {
				t.Errorf("Observe = %v; want %v", got, tc.want)
			}
		})
	}
}

func TestObserveRemainingZeroPausesForOthers(t *testing.T) {
	l, obs := newLimiter(t, 10, time.Minute, 2*time.Minute, nil)
	ctx := context.Background()
	if _, err := l.Wait(ctx, "acme", time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// thanks.io says the account has nothing left, though one call went
	// through the proxy: someone else spends it.
	l.Observe("acme", 200, http.Header{"X-Ratelimit-Remaining": {"0"}}, 0)
	if obs.paused != 1 {
		t.Fatalf("paused %d times; want 1", obs.paused)
	}
	_, err := l.Wait(ctx, "acme", time.Now().Add(time.Second))
	var re *RefusedError
	if !errors.As(err, &re) || re.RetryAfter < 59*time.Second {
		t.Errorf("a call during the pause = %v; want refused with about a minute to wait", err)
	}
}

func fmtUnix(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }

// announcing is a schedule that tells of each reservation it made.
type announcing struct {
	Schedule
	reserved chan store.Slot
}

func (a announcing) Reserve(ctx context.Context, tenant string, rule store.RateRule, maxWait, floor time.Duration) (store.Slot, error) {
	slot, err := a.Schedule.Reserve(ctx, tenant, rule, maxWait, floor)
	a.reserved <- slot
	return slot, err
}
