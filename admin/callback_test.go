package admin_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"thanksio-proxy/admin"
	"thanksio-proxy/auth"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/store"
)

// *auth.Tokens is what the admin API and the callback serve over.
var (
	_ admin.TenantAdmin = (*auth.Tokens)(nil)
	_ admin.Completer   = (*auth.Tokens)(nil)
)

func TestExpiredStateIsRefused(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	double.AddRedirectURL("http://proxy.example/oauth/callback")
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	st := store.NewMemory()
	tokens := auth.New(auth.Config{
		Store: st,
		OAuth: &oauth2.Config{
			ClientID: double.ClientID(), ClientSecret: double.ClientSecret(), RedirectURL: "http://proxy.example/oauth/callback",
			Endpoint: oauth2.Endpoint{AuthURL: double.AuthorizeURL(), TokenURL: double.TokenURL(), AuthStyle: oauth2.AuthStyleInParams},
		},
		Now: now,
	})
	if err := tokens.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(tokens.Close)
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
	admin.NewCallback(tokens, nil).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/oauth/callback?"+cb.RawQuery, nil))
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
