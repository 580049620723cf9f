package store_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/store"
)

// The schedule in Redis and the one in process place calls alike, through
// any interleaving of reservations, releases and pauses: a replica that
// falls back to its local schedule paces by the same rules.
func TestAttackRedisAndLocalSchedulesAgree(t *testing.T) {
	rule := store.RateRule{Limit: 3, Period: 20 * time.Second, Guard: time.Second}
	const slack = 100 * time.Millisecond
	ctx := context.Background()
	for round := range 20 {
		redis := testutil.RedisStores(t, "")().Schedule()
		local := store.NewLocalSchedule()
		var ids [][2]string
		for step := range 25 {
			switch op := rand.IntN(10); {
			case op < 6:
				maxWait := time.Duration(rand.IntN(120)) * time.Second
				a, err := redis.Reserve(ctx, "acme", rule, maxWait, 0)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := local.Reserve(ctx, "acme", rule, maxWait, 0)
				if a.Reserved() != b.Reserved() || (a.Wait-b.Wait).Abs() > slack {
					t.Fatalf("round %d step %d: Reserve(max %v): Redis %+v, local %+v", round, step, maxWait, a, b)
				}
				if a.Reserved() {
					ids = append(ids, [2]string{a.ID, b.ID})
				}
			case op < 8 && len(ids) > 0:
				i := rand.IntN(len(ids))
				_ = redis.Release(ctx, "acme", ids[i][0])
				_ = local.Release(ctx, "acme", ids[i][1])
				ids = append(ids[:i], ids[i+1:]...)
			default:
				d := time.Duration(1+rand.IntN(40)) * time.Second
				others := rand.IntN(2) == 0
				// Whether a pause lengthened one set in the same
				// millisecond differs by the clocks' resolution: compare
				// what the pauses do to the calls, below.
				if _, err := redis.Pause(ctx, "acme", rule, d, others, 0); err != nil {
					t.Fatal(err)
				}
				_, _ = local.Pause(ctx, "acme", rule, d, others, 0)
			}
			for _, id := range ids {
				a, errA := redis.Confirm(ctx, "acme", id[0])
				b, errB := local.Confirm(ctx, "acme", id[1])
				if (errA == nil) != (errB == nil) || (a-b).Abs() > slack {
					t.Fatalf("round %d step %d: Confirm: Redis %v %v, local %v %v", round, step, a, errA, b, errB)
				}
			}
		}
	}
}
