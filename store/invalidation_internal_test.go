package store

import "testing"

func TestInvalidationPayloads(t *testing.T) {
	tests := []struct {
		name    string
		inv     Invalidation
		payload string
	}{
		{"write", Invalidation{Tenant: "acme", Version: 7}, "acme 7"},
		{"deletion", Invalidation{Tenant: "acme", Version: 7, Deleted: true}, "acme 7 deleted"},
		{"deletion of a tenant never written", Invalidation{Tenant: "acme", Version: 0, Deleted: true}, "acme 0 deleted"},
		{"heartbeat", Invalidation{Heartbeat: "f00d"}, "\x01heartbeat f00d"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatInvalidation(tt.inv); got != tt.payload {
				t.Errorf("formatInvalidation(%+v) = %q; want %q", tt.inv, got, tt.payload)
			}
			if got, ok := parseInvalidation(tt.payload); !ok || got != tt.inv {
				t.Errorf("parseInvalidation(%q) = %+v, %v; want %+v", tt.payload, got, ok, tt.inv)
			}
		})
	}
	// What replicas before the deleted form published for a deletion.
	if got, ok := parseInvalidation("acme 0"); !ok || got != (Invalidation{Tenant: "acme", Deleted: true}) {
		t.Errorf(`parseInvalidation("acme 0") = %+v, %v; want a deletion`, got, ok)
	}
	for _, bad := range []string{"", "acme", "acme x", "acme -1", "acme 1 gone", "a{b 1", "acme 1 deleted x", "\x01heartbeat "} {
		if got, ok := parseInvalidation(bad); ok {
			t.Errorf("parseInvalidation(%q) = %+v; want it refused", bad, got)
		}
	}
}
