package store_test

import (
	"testing"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/store"
)

// BenchmarkDurablePut measures what confirming a write costs: a Put (one per
// refresh, once per token lifetime per tenant) on a primary without replicas,
// and on one with a replica, where it waits for the replica's WAIT.
func BenchmarkDurablePut(b *testing.B) {
	key := make([]byte, 32)
	sealer, err := store.NewSealer([][]byte{key})
	if err != nil {
		b.Fatal(err)
	}
	alone := testutil.StartRedis(b)
	replicated := testutil.StartRedis(b)
	testutil.StartReplica(b, replicated)
	for _, bc := range []struct {
		name    string
		primary *testutil.RedisServer
	}{{"no-replica", alone}, {"one-replica", replicated}} {
		b.Run(bc.name, func(b *testing.B) {
			st := store.NewRedis(bc.primary.Client(), "bench:", sealer)
			rec := store.TokenRecord{AccessToken: "access", RefreshToken: "refresh", State: store.StateActive}
			v, err := st.Put(b.Context(), "acme", rec, store.AnyVersion)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for b.Loop() {
				if v, err = st.Put(b.Context(), "acme", rec, v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
