package store_test

import (
	"strings"
	"testing"
	"unsafe"

	"thanksio-proxy/store"
)

// WithAuthorization puts both tokens in one allocation, behind the
// Authorization value, and gives a record in that form back as it is: the
// in-memory store and the cache then share the one copy of a tenant's
// tokens, one object for the collector to mark.
func TestWithAuthorizationHoldsBothTokensInOneAllocation(t *testing.T) {
	for _, tc := range []struct {
		name string
		rec  store.TokenRecord
	}{
		{"separate tokens", store.TokenRecord{AccessToken: strings.Repeat("a", 40), RefreshToken: strings.Repeat("r", 40)}},
		{"no refresh token", store.TokenRecord{AccessToken: strings.Repeat("a", 40)}},
		{"a stale Authorization", store.TokenRecord{AccessToken: "new", RefreshToken: "r", Authorization: "Bearer old"}},
		{"the Authorization alone", store.TokenRecord{AccessToken: "a", RefreshToken: "r", Authorization: "Bearer a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.rec.WithAuthorization()
			if got.Authorization != "Bearer "+tc.rec.AccessToken || got.AccessToken != tc.rec.AccessToken || got.RefreshToken != tc.rec.RefreshToken {
				t.Fatalf("WithAuthorization = %q, %q, %q; want the same tokens", got.Authorization, got.AccessToken, got.RefreshToken)
			}
			end := uintptr(unsafe.Pointer(unsafe.StringData(got.Authorization))) + uintptr(len(got.Authorization))
			if unsafe.StringData(got.AccessToken) != unsafe.StringData(got.Authorization[len("Bearer "):]) ||
				(got.RefreshToken != "" && uintptr(unsafe.Pointer(unsafe.StringData(got.RefreshToken))) != end) {
				t.Errorf("the access and refresh tokens are not parts of one allocation")
			}
			again := got.WithAuthorization()
			if unsafe.StringData(again.Authorization) != unsafe.StringData(got.Authorization) ||
				unsafe.StringData(again.RefreshToken) != unsafe.StringData(got.RefreshToken) {
				t.Errorf("WithAuthorization made a new copy of a record already in its form")
			}
		})
	}
}
