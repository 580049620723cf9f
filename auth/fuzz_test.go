package auth_test

import (
	"net/url"
	"strings"
	"testing"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/testutil"
)

// fuzzReturnURLs are the OAUTH_RETURN_URLS of FuzzAllowedReturn.
const fuzzReturnURLs = "https://app.example.com/settings, http://localhost:3000, http://[::1]:8080/cb/"

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
		if !testutil.UnderAllowed(allowed, u) {
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
		testutil.CheckRedirectTarget(t, allowed, loc.String())
		if got, err := url.Parse(loc.String()); err != nil || len(got.Query()["connected"]) != 1 {
			t.Errorf("the Location %q built from %q does not hold exactly one connected parameter", loc.String(), returnTo)
		}
	})
}
