package store_test

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"thanksio-proxy/store"
)

// dumpKey returns every value and member of key as text, whatever its type.
func dumpKey(t *testing.T, c redis.UniversalClient, key string) []string {
	t.Helper()
	ctx := t.Context()
	typ, err := c.Type(ctx, key).Result()
	if err != nil {
		t.Fatalf("TYPE %s: %v", key, err)
	}
	var vals []string
	switch typ {
	case "string":
		v, err := c.Get(ctx, key).Result()
		if err != nil {
			t.Fatalf("GET %s: %v", key, err)
		}
		vals = append(vals, v)
	case "hash":
		h, err := c.HGetAll(ctx, key).Result()
		if err != nil {
			t.Fatalf("HGETALL %s: %v", key, err)
		}
		for k, v := range h {
			vals = append(vals, k, v)
		}
	case "zset":
		members, err := c.ZRange(ctx, key, 0, -1).Result()
		if err != nil {
			t.Fatalf("ZRANGE %s: %v", key, err)
		}
		vals = append(vals, members...)
	default:
		t.Fatalf("key %s is of unexpected type %s", key, typ)
	}
	return vals
}

func TestRedisKeepsNoSecretInPlainText(t *testing.T) {
	for _, b := range redisBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			f := b.setup(t)
			s := f.open(t)
			ctx := t.Context()
			rec := sampleRecord(randomHex(t, 8))
			verifier := "verifier-" + randomHex(t, 16)
			mustPut(t, s, "acme", rec, 0)
			if err := s.PutOAuthState(ctx, "st", store.OAuthState{Tenant: "acme", CodeVerifier: verifier}, time.Minute); err != nil {
				t.Fatalf("PutOAuthState: %v", err)
			}
			if ok, err := s.TryLock(ctx, "acme", "owner", time.Minute); !ok || err != nil {
				t.Fatalf("TryLock = %v, %v", ok, err)
			}

			p := f.redis.prefix
			keys := scanKeys(t, f.redis.client, p)
			want := []string{p + "due", p + "oauth-state:st", p + "tenants", p + "{acme}:lock", p + "{acme}:token"}
			if strings.Join(keys, " ") != strings.Join(want, " ") {
				t.Errorf("keys = %q; want %q", keys, want)
			}
			secrets := []string{rec.AccessToken, rec.RefreshToken, verifier}
			for _, key := range keys {
				for _, v := range dumpKey(t, f.redis.client, key) {
					for _, secret := range secrets {
						if strings.Contains(v, secret) {
							t.Errorf("key %s holds %q in plain text", key, secret)
						}
					}
				}
			}
		})
	}
}

func TestRedisSealing(t *testing.T) {
	for _, b := range redisBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			testRedisSealing(t, b)
		})
	}
}

func testRedisSealing(t *testing.T, b backend) {
	t.Run("a record under another key does not open", func(t *testing.T) {
		f := b.setup(t)
		ctx := t.Context()
		owner := f.redis.newStore(t, mustSealer(t, newKey(t)))
		stranger := f.redis.newStore(t, mustSealer(t, newKey(t)))
		rec := sampleRecord("a")
		mustPut(t, owner, "acme", rec, 0)
		key := f.redis.prefix + "{acme}:token"
		before := f.redis.client.HGetAll(ctx, key).Val()

		_, err := stranger.Get(ctx, "acme")
		if !errors.Is(err, store.ErrSealed) {
			t.Fatalf("Get with another key = %v; want ErrSealed", err)
		}
		if msg := err.Error(); !strings.Contains(msg, "acme") || strings.Contains(msg, rec.AccessToken) || strings.Contains(msg, rec.RefreshToken) {
			t.Errorf("Get error = %q; want the tenant named and no token", msg)
		}
		if after := f.redis.client.HGetAll(ctx, key).Val(); !maps.Equal(before, after) {
			t.Errorf("the stored record changed on a failed Get")
		}
		if got := mustGet(t, owner, "acme"); got.AccessToken != rec.AccessToken {
			t.Errorf("Get with the right key = %q; want %q", got.AccessToken, rec.AccessToken)
		}
	})

	t.Run("a record copied to another tenant does not open", func(t *testing.T) {
		f := b.setup(t)
		ctx := t.Context()
		s := f.open(t)
		mustPut(t, s, "victim", sampleRecord("v"), 0)
		fields := f.redis.client.HGetAll(ctx, f.redis.prefix+"{victim}:token").Val()
		if err := f.redis.client.HSet(ctx, f.redis.prefix+"{thief}:token", fields).Err(); err != nil {
			t.Fatalf("HSET: %v", err)
		}
		if rec, err := s.Get(ctx, "thief"); !errors.Is(err, store.ErrSealed) {
			t.Errorf("Get of a copied record = %+v, %v; want ErrSealed", rec, err)
		}
	})

	t.Run("a damaged record does not open", func(t *testing.T) {
		tests := []struct {
			name   string
			fields map[string]string
		}{
			{name: "no data", fields: map[string]string{"v": "3"}},
			{name: "no version", fields: map[string]string{"d": "xyz"}},
			{name: "bad version", fields: map[string]string{"v": "x", "d": "xyz"}},
			{name: "garbage data", fields: map[string]string{"v": "1", "d": "\x01xyz"}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				f := b.setup(t)
				if err := f.redis.client.HSet(t.Context(), f.redis.prefix+"{acme}:token", tt.fields).Err(); err != nil {
					t.Fatalf("HSET: %v", err)
				}
				if rec, err := f.open(t).Get(t.Context(), "acme"); !errors.Is(err, store.ErrSealed) {
					t.Errorf("Get = %+v, %v; want ErrSealed", rec, err)
				}
			})
		}
	})

	t.Run("an oauth state moved to another name does not open", func(t *testing.T) {
		f := b.setup(t)
		ctx := t.Context()
		s := f.open(t)
		if err := s.PutOAuthState(ctx, "real", store.OAuthState{Tenant: "acme", CodeVerifier: "v"}, time.Minute); err != nil {
			t.Fatalf("PutOAuthState: %v", err)
		}
		sealed := f.redis.client.Get(ctx, f.redis.prefix+"oauth-state:real").Val()
		if err := f.redis.client.Set(ctx, f.redis.prefix+"oauth-state:forged", sealed, time.Minute).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
		if st, err := s.TakeOAuthState(ctx, "forged"); !errors.Is(err, store.ErrSealed) {
			t.Errorf("TakeOAuthState(forged) = %+v, %v; want ErrSealed", st, err)
		}
	})

	t.Run("key rotation", func(t *testing.T) {
		f := b.setup(t)
		ctx := t.Context()
		a, b := newKey(t), newKey(t)
		onlyA := f.redis.newStore(t, mustSealer(t, a))
		rotated := f.redis.newStore(t, mustSealer(t, b, a))
		onlyB := f.redis.newStore(t, mustSealer(t, b))
		sealedData := func() []byte {
			t.Helper()
			return []byte(f.redis.client.HGet(ctx, f.redis.prefix+"{acme}:token", "d").Val())
		}

		mustPut(t, onlyA, "acme", sampleRecord("old"), 0)
		if _, err := onlyB.Get(ctx, "acme"); !errors.Is(err, store.ErrSealed) {
			t.Errorf("Get of a record sealed under A by a store with only B = %v; want ErrSealed", err)
		}
		if got := mustGet(t, rotated, "acme"); got.AccessToken != "access-old" {
			t.Errorf("Get by B,A = %q; want %q", got.AccessToken, "access-old")
		}
		if !mustSealer(t, b, a).NeedsReseal(sealedData()) {
			t.Errorf("NeedsReseal of a record sealed under A, with B first = false; want true")
		}

		mustPut(t, rotated, "acme", sampleRecord("new"), 1)
		if mustSealer(t, b, a).NeedsReseal(sealedData()) {
			t.Errorf("NeedsReseal after a write by B,A = true; want false (sealed under B)")
		}
		if got := mustGet(t, onlyB, "acme"); got.AccessToken != "access-new" || got.Version != 2 {
			t.Errorf("Get by B = %q version %d; want %q version 2", got.AccessToken, got.Version, "access-new")
		}
		if _, err := onlyA.Get(ctx, "acme"); !errors.Is(err, store.ErrSealed) {
			t.Errorf("Get of a record sealed under B by a store with only A = %v; want ErrSealed", err)
		}
	})

	t.Run("malformed invalidations are ignored", func(t *testing.T) {
		f := b.setup(t)
		ctx := t.Context()
		s := f.open(t)
		invs, _ := subscribe(t, f.open(t))
		for _, payload := range []string{"", "acme", "acme x", "acme -1", " 5", "a{b 3", "acme 1.5"} {
			if err := f.redis.client.Publish(ctx, f.redis.prefix+"invalidate", payload).Err(); err != nil {
				t.Fatalf("PUBLISH: %v", err)
			}
		}
		mustPut(t, s, "acme", sampleRecord("a"), 0)
		if got := nextInvalidation(t, invs); got != (store.Invalidation{Tenant: "acme", Version: 1}) {
			t.Errorf("first invalidation = %+v; want acme version 1, the malformed ones ignored", got)
		}
	})

	t.Run("subscribe fails when its context has ended", func(t *testing.T) {
		s := b.setup(t).open(t)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := s.Subscribe(ctx, nil, nil); err == nil {
			t.Errorf("Subscribe with an ended context = nil; want an error")
		}
	})
}
