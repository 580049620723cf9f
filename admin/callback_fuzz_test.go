package admin_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"golang.org/x/oauth2"

	"thanksio-proxy/admin"
	"thanksio-proxy/auth"
	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/store"
)

// fuzzReturnURLs are the OAUTH_RETURN_URLS of FuzzCallbackQuery.
const fuzzReturnURLs = "https://app.example.com/settings, http://localhost:3000, http://[::1]:8080/cb/"

// FuzzCallbackQuery sends arbitrary queries to the OAuth callback, with a
// few genuine states (and codes) among the seeds: the callback never answers
// a 5xx but 503, never redirects but under an allowed return URL, and never
// stores a token but for a tenant a genuine state was made for.
func FuzzCallbackQuery(f *testing.F) {
	const redirectURL = "http://proxy.example/oauth/callback"
	double := thanksiotest.NewServer(f, thanksiotest.Options{RequirePKCE: true})
	double.AddRedirectURL(redirectURL)
	allowed, err := auth.ParseReturnURLs(fuzzReturnURLs)
	if err != nil {
		f.Fatal(err)
	}
	st := store.NewMemory()
	tokens := auth.New(auth.Config{
		Store: st,
		OAuth: &oauth2.Config{
			ClientID: double.ClientID(), ClientSecret: double.ClientSecret(), RedirectURL: redirectURL,
			Endpoint: oauth2.Endpoint{AuthURL: double.AuthorizeURL(), TokenURL: double.TokenURL(), AuthStyle: oauth2.AuthStyleInParams},
		},
		ReturnURLs: allowed,
	})
	f.Cleanup(tokens.Close)
	callback := admin.NewCallback(tokens, nil)

	// Genuine flows, approved by the double: their callback queries are
	// seeds, and their tenants the only ones that may ever be stored.
	connected := map[string]bool{}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for i, returnTo := range []string{"https://app.example.com/settings/thanksio?tab=1", "", "http://localhost:3000/x", "http://[::1]:8080/cb/"} {
		tenant := []string{"seed-acme", "seed-globex", "seed-initech", "seed-umbrella"}[i]
		authorizeURL, err := tokens.Connect(context.Background(), tenant, returnTo)
		if err != nil {
			f.Fatalf("Connect(%q): %v", tenant, err)
		}
		res, err := noRedirect.Get(authorizeURL)
		if err != nil {
			f.Fatal(err)
		}
		res.Body.Close()
		cb, err := url.Parse(res.Header.Get("Location"))
		if err != nil || cb.Query().Get("state") == "" {
			f.Fatalf("the double did not redirect with a state: %d %q", res.StatusCode, res.Header.Get("Location"))
		}
		connected[tenant] = true
		f.Add(cb.RawQuery)
		if i == 1 {
			// The same state once more, denied: a state is single use.
			f.Add("error=access_denied&state=" + url.QueryEscape(cb.Query().Get("state")))
		}
	}
	for _, q := range []string{
		"", "state=", "state=x", "state=x&code=y", "state=x&state=y&code=z", "code=ac_x", "error=access_denied&state=x",
		"state=%zz&code=y", "state=x;code=y", "state=*&code=y", "state=%00&code=%00", "state=x&error=server_error&error=x",
	} {
		f.Add(q)
	}

	f.Fuzz(func(t *testing.T, rawQuery string) {
		r := httptest.NewRequest(http.MethodGet, "/oauth/callback", nil)
		r.URL.RawQuery = rawQuery
		rec := httptest.NewRecorder()
		callback.ServeHTTP(rec, r)

		if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable {
			t.Errorf("callback?%q answered %d; want no 5xx but 503", rawQuery, rec.Code)
		}
		loc := rec.Header().Get("Location")
		switch {
		case rec.Code >= 300 && rec.Code < 400:
			if rec.Code != http.StatusSeeOther {
				t.Errorf("callback?%q redirected with %d; want 303", rawQuery, rec.Code)
			}
			if u := testutil.CheckRedirectTarget(t, allowed, loc); u != nil {
				q := u.Query()
				if c := q["connected"]; len(c) > 1 || len(c) == 1 && !connected[c[0]] {
					t.Errorf("callback?%q redirected to %q, naming a tenant no state was made for", rawQuery, loc)
				}
				if len(q["connected"])+len(q["error"]) != 1 {
					t.Errorf("callback?%q redirected to %q; want exactly one of connected or error", rawQuery, loc)
				}
			}
		case loc != "":
			t.Errorf("callback?%q answered %d with Location %q", rawQuery, rec.Code, loc)
		}
		body := rec.Body.String()
		for _, secret := range []string{thanksiotest.AccessTokenPrefix, thanksiotest.RefreshTokenPrefix, thanksiotest.CodePrefix, double.ClientSecret()} {
			if strings.Contains(body, secret) || strings.Contains(loc, secret) {
				t.Errorf("callback?%q shows %q in its answer", rawQuery, secret)
			}
		}
		ids, _, err := st.List(context.Background(), "", 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			if !connected[id] {
				t.Fatalf("callback?%q stored a token for %q, for which no state was made; stored: %v", rawQuery, id, ids)
			}
		}
		if len(ids) > len(connected) || !slices.IsSorted(ids) {
			t.Errorf("stored tenants %v", ids)
		}
	})
}
