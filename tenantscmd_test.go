package main

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"thanksio-proxy/internal/thanksiotest"
)

// tenantsResult is what one run of the tenants command did.
type tenantsResult struct {
	stdout string
	code   int    // the exit code: 0 for a nil error
	err    string // the error's text, "" for none
}

// runTenants runs "thanksio-proxy tenants args..." with env as the whole
// environment and stdin as standard input. Every error must carry an exit
// code (*exitError).
func runTenants(t *testing.T, env map[string]string, stdin string, args ...string) tenantsResult {
	t.Helper()
	var out syncBuffer
	err := tenantsCommand(t.Context(), args, func(k string) string { return env[k] }, strings.NewReader(stdin), &out)
	r := tenantsResult{stdout: out.String()}
	if err != nil {
		var ee *exitError
		if !errors.As(err, &ee) {
			t.Fatalf("tenants %q: error %v is not an *exitError", args, err)
		}
		r.code, r.err = ee.code, err.Error()
	}
	return r
}

// adminEnv is the environment of a tenants command that calls p's admin API.
func adminEnv(p *instance) map[string]string {
	return map[string]string{"ADMIN_TOKEN": testAdminToken, "ADMIN_URL": p.ops}
}

// tableRows splits the table that "tenants list" prints into the cells of
// its rows, the header first.
func tableRows(t *testing.T, out string) [][]string {
	t.Helper()
	var rows [][]string
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		rows = append(rows, regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(line), -1))
	}
	if len(rows) == 0 || strings.Join(rows[0], "|") != "TENANT|STATE|EXPIRY|LAST REFRESH|LAST ERROR" {
		t.Fatalf("table header %q; want TENANT STATE EXPIRY LAST REFRESH LAST ERROR:\n%s", rows[0], out)
	}
	return rows
}

func TestTenantsCommandUsageErrors(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "no call expected", http.StatusTeapot)
	}))
	t.Cleanup(srv.Close)
	env := map[string]string{"ADMIN_TOKEN": testAdminToken, "ADMIN_URL": srv.URL}
	const token = "at_the-token-on-the-command-line-0123456789"

	tests := []struct {
		name  string
		env   map[string]string
		stdin string
		args  []string
		want  string // in the error
	}{
		{"no command", env, "", nil, "a command is required"},
		{"unknown command", env, "", []string{"lsit"}, `unknown command "lsit"`},
		{"show without a tenant", env, "", []string{"show"}, "show needs a tenant"},
		{"show of two tenants", env, "", []string{"show", "acme", "globex"}, "show takes one tenant"},
		{"invalid tenant", env, "", []string{"show", "a b"}, "is not a tenant id"},
		{"dot dot", env, "", []string{"refresh", ".."}, "is not a tenant id"},
		{"tenant too long", env, "", []string{"check", strings.Repeat("a", 129)}, "is not a tenant id"},
		{"delete without a tenant", env, "", []string{"delete"}, "delete needs a tenant"},
		{"connect without a tenant", env, "", []string{"connect", "--return-to", "https://app.example/"}, "connect needs a tenant"},
		{"unknown flag", env, "", []string{"list", "--all"}, "flag provided but not defined"},
		{"flag of another command", env, "", []string{"show", "acme", "--json"}, "flag provided but not defined"},
		{"flag without its value", env, "", []string{"connect", "acme", "--return-to"}, "flag needs an argument"},
		{"bad state", env, "", []string{"list", "--state", "revoked"}, "--state must be active or reauthorization_required"},
		{"list with an argument", env, "", []string{"list", "acme"}, "list takes no arguments"},
		{"token as an argument", env, "", []string{"import", "acme", token}, "standard input"},
		{"empty standard input", env, " \n", []string{"import", "acme"}, "standard input is empty"},
		{"two lines", env, token + "\n" + token + "2\n", []string{"import", "acme"}, "one access token on one line"},
		{"broken JSON", env, `{"access_token":"` + token + `"`, []string{"import", "acme"}, "not valid JSON"},
		{"huge input", env, strings.Repeat("a", 70<<10), []string{"import", "acme"}, "larger than"},
		{"no admin token", map[string]string{"ADMIN_URL": srv.URL}, "", []string{"list"}, "ADMIN_TOKEN"},
		{"bad admin URL", map[string]string{"ADMIN_TOKEN": testAdminToken, "ADMIN_URL": "127.0.0.1:9090"}, "", []string{"show", "acme"}, "ADMIN_URL"},
		{"admin URL with a query", map[string]string{"ADMIN_TOKEN": testAdminToken, "ADMIN_URL": srv.URL + "?x=1"}, "", []string{"show", "acme"}, "ADMIN_URL"},
		{"bad ops address", map[string]string{"ADMIN_TOKEN": testAdminToken, "OPS_ADDR": "9090"}, "", []string{"show", "acme"}, "OPS_ADDR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runTenants(t, tt.env, tt.stdin, tt.args...)
			if r.code != 2 || !strings.Contains(r.err, tt.want) {
				t.Errorf("tenants %q = exit %d %q; want exit 2 with %q", tt.args, r.code, r.err, tt.want)
			}
			secretsAbsent(t, "the output", r.stdout, token, testAdminToken)
			secretsAbsent(t, "the error", r.err, token, testAdminToken)
		})
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("usage errors made %d admin calls; want 0", n)
	}

	if r := runTenants(t, env, "", "help"); r.code != 0 || !strings.Contains(r.stdout, "Usage: thanksio-proxy tenants") {
		t.Errorf("tenants help = exit %d %q, output %q; want exit 0 and the usage", r.code, r.err, r.stdout)
	}
	if r := runTenants(t, env, ""); !strings.Contains(r.stdout, "Usage: thanksio-proxy tenants") {
		t.Errorf("tenants without a command printed %q; want the usage", r.stdout)
	}
	if r := runTenants(t, env, "", "list", "-h"); r.code != 0 || !strings.Contains(r.stdout, "list [--json]") {
		t.Errorf("tenants list -h = exit %d %q; want exit 0 and the usage", r.code, r.err)
	}
}

func TestTenantsCommandAgainstProxy(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	p := start(t, double, map[string]string{
		"OAUTH_REDIRECT_URL": "https://proxy.example/oauth/callback",
		"OAUTH_RETURN_URLS":  "https://app.example/settings",
		"RATE_LIMIT":         "off",
	})
	env := adminEnv(p)
	grant := double.NewGrant()
	pat := double.NewPersonalAccessToken()
	revoked := double.NewGrant()
	var shown []string // every output and error, to look for tokens in
	run := func(t *testing.T, stdin string, args ...string) tenantsResult {
		t.Helper()
		r := runTenants(t, env, stdin, args...)
		shown = append(shown, r.stdout, r.err)
		return r
	}
	status := func(t *testing.T, out string) map[string]any {
		t.Helper()
		var st map[string]any
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("output %q is not a JSON status: %v", out, err)
		}
		return st
	}

	t.Run("empty list", func(t *testing.T) {
		if r := run(t, "", "list"); r.code != 0 || len(tableRows(t, r.stdout)) != 1 {
			t.Errorf("tenants list = exit %d %q:\n%s; want a table without rows", r.code, r.err, r.stdout)
		}
		if r := run(t, "", "list", "--json"); r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
			t.Errorf("tenants list --json = exit %d %q: %s; want []", r.code, r.err, r.stdout)
		}
	})

	t.Run("import", func(t *testing.T) {
		body, _ := json.Marshal(map[string]any{"access_token": grant.AccessToken, "refresh_token": grant.RefreshToken, "expires_in": 3600})
		r := run(t, string(body)+"\n", "import", "acme")
		if st := status(t, r.stdout); r.code != 0 || st["tenant"] != "acme" || st["state"] != "active" || st["has_refresh_token"] != true || st["expiry"] == nil {
			t.Errorf("import of the JSON body = exit %d %q: %s; want an active refreshable status", r.code, r.err, r.stdout)
		}
		r = run(t, "  "+pat+"\r\n", "import", "static")
		if st := status(t, r.stdout); r.code != 0 || st["tenant"] != "static" || st["has_refresh_token"] != false || st["expiry"] != nil {
			t.Errorf("import of a bare token = exit %d %q: %s; want a static token's status", r.code, r.err, r.stdout)
		}
		if code, _, body := p.call(t, "static", "/ping"); code != http.StatusOK {
			t.Errorf("a call of the imported static tenant: %d %s; want 200", code, body)
		}
		body, _ = json.Marshal(map[string]any{"access_token": revoked.AccessToken, "refresh_token": revoked.RefreshToken, "expires_in": 0})
		if r := run(t, string(body), "import", "hooli"); r.code != 0 {
			t.Fatalf("import hooli = exit %d %q", r.code, r.err)
		}
	})

	t.Run("refused import", func(t *testing.T) {
		misspelt := `{"access_token":"` + grant.AccessToken + `","refresh_tokn":"` + grant.RefreshToken + `"}`
		r := run(t, misspelt, "import", "initech")
		if r.code != 1 || !strings.Contains(r.err, "bad_request:") || !strings.Contains(r.err, "(400)") || r.stdout != "" {
			t.Errorf("import with a misspelt field = exit %d %q: %s; want exit 1 naming bad_request and 400", r.code, r.err, r.stdout)
		}
		r = run(t, "tok en", "import", "initech")
		if r.code != 2 {
			t.Errorf("import of a token with a space = exit %d %q; want 2", r.code, r.err)
		}
		r = run(t, "at_\x01control", "import", "initech")
		if r.code != 1 || !strings.Contains(r.err, "(400)") {
			t.Errorf("import of a token with a control character = exit %d %q; want exit 1 with the API's 400", r.code, r.err)
		}
		if r := run(t, "", "show", "initech"); r.code != 1 {
			t.Errorf("after refused imports, show initech = exit %d; want 1 (nothing stored)", r.code)
		}
	})

	t.Run("show", func(t *testing.T) {
		r := run(t, "", "show", "acme")
		if st := status(t, r.stdout); r.code != 0 || st["tenant"] != "acme" || !strings.Contains(r.stdout, "\n  \"state\": \"active\"") {
			t.Errorf("show acme = exit %d %q: %s; want the indented status", r.code, r.err, r.stdout)
		}
		r = run(t, "", "show", "nobody")
		if want := "unknown_tenant: No token is held for this tenant. (404)"; r.code != 1 || r.err != want || r.stdout != "" {
			t.Errorf("show nobody = exit %d %q: %q; want exit 1 %q", r.code, r.err, r.stdout, want)
		}
		// Flags and operands in any order; "--" lets a tenant id start with '-'.
		if r := run(t, "", "show", "--", "-acme"); r.code != 1 || !strings.Contains(r.err, "unknown_tenant") {
			t.Errorf("show -- -acme = exit %d %q; want exit 1 unknown_tenant", r.code, r.err)
		}
	})

	// hooli's refresh token is revoked: its next call finds out.
	double.Revoke(revoked.RefreshToken)
	if code, _, body := p.call(t, "hooli", "/ping"); code != http.StatusUnauthorized {
		t.Fatalf("hooli with a revoked grant: %d %s; want 401", code, body)
	}

	t.Run("list", func(t *testing.T) {
		r := run(t, "", "list")
		if r.code != 0 {
			t.Fatalf("tenants list = exit %d %q", r.code, r.err)
		}
		rows := tableRows(t, r.stdout)
		if len(rows) != 4 {
			t.Fatalf("tenants list printed %d rows; want a header and 3:\n%s", len(rows), r.stdout)
		}
		acme, hooli, static := rows[1], rows[2], rows[3]
		if acme[0] != "acme" || acme[1] != "active" || acme[3] != "-" || acme[4] != "-" {
			t.Errorf("acme's row %q; want acme active EXPIRY - -", acme)
		}
		if exp, err := time.Parse(time.RFC3339, acme[2]); err != nil || !strings.HasSuffix(acme[2], "Z") || time.Until(exp) < 50*time.Minute || time.Until(exp) > 70*time.Minute {
			t.Errorf("acme's expiry %q; want an RFC 3339 UTC time an hour from now", acme[2])
		}
		if hooli[0] != "hooli" || hooli[1] != "reauthorization_required" || !strings.Contains(hooli[4], "refused") {
			t.Errorf("hooli's row %q; want reauthorization_required with the last error", hooli)
		}
		if at, _, _ := strings.Cut(hooli[4], " "); !strings.HasSuffix(at, "Z") {
			t.Errorf("hooli's last error %q does not start with its RFC 3339 UTC time", hooli[4])
		} else if _, err := time.Parse(time.RFC3339, at); err != nil {
			t.Errorf("hooli's last error %q does not start with its RFC 3339 UTC time: %v", hooli[4], err)
		}
		if strings.Join(static, "|") != "static|active|never|-|-" {
			t.Errorf("static's row %q; want static active never - -", static)
		}

		r = run(t, "", "list", "--json")
		var all []map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &all); r.code != 0 || err != nil || len(all) != 3 {
			t.Fatalf("tenants list --json = exit %d %q: %s; want a JSON array of 3 statuses", r.code, r.err, r.stdout)
		}
		for i, want := range []string{"acme", "hooli", "static"} {
			if all[i]["tenant"] != want || all[i]["state"] == nil {
				t.Errorf("list --json [%d] = %v; want the status of %s", i, all[i], want)
			}
		}

		r = run(t, "", "list", "--state=reauthorization_required", "--json")
		if err := json.Unmarshal([]byte(r.stdout), &all); r.code != 0 || err != nil || len(all) != 1 || all[0]["tenant"] != "hooli" {
			t.Errorf("list --state=reauthorization_required --json = exit %d %q: %s; want hooli alone", r.code, r.err, r.stdout)
		}
		r = run(t, "", "list", "--state", "active")
		if rows := tableRows(t, r.stdout); r.code != 0 || len(rows) != 3 || rows[1][0] != "acme" || rows[2][0] != "static" {
			t.Errorf("list --state active = exit %d %q:\n%s; want acme and static", r.code, r.err, r.stdout)
		}
	})

	t.Run("refresh", func(t *testing.T) {
		r := run(t, "", "refresh", "acme")
		if st := status(t, r.stdout); r.code != 0 || st["last_refresh"] == nil {
			t.Errorf("refresh acme = exit %d %q: %s; want a status with last_refresh", r.code, r.err, r.stdout)
		}
		if !double.IsRevoked(grant.RefreshToken) {
			t.Errorf("refresh acme did not rotate the grant")
		}
		r = run(t, "", "refresh", "static")
		if r.code != 1 || !strings.HasPrefix(r.err, "not_refreshable: ") || !strings.HasSuffix(r.err, "(409)") {
			t.Errorf("refresh static = exit %d %q; want exit 1 not_refreshable (409)", r.code, r.err)
		}
		r = run(t, "", "refresh", "hooli")
		if r.code != 1 || !strings.HasPrefix(r.err, "reauthorization_required: ") {
			t.Errorf("refresh hooli = exit %d %q; want exit 1 reauthorization_required", r.code, r.err)
		}
	})

	t.Run("check", func(t *testing.T) {
		r := run(t, "", "check", "static")
		if st := status(t, r.stdout); r.code != 0 || st["ok"] != true || st["status"] != 200.0 {
			t.Errorf("check static = exit %d %q: %s; want exit 0 ok", r.code, r.err, r.stdout)
		}
		double.RevokeAccess(pat)
		r = run(t, "", "check", "static")
		if st := status(t, r.stdout); r.code != 1 || st["ok"] != false || st["status"] != 401.0 || !strings.Contains(r.err, "401") || !strings.Contains(r.err, "Unauthenticated.") {
			t.Errorf("check of a revoked token = exit %d %q: %s; want exit 1 with thanks.io's 401", r.code, r.err, r.stdout)
		}
		r = run(t, "", "check", "nobody")
		if r.code != 1 || r.err != "unknown_tenant: No token is held for this tenant. (404)" {
			t.Errorf("check nobody = exit %d %q; want exit 1 unknown_tenant", r.code, r.err)
		}
	})

	t.Run("connect", func(t *testing.T) {
		r := run(t, "", "connect", "globex")
		u, err := url.Parse(strings.TrimSuffix(r.stdout, "\n"))
		if r.code != 0 || err != nil || strings.Count(r.stdout, "\n") != 1 || !strings.HasPrefix(r.stdout, double.AuthorizeURL()+"?") || u.Query().Get("state") == "" {
			t.Errorf("connect globex = exit %d %q: %q; want the authorize URL alone on a line", r.code, r.err, r.stdout)
		}
		r = run(t, "", "connect", "--return-to", "https://app.example/settings/thanksio", "globex")
		if r.code != 0 || !strings.HasPrefix(r.stdout, double.AuthorizeURL()+"?") {
			t.Errorf("connect --return-to (allowed) = exit %d %q: %q; want the authorize URL", r.code, r.err, r.stdout)
		}
		r = run(t, "", "connect", "globex", "--return-to=https://evil.example/")
		if r.code != 1 || !strings.HasPrefix(r.err, "invalid_return_to: ") || !strings.HasSuffix(r.err, "(400)") || r.stdout != "" {
			t.Errorf("connect --return-to (not allowed) = exit %d %q: %q; want exit 1 invalid_return_to (400)", r.code, r.err, r.stdout)
		}
	})

	t.Run("delete", func(t *testing.T) {
		if r := run(t, "", "delete", "acme"); r.code != 0 || r.stdout != "" {
			t.Errorf("delete acme = exit %d %q: %q; want exit 0 and no output", r.code, r.err, r.stdout)
		}
		if r := run(t, "", "show", "acme"); r.code != 1 || !strings.HasPrefix(r.err, "unknown_tenant: ") {
			t.Errorf("show after delete = exit %d %q; want exit 1 unknown_tenant", r.code, r.err)
		}
	})

	t.Run("refused admin token", func(t *testing.T) {
		r := runTenants(t, map[string]string{"ADMIN_TOKEN": "wrong-admin-token-0123456789", "ADMIN_URL": p.ops}, "", "list")
		if r.code != 1 || !strings.HasPrefix(r.err, "unauthorized: ") || !strings.HasSuffix(r.err, "(401)") {
			t.Errorf("list with a wrong admin token = exit %d %q; want exit 1 unauthorized (401)", r.code, r.err)
		}
		shown = append(shown, r.stdout, r.err)
	})

	t.Run("ADMIN_URL from OPS_ADDR", func(t *testing.T) {
		_, port, err := net.SplitHostPort(strings.TrimPrefix(p.ops, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		for _, ops := range []string{":" + port, "0.0.0.0:" + port, "[::]:" + port, "127.0.0.1:" + port} {
			r := runTenants(t, map[string]string{"ADMIN_TOKEN": testAdminToken, "OPS_ADDR": ops}, "", "show", "static")
			if r.code != 0 || !strings.Contains(r.stdout, `"tenant": "static"`) {
				t.Errorf("show static with OPS_ADDR=%s = exit %d %q: %s; want its status", ops, r.code, r.err, r.stdout)
			}
		}
	})

	t.Run("proxy unreachable", func(t *testing.T) {
		r := runTenants(t, map[string]string{"ADMIN_TOKEN": testAdminToken, "ADMIN_URL": "http://" + refusingAddr(t)}, "", "show", "acme")
		if r.code != 1 || !strings.Contains(r.err, "could not be reached") {
			t.Errorf("show with nothing at ADMIN_URL = exit %d %q; want exit 1", r.code, r.err)
		}
		shown = append(shown, r.err)
	})

	for _, s := range shown {
		secretsAbsent(t, "the tenants command's output", s,
			grant.AccessToken, grant.RefreshToken, pat, revoked.AccessToken, revoked.RefreshToken, testAdminToken, "at_\x01control")
	}
}

// TestTenantsCommandTalksOnlyToTheAdminAPI checks list's paging, and that
// the command neither follows a redirect (with the admin token) nor echoes
// what a server that is not the proxy answers.
func TestTenantsCommandTalksOnlyToTheAdminAPI(t *testing.T) {
	const token = "at_echoed-by-a-stranger-0123456789"
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
	}))
	t.Cleanup(other.Close)
	var (
		mu     sync.Mutex
		afters []string
	)
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+testAdminToken {
			t.Errorf("%s %s: Authorization %q; want the admin token", r.Method, r.URL, r.Header.Get("Authorization"))
		}
		pages := map[string]string{
			"":  `{"tenants":["a","b"],"next":"b"}`,
			"b": `{"tenants":["c"],"next":"c"}`,
			"c": `{"tenants":[]}`,
		}
		switch {
		case r.URL.Path == "/base/admin/tenants":
			after := r.URL.Query().Get("after")
			mu.Lock()
			afters = append(afters, after)
			mu.Unlock()
			if r.URL.Query().Get("limit") != "1000" {
				t.Errorf("list asked for limit=%q; want 1000", r.URL.Query().Get("limit"))
			}
			w.Write([]byte(pages[after]))
		case r.URL.Path == "/base/admin/tenants/b":
			// Deleted since the page was read: left out.
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error":"unknown_tenant","message":"No token is held for this tenant."}`))
		case strings.HasPrefix(r.URL.Path, "/base/admin/tenants/") && strings.HasSuffix(r.URL.Path, "/token"):
			w.WriteHeader(http.StatusBadRequest)
			w.Write([]byte(`{"error":"bad_request","message":"What is ` + token + `?"}`))
		case r.URL.Path == "/base/admin/tenants/moved":
			http.Redirect(w, r, other.URL+"/admin/tenants/moved", http.StatusFound)
		case r.URL.Path == "/base/admin/tenants/html":
			w.WriteHeader(http.StatusBadGateway)
			w.Write([]byte("<html>" + token + "</html>"))
		default:
			tenant := strings.TrimPrefix(r.URL.Path, "/base/admin/tenants/")
			w.Write([]byte(`{"tenant":"` + tenant + `","state":"active","expired":false,"has_refresh_token":false}`))
		}
	}))
	t.Cleanup(fake.Close)
	env := map[string]string{"ADMIN_TOKEN": testAdminToken, "ADMIN_URL": fake.URL + "/base/"}

	r := runTenants(t, env, "", "list", "--json")
	var all []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &all); r.code != 0 || err != nil || len(all) != 2 || all[0]["tenant"] != "a" || all[1]["tenant"] != "c" {
		t.Errorf("list over pages = exit %d %q: %s; want a and c", r.code, r.err, r.stdout)
	}
	mu.Lock()
	read := strings.Join(afters, ",")
	mu.Unlock()
	if read != ",b,c" {
		t.Errorf("list read pages after %q; want \"\", b, c", read)
	}

	r = runTenants(t, env, token, "import", "acme")
	if r.code != 1 || !strings.Contains(r.err, "bad_request") || !strings.Contains(r.err, "[redacted]") {
		t.Errorf("import that a server echoes = exit %d %q; want exit 1 with the token redacted", r.code, r.err)
	}
	secretsAbsent(t, "the import's error", r.err, token)
	r = runTenants(t, env, `{"access_token":"`+token+`"}`, "import", "acme")
	secretsAbsent(t, "the JSON import's error", r.err, token)

	r = runTenants(t, env, "", "show", "moved")
	if r.code != 1 || !strings.Contains(r.err, "302") || elsewhere.Load() != 0 {
		t.Errorf("show of a redirect = exit %d %q, %d calls elsewhere; want exit 1 naming 302, and no call elsewhere", r.code, r.err, elsewhere.Load())
	}
	r = runTenants(t, env, "", "show", "html")
	if r.code != 1 || !strings.Contains(r.err, "502") {
		t.Errorf("show of an HTML answer = exit %d %q; want exit 1 naming 502", r.code, r.err)
	}
	secretsAbsent(t, "the error of an HTML answer", r.err, token)
}
