package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/proxy"
	"thanksio-proxy/store"
)

// The attack tables below send hostile requests as raw bytes, so that Go's
// client does not normalise them first, and check three things of each: the
// answer, whether the upstream was reached, and, when it was, that it saw
// only the named tenant's token and nothing of the caller's credentials.

// attackTokens are the tokens of the tenants the attack tables use.
var attackTokens = map[string]string{"acme": "tok-acme", "globex": "tok-globex"}

// attackProxy is a proxy in front of a recording upstream, for raw requests.
type attackProxy struct {
	addr     string // host:port of the proxy
	upstream *url.URL
	got      *seen
}

func newAttackProxy(t *testing.T, cfg proxy.Config) *attackProxy {
	t.Helper()
	return newAttackProxyTo(t, cfg, nil)
}

// newAttackProxyTo is newAttackProxy in front of an upstream that answers
// with handle (see newUpstream).
func newAttackProxyTo(t *testing.T, cfg proxy.Config, handle http.HandlerFunc) *attackProxy {
	t.Helper()
	upstream, got := newUpstream(t, handle)
	if cfg.Tokens == nil {
		cfg.Tokens = staticTokens(attackTokens)
	}
	cfg.Upstream = upstream
	h, err := proxy.New(cfg)
	if err != nil {
		t.Fatalf("proxy.New: %v", err)
	}
	srv := newServer(t, h)
	return &attackProxy{addr: strings.TrimPrefix(srv.URL, "http://"), upstream: upstream, got: got}
}

// rawGet is a GET of target with the given header lines, closing the
// connection after the answer.
func rawGet(target string, lines ...string) string {
	return rawMessage("GET "+target+" HTTP/1.1", lines, "")
}

// rawMessage joins a request line, header lines and a body; a Host line is
// added unless lines hold one, and "Connection: close" unless lines hold a
// Connection line.
func rawMessage(requestLine string, lines []string, body string) string {
	var b strings.Builder
	b.WriteString(requestLine + "\r\n")
	host, conn := false, false
	for _, l := range lines {
		lower := strings.ToLower(l)
		host = host || strings.HasPrefix(lower, "host:")
		conn = conn || strings.HasPrefix(lower, "connection:")
	}
	if !host && strings.HasSuffix(requestLine, "HTTP/1.1") {
		b.WriteString("Host: proxy.internal\r\n")
	}
	for _, l := range lines {
		b.WriteString(l + "\r\n")
	}
	if !conn {
		b.WriteString("Connection: close\r\n")
	}
	b.WriteString("\r\n")
	b.WriteString(body)
	return b.String()
}

// checkForwarded checks what the upstream received for tenant: the upstream
// host, a path under the base, exactly the tenant's bearer token, and none
// of the caller's credentials or of the headers that steer the proxy.
func checkForwarded(t *testing.T, upstream *url.URL, r *http.Request, tenant string) {
	t.Helper()
	if r.Host != upstream.Host {
		t.Errorf("upstream got Host %q; want %q", r.Host, upstream.Host)
	}
	if !strings.HasPrefix(r.URL.Path, "/api/v2/") {
		t.Errorf("upstream got path %q; want one under /api/v2/", r.URL.Path)
	}
	if a := r.Header.Values("Authorization"); len(a) != 1 || a[0] != "Bearer "+attackTokens[tenant] {
		t.Errorf("upstream got Authorization %q; want only %s's token", a, tenant)
	}
	for _, h := range []string{"X-Tenant-Id", "X-Caller-Key", "Cookie", "Proxy-Authorization", "X-Forwarded-Host", "Forwarded"} {
		if v := r.Header.Values(h); len(v) != 0 {
			t.Errorf("upstream got header %s = %q; want none", h, v)
		}
	}
	for h, v := range r.Trailer {
		switch http.CanonicalHeaderKey(h) {
		case "Authorization", "X-Tenant-Id", "X-Caller-Key", "Cookie", "Proxy-Authorization":
			t.Errorf("upstream got trailer %s = %q; want none", h, v)
		}
	}
}

// attack is one row of an attack table.
type attack struct {
	name string
	raw  string
	// status is the answer the caller must get.
	status int
	// code is the proxy's error code expected ("": the answer is not the
	// proxy's own error, so it came from the upstream or from net/http).
	code string
	// tenant is whose token the upstream must see; "" means the upstream
	// must not be reached at all.
	tenant string
	// check, if set, checks more of what the upstream received.
	check func(t *testing.T, r *http.Request, body []byte)
	// answer, if set, checks more of the answer the caller got.
	answer func(t *testing.T, res *http.Response)
}

func runAttacks(t *testing.T, p *attackProxy, attacks []attack) {
	t.Helper()
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			before := p.got.count()
			res := testutil.RawHTTP(t, p.addr, a.raw, 5*time.Second)
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != a.status {
				t.Errorf("status = %d (%s); want %d", res.StatusCode, strings.TrimSpace(string(body)), a.status)
			}
			if code := res.Header.Get(proxy.ErrorHeader); code != a.code {
				t.Errorf("%s = %q; want %q", proxy.ErrorHeader, code, a.code)
			}
			if a.answer != nil {
				a.answer(t, res)
			}
			n := p.got.count() - before
			if a.tenant == "" {
				if n != 0 {
					t.Errorf("the upstream was reached (%s %s); want no upstream request", p.got.last().Method, p.got.last().URL)
				}
				return
			}
			if n != 1 {
				t.Fatalf("the upstream got %d requests; want 1", n)
			}
			p.got.mu.Lock()
			r, b := p.got.reqs[len(p.got.reqs)-1], p.got.body[len(p.got.body)-1]
			p.got.mu.Unlock()
			checkForwarded(t, p.upstream, r, a.tenant)
			if a.check != nil {
				a.check(t, r, b)
			}
		})
	}
}

// upstreamPath checks the decoded and escaped path the upstream received.
func upstreamPath(path, escaped string) func(t *testing.T, r *http.Request, body []byte) {
	return func(t *testing.T, r *http.Request, _ []byte) {
		t.Helper()
		if r.URL.Path != path || r.URL.EscapedPath() != escaped {
			t.Errorf("upstream got path %q (escaped %q); want %q (%q)", r.URL.Path, r.URL.EscapedPath(), path, escaped)
		}
	}
}

// upstreamBody checks the body the upstream received.
func upstreamBody(want string) func(t *testing.T, r *http.Request, body []byte) {
	return func(t *testing.T, _ *http.Request, body []byte) {
		t.Helper()
		if string(body) != want {
			t.Errorf("upstream got body %q; want %q", body, want)
		}
	}
}

// noUnderscoreHeaders checks that no header whose name holds '_' reached the
// upstream: a front end may map X_Tenant_ID onto X-Tenant-ID.
func noUnderscoreHeaders(t *testing.T, r *http.Request, _ []byte) {
	t.Helper()
	for name, v := range r.Header {
		if strings.Contains(name, "_") {
			t.Errorf("upstream got header %s = %q; want no header name with '_'", name, v)
		}
	}
}

// noUpgrade checks that the upstream was not asked to switch protocols.
func noUpgrade(t *testing.T, r *http.Request, _ []byte) {
	t.Helper()
	for _, h := range []string{"Upgrade", "Connection", "Http2-Settings"} {
		if v := r.Header.Values(h); len(v) != 0 {
			t.Errorf("upstream got %s = %q; want none", h, v)
		}
	}
}

// allowHeader checks the Allow header of a 405.
func allowHeader(t *testing.T, res *http.Response) {
	t.Helper()
	if got, want := res.Header.Get("Allow"), "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"; got != want {
		t.Errorf("Allow = %q; want %q", got, want)
	}
}

// closes checks that the answer closes the connection.
func closes(t *testing.T, res *http.Response) {
	t.Helper()
	if !res.Close {
		t.Errorf("the answer keeps the connection open (Connection %q); want Connection: close", res.Header.Values("Connection"))
	}
}

func TestAttackPathEscapes(t *testing.T) {
	p := newAttackProxy(t, proxy.Config{})
	acme := "X-Tenant-ID: acme"
	invalid := func(target string) attack {
		return attack{name: target, raw: rawGet(target, acme), status: 400, code: proxy.CodeInvalidPath}
	}
	attacks := []attack{
		invalid("/../ping"),
		invalid("/orders/../../ping"),
		invalid("/orders/.."),
		invalid("/orders/."),
		invalid("/./ping"),
		invalid("/%2e%2e/ping"),
		invalid("/%2E%2E/ping"),
		invalid("/.%2e/ping"),
		invalid("/%2e./ping"),
		invalid("/orders/%2e%2e/%2e%2e/oauth/token"),
		invalid("/orders%2fping"),
		invalid("/orders%2F..%2F..%2Foauth"),
		invalid("/orders%5c..%5cping"),
		invalid("/orders\\..\\ping"),
		invalid("//evil.example/x"),
		invalid("//evil.example"),
		invalid("///evil.example/x"),
		invalid("/orders//list"),
		invalid("/ping%00"),
		invalid("/ping%0d%0aHost:%20evil.example"),
		invalid("/ping%7f"),
		invalid("/ping;/../oauth/token"),
		invalid("http://evil.example/x"),
		invalid("https://evil.example/api/v2/ping"),
		invalid("http://" + p.addr + "/ping"),
		invalid("HTTP://evil.example/x"),
		{name: "authority-form CONNECT", raw: rawMessage("CONNECT evil.example:443 HTTP/1.1", []string{"Host: evil.example:443", acme}, ""),
			status: 400, code: proxy.CodeInvalidPath},
		// net/http answers OPTIONS * itself; the handler never runs.
		{name: "asterisk-form OPTIONS", raw: rawMessage("OPTIONS * HTTP/1.1", []string{acme}, ""), status: 200},

		// What may pass arrives under the base, on the upstream host.
		{name: "Host names another host", raw: rawGet("/ping", "Host: evil.example", acme), status: 200, tenant: "acme",
			check: upstreamPath("/api/v2/ping", "/api/v2/ping")},
		// net/http refuses a Host that is not a host[:port].
		{name: "Host with userinfo", raw: rawGet("/ping", "Host: api.thanks.io@evil.example", acme), status: 400},
		{name: "Host with a path", raw: rawGet("/ping", "Host: evil.example/x", acme), status: 400},
		{name: "X-Forwarded-Host names another host", raw: rawGet("/ping", acme, "X-Forwarded-Host: evil.example", "Forwarded: host=evil.example"),
			status: 200, tenant: "acme"},
		{name: "HTTP/1.0 without Host", raw: rawMessage("GET /ping HTTP/1.0", []string{acme}, ""), status: 200, tenant: "acme"},
		{name: "dots in the query are data", raw: rawGet("/ping?next=/../../oauth/token", acme), status: 200, tenant: "acme",
			check: func(t *testing.T, r *http.Request, _ []byte) {
				if r.URL.Path != "/api/v2/ping" || r.URL.RawQuery != "next=/../../oauth/token" {
					t.Errorf("upstream got %s?%s; want /api/v2/ping?next=/../../oauth/token", r.URL.Path, r.URL.RawQuery)
				}
			}},
		{name: "double-encoded dots stay one literal segment", raw: rawGet("/%252e%252e/ping", acme), status: 200, tenant: "acme",
			check: upstreamPath("/api/v2/%2e%2e/ping", "/api/v2/%252e%252e/ping")},
		{name: "dots inside a segment", raw: rawGet("/orders/..list/x", acme), status: 200, tenant: "acme",
			check: upstreamPath("/api/v2/orders/..list/x", "/api/v2/orders/..list/x")},
		// Two Host headers are refused by net/http before the handler.
		{name: "two Host headers", raw: rawGet("/ping", "Host: a.example", "Host: evil.example", acme), status: 400},
		{name: "HTTP/1.1 without Host", raw: "GET /ping HTTP/1.1\r\n" + acme + "\r\nConnection: close\r\n\r\n", status: 400},
	}
	runAttacks(t, p, attacks)
}

func TestAttackTenantHeader(t *testing.T) {
	p := newAttackProxy(t, proxy.Config{})
	invalid := func(name string, lines ...string) attack {
		return attack{name: name, raw: rawGet("/ping", lines...), status: 400, code: proxy.CodeInvalidTenant}
	}
	// refusedByServer is a request net/http refuses (400) before the proxy
	// sees it.
	refusedByServer := func(name string, lines ...string) attack {
		return attack{name: name, raw: rawGet("/ping", lines...), status: 400}
	}
	attacks := []attack{
		{name: "no tenant header", raw: rawGet("/ping"), status: 400, code: proxy.CodeMissingTenant},
		{name: "tenant in the query only", raw: rawGet("/ping?X-Tenant-ID=acme&tenant=acme"), status: 400, code: proxy.CodeMissingTenant},
		{name: "tenant in a cookie only", raw: rawGet("/ping", "Cookie: X-Tenant-ID=acme"), status: 400, code: proxy.CodeMissingTenant},
		{name: "underscore header is another header", raw: rawGet("/ping", "X_Tenant_ID: acme"), status: 400, code: proxy.CodeMissingTenant},
		// A front end may map a name with '_' onto the one with '-': such
		// headers never reach the upstream.
		{name: "underscore tenant header beside the real one", raw: rawGet("/ping", "X-Tenant-ID: acme", "X-Tenant_ID: globex", "X_Tenant_ID: globex"),
			status: 200, tenant: "acme", check: noUnderscoreHeaders},
		invalid("two tenant headers", "X-Tenant-ID: acme", "X-Tenant-ID: globex"),
		invalid("two equal tenant headers", "X-Tenant-ID: acme", "X-Tenant-ID: acme"),
		invalid("two tenant headers in different case", "X-Tenant-ID: acme", "x-tenant-id: globex"),
		invalid("a list", "X-Tenant-ID: acme, globex"),
		invalid("a list without space", "X-Tenant-ID: acme,globex"),
		invalid("empty", "X-Tenant-ID:"),
		invalid("blank", "X-Tenant-ID:    "),
		invalid("inner space", "X-Tenant-ID: ac me"),
		invalid("inner tab", "X-Tenant-ID: ac\tme"),
		invalid("star", "X-Tenant-ID: *"),
		invalid("glob star", "X-Tenant-ID: acme*"),
		invalid("glob question mark", "X-Tenant-ID: acm?"),
		invalid("glob class", "X-Tenant-ID: [a]cme"),
		invalid("hash tag braces", "X-Tenant-ID: {acme}"),
		invalid("hash tag close", "X-Tenant-ID: acme}:token"),
		invalid("colon", "X-Tenant-ID: acme:lock"),
		invalid("slash", "X-Tenant-ID: acme/../globex"),
		invalid("percent", "X-Tenant-ID: acme%00"),
		invalid("dot", "X-Tenant-ID: ."),
		invalid("dot dot", "X-Tenant-ID: .."),
		invalid("non-ASCII lookalike", "X-Tenant-ID: \u0430cme"),
		invalid("Latin-1 byte", "X-Tenant-ID: acm\xe9"),
		invalid("129 characters", "X-Tenant-ID: "+strings.Repeat("a", 129)),
		refusedByServer("NUL", "X-Tenant-ID: acme\x00"),
		refusedByServer("control character", "X-Tenant-ID: acme\x01"),
		refusedByServer("DEL", "X-Tenant-ID: acme\x7f"),
		refusedByServer("bare CR", "X-Tenant-ID: acme\rX-Tenant-ID: globex"),
		refusedByServer("space before the colon", "X-Tenant-ID : globex", "X-Tenant-ID: acme"),
		// obs-fold: a continuation line joins the header to "acme globex"
		// (or net/http refuses it); either way nobody's token is used.
		{name: "obs-fold", raw: rawGet("/ping", "X-Tenant-ID: acme", " globex"), status: 400, code: proxy.CodeInvalidTenant},
		{name: "obs-fold with tab", raw: rawGet("/ping", "X-Tenant-ID: acme", "\tglobex"), status: 400, code: proxy.CodeInvalidTenant},
		{name: "case differs from a known tenant", raw: rawGet("/ping", "X-Tenant-ID: ACME"), status: 401, code: proxy.CodeUnknownTenant},

		// Optional whitespace around a value is not part of it (RFC 9110
		// 5.5): "acme " is acme, and the upstream sees acme's token only.
		{name: "trailing spaces", raw: rawGet("/ping", "X-Tenant-ID: acme   "), status: 200, tenant: "acme"},
		{name: "leading spaces", raw: rawGet("/ping", "X-Tenant-ID:    acme"), status: 200, tenant: "acme"},
		{name: "tabs around", raw: rawGet("/ping", "X-Tenant-ID:\tacme\t"), status: 200, tenant: "acme"},
		{name: "no space after the colon", raw: rawGet("/ping", "X-Tenant-ID:globex"), status: 200, tenant: "globex"},
		{name: "lower-case header name", raw: rawGet("/ping", "x-tenant-id: globex"), status: 200, tenant: "globex"},
		{name: "tenant header listed in Connection", raw: rawGet("/ping", "X-Tenant-ID: acme", "Connection: X-Tenant-ID"), status: 200, tenant: "acme"},
		{name: "tenant header listed in Connection with close", raw: rawGet("/ping", "X-Tenant-ID: globex", "Connection: close, X-Tenant-ID"), status: 200, tenant: "globex"},
		// A trailer is read after the handler chose the tenant: it names
		// nobody, and it must not reach the upstream either.
		{name: "tenant only in a trailer",
			raw: rawMessage("POST /ping HTTP/1.1", []string{"Transfer-Encoding: chunked", "Trailer: X-Tenant-ID"},
				"5\r\nhello\r\n0\r\nX-Tenant-ID: acme\r\n\r\n"),
			status: 400, code: proxy.CodeMissingTenant},
		{name: "another tenant in a trailer",
			raw: rawMessage("POST /ping HTTP/1.1", []string{"X-Tenant-ID: acme", "Transfer-Encoding: chunked", "Trailer: X-Tenant-ID"},
				"5\r\nhello\r\n0\r\nX-Tenant-ID: globex\r\n\r\n"),
			status: 200, tenant: "acme", check: upstreamBody("hello")},
	}
	runAttacks(t, p, attacks)
}

func TestAttackCallerCredentials(t *testing.T) {
	p := newAttackProxy(t, proxy.Config{})
	post := func(lines ...string) string {
		return rawMessage("POST /send/postcard HTTP/1.1", append(lines, "Content-Length: 5"), "hello")
	}
	attacks := []attack{
		{name: "caller Authorization", raw: rawGet("/ping", "X-Tenant-ID: acme", "Authorization: Bearer tok-globex"), status: 200, tenant: "acme"},
		{name: "two caller Authorization headers", raw: rawGet("/ping", "X-Tenant-ID: acme", "Authorization: Bearer tok-globex", "Authorization: Basic eDp5"),
			status: 200, tenant: "acme"},
		{name: "lower-case authorization", raw: rawGet("/ping", "X-Tenant-ID: acme", "authorization: Bearer tok-globex"), status: 200, tenant: "acme"},
		{name: "Cookie and Proxy-Authorization", raw: rawGet("/ping", "X-Tenant-ID: acme", "Cookie: laravel_session=x", "Proxy-Authorization: Basic eDp5"),
			status: 200, tenant: "acme"},
		{name: "caller key header", raw: rawGet("/ping", "X-Tenant-ID: acme", "X-Caller-Key: secret"), status: 200, tenant: "acme"},
		{name: "Connection: Authorization", raw: rawGet("/ping", "X-Tenant-ID: acme", "Authorization: Bearer tok-globex", "Connection: Authorization"),
			status: 200, tenant: "acme"},
		{name: "Connection: close, Authorization", raw: rawGet("/ping", "X-Tenant-ID: globex", "Connection: close, Authorization"),
			status: 200, tenant: "globex"},
		{name: "Connection lists every credential", raw: rawGet("/ping", "X-Tenant-ID: acme",
			"Connection: close, Authorization, Cookie, Proxy-Authorization, X-Request-ID, X-Tenant-ID"), status: 200, tenant: "acme",
			check: func(t *testing.T, r *http.Request, _ []byte) {
				if r.Header.Get("X-Request-Id") == "" {
					t.Errorf("upstream got no X-Request-ID; the proxy sets one after hop-by-hop removal")
				}
			}},
		{name: "credentials in trailers", raw: rawMessage("POST /send/postcard HTTP/1.1",
			[]string{"X-Tenant-ID: acme", "Transfer-Encoding: chunked", "Trailer: Authorization, Cookie"},
			"5\r\nhello\r\n0\r\nAuthorization: Bearer tok-globex\r\nCookie: a=b\r\n\r\n"),
			status: 200, tenant: "acme", check: upstreamBody("hello")},
		{name: "body with Connection: Content-Length", raw: post("X-Tenant-ID: acme", "Connection: close, Content-Length"),
			status: 200, tenant: "acme", check: upstreamBody("hello")},
		{name: "credentials under names with underscores", raw: rawGet("/ping", "X-Tenant-ID: acme",
			"X_Caller_Key: secret", "X-Caller_Key: secret", "Proxy_Authorization: Basic eDp5", "X_Forwarded_For: 10.0.0.1", "Authorization_: Bearer tok-globex"),
			status: 200, tenant: "acme", check: noUnderscoreHeaders},
	}
	runAttacks(t, p, attacks)
}

func TestAttackRequestSmuggling(t *testing.T) {
	p := newAttackProxy(t, proxy.Config{})
	acme := "X-Tenant-ID: acme"
	smuggled := "GET /ping HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: globex\r\n\r\n"
	attacks := []attack{
		{name: "two Content-Length values", raw: rawMessage("POST /send/postcard HTTP/1.1",
			[]string{acme, "Content-Length: 5", "Content-Length: 50"}, "hello"), status: 400},
		{name: "a Content-Length list", raw: rawMessage("POST /send/postcard HTTP/1.1",
			[]string{acme, "Content-Length: 5, 50"}, "hello"), status: 400},
		{name: "signed Content-Length", raw: rawMessage("POST /send/postcard HTTP/1.1",
			[]string{acme, "Content-Length: +5"}, "hello"), status: 400},
		{name: "hex Content-Length", raw: rawMessage("POST /send/postcard HTTP/1.1",
			[]string{acme, "Content-Length: 0x5"}, "hello"), status: 400},
		{name: "unknown Transfer-Encoding", raw: rawMessage("POST /send/postcard HTTP/1.1",
			[]string{acme, "Transfer-Encoding: xchunked"}, "5\r\nhello\r\n0\r\n\r\n"), status: 501},
		{name: "chunked then identity", raw: rawMessage("POST /send/postcard HTTP/1.1",
			[]string{acme, "Transfer-Encoding: chunked, identity"}, "5\r\nhello\r\n0\r\n\r\n"), status: 501},
		{name: "two Transfer-Encoding headers", raw: rawMessage("POST /send/postcard HTTP/1.1",
			[]string{acme, "Transfer-Encoding: chunked", "Transfer-Encoding: identity"}, "5\r\nhello\r\n0\r\n\r\n"), status: 501},
		// A body that looks like a request stays a body: the upstream gets
		// one request, with acme's token, and the body as sent.
		{name: "request inside a body", raw: rawMessage("POST /send/postcard HTTP/1.1",
			[]string{acme, fmt.Sprintf("Content-Length: %d", len(smuggled))}, smuggled),
			status: 200, tenant: "acme", check: upstreamBody(smuggled)},
		{name: "request inside a chunked body", raw: rawMessage("POST /send/postcard HTTP/1.1",
			[]string{acme, "Transfer-Encoding: chunked"}, fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled)),
			status: 200, tenant: "acme", check: upstreamBody(smuggled)},
		{name: "chunk extensions", raw: rawMessage("POST /send/postcard HTTP/1.1",
			[]string{acme, "Transfer-Encoding: chunked"}, "5;name=\"x\r\nGET /\"\r\nhello\r\n0\r\n\r\n"), status: 400, code: proxy.CodeBadRequest},
		{name: "obs-fold in another header", raw: rawGet("/ping", acme, "X-Note: a", " b"), status: 200, tenant: "acme"},
	}
	runAttacks(t, p, attacks)
}

// TestAttackChunkedWithContentLength sends a request framed two ways
// (Transfer-Encoding: chunked and a Content-Length) followed, on the same
// connection, by a second request that a front end trusting the
// Content-Length would take for body bytes. RFC 9112 section 6.1: the server
// may process such a request by its Transfer-Encoding alone, but must close
// the connection after answering it, so that the bytes behind it are never
// taken for a request.
func TestAttackChunkedWithContentLength(t *testing.T) {
	p := newAttackProxy(t, proxy.Config{})
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: globex\r\n\r\n"
	// An HTTP/1.0 request with Transfer-Encoding: net/http drops the header
	// (issue 12785) and frames the body by its Content-Length, or takes it for
	// empty without one, where a front end may have read it as chunked.
	// RFC 9112 section 6.1: the framing is faulty, and the connection closes
	// after the answer. The chunk below holds the smuggled request for a
	// front end that reads it as chunked; by its Content-Length (4: the
	// chunk-size line), the smuggled request follows the body.
	http10Body := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled)
	http10Length := fmt.Sprintf("Content-Length: %d", len(fmt.Sprintf("%x\r\n", len(smuggled))))
	for _, tt := range []struct {
		name  string
		lines []string
		// http10 sends the request as HTTP/1.0 with body (default: HTTP/1.1
		// with the empty chunked body, then the smuggled request).
		http10 bool
		body   string
	}{
		{name: "Content-Length then Transfer-Encoding", lines: []string{"Content-Length: 48", "Transfer-Encoding: chunked"}},
		{name: "Transfer-Encoding then Content-Length", lines: []string{"Transfer-Encoding: chunked", "Content-Length: 48"}},
		{name: "folded Transfer-Encoding", lines: []string{"Transfer-Encoding:", " chunked", "Content-Length: 48"}},
		{name: "HTTP/1.0, Content-Length then Transfer-Encoding", lines: []string{http10Length, "Transfer-Encoding: chunked"}, http10: true, body: http10Body},
		{name: "HTTP/1.0, Transfer-Encoding then Content-Length", lines: []string{"Transfer-Encoding: chunked", http10Length}, http10: true, body: http10Body},
		{name: "HTTP/1.0, folded Transfer-Encoding", lines: []string{"Transfer-Encoding:", " chunked", http10Length}, http10: true, body: http10Body},
		{name: "HTTP/1.0, chunked alone", lines: []string{"Transfer-Encoding: chunked"}, http10: true, body: smuggled},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := p.got.count()
			conn, br := testutil.RawConn(t, p.addr, 5*time.Second)
			requestLine, body := "POST /send/postcard HTTP/1.1", "0\r\n\r\n"+smuggled
			if tt.http10 {
				requestLine, body = "POST /send/postcard HTTP/1.0", tt.body
			}
			raw := rawMessage(requestLine,
				append([]string{"X-Tenant-ID: acme", "Connection: keep-alive"}, tt.lines...), body)
			res, _ := testutil.Exchange(t, conn, br, raw)
			if res.StatusCode != http.StatusBadRequest && res.StatusCode != http.StatusOK {
				t.Errorf("first answer %d; want 400, or 200 for the request read by its Transfer-Encoding", res.StatusCode)
			}
			if second, err := http.ReadResponse(br, nil); err == nil {
				second.Body.Close()
				t.Errorf("the connection stayed open and the bytes after the chunked body were answered as a request (%d); "+
					"want the connection closed after the first answer", second.StatusCode)
			}
			p.got.mu.Lock()
			defer p.got.mu.Unlock()
			for _, r := range p.got.reqs[before:] {
				if strings.Contains(r.URL.Path, "smuggled") {
					t.Errorf("the upstream got the smuggled request %s with Authorization %q", r.URL.Path, r.Header.Get("Authorization"))
				}
			}
		})
	}
}

// TestAttackKeepAliveConnection sends requests for two tenants one after the
// other on one connection: nothing of one request carries into the next.
func TestAttackKeepAliveConnection(t *testing.T) {
	p := newAttackProxy(t, proxy.Config{})
	conn, br := testutil.RawConn(t, p.addr, 10*time.Second)
	tenants := []string{"acme", "globex", "acme", "acme", "globex", "nobody", "globex", "acme"}
	for i, tenant := range tenants {
		before := p.got.count()
		// Each request also carries the other tenant's token as the caller's
		// own Authorization, to see that it never sticks.
		other := "globex"
		if tenant == "globex" {
			other = "acme"
		}
		raw := rawMessage(fmt.Sprintf("GET /ping/%s/%d HTTP/1.1", tenant, i),
			[]string{"X-Tenant-ID: " + tenant, "Authorization: Bearer " + attackTokens[other], "Connection: keep-alive"}, "")
		res, _ := testutil.Exchange(t, conn, br, raw)
		if tenant == "nobody" {
			if res.StatusCode != 401 || p.got.count() != before {
				t.Errorf("request %d for an unknown tenant: %d, upstream reached %v; want 401 and no upstream request", i, res.StatusCode, p.got.count() != before)
			}
			continue
		}
		if res.StatusCode != 200 || p.got.count() != before+1 {
			t.Fatalf("request %d for %s: %d with %d upstream requests; want 200 and 1", i, tenant, res.StatusCode, p.got.count()-before)
		}
		r := p.got.last()
		if want := fmt.Sprintf("/api/v2/ping/%s/%d", tenant, i); r.URL.Path != want {
			t.Errorf("request %d: upstream got %s; want %s", i, r.URL.Path, want)
		}
		checkForwarded(t, p.upstream, r, tenant)
	}
}

// TestAttackExpectContinue checks that a body waits for the proxy's go-ahead:
// it is asked for, and arrives intact, only when the request will be
// forwarded.
func TestAttackExpectContinue(t *testing.T) {
	p := newAttackProxy(t, proxy.Config{})
	const body = `{"message":"hello"}`
	send := func(t *testing.T, lines ...string) (*http.Response, net.Conn, *bufio.Reader) {
		t.Helper()
		conn, br := testutil.RawConn(t, p.addr, 10*time.Second)
		head := rawMessage("POST /send/postcard HTTP/1.1",
			append(lines, "Expect: 100-continue", fmt.Sprintf("Content-Length: %d", len(body))), "")
		if _, err := io.WriteString(conn, head); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		return res, conn, br
	}

	t.Run("known tenant", func(t *testing.T) {
		before := p.got.count()
		res, conn, br := send(t, "X-Tenant-ID: acme")
		if res.StatusCode != http.StatusContinue {
			t.Fatalf("first answer %d; want 100 Continue", res.StatusCode)
		}
		if _, err := io.WriteString(conn, body); err != nil {
			t.Fatal(err)
		}
		// The upstream's own 100 Continue may be relayed too: skip 1xx.
		res, err := http.ReadResponse(br, nil)
		for err == nil && res.StatusCode/100 == 1 {
			res, err = http.ReadResponse(br, nil)
		}
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK || p.got.count() != before+1 {
			t.Fatalf("final answer %d with %d upstream requests; want 200 and 1", res.StatusCode, p.got.count()-before)
		}
		p.got.mu.Lock()
		r, b := p.got.reqs[len(p.got.reqs)-1], p.got.body[len(p.got.body)-1]
		p.got.mu.Unlock()
		checkForwarded(t, p.upstream, r, "acme")
		if string(b) != body {
			t.Errorf("upstream got body %q; want %q", b, body)
		}
	})

	refused := []struct {
		name   string
		lines  []string
		status int
		code   string
	}{
		{"unknown tenant", []string{"X-Tenant-ID: nobody"}, 401, proxy.CodeUnknownTenant},
		{"no tenant", nil, 400, proxy.CodeMissingTenant},
		{"two tenants", []string{"X-Tenant-ID: acme", "X-Tenant-ID: globex"}, 400, proxy.CodeInvalidTenant},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			before := p.got.count()
			// The body is never sent: the answer must come without it.
			res, _, _ := send(t, tt.lines...)
			res.Body.Close()
			if res.StatusCode != tt.status || res.Header.Get(proxy.ErrorHeader) != tt.code {
				t.Errorf("answer %d %s; want %d %s without asking for the body", res.StatusCode, res.Header.Get(proxy.ErrorHeader), tt.status, tt.code)
			}
			if p.got.count() != before {
				t.Errorf("the upstream was reached")
			}
		})
	}
	t.Run("invalid path", func(t *testing.T) {
		before := p.got.count()
		conn, br := testutil.RawConn(t, p.addr, 10*time.Second)
		_, _ = io.WriteString(conn, rawMessage("POST /%2e%2e/oauth/token HTTP/1.1",
			[]string{"X-Tenant-ID: acme", "Expect: 100-continue", "Content-Length: 5"}, ""))
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 400 || res.Header.Get(proxy.ErrorHeader) != proxy.CodeInvalidPath || p.got.count() != before {
			t.Errorf("answer %d %s, upstream reached %v; want 400 invalid_path and no upstream request",
				res.StatusCode, res.Header.Get(proxy.ErrorHeader), p.got.count() != before)
		}
	})
}

// noRedirects is a client that hands redirects back instead of following
// them, as a careful caller does.
var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func TestAttackUpstreamRedirect(t *testing.T) {
	var evilHits atomic.Int32
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		evilHits.Add(1)
	}))
	t.Cleanup(evil.Close)
	upstream, got := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		status := http.StatusFound
		switch r.URL.Path {
		case "/api/v2/307":
			status = http.StatusTemporaryRedirect
		case "/api/v2/308":
			status = http.StatusPermanentRedirect
		case "/api/v2/401":
			status = http.StatusUnauthorized
		}
		w.Header().Set("Location", evil.URL+"/steal")
		w.WriteHeader(status)
	})
	srv := newProxy(t, staticTokens(attackTokens), upstream)
	for _, tt := range []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/302", http.StatusFound},
		{http.MethodPost, "/307", http.StatusTemporaryRedirect},
		{http.MethodPut, "/308", http.StatusPermanentRedirect},
		{http.MethodPost, "/401", http.StatusUnauthorized},
	} {
		t.Run(tt.path, func(t *testing.T) {
			before := got.count()
			req, _ := http.NewRequest(tt.method, srv.URL+tt.path, strings.NewReader(`{"a":1}`))
			req.Header.Set("X-Tenant-ID", "acme")
			res, err := noRedirects.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != tt.status || res.Header.Get("Location") != evil.URL+"/steal" {
				t.Errorf("caller got %d Location %q; want the upstream's %d as it is", res.StatusCode, res.Header.Get("Location"), tt.status)
			}
			if n := got.count() - before; n != 1 {
				t.Errorf("upstream got %d requests; want 1", n)
			}
			if n := evilHits.Load(); n != 0 {
				t.Errorf("the redirect target got %d requests; the proxy must not follow redirects", n)
			}
		})
	}
}

func TestAttackUpstreamSpeaksForProxy(t *testing.T) {
	var current atomic.Value
	current.Store("tok-acme")
	upstream, got := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(proxy.ErrorHeader, "unknown_tenant")
		switch r.URL.Path {
		case "/api/v2/raw-name":
			// Sent as written; the proxy's transport canonicalises it.
			delete(w.Header(), proxy.ErrorHeader)
			w.Header()["x-thanksio-proxy-error"] = []string{"unknown_tenant"}
		case "/api/v2/trailer":
			w.Header().Set("Trailer", proxy.ErrorHeader)
			w.Header().Del(proxy.ErrorHeader)
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, `{"ok":true}`)
			w.Header().Set(proxy.ErrorHeader, "token_unavailable")
			return
		case "/api/v2/undeclared-trailer":
			w.Header().Del(proxy.ErrorHeader)
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, `{"ok":true}`)
			// Flush so that the answer is chunked and can carry a trailer.
			_ = http.NewResponseController(w).Flush()
			w.Header().Set(http.TrailerPrefix+proxy.ErrorHeader, "token_unavailable")
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+current.Load().(string) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusTeapot)
	})
	tokens := staticTokens(map[string]string{"acme": "tok-acme", "stale": "tok-stale"})
	tokens.refused = func(_ context.Context, tenant, token string) (string, error) {
		if tenant == "stale" {
			return "tok-acme", nil
		}
		return "", auth.ErrNoBetterToken
	}
	srv := newProxy(t, tokens, upstream)
	for _, tt := range []struct {
		name, tenant, path string
		status             int
	}{
		{"on a success", "acme", "/ping", http.StatusTeapot},
		{"on the upstream's 401", "globex-less", "/ping", 0},
		{"in another case", "acme", "/raw-name", http.StatusTeapot},
		{"on a replayed request", "stale", "/ping", http.StatusTeapot},
		{"as a trailer", "acme", "/trailer", http.StatusOK},
		{"as an undeclared trailer", "acme", "/undeclared-trailer", http.StatusOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tenant := tt.tenant
			status := tt.status
			if tenant == "globex-less" {
				// A tenant whose token the upstream refuses: its 401 comes
				// back as it is, without the forged header.
				tenant, status = "acme", http.StatusUnauthorized
				current.Store("tok-other")
				defer current.Store("tok-acme")
			}
			before := got.count()
			res, _ := testutil.Do(t, nil, newRequest(t, http.MethodGet, srv.URL+tt.path, nil, tenant))
			if res.StatusCode != status {
				t.Errorf("status = %d; want %d", res.StatusCode, status)
			}
			if got.count() == before {
				t.Errorf("the upstream was not reached")
			}
			if v := res.Header.Values(proxy.ErrorHeader); len(v) != 0 {
				t.Errorf("caller got header %s = %q from the upstream; want it removed", proxy.ErrorHeader, v)
			}
			if v := res.Trailer.Values(proxy.ErrorHeader); len(v) != 0 {
				t.Errorf("caller got trailer %s = %q from the upstream; want it removed", proxy.ErrorHeader, v)
			}
		})
	}
}

// isolationUpstream is an upstream that knows every token it issued and to
// which tenant, and notes any request whose token is not the tenant's named
// in its path (/api/v2/echo/<tenant>/<n>). The first request for a number
// in rotateAt rotates every tenant's token (as another replica's refresh
// would) before it is answered, and tokens of older generations are
// answered 401, as a rotated token is: the requests in flight then are
// replayed.
type isolationUpstream struct {
	rotateAt map[string]bool
	rotate   func(generation int)

	mu         sync.Mutex
	owner      map[string]string // token -> tenant
	generation map[string]int    // token -> generation
	current    int
	// planned is the last generation a rotation was started for: two
	// rotations that start before either has raised current still get
	// generations of their own.
	planned    int
	violations []string
	served     int
	stale      int
}

func (u *isolationUpstream) issue(tenant string, generation int) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	tok := fmt.Sprintf("tok-%s-%d", tenant, generation)
	u.owner[tok] = tenant
	u.generation[tok] = generation
	return tok
}

func (u *isolationUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/api/v2/echo/"), "/")
	auths := r.Header.Values("Authorization")
	u.mu.Lock()
	u.served++
	next := 0
	if len(parts) == 2 && u.rotateAt[parts[1]] {
		delete(u.rotateAt, parts[1])
		u.planned++
		next = u.planned
	}
	u.mu.Unlock()
	if next > 0 {
		u.rotate(next)
	}

	u.mu.Lock()
	defer u.mu.Unlock()
	if len(parts) != 2 || len(auths) != 1 || !strings.HasPrefix(auths[0], "Bearer ") {
		u.violations = append(u.violations, fmt.Sprintf("%s with Authorization %q", r.URL.Path, auths))
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	tok := strings.TrimPrefix(auths[0], "Bearer ")
	if owner := u.owner[tok]; owner != parts[0] {
		u.violations = append(u.violations, fmt.Sprintf("%s carried a token of %q", r.URL.Path, owner))
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if v := r.Header.Values("X-Tenant-Id"); len(v) != 0 {
		u.violations = append(u.violations, fmt.Sprintf("%s carried the tenant header %q", r.URL.Path, v))
	}
	if u.generation[tok] < u.current {
		u.stale++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	_, _ = io.WriteString(w, parts[0])
}

// TestAttackTenantIsolationUnderConcurrency runs two tenants' requests
// concurrently through the real token lifecycle while their tokens rotate:
// every request reaches the upstream with its own tenant's token, including
// the replays after a 401.
func TestAttackTenantIsolationUnderConcurrency(t *testing.T) {
	st := store.NewMemory()
	tokens := auth.New(auth.Config{Store: st})
	if err := tokens.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tokens.Close)
	tenants := []string{"acme", "globex"}
	up := &isolationUpstream{rotateAt: map[string]bool{"60": true, "140": true, "220": true},
		owner: map[string]string{}, generation: map[string]int{}, planned: 1}
	up.rotate = func(generation int) {
		for _, tenant := range tenants {
			tok := up.issue(tenant, generation)
			if _, err := tokens.Import(context.Background(), tenant, auth.Grant{AccessToken: tok}); err != nil {
				t.Errorf("Import(%q): %v", tenant, err)
			}
		}
		up.mu.Lock()
		up.current = max(up.current, generation)
		up.mu.Unlock()
	}
	up.rotate(1)
	upSrv := httptest.NewServer(up)
	t.Cleanup(upSrv.Close)
	upstream, _ := url.Parse(upSrv.URL + "/api/v2")

	h, err := proxy.New(proxy.Config{Tokens: tokens, Upstream: upstream})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, h)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	t.Cleanup(client.CloseIdleConnections)

	const perTenant = 300
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	wrongBody := 0
	for i := range perTenant {
		for _, tenant := range tenants {
			wg.Go(func() {
				req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/echo/%s/%d", srv.URL, tenant, i), nil)
				req.Header.Set("X-Tenant-ID", tenant)
				res, err := client.Do(req)
				if err != nil {
					t.Errorf("request: %v", err)
					return
				}
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				mu.Lock()
				defer mu.Unlock()
				statuses[res.StatusCode]++
				if res.StatusCode == http.StatusOK && string(body) != tenant {
					wrongBody++
				}
			})
		}
	}
	wg.Wait()

	up.mu.Lock()
	defer up.mu.Unlock()
	for _, v := range up.violations {
		t.Errorf("isolation broken: %s", v)
	}
	if wrongBody != 0 {
		t.Errorf("%d callers got an answer meant for the other tenant", wrongBody)
	}
	// A rotated token is answered 401 and replayed with the current one; a
	// replay can itself lose to a later rotation, and that 401 stands.
	if statuses[http.StatusOK]+statuses[http.StatusUnauthorized] != 2*perTenant || statuses[http.StatusOK] < perTenant/2 {
		t.Errorf("statuses = %v; want mostly 200, and nothing but 200 or 401", statuses)
	}
	if up.stale == 0 || up.current != 4 {
		t.Errorf("no request was refused for a rotated token (%d rotations): the replays were not exercised", up.current-1)
	}
	t.Logf("statuses %v; %d upstream requests, %d refused as stale, %d rotations", statuses, up.served, up.stale, up.current-1)
}

// TestAttackCallerIsolation runs two callers, each allowed one tenant,
// concurrently, with each also trying the other's tenant: the upstream sees
// only allowed requests, each with its own tenant's token.
func TestAttackCallerIsolation(t *testing.T) {
	p := newAttackProxy(t, proxy.Config{Callers: newCallers(t, "billing billing-key acme", "reports reports-key glob*")})

	rows := []attack{
		{name: "allowed", raw: rawGet("/ping", "X-Caller-Key: billing-key", "X-Tenant-ID: acme"), status: 200, tenant: "acme"},
		{name: "allowed by pattern", raw: rawGet("/ping", "X-Caller-Key: reports-key", "X-Tenant-ID: globex"), status: 200, tenant: "globex"},
		{name: "another caller's tenant", raw: rawGet("/ping", "X-Caller-Key: billing-key", "X-Tenant-ID: globex"),
			status: 403, code: proxy.CodeTenantNotAllowed},
		{name: "pattern is not a prefix match", raw: rawGet("/ping", "X-Caller-Key: reports-key", "X-Tenant-ID: acme"),
			status: 403, code: proxy.CodeTenantNotAllowed},
		{name: "two keys", raw: rawGet("/ping", "X-Caller-Key: billing-key", "X-Caller-Key: reports-key", "X-Tenant-ID: globex"),
			status: 401, code: proxy.CodeInvalidCaller},
		{name: "a key list", raw: rawGet("/ping", "X-Caller-Key: billing-key, reports-key", "X-Tenant-ID: globex"),
			status: 401, code: proxy.CodeInvalidCaller},
		{name: "key in the query", raw: rawGet("/ping?X-Caller-Key=billing-key&caller_key=billing-key", "X-Tenant-ID: acme"),
			status: 401, code: proxy.CodeInvalidCaller},
		{name: "key as Authorization", raw: rawGet("/ping", "Authorization: Bearer billing-key", "X-Tenant-ID: acme"),
			status: 401, code: proxy.CodeInvalidCaller},
		{name: "key in a trailer", raw: rawMessage("POST /ping HTTP/1.1", []string{"X-Tenant-ID: acme", "Transfer-Encoding: chunked", "Trailer: X-Caller-Key"},
			"0\r\nX-Caller-Key: billing-key\r\n\r\n"), status: 401, code: proxy.CodeInvalidCaller},
		{name: "key hash as key", raw: rawGet("/ping", "X-Caller-Key: "+proxy.HashCallerKey("billing-key"), "X-Tenant-ID: acme"),
			status: 401, code: proxy.CodeInvalidCaller},
		{name: "key in another case", raw: rawGet("/ping", "X-Caller-Key: BILLING-KEY", "X-Tenant-ID: acme"),
			status: 401, code: proxy.CodeInvalidCaller},
		{name: "glob tenant against a pattern", raw: rawGet("/ping", "X-Caller-Key: reports-key", "X-Tenant-ID: glob*"),
			status: 400, code: proxy.CodeInvalidTenant},
		{name: "caller key header listed in Connection", raw: rawGet("/ping", "X-Caller-Key: billing-key", "X-Tenant-ID: acme", "Connection: close, X-Caller-Key"),
			status: 200, tenant: "acme"},
		{name: "key with surrounding whitespace", raw: rawGet("/ping", "X-Caller-Key:  billing-key\t", "X-Tenant-ID: acme"), status: 200, tenant: "acme"},
	}
	runAttacks(t, p, rows)

	t.Run("concurrent", func(t *testing.T) {
		type try struct{ key, tenant string }
		allowed := map[try]bool{{"billing-key", "acme"}: true, {"reports-key", "globex"}: true}
		before := p.got.count()
		var wg sync.WaitGroup
		var okCount, refused atomic.Int32
		for i := range 200 {
			for _, tr := range []try{{"billing-key", "acme"}, {"reports-key", "globex"}, {"billing-key", "globex"}, {"reports-key", "acme"}} {
				wg.Go(func() {
					req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://%s/echo/%s/%d", p.addr, tr.tenant, i), nil)
					req.Header.Set("X-Tenant-ID", tr.tenant)
					req.Header.Set("X-Caller-Key", tr.key)
					res, err := http.DefaultClient.Do(req)
					if err != nil {
						t.Errorf("request: %v", err)
						return
					}
					res.Body.Close()
					switch want := allowed[tr]; {
					case want && res.StatusCode == 200:
						okCount.Add(1)
					case !want && res.StatusCode == 403:
						refused.Add(1)
					default:
						t.Errorf("%s for %s: %d", tr.key, tr.tenant, res.StatusCode)
					}
				})
			}
		}
		wg.Wait()
		if okCount.Load() != 400 || refused.Load() != 400 {
			t.Errorf("%d allowed and %d refused; want 400 each", okCount.Load(), refused.Load())
		}
		p.got.mu.Lock()
		defer p.got.mu.Unlock()
		if n := len(p.got.reqs) - before; n != 400 {
			t.Errorf("the upstream got %d requests; want 400 (only the allowed ones)", n)
		}
		for _, r := range p.got.reqs[before:] {
			tenant := strings.Split(strings.TrimPrefix(r.URL.Path, "/api/v2/echo/"), "/")[0]
			if got := r.Header.Get("Authorization"); got != "Bearer "+attackTokens[tenant] || r.Header.Get("X-Caller-Key") != "" {
				t.Errorf("upstream got %s with Authorization %q and caller key %q", r.URL.Path, got, r.Header.Get("X-Caller-Key"))
			}
		}
	})
}

// TestAttackMethods sends methods outside the allow-list: none reaches the
// upstream with a tenant's token.
func TestAttackMethods(t *testing.T) {
	p := newAttackProxy(t, proxy.Config{})
	acme := "X-Tenant-ID: acme"
	refused := func(method, target string) attack {
		return attack{name: method + " " + target, raw: rawMessage(method+" "+target+" HTTP/1.1", []string{acme}, ""),
			status: 405, code: proxy.CodeMethodNotAllowed, answer: allowHeader}
	}
	allowed := func(method string) attack {
		return attack{name: method, raw: rawMessage(method+" /ping HTTP/1.1", []string{acme}, ""), status: 200, tenant: "acme",
			check: func(t *testing.T, r *http.Request, _ []byte) {
				if r.Method != method {
					t.Errorf("upstream got %s; want %s", r.Method, method)
				}
			}}
	}
	attacks := []attack{
		refused("TRACE", "/ping"),
		refused("TRACK", "/ping"),
		refused("CONNECT", "/ping"),
		refused("PROPFIND", "/ping"),
		refused("MOVE", "/orders/1"),
		refused("FOO", "/ping"),
		refused("get", "/ping"),
		refused("PRI", "/ping"),
		{name: "method with a body", raw: rawMessage("LOCK /ping HTTP/1.1", []string{acme, "Content-Length: 5"}, "hello"),
			status: 405, code: proxy.CodeMethodNotAllowed, answer: allowHeader},
		allowed(http.MethodGet),
		allowed(http.MethodPost),
		allowed(http.MethodPut),
		allowed(http.MethodPatch),
		allowed(http.MethodDelete),
		allowed(http.MethodOptions),
	}
	runAttacks(t, p, attacks)
}

// TestAttackUpgrade asks for a protocol switch, and has the upstream switch
// anyway: the caller never gets a tunnel to the upstream, nor the upstream's
// cookies.
func TestAttackUpgrade(t *testing.T) {
	p := newAttackProxyTo(t, proxy.Config{}, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v2/switch":
			// A 101 whatever the request asked, then bytes of "another
			// protocol" on the same connection.
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			defer conn.Close()
			_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\ntunnel-bytes")
			_ = brw.Flush()
			return
		case "/api/v2/cookie":
			w.Header().Add("Set-Cookie", "session=upstream; Path=/; HttpOnly")
			w.Header().Add("Set-Cookie", "XSRF-TOKEN=x; Path=/")
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	})
	acme := "X-Tenant-ID: acme"
	noTunnel := func(t *testing.T, res *http.Response) {
		t.Helper()
		if b, _ := io.ReadAll(res.Body); strings.Contains(string(b), "tunnel-bytes") {
			t.Errorf("the caller got the upstream's bytes after a 101: %q", b)
		}
	}
	attacks := []attack{
		{name: "websocket", raw: rawGet("/ping", acme, "Connection: Upgrade", "Upgrade: websocket",
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"), status: 200, tenant: "acme", check: noUpgrade},
		{name: "h2c", raw: rawGet("/ping", acme, "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA"),
			status: 200, tenant: "acme", check: noUpgrade},
		{name: "upgrade beside close", raw: rawGet("/ping", acme, "Connection: close, upgrade", "Upgrade: websocket"),
			status: 200, tenant: "acme", check: noUpgrade},
		{name: "Upgrade without Connection", raw: rawGet("/ping", acme, "Upgrade: websocket"), status: 200, tenant: "acme", check: noUpgrade},
		{name: "Upgrade naming a protocol outside ASCII", raw: rawGet("/ping", acme, "Connection: Upgrade", "Upgrade: w\xe9bsocket"),
			status: 200, tenant: "acme", check: noUpgrade},
		{name: "101 to a websocket request", raw: rawGet("/switch", acme, "Connection: Upgrade", "Upgrade: websocket",
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"),
			status: 502, code: proxy.CodeUpstreamUnreachable, tenant: "acme", check: noUpgrade, answer: noTunnel},
		{name: "101 to a plain request", raw: rawGet("/switch", acme), status: 502, code: proxy.CodeUpstreamUnreachable, tenant: "acme", answer: noTunnel},
		{name: "Set-Cookie from the upstream", raw: rawGet("/cookie", acme), status: 200, tenant: "acme",
			answer: func(t *testing.T, res *http.Response) {
				if v := res.Header.Values("Set-Cookie"); len(v) != 0 {
					t.Errorf("the caller got Set-Cookie %q from the upstream; want none", v)
				}
			}},
	}
	runAttacks(t, p, attacks)
}

// TestAttackInterimResponses has the upstream send interim (1xx) answers
// before its final one. net/http's ReverseProxy clears the response headers
// after relaying an interim answer: the final answer must still carry the
// proxy's own headers (X-Request-ID, and Connection: close after a chunked
// request, so that the bytes behind it are never read as a request), and no
// interim answer may speak in the proxy's name. Expect is answered by the
// proxy, never forwarded.
func TestAttackInterimResponses(t *testing.T) {
	p := newAttackProxyTo(t, proxy.Config{}, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v2/early-hints":
			h := w.Header()
			h.Set("Link", "</app.css>; rel=preload")
			h.Set(proxy.ErrorHeader, "unknown_tenant")
			h.Set("Set-Cookie", "hint=1")
			h.Set("Connection", "keep-alive")
			w.WriteHeader(http.StatusEarlyHints)
			clear(h) // net/http keeps the header map after a 1xx
		case "/api/v2/continue":
			w.WriteHeader(http.StatusContinue) // unsolicited
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	})
	const smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: globex\r\n\r\n"
	rows := []struct {
		name string
		// head is written first; body is written after the proxy's 100
		// Continue when the request expects one, at once otherwise.
		head, body string
		interim    []int // the interim statuses the caller must get
		// closes is set when the connection must close after the final
		// answer; the bytes after the request are then never answered.
		closes bool
	}{
		{name: "early hints",
			head:    rawMessage("GET /early-hints HTTP/1.1", []string{"Connection: keep-alive"}, ""),
			interim: []int{103}},
		{name: "unsolicited 100 Continue",
			head: rawMessage("GET /continue HTTP/1.1", []string{"Connection: keep-alive"}, "")},
		{name: "early hints to HTTP/1.0",
			head: rawMessage("GET /early-hints HTTP/1.0", nil, "")},
		{name: "Expect: 100-continue",
			head: rawMessage("POST /send/postcard HTTP/1.1", []string{"Connection: keep-alive", "Expect: 100-continue", "Content-Length: 5"}, ""),
			body: "hello", interim: []int{100}},
		{name: "early hints to a chunked request with a Content-Length",
			head:    rawMessage("POST /early-hints HTTP/1.1", []string{"Connection: keep-alive", "Transfer-Encoding: chunked", "Content-Length: 48"}, ""),
			body:    "0\r\n\r\n" + smuggled,
			interim: []int{103}, closes: true},
		{name: "Expect: 100-continue with a chunked body",
			head: rawMessage("POST /send/postcard HTTP/1.1", []string{"Connection: keep-alive", "Expect: 100-continue", "Transfer-Encoding: chunked", "Content-Length: 48"}, ""),
			body: "5\r\nhello\r\n0\r\n\r\n" + smuggled, interim: []int{100}, closes: true},
		{name: "unsolicited 100 Continue to a chunked request",
			head:   rawMessage("POST /continue HTTP/1.1", []string{"Connection: keep-alive", "Transfer-Encoding: chunked"}, ""),
			body:   "5\r\nhello\r\n0\r\n\r\n" + smuggled,
			closes: true},
	}
	for i, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			before := p.got.count()
			requestID := fmt.Sprintf("attack-%d", i)
			head := strings.Replace(row.head, "\r\n", "\r\nX-Tenant-ID: acme\r\nX-Request-ID: "+requestID+"\r\n", 1)
			expects := strings.Contains(head, "Expect:")
			conn, br := testutil.RawConn(t, p.addr, 5*time.Second)
			if !expects {
				head += row.body
			}
			if _, err := io.WriteString(conn, head); err != nil {
				t.Fatal(err)
			}
			var interim []int
			var final *http.Response
			for final == nil {
				res, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("after interim answers %v: %v", interim, err)
				}
				if res.StatusCode >= 200 {
					final = res
					break
				}
				interim = append(interim, res.StatusCode)
				if v := res.Header.Values(proxy.ErrorHeader); len(v) != 0 {
					t.Errorf("interim %d carries %s = %q; the proxy's own header, from the upstream", res.StatusCode, proxy.ErrorHeader, v)
				}
				if v := res.Header.Values("Set-Cookie"); len(v) != 0 {
					t.Errorf("interim %d carries the upstream's Set-Cookie %q", res.StatusCode, v)
				}
				if res.StatusCode == http.StatusContinue && expects && row.body != "" {
					if _, err := io.WriteString(conn, row.body); err != nil {
						t.Fatal(err)
					}
					row.body = ""
				}
			}
			_, _ = io.Copy(io.Discard, final.Body)
			final.Body.Close()
			if fmt.Sprint(interim) != fmt.Sprint(row.interim) {
				t.Errorf("interim answers %v; want %v", interim, row.interim)
			}
			if final.StatusCode != http.StatusOK || final.Header.Get(proxy.ErrorHeader) != "" {
				t.Errorf("final answer %d %q; want the upstream's 200", final.StatusCode, final.Header.Get(proxy.ErrorHeader))
			}
			if got := final.Header.Get("X-Request-Id"); got != requestID {
				t.Errorf("final answer's X-Request-ID = %q; want %q", got, requestID)
			}
			if row.closes {
				closes(t, final)
				if second, err := http.ReadResponse(br, nil); err == nil {
					second.Body.Close()
					t.Errorf("the bytes after the chunked body were answered as a request (%d); want the connection closed", second.StatusCode)
				}
			}
			if n := p.got.count() - before; n != 1 {
				t.Fatalf("the upstream got %d requests; want 1", n)
			}
			r := p.got.last()
			checkForwarded(t, p.upstream, r, "acme")
			if v := r.Header.Values("Expect"); len(v) != 0 {
				t.Errorf("upstream got Expect %q; the proxy answers it itself", v)
			}
			if strings.Contains(r.URL.Path, "smuggled") {
				t.Errorf("the upstream got the smuggled request")
			}
		})
	}
}

// TestAttackSlowBodies sends bodies that never finish: each is cut at the
// body deadline with 408 request_timeout, its connection closed, and nothing
// reaches the upstream.
func TestAttackSlowBodies(t *testing.T) {
	p := newAttackProxy(t, proxy.Config{BodyTimeout: 300 * time.Millisecond, MaxReplayBody: 2 << 20})
	post := func(lines []string, body string) string {
		return rawMessage("POST /send/postcard HTTP/1.1", append([]string{"X-Tenant-ID: acme"}, lines...), body)
	}
	timeout := func(name string, lines []string, body string) attack {
		return attack{name: name, raw: post(lines, body), status: http.StatusRequestTimeout, code: proxy.CodeRequestTimeout, answer: closes}
	}
	attacks := []attack{
		timeout("body shorter than its Content-Length", []string{"Content-Length: 100"}, "only ten b"),
		timeout("headers only, 1 MiB announced", []string{"Content-Length: 1048576"}, ""),
		timeout("headers only, kept alive", []string{"Content-Length: 1048576", "Connection: keep-alive"}, ""),
		timeout("chunked body that stops after a chunk", []string{"Transfer-Encoding: chunked"}, "5\r\nhello\r\n"),
		timeout("chunked body that stops inside a chunk", []string{"Transfer-Encoding: chunked"}, "400\r\nhello"),
		timeout("Expect: 100-continue, then no body", []string{"Expect: 100-continue", "Content-Length: 5"}, ""),
		{name: "a body that arrives in time", raw: post([]string{"Content-Length: 5"}, "hello"), status: 200, tenant: "acme", check: upstreamBody("hello")},
	}
	runAttacks(t, p, attacks)

	// A body too large to keep for a replay streams to the upstream as it
	// arrives: the deadline cuts it there too, and the caller is told.
	t.Run("streamed body that stops", func(t *testing.T) {
		res := testutil.RawHTTP(t, p.addr, post([]string{"Content-Length: 4194304"}, "only ten b"), 5*time.Second)
		res.Body.Close()
		if res.StatusCode != http.StatusRequestTimeout || res.Header.Get(proxy.ErrorHeader) != proxy.CodeRequestTimeout {
			t.Errorf("answer %d %q; want 408 %s", res.StatusCode, res.Header.Get(proxy.ErrorHeader), proxy.CodeRequestTimeout)
		}
		closes(t, res)
	})
}

// TestAttackCallerConcurrency holds requests of one caller in flight (their
// bodies never come): past MaxCallerConcurrency, that caller is refused with
// 429, and other callers are served.
func TestAttackCallerConcurrency(t *testing.T) {
	p := newAttackProxy(t, proxy.Config{Callers: newCallers(t, "billing billing-key *", "reports reports-key *"),
		MaxCallerConcurrency: 2, BodyTimeout: time.Minute})
	// hold starts a request whose body waits for the proxy's 100 Continue:
	// once that came, the request is in flight.
	hold := func(t *testing.T) (net.Conn, *bufio.Reader) {
		t.Helper()
		conn, br := testutil.RawConn(t, p.addr, 10*time.Second)
		_, _ = io.WriteString(conn, rawMessage("POST /send/postcard HTTP/1.1",
			[]string{"X-Caller-Key: billing-key", "X-Tenant-ID: acme", "Expect: 100-continue", "Content-Length: 5"}, ""))
		res, err := http.ReadResponse(br, nil)
		if err != nil || res.StatusCode != http.StatusContinue {
			t.Fatalf("held request: %v, %v; want 100 Continue", res, err)
		}
		return conn, br
	}
	first, firstReader := hold(t)
	hold(t)

	tooMany := func(name string, raw string) attack {
		return attack{name: name, raw: raw, status: http.StatusTooManyRequests, code: proxy.CodeConcurrencyLimited,
			answer: func(t *testing.T, res *http.Response) {
				if res.Header.Get("Retry-After") == "" {
					t.Errorf("no Retry-After")
				}
			}}
	}
	runAttacks(t, p, []attack{
		tooMany("a third request of the caller", rawGet("/ping", "X-Caller-Key: billing-key", "X-Tenant-ID: acme")),
		tooMany("a third request for another tenant", rawGet("/ping", "X-Caller-Key: billing-key", "X-Tenant-ID: globex")),
		tooMany("a third request with a body", rawMessage("POST /send/postcard HTTP/1.1",
			[]string{"X-Caller-Key: billing-key", "X-Tenant-ID: acme", "Content-Length: 5"}, "hello")),
		{name: "another caller", raw: rawGet("/ping", "X-Caller-Key: reports-key", "X-Tenant-ID: acme"), status: 200, tenant: "acme"},
		{name: "no caller key", raw: rawGet("/ping", "X-Tenant-ID: acme"), status: 401, code: proxy.CodeInvalidCaller},
	})

	// The first held request ends: the caller has room again.
	if _, err := io.WriteString(first, "hello"); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(firstReader, nil)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("held request, its body sent: %v, %v; want 200", res, err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	runAttacks(t, p, []attack{
		{name: "after one ended", raw: rawGet("/ping", "X-Caller-Key: billing-key", "X-Tenant-ID: acme"), status: 200, tenant: "acme"},
	})
}

// TestAttackSlowBodiesMemory is the slow-body attack at a smaller scale:
// connections that each send their headers and all but the last byte of a
// body of MaxReplayBody, then nothing. The bodies the proxy holds for a
// replay stay within MaxReplayMemory (the rest stream to the upstream), the
// heap grows by little more than that, other tenants are served meanwhile,
// and every attacking connection is answered and closed at the body
// deadline.
func TestAttackSlowBodiesMemory(t *testing.T) {
	const (
		conns           = 64
		maxReplayBody   = 1 << 20
		maxReplayMemory = 8 << 20
		bodyTimeout     = 2 * time.Second
		// overhead allows for what each connection costs besides the
		// body the proxy holds: the buffers of the server, and for a
		// body that streams those of the transport and of the upstream
		// (all in this process); about 150 KiB each was measured.
		overhead = conns * 384 << 10
	)
	// The upstream discards what it gets, so that only the proxy holds
	// bodies.
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	t.Cleanup(up.Close)
	upstream, _ := url.Parse(up.URL + "/api/v2")
	h, err := proxy.New(proxy.Config{Tokens: staticTokens(attackTokens), Upstream: upstream,
		MaxReplayBody: maxReplayBody, MaxReplayMemory: maxReplayMemory, BodyTimeout: bodyTimeout})
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimPrefix(newServer(t, h).URL, "http://")
	attack := rawMessage("POST /send/postcard HTTP/1.1",
		[]string{"X-Tenant-ID: acme", "Connection: keep-alive", fmt.Sprintf("Content-Length: %d", maxReplayBody)},
		strings.Repeat("x", maxReplayBody-1))

	// Two collections: what sits in a sync.Pool survives the first.
	runtime.GC()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	started := time.Now()
	// Each connection must be answered and closed by the body deadline,
	// with room for a slow machine.
	closedBy := started.Add(bodyTimeout + 3*time.Second)
	attackers := make([]*bufio.Reader, conns)
	var sent sync.WaitGroup
	for i := range attackers {
		conn, br := testutil.RawConn(t, addr, time.Until(closedBy))
		attackers[i] = br
		sent.Go(func() {
			if _, err := io.WriteString(conn, attack); err != nil {
				t.Errorf("attacker %d: %v", i, err)
			}
		})
	}
	sent.Wait()

	runtime.GC()
	runtime.GC()
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	held := h.ReplayMemory()
	t.Logf("%d connections sent %d MiB: %d KiB held for replay, heap grew by %d KiB",
		conns, conns*maxReplayBody>>20, held>>10, (int64(during.HeapAlloc)-int64(before.HeapAlloc))>>10)
	if held > maxReplayMemory {
		t.Errorf("bodies held for replay: %d bytes; want at most MaxReplayMemory, %d", held, maxReplayMemory)
	}
	if grown := int64(during.HeapAlloc) - int64(before.HeapAlloc); grown > maxReplayMemory+overhead {
		t.Errorf("the heap grew by %d MiB under the attack; want at most MaxReplayMemory and %d MiB", grown>>20, overhead>>20)
	}

	// Another tenant is served meanwhile.
	res, _ := testutil.Do(t, nil, newRequest(t, http.MethodPost, "http://"+addr+"/send/postcard", strings.NewReader(`{"message":"hello"}`), "globex"))
	if res.StatusCode != http.StatusOK {
		t.Errorf("globex during the attack: %d; want 200", res.StatusCode)
	}

	for i, br := range attackers {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Errorf("attacker %d: no answer by the body deadline: %v", i, err)
			continue
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusRequestTimeout {
			t.Errorf("attacker %d: %d; want 408", i, res.StatusCode)
		}
		if _, err := br.ReadByte(); err != io.EOF {
			t.Errorf("attacker %d: the connection is still open after the answer (%v); want it closed", i, err)
		}
	}
	if held := h.ReplayMemory(); held != 0 {
		t.Errorf("after the attack, %d bytes are still counted as held for replay; want 0", held)
	}
}
