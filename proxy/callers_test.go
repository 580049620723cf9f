package proxy_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/proxy"
)

func TestParseCallerKeys(t *testing.T) {
	h := proxy.HashCallerKey("k1")
	tests := []struct {
		name, file, wantErr string
	}{
		{"ok", "# comment\n\nbilling " + h + " acme eu-*\n", ""},
		{"no tenants", "billing " + h + "\n", "line 1"},
		{"plain key", "billing k1 acme\n", "sha256"},
		{"short hash", "billing sha256:abcd acme\n", "sha256"},
		{"bad pattern", "billing " + h + " ac/me\n", "not a tenant id"},
		{"duplicate name", "a " + h + " x\na " + proxy.HashCallerKey("k2") + " y\n", "twice"},
		{"duplicate key", "a " + h + " x\nb " + h + " y\n", "same key"},
		{"empty", "# nothing\n", "no caller"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := proxy.ParseCallerKeys(strings.NewReader(tt.file))
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("ParseCallerKeys = %v; want error containing %q", err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "k1") {
				t.Errorf("error %q shows a key", err)
			}
		})
	}
}

// newCallers is the callers of a caller-keys file with the lines given,
// each "name key pattern...", the key in clear (newCallers hashes it).
func newCallers(t *testing.T, lines ...string) *proxy.Callers {
	t.Helper()
	var file strings.Builder
	for _, line := range lines {
		name, rest, _ := strings.Cut(line, " ")
		key, patterns, _ := strings.Cut(rest, " ")
		fmt.Fprintf(&file, "%s %s %s\n", name, proxy.HashCallerKey(key), patterns)
	}
	keys, err := proxy.ParseCallerKeys(strings.NewReader(file.String()))
	if err != nil {
		t.Fatal(err)
	}
	return proxy.NewCallers(keys)
}

func TestCallerAuthentication(t *testing.T) {
	upstream, got := newUpstream(t, nil)
	tokens := staticTokens(map[string]string{"acme": "tok-acme", "globex": "tok-globex", "eu-fr-prod": "tok-fr"})
	callers := newCallers(t, "billing billing-key acme eu-*-prod", "ops ops-key *")
	h, err := proxy.New(proxy.Config{Tokens: tokens, Upstream: upstream, Callers: callers})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, h)

	tests := []struct {
		name   string
		keys   []string
		tenant string
		status int
		code   string
	}{
		{"no key", nil, "acme", 401, "invalid_caller"},
		{"wrong key", []string{"guess"}, "acme", 401, "invalid_caller"},
		{"two keys", []string{"billing-key", "ops-key"}, "acme", 401, "invalid_caller"},
		{"hash as key", []string{proxy.HashCallerKey("billing-key")}, "acme", 401, "invalid_caller"},
		{"tenant outside allowance", []string{"billing-key"}, "globex", 403, "tenant_not_allowed"},
		{"pattern does not match", []string{"billing-key"}, "eu-fr-test", 403, "tenant_not_allowed"},
		{"allowed", []string{"billing-key"}, "acme", 200, ""},
		{"allowed by pattern", []string{"billing-key"}, "eu-fr-prod", 200, ""},
		{"wildcard", []string{"ops-key"}, "globex", 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := got.count()
			req := newRequest(t, http.MethodGet, srv.URL+"/ping", nil, tt.tenant)
			for _, k := range tt.keys {
				req.Header.Add("X-Caller-Key", k)
			}
			res, body := testutil.Do(t, nil, req)
			if res.StatusCode != tt.status {
				t.Errorf("status = %d; want %d", res.StatusCode, tt.status)
			}
			if tt.code != "" {
				if code, _ := proxyError(t, res, body); code != tt.code {
					t.Errorf("code = %q; want %q", code, tt.code)
				}
				if got.count() != before {
					t.Errorf("the upstream was called")
				}
				return
			}
			want := map[string]string{"acme": "tok-acme", "globex": "tok-globex", "eu-fr-prod": "tok-fr"}[tt.tenant]
			if r := got.last(); r.Header.Get("X-Caller-Key") != "" || r.Header.Get("Authorization") != "Bearer "+want {
				t.Errorf("upstream got caller key %q, Authorization %q", r.Header.Get("X-Caller-Key"), r.Header.Get("Authorization"))
			}
		})
	}
}
