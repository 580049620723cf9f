package testutil

import (
	"cmp"
	"net/url"
	"strings"
	"testing"
)

// schemePorts are the ports that http and https URLs, the only schemes an
// allowed URL has, are on when they name none.
var schemePorts = map[string]string{"http": "80", "https": "443"}

// UnderAllowed reports whether u has the scheme, host and port of an
// allowed URL and a path equal to or below its path, segment-wise. It is
// written apart from auth's own check, so that it can judge it.
func UnderAllowed(allowed []*url.URL, u *url.URL) bool {
	port := func(u *url.URL) string { return cmp.Or(u.Port(), schemePorts[strings.ToLower(u.Scheme)]) }
	for _, a := range allowed {
		base := strings.TrimSuffix(a.Path, "/")
		if strings.EqualFold(a.Scheme, u.Scheme) && strings.EqualFold(a.Hostname(), u.Hostname()) &&
			port(a) == port(u) && (base == "" || u.Path == base || strings.HasPrefix(u.Path, base+"/")) {
			return true
		}
	}
	return false
}

// CheckRedirectTarget checks a URL the callback may send a browser to: an
// absolute http(s) URL under an allowed one, that reads the same to Go and
// to a browser (no backslash, no whitespace or control character, the
// authority exactly as Go parsed it).
func CheckRedirectTarget(t testing.TB, allowed []*url.URL, loc string) *url.URL {
	t.Helper()
	u, err := url.Parse(loc)
	if err != nil {
		t.Errorf("Location %q does not parse: %v", loc, err)
		return nil
	}
	if !UnderAllowed(allowed, u) || u.User != nil || u.Opaque != "" {
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
