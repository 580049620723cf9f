package auth_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/store"
)

func TestExpiredStateIsRefused(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	double.AddRedirectURL("http://proxy.example/oauth/callback")
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	st := store.NewMemory()
	tokens := replica(t, st, double, func(c *auth.Config) {
		c.Now = now
		c.OAuth.RedirectURL = "http://proxy.example/oauth/callback"
	})
	authorizeURL, err := tokens.Connect(t.Context(), "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Get(authorizeURL)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	cb, _ := url.Parse(res.Header.Get("Location"))

	offset.Store(int64(11 * time.Minute))
	rec := httptest.NewRecorder()
	tokens.Callback().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/oauth/callback?"+cb.RawQuery, nil))
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "expired") {
		t.Errorf("callback 11 minutes later: %d %s; want 400 saying the link expired", rec.Code, rec.Body)
	}
	if n := double.CodeExchanges(); n != 0 {
		t.Errorf("code exchanges = %d; want 0", n)
	}
	if _, err := st.Get(t.Context(), "acme"); err == nil {
		t.Errorf("a token was stored from an expired state")
	}
}

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
