package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
)

// These tests send hostile requests to a whole proxy (run, with its real
// listeners): the data plane, the OAuth callback and the admin API.

// rawExchange sends raw bytes to the base URL's host and returns the status,
// headers and body of the final answer (testutil.RawHTTP, within 10 s).
func rawExchange(t *testing.T, base, raw string) (int, http.Header, string) {
	t.Helper()
	res := testutil.RawHTTP(t, base, raw, 10*time.Second)
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, string(b)
}

// request builds a raw HTTP/1.1 request that closes its connection.
func request(method, target string, lines []string, body string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: proxy.internal\r\nConnection: close\r\n", method, target)
	for _, l := range lines {
		b.WriteString(l + "\r\n")
	}
	if body != "" {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n" + body)
	return b.String()
}

// noFollow hands redirects back instead of following them.
var noFollow = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// secretsAbsent fails the test if any secret appears in text.
func secretsAbsent(t *testing.T, where, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Errorf("%s holds a secret (%.6s...)", where, s)
		}
	}
}

func TestAttackDataPlaneThroughServer(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	p, grants := startWithGrants(t, double, "acme", "globex")
	upstreamHost := strings.TrimPrefix(double.URL(), "http://")
	big := strings.Repeat("a", 80<<10)
	many := make([]string, 0, 3000)
	for i := range 3000 {
		many = append(many, fmt.Sprintf("X-Pad-%d: %s", i, strings.Repeat("b", 20)))
	}

	tests := []struct {
		name   string
		raw    string
		status int
		code   string
		tenant string // whose token the upstream must see; "" = not reached
	}{
		{"oversized header", request("GET", "/ping", []string{"X-Tenant-ID: acme", "X-Big: " + big}, ""), 431, "", ""},
		{"oversized tenant header", request("GET", "/ping", []string{"X-Tenant-ID: " + big}, ""), 431, "", ""},
		{"many headers", request("GET", "/ping", append([]string{"X-Tenant-ID: acme"}, many...), ""), 431, "", ""},
		{"oversized request line", request("GET", "/ping?"+big, []string{"X-Tenant-ID: acme"}, ""), 431, "", ""},
		{"absolute-form target", request("GET", "http://evil.example/ping", []string{"X-Tenant-ID: acme"}, ""), 400, "invalid_path", ""},
		{"encoded dot segment", request("GET", "/%2e%2e/oauth/token", []string{"X-Tenant-ID: acme"}, ""), 400, "invalid_path", ""},
		{"empty segment host", request("GET", "//evil.example/ping", []string{"X-Tenant-ID: acme"}, ""), 400, "invalid_path", ""},
		{"callback path escape", request("GET", "/oauth/callback/../../ping", []string{"X-Tenant-ID: acme"}, ""), 400, "invalid_path", ""},
		{"encoded callback path goes to the proxy", request("GET", "/oauth/%63allback?state=x", nil, ""), 400, "missing_tenant", ""},
		{"Host names another host", request("GET", "/ping", []string{"X-Tenant-ID: acme", "X-Forwarded-Host: evil.example"}, ""), 200, "", "acme"},
		{"callback with a tenant header", request("GET", "/oauth/callback?state=x&code=y", []string{"X-Tenant-ID: acme"}, ""), 400, "", ""},
		{"admin token and path on the data plane", request("GET", "/admin/tenants",
			[]string{"X-Tenant-ID: globex", "Authorization: Bearer " + testAdminToken}, ""), 200, "", "globex"},
		{"another tenant's token as the caller's", request("GET", "/ping",
			[]string{"X-Tenant-ID: globex", "Authorization: Bearer " + grants["acme"].AccessToken}, ""), 200, "", "globex"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			double.ResetAPIRequests()
			code, h, body := rawExchange(t, p.data, tt.raw)
			if code != tt.status || h.Get("X-Thanksio-Proxy-Error") != tt.code {
				t.Errorf("answer %d %q %.100s; want %d %q", code, h.Get("X-Thanksio-Proxy-Error"), body, tt.status, tt.code)
			}
			reqs := double.APIRequests()
			if tt.tenant == "" {
				if len(reqs) != 0 {
					t.Errorf("the upstream got %d requests (%s); want none", len(reqs), reqs[0].RequestURI)
				}
				return
			}
			if len(reqs) != 1 {
				t.Fatalf("the upstream got %d requests; want 1", len(reqs))
			}
			r := reqs[0]
			if r.Host != upstreamHost || !strings.HasPrefix(r.Path, "/api/v2/") {
				t.Errorf("the upstream got Host %q path %q; want %q under /api/v2/", r.Host, r.Path, upstreamHost)
			}
			if r.Token != grants[tt.tenant].AccessToken || len(r.Header.Values("Authorization")) != 1 || !r.Authorized {
				t.Errorf("the upstream got another token than %s's own", tt.tenant)
			}
			secretsAbsent(t, "the upstream request", fmt.Sprint(r.Header), testAdminToken)
		})
	}
	secretsAbsent(t, "the logs", p.logs.String(), testAdminToken,
		grants["acme"].AccessToken, grants["acme"].RefreshToken, grants["globex"].AccessToken, grants["globex"].RefreshToken)
}

// TestAttackCallbackState tampers with a genuine callback: nothing but the
// exact state, once, finishes the flow, and tampering does not spend it.
func TestAttackCallbackState(t *testing.T) {
	flow := newConnectFlow(t)
	double, a := flow.double, flow.app
	p := start(t, double, flow.env)
	flow.front.forwardTo(t, p)

	returnTo := a.srv.URL + "/settings/thanksio"
	code, authorizeURL := p.connect(t, "acme", returnTo)
	if code != http.StatusOK {
		t.Fatalf("connect: %d %s", code, authorizeURL)
	}
	cb, err := url.Parse(approve(t, authorizeURL))
	if err != nil {
		t.Fatal(err)
	}
	state, authCode := cb.Query().Get("state"), cb.Query().Get("code")
	if state == "" || authCode == "" {
		t.Fatalf("the callback URL %s lacks state or code", cb)
	}
	esc := url.QueryEscape
	flip := func(s string) string {
		b := []byte(s)
		if b[0] == 'A' {
			b[0] = 'B'
		} else {
			b[0] = 'A'
		}
		return string(b)
	}

	tampered := []struct {
		name, query, outcome string
	}{
		{"no state", "code=" + esc(authCode), "not a valid"},
		{"empty state", "state=&code=" + esc(authCode), "not a valid"},
		{"two equal states", "state=" + esc(state) + "&state=" + esc(state) + "&code=" + esc(authCode), "not a valid"},
		{"two states", "state=" + esc(state) + "&state=forged&code=" + esc(authCode), "not a valid"},
		{"two codes", "state=" + esc(state) + "&code=" + esc(authCode) + "&code=ac_other", "not a valid"},
		{"state in another case of name", "State=" + esc(state) + "&code=" + esc(authCode), "not a valid"},
		{"semicolon separator", "state=" + esc(state) + ";code=" + esc(authCode), "not a valid"},
		{"truncated state", "state=" + esc(state[:len(state)-1]) + "&code=" + esc(authCode), "expired or was already used"},
		{"state with extra characters", "state=" + esc(state+"A") + "&code=" + esc(authCode), "expired or was already used"},
		{"state with one character changed", "state=" + esc(flip(state)) + "&code=" + esc(authCode), "expired or was already used"},
		{"state in upper case", "state=" + esc(strings.ToUpper(state)) + "&code=" + esc(authCode), "expired or was already used"},
		{"state in lower case", "state=" + esc(strings.ToLower(state)) + "&code=" + esc(authCode), "expired or was already used"},
		{"state with a trailing space", "state=" + esc(state+" ") + "&code=" + esc(authCode), "expired or was already used"},
		{"state with a NUL", "state=" + esc(state) + "%00&code=" + esc(authCode), "expired or was already used"},
		{"state with CRLF", "state=" + esc(state) + "%0d%0a&code=" + esc(authCode), "expired or was already used"},
		{"glob state", "state=*&code=" + esc(authCode), "expired or was already used"},
		{"glob prefix state", "state=" + esc(state[:8]+"*") + "&code=" + esc(authCode), "expired or was already used"},
		{"glob class state", "state=" + esc("[A-Za-z0-9_-]*") + "&code=" + esc(authCode), "expired or was already used"},
		{"question marks", "state=" + esc(strings.Repeat("?", len(state))) + "&code=" + esc(authCode), "expired or was already used"},
		{"hash tag state", "state=" + esc("{"+state+"}") + "&code=" + esc(authCode), "expired or was already used"},
		{"key-like state", "state=" + esc("x:{acme}:token") + "&code=" + esc(authCode), "expired or was already used"},
		{"huge state", "state=" + strings.Repeat("A", 16<<10) + "&code=" + esc(authCode), "expired or was already used"},
		{"denied with a forged state", "state=forged&error=access_denied", "expired or was already used"},
	}
	for _, tt := range tampered {
		t.Run(tt.name, func(t *testing.T) {
			res, err := noFollow.Get(p.data + "/oauth/callback?" + tt.query)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), tt.outcome) {
				t.Errorf("callback?%.60s: %d %.200s; want 400 saying %q", tt.query, res.StatusCode, b, tt.outcome)
			}
			if loc := res.Header.Get("Location"); loc != "" {
				t.Errorf("callback?%.60s redirected to %s; a tampered callback must not redirect", tt.query, loc)
			}
			if n := double.CodeExchanges(); n != 0 {
				t.Errorf("code exchanges = %d; want 0", n)
			}
			if code, body := p.admin(t, http.MethodGet, "/admin/tenants/acme", ""); code != http.StatusNotFound {
				t.Errorf("after a tampered callback, acme: %d %s; want 404 (nothing stored)", code, body)
			}
		})
	}
	t.Run("POST", func(t *testing.T) {
		res, err := noFollow.Post(p.data+"/oauth/callback", "application/x-www-form-urlencoded",
			strings.NewReader("state="+esc(state)+"&code="+esc(authCode)))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusMethodNotAllowed || double.CodeExchanges() != 0 {
			t.Errorf("POST callback: %d, %d code exchanges; want 405 and none", res.StatusCode, double.CodeExchanges())
		}
	})

	// The genuine state still works, once; extra parameters that name other
	// destinations are ignored: the browser goes to the stored return_to.
	genuine := p.data + "/oauth/callback?state=" + esc(state) + "&code=" + esc(authCode) +
		"&return_to=" + esc("https://evil.example/") + "&redirect_uri=" + esc("https://evil.example/cb") + "&tenant=globex"
	res, err := noFollow.Get(genuine)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	loc, _ := url.Parse(res.Header.Get("Location"))
	if res.StatusCode != http.StatusSeeOther || loc == nil || loc.Host != strings.TrimPrefix(a.srv.URL, "http://") ||
		loc.Path != "/settings/thanksio" || loc.Query().Get("connected") != "acme" {
		t.Fatalf("genuine callback: %d to %q; want 303 to %s?connected=acme", res.StatusCode, res.Header.Get("Location"), returnTo)
	}
	if code, _ := p.admin(t, http.MethodGet, "/admin/tenants/globex", ""); code != http.StatusNotFound {
		t.Errorf("a tenant parameter in the callback stored a token for globex")
	}
	res, err = noFollow.Get(genuine)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusBadRequest || double.CodeExchanges() != 1 {
		t.Errorf("replayed callback: %d with %d code exchanges; want 400 and 1", res.StatusCode, double.CodeExchanges())
	}
	_, list := p.admin(t, http.MethodGet, "/admin/tenants", "")
	if list != `{"tenants":["acme"]}`+"\n" {
		t.Errorf("tenants = %s; want only acme", list)
	}
	secretsAbsent(t, "the logs", p.logs.String(), state, authCode, thanksiotest.DefaultClientSecret)
}

// TestAttackAdminPaths sends admin calls whose tenant is encoded, escaped or
// a pattern: none reaches another tenant, none deletes or imports anything.
func TestAttackAdminPaths(t *testing.T) {
	p := start(t, nil, redisEnv(t))
	const acmeToken, globexToken = "pat_acme_0123456789", "pat_globex_0123456789"
	for tenant, tok := range map[string]string{"acme": acmeToken, "globex": globexToken} {
		if code, body := p.admin(t, http.MethodPut, "/admin/tenants/"+tenant+"/token", `{"access_token":"`+tok+`"}`); code != 200 {
			t.Fatalf("import %s: %d %s", tenant, code, body)
		}
	}
	auth := "Authorization: Bearer " + testAdminToken
	importBody := `{"access_token":"pat_intruder_0123456789"}`
	json := "Content-Type: application/json"

	tests := []struct {
		method, target, body string
		status               int
		// contains must appear in the answer's body; for a redirect, it is
		// the Location.
		contains string
	}{
		// The mux decodes a path segment once: %61cme is acme. Unclean paths
		// are redirected (307, before authentication, by the ops mux) to
		// their clean form, which is the same call an RFC 3986 client makes;
		// the redirect is not followed here.
		{"GET", "/admin/tenants/%61cme", "", 200, `"tenant":"acme"`},
		{"GET", "/admin/tenants/ACME", "", 404, "unknown_tenant"},
		{"GET", "/admin/tenants/ac%2Fme", "", 400, "invalid_tenant"},
		{"GET", "/admin/tenants/acme%00", "", 400, "invalid_tenant"},
		{"GET", "/admin/tenants/%00", "", 400, "invalid_tenant"},
		{"GET", "/admin/tenants/%2e%2e", "", 400, "invalid_tenant"},
		{"GET", "/admin/tenants/.", "", 307, "/admin/tenants"},
		{"GET", "/admin/tenants/..", "", 307, "/admin/"},
		{"GET", "/admin/tenants/%7Bacme%7D", "", 400, "invalid_tenant"},
		{"GET", "/admin/tenants/acme%20", "", 400, "invalid_tenant"},
		{"GET", "/admin/tenants?after=*", "", 400, "bad_request"},
		{"GET", "/admin/tenants?after=%7Bacme%7D", "", 400, "bad_request"},
		{"GET", "/admin/tenants?limit=1000000", "", 400, "bad_request"},
		{"GET", "/admin/tenants?limit=-1", "", 400, "bad_request"},
		{"DELETE", "/admin/tenants/*", "", 400, "invalid_tenant"},
		{"DELETE", "/admin/tenants/%2A", "", 400, "invalid_tenant"},
		{"DELETE", "/admin/tenants/acme*", "", 400, "invalid_tenant"},
		{"DELETE", "/admin/tenants/a%3Fme", "", 400, "invalid_tenant"},
		{"DELETE", "/admin/tenants/%5Ba%5Dcme", "", 400, "invalid_tenant"},
		{"DELETE", "/admin/tenants/%7Bacme%7D", "", 400, "invalid_tenant"},
		{"DELETE", "/admin/tenants/%2e%2e", "", 400, "invalid_tenant"},
		{"DELETE", "/admin/tenants/..", "", 307, "/admin/"},
		{"DELETE", "/admin/tenants/globex%2F..%2Facme", "", 400, "invalid_tenant"},
		{"DELETE", "/admin/tenants/globex/../acme", "", 307, "/admin/tenants/acme"},
		{"DELETE", "/admin/tenants/acme/", "", 404, "not_found"},
		{"DELETE", "/admin/tenants/acme%2F", "", 400, "invalid_tenant"},
		{"DELETE", "/admin/tenants/", "", 404, "not_found"},
		{"DELETE", "/admin/tenants", "", 405, "method_not_allowed"},
		{"PUT", "/admin/tenants/%2e%2e/token", importBody, 400, "invalid_tenant"},
		{"PUT", "/admin/tenants/../token", importBody, 307, "/admin/token"},
		{"PUT", "/admin/tenants/acme%2Ftoken", importBody, 405, "method_not_allowed"},
		{"PUT", "/admin/tenants/a%2A/token", importBody, 400, "invalid_tenant"},
		{"PUT", "/admin/tenants/%7Bglobex%7D/token", importBody, 400, "invalid_tenant"},
		{"PUT", "/admin/tenants/globex%00/token", importBody, 400, "invalid_tenant"},
		{"PUT", "/admin/tenants//token", importBody, 307, "/admin/tenants/token"},
		{"PUT", "/admin//tenants/acme/token", importBody, 307, "/admin/tenants/acme/token"},
		{"POST", "/admin/tenants/acme%2F..%2Fglobex/refresh", "", 400, "invalid_tenant"},
		{"POST", "/admin/tenants/*/connect", "{}", 400, "invalid_tenant"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.target, func(t *testing.T) {
			lines := []string{auth}
			if tt.body != "" {
				lines = append(lines, json)
			}
			code, h, body := rawExchange(t, p.ops, request(tt.method, tt.target, lines, tt.body))
			if code != tt.status {
				t.Errorf("%s %s: %d %s; want %d", tt.method, tt.target, code, body, tt.status)
			}
			if code == http.StatusTemporaryRedirect {
				if loc := h.Get("Location"); loc != tt.contains {
					t.Errorf("%s %s redirected to %q; want %q", tt.method, tt.target, loc, tt.contains)
				}
			} else if !strings.Contains(body, tt.contains) {
				t.Errorf("%s %s: %s; want it to hold %s", tt.method, tt.target, body, tt.contains)
			}
			secretsAbsent(t, "an admin answer", body, acmeToken, globexToken)
		})
	}

	_, list := p.admin(t, http.MethodGet, "/admin/tenants", "")
	if list != `{"tenants":["acme","globex"]}`+"\n" {
		t.Errorf("tenants after the attacks = %s; want acme and globex, unchanged", list)
	}
	for _, tenant := range []string{"acme", "globex"} {
		code, _, _ := do(t, http.MethodGet, p.data+"/ping", map[string]string{"X-Tenant-ID": tenant}, "")
		// No upstream runs here; what matters is that the token is still
		// held (502 upstream_unreachable, not 401 unknown_tenant).
		if code == http.StatusUnauthorized {
			t.Errorf("%s lost its token to the attacks", tenant)
		}
	}
	secretsAbsent(t, "the logs", p.logs.String(), testAdminToken, acmeToken, globexToken, "pat_intruder")
}

// TestAttackAdminBodies sends import bodies that are too large, malformed,
// mistyped or ambiguous: each is refused and stores nothing.
func TestAttackAdminBodies(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	p := start(t, double, nil)
	pat := double.NewPersonalAccessToken()

	deep := strings.Repeat("[", 20000) + strings.Repeat("]", 20000)
	deepObject := `{"access_token":"a","expiry":` + strings.Repeat(`{"a":`, 10001) + "1" + strings.Repeat("}", 10001) + "}"
	tests := []struct {
		name, contentType, body string
		status                  int
	}{
		{"1 MiB", "application/json", `{"access_token":"` + strings.Repeat("a", 1<<20) + `"}`, 413},
		{"1 MiB of spaces before the object", "application/json", strings.Repeat(" ", 1<<20) + `{"access_token":"a"}`, 413},
		{"1 MiB after the object", "application/json", `{"access_token":"a"}` + strings.Repeat(" ", 1<<20), 413},
		{"empty", "application/json", "", 400},
		{"truncated", "application/json", `{"access_token":"a`, 400},
		{"truncated after a key", "application/json", `{"access_token":`, 400},
		{"null", "application/json", "null", 400},
		{"null token", "application/json", `{"access_token":null}`, 400},
		{"string", "application/json", `"pat_x"`, 400},
		{"number", "application/json", `42`, 400},
		{"array", "application/json", `[{"access_token":"a"}]`, 400},
		{"token as a number", "application/json", `{"access_token":12345}`, 400},
		{"token as an array", "application/json", `{"access_token":["a","b"]}`, 400},
		{"token as an object", "application/json", `{"access_token":{"a":"b"}}`, 400},
		{"token as true", "application/json", `{"access_token":true}`, 400},
		{"expires_in as a string", "application/json", `{"access_token":"a","refresh_token":"b","expires_in":"3600"}`, 400},
		{"expires_in overflowing", "application/json", `{"access_token":"a","refresh_token":"b","expires_in":99999999999999999999}`, 400},
		{"expires_in huge float", "application/json", `{"access_token":"a","refresh_token":"b","expires_in":1e400}`, 400},
		{"expiry as a number", "application/json", `{"access_token":"a","refresh_token":"b","expiry":1700000000}`, 400},
		{"expiry not RFC 3339", "application/json", `{"access_token":"a","refresh_token":"b","expiry":"Mon, 02 Jan 2006 15:04:05 MST"}`, 400},
		{"UTF-8 BOM", "application/json", "\xef\xbb\xbf" + `{"access_token":"a"}`, 400},
		{"UTF-16 body", "application/json", "\xff\xfe{\x00\"\x00a\x00\"\x00:\x00\"\x00b\x00\"\x00}\x00", 400},
		{"trailing garbage", "application/json", `{"access_token":"a"} x`, 400},
		{"two objects", "application/json", `{"access_token":"a"}{"access_token":"b"}`, 400},
		{"unknown field", "application/json", `{"access_token":"a","refresh_tokn":"b"}`, 400},
		{"nested unknown field", "application/json", `{"access_token":"a","x":{"refresh_token":"b"}}`, 400},
		{"token with CRLF", "application/json", `{"access_token":"a\r\nX-Tenant-ID: globex"}`, 400},
		{"token with a space", "application/json", `{"access_token":"Bearer a"}`, 400},
		{"token with NUL", "application/json", `{"access_token":"a\u0000b"}`, 400},
		{"token not ASCII", "application/json", `{"access_token":"caf\u00e9"}`, 400},
		{"token invalid UTF-8", "application/json", "{\"access_token\":\"a\xff\"}", 400},
		{"empty refresh token", "application/json", `{"access_token":"a","refresh_token":""}`, 400},
		{"deeply nested array", "application/json", deep, 400},
		{"deeply nested value", "application/json", deepObject, 400},
		{"form body", "application/x-www-form-urlencoded", "access_token=a", 415},
		{"text body", "text/plain", `{"access_token":"a"}`, 415},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, h, body := do(t, http.MethodPut, p.ops+"/admin/tenants/victim/token",
				map[string]string{"Authorization": "Bearer " + testAdminToken, "Content-Type": tt.contentType}, tt.body)
			if code != tt.status || h.Get("X-Thanksio-Proxy-Error") == "" {
				t.Errorf("PUT %.60q: %d %s; want %d with the proxy's error", tt.body, code, body, tt.status)
			}
			if c, b := p.admin(t, http.MethodGet, "/admin/tenants/victim", ""); c != http.StatusNotFound {
				t.Errorf("after a refused body, victim: %d %s; want 404 (nothing stored)", c, b)
			}
		})
	}

	t.Run("1 MiB chunked", func(t *testing.T) {
		body := io.MultiReader(strings.NewReader(`{"access_token":"`), strings.NewReader(strings.Repeat("a", 1<<20)), strings.NewReader(`"}`))
		req, _ := http.NewRequest(http.MethodPut, p.ops+"/admin/tenants/victim/token", body)
		req.Header.Set("Authorization", "Bearer "+testAdminToken)
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("1 MiB chunked: %d; want 413", res.StatusCode)
		}
		if c, _ := p.admin(t, http.MethodGet, "/admin/tenants/victim", ""); c != http.StatusNotFound {
			t.Errorf("after a refused body, victim: %d; want 404", c)
		}
	})

	// RFC 8259 leaves duplicate names undefined. Either the body is refused
	// and nothing is stored, or the last value is the one used, whole: the
	// upstream then sees the token that came last, never the first.
	t.Run("duplicate keys", func(t *testing.T) {
		for i, body := range []string{
			`{"access_token":"pat_decoy_0123456789","access_token":"` + pat + `"}`,
			`{"access_token":"pat_decoy_0123456789","ACCESS_TOKEN":"` + pat + `"}`,
		} {
			tenant := fmt.Sprintf("dup%d", i)
			code, _ := p.admin(t, http.MethodPut, "/admin/tenants/"+tenant+"/token", body)
			switch code {
			case http.StatusBadRequest:
				t.Logf("%s: refused", body)
				if c, _ := p.admin(t, http.MethodGet, "/admin/tenants/"+tenant, ""); c != http.StatusNotFound {
					t.Errorf("%s: refused, yet stored", body)
				}
			case http.StatusOK:
				t.Logf("%.70s...: accepted, the last value used", body)
				double.ResetAPIRequests()
				if c, _, b := p.call(t, tenant, "/ping"); c != http.StatusOK {
					t.Errorf("%s: call %d %s", body, c, b)
				}
				if reqs := double.APIRequests(); len(reqs) != 1 || reqs[0].Token != pat {
					t.Errorf("%s: the upstream did not get the last token", body)
				}
			default:
				t.Errorf("%s: %d; want 400, or 200 with the last value", body, code)
			}
		}
	})
}

// TestAttackAdminToken presents the admin token anywhere but the
// Authorization header, and wrong tokens: all are refused, and no presented
// token reaches the logs.
func TestAttackAdminToken(t *testing.T) {
	p := start(t, nil, nil)
	const marker = "wrong-token-MARKER-4f1c"
	esc := url.QueryEscape(testAdminToken)
	tests := []struct {
		name    string
		target  string
		headers []string
	}{
		{"token in the query", "/admin/tenants?access_token=" + esc, nil},
		{"token in other query names", "/admin/tenants?token=" + esc + "&admin_token=" + esc + "&authorization=Bearer+" + esc, nil},
		{"token in a cookie", "/admin/tenants", []string{"Cookie: admin_token=" + testAdminToken + "; access_token=" + testAdminToken}},
		{"token in another header", "/admin/tenants", []string{"X-Admin-Token: " + testAdminToken, "X-Api-Key: " + testAdminToken}},
		{"token without the scheme", "/admin/tenants", []string{"Authorization: " + testAdminToken}},
		{"right and wrong token", "/admin/tenants", []string{"Authorization: Bearer " + testAdminToken, "Authorization: Bearer " + marker}},
		{"token list", "/admin/tenants", []string{"Authorization: Bearer " + marker + ", Bearer " + testAdminToken}},
		{"token with a suffix", "/admin/tenants", []string{"Authorization: Bearer " + testAdminToken + marker}},
		{"wrong token", "/admin/tenants", []string{"Authorization: Bearer " + marker}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, h, body := rawExchange(t, p.ops, request("GET", tt.target, tt.headers, ""))
			switch e := h.Get("X-Thanksio-Proxy-Error"); {
			case code == http.StatusUnauthorized && e == "unauthorized":
			case i > 0 && code == http.StatusTooManyRequests:
				// Wrong tokens are rate limited per address: still refused.
			default:
				t.Errorf("%d %s %s; want 401 unauthorized", code, e, body)
			}
			secretsAbsent(t, "the answer", body, testAdminToken, marker)
		})
	}
	secretsAbsent(t, "the logs", p.logs.String(), testAdminToken, marker)
	if !strings.Contains(p.logs.String(), "admin call refused") {
		t.Errorf("refused admin calls are not logged")
	}
}

// TestAttackChunkedOnEveryRoute sends every route of LISTEN_ADDR a request
// framed two ways (Transfer-Encoding: chunked and a Content-Length) with a
// request for another tenant behind it, as a front end that trusts the
// Content-Length would pass it on. The callback is the one path an Ingress
// exposes to the internet: there too the connection closes after the
// answer, and the bytes behind it never reach thanks.io as a request.
func TestAttackChunkedOnEveryRoute(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	p := start(t, double, redisEnv(t))
	p.importToken(t, "globex", double.NewGrant(), 3600)
	const smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: globex\r\n\r\n"
	// HTTP/1.0: net/http ignores Transfer-Encoding and frames the body by
	// its Content-Length (here the chunk-size line alone), so the smuggled
	// request, inside the chunk for a front end that reads it as chunked,
	// follows the body; or, without a Content-Length, the body is empty.
	http10Body := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled)
	http10Length := fmt.Sprintf("Content-Length: %d", len(fmt.Sprintf("%x\r\n", len(smuggled))))
	tests := []struct {
		name, requestLine string
		lines             []string
		body              string // after the head; "" means "0\r\n\r\n" and the smuggled request
	}{
		{"callback, Content-Length first", "GET /oauth/callback?state=x&code=y HTTP/1.1", []string{"Content-Length: 48", "Transfer-Encoding: chunked"}, ""},
		{"callback, Transfer-Encoding first", "GET /oauth/callback?state=x&code=y HTTP/1.1", []string{"Transfer-Encoding: chunked", "Content-Length: 48"}, ""},
		{"callback, chunked alone", "GET /oauth/callback?state=x&code=y HTTP/1.1", []string{"Transfer-Encoding: chunked"}, ""},
		{"callback with an error", "GET /oauth/callback?state=x&error=access_denied HTTP/1.1", []string{"Content-Length: 48", "Transfer-Encoding: chunked"}, ""},
		{"callback, another method", "POST /oauth/callback HTTP/1.1", []string{"Content-Length: 48", "Transfer-Encoding: chunked"}, ""},
		{"proxied path", "POST /send/postcard HTTP/1.1", []string{"X-Tenant-ID: globex", "Content-Length: 48", "Transfer-Encoding: chunked"}, ""},
		{"callback, HTTP/1.0", "GET /oauth/callback?state=x&code=y HTTP/1.0", []string{"Transfer-Encoding: chunked", http10Length}, http10Body},
		{"callback, HTTP/1.0, chunked alone", "GET /oauth/callback?state=x&code=y HTTP/1.0", []string{"Transfer-Encoding: chunked"}, smuggled},
		{"proxied path, HTTP/1.0", "POST /send/postcard HTTP/1.0", []string{"X-Tenant-ID: globex", http10Length, "Transfer-Encoding: chunked"}, http10Body},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			double.ResetAPIRequests()
			conn, br := testutil.RawConn(t, p.data, 10*time.Second)
			var b strings.Builder
			b.WriteString(tt.requestLine + "\r\nHost: proxy.internal\r\nConnection: keep-alive\r\n")
			for _, l := range tt.lines {
				b.WriteString(l + "\r\n")
			}
			if tt.body == "" {
				tt.body = "0\r\n\r\n" + smuggled
			}
			b.WriteString("\r\n" + tt.body)
			res, _ := testutil.Exchange(t, conn, br, b.String())
			if !res.Close {
				t.Errorf("first answer %d without Connection: close", res.StatusCode)
			}
			if second, err := http.ReadResponse(br, nil); err == nil {
				second.Body.Close()
				t.Errorf("the bytes after the chunked body were answered as a request (%d); want the connection closed", second.StatusCode)
			}
			for _, r := range double.APIRequests() {
				if strings.Contains(r.Path, "smuggled") {
					t.Errorf("thanks.io got the smuggled request %s with a token of %s", r.Path, "globex")
				}
			}
		})
	}
}

// TestAttackAdminLockout sends, from the admin's own address (a NAT, an
// ingress or a pod shared with others), more failed admin calls than the
// limit allows: wrong tokens are refused for a while, but the admin's own
// token is never refused, and only failures count.
func TestAttackAdminLockout(t *testing.T) {
	right := []string{"Authorization: Bearer " + testAdminToken}
	tests := []struct {
		name  string
		lines []string // of each of the failed calls
	}{
		{"no Authorization", nil},
		{"empty bearer token", []string{"Authorization: Bearer "}},
		{"Basic credentials", []string{"Authorization: Basic YWRtaW46YWRtaW4="}},
		{"wrong token", []string{"Authorization: Bearer wrong-token-0123456789"}},
		{"right and wrong token", []string{"Authorization: Bearer " + testAdminToken, "Authorization: Bearer wrong-token-0123456789"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := start(t, nil, nil)
			for i := range 15 {
				code, h, body := rawExchange(t, p.ops, request("GET", "/admin/tenants", tt.lines, ""))
				switch {
				case code == http.StatusUnauthorized && i < 10:
				case code == http.StatusTooManyRequests && i >= 10 && h.Get("Retry-After") != "":
				default:
					t.Fatalf("failed call %d: %d %s; want 401, then 429 with Retry-After after 10", i+1, code, body)
				}
			}
			if code, _, body := rawExchange(t, p.ops, request("GET", "/admin/tenants", right, "")); code != http.StatusOK {
				t.Errorf("the admin's own token after 15 failed calls from its address: %d %s; want 200", code, body)
			}
			if code, _, _ := rawExchange(t, p.ops, request("GET", "/admin/tenants", tt.lines, "")); code != http.StatusTooManyRequests {
				t.Errorf("a failed call after the admin's success: %d; want 429 still (a success does not reset the count)", code)
			}
		})
	}
	t.Run("successes do not count", func(t *testing.T) {
		p := start(t, nil, nil)
		for i := range 30 {
			if code, _, body := rawExchange(t, p.ops, request("GET", "/admin/tenants", right, "")); code != http.StatusOK {
				t.Fatalf("call %d with the admin token: %d %s", i+1, code, body)
			}
		}
		if code, _, _ := rawExchange(t, p.ops, request("GET", "/admin/tenants", nil, "")); code != http.StatusUnauthorized {
			t.Errorf("a failed call after 30 successes: %d; want 401", code)
		}
	})
}

// TestAttackOpsSlowBodies sends OPS_ADDR requests whose bodies never come
// (headers, then nothing, or part of the body): the operations port, which a
// sidecar's application, Prometheus and port-forwards reach, bounds a body
// by REQUEST_BODY_TIMEOUT as the data plane does. Otherwise every such
// connection, with or without the admin token, stays open and unanswered
// for as long as its sender likes, until the process runs out of file
// descriptors or memory, and the admin API and /healthz with it.
func TestAttackOpsSlowBodies(t *testing.T) {
	const bodyTimeout = 500 * time.Millisecond
	p := start(t, nil, map[string]string{"REQUEST_BODY_TIMEOUT": bodyTimeout.String()})
	admin := "Authorization: Bearer " + testAdminToken
	tests := []struct {
		name, head, body string
		status           int
		code             string
	}{
		{name: "healthz with a body that never comes", head: "GET /healthz HTTP/1.1\r\nContent-Length: 100\r\n", status: 200},
		{name: "metrics with a body that never comes", head: "GET /metrics HTTP/1.1\r\nContent-Length: 100\r\n", status: 200},
		{name: "metrics with a chunked body that stops", head: "GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n", body: "5\r\nhello\r\n", status: 200},
		{name: "admin call without the token, body never comes", head: "PUT /admin/tenants/acme/token HTTP/1.1\r\nContent-Length: 100\r\n",
			status: 401, code: "unauthorized"},
		{name: "admin call with a wrong token, body never comes", head: "PUT /admin/tenants/acme/token HTTP/1.1\r\nAuthorization: Bearer wrong-token-0123456789\r\nContent-Length: 100\r\n",
			status: 401, code: "unauthorized"},
		{name: "import with part of its body", head: "PUT /admin/tenants/acme/token HTTP/1.1\r\n" + admin + "\r\nContent-Type: application/json\r\nContent-Length: 100\r\n",
			body: `{"access_token":"pat_`, status: 408, code: "request_timeout"},
		{name: "connect with part of its body", head: "POST /admin/tenants/acme/connect HTTP/1.1\r\n" + admin + "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
			body: "5\r\n{\"ret\r\n", status: 408, code: "request_timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			started := time.Now()
			conn, br := testutil.RawConn(t, p.ops, bodyTimeout+3*time.Second)
			raw := strings.Replace(tt.head, "\r\n", "\r\nHost: proxy.internal\r\nConnection: keep-alive\r\n", 1) + "\r\n" + tt.body
			if _, err := io.WriteString(conn, raw); err != nil {
				t.Fatal(err)
			}
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer %v after the headers, well past REQUEST_BODY_TIMEOUT (%v): %v", time.Since(started).Round(time.Millisecond), bodyTimeout, err)
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode != tt.status || res.Header.Get("X-Thanksio-Proxy-Error") != tt.code {
				t.Errorf("answer %d %q; want %d %q", res.StatusCode, res.Header.Get("X-Thanksio-Proxy-Error"), tt.status, tt.code)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Errorf("the connection is still open after the answer (%v); want it closed, the rest of the body being still on it", err)
			}
		})
	}
	if code, body := p.admin(t, http.MethodGet, "/admin/tenants/acme", ""); code != http.StatusNotFound {
		t.Errorf("after the cut bodies, acme: %d %s; want 404 (nothing imported)", code, body)
	}
}
