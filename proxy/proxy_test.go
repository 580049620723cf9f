package proxy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/proxy"
)

// fakeTokens is a hand-written proxy.Tokens with function fields.
type fakeTokens struct {
	token   func(ctx context.Context, tenant string) (string, error)
	refused func(ctx context.Context, tenant, token string) (string, error)
}

func (f *fakeTokens) Authorization(ctx context.Context, tenant string) (string, error) {
	token, err := f.token(ctx, tenant)
	return "Bearer " + token, err
}

func (f *fakeTokens) Refused(ctx context.Context, tenant, token string) (string, error) {
	if f.refused == nil {
		return "", auth.ErrNoBetterToken
	}
	return f.refused(ctx, tenant, token)
}

// seen is what the upstream received.
type seen struct {
	mu   sync.Mutex
	reqs []*http.Request
	body [][]byte
}

func (s *seen) add(r *http.Request, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, r)
	s.body = append(s.body, body)
}

func (s *seen) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.reqs)
}

func (s *seen) last() *http.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reqs) == 0 {
		return nil
	}
	return s.reqs[len(s.reqs)-1]
}

// newUpstream starts an upstream that records requests and answers with
// handle (200 {"ok":true} when nil).
func newUpstream(t *testing.T, handle http.HandlerFunc) (*url.URL, *seen) {
	t.Helper()
	s := &seen{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.add(r, body)
		if handle != nil {
			handle(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL + "/api/v2")
	return u, s
}

func staticTokens(tokens map[string]string) *fakeTokens {
	return &fakeTokens{token: func(_ context.Context, tenant string) (string, error) {
		if tok, ok := tokens[tenant]; ok {
			return tok, nil
		}
		return "", auth.ErrUnknownTenant
	}}
}

func newProxy(t *testing.T, tokens proxy.Tokens, upstream *url.URL) *httptest.Server {
	t.Helper()
	h, err := proxy.New(proxy.Config{Tokens: tokens, Upstream: upstream})
	if err != nil {
		t.Fatalf("proxy.New: %v", err)
	}
	return newServer(t, h)
}

func newServer(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// newRequest is a request of method to url with body (nil for none), and
// an X-Tenant-ID header for each of tenants.
func newRequest(t *testing.T, method, url string, body io.Reader, tenants ...string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for _, tenant := range tenants {
		req.Header.Add("X-Tenant-ID", tenant)
	}
	return req
}

func TestForwardsWithTenantToken(t *testing.T) {
	upstream, got := newUpstream(t, nil)
	srv := newProxy(t, staticTokens(map[string]string{"acme": "tok-acme", "globex": "tok-globex"}), upstream)

	for _, tenant := range []string{"acme", "globex"} {
		req := newRequest(t, http.MethodGet, srv.URL+"/orders/list?page=2", nil, tenant)
		req.Header.Set("Authorization", "Bearer caller-secret")
		req.Header.Set("Proxy-Authorization", "Basic eA==")
		req.Header.Set("Cookie", "session=caller")
		res, body := testutil.Do(t, nil, req)
		if res.StatusCode != http.StatusOK || string(body) != `{"ok":true}` {
			t.Fatalf("%s: status %d body %q; want 200 {\"ok\":true}", tenant, res.StatusCode, body)
		}
		r := got.last()
		if r.URL.Path != "/api/v2/orders/list" || r.URL.RawQuery != "page=2" {
			t.Errorf("%s: upstream got %s?%s; want /api/v2/orders/list?page=2", tenant, r.URL.Path, r.URL.RawQuery)
		}
		if a := r.Header.Values("Authorization"); len(a) != 1 || a[0] != "Bearer tok-"+tenant {
			t.Errorf("%s: upstream Authorization = %q; want only the tenant's token", tenant, a)
		}
		for _, h := range []string{"X-Tenant-Id", "Proxy-Authorization", "Cookie"} {
			if v := r.Header.Values(h); len(v) != 0 {
				t.Errorf("%s: upstream got %s = %q; want it removed", tenant, h, v)
			}
		}
		if r.Header.Get("X-Request-Id") == "" || r.Header.Get("X-Request-Id") != res.Header.Get("X-Request-Id") {
			t.Errorf("%s: X-Request-ID upstream %q, to caller %q; want the same, non-empty", tenant,
				r.Header.Get("X-Request-Id"), res.Header.Get("X-Request-Id"))
		}
	}
}

// proxyError reads the proxy's own error answer, res with its body.
func proxyError(t *testing.T, res *http.Response, body []byte) (code, message string) {
	t.Helper()
	var e struct{ Error, Message string }
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body is not JSON: %v", err)
	}
	if h := res.Header.Get(proxy.ErrorHeader); h != e.Error {
		t.Errorf("%s = %q; want %q as in the body", proxy.ErrorHeader, h, e.Error)
	}
	if e.Message == "" {
		t.Errorf("error %q has no message", e.Error)
	}
	return e.Error, e.Message
}

func TestErrorCodes(t *testing.T) {
	slow := make(chan struct{})
	t.Cleanup(func() { close(slow) })
	tokenErrs := map[string]error{
		"revoked": auth.ErrReauthorizationRequired,
		"down":    &auth.UnavailableError{Reason: "the token store is unreachable", RetryAfter: 5 * time.Second},
	}
	tokens := &fakeTokens{token: func(_ context.Context, tenant string) (string, error) {
		if err, ok := tokenErrs[tenant]; ok {
			return "", err
		}
		if tenant == "acme" || tenant == "slow" {
			return "tok", nil
		}
		return "", auth.ErrUnknownTenant
	}}
	upstream, got := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v2/slow" {
			select {
			case <-slow:
			case <-r.Context().Done():
			}
		}
	})
	// An upstream that refuses connections: a listener closed at once.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := ln.Addr().String()
	ln.Close()
	dead, _ := url.Parse("http://" + deadAddr + "/api/v2")

	live := newProxy(t, tokens, upstream)
	h, _ := proxy.New(proxy.Config{Tokens: tokens, Upstream: dead})
	unreachable := httptest.NewServer(h)
	t.Cleanup(unreachable.Close)
	h, _ = proxy.New(proxy.Config{Tokens: tokens, Upstream: upstream,
		Transport: &http.Transport{ResponseHeaderTimeout: 50 * time.Millisecond}})
	timeout := httptest.NewServer(h)
	t.Cleanup(timeout.Close)

	tests := []struct {
		name       string
		srv        *httptest.Server
		path       string
		tenant     []string
		status     int
		code       string
		retryAfter string
		reached    bool
	}{
		{name: "no tenant header", srv: live, path: "/ping", status: 400, code: "missing_tenant"},
		{name: "tenant with a space", srv: live, path: "/ping", tenant: []string{"ac me"}, status: 400, code: "invalid_tenant"},
		{name: "tenant list", srv: live, path: "/ping", tenant: []string{"acme,globex"}, status: 400, code: "invalid_tenant"},
		{name: "two tenant headers", srv: live, path: "/ping", tenant: []string{"acme", "acme"}, status: 400, code: "invalid_tenant"},
		{name: "dot dot tenant", srv: live, path: "/ping", tenant: []string{".."}, status: 400, code: "invalid_tenant"},
		{name: "glob tenant", srv: live, path: "/ping", tenant: []string{"acme*"}, status: 400, code: "invalid_tenant"},
		{name: "long tenant", srv: live, path: "/ping", tenant: []string{strings.Repeat("a", 129)}, status: 400, code: "invalid_tenant"},
		{name: "unknown tenant", srv: live, path: "/ping", tenant: []string{"nobody"}, status: 401, code: "unknown_tenant"},
		{name: "tenant ids are case-sensitive", srv: live, path: "/ping", tenant: []string{"ACME"}, status: 401, code: "unknown_tenant"},
		{name: "revoked", srv: live, path: "/ping", tenant: []string{"revoked"}, status: 401, code: "reauthorization_required"},
		{name: "token unavailable", srv: live, path: "/ping", tenant: []string{"down"}, status: 503, code: "token_unavailable", retryAfter: "5"},
		{name: "upstream unreachable", srv: unreachable, path: "/ping", tenant: []string{"acme"}, status: 502, code: "upstream_unreachable"},
		{name: "upstream timeout", srv: timeout, path: "/slow", tenant: []string{"slow"}, status: 504, code: "upstream_timeout", reached: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := got.count()
			res, body := testutil.Do(t, nil, newRequest(t, http.MethodGet, tt.srv.URL+tt.path, nil, tt.tenant...))
			if res.StatusCode != tt.status {
				t.Errorf("status = %d; want %d", res.StatusCode, tt.status)
			}
			if ra := res.Header.Get("Retry-After"); ra != tt.retryAfter {
				t.Errorf("Retry-After = %q; want %q", ra, tt.retryAfter)
			}
			if code, _ := proxyError(t, res, body); code != tt.code {
				t.Errorf("code = %q; want %q", code, tt.code)
			}
			if reached := got.count() > before; reached != tt.reached {
				t.Errorf("upstream reached = %v; want %v", reached, tt.reached)
			}
		})
	}
}

func TestPathsStayUnderBase(t *testing.T) {
	upstream, got := newUpstream(t, nil)
	srv := newProxy(t, staticTokens(map[string]string{"acme": "tok"}), upstream)
	addr := strings.TrimPrefix(srv.URL, "http://")

	refused := []string{
		"/../secret",
		"/orders/../../secret",
		"/%2e%2e/secret",
		"/%2E%2E/%2e%2E/secret",
		"/orders/%2e%2e/%2e%2e/x",
		"/./orders",
		"//evil.example/x",
		"/orders//list",
		"/orders%2f..%2f..%2fsecret",
		"/orders%5c..%5csecret",
		"/orders\\..\\secret",
		"http://evil.example/api/v2/orders",
		"http://" + addr + "/../x",
	}
	for _, target := range refused {
		t.Run(target, func(t *testing.T) {
			before := got.count()
			res := testutil.RawHTTP(t, addr, "GET "+target+" HTTP/1.1\r\nHost: "+addr+"\r\nX-Tenant-ID: acme\r\nConnection: close\r\n\r\n", 5*time.Second)
			if res.StatusCode != http.StatusBadRequest {
				t.Errorf("GET %s: status %d; want 400", target, res.StatusCode)
			}
			if got.count() != before {
				t.Errorf("GET %s reached the upstream at %s", target, got.last().URL.Path)
			}
		})
	}

	allowed := map[string]string{
		"/orders/list":        "/api/v2/orders/list",
		"/mailing-lists/":     "/api/v2/mailing-lists/",
		"/recipients/a%20b":   "/api/v2/recipients/a b",
		"/orders/..list/x":    "/api/v2/orders/..list/x",
		"/":                   "/api/v2/",
		"/orders/list?x=../y": "/api/v2/orders/list",
	}
	for target, want := range allowed {
		t.Run(target, func(t *testing.T) {
			res := testutil.RawHTTP(t, addr, "GET "+target+" HTTP/1.1\r\nHost: evil.example\r\nX-Tenant-ID: acme\r\nConnection: close\r\n\r\n", 5*time.Second)
			res.Body.Close()
			if res.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: status %d; want 200", target, res.StatusCode)
			}
			r := got.last()
			if r.URL.Path != want {
				t.Errorf("GET %s reached %s; want %s", target, r.URL.Path, want)
			}
			if r.Host != upstream.Host {
				t.Errorf("GET %s with Host evil.example reached Host %q; want %q", target, r.Host, upstream.Host)
			}
		})
	}
}

func TestReplaysOnceAfter401(t *testing.T) {
	var current atomic.Value
	current.Store("new-token")
	upstream, got := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+current.Load().(string) {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"message":"Unauthenticated."}`)
			return
		}
		_, _ = io.WriteString(w, `{"ok":true}`)
	})
	var refusedCalls atomic.Int32
	tokens := &fakeTokens{
		token: func(context.Context, string) (string, error) { return "old-token", nil },
		refused: func(_ context.Context, tenant, token string) (string, error) {
			refusedCalls.Add(1)
			if token != "old-token" {
				return "", fmt.Errorf("refused(%q); want the injected token", token)
			}
			return current.Load().(string), nil
		},
	}
	h, _ := proxy.New(proxy.Config{Tokens: tokens, Upstream: upstream, MaxReplayBody: 16})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	post := func(body string) (*http.Response, string) {
		res, b := testutil.Do(t, nil, newRequest(t, http.MethodPost, srv.URL+"/send/postcard", strings.NewReader(body), "acme"))
		return res, string(b)
	}

	res, body := post(`{"a":1}`)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("small POST after a 401: status %d %s; want 200 after one replay", res.StatusCode, body)
	}
	if n := got.count(); n != 2 {
		t.Fatalf("upstream saw %d requests; want 2 (the refused one and the replay)", n)
	}
	if string(got.body[1]) != `{"a":1}` {
		t.Errorf("replayed body = %q; want the original", got.body[1])
	}

	// A body over MaxReplayBody streams through and is not replayed: the
	// caller gets the upstream's 401 as it is.
	res, body = post(strings.Repeat("x", 17))
	if res.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "Unauthenticated") || res.Header.Get(proxy.ErrorHeader) != "" {
		t.Errorf("large POST: status %d body %q; want the upstream's own 401", res.StatusCode, body)
	}
	if n := got.count(); n != 3 || len(got.body[2]) != 17 {
		t.Errorf("upstream saw %d requests (last body %d bytes); want 3, the whole body", n, len(got.body[2]))
	}

	// When the replacement is refused too, there is no second replay.
	current.Store("never-issued")
	tokens.refused = func(context.Context, string, string) (string, error) { return "also-bad", nil }
	res, _ = post("{}")
	if res.StatusCode != http.StatusUnauthorized {
		t.Errorf("status = %d; want the upstream's 401 after one replay", res.StatusCode)
	}
	if n := got.count(); n != 5 {
		t.Errorf("upstream saw %d requests; want 5 (one replay only)", n)
	}

	// A revocation discovered during the replay is the proxy's own error.
	tokens.refused = func(context.Context, string, string) (string, error) { return "", auth.ErrReauthorizationRequired }
	res, body = post("{}")
	if res.StatusCode != 401 || res.Header.Get(proxy.ErrorHeader) != "reauthorization_required" || !strings.Contains(body, `"error":"reauthorization_required"`) {
		t.Errorf("got %d %s; want 401 reauthorization_required", res.StatusCode, body)
	}
}

func TestUpstreamCannotSpeakForProxy(t *testing.T) {
	upstream, _ := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(proxy.ErrorHeader, "unknown_tenant")
		w.WriteHeader(http.StatusTeapot)
	})
	srv := newProxy(t, staticTokens(map[string]string{"acme": "tok"}), upstream)
	res, _ := testutil.Do(t, nil, newRequest(t, http.MethodGet, srv.URL+"/ping", nil, "acme"))
	if res.StatusCode != http.StatusTeapot || res.Header.Get(proxy.ErrorHeader) != "" {
		t.Errorf("got %d with %s=%q; want 418 without the header", res.StatusCode, proxy.ErrorHeader, res.Header.Get(proxy.ErrorHeader))
	}
}

func TestValidTenant(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"acme", true}, {"A.b_c-9", true}, {strings.Repeat("x", 128), true}, {"...", true},
		{"", false}, {".", false}, {"..", false}, {strings.Repeat("x", 129), false},
		{"a b", false}, {"a/b", false}, {"a:b", false}, {"a\x00", false}, {"é", false}, {"a*", false}, {"{a}", false},
	}
	for _, tt := range tests {
		if got := proxy.ValidTenant(tt.id); got != tt.want {
			t.Errorf("ValidTenant(%q) = %v; want %v", tt.id, got, tt.want)
		}
	}
}

func TestReplaysAfterThanksio403ForBadToken(t *testing.T) {
	upstream, got := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/api/v2/forbidden":
			w.WriteHeader(http.StatusForbidden)
			_, _ = io.WriteString(w, `{"message":"This action is unauthorized.","failure":true}`)
		case r.Header.Get("Authorization") != "Bearer fresh":
			w.WriteHeader(http.StatusForbidden)
			_, _ = io.WriteString(w, `{"message":"Unauthorized"}`)
		default:
			_, _ = io.WriteString(w, `{"ok":true}`)
		}
	})
	var refused atomic.Int32
	tokens := &fakeTokens{
		token: func(context.Context, string) (string, error) { return "stale", nil },
		refused: func(context.Context, string, string) (string, error) {
			refused.Add(1)
			return "fresh", nil
		},
	}
	srv := newProxy(t, tokens, upstream)
	for _, tt := range []struct {
		path      string
		status    int
		upstreams int
		body      string
	}{
		{"/ping", http.StatusOK, 2, `{"ok":true}`},
		{"/forbidden", http.StatusForbidden, 1, `{"message":"This action is unauthorized.","failure":true}`},
	} {
		before := got.count()
		res, body := testutil.Do(t, nil, newRequest(t, http.MethodGet, srv.URL+tt.path, nil, "acme"))
		if res.StatusCode != tt.status || string(body) != tt.body || got.count()-before != tt.upstreams {
			t.Errorf("GET %s: %d %s after %d upstream calls; want %d %s after %d", tt.path, res.StatusCode, body, got.count()-before, tt.status, tt.body, tt.upstreams)
		}
	}
	if n := refused.Load(); n != 1 {
		t.Errorf("Refused called %d times; want once (only for the bad-token 403)", n)
	}
}

// TestBodiesArriveWhole sends bodies around the sizes where the proxy's
// buffering changes (its chunks' edges, MaxReplayBody, MaxReplayMemory),
// framed by Content-Length and chunked, to an upstream that refuses the
// first token: the body arrives whole at every attempt, and none of it stays
// counted as held once the request is over.
func TestBodiesArriveWhole(t *testing.T) {
	const maxBody = 100 << 10
	var current atomic.Value
	current.Store("new-token")
	upstream, got := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+current.Load().(string) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = io.WriteString(w, `{"ok":true}`)
	})
	tokens := &fakeTokens{
		token:   func(context.Context, string) (string, error) { return "old-token", nil },
		refused: func(context.Context, string, string) (string, error) { return "new-token", nil },
	}
	for _, memory := range []int64{64 << 20, 4 << 10, 40 << 10} {
		h, err := proxy.New(proxy.Config{Tokens: tokens, Upstream: upstream, MaxReplayBody: maxBody, MaxReplayMemory: memory})
		if err != nil {
			t.Fatal(err)
		}
		srv := newServer(t, h)
		for _, size := range []int{1, 4095, 4096, 4097, 4096 + 32<<10, 4096 + 32<<10 + 1, 70000, maxBody, maxBody + 1, 3 * maxBody} {
			for _, chunked := range []bool{false, true} {
				t.Run(fmt.Sprintf("memory %d, %d bytes, chunked %v", memory, size, chunked), func(t *testing.T) {
					body := make([]byte, size)
					for i := range body {
						body[i] = byte('a' + i%26 + i/4096%7)
					}
					var r io.Reader = bytes.NewReader(body)
					if chunked {
						r = struct{ io.Reader }{r} // no length: sent chunked
					}
					before := got.count()
					res, _ := testutil.Do(t, nil, newRequest(t, http.MethodPost, srv.URL+"/send/postcard", r, "acme"))
					// Replayed when the proxy could keep it all: within
					// MaxReplayBody and within the memory bound (a 4 KiB
					// chunk, then 32 KiB ones).
					kept := size <= maxBody && (memory >= 64<<20 || memory == 40<<10 && size <= 4096+32<<10 || memory == 4<<10 && size <= 4096)
					wantStatus, wantAttempts := http.StatusUnauthorized, 1
					if kept {
						wantStatus, wantAttempts = http.StatusOK, 2
					}
					if res.StatusCode != wantStatus || got.count()-before != wantAttempts {
						t.Fatalf("status %d after %d attempts; want %d after %d", res.StatusCode, got.count()-before, wantStatus, wantAttempts)
					}
					got.mu.Lock()
					for i, b := range got.body[before:] {
						if !bytes.Equal(b, body) {
							t.Errorf("attempt %d: upstream got %d bytes, not the %d sent", i+1, len(b), len(body))
						}
					}
					got.mu.Unlock()
					if held := h.ReplayMemory(); held != 0 {
						t.Errorf("after the request, %d bytes are counted as held; want 0", held)
					}
				})
			}
		}
	}
}

// TestBodiesKeptApart sends many bodies at once, each different, to an
// upstream that refuses the first attempt of some before reading it: every
// attempt carries its own request's body, never bytes of another (the
// proxy's buffers are pooled, and a transport may still read a body after
// the upstream answered).
func TestBodiesKeptApart(t *testing.T) {
	var mismatches atomic.Int32
	check := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		first := r.Header.Get("Authorization") == "Bearer old-token"
		if first && r.Header.Get("X-Refuse-Unread") != "" {
			w.WriteHeader(http.StatusUnauthorized) // before reading the body
			return
		}
		b, err := io.ReadAll(r.Body)
		if err != nil || fmt.Sprintf("%x", sha256.Sum256(b)) != r.Header.Get("X-Digest") {
			mismatches.Add(1)
		}
		if first {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(check.Close)
	u, _ := url.Parse(check.URL + "/api/v2")
	tokens := &fakeTokens{
		token:   func(context.Context, string) (string, error) { return "old-token", nil },
		refused: func(context.Context, string, string) (string, error) { return "new-token", nil },
	}
	h, err := proxy.New(proxy.Config{Tokens: tokens, Upstream: u, MaxReplayBody: 256 << 10, MaxReplayMemory: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, h)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	t.Cleanup(client.CloseIdleConnections)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			body := make([]byte, 1+i*1531%(300<<10))
			for j := range body {
				body[j] = byte(i + j/1000)
			}
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/send/postcard", bytes.NewReader(body))
			req.Header.Set("X-Tenant-ID", "acme")
			req.Header.Set("X-Digest", fmt.Sprintf("%x", sha256.Sum256(body)))
			if i%3 == 0 {
				req.Header.Set("X-Refuse-Unread", "1")
			}
			res, err := client.Do(req)
			if err != nil {
				t.Errorf("request %d: %v", i, err)
				return
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		})
	}
	wg.Wait()
	if n := mismatches.Load(); n != 0 {
		t.Errorf("%d attempts carried a body other than their request's", n)
	}
	if held := h.ReplayMemory(); held != 0 {
		t.Errorf("after the requests, %d bytes are counted as held; want 0", held)
	}
}

// codeObserver records the proxy's error codes.
type codeObserver struct {
	mu    sync.Mutex
	codes []string
}

func (*codeObserver) Served(string, int, time.Duration) {}
func (*codeObserver) Upstream(int, time.Duration)       {}
func (*codeObserver) Replayed()                         {}
func (*codeObserver) UpstreamLimited(bool)              {}
func (*codeObserver) InFlight(int)                      {}
func (o *codeObserver) Failed(code string) {
	o.mu.Lock()
	o.codes = append(o.codes, code)
	o.mu.Unlock()
}

func TestCallerGoneWhileWaitingForItsTokenIsNotTokenUnavailable(t *testing.T) {
	upstream, _ := newUpstream(t, nil)
	waiting := make(chan struct{})
	obs := &codeObserver{}
	h, err := proxy.New(proxy.Config{
		Upstream: upstream,
		Observer: obs,
		Tokens: &fakeTokens{token: func(ctx context.Context, tenant string) (string, error) {
			close(waiting) // a refresh that takes its time
			<-ctx.Done()
			return "", ctx.Err()
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/ping", nil)
	req.Header.Set("X-Tenant-ID", "acme")
	rec := httptest.NewRecorder()
	served := make(chan struct{})
	go func() {
		h.ServeHTTP(rec, req)
		close(served)
	}()
	<-waiting
	cancel()
	<-served
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if len(obs.codes) != 1 || obs.codes[0] != proxy.CodeClientClosedRequest {
		t.Errorf("codes counted = %v; want [%s], not token_unavailable", obs.codes, proxy.CodeClientClosedRequest)
	}
	if got := rec.Header().Get(proxy.ErrorHeader); got == proxy.CodeTokenUnavailable {
		t.Errorf("the caller that went away was answered token_unavailable")
	}
}
