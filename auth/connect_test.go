package auth_test

import (
	"testing"

	"thanksio-proxy/auth"
)

func TestAllowedReturn(t *testing.T) {
	allowed, err := auth.ParseReturnURLs("https://app.example.com/settings, http://localhost:3000")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		returnTo string
		want     bool
	}{
		{"https://app.example.com/settings", true},
		{"https://app.example.com/settings/thanksio?x=1", true},
		{"https://APP.example.com:443/settings/", true},
		{"http://localhost:3000/anything", true},
		{"https://app.example.com/settingsx", false},
		{"https://app.example.com/", false},
		{"http://app.example.com/settings", false},
		{"https://app.example.com:8443/settings", false},
		{"https://app.example.com.evil.example/settings", false},
		{"https://evil.example/settings", false},
		{"https://app.example.com/settings/../admin", false},
		{"https://app.example.com/settings/%2e%2e/admin", false},
		{"https://app.example.com/settings%2f..%2fadmin", false},
		{"https://user@app.example.com/settings", false},
		{"//app.example.com/settings", false},
		{"/settings", false},
		{"http://localhost:3001/x", false},
		// The callback adds the result: a forged one must not ride along.
		{"https://app.example.com/settings?connected=other-tenant", false},
		{"https://app.example.com/settings?x=1&error=", false},
		{"https://app.example.com/settings?connectedx=1", true},
	}
	for _, tt := range tests {
		_, err := auth.AllowedReturn(allowed, tt.returnTo)
		if got := err == nil; got != tt.want {
			t.Errorf("AllowedReturn(%q) = %v (%v); want %v", tt.returnTo, got, err, tt.want)
		}
	}
}
