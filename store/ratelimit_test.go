package store_test

import (
	"testing"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/ratelimit"
	"thanksio-proxy/store"
	"thanksio-proxy/store/storetest"
)

// Both schedules satisfy what the limiter needs of them.
var (
	_ ratelimit.Schedule = (*store.RedisSchedule)(nil)
	_ ratelimit.Schedule = (*store.LocalSchedule)(nil)
)

func TestLocalSchedule(t *testing.T) {
	storetest.RunSchedule(t, func(t *testing.T) func() storetest.Schedule {
		s := store.NewLocalSchedule()
		return func() storetest.Schedule { return s }
	})
}

func TestRedisSchedule(t *testing.T) {
	storetest.RunSchedule(t, func(t *testing.T) func() storetest.Schedule {
		stores := testutil.RedisStores(t, "")
		return func() storetest.Schedule { return stores().Schedule() }
	})
}
