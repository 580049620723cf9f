package auth_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"golang.org/x/oauth2"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/store"
)

// fuzzReturnURLs are the OAUTH_RETURN_URLS of the fuzz targets.
const fuzzReturnURLs = "https://app.example.com/settings, http://localhost:3000, http://[::1]:8080/cb/"

// defaultPort is a URL's port, or its scheme's default.
func defaultPort(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if strings.EqualFold(u.Scheme, "https") {
		return "443"
	}
	return "80"
}

// underAllowed reports whether u has the scheme, host and port of an
// allowed URL and a path equal to or below its path, segment-wise.
func underAllowed(allowed []*url.URL, u *url.URL) bool {
	for _, a := range allowed {
		base := strings.TrimSuffix(a.Path, "/")
		if strings.EqualFold(a.Scheme, u.Scheme) && strings.EqualFold(a.Hostname(), u.Hostname()) &&
			defaultPort(a) == defaultPort(u) && (base == "" || u.Path == base || strings.HasPrefix(u.Path, base+"/")) {
			return true
		}
	}
	return false
}

// checkRedirectTarget checks a URL the callback may send a browser to: an
// absolute http(s) URL under an allowed one, that reads the same to Go and
// to a browser (no backslash, no whitespace or control character, the
// authority exactly as Go parsed it).
func checkRedirectTarget(t *testing.T, allowed []*url.URL, loc string) *url.URL {
	t.Helper()
	u, err := url.Parse(loc)
	if err != nil {
		t.Errorf("Location %q does not parse: %v", loc, err)
		return nil
	}
	if !underAllowed(allowed, u) || u.User != nil || u.Opaque != "" {
		t.Errorf("Location %q is not under an allowed return URL", loc)
	}
	if lower := strings.ToLower(u.Scheme); lower != "http" && lower != "https" {
		t.Errorf("Location %q has scheme %q", loc, u.Scheme)
	}
	for i := 0; i < len(loc); i++ {
		if loc[i] <= 0x20 || loc[i] == 0x7f || loc[i] == '\\' {
			t.Errorf("Location %q holds byte %#x, which browsers read differently", loc, loc[i])
		}
	}
	authority, ok := strings.CutPrefix(loc[len(u.Scheme):], "://")
	if end := strings.IndexAny(authority, "/?#"); end >= 0 {
		authority = authority[:end]
	}
	if !ok || authority != u.Host {
		t.Errorf("Location %q: its authority %q is not the host %q", loc, authority, u.Host)
	}
	for _, s := range strings.Split(u.Path, "/") {
		if s == "." || s == ".." {
			t.Errorf("Location %q has a dot segment", loc)
		}
	}
	return u
}

// FuzzAllowedReturn checks that an accepted return_to is under an allowed
// URL (same scheme, host and port, path at or below it), without user
// info, dot segments or encoded slashes, and that the Location the callback
// builds from it is acceptable too.
func FuzzAllowedReturn(f *testing.F) {
	allowed, err := auth.ParseReturnURLs(fuzzReturnURLs)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		"https://app.example.com/settings", "https://app.example.com/settings/thanksio?x=1#frag",
		"https://APP.example.com:443/settings/", "http://localhost:3000/anything", "http://[::1]:8080/cb/x",
		"https://app.example.com/settingsx", "https://app.example.com/settings/../admin",
		"https://app.example.com/settings/%2e%2e/admin", "https://app.example.com/settings%2f..%2fadmin",
		"https://user@app.example.com/settings", "https://app.example.com@evil.example/settings",
		"https://app.example.com\\@evil.example/settings", "https://evil.example\\@app.example.com/settings",
		"//app.example.com/settings", "/settings", "https:app.example.com/settings", "https:///app.example.com/settings",
		"https://app.example.com:443@evil.example/settings", "https://app.example.com%2f@evil.example/settings",
		"https://app.example.com./settings", "http://localhost:3000\t/x", "http://localhost:03000/x",
		"http://[::1%25eth0]:8080/cb/", "HTTPS://app.example.com/settings", "https://app.example.com/settings/%5c..%5c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, returnTo string) {
		u, err := auth.AllowedReturn(allowed, returnTo)
		if err != nil {
			if u != nil {
				t.Errorf("AllowedReturn(%q) refused it (%v) yet returned %v", returnTo, err, u)
			}
			return
		}
		if !underAllowed(allowed, u) {
			t.Errorf("AllowedReturn(%q) accepted %v, which is under no allowed URL", returnTo, u)
		}
		if u.User != nil || u.Opaque != "" {
			t.Errorf("AllowedReturn(%q) accepted user info or an opaque URL", returnTo)
		}
		for _, s := range strings.Split(u.Path, "/") {
			if s == "." || s == ".." {
				t.Errorf("AllowedReturn(%q) accepted the dot segment in %q", returnTo, u.Path)
			}
		}
		if lower := strings.ToLower(u.EscapedPath()); strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") || strings.Contains(u.Path, "\\") {
			t.Errorf("AllowedReturn(%q) accepted an encoded slash or a backslash in %q", returnTo, u.EscapedPath())
		}
		if q := u.Query(); q.Has("connected") || q.Has("error") {
			t.Errorf("AllowedReturn(%q) accepted a connected or error parameter, which could pass for the result", returnTo)
		}
		// The Location the callback builds from it, as it builds it, is
		// under the same allowed URL, and holds the one result it added.
		v := u.Query()
		v.Set("connected", "acme")
		loc := *u
		loc.RawQuery = v.Encode()
		loc.Fragment, loc.RawFragment = "", ""
		checkRedirectTarget(t, allowed, loc.String())
		if got, err := url.Parse(loc.String()); err != nil || len(got.Query()["connected"]) != 1 {
			t.Errorf("the Location %q built from %q does not hold exactly one connected parameter", loc.String(), returnTo)
		}
	})
}

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
	callback := tokens.Callback()

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
			if u := checkRedirectTarget(t, allowed, loc); u != nil {
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
