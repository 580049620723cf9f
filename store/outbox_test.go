package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"thanksio-proxy/events"
	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/store"
)

// Both outboxes satisfy what the events dispatcher needs of one.
var (
	_ events.Outbox = (*store.RedisOutbox)(nil)
	_ events.Outbox = (*store.MemoryOutbox)(nil)
)

// outbox is the contract the suite checks: what the events dispatcher
// needs.
type outbox = events.Outbox

func TestMemoryOutbox(t *testing.T) {
	runOutbox(t, func(t *testing.T) func() outbox {
		o := store.NewMemoryOutbox()
		return func() outbox { return o }
	})
}

func TestRedisOutbox(t *testing.T) {
	runOutbox(t, func(t *testing.T) func() outbox {
		stores := testutil.RedisStores(t, "")
		return func() outbox { return stores().Outbox() }
	})
}

// runOutbox runs the outbox contract; setup returns, for a fresh empty
// outbox, a function that opens it again (as another replica would).
func runOutbox(t *testing.T, setup func(t *testing.T) func() outbox) {
	t.Run("AddedDueAtOnceIsClaimedOnce", func(t *testing.T) {
		o := setup(t)()
		data := []byte(`{"id":"evt_1","reason":"quote \" and \u00e9"}`)
		mustAdd(t, o, "evt_1", data, 0)
		got := mustClaim(t, o, 10, time.Hour)
		if len(got) != 1 || got[0].ID != "evt_1" || string(got[0].Data) != string(data) || got[0].Attempts != 0 {
			t.Fatalf("Claim = %+v; want evt_1 with its data and 0 attempts", got)
		}
		if got := mustClaim(t, o, 10, time.Hour); len(got) != 0 {
			t.Errorf("second Claim = %+v; want nothing while the first claim holds", got)
		}
	})

	t.Run("AddClaimsForTheAdder", func(t *testing.T) {
		o := setup(t)()
		mustAdd(t, o, "evt_1", []byte("x"), time.Hour)
		if got := mustClaim(t, o, 10, time.Hour); len(got) != 0 {
			t.Errorf("Claim = %+v; want nothing during the adder's lease", got)
		}
		// The adder gives it back: due at once, no attempt counted.
		if err := o.Release(t.Context(), "evt_1"); err != nil {
			t.Fatal(err)
		}
		if got := mustClaim(t, o, 10, time.Hour); len(got) != 1 || got[0].Attempts != 0 {
			t.Errorf("Claim after Release = %+v; want evt_1 with 0 attempts", got)
		}
	})

	t.Run("RetryCountsAndDelays", func(t *testing.T) {
		o := setup(t)()
		mustAdd(t, o, "evt_1", []byte("x"), 0)
		mustClaim(t, o, 1, time.Hour)
		if err := o.Retry(t.Context(), "evt_1", 0); err != nil {
			t.Fatal(err)
		}
		got := mustClaim(t, o, 1, time.Hour)
		if len(got) != 1 || got[0].Attempts != 1 {
			t.Fatalf("Claim after Retry(0) = %+v; want evt_1 with 1 attempt", got)
		}
		if err := o.Retry(t.Context(), "evt_1", time.Hour); err != nil {
			t.Fatal(err)
		}
		if got := mustClaim(t, o, 1, time.Hour); len(got) != 0 {
			t.Errorf("Claim after Retry(1h) = %+v; want nothing before the hour", got)
		}
		if err := o.Release(t.Context(), "evt_1"); err != nil {
			t.Fatal(err)
		}
		if got := mustClaim(t, o, 1, time.Hour); len(got) != 1 || got[0].Attempts != 2 {
			t.Errorf("Claim after Release = %+v; want evt_1 with 2 attempts", got)
		}
	})

	t.Run("DoneRemoves", func(t *testing.T) {
		o := setup(t)()
		mustAdd(t, o, "evt_1", []byte("x"), 0)
		if err := o.Done(t.Context(), "evt_1"); err != nil {
			t.Fatal(err)
		}
		if got := mustClaim(t, o, 10, 0); len(got) != 0 {
			t.Errorf("Claim after Done = %+v; want nothing", got)
		}
		if err := o.Retry(t.Context(), "evt_1", 0); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Retry after Done = %v; want ErrNotFound", err)
		}
		if err := o.Release(t.Context(), "evt_1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Release after Done = %v; want ErrNotFound", err)
		}
		if err := o.Done(t.Context(), "evt_1"); err != nil {
			t.Errorf("second Done = %v; want nil", err)
		}
	})

	t.Run("ClaimTakesAtMostN", func(t *testing.T) {
		o := setup(t)()
		for i := range 5 {
			mustAdd(t, o, fmt.Sprintf("evt_%d", i), []byte("x"), 0)
		}
		first := mustClaim(t, o, 2, time.Hour)
		rest := mustClaim(t, o, 10, time.Hour)
		if len(first) != 2 || len(rest) != 3 {
			t.Fatalf("Claim(2), Claim(10) = %d, %d entries; want 2, 3", len(first), len(rest))
		}
		ids := idsOf(append(first, rest...))
		slices.Sort(ids)
		if want := []string{"evt_0", "evt_1", "evt_2", "evt_3", "evt_4"}; !slices.Equal(ids, want) {
			t.Errorf("claimed %v; want %v, each once", ids, want)
		}
	})

	t.Run("ClaimIsExclusiveBetweenOpeners", func(t *testing.T) {
		open := setup(t)
		a, b := open(), open()
		const n = 60
		for i := range n {
			mustAdd(t, a, fmt.Sprintf("evt_%d", i), []byte("x"), 0)
		}
		var mu sync.Mutex
		seen := map[string]int{}
		var wg sync.WaitGroup
		for _, o := range []outbox{a, b, a, b} {
			wg.Go(func() {
				for {
					got, err := o.Claim(context.Background(), 3, time.Hour)
					if err != nil {
						t.Error(err)
						return
					}
					if len(got) == 0 {
						return
					}
					mu.Lock()
					for _, it := range got {
						seen[it.ID]++
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(seen) != n {
			t.Errorf("%d entries claimed; want %d", len(seen), n)
		}
		for id, c := range seen {
			if c != 1 {
				t.Errorf("%s claimed %d times; want once", id, c)
			}
		}
	})

	t.Run("ClaimComesBackAfterItsLease", func(t *testing.T) {
		open := setup(t)
		a, b := open(), open()
		mustAdd(t, a, "evt_1", []byte("x"), 0)
		if got := mustClaim(t, a, 1, 200*time.Millisecond); len(got) != 1 {
			t.Fatalf("Claim = %+v; want evt_1", got)
		}
		// The holder stopped: another opener takes the entry once the
		// lease has run out, not before.
		if got := mustClaim(t, b, 1, time.Hour); len(got) != 0 {
			t.Fatalf("Claim during the lease = %+v; want nothing", got)
		}
		testutil.Eventually(t, "the entry comes back after its lease", func() bool {
			got := mustClaim(t, b, 1, time.Hour)
			return len(got) == 1 && got[0].ID == "evt_1" && got[0].Attempts == 0
		})
	})

	t.Run("RefusesBadArguments", func(t *testing.T) {
		o := setup(t)()
		ctx := t.Context()
		for _, id := range []string{"", "evt 1", "evt\n1", "evt\x001"} {
			if err := o.Add(ctx, id, []byte("x"), 0); err == nil {
				t.Errorf("Add(%q) = nil; want an error", id)
			}
		}
		if err := o.Add(ctx, "evt_1", nil, 0); err == nil {
			t.Errorf("Add with no data = nil; want an error")
		}
		if err := o.Add(ctx, "evt_1", []byte("x"), -time.Second); err == nil {
			t.Errorf("Add with a negative lease = nil; want an error")
		}
		if _, err := o.Claim(ctx, 0, time.Second); err == nil {
			t.Errorf("Claim(0) = nil; want an error")
		}
		if got := mustClaim(t, o, 10, 0); len(got) != 0 {
			t.Errorf("Claim after refused calls = %+v; want nothing stored", got)
		}
	})
}

func mustAdd(t *testing.T, o outbox, id string, data []byte, lease time.Duration) {
	t.Helper()
	if err := o.Add(t.Context(), id, data, lease); err != nil {
		t.Fatalf("Add(%q): %v", id, err)
	}
}

func mustClaim(t *testing.T, o outbox, n int, lease time.Duration) []store.OutboxItem {
	t.Helper()
	got, err := o.Claim(t.Context(), n, lease)
	if err != nil {
		t.Fatalf("Claim(%d, %v): %v", n, lease, err)
	}
	return got
}

func idsOf(items []store.OutboxItem) []string {
	var ids []string
	for _, it := range items {
		ids = append(ids, it.ID)
	}
	return ids
}
