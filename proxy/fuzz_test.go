package proxy_test

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"regexp"
	"strings"
	"testing"

	"thanksio-proxy/proxy"
)

// tenantPattern is the documented form of a tenant id (besides "." and "..",
// which it matches and which are refused).
var tenantPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

func FuzzValidTenant(f *testing.F) {
	for _, id := range []string{
		"acme", "A.b_c-9", ".", "..", "...", "", strings.Repeat("x", 128), strings.Repeat("x", 129),
		"a b", " acme", "acme\n", "a/b", "{acme}", "acme*", "a?", "[a]", "\u0430cme", "acme\x00", "%61cme",
	} {
		f.Add(id)
	}
	f.Fuzz(func(t *testing.T, id string) {
		want := tenantPattern.MatchString(id) && id != "." && id != ".."
		if got := proxy.ValidTenant(id); got != want {
			t.Errorf("ValidTenant(%q) = %v; want %v", id, got, want)
		}
	})
}

// recordingTransport answers every round trip with 200 and remembers the
// requests it was given.
type recordingTransport struct {
	reqs []*http.Request
}

func (rt *recordingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rt.reqs = append(rt.reqs, r)
	return &http.Response{
		StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{}, Body: io.NopCloser(strings.NewReader("{}")), ContentLength: 2, Request: r,
	}, nil
}

// FuzzRequestPath sends arbitrary request targets through the proxy: either
// the proxy answers with an error of its own and calls nobody, or the
// upstream request goes to the upstream host, under its base path, in a
// clean form (no dot segments, no empty segments, no encoded slash or
// backslash), and reads back the same from the wire.
func FuzzRequestPath(f *testing.F) {
	for _, target := range []string{
		"/ping", "/orders/list?page=2", "/", "/mailing-lists/", "/recipients/a%20b", "/orders/..list/x",
		"/../ping", "/%2e%2e/ping", "/.%2e/ping", "/orders%2fping", "/orders%5cping", "//evil.example/x",
		"/orders//list", "/ping%00", "http://evil.example/x", "HTTP://evil.example/x", "evil.example:443", "*",
		"/%252e%252e/ping", "/ping?next=/../x", "/ping#frag", "/a/b/c/./d", "/%2F%2Fevil.example", "/\\evil.example",
		"/;/../x", "/%C0%AE%C0%AE/x", "/%uFF0E%uFF0E/x", "/ping?%2e%2e", "/a%2", "/%",
	} {
		f.Add(target)
	}
	upstream, _ := url.Parse("http://upstream.example/api/v2")
	tokens := staticTokens(map[string]string{"acme": "tok-acme"})
	f.Fuzz(func(t *testing.T, target string) {
		if strings.ContainsAny(target, "\r\n") {
			return // not a request line
		}
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(
			"GET " + target + " HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: acme\r\n\r\n")))
		if err != nil {
			return
		}
		rt := &recordingTransport{}
		h, err := proxy.New(proxy.Config{Tokens: tokens, Upstream: upstream, Transport: rt})
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)

		if code := rec.Header().Get(proxy.ErrorHeader); code != "" {
			if rec.Code < 400 || rec.Code > 499 {
				t.Errorf("GET %q: the proxy's own %d %s; want a 4xx", target, rec.Code, code)
			}
			if len(rt.reqs) != 0 {
				t.Errorf("GET %q: answered %d %s, yet the upstream was called with %s", target, rec.Code, code, rt.reqs[0].URL)
			}
			return
		}
		if rec.Code != http.StatusOK || len(rt.reqs) != 1 {
			t.Fatalf("GET %q: %d with %d upstream calls; want 200 and 1", target, rec.Code, len(rt.reqs))
		}
		out := rt.reqs[0]
		u := out.URL
		if u.Scheme != "http" || u.Host != upstream.Host || u.User != nil || u.Opaque != "" || (out.Host != "" && out.Host != upstream.Host) {
			t.Errorf("GET %q went to %s (Host %q); want the upstream host", target, u, out.Host)
		}
		p := u.Path
		rest, ok := strings.CutPrefix(p, "/api/v2/")
		if !ok {
			t.Fatalf("GET %q went to path %q; want one under /api/v2/", target, p)
		}
		segments := strings.Split(rest, "/")
		for i, s := range segments {
			if s == "." || s == ".." || (s == "" && i != len(segments)-1) {
				t.Errorf("GET %q went to path %q: segment %d is %q", target, p, i, s)
			}
		}
		clean := path.Clean(p)
		if strings.HasSuffix(p, "/") {
			clean += "/"
		}
		if clean != p {
			t.Errorf("GET %q went to path %q, which cleans to %q", target, p, clean)
		}
		for i := 0; i < len(p); i++ {
			if p[i] < 0x20 || p[i] == 0x7f || p[i] == '\\' {
				t.Errorf("GET %q went to path %q holding byte %#x", target, p, p[i])
			}
		}
		escaped := u.EscapedPath()
		if lower := strings.ToLower(escaped); strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") {
			t.Errorf("GET %q went to %q, holding an encoded slash or backslash", target, escaped)
		}
		// What the transport writes on the wire reads back as the same path.
		wire, err := url.ParseRequestURI(u.RequestURI())
		if err != nil || wire.Path != p || wire.Host != "" {
			t.Errorf("GET %q: the request line %q reads back as %v (%v); want path %q", target, u.RequestURI(), wire, err, p)
		}
		if a := out.Header.Values("Authorization"); len(a) != 1 || a[0] != "Bearer tok-acme" || out.Header.Get("X-Tenant-Id") != "" {
			t.Errorf("GET %q: upstream Authorization %q, tenant header %q", target, a, out.Header.Get("X-Tenant-Id"))
		}
	})
}
