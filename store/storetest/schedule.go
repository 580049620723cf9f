package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"thanksio-proxy/ratelimit"
	"thanksio-proxy/store"
)

// Schedule is what RunSchedule checks: a schedule of upstream calls, as
// the rate limiter needs it and store.RedisSchedule and
// store.LocalSchedule keep it.
type Schedule = ratelimit.Schedule

// scheduleRule is the rule of RunSchedule's subtests: long enough that the
// time a call of the test takes is small beside it.
var scheduleRule = store.RateRule{Limit: 3, Period: 10 * time.Second, Guard: 500 * time.Millisecond}

// slack is how far a wait may be off what the subtests compute: the time
// between the test's reading of the clock and the schedule's.
const slack = 250 * time.Millisecond

// RunSchedule checks, in one subtest per rule, that the schedules that
// open returns keep the contract of a schedule of upstream calls. Each
// subtest calls open for schedules of its own, on fresh data; schedules
// that one call of open returns share their data, as replicas do.
func RunSchedule(t *testing.T, open func(t *testing.T) func() Schedule) {
	for _, tc := range []struct {
		name string
		test func(t *testing.T, open func() Schedule)
	}{
		{"BurstThenSpaced", testBurstThenSpaced},
		{"RefusedReservesNothing", testRefusedReservesNothing},
		{"ReleaseFrees", testReleaseFrees},
		{"PausePlacesAgainInOrder", testPausePlacesAgain},
		{"PauseNeverBringsASlotForward", testPauseNeverBringsASlotForward},
		{"PauseForOthersNeedsRoom", testPauseForOthers},
		{"PauseForOthersCountsBeforeTheCall", testPauseForOthersBeforeTheCall},
		{"Floor", testFloor},
		{"TenantsApart", testTenantsApart},
		{"ConcurrentTenantsApart", testConcurrentTenantsApart},
		{"SharedAcrossReplicas", testSharedAcrossReplicas},
		{"BadArguments", testScheduleBadArguments},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.test(t, open(t)) })
	}
}

func reserve(t *testing.T, s Schedule, tenant string, maxWait time.Duration) store.Slot {
	t.Helper()
	slot, err := s.Reserve(context.Background(), tenant, scheduleRule, maxWait, 0)
	if err != nil {
		t.Fatalf("Reserve(%q) = %v", tenant, err)
	}
	return slot
}

// checkWait fails t unless got is within slack of want.
func checkWait(t *testing.T, what string, got, want time.Duration) {
	t.Helper()
	if got < want-slack || got > want+slack {
		t.Errorf("%s: wait %v; want %v (within %v)", what, got, want, slack)
	}
}

// spaced is the wait of the call after a full window that started now.
var spaced = scheduleRule.Period + scheduleRule.Guard

func testBurstThenSpaced(t *testing.T, open func() Schedule) {
	s := open()
	for i := range scheduleRule.Limit {
		slot := reserve(t, s, "acme", time.Hour)
		if !slot.Reserved() || slot.Wait != 0 {
			t.Fatalf("call %d of a burst of %d: %+v; want reserved at once", i+1, scheduleRule.Limit, slot)
		}
	}
	for i := range scheduleRule.Limit {
		slot := reserve(t, s, "acme", time.Hour)
		if !slot.Reserved() {
			t.Fatalf("call %d after the burst was not reserved", i+1)
		}
		checkWait(t, "a call after a full window", slot.Wait, spaced)
	}
	slot := reserve(t, s, "acme", time.Hour)
	checkWait(t, "a call after two full windows", slot.Wait, 2*spaced)
	if w, err := s.Confirm(context.Background(), "acme", slot.ID); err != nil {
		t.Fatalf("Confirm = %v", err)
	} else {
		checkWait(t, "Confirm of the last call", w, 2*spaced)
	}
}

func testRefusedReservesNothing(t *testing.T, open func() Schedule) {
	s := open()
	for range scheduleRule.Limit {
		reserve(t, s, "acme", time.Hour)
	}
	for range 5 {
		slot := reserve(t, s, "acme", time.Second)
		if slot.Reserved() {
			t.Fatalf("a call whose turn comes in %v was reserved with a max wait of 1s", slot.Wait)
		}
		checkWait(t, "a refused call's turn", slot.Wait, spaced)
	}
	// Nothing was reserved: the next call still has the first place.
	slot := reserve(t, s, "acme", time.Hour)
	checkWait(t, "the call after refusals", slot.Wait, spaced)
}

func testReleaseFrees(t *testing.T, open func() Schedule) {
	s := open()
	for range scheduleRule.Limit {
		reserve(t, s, "acme", time.Hour)
	}
	first := reserve(t, s, "acme", time.Hour)
	if err := s.Release(context.Background(), "acme", first.ID); err != nil {
		t.Fatalf("Release = %v", err)
	}
	if _, err := s.Confirm(context.Background(), "acme", first.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Confirm of a released slot = %v; want ErrNotFound", err)
	}
	for range scheduleRule.Limit {
		slot := reserve(t, s, "acme", time.Hour)
		checkWait(t, "a call after a released slot", slot.Wait, spaced)
	}
}

// reserveBeyondWindow fills acme's first window, then reserves
// scheduleRule.Limit+1 calls that wait: a window of them and one more.
func reserveBeyondWindow(t *testing.T, s Schedule) []store.Slot {
	t.Helper()
	for range scheduleRule.Limit {
		reserve(t, s, "acme", time.Hour)
	}
	var waiting []store.Slot
	for range scheduleRule.Limit + 1 {
		waiting = append(waiting, reserve(t, s, "acme", time.Hour))
	}
	return waiting
}

func testPausePlacesAgain(t *testing.T, open func() Schedule) {
	s := open()
	ctx := context.Background()
	waiting := reserveBeyondWindow(t, s)
	pause := 30 * time.Second
	if ok, err := s.Pause(ctx, "acme", scheduleRule, pause, false, 0); err != nil || !ok {
		t.Fatalf("Pause = %v, %v; want true", ok, err)
	}
	// The first Limit waiting calls go when the pause ends, in their
	// order; the one after them a full window later.
	want := []time.Duration{pause, pause, pause, pause + spaced}
	for i, slot := range waiting {
		w, err := s.Confirm(ctx, "acme", slot.ID)
		if err != nil {
			t.Fatalf("Confirm(waiting %d) = %v", i, err)
		}
		checkWait(t, "a call placed again after a pause", w, want[i])
	}
	// A call placed after the pause comes after every call placed before.
	checkWait(t, "a call after the pause", reserve(t, s, "acme", time.Hour).Wait, pause+spaced)
	// A shorter pause changes nothing.
	if ok, err := s.Pause(ctx, "acme", scheduleRule, time.Second, false, 0); err != nil || ok {
		t.Errorf("a shorter pause = %v, %v; want false", ok, err)
	}
}

// A pause moves the reservations to come later, never earlier, even where
// released reservations left room before them: a waiter on another
// replica, which the pause's wake does not reach, sleeps until its old
// slot, and a slot brought forward would let later calls into its window.
func testPauseNeverBringsASlotForward(t *testing.T, open func() Schedule) {
	s, other := open(), open()
	ctx := context.Background()
	waiting := reserveBeyondWindow(t, s)
	// The callers of the first window's calls give up; the last one, a
	// window further, waits on.
	for _, slot := range waiting[:scheduleRule.Limit] {
		if err := s.Release(ctx, "acme", slot.ID); err != nil {
			t.Fatalf("Release = %v", err)
		}
	}
	last := waiting[scheduleRule.Limit]
	checkWait(t, "the call two windows ahead", last.Wait, 2*spaced)
	// Another replica is told of a 429: a short pause.
	if ok, err := other.Pause(ctx, "acme", scheduleRule, time.Second, false, 0); err != nil || !ok {
		t.Fatalf("Pause = %v, %v; want true", ok, err)
	}
	w, err := s.Confirm(ctx, "acme", last.ID)
	if err != nil {
		t.Fatalf("Confirm = %v", err)
	}
	checkWait(t, "a call after a pause that ends before it", w, 2*spaced)
	// The calls placed now come with it or after it, not in a window
	// before it that its own sending will share.
	for i := range scheduleRule.Limit {
		slot := reserve(t, other, "acme", time.Hour)
		want := 2 * spaced
		if i == scheduleRule.Limit-1 {
			want = 3 * spaced
		}
		checkWait(t, fmt.Sprintf("call %d placed after the pause", i+1), slot.Wait, want)
	}
}

func testPauseForOthers(t *testing.T, open func() Schedule) {
	s := open()
	ctx := context.Background()
	reserve(t, s, "mine", time.Hour)
	// One call of the schedule went: the account's count is others' too.
	if ok, err := s.Pause(ctx, "mine", scheduleRule, 5*time.Second, true, 0); err != nil || !ok {
		t.Fatalf("Pause(others) with room in the window = %v, %v; want true", ok, err)
	}
	checkWait(t, "a call after a pause for others", reserve(t, s, "mine", time.Hour).Wait, 5*time.Second)

	for range scheduleRule.Limit {
		reserve(t, s, "full", time.Hour)
	}
	// The schedule spent the window itself: its count explains the
	// upstream's, and the next call is spaced already.
	if ok, err := s.Pause(ctx, "full", scheduleRule, 5*time.Second, true, 0); err != nil || ok {
		t.Errorf("Pause(others) after a full window of the schedule's own = %v, %v; want false", ok, err)
	}
}

func testPauseForOthersBeforeTheCall(t *testing.T, open func() Schedule) {
	s := open()
	for range scheduleRule.Limit {
		reserve(t, s, "acme", time.Hour)
	}
	// The answer to a call sent 11 s ago (before the burst) says the
	// account is spent: in the period before that call, the schedule sent
	// nothing, so others spent it.
	if ok, err := s.Pause(context.Background(), "acme", scheduleRule, 5*time.Second, true, 11*time.Second); err != nil || !ok {
		t.Errorf("Pause(others) for a call sent before the schedule's calls = %v, %v; want true", ok, err)
	}
}

func testFloor(t *testing.T, open func() Schedule) {
	s := open()
	slot, err := s.Reserve(context.Background(), "acme", scheduleRule, time.Hour, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	checkWait(t, "a call with a floor of 3s in an empty schedule", slot.Wait, 3*time.Second)
	// Calls after it come after it, whatever their floor.
	checkWait(t, "the next call", reserve(t, s, "acme", time.Hour).Wait, 3*time.Second)
}

func testTenantsApart(t *testing.T, open func() Schedule) {
	s := open()
	for range 2 * scheduleRule.Limit {
		reserve(t, s, "busy", time.Hour)
	}
	if _, err := s.Pause(context.Background(), "busy", scheduleRule, time.Minute, false, 0); err != nil {
		t.Fatal(err)
	}
	if slot := reserve(t, s, "quiet", time.Hour); !slot.Reserved() || slot.Wait != 0 {
		t.Errorf("a call of another tenant = %+v; want reserved at once", slot)
	}
}

// testConcurrentTenantsApart reserves for many tenants at once (a
// schedule may send such calls together): each call gets a slot of its own
// tenant's schedule, placed by that schedule alone.
func testConcurrentTenantsApart(t *testing.T, open func() Schedule) {
	s := open()
	const tenants = 20
	// The odd tenants have spent their window: their calls wait for the
	// next one.
	for i := 1; i < tenants; i += 2 {
		for range scheduleRule.Limit {
			reserve(t, s, fmt.Sprintf("t%d", i), time.Hour)
		}
	}
	type result struct {
		tenant int
		slot   store.Slot
		err    error
	}
	results := make(chan result, tenants*scheduleRule.Limit)
	var wg sync.WaitGroup
	for i := range tenants {
		for range scheduleRule.Limit {
			wg.Go(func() {
				slot, err := s.Reserve(context.Background(), fmt.Sprintf("t%d", i), scheduleRule, time.Hour, 0)
				results <- result{i, slot, err}
			})
		}
	}
	wg.Wait()
	close(results)
	for r := range results {
		tenant := fmt.Sprintf("t%d", r.tenant)
		if r.err != nil || !r.slot.Reserved() {
			t.Errorf("Reserve(%q) = %+v, %v; want a slot", tenant, r.slot, r.err)
			continue
		}
		want := time.Duration(0)
		if r.tenant%2 == 1 {
			want = spaced
		}
		checkWait(t, "a call of "+tenant+" among others' at once", r.slot.Wait, want)
		w, err := s.Confirm(context.Background(), tenant, r.slot.ID)
		if err != nil {
			t.Errorf("Confirm(%q, its slot) = %v", tenant, err)
			continue
		}
		checkWait(t, "Confirm of a call of "+tenant, w, want)
	}
}

func testSharedAcrossReplicas(t *testing.T, open func() Schedule) {
	a, b := open(), open()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var waits []time.Duration
	for i := range 4 * scheduleRule.Limit {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			slot := reserve(t, s, "acme", time.Hour)
			mu.Lock()
			waits = append(waits, slot.Wait)
			mu.Unlock()
		})
	}
	wg.Wait()
	// Limit calls per window, whichever replica placed them.
	counts := make(map[int]int)
	for _, w := range waits {
		counts[int((w+slack)/spaced)]++
	}
	for window := range 4 {
		if counts[window] != scheduleRule.Limit {
			t.Errorf("calls placed in window %d: %d; want %d (waits %v)", window, counts[window], scheduleRule.Limit, waits)
		}
	}
}

func testScheduleBadArguments(t *testing.T, open func() Schedule) {
	s := open()
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		tenant string
		rule   store.RateRule
	}{
		{"empty tenant", "", scheduleRule},
		{"tenant with a brace", "a}b", scheduleRule},
		{"zero limit", "acme", store.RateRule{Period: time.Second}},
		{"zero period", "acme", store.RateRule{Limit: 1}},
	} {
		if _, err := s.Reserve(ctx, tc.tenant, tc.rule, time.Second, 0); err == nil {
			t.Errorf("Reserve with %s: nil error", tc.name)
		}
		if _, err := s.Pause(ctx, tc.tenant, tc.rule, time.Second, false, 0); err == nil {
			t.Errorf("Pause with %s: nil error", tc.name)
		}
	}
}
