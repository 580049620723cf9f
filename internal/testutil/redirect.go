package testutil

import (
	"net/url"
	"strings"
	"testing"
)

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

// UnderAllowed reports whether u has the scheme, host and port of an
// allowed URL and a path equal to or below its path, segment-wise.
func UnderAllowed(allowed []*url.URL, u *url.URL) bool {
	for _, a := range allowed {
		base := strings.TrimSuffix(a.Path, "/")
		if strings.EqualFold(a.Scheme, u.Scheme) && strings.EqualFold(a.Hostname(), u.Hostname()) &&
			defaultPort(a) == defaultPort(u) && (base == "" || u.Path == base || strings.HasPrefix(u.Path, base+"/")) {
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
