// Package storetest checks that a store keeps the contract that auth
// defines (auth.Store), as testing/fstest.TestFS checks a file system: an
// implementation's tests call Run with a function that makes a fresh,
// empty data set of that implementation, and Run checks the contract on it
// in named subtests.
//
// Beside Run, it offers the helpers those subtests use, for an
// implementation's own tests: SampleRecord, MustPut, MustGet, Subscribe and
// NextInvalidation.
package storetest

import (
	"context"
	"testing"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/store"
)

// Store is what Run checks: the store contract that auth defines, and
// CountByState, which every store has beside it for the tenants-by-state
// metric.
type Store interface {
	auth.Store
	CountByState(ctx context.Context) (map[store.State]int64, error)
}

// A Fixture is one fresh, empty data set of the implementation under test,
// and the means to reach it.
type Fixture struct {
	// Open returns a store over the fixture's data. Stores opened on one
	// fixture share the data as replicas do: for Redis, each is a new client
	// on the same server and key prefix; for Memory, each is the one Memory.
	Open func(t *testing.T) Store
	// Elapse lets d pass for the TTLs of a store whose clock is fake
	// (Memory's Now, miniredis, whose TTLs move only when told). Nil means
	// the store's time passes by itself (a real Redis): the subtests then
	// poll for the effect.
	Elapse func(d time.Duration)
	// DropConnections breaks the fixture's pub/sub connections, as a network
	// failure would. Nil means they cannot break (Memory): the subtest of
	// the resync that follows a lost connection is then skipped.
	DropConnections func(t *testing.T)
}

// newFixtureFunc is the argument of Run: it makes a fresh Fixture, and
// removes its data when the test ends.
type newFixtureFunc = func(t *testing.T) *Fixture

// Run checks, in one subtest per rule, that the stores that newFixture's
// fixtures open keep the store contract: versions, tombstones and
// conditional writes, Restore, the epoch, the indexes (List, DueBefore,
// CountByState), locks, invalidations and heartbeats, OAuth states, and the
// refusal of bad arguments. Every subtest calls newFixture for a data set of
// its own.
func Run(t *testing.T, newFixture func(t *testing.T) *Fixture) {
	runSubtests(t, newFixture, contract)
}

// A subtest is one named check of the contract.
type subtest struct {
	name string
	test func(t *testing.T, newFixture newFixtureFunc)
}

// contract is what Run checks.
var contract = []subtest{
	{"get missing is ErrNotFound", testGetMissing},
	{"round trip of every field", testRoundTrip},
	{"versions increase by one", testVersionsIncrease},
	{"a lost condition writes nothing", testLostCondition},
	{"AnyVersion writes whatever is stored", testAnyVersion},
	{"concurrent conditional writes: one wins", testConcurrentPuts},
	{"delete", testDelete},
	{"versions never restart", testVersionsNeverRestart},
	{"restore writes only where nothing or an older record is", testRestore},
	{"epoch is stable", testEpochIsStable},
	{"epoch is the same for stores that ask at once", testEpochAtOnce},
	{"delete of an unknown tenant leaves a tombstone", testDeleteUnknown},
	{"count by state", testCountByState},
	{"indexes follow the last of concurrent writes", testIndexesFollowLastWrite},
	{"list pages in order", testList},
	{"due before", testDueBefore},
	{"lock is exclusive", testLockIsExclusive},
	{"lock expires", testLockExpires},
	{"renew extends the lock", testRenewLock},
	{"subscribe reaches every subscriber", testSubscribe},
	{"heartbeats reach every subscriber", testHeartbeat},
	{"subscribe stops with its context", testSubscribeStops},
	{"subscribe resyncs after a lost connection", testResync},
	{"oauth state is taken once", testOAuthStateTakenOnce},
	{"oauth state expires", testOAuthStateExpires},
	{"bad arguments are refused", testBadArguments},
	{"ping", testPing},
}

// runSubtests runs each of subtests in a subtest of t, with newFixture.
func runSubtests(t *testing.T, newFixture newFixtureFunc, subtests []subtest) {
	for _, st := range subtests {
		t.Run(st.name, func(t *testing.T) { st.test(t, newFixture) })
	}
}

const (
	// waitTimeout bounds every wait for an event in the subtests.
	waitTimeout = 10 * time.Second
	// shortTTL is the ttl of the locks and OAuth states that the subtests
	// let expire.
	shortTTL = 200 * time.Millisecond
)

// far is a time after every expiry the subtests write.
var far = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)

// SampleRecord returns a record with its tokens, expiry, state, times and
// last error set (RefreshForced and RestoredAt are left zero), tagged so
// that records differ: its tokens are "access-"+tag and "refresh-"+tag, its
// state is active, and its Version (which Put ignores) is 99.
func SampleRecord(tag string) store.TokenRecord {
	zone := time.FixedZone("UTC+2", 2*60*60)
	return store.TokenRecord{
		AccessToken:  "access-" + tag,
		RefreshToken: "refresh-" + tag,
		Expiry:       time.Date(2030, 6, 1, 12, 0, 0, 123456789, zone),
		State:        store.StateActive,
		Version:      99, // ignored by Put
		UpdatedAt:    time.Date(2030, 5, 1, 12, 0, 0, 1, zone),
		LastRefresh:  time.Date(2030, 5, 1, 11, 0, 0, 0, time.UTC),
		LastError:    "token endpoint answered 500 (" + tag + ")",
		LastErrorAt:  time.Date(2030, 4, 1, 11, 0, 0, 0, time.UTC),
	}
}

// MustPut writes rec for tenant over version prev and returns the new
// version, failing the test if it cannot.
func MustPut(t *testing.T, s Store, tenant string, rec store.TokenRecord, prev int64) int64 {
	t.Helper()
	v, err := s.Put(t.Context(), tenant, rec, prev)
	if err != nil {
		t.Fatalf("Put(%q, prev %d): %v", tenant, prev, err)
	}
	return v
}

// MustGet reads the tenant's record, failing the test if it cannot.
func MustGet(t *testing.T, s Store, tenant string) store.TokenRecord {
	t.Helper()
	rec, err := s.Get(t.Context(), tenant)
	if err != nil {
		t.Fatalf("Get(%q): %v", tenant, err)
	}
	return withoutAuthorization(t, rec)
}

// withoutAuthorization checks the record's Authorization, which a store may
// leave empty or set to the header value of its access token, and returns
// the record without it, as it was written.
func withoutAuthorization(t *testing.T, rec store.TokenRecord) store.TokenRecord {
	t.Helper()
	if rec.Authorization != "" && rec.Authorization != "Bearer "+rec.AccessToken {
		t.Errorf("Authorization of a record whose access token is %d bytes is %d bytes, not \"Bearer \" and the token", len(rec.AccessToken), len(rec.Authorization))
	}
	rec.Authorization = ""
	return rec
}

// Subscribe subscribes s for the rest of the test and returns the
// invalidations and the resyncs it sees, each buffered up to 100; beyond
// that they are dropped, since callbacks must not block.
func Subscribe(t *testing.T, s Store) (<-chan store.Invalidation, <-chan struct{}) {
	t.Helper()
	invs := make(chan store.Invalidation, 100)
	resyncs := make(chan struct{}, 100)
	err := s.Subscribe(t.Context(),
		func(inv store.Invalidation) {
			select {
			case invs <- inv:
			default: // Callbacks must not block; the test would fail anyway.
			}
		},
		func() {
			select {
			case resyncs <- struct{}{}:
			default:
			}
		})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	return invs, resyncs
}

// NextInvalidation returns the next invalidation from ch, failing the test
// if none arrives within 10 s.
func NextInvalidation(t *testing.T, ch <-chan store.Invalidation) store.Invalidation {
	t.Helper()
	select {
	case inv := <-ch:
		return inv
	case <-time.After(waitTimeout):
		t.Fatalf("no invalidation within %v", waitTimeout)
		return store.Invalidation{}
	}
}
