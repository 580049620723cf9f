package auth_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/store"
)

// gateGets holds every Get of the tenant, while armed, until two replicas'
// Gets are in: the interleaving of two DELETEs that reach two replicas at
// the same moment.
type gateGets struct {
	auth.Store
	armed   *atomic.Bool
	arrived *atomic.Int32
	both    chan struct{}
	once    *sync.Once
}

func (s gateGets) Get(ctx context.Context, tenant string) (store.TokenRecord, error) {
	rec, err := s.Store.Get(ctx, tenant)
	if s.armed.Load() {
		if s.arrived.Add(1) == 2 {
			s.once.Do(func() { close(s.both) })
		}
		select {
		case <-s.both:
		case <-time.After(5 * time.Second):
		}
	}
	return rec, err
}

// Two DELETEs of one tenant, on two replicas at once: one deletion, so one
// tenant.deleted event. Forget reads, then deletes: both replicas read the
// record before either deletes it, and both tell.
func TestAttackRacingForgetsTellDeletedOnce(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	shared := store.NewMemory()
	got := newChanges()
	var armed atomic.Bool
	var arrived atomic.Int32
	both, once := make(chan struct{}), &sync.Once{}
	var replicas []*auth.Tokens
	for range 2 {
		st := gateGets{Store: shared, armed: &armed, arrived: &arrived, both: both, once: once}
		replicas = append(replicas, replica(t, st, double, notifyTo(got)))
	}
	g := double.NewGrant()
	importGrant(t, replicas[0], "acme", g, g.Expiry)

	armed.Store(true)
	var wg sync.WaitGroup
	for _, r := range replicas {
		wg.Go(func() {
			if err := r.Forget(context.Background(), "acme"); err != nil {
				t.Errorf("Forget: %v", err)
			}
		})
	}
	wg.Wait()
	got.expect(t, auth.ChangeDeleted, "acme", 1)
}

// deleteThenFail deletes, then answers an error once: the invalidation that
// tells other replicas failed after the record was gone (Delete's contract
// allows it, and says to repeat).
type deleteThenFail struct {
	auth.Store
	fail atomic.Bool
}

func (s *deleteThenFail) Delete(ctx context.Context, tenant string) (bool, error) {
	removed, err := s.Store.Delete(ctx, tenant)
	if err == nil && s.fail.CompareAndSwap(true, false) {
		return removed, errors.New("store: delete: publish: connection reset")
	}
	return removed, err
}

// A DELETE whose store answer is an error after the record was deleted,
// repeated as the 503 says: the tenant is gone, but tenant.deleted is never
// told (the first call fails, the second finds nothing to delete).
func TestAttackForgetRepeatedAfterAFailedInvalidationTellsDeleted(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	got := newChanges()
	st := &deleteThenFail{Store: store.NewMemory()}
	tokens := replica(t, st, double, notifyTo(got))
	g := double.NewGrant()
	importGrant(t, tokens, "acme", g, g.Expiry)

	st.fail.Store(true)
	if err := tokens.Forget(t.Context(), "acme"); err == nil {
		t.Fatal("Forget with the invalidation failing = nil; want an error asking for a repeat")
	}
	if err := tokens.Forget(t.Context(), "acme"); err != nil {
		t.Fatalf("repeated Forget = %v", err)
	}
	if _, err := st.Get(t.Context(), "acme"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the record is still there: %v", err)
	}
	got.expect(t, auth.ChangeDeleted, "acme", 1)
}
