package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/store"
)

// The subtests of Run, one function each, in the order Run runs them.

// testGetMissing checks that Get of a tenant never written is ErrNotFound.
func testGetMissing(t *testing.T, newFixture newFixtureFunc) {
	s := newFixture(t).Open(t)
	if rec, err := s.Get(t.Context(), "nobody"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get(%q) = %+v, %v; want ErrNotFound", "nobody", rec, err)
	}
}

// testRoundTrip checks that Get returns every field Put wrote, at version 1.
func testRoundTrip(t *testing.T, newFixture newFixtureFunc) {
	s := newFixture(t).Open(t)
	tests := []struct {
		name string
		rec  store.TokenRecord
	}{
		{name: "every field", rec: SampleRecord("full")},
		{name: "static token", rec: store.TokenRecord{AccessToken: "pat", State: store.StateActive}},
		{name: "reauthorization required", rec: store.TokenRecord{
			AccessToken: "a", RefreshToken: "r", State: store.StateReauthorizationRequired,
			LastError: "invalid_grant", LastErrorAt: time.Unix(1e9, 0),
		}},
		// The store keeps an empty State as it is; only its indexes
		// count it as active.
		{name: "empty state", rec: store.TokenRecord{AccessToken: "a", RefreshToken: "r"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tenant := "t-" + randomHex(4)
			if v := MustPut(t, s, tenant, tt.rec, 0); v != 1 {
				t.Errorf("Put(%q) = %d; want 1", tenant, v)
			}
			want := tt.rec
			want.Version = 1
			if diff := cmp.Diff(want, MustGet(t, s, tenant)); diff != "" {
				t.Errorf("Get(%q) differs from what Put wrote, at version 1 (-want +got):\n%s", tenant, diff)
			}
		})
	}
}

// testVersionsIncrease checks that each Put over the current version adds one
// to it.
func testVersionsIncrease(t *testing.T, newFixture newFixtureFunc) {
	s := newFixture(t).Open(t)
	for want := int64(1); want <= 4; want++ {
		rec := SampleRecord(fmt.Sprint(want))
		if v := MustPut(t, s, "acme", rec, want-1); v != want {
			t.Fatalf("Put(prev %d) = %d; want %d", want-1, v, want)
		}
		got := MustGet(t, s, "acme")
		if got.Version != want || got.AccessToken != rec.AccessToken {
			t.Fatalf("Get = version %d, %q; want %d, %q", got.Version, got.AccessToken, want, rec.AccessToken)
		}
	}
}

// testLostCondition checks that a Put over another version than the stored
// one is ErrConflict, and writes and publishes nothing.
func testLostCondition(t *testing.T, newFixture newFixtureFunc) {
	tests := []struct {
		name string
		prev int64
	}{
		{name: "stale version", prev: 1},
		{name: "future version", prev: 7},
		{name: "must not exist", prev: 0},
		{name: "negative", prev: -2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, invs := openWatched(t, newFixture)
			MustPut(t, s, "acme", SampleRecord("one"), 0)
			MustPut(t, s, "acme", SampleRecord("two"), 1)
			NextInvalidation(t, invs)
			NextInvalidation(t, invs)

			v, err := s.Put(t.Context(), "acme", SampleRecord("lost"), tt.prev)
			if !errors.Is(err, store.ErrConflict) {
				t.Fatalf("Put(prev %d) = %d, %v; want ErrConflict", tt.prev, v, err)
			}
			checkStillVersion2(t, s, invs, "a conflict")
		})
	}
}

// testAnyVersion checks that a Put with AnyVersion writes over whatever is
// stored, nothing included.
func testAnyVersion(t *testing.T, newFixture newFixtureFunc) {
	s := newFixture(t).Open(t)
	if v := MustPut(t, s, "acme", SampleRecord("a"), store.AnyVersion); v != 1 {
		t.Errorf("Put(AnyVersion) on nothing = %d; want 1", v)
	}
	MustPut(t, s, "acme", SampleRecord("b"), 1)
	if v := MustPut(t, s, "acme", SampleRecord("c"), store.AnyVersion); v != 3 {
		t.Errorf("Put(AnyVersion) on version 2 = %d; want 3", v)
	}
	if got := MustGet(t, s, "acme"); got.AccessToken != "access-c" {
		t.Errorf("Get = %q; want %q", got.AccessToken, "access-c")
	}
}

// testConcurrentPuts checks that of concurrent Puts over one version, one
// wins and the others are ErrConflict.
func testConcurrentPuts(t *testing.T, newFixture newFixtureFunc) {
	s := newFixture(t).Open(t)
	MustPut(t, s, "acme", SampleRecord("base"), 0)
	const writers = 8
	var wins, conflicts atomic.Int64
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			_, err := s.Put(t.Context(), "acme", SampleRecord(fmt.Sprint(i)), 1)
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, store.ErrConflict):
				conflicts.Add(1)
			default:
				t.Errorf("Put: %v", err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 || conflicts.Load() != writers-1 {
		t.Errorf("%d wins, %d conflicts; want 1, %d", wins.Load(), conflicts.Load(), writers-1)
	}
	if got := MustGet(t, s, "acme"); got.Version != 2 {
		t.Errorf("Get.Version = %d; want 2", got.Version)
	}
}

// testDelete checks that Delete forgets the tenant (record, lock, indexes),
// publishes its tombstone's version, can be repeated, and leaves the versions
// going on.
func testDelete(t *testing.T, newFixture newFixtureFunc) {
	s, invs := openWatched(t, newFixture)
	ctx := t.Context()
	MustPut(t, s, "acme", SampleRecord("a"), 0)
	MustPut(t, s, "other", SampleRecord("o"), 0)
	mustLock(t, s, "acme", "owner", time.Minute)
	NextInvalidation(t, invs)
	NextInvalidation(t, invs)

	if removed, err := s.Delete(ctx, "acme"); !removed || err != nil {
		t.Fatalf("Delete of a live record = %v, %v; want true (removed), nil", removed, err)
	}
	if inv := NextInvalidation(t, invs); inv != (store.Invalidation{Tenant: "acme", Version: 1, Deleted: true}) {
		t.Errorf("invalidation = %+v; want acme deleted, its tombstone at version 1", inv)
	}
	if rec, err := s.Get(ctx, "acme"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get after Delete = %+v, %v; want ErrNotFound", rec, err)
	}
	if tenants, _, err := s.List(ctx, "", 10); err != nil || !slices.Equal(tenants, []string{"other"}) {
		t.Errorf("List after Delete = %q, %v; want [other]", tenants, err)
	}
	if due, err := s.DueBefore(ctx, far, 10); err != nil || !slices.Equal(due, []string{"other"}) {
		t.Errorf("DueBefore after Delete = %q, %v; want [other]", due, err)
	}
	if ok, err := s.TryLock(ctx, "acme", "someone else", time.Minute); !ok || err != nil {
		t.Errorf("TryLock after Delete = %v, %v; want true (the lock is gone)", ok, err)
	}
	if removed, err := s.Delete(ctx, "acme"); removed || err != nil {
		t.Errorf("Delete of a deleted tenant = %v, %v; want false (nothing removed), nil", removed, err)
	}
	if removed, err := s.Delete(ctx, "never-put"); removed || err != nil {
		t.Errorf("Delete of an unknown tenant = %v, %v; want false, nil", removed, err)
	}
	// A deleted tenant's versions go on from where they were.
	if v := MustPut(t, s, "acme", SampleRecord("again"), 0); v != 2 {
		t.Errorf("Put after Delete = %d; want 2", v)
	}
}

// testVersionsNeverRestart checks that a writer that read a record before its
// Delete cannot write over the record imported after it.
func testVersionsNeverRestart(t *testing.T, newFixture newFixtureFunc) {
	s, invs := openWatched(t, newFixture)
	ctx := t.Context()
	// A slow writer read version 2 before the tenant was deleted and
	// imported again.
	slow := deleteVersion2(t, s, invs, "acme")

	for _, prev := range []int64{1, 2, 3} {
		if v, err := s.Put(ctx, "acme", SampleRecord("stale"), prev); !errors.Is(err, store.ErrConflict) {
			t.Errorf("Put(prev %d) on a deleted tenant = %d, %v; want ErrConflict", prev, v, err)
		}
	}
	if v := MustPut(t, s, "acme", SampleRecord("reimported"), 0); v != 3 {
		t.Errorf("Put(prev 0) after Delete of version 2 = %d; want 3", v)
	}
	if inv := NextInvalidation(t, invs); inv != (store.Invalidation{Tenant: "acme", Version: 3}) {
		t.Errorf("invalidation of the re-import = %+v; want acme version 3", inv)
	}
	if v, err := s.Put(ctx, "acme", SampleRecord("slow"), slow.Version); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Put(prev %d), the version read before Delete = %d, %v; want ErrConflict", slow.Version, v, err)
	}
	if v, err := s.Put(ctx, "acme", SampleRecord("again"), 0); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Put(prev 0) on a live record = %d, %v; want ErrConflict", v, err)
	}
	if got := MustGet(t, s, "acme"); got.Version != 3 || got.AccessToken != "access-reimported" {
		t.Errorf("Get = version %d, %q; want 3, %q", got.Version, got.AccessToken, "access-reimported")
	}

	mustDelete(t, s, "acme")
	if v := MustPut(t, s, "acme", SampleRecord("imported"), store.AnyVersion); v != 4 {
		t.Errorf("Put(AnyVersion) after Delete of version 3 = %d; want 4", v)
	}
	if v := MustPut(t, s, "acme", SampleRecord("refreshed"), 4); v != 5 {
		t.Errorf("Put(prev 4) = %d; want 5", v)
	}
}

// testRestore checks, in one subtest per case, that Restore writes a record
// back under its own version only where the tenant has nothing, or another
// write-back of a lower version.
func testRestore(t *testing.T, newFixture newFixtureFunc) {
	runSubtests(t, newFixture, []subtest{
		{"no record: written at its version and indexed", testRestoreOnNothing},
		{"record written since the loss: not written, whatever its version", testRestoreOverPut},
		{"older write-back: replaced and reindexed", testRestoreOverOlder},
		{"equal or newer write-back: not written", testRestoreOverNewer},
		{"tombstone: not written", testRestoreOverTombstone},
		{"tombstone of a tenant never put: not written", testRestoreOverTombstoneOfNobody},
		{"bad arguments are refused", testRestoreBadArguments},
	})
}

// testRestoreOnNothing checks that Restore where the tenant has nothing
// writes the record at its own version, publishes it and indexes it.
func testRestoreOnNothing(t *testing.T, newFixture newFixtureFunc) {
	s, invs := openWatched(t, newFixture)
	ctx := t.Context()
	rec := restored("held", 7, store.StateActive)
	mustRestore(t, s, "acme", rec)
	checkRestored(t, s, invs, "acme", rec)
	if due, err := s.DueBefore(ctx, far, 10); err != nil || !slices.Equal(due, []string{"acme"}) {
		t.Errorf("DueBefore = %q, %v; want [acme]", due, err)
	}
	if due, err := s.DueBefore(ctx, rec.Expiry, 10); err != nil || len(due) != 0 {
		t.Errorf("DueBefore(the restored expiry) = %q, %v; want none (indexed at its expiry)", due, err)
	}
	checkCounts(t, s, "after Restore", 1, 0)
	// Versions go on from the restored one.
	if v := MustPut(t, s, "acme", SampleRecord("next"), 7); v != 8 {
		t.Errorf("Put(prev 7) after Restore = %d; want 8", v)
	}
}

// testRestoreOverPut checks that Restore does not write over a record Put
// wrote, whatever the versions.
func testRestoreOverPut(t *testing.T, newFixture newFixtureFunc) {
	s := newFixture(t).Open(t)
	ctx := t.Context()
	MustPut(t, s, "acme", SampleRecord("reconnected"), 0)
	for _, v := range []int64{2, 5} {
		if ok, err := s.Restore(ctx, "acme", restored("held", v, store.StateReauthorizationRequired)); ok || err != nil {
			t.Errorf("Restore(version %d) over a record Put wrote at version 1 = %v, %v; want false, nil", v, ok, err)
		}
	}
	if got := MustGet(t, s, "acme"); got.Version != 1 || got.AccessToken != "access-reconnected" {
		t.Errorf("Get = version %d, %q; want the record Put wrote", got.Version, got.AccessToken)
	}
}

// testRestoreOverOlder checks that Restore replaces, and reindexes, a write-
// back of a lower version.
func testRestoreOverOlder(t *testing.T, newFixture newFixtureFunc) {
	s, invs := openWatched(t, newFixture)
	ctx := t.Context()
	mustRestore(t, s, "acme", restored("stale", 2, store.StateActive))
	NextInvalidation(t, invs)

	rec := restored("held", 5, store.StateReauthorizationRequired)
	mustRestore(t, s, "acme", rec)
	checkRestored(t, s, invs, "acme", rec)
	if due, err := s.DueBefore(ctx, far, 10); err != nil || len(due) != 0 {
		t.Errorf("DueBefore = %q, %v; want none (the restored record needs reauthorization)", due, err)
	}
	checkCounts(t, s, "after Restore", 0, 1)
}

// testRestoreOverNewer checks that Restore does not write over a write-back
// of an equal or higher version, and publishes nothing.
func testRestoreOverNewer(t *testing.T, newFixture newFixtureFunc) {
	tests := []struct {
		name    string
		version int64
	}{{"equal version", 2}, {"older version", 1}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, invs := openWatched(t, newFixture)
			ctx := t.Context()
			mustRestore(t, s, "acme", restored("two", 2, store.StateActive))
			NextInvalidation(t, invs)

			rec := restored("held", tt.version, store.StateReauthorizationRequired)
			if ok, err := s.Restore(ctx, "acme", rec); ok || err != nil {
				t.Fatalf("Restore(version %d) over version 2 = %v, %v; want false, nil", tt.version, ok, err)
			}
			checkCounts(t, s, "after a refused Restore", 1, 0)
			checkStillVersion2(t, s, invs, "a refused Restore")
		})
	}
}

// testRestoreOverTombstone checks that Restore does not write over a
// deletion's tombstone, whatever its version.
func testRestoreOverTombstone(t *testing.T, newFixture newFixtureFunc) {
	s, invs := openWatched(t, newFixture)
	ctx := t.Context()
	deleteVersion2(t, s, invs, "acme")

	for _, v := range []int64{1, 2, 3, 100} {
		if ok, err := s.Restore(ctx, "acme", restored("held", v, store.StateActive)); ok || err != nil {
			t.Errorf("Restore(version %d) over the tombstone of version 2 = %v, %v; want false, nil", v, ok, err)
		}
	}
	if rec, err := s.Get(ctx, "acme"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get = %+v, %v; want ErrNotFound", rec, err)
	}
	if tenants, _, err := s.List(ctx, "", 10); err != nil || len(tenants) != 0 {
		t.Errorf("List = %q, %v; want none", tenants, err)
	}
	if due, err := s.DueBefore(ctx, far, 10); err != nil || len(due) != 0 {
		t.Errorf("DueBefore = %q, %v; want none", due, err)
	}
	checkCounts(t, s, "after refused Restores", 0, 0)
	// The tombstone kept its version.
	checkPublishedNothing(t, s, invs, "refused Restores", "reimported", 0, 3)
}

// testRestoreOverTombstoneOfNobody checks that Restore does not write over
// the tombstone of a tenant never written.
func testRestoreOverTombstoneOfNobody(t *testing.T, newFixture newFixtureFunc) {
	s := newFixture(t).Open(t)
	ctx := t.Context()
	mustDelete(t, s, "ghost")
	if ok, err := s.Restore(ctx, "ghost", restored("held", 4, store.StateActive)); ok || err != nil {
		t.Errorf("Restore(version 4) over the tombstone of a tenant never put = %v, %v; want false, nil", ok, err)
	}
	if rec, err := s.Get(ctx, "ghost"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get = %+v, %v; want ErrNotFound", rec, err)
	}
	if tenants, _, err := s.List(ctx, "", 10); err != nil || len(tenants) != 0 {
		t.Errorf("List = %q, %v; want none", tenants, err)
	}
}

// testRestoreBadArguments checks that Restore refuses a version below 1,
// AnyVersion and a bad tenant, and writes and publishes nothing.
func testRestoreBadArguments(t *testing.T, newFixture newFixtureFunc) {
	s, invs := openWatched(t, newFixture)
	ctx := t.Context()
	MustPut(t, s, "acme", SampleRecord("one"), 0)
	NextInvalidation(t, invs)
	tests := []struct {
		name    string
		tenant  string
		version int64
	}{
		{name: "version 0 on nothing", tenant: "fresh", version: 0},
		{name: "version -1 on nothing", tenant: "fresh", version: -1},
		{name: "version 0 on a record", tenant: "acme", version: 0},
		{name: "AnyVersion on a record", tenant: "acme", version: store.AnyVersion},
		{name: "empty tenant", tenant: "", version: 3},
		{name: "tenant with a brace", tenant: "a{b", version: 3},
	}
	for _, tt := range tests {
		ok, err := s.Restore(ctx, tt.tenant, restored("held", tt.version, store.StateActive))
		if ok || err == nil || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
			t.Errorf("%s: Restore(%q, version %d) = %v, %v; want false and an argument error", tt.name, tt.tenant, tt.version, ok, err)
		}
	}
	if got := MustGet(t, s, "acme"); got.Version != 1 || got.AccessToken != "access-one" {
		t.Errorf("Get(acme) = version %d, %q; want 1, %q", got.Version, got.AccessToken, "access-one")
	}
	if rec, err := s.Get(ctx, "fresh"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get(fresh) = %+v, %v; want ErrNotFound", rec, err)
	}
	if tenants, _, err := s.List(ctx, "", 10); err != nil || !slices.Equal(tenants, []string{"acme"}) {
		t.Errorf("List = %q, %v; want [acme]", tenants, err)
	}
	checkCounts(t, s, "after refused Restores", 1, 0)
	checkPublishedNothing(t, s, invs, "refused Restores", "two", 1, 2)
}

// restored returns SampleRecord(tag) as a replica holds it at version v,
// in state st.
func restored(tag string, v int64, st store.State) store.TokenRecord {
	rec := SampleRecord(tag)
	rec.Version, rec.State = v, st
	return rec
}

// checkRestored fails the test unless s holds rec, at its version, for
// tenant, the only tenant listed, and invs sees its invalidation next.
func checkRestored(t *testing.T, s Store, invs <-chan store.Invalidation, tenant string, rec store.TokenRecord) {
	t.Helper()
	if diff := cmp.Diff(rec, MustGet(t, s, tenant)); diff != "" {
		t.Errorf("Get(%q) differs from the restored record (-want +got):\n%s", tenant, diff)
	}
	if inv := NextInvalidation(t, invs); inv != (store.Invalidation{Tenant: tenant, Version: rec.Version}) {
		t.Errorf("invalidation = %+v; want %s version %d", inv, tenant, rec.Version)
	}
	if tenants, _, err := s.List(t.Context(), "", 10); err != nil || !slices.Equal(tenants, []string{tenant}) {
		t.Errorf("List = %q, %v; want [%s]", tenants, err, tenant)
	}
}

// testEpochIsStable checks that the epoch stays the same across writes and
// stores, and differs between data sets.
func testEpochIsStable(t *testing.T, newFixture newFixtureFunc) {
	f := newFixture(t)
	s1, s2 := f.Open(t), f.Open(t)
	ctx := t.Context()
	first, err := s1.Epoch(ctx)
	if err != nil || first == "" {
		t.Fatalf("Epoch = %q, %v; want a value", first, err)
	}
	MustPut(t, s1, "acme", SampleRecord("a"), 0)
	mustDelete(t, s1, "acme")
	for i, s := range []Store{s1, s2} {
		if got, err := s.Epoch(ctx); err != nil || got != first {
			t.Errorf("store %d: Epoch after writes = %q, %v; want %q", i+1, got, err, first)
		}
	}
	if other, err := newFixture(t).Open(t).Epoch(ctx); err != nil || other == first {
		t.Errorf("Epoch of another data set = %q, %v; want a value other than %q", other, err, first)
	}
}

// testEpochAtOnce checks that stores asking for the first epoch at once all
// get the same one.
func testEpochAtOnce(t *testing.T, newFixture newFixtureFunc) {
	f := newFixture(t)
	const stores = 8
	epochs := make([]string, stores)
	var wg sync.WaitGroup
	for i := range stores {
		s := f.Open(t)
		wg.Go(func() {
			e, err := s.Epoch(t.Context())
			if err != nil {
				t.Errorf("store %d: Epoch: %v", i, err)
			}
			epochs[i] = e
		})
	}
	wg.Wait()
	if epochs[0] == "" || slices.ContainsFunc(epochs, func(e string) bool { return e != epochs[0] }) {
		t.Errorf("Epochs = %q; want one value", epochs)
	}
}

// testDeleteUnknown checks that deleting a tenant never written leaves a
// tombstone of version 0, which neither Restore nor a Put over version 1
// writes over.
func testDeleteUnknown(t *testing.T, newFixture newFixtureFunc) {
	s, invs := openWatched(t, newFixture)
	ctx := t.Context()
	mustDelete(t, s, "ghost")
	// The tombstone of a tenant never put keeps version 0.
	if inv := NextInvalidation(t, invs); inv.Tenant != "ghost" || inv.Version != 0 {
		t.Errorf("invalidation = %+v; want ghost version 0", inv)
	}
	if rec, err := s.Get(ctx, "ghost"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get = %+v, %v; want ErrNotFound", rec, err)
	}
	if tenants, _, err := s.List(ctx, "", 10); err != nil || len(tenants) != 0 {
		t.Errorf("List = %q, %v; want none", tenants, err)
	}
	rec := SampleRecord("lost")
	rec.Version = 1
	if ok, err := s.Restore(ctx, "ghost", rec); ok || err != nil {
		t.Errorf("Restore(version 1) over the tombstone = %v, %v; want false, nil", ok, err)
	}
	if v, err := s.Put(ctx, "ghost", SampleRecord("x"), 1); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Put(prev 1) on the tombstone = %d, %v; want ErrConflict", v, err)
	}
	if v := MustPut(t, s, "ghost", SampleRecord("new"), 0); v != 1 {
		t.Errorf("Put(prev 0) on the tombstone = %d; want 1", v)
	}
	if got := MustGet(t, s, "ghost"); got.Version != 1 || got.AccessToken != "access-new" {
		t.Errorf("Get = version %d, %q; want 1, %q", got.Version, got.AccessToken, "access-new")
	}
}

// testCountByState checks that CountByState follows every write, rewrite,
// deletion and change of state, an empty State counting as active.
func testCountByState(t *testing.T, newFixture newFixtureFunc) {
	s := newFixture(t).Open(t)
	active := func(tag string) store.TokenRecord { return SampleRecord(tag) }
	reauth := func(tag string) store.TokenRecord {
		rec := SampleRecord(tag)
		rec.State = store.StateReauthorizationRequired
		return rec
	}
	checkCounts(t, s, "empty store", 0, 0)

	MustPut(t, s, "a1", active("a1"), 0)
	MustPut(t, s, "a2", active("a2"), 0)
	MustPut(t, s, "a3", store.TokenRecord{AccessToken: "pat"}, 0) // an empty State counts as active
	MustPut(t, s, "r1", reauth("r1"), 0)
	MustPut(t, s, "r2", reauth("r2"), 0)
	MustPut(t, s, "odd", store.TokenRecord{AccessToken: "x", State: "unheard-of"}, 0)
	checkCounts(t, s, "after puts", 3, 2)

	MustPut(t, s, "a1", active("a1 again"), 1)
	checkCounts(t, s, "after a rewrite", 3, 2)

	mustDelete(t, s, "a2")
	mustDelete(t, s, "r2")
	checkCounts(t, s, "after deletes", 2, 1)

	MustPut(t, s, "a1", reauth("a1 revoked"), 2)
	checkCounts(t, s, "after active → reauthorization_required", 1, 2)
	MustPut(t, s, "r1", active("r1 reconnected"), 1)
	checkCounts(t, s, "after reauthorization_required → active", 2, 1)
	MustPut(t, s, "odd", reauth("odd"), 1)
	checkCounts(t, s, "after an unknown state → reauthorization_required", 2, 2)

	MustPut(t, s, "a2", active("a2 reimported"), 0)
	checkCounts(t, s, "after a re-import", 3, 2)
}

// testIndexesFollowLastWrite checks that List, DueBefore and CountByState end
// up describing the last of concurrent writes and deletions, not an earlier
// one.
func testIndexesFollowLastWrite(t *testing.T, newFixture newFixtureFunc) {
	s := newFixture(t).Open(t)
	ctx := t.Context()
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	// Each writer's record is in another state and index position, so
	// that indexes left by an earlier write show.
	record := func(w int) store.TokenRecord {
		rec := store.TokenRecord{AccessToken: fmt.Sprint(w), RefreshToken: "r", Expiry: base.Add(time.Duration(w) * time.Minute)}
		switch w % 3 {
		case 0:
			rec.State = store.StateActive
		case 1:
			rec.State = store.StateReauthorizationRequired
		}
		return rec
	}
	// Short bursts, each ending in a race between its last writes'
	// index updates.
	const bursts, writers = 40, 6
	for burst := range bursts {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for w := range writers {
			wg.Go(func() {
				<-start
				if (w+burst)%writers == 0 {
					if _, err := s.Delete(ctx, "acme"); err != nil {
						t.Errorf("Delete: %v", err)
					}
					return
				}
				if _, err := s.Put(ctx, "acme", record(w), store.AnyVersion); err != nil {
					t.Errorf("Put: %v", err)
				}
			})
		}
		close(start)
		wg.Wait()

		var wantDue, wantListed []string
		var wantActive, wantReauth int64
		last, err := s.Get(ctx, "acme")
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			t.Fatalf("Get: %v", err)
		default:
			wantListed = []string{"acme"}
			if last.State == store.StateReauthorizationRequired {
				wantReauth = 1
			} else {
				wantActive = 1
				wantDue = []string{"acme"}
			}
		}
		if got, _, err := s.List(ctx, "", 10); err != nil || !slices.Equal(got, wantListed) {
			t.Fatalf("burst %d: List = %q, %v; want %q", burst, got, err, wantListed)
		}
		due, err := s.DueBefore(ctx, base.Add(time.Hour), 10)
		if err != nil || !slices.Equal(due, wantDue) {
			t.Fatalf("burst %d: DueBefore = %q, %v; want %q", burst, due, err, wantDue)
		}
		if len(due) == 1 {
			// The score is the last record's expiry, not an earlier one's.
			if got, err := s.DueBefore(ctx, last.Expiry, 10); err != nil || len(got) != 0 {
				t.Fatalf("burst %d: DueBefore(the last expiry) = %q, %v; want none", burst, got, err)
			}
		}
		checkCounts(t, s, fmt.Sprintf("burst %d", burst), wantActive, wantReauth)
		if t.Failed() {
			return
		}
	}
}

// testList checks that List pages through the tenants in ascending byte
// order.
func testList(t *testing.T, newFixture newFixtureFunc) {
	s := newFixture(t).Open(t)
	for _, tenant := range []string{"t-c", "t-a", "t-e", "T-z", "t-b", "t-d"} {
		MustPut(t, s, tenant, SampleRecord(tenant), 0)
	}
	// A rewrite does not list a tenant twice.
	MustPut(t, s, "t-c", SampleRecord("again"), 1)
	tests := []struct {
		name     string
		after    string
		limit    int
		want     []string
		wantMore bool
	}{
		{name: "first page", after: "", limit: 2, want: []string{"T-z", "t-a"}, wantMore: true},
		{name: "middle page", after: "t-a", limit: 2, want: []string{"t-b", "t-c"}, wantMore: true},
		{name: "exact last page", after: "t-c", limit: 2, want: []string{"t-d", "t-e"}, wantMore: false},
		{name: "short last page", after: "t-c", limit: 5, want: []string{"t-d", "t-e"}, wantMore: false},
		{name: "after an unknown id", after: "t-bb", limit: 2, want: []string{"t-c", "t-d"}, wantMore: true},
		{name: "after the last", after: "t-e", limit: 2, want: nil, wantMore: false},
		{name: "all", after: "", limit: 100, want: []string{"T-z", "t-a", "t-b", "t-c", "t-d", "t-e"}, wantMore: false},
		{name: "one", after: "", limit: 1, want: []string{"T-z"}, wantMore: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, more, err := s.List(t.Context(), tt.after, tt.limit)
			if err != nil {
				t.Fatalf("List(%q, %d): %v", tt.after, tt.limit, err)
			}
			if !slices.Equal(got, tt.want) || more != tt.wantMore {
				t.Errorf("List(%q, %d) = %q, %v; want %q, %v", tt.after, tt.limit, got, more, tt.want, tt.wantMore)
			}
		})
	}
}

// testDueBefore checks that DueBefore lists the refreshable tokens of active
// tenants that expire before a time, soonest first, and follows their
// changes.
func testDueBefore(t *testing.T, newFixture newFixtureFunc) {
	s := newFixture(t).Open(t)
	ctx := t.Context()
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	put := func(tenant string, rec store.TokenRecord) {
		t.Helper()
		MustPut(t, s, tenant, rec, store.AnyVersion)
	}
	refreshable := func(expiry time.Time) store.TokenRecord {
		return store.TokenRecord{AccessToken: "a", RefreshToken: "r", Expiry: expiry, State: store.StateActive}
	}
	put("in-3m", refreshable(base.Add(3*time.Minute)))
	put("in-1m", refreshable(base.Add(1*time.Minute)))
	put("in-2m", refreshable(base.Add(2*time.Minute)))
	put("also-2m", refreshable(base.Add(2*time.Minute)))
	put("static", store.TokenRecord{AccessToken: "pat", Expiry: base, State: store.StateActive})
	put("never-expires", refreshable(time.Time{}))
	put("revoked", store.TokenRecord{AccessToken: "a", RefreshToken: "r", Expiry: base, State: store.StateReauthorizationRequired})

	check := func(name string, before time.Time, limit int, want []string) {
		t.Helper()
		got, err := s.DueBefore(ctx, before, limit)
		if err != nil {
			t.Fatalf("%s: DueBefore: %v", name, err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: DueBefore(base+%v, %d) = %q; want %q", name, before.Sub(base), limit, got, want)
		}
	}
	check("all", base.Add(time.Hour), 10, []string{"in-1m", "also-2m", "in-2m", "in-3m"})
	check("limit", base.Add(time.Hour), 2, []string{"in-1m", "also-2m"})
	check("before excludes equal", base.Add(2*time.Minute), 10, []string{"in-1m"})
	check("none yet", base, 10, nil)

	put("in-3m", refreshable(base.Add(30*time.Second)))
	check("expiry moved", base.Add(time.Hour), 10, []string{"in-3m", "in-1m", "also-2m", "in-2m"})
	put("in-2m", store.TokenRecord{AccessToken: "a", RefreshToken: "r", Expiry: base, State: store.StateReauthorizationRequired})
	check("revoked later", base.Add(time.Hour), 10, []string{"in-3m", "in-1m", "also-2m"})
	put("in-1m", refreshable(time.Time{}))
	check("expiry cleared", base.Add(time.Hour), 10, []string{"in-3m", "also-2m"})
	mustDelete(t, s, "also-2m")
	check("deleted", base.Add(time.Hour), 10, []string{"in-3m"})
	put("static", refreshable(base))
	check("refresh token added", base.Add(time.Hour), 10, []string{"static", "in-3m"})
	put("no-state", store.TokenRecord{AccessToken: "a", RefreshToken: "r", Expiry: base.Add(time.Minute)})
	check("an empty state counts as active", base.Add(time.Hour), 10, []string{"static", "in-3m", "no-state"})
}

// testLockIsExclusive checks that a lock is held by one owner at a time, and
// that only its owner renews or releases it.
func testLockIsExclusive(t *testing.T, newFixture newFixtureFunc) {
	f := newFixture(t)
	s1, s2 := f.Open(t), f.Open(t)
	ctx := t.Context()
	steps := []struct {
		name string
		do   func() (bool, error)
		want bool
	}{
		{"owner takes", func() (bool, error) { return s1.TryLock(ctx, "acme", "one", time.Minute) }, true},
		{"other cannot take", func() (bool, error) { return s2.TryLock(ctx, "acme", "two", time.Minute) }, false},
		{"owner cannot take again", func() (bool, error) { return s1.TryLock(ctx, "acme", "one", time.Minute) }, false},
		{"other tenant is free", func() (bool, error) { return s2.TryLock(ctx, "other", "two", time.Minute) }, true},
		{"other cannot renew", func() (bool, error) { return s2.RenewLock(ctx, "acme", "two", time.Minute) }, false},
		{"other cannot unlock", func() (bool, error) { return true, s2.Unlock(ctx, "acme", "two") }, true},
		{"still held", func() (bool, error) { return s2.TryLock(ctx, "acme", "two", time.Minute) }, false},
		{"owner renews", func() (bool, error) { return s1.RenewLock(ctx, "acme", "one", time.Minute) }, true},
		{"owner unlocks", func() (bool, error) { return true, s1.Unlock(ctx, "acme", "one") }, true},
		{"unlocked renew fails", func() (bool, error) { return s1.RenewLock(ctx, "acme", "one", time.Minute) }, false},
		{"unlock of a free lock", func() (bool, error) { return true, s1.Unlock(ctx, "acme", "one") }, true},
		{"other takes", func() (bool, error) { return s2.TryLock(ctx, "acme", "two", time.Minute) }, true},
	}
	for _, step := range steps {
		got, err := step.do()
		if err != nil || got != step.want {
			t.Fatalf("%s: got %v, %v; want %v", step.name, got, err, step.want)
		}
	}
}

// testLockExpires checks that a lock not renewed expires after its ttl.
func testLockExpires(t *testing.T, newFixture newFixtureFunc) {
	f := newFixture(t)
	s := f.Open(t)
	mustLock(t, s, "acme", "one", shortTTL)
	waitLockExpired(t, f, s, "acme", shortTTL)
	if ok, err := s.RenewLock(t.Context(), "acme", "one", time.Minute); ok || err != nil {
		t.Errorf("RenewLock by the expired owner = %v, %v; want false", ok, err)
	}
}

// testRenewLock checks that RenewLock extends a lock beyond its first ttl.
func testRenewLock(t *testing.T, newFixture newFixtureFunc) {
	f := newFixture(t)
	s := f.Open(t)
	ctx := t.Context()
	mustLock(t, s, "acme", "one", shortTTL)
	if ok, err := s.RenewLock(ctx, "acme", "one", time.Hour); !ok || err != nil {
		t.Fatalf("RenewLock = %v, %v; want true", ok, err)
	}
	letExpire(t, f, s, shortTTL)
	if ok, err := s.TryLock(ctx, "acme", "two", time.Minute); ok || err != nil {
		t.Errorf("TryLock after the first ttl = %v, %v; want false (renewed)", ok, err)
	}
}

// testSubscribe checks that every subscriber sees every write and deletion,
// in order, and no resync without a reconnect.
func testSubscribe(t *testing.T, newFixture newFixtureFunc) {
	f := newFixture(t)
	pub := f.Open(t)
	invs1, resyncs := Subscribe(t, f.Open(t))
	invs2, _ := Subscribe(t, f.Open(t))

	MustPut(t, pub, "acme", SampleRecord("a"), 0)
	MustPut(t, pub, "acme", SampleRecord("b"), 1)
	mustDelete(t, pub, "acme")
	want := []store.Invalidation{{Tenant: "acme", Version: 1}, {Tenant: "acme", Version: 2}, {Tenant: "acme", Version: 2, Deleted: true}}
	for i, invs := range []<-chan store.Invalidation{invs1, invs2} {
		for _, w := range want {
			if got := NextInvalidation(t, invs); got != w {
				t.Errorf("subscriber %d: invalidation = %+v; want %+v", i+1, got, w)
			}
		}
	}
	if len(resyncs) != 0 {
		t.Errorf("onResync called %d times without a reconnect", len(resyncs))
	}
}

// testHeartbeat checks that every subscriber hears a heartbeat, and that an
// empty id is refused.
func testHeartbeat(t *testing.T, newFixture newFixtureFunc) {
	f := newFixture(t)
	pub := f.Open(t)
	invs1, _ := Subscribe(t, f.Open(t))
	invs2, _ := Subscribe(t, f.Open(t))
	if err := pub.Heartbeat(t.Context(), "replica-1"); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	for i, invs := range []<-chan store.Invalidation{invs1, invs2} {
		if got := NextInvalidation(t, invs); got != (store.Invalidation{Heartbeat: "replica-1"}) {
			t.Errorf("subscriber %d: got %+v; want the heartbeat of replica-1", i+1, got)
		}
	}
	if err := pub.Heartbeat(t.Context(), ""); err == nil {
		t.Error("Heartbeat with an empty id: nil error; want it refused")
	}
}

// testSubscribeStops checks that a subscription ends with its context.
func testSubscribeStops(t *testing.T, newFixture newFixtureFunc) {
	f := newFixture(t)
	pub := f.Open(t)
	ctx, cancel := context.WithCancel(t.Context())
	var calls atomic.Int64
	if err := f.Open(t).Subscribe(ctx, func(store.Invalidation) { calls.Add(1) }, nil); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	invs, _ := Subscribe(t, f.Open(t))
	MustPut(t, pub, "acme", SampleRecord("a"), 0)
	NextInvalidation(t, invs)
	testutil.Eventually(t, "the first subscriber is called", func() bool { return calls.Load() == 1 })
	cancel()
	for v := int64(2); v <= 4; v++ {
		MustPut(t, pub, "acme", SampleRecord("b"), v-1)
		NextInvalidation(t, invs)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("onInvalidate called %d times after its context ended; want 0", n-1)
	}
}

// testResync checks that a subscription whose connection was lost calls
// onResync and then goes on delivering invalidations.
func testResync(t *testing.T, newFixture newFixtureFunc) {
	f := newFixture(t)
	if f.DropConnections == nil {
		t.Skip("this store's subscriptions cannot lose a connection")
	}
	pub := f.Open(t)
	invs, resyncs := Subscribe(t, f.Open(t))
	MustPut(t, pub, "acme", SampleRecord("a"), 0)
	NextInvalidation(t, invs)

	f.DropConnections(t)
	select {
	case <-resyncs:
	case <-time.After(waitTimeout):
		t.Fatalf("no onResync within %v of losing the connection", waitTimeout)
	}
	MustPut(t, pub, "acme", SampleRecord("b"), 1)
	if got := NextInvalidation(t, invs); got != (store.Invalidation{Tenant: "acme", Version: 2}) {
		t.Errorf("invalidation after resync = %+v; want acme version 2", got)
	}
}

// testOAuthStateTakenOnce checks that an OAuth state round-trips and can be
// taken only once.
func testOAuthStateTakenOnce(t *testing.T, newFixture newFixtureFunc) {
	s := newFixture(t).Open(t)
	ctx := t.Context()
	want := store.OAuthState{
		Tenant:       "acme",
		ReturnTo:     "https://app.example/settings?x=1",
		CodeVerifier: "verifier-" + randomHex(16),
		RedirectURL:  "https://proxy.example/oauth/callback",
		CreatedAt:    time.Date(2030, 1, 1, 0, 0, 0, 5, time.UTC),
	}
	if err := s.PutOAuthState(ctx, "state-1", want, time.Minute); err != nil {
		t.Fatalf("PutOAuthState: %v", err)
	}
	got, err := s.TakeOAuthState(ctx, "state-1")
	if err != nil {
		t.Fatalf("TakeOAuthState: %v", err)
	}
	if got.Tenant != want.Tenant || got.ReturnTo != want.ReturnTo || got.CodeVerifier != want.CodeVerifier ||
		got.RedirectURL != want.RedirectURL || !got.CreatedAt.Equal(want.CreatedAt) {
		t.Errorf("TakeOAuthState = %+v; want %+v", got, want)
	}
	for _, name := range []string{"state-1", "never-put"} {
		if st, err := s.TakeOAuthState(ctx, name); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("TakeOAuthState(%q) = %+v, %v; want ErrNotFound", name, st, err)
		}
	}
}

// testOAuthStateExpires checks that an OAuth state expires after its ttl.
func testOAuthStateExpires(t *testing.T, newFixture newFixtureFunc) {
	f := newFixture(t)
	s := f.Open(t)
	ctx := t.Context()
	if err := s.PutOAuthState(ctx, "short", store.OAuthState{Tenant: "acme"}, shortTTL); err != nil {
		t.Fatalf("PutOAuthState: %v", err)
	}
	if err := s.PutOAuthState(ctx, "long", store.OAuthState{Tenant: "acme"}, time.Hour); err != nil {
		t.Fatalf("PutOAuthState: %v", err)
	}
	letExpire(t, f, s, shortTTL)
	if st, err := s.TakeOAuthState(ctx, "short"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("TakeOAuthState after its ttl = %+v, %v; want ErrNotFound", st, err)
	}
	if _, err := s.TakeOAuthState(ctx, "long"); err != nil {
		t.Errorf("TakeOAuthState of a live state: %v", err)
	}
}

// testBadArguments checks that every method refuses the arguments the
// contract names (an empty tenant, a brace or a blank in one, a limit below
// 1, a ttl below 1 ms), and that a refused call writes nothing.
func testBadArguments(t *testing.T, newFixture newFixtureFunc) {
	s := newFixture(t).Open(t)
	ctx := t.Context()
	calls := []struct {
		name string
		call func() error
	}{
		{"Get empty tenant", func() error { _, err := s.Get(ctx, ""); return err }},
		{"Put empty tenant", func() error { _, err := s.Put(ctx, "", SampleRecord("x"), 0); return err }},
		{"Put tenant with a brace", func() error { _, err := s.Put(ctx, "a}b", SampleRecord("x"), 0); return err }},
		{"Put tenant with a blank", func() error { _, err := s.Put(ctx, "a b", SampleRecord("x"), 0); return err }},
		{"Delete empty tenant", func() error { _, err := s.Delete(ctx, ""); return err }},
		{"List limit 0", func() error { _, _, err := s.List(ctx, "", 0); return err }},
		{"DueBefore limit -1", func() error { _, err := s.DueBefore(ctx, time.Now(), -1); return err }},
		{"TryLock ttl 0", func() error { _, err := s.TryLock(ctx, "acme", "o", 0); return err }},
		{"RenewLock ttl below 1ms", func() error { _, err := s.RenewLock(ctx, "acme", "o", time.Microsecond); return err }},
		{"PutOAuthState ttl 0", func() error { return s.PutOAuthState(ctx, "s", store.OAuthState{}, 0) }},
	}
	for _, c := range calls {
		if err := c.call(); err == nil || errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s = %v; want an argument error", c.name, err)
		}
	}
	if tenants, _, err := s.List(ctx, "", 10); err != nil || len(tenants) != 0 {
		t.Errorf("List after refused calls = %q, %v; want nothing written", tenants, err)
	}
}

// testPing checks that a reachable store answers Ping.
func testPing(t *testing.T, newFixture newFixtureFunc) {
	if err := newFixture(t).Open(t).Ping(t.Context()); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

// The helpers of the subtests.

// checkCounts fails the test unless s counts active and reauth tenants in
// those states.
func checkCounts(t *testing.T, s Store, what string, active, reauth int64) {
	t.Helper()
	got, err := s.CountByState(t.Context())
	if err != nil {
		t.Fatalf("CountByState: %v", err)
	}
	want := map[store.State]int64{store.StateActive: active, store.StateReauthorizationRequired: reauth}
	if !maps.Equal(got, want) {
		t.Errorf("%s: CountByState = %v; want %v", what, got, want)
	}
}

// letExpire returns once anything stored with ttl before the call has
// expired: it takes a marker lock with ttl after them, lets the time pass,
// and polls until the marker can be taken again.
func letExpire(t *testing.T, f *Fixture, s Store, ttl time.Duration) {
	t.Helper()
	marker := "expiry-marker-" + randomHex(4)
	mustLock(t, s, marker, "first", ttl)
	waitLockExpired(t, f, s, marker, ttl)
}

// waitLockExpired lets ttl pass and returns once the tenant's lock, taken
// with ttl, can be taken again.
func waitLockExpired(t *testing.T, f *Fixture, s Store, tenant string, ttl time.Duration) {
	t.Helper()
	if f.Elapse != nil {
		f.Elapse(ttl + time.Millisecond)
	}
	testutil.Eventually(t, "a lock of "+ttl.String()+" expires", func() bool {
		ok, err := s.TryLock(t.Context(), tenant, "second", time.Minute)
		if err != nil {
			t.Fatalf("TryLock(%q): %v", tenant, err)
		}
		return ok
	})
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// openWatched opens a store over a fresh fixture, and subscribes another
// store over the same data, as another replica's: it returns the store and
// the invalidations the other sees.
func openWatched(t *testing.T, newFixture newFixtureFunc) (Store, <-chan store.Invalidation) {
	t.Helper()
	f := newFixture(t)
	s := f.Open(t)
	invs, _ := Subscribe(t, f.Open(t))
	return s, invs
}

// mustRestore restores rec for tenant, failing the test unless Restore
// wrote it.
func mustRestore(t *testing.T, s Store, tenant string, rec store.TokenRecord) {
	t.Helper()
	if ok, err := s.Restore(t.Context(), tenant, rec); !ok || err != nil {
		t.Fatalf("Restore(%q, version %d) = %v, %v; want true, nil", tenant, rec.Version, ok, err)
	}
}

// mustLock takes the tenant's lock for owner for ttl, failing the test
// unless it did.
func mustLock(t *testing.T, s Store, tenant, owner string, ttl time.Duration) {
	t.Helper()
	if ok, err := s.TryLock(t.Context(), tenant, owner, ttl); !ok || err != nil {
		t.Fatalf("TryLock(%q, %q) = %v, %v; want true", tenant, owner, ok, err)
	}
}

// mustDelete deletes the tenant, failing the test if it cannot.
func mustDelete(t *testing.T, s Store, tenant string) {
	t.Helper()
	if _, err := s.Delete(t.Context(), tenant); err != nil {
		t.Fatalf("Delete(%q): %v", tenant, err)
	}
}

// deleteVersion2 writes the tenant twice and deletes it, leaving its
// tombstone at version 2, and returns the record as it was read just
// before the Delete. It takes the three invalidations from invs.
func deleteVersion2(t *testing.T, s Store, invs <-chan store.Invalidation, tenant string) store.TokenRecord {
	t.Helper()
	MustPut(t, s, tenant, SampleRecord("one"), 0)
	MustPut(t, s, tenant, SampleRecord("two"), 1)
	read := MustGet(t, s, tenant)
	mustDelete(t, s, tenant)
	for range 3 {
		NextInvalidation(t, invs)
	}
	return read
}

// checkStillVersion2 fails the test unless acme still holds the record
// tagged "two" at version 2 after what, which published nothing.
func checkStillVersion2(t *testing.T, s Store, invs <-chan store.Invalidation, what string) {
	t.Helper()
	if got := MustGet(t, s, "acme"); got.Version != 2 || got.AccessToken != "access-two" {
		t.Errorf("Get after %s = version %d, %q; want 2, %q", what, got.Version, got.AccessToken, "access-two")
	}
	checkPublishedNothing(t, s, invs, what, "three", 2, 3)
}

// checkPublishedNothing fails the test unless what, just done to acme,
// published nothing and left its version where it was: it writes acme's
// record tagged tag over version prev, and wants that write to get version
// want and to be the next invalidation invs sees.
func checkPublishedNothing(t *testing.T, s Store, invs <-chan store.Invalidation, what, tag string, prev, want int64) {
	t.Helper()
	if v := MustPut(t, s, "acme", SampleRecord(tag), prev); v != want {
		t.Errorf("Put(prev %d) after %s = %d; want %d", prev, what, v, want)
	}
	if inv := NextInvalidation(t, invs); inv != (store.Invalidation{Tenant: "acme", Version: want}) {
		t.Errorf("invalidation after %s = %+v; want acme version %d (%[1]s published nothing)", what, inv, want)
	}
}
