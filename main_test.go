package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/proxy"
	"thanksio-proxy/store"
)

// syncBuffer collects a proxy's log output, and lets a test wait for a line
// of it. The zero value is empty and ready to use.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	written chan struct{} // closed by the next Write; nil until someone waits
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.written != nil {
		close(b.written)
		b.written = nil
	}
	return b.buf.Write(p)
}

// waitLine waits until a complete line of the output satisfies match, and
// returns it and true. When ended is closed first (the writer is gone) and
// no line written matches, it returns false; a nil ended never closes. It
// fails the test, naming what it waited for, when 10 seconds pass first.
func (b *syncBuffer) waitLine(t *testing.T, what string, ended <-chan struct{}, match func(line string) bool) (string, bool) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	searched := 0 // the lines before this offset did not match
	for gone := false; ; {
		b.mu.Lock()
		out := b.buf.String()
		if b.written == nil {
			b.written = make(chan struct{})
		}
		written := b.written
		b.mu.Unlock()
		for {
			line, _, ok := strings.Cut(out[searched:], "\n")
			if !ok {
				break
			}
			if match(line) {
				return line, true
			}
			searched += len(line) + 1
		}
		if gone {
			return "", false
		}
		select {
		case <-written:
		case <-ended:
			gone, ended = true, nil
		case <-deadline.C:
			t.Fatalf("timed out waiting until %s:\n%s", what, out)
		}
	}
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// instance is one running proxy process (a run call).
type instance struct {
	data, ops string // base URLs
	logs      *syncBuffer
	stop      func() error
}

const testAdminToken = "test-admin-token-0123456789"

// runProxy serves a proxy in a goroutine (serve, as run does without a
// command) with env as the whole environment and logs as its output, on
// listeners it opens on env's LISTEN_ADDR and OPS_ADDR (port 0: a port the
// kernel picks, held from then on), and waits until the proxy logs that it
// started, naming those addresses. It returns the addresses and a function
// that cancels the proxy and returns what serve returned. The test's cleanup
// calls stop too; calls after the first return the same error.
func runProxy(t *testing.T, env map[string]string, logs *syncBuffer) (data, ops string, stop func() error) {
	t.Helper()
	dataLn, opsLn := listen(t, env["LISTEN_ADDR"]), listen(t, env["OPS_ADDR"])
	data, ops = dataLn.Addr().String(), opsLn.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	returned := make(chan struct{})
	var runErr error
	go func() {
		defer close(returned)
		runErr = serve(ctx, func(k string) string { return env[k] }, logs, dataLn, opsLn)
	}()
	var once sync.Once
	var stopErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case <-returned:
				stopErr = runErr
			case <-time.After(30 * time.Second):
				stopErr = errors.New("run did not return within 30s of the shutdown")
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("run: %v", err)
		}
	})
	line, ok := logs.waitLine(t, "the proxy logs that it started", returned, func(line string) bool {
		d, o := startedAddrs(line)
		return d != "" && o != ""
	})
	if !ok {
		t.Fatalf("the proxy stopped at start: %v\n%s", runErr, logs)
	}
	if d, o := startedAddrs(line); d != data || o != ops {
		t.Fatalf("the startup line names %s and %s; want the listeners' %s and %s", d, o, data, ops)
	}
	return data, ops, stop
}

// listen opens a listener on addr for a proxy under test; the test's
// cleanup closes it, if the proxy did not.
func listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// startedAddrs returns the addresses that the proxy's startup log line
// names, or empty strings when line is another line.
func startedAddrs(line string) (data, ops string) {
	fields := logFields(line)
	if fields["msg"] != "thanksio-proxy started" {
		return "", ""
	}
	return fields["listen"], fields["ops"]
}

// logFields returns the string attributes of one line that slog's JSON
// handler (LOG_FORMAT=json) or text handler (LOG_FORMAT=text) wrote.
func logFields(line string) map[string]string {
	fields := map[string]string{}
	if strings.HasPrefix(line, "{") {
		var attrs map[string]any
		_ = json.Unmarshal([]byte(line), &attrs)
		for k, v := range attrs {
			if s, ok := v.(string); ok {
				fields[k] = s
			}
		}
		return fields
	}
	// key=value pairs separated by spaces; a value with a space, a quote or
	// an equals sign is Go-quoted.
	rest := line
	for {
		key, value, ok := strings.Cut(strings.TrimLeft(rest, " "), "=")
		if !ok {
			return fields
		}
		if strings.HasPrefix(value, `"`) {
			quoted, err := strconv.QuotedPrefix(value)
			if err != nil {
				return fields
			}
			rest = value[len(quoted):]
			value, _ = strconv.Unquote(quoted)
		} else {
			value, rest, _ = strings.Cut(value, " ")
		}
		fields[key] = value
	}
}

func randomKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// redisEnv is the environment of a proxy on a fresh key prefix of the test
// Redis (testutil.RedisURL).
func redisEnv(t *testing.T) map[string]string {
	return map[string]string{
		"REDIS_URL":            testutil.RedisURL(t),
		"REDIS_KEY_PREFIX":     testutil.KeyPrefix(),
		"TOKEN_ENCRYPTION_KEY": randomKey(t),
	}
}

// start runs a proxy with env (plus loopback listeners on ports the kernel
// picks and the admin token, unless env sets them) and waits until it has
// started.
func start(t *testing.T, double *thanksiotest.Server, env map[string]string) *instance {
	t.Helper()
	full := map[string]string{
		"LISTEN_ADDR": "127.0.0.1:0",
		"OPS_ADDR":    "127.0.0.1:0",
		"ADMIN_TOKEN": testAdminToken,
		"LOG_LEVEL":   "debug",
	}
	if double != nil {
		full["UPSTREAM_URL"] = double.APIURL()
		full["OAUTH_TOKEN_URL"] = double.TokenURL()
		full["OAUTH_AUTHORIZE_URL"] = double.AuthorizeURL()
		full["OAUTH_CLIENT_ID"] = double.ClientID()
		full["OAUTH_CLIENT_SECRET"] = double.ClientSecret()
	}
	for k, v := range env {
		full[k] = v
	}
	logs := &syncBuffer{}
	data, ops, stop := runProxy(t, full, logs)
	return &instance{data: "http://" + data, ops: "http://" + ops, logs: logs, stop: stop}
}

// do sends a request and returns the status, headers and body.
func do(t *testing.T, method, url string, header map[string]string, body string) (int, http.Header, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, string(b)
}

func (in *instance) admin(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	code, _, b := do(t, method, in.ops+path, map[string]string{"Authorization": "Bearer " + testAdminToken, "Content-Type": "application/json"}, body)
	return code, b
}

// importToken imports a token for tenant through the admin API.
func (in *instance) importToken(t *testing.T, tenant string, tok thanksiotest.Token, expiresIn int) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"access_token": tok.AccessToken, "refresh_token": tok.RefreshToken, "expires_in": expiresIn})
	if code, b := in.admin(t, http.MethodPut, "/admin/tenants/"+tenant+"/token", string(body)); code != http.StatusOK {
		t.Fatalf("import %s: %d %s", tenant, code, b)
	}
}

func (in *instance) call(t *testing.T, tenant, path string) (int, http.Header, string) {
	t.Helper()
	return do(t, http.MethodGet, in.data+path, map[string]string{"X-Tenant-ID": tenant, "Authorization": "Bearer caller-own-token"}, "")
}

// startWithGrants starts a proxy on a fresh Redis key prefix, imports a new
// grant of double for each tenant through it (valid for an hour), and
// returns the proxy and the grants by tenant.
func startWithGrants(t *testing.T, double *thanksiotest.Server, tenants ...string) (*instance, map[string]thanksiotest.Token) {
	t.Helper()
	p := start(t, double, redisEnv(t))
	grants := make(map[string]thanksiotest.Token, len(tenants))
	for _, tenant := range tenants {
		grants[tenant] = double.NewGrant()
		p.importToken(t, tenant, grants[tenant], 3600)
	}
	return p, grants
}

// startWithDueToken starts a proxy on a fresh Redis key prefix, with env
// added to its environment, and imports for acme a new grant that expires
// in an hour: due for a refresh when env's REFRESH_AHEAD is longer. The
// double issues its later access tokens for lifetime. It returns the
// double, the proxy and acme's grant.
func startWithDueToken(t *testing.T, env map[string]string, lifetime time.Duration) (*thanksiotest.Server, *instance, thanksiotest.Token) {
	t.Helper()
	double := thanksiotest.NewServer(t, thanksiotest.Options{AccessLifetime: time.Hour})
	full := redisEnv(t)
	maps.Copy(full, env)
	p := start(t, double, full)
	grant := double.NewGrant()
	p.importToken(t, "acme", grant, 3600)
	double.SetAccessLifetime(lifetime)
	return double, p, grant
}

func TestEndToEndTenantsGetTheirOwnTokens(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	p, grants := startWithGrants(t, double, "acme", "globex")
	for _, tenant := range []string{"acme", "globex", "acme"} {
		double.ResetAPIRequests()
		code, _, body := p.call(t, tenant, "/orders/list?page=2")
		if code != http.StatusOK {
			t.Fatalf("%s: %d %s", tenant, code, body)
		}
		reqs := double.APIRequests()
		if len(reqs) != 1 {
			t.Fatalf("%s: upstream got %d requests; want 1", tenant, len(reqs))
		}
		r := reqs[0]
		if r.Path != "/api/v2/orders/list" || r.RawQuery != "page=2" {
			t.Errorf("%s: upstream got %s?%s", tenant, r.Path, r.RawQuery)
		}
		if r.Token != grants[tenant].AccessToken || len(r.Header.Values("Authorization")) != 1 {
			t.Errorf("%s: upstream got another token than the tenant's own", tenant)
		}
		if v := r.Header.Values("X-Tenant-Id"); len(v) != 0 {
			t.Errorf("%s: upstream got the tenant header %q", tenant, v)
		}
	}
	// The admin API never shows a token.
	code, body := p.admin(t, http.MethodGet, "/admin/tenants/acme", "")
	if code != http.StatusOK || strings.Contains(body, grants["acme"].AccessToken) || strings.Contains(body, grants["acme"].RefreshToken) {
		t.Errorf("GET /admin/tenants/acme = %d %s; want a status without tokens", code, body)
	}
	if !strings.Contains(body, `"has_refresh_token":true`) || !strings.Contains(body, `"state":"active"`) {
		t.Errorf("status %s lacks state or has_refresh_token", body)
	}
}

// importAndStop starts a proxy with env, imports a grant for each tenant
// through it and stops it, leaving the grants in the store for the next
// proxy started with env.
func importAndStop(t *testing.T, double *thanksiotest.Server, env map[string]string, tenants ...string) {
	t.Helper()
	first := start(t, double, env)
	for _, tenant := range tenants {
		first.importToken(t, tenant, double.NewGrant(), 3600)
	}
	if err := first.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestServeLogsTheAddressesItListensOn checks what the benchmark (bench/)
// relies on to run proxies on ports the kernel picks, with no port handed
// from one process to another: with LISTEN_ADDR and OPS_ADDR on port 0 and
// no listeners given, serve binds them and its startup line names the
// ports it got, at the default LOG_LEVEL.
func TestServeLogsTheAddressesItListensOn(t *testing.T) {
	env := map[string]string{"LISTEN_ADDR": "127.0.0.1:0", "OPS_ADDR": "127.0.0.1:0"}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	returned := make(chan struct{})
	var runErr error
	go func() {
		defer close(returned)
		runErr = serve(ctx, func(k string) string { return env[k] }, logs, nil, nil)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-returned:
			if runErr != nil {
				t.Errorf("serve: %v", runErr)
			}
		case <-time.After(30 * time.Second):
			t.Error("serve did not return within 30s of the shutdown")
		}
	})
	line, ok := logs.waitLine(t, "the proxy logs that it started", returned, func(line string) bool {
		d, o := startedAddrs(line)
		return d != "" && o != ""
	})
	if !ok {
		t.Fatalf("the proxy stopped at start: %v\n%s", runErr, logs)
	}
	data, ops := startedAddrs(line)
	for _, addr := range []string{data, ops} {
		if host, port, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" || port == "0" {
			t.Fatalf("the startup line names %q; want 127.0.0.1 and the port bound: %s", addr, line)
		}
	}
	if data == ops {
		t.Fatalf("the startup line names %s for both listeners", data)
	}
	if code, _, body := do(t, http.MethodGet, "http://"+ops+"/healthz", nil, ""); code != http.StatusOK {
		t.Errorf("ops listener /healthz: %d %s; want 200", code, body)
	}
	if code, h, _ := do(t, http.MethodGet, "http://"+data+"/orders", nil, ""); h.Get("X-Thanksio-Proxy-Error") != "missing_tenant" {
		t.Errorf("data listener, no tenant: %d, error %q; want the proxy's missing_tenant", code, h.Get("X-Thanksio-Proxy-Error"))
	}
}

func TestRestartServesImportedTenants(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	env := redisEnv(t)
	importAndStop(t, double, env, "acme")
	second := start(t, double, env)
	if code, _, body := second.call(t, "acme", "/ping"); code != http.StatusOK {
		t.Fatalf("after restart: %d %s; want 200", code, body)
	}
	if n := double.TokenCalls(); n != 0 {
		t.Errorf("token endpoint called %d times; want 0", n)
	}
}

func TestWrongEncryptionKeyIsClearAndHarmless(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	env := redisEnv(t)
	importAndStop(t, double, env, "acme")

	wrong := maps.Clone(env)
	wrong["TOKEN_ENCRYPTION_KEY"] = randomKey(t)
	second := start(t, double, wrong)
	code, header, body := second.call(t, "acme", "/ping")
	if code != http.StatusServiceUnavailable || header.Get("X-Thanksio-Proxy-Error") != "token_unavailable" ||
		!strings.Contains(body, "encryption key") || header.Get("Retry-After") == "" {
		t.Errorf("with a wrong key: %d %s; want 503 token_unavailable naming the encryption key", code, body)
	}
	if n := len(double.APIRequests()); n != 0 {
		t.Errorf("upstream got %d requests; want 0", n)
	}
	second.stop()

	// Nothing was changed: the right key still opens the record.
	third := start(t, double, env)
	if code, _, body := third.call(t, "acme", "/ping"); code != http.StatusOK {
		t.Errorf("with the right key again: %d %s; want 200", code, body)
	}
}

func TestRefreshThroughProxyUnderLoad(t *testing.T) {
	// 120 calls of one tenant, and a replay each for some: more than its
	// turns in a minute, hence RATE_LIMIT=off.
	double, p, old := startWithDueToken(t, map[string]string{"REFRESH_AHEAD": "2h", "RATE_LIMIT": "off"}, 4*time.Hour)

	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for range 100 {
		wg.Go(func() {
			code, _, _ := p.call(t, "acme", "/ping")
			mu.Lock()
			statuses[code]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if statuses[http.StatusOK] != 100 {
		t.Errorf("statuses = %v; want 100 × 200", statuses)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := double.WaitTokenCalls(ctx, 1); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the refresh lands", func() bool {
		return double.IsRevoked(old.RefreshToken) && strings.Contains(mustStatus(t, p, "acme"), `"last_refresh"`)
	})
	for range 20 {
		if code, _, _ := p.call(t, "acme", "/ping"); code != http.StatusOK {
			t.Fatalf("after the refresh: %d", code)
		}
	}
	if n := double.RefreshCalls(); n != 1 {
		t.Errorf("refresh calls = %d; want 1", n)
	}
}

func mustStatus(t *testing.T, p *instance, tenant string) string {
	t.Helper()
	_, body := p.admin(t, http.MethodGet, "/admin/tenants/"+tenant, "")
	return body
}

func TestAdminAPI(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	p := start(t, double, nil)
	g := double.NewGrant()

	t.Run("authentication", func(t *testing.T) {
		for _, auth := range []string{"", "Bearer wrong", "Basic " + testAdminToken, testAdminToken} {
			code, h, body := do(t, http.MethodGet, p.ops+"/admin/tenants", map[string]string{"Authorization": auth}, "")
			if code != http.StatusUnauthorized || h.Get("X-Thanksio-Proxy-Error") != "unauthorized" {
				t.Errorf("Authorization %q: %d %s; want 401 unauthorized", auth, code, body)
			}
		}
	})

	bad := []struct {
		name   string
		path   string
		body   string
		status int
	}{
		{"misspelt field", "/admin/tenants/acme/token", `{"access_token":"a","refresh_tokn":"b"}`, 400},
		{"no access token", "/admin/tenants/acme/token", `{"refresh_token":"b"}`, 400},
		{"wrong type", "/admin/tenants/acme/token", `{"access_token":5}`, 400},
		{"truncated", "/admin/tenants/acme/token", `{"access_token":"a"`, 400},
		{"two objects", "/admin/tenants/acme/token", `{"access_token":"a"}{}`, 400},
		{"both expiries", "/admin/tenants/acme/token", `{"access_token":"a","expires_in":5,"expiry":"2030-01-01T00:00:00Z"}`, 400},
		{"negative expires_in", "/admin/tenants/acme/token", `{"access_token":"a","expires_in":-5}`, 400},
		{"fractional expires_in", "/admin/tenants/acme/token", `{"access_token":"a","expires_in":1.5}`, 400},
		{"bad expiry", "/admin/tenants/acme/token", `{"access_token":"a","expiry":"tomorrow"}`, 400},
		{"array", "/admin/tenants/acme/token", `["a"]`, 400},
		{"huge", "/admin/tenants/acme/token", `{"access_token":"` + strings.Repeat("a", 70<<10) + `"}`, 413},
		{"bad tenant", "/admin/tenants/a%20b/token", `{"access_token":"a"}`, 400},
		{"dot dot tenant", "/admin/tenants/../token", `{"access_token":"a"}`, 404},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			code, body := p.admin(t, http.MethodPut, tt.path, tt.body)
			if code != tt.status || !strings.Contains(body, `"error"`) {
				t.Errorf("PUT %s %.60s: %d %s; want %d with an error", tt.path, tt.body, code, body, tt.status)
			}
			if c, _ := p.admin(t, http.MethodGet, "/admin/tenants/acme", ""); c != http.StatusNotFound {
				t.Errorf("after a refused import, GET acme = %d; want 404 (nothing stored)", c)
			}
		})
	}

	t.Run("lifecycle", func(t *testing.T) {
		p.importToken(t, "acme", g, 3600)
		pat := double.NewPersonalAccessToken()
		if code, body := p.admin(t, http.MethodPut, "/admin/tenants/static/token", `{"access_token":"`+pat+`"}`); code != 200 {
			t.Fatalf("import static: %d %s", code, body)
		}
		for i := range 3 {
			p.importToken(t, fmt.Sprintf("t%d", i), double.NewGrant(), 3600)
		}
		code, body := p.admin(t, http.MethodGet, "/admin/tenants?limit=2", "")
		if code != 200 || body != `{"tenants":["acme","static"],"next":"static"}`+"\n" {
			t.Errorf("list page 1: %d %s", code, body)
		}
		_, body = p.admin(t, http.MethodGet, "/admin/tenants?limit=2&after=static", "")
		if body != `{"tenants":["t0","t1"],"next":"t1"}`+"\n" {
			t.Errorf("list page 2: %s", body)
		}
		_, body = p.admin(t, http.MethodGet, "/admin/tenants?limit=2&after=t1", "")
		if body != `{"tenants":["t2"]}`+"\n" {
			t.Errorf("list page 3: %s", body)
		}
		if code, body := p.admin(t, http.MethodGet, "/admin/tenants?limit=0", ""); code != 400 {
			t.Errorf("limit=0: %d %s; want 400", code, body)
		}

		code, body = p.admin(t, http.MethodPost, "/admin/tenants/acme/refresh", "")
		if code != 200 || !strings.Contains(body, `"last_refresh"`) || strings.Contains(body, "at_") || strings.Contains(body, "rt_") {
			t.Errorf("refresh: %d %s; want 200 with last_refresh and no token", code, body)
		}
		if !double.IsRevoked(g.RefreshToken) || double.RefreshCalls() != 1 {
			t.Errorf("admin refresh did not rotate the grant once")
		}
		if code, body := p.admin(t, http.MethodPost, "/admin/tenants/static/refresh", ""); code != http.StatusConflict || !strings.Contains(body, "not_refreshable") {
			t.Errorf("refresh static: %d %s; want 409 not_refreshable", code, body)
		}
		if code, _, _ := p.call(t, "acme", "/ping"); code != 200 {
			t.Errorf("call after admin refresh: %d", code)
		}

		if code, _ := p.admin(t, http.MethodDelete, "/admin/tenants/acme", ""); code != http.StatusNoContent {
			t.Errorf("delete: %d; want 204", code)
		}
		if code, h, _ := p.call(t, "acme", "/ping"); code != 401 || h.Get("X-Thanksio-Proxy-Error") != "unknown_tenant" {
			t.Errorf("call after delete: %d %s; want 401 unknown_tenant", code, h.Get("X-Thanksio-Proxy-Error"))
		}
		if code, body := p.admin(t, http.MethodGet, "/admin/tenants/acme", ""); code != 404 || !strings.Contains(body, "unknown_tenant") {
			t.Errorf("GET deleted: %d %s; want 404 unknown_tenant", code, body)
		}
		if code, body := p.admin(t, http.MethodPatch, "/admin/tenants/acme", ""); code != http.StatusMethodNotAllowed {
			t.Errorf("PATCH: %d %s; want 405", code, body)
		}
	})
}

func TestAdminDisabledWithoutToken(t *testing.T) {
	p := start(t, nil, map[string]string{"ADMIN_TOKEN": ""})
	code, _, _ := do(t, http.MethodGet, p.ops+"/admin/tenants", map[string]string{"Authorization": "Bearer "}, "")
	if code != http.StatusNotFound {
		t.Errorf("GET /admin/tenants without ADMIN_TOKEN: %d; want 404", code)
	}
}

func TestConfigErrorsNameTheVariable(t *testing.T) {
	tests := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"REDIS_URL": "redis://127.0.0.1:1"}, "TOKEN_ENCRYPTION_KEY"},
		{map[string]string{"TOKEN_ENCRYPTION_KEY": "c2hvcnQ="}, "TOKEN_ENCRYPTION_KEY"},
		{map[string]string{"REFRESH_AHEAD": "soon"}, "REFRESH_AHEAD"},
		{map[string]string{"REFRESH_AHEAD": "-5m"}, "REFRESH_AHEAD"},
		{map[string]string{"UPSTREAM_URL": "api.thanks.io"}, "UPSTREAM_URL"},
		{map[string]string{"OAUTH_CLIENT_ID": "x"}, "OAUTH_CLIENT_SECRET"},
		{map[string]string{"OAUTH_RETURN_URLS": "ftp://x"}, "OAUTH_RETURN_URLS"},
		{map[string]string{"TENANT_HEADER": "Authorization"}, "TENANT_HEADER"},
		{map[string]string{"ADMIN_TOKEN": "short"}, "ADMIN_TOKEN"},
		{map[string]string{"LOG_FORMAT": "xml"}, "LOG_FORMAT"},
		{map[string]string{"CALLER_KEYS_FILE": "/nonexistent/callers"}, "CALLER_KEYS_FILE"},
		{map[string]string{"CALLER_KEY_HEADER": "X-Tenant-ID"}, "CALLER_KEY_HEADER"},
		{map[string]string{"CACHE_SIZE": "many"}, "CACHE_SIZE"},
		// 0 is refused, not turned into the default behind the operator's back.
		{map[string]string{"MAX_REPLAY_BODY": "0"}, "MAX_REPLAY_BODY"},
		{map[string]string{"CACHE_SIZE": "0"}, "CACHE_SIZE"},
		{map[string]string{"REFRESH_AHEAD": "0s"}, "REFRESH_AHEAD"},
		{map[string]string{"REDIS_MIN_REPLICAS_ACK": "-1"}, "REDIS_MIN_REPLICAS_ACK"},
		{map[string]string{"REDIS_MIN_REPLICAS_ACK": "one"}, "REDIS_MIN_REPLICAS_ACK"},
		{map[string]string{"LISTEN_ADDR": "127.0.0.1:8080", "OPS_ADDR": "127.0.0.1:8080"}, "OPS_ADDR"},
		{map[string]string{"REDIS_URL": "localhost:6379", "TOKEN_ENCRYPTION_KEY": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}, "REDIS_URL"},
		{map[string]string{"REQUEST_BODY_TIMEOUT": "0s"}, "REQUEST_BODY_TIMEOUT"},
		{map[string]string{"REQUEST_BODY_TIMEOUT": "slow"}, "REQUEST_BODY_TIMEOUT"},
		{map[string]string{"MAX_REPLAY_MEMORY": "-1"}, "MAX_REPLAY_MEMORY"},
		{map[string]string{"MAX_REPLAY_MEMORY": "65536"}, "MAX_REPLAY_MEMORY"},
		{map[string]string{"MAX_REPLAY_MEMORY": "64MiB"}, "MAX_REPLAY_MEMORY"},
		{map[string]string{"MAX_CALLER_CONCURRENCY": "-1"}, "MAX_CALLER_CONCURRENCY"},
	}
	for _, tt := range tests {
		err := run(t.Context(), nil, func(k string) string { return tt.env[k] }, nil, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("run with %v = %v; want one line naming %s", tt.env, err, tt.want)
		}
	}
}

func TestCallerKeysReloadOnHangup(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	file := filepath.Join(t.TempDir(), "callers")
	write := func(content string) {
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("billing " + proxy.HashCallerKey("key-one") + " acme\n")
	p, call := startWithCallerKeys(t, double, file)
	if c := call("key-one"); c != 200 {
		t.Fatalf("with key-one: %d; want 200", c)
	}
	if c := call("key-two"); c != 401 {
		t.Fatalf("with key-two before the reload: %d; want 401", c)
	}

	// A broken file is refused: the keys in force stay.
	write("billing key-two acme\n")
	hangup(t)
	waitForLog(t, p, "caller keys not reloaded")
	if c := call("key-one"); c != 200 {
		t.Errorf("after a refused reload, key-one: %d; want 200", c)
	}

	write("billing " + proxy.HashCallerKey("key-two") + " acme\n")
	hangup(t)
	waitForLog(t, p, "caller keys reloaded")
	if c := call("key-two"); c != 200 {
		t.Errorf("after the reload, key-two: %d; want 200", c)
	}
	if c := call("key-one"); c != 401 {
		t.Errorf("after the reload, key-one: %d; want 401", c)
	}
	if strings.Contains(p.logs.String(), "key-one") || strings.Contains(p.logs.String(), "key-two") {
		t.Errorf("a caller key appears in the logs")
	}
}

// startWithCallerKeys starts a proxy that reads its caller keys from file,
// imports a grant for acme through it, and returns it and a function that
// calls acme's /ping with a caller key and returns the status.
func startWithCallerKeys(t *testing.T, double *thanksiotest.Server, file string) (*instance, func(key string) int) {
	t.Helper()
	p := start(t, double, map[string]string{"CALLER_KEYS_FILE": file})
	p.importToken(t, "acme", double.NewGrant(), 3600)
	return p, func(key string) int {
		code, _, _ := do(t, http.MethodGet, p.data+"/ping", map[string]string{"X-Tenant-ID": "acme", "X-Caller-Key": key}, "")
		return code
	}
}

func hangup(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

func waitForLog(t *testing.T, p *instance, text string) {
	t.Helper()
	p.logs.waitLine(t, fmt.Sprintf("the log says %q", text), nil, func(line string) bool {
		return strings.Contains(line, text)
	})
}

func TestAdminGuessingIsRateLimited(t *testing.T) {
	p := start(t, nil, nil)
	for i := range 10 {
		guess := fmt.Sprintf("Bearer guess-%d-secretish", i)
		if code, _, _ := do(t, http.MethodGet, p.ops+"/admin/tenants", map[string]string{"Authorization": guess}, ""); code != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d; want 401", i, code)
		}
	}
	code, h, body := do(t, http.MethodGet, p.ops+"/admin/tenants", map[string]string{"Authorization": "Bearer guess-10-secretish"}, "")
	if code != http.StatusTooManyRequests || h.Get("Retry-After") == "" || !strings.Contains(body, "too_many_attempts") {
		t.Errorf("after 10 wrong tokens, an 11th: %d %s; want 429 too_many_attempts with Retry-After", code, body)
	}
	// Whoever shares the admin's address must not lock the admin out.
	if code, _, body := do(t, http.MethodGet, p.ops+"/admin/tenants", map[string]string{"Authorization": "Bearer " + testAdminToken}, ""); code != http.StatusOK {
		t.Errorf("after 11 wrong tokens, the right one: %d %s; want 200", code, body)
	}
	if strings.Contains(p.logs.String(), "secretish") {
		t.Errorf("a presented admin token appears in the logs")
	}
	if !strings.Contains(p.logs.String(), "admin call refused") {
		t.Errorf("refused admin calls are not logged")
	}
}

// mountedSecret returns the path of a file key as the kubelet mounts a
// Secret's key (a symlink through ..data into a versioned directory), and
// a function that publishes a new version of its content the way the
// kubelet updates it: a new directory, and ..data pointed at it at once.
// The first call of version creates the file.
func mountedSecret(t *testing.T, key string) (file string, version func(name, content string)) {
	t.Helper()
	dir := t.TempDir()
	file = filepath.Join(dir, key)
	version = func(name, content string) {
		t.Helper()
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, key), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(file); err != nil {
			if err := os.Symlink(filepath.Join("..data", key), file); err != nil {
				t.Fatal(err)
			}
		}
	}
	return file, version
}

// TestCallerKeysReloadWhenTheSecretChanges swaps the file as the kubelet
// updates a mounted Secret: a new directory, and the ..data symlink pointed
// at it.
func TestCallerKeysReloadWhenTheSecretChanges(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	file, version := mountedSecret(t, "callers")
	version("..v1", "billing "+proxy.HashCallerKey("key-one")+" acme\n")
	p, call := startWithCallerKeys(t, double, file)
	if c := call("key-two"); c != 401 {
		t.Fatalf("with key-two before the update: %d; want 401", c)
	}
	version("..v2", "billing "+proxy.HashCallerKey("key-two")+" acme\n")
	waitForLog(t, p, "caller keys reloaded")
	if c := call("key-two"); c != 200 {
		t.Errorf("after the Secret update, key-two: %d; want 200", c)
	}
}

func TestAdminListsTenantsByState(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	p := start(t, double, nil)
	for _, tenant := range []string{"acme", "globex", "initech"} {
		p.importToken(t, tenant, double.NewGrant(), 3600)
	}
	revoked := double.NewGrant()
	p.importToken(t, "hooli", revoked, 0)
	double.Revoke(revoked.RefreshToken)
	if code, _, _ := p.call(t, "hooli", "/ping"); code != http.StatusUnauthorized {
		t.Fatalf("hooli with a revoked grant: %d; want 401", code)
	}
	tests := []struct {
		query, want string
		code        int
	}{
		{"?state=reauthorization_required", `{"tenants":["hooli"]}`, 200},
		{"?state=active", `{"tenants":["acme","globex","initech"]}`, 200},
		{"?state=active&limit=2", `{"tenants":["acme","globex"],"next":"globex"}`, 200},
		{"?state=active&after=globex", `{"tenants":["initech"]}`, 200},
		{"?state=revoked", "", 400},
	}
	for _, tt := range tests {
		code, body := p.admin(t, http.MethodGet, "/admin/tenants"+tt.query, "")
		if code != tt.code || tt.want != "" && strings.TrimSpace(body) != tt.want {
			t.Errorf("GET /admin/tenants%s = %d %s; want %d %s", tt.query, code, body, tt.code, tt.want)
		}
	}
}

// TestDefaultsComeFromThePackages checks that an empty environment gives
// the defaults the packages state for their zero values, once.
func TestDefaultsComeFromThePackages(t *testing.T) {
	cfg, err := loadConfig(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TenantHeader != proxy.DefaultTenantHeader || cfg.CallerKeyHeader != proxy.DefaultCallerKeyHeader ||
		cfg.MaxReplayBody != proxy.DefaultMaxReplayBody || cfg.RefreshAhead != auth.DefaultRefreshAhead ||
		cfg.CacheSize != auth.DefaultCacheSize || cfg.RedisKeyPrefix != store.DefaultPrefix {
		t.Errorf("defaults = %q %q %d %v %d %q; want the packages' Default constants",
			cfg.TenantHeader, cfg.CallerKeyHeader, cfg.MaxReplayBody, cfg.RefreshAhead, cfg.CacheSize, cfg.RedisKeyPrefix)
	}
}
