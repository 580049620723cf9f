package auth_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/store"
)

// cachedTokens returns Tokens over an in-memory store with n tenants
// imported and cached, each with an access and a refresh token of 1 KiB
// (thanks.io's are JWTs of about that size), and their ids.
func cachedTokens(b *testing.B, n int) (*auth.Tokens, []string) {
	b.Helper()
	tokens := auth.New(auth.Config{Store: store.NewMemory(), CacheSize: n})
	if err := tokens.Start(b.Context()); err != nil {
		b.Fatalf("Start: %v", err)
	}
	b.Cleanup(tokens.Close)
	filler := strings.Repeat("x", 1000)
	tenants := make([]string, n)
	for i := range tenants {
		tenants[i] = fmt.Sprintf("tenant-%d", i)
		g := auth.Grant{
			AccessToken:  fmt.Sprintf("%s-access-%012d", filler, i),
			RefreshToken: fmt.Sprintf("%s-refresh-%011d", filler, i),
			Expiry:       time.Now().Add(365 * 24 * time.Hour),
		}
		if _, err := tokens.Import(b.Context(), tenants[i], g); err != nil {
			b.Fatalf("Import: %v", err)
		}
	}
	return tokens, tenants
}

// BenchmarkAuthorization is the hot path's token lookup, round robin over
// the tenants.
func BenchmarkAuthorization(b *testing.B) {
	for _, n := range []int{1, 100_000} {
		b.Run(fmt.Sprintf("tenants=%d", n), func(b *testing.B) {
			tokens, tenants := cachedTokens(b, n)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if _, err := tokens.Authorization(b.Context(), tenants[i%n]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
