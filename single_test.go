package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/redis/go-redis/v9"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
)

// lastToken returns the token of the last call that reached double.
func lastToken(t *testing.T, double *thanksiotest.Server) string {
	t.Helper()
	reqs := double.APIRequests()
	if len(reqs) == 0 {
		t.Fatal("no call reached thanks.io")
	}
	return reqs[len(reqs)-1].Token
}

func TestSingleAccountToken(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	token := double.NewPersonalAccessToken()
	env := redisEnv(t)
	env["THANKSIO_TOKEN"] = token
	env["ADMIN_TOKEN"] = ""
	p := start(t, double, env)

	// No tenant header: the default tenant, with the token.
	if code, _, body := do(t, http.MethodGet, p.data+"/ping", nil, ""); code != http.StatusOK {
		t.Fatalf("a call without a tenant header: %d %s", code, body)
	}
	if got := lastToken(t, double); got != token {
		t.Errorf("thanks.io got another token than THANKSIO_TOKEN's")
	}
	if code, _, _ := do(t, http.MethodGet, p.data+"/ping", map[string]string{"X-Tenant-ID": "default"}, ""); code != http.StatusOK {
		t.Errorf("a call naming the default tenant: %d; want 200", code)
	}
	// Another tenant is handled as always: it has no token.
	code, header, _ := do(t, http.MethodGet, p.data+"/ping", map[string]string{"X-Tenant-ID": "acme"}, "")
	if code != http.StatusUnauthorized || header.Get("X-Thanksio-Proxy-Error") != "unknown_tenant" {
		t.Errorf("a call naming another tenant: %d %s; want 401 unknown_tenant", code, header.Get("X-Thanksio-Proxy-Error"))
	}
	// Never written to Redis.
	opt, _ := redis.ParseURL(env["REDIS_URL"])
	client := redis.NewClient(opt)
	defer client.Close()
	keys, err := client.Keys(context.Background(), env["REDIS_KEY_PREFIX"]+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if strings.Contains(k, "{default}:token") {
			t.Errorf("the static token's tenant has a record in Redis: %s", k)
		}
	}

	// A token thanks.io refuses: its 401 reaches the caller, and one log
	// line says so, however many calls fail.
	double.RevokeAccess(token)
	for range 3 {
		code, header, body := do(t, http.MethodGet, p.data+"/ping", nil, "")
		if code != http.StatusUnauthorized || header.Get("X-Thanksio-Proxy-Error") != "" {
			t.Errorf("a call with a refused static token: %d %s; want thanks.io's 401", code, body)
		}
	}
	if n := strings.Count(p.logs.String(), "thanks.io refused the static token"); n != 1 {
		t.Errorf("the refusal was logged %d times; want once", n)
	}
	secretsAbsent(t, "the logs", p.logs.String(), token)
}

func TestSingleAccountTokenFile(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	first, second := double.NewPersonalAccessToken(), double.NewPersonalAccessToken()
	// As a Kubernetes Secret mounts it: the file is a symlink into a
	// directory that an update replaces.
	file, writeSecret := mountedSecret(t, "token")
	writeSecret("v1", "  "+first+"\n")
	// The test polls with calls: more than its turns in a minute.
	p := start(t, double, map[string]string{"THANKSIO_TOKEN_FILE": file, "DEFAULT_TENANT": "main", "RATE_LIMIT": "off"})

	if code, _, body := do(t, http.MethodGet, p.data+"/ping", nil, ""); code != http.StatusOK || lastToken(t, double) != first {
		t.Fatalf("a call with the file's token: %d %s; want 200 with the token, its white space trimmed", code, body)
	}
	if code, _, _ := do(t, http.MethodGet, p.data+"/ping", map[string]string{"X-Tenant-ID": "main"}, ""); code != http.StatusOK {
		t.Errorf("a call naming DEFAULT_TENANT: %d; want 200", code)
	}

	writeSecret("v2", second+"\n")
	double.RevokeAccess(first)
	testutil.Eventually(t, "calls use the file's new token", func() bool {
		code, _, _ := do(t, http.MethodGet, p.data+"/ping", nil, "")
		return code == http.StatusOK && lastToken(t, double) == second
	})
	// A file that stops holding a token leaves the last one in force.
	writeSecret("v3", "\n")
	waitForLog(t, p, "THANKSIO_TOKEN_FILE changed but holds no token")
	if code, _, _ := do(t, http.MethodGet, p.data+"/ping", nil, ""); code != http.StatusOK || lastToken(t, double) != second {
		t.Errorf("after the file was emptied: %d; want 200 with the previous token", code)
	}
	secretsAbsent(t, "the logs", p.logs.String(), first, second)
}

func TestSingleAccountRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	spaced := filepath.Join(dir, "two")
	if err := os.WriteFile(spaced, []byte("secret-one secret-two"), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"missing file", map[string]string{"THANKSIO_TOKEN_FILE": filepath.Join(dir, "nope")}, "THANKSIO_TOKEN_FILE"},
		{"a FIFO, which would block the start", map[string]string{"THANKSIO_TOKEN_FILE": fifo}, "THANKSIO_TOKEN_FILE"},
		{"a directory", map[string]string{"THANKSIO_TOKEN_FILE": dir}, "THANKSIO_TOKEN_FILE"},
		{"empty file", map[string]string{"THANKSIO_TOKEN_FILE": empty}, "THANKSIO_TOKEN_FILE"},
		{"two tokens", map[string]string{"THANKSIO_TOKEN_FILE": spaced}, "THANKSIO_TOKEN_FILE"},
		{"both set", map[string]string{"THANKSIO_TOKEN": "secret-one", "THANKSIO_TOKEN_FILE": empty}, "THANKSIO_TOKEN_FILE"},
		{"a token with a space", map[string]string{"THANKSIO_TOKEN": "secret-one secret-two"}, "THANKSIO_TOKEN"},
		{"bad default tenant", map[string]string{"THANKSIO_TOKEN": "secret-one", "DEFAULT_TENANT": "a/b"}, "DEFAULT_TENANT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadConfig(func(k string) string { return tc.env[k] })
			if err == nil || !strings.HasPrefix(err.Error(), "config: "+tc.want+": ") || strings.Contains(err.Error(), "\n") {
				t.Fatalf("loadConfig = %v; want one line naming %s", err, tc.want)
			}
			secretsAbsent(t, "the error", err.Error(), "secret-one", "secret-two")
		})
	}
}

func TestDefaultTenantWithoutToken(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	env := redisEnv(t)
	env["DEFAULT_TENANT"] = "acme"
	p := start(t, double, env)
	grant := double.NewGrant()
	p.importToken(t, "acme", grant, 3600)
	if code, _, body := do(t, http.MethodGet, p.data+"/ping", nil, ""); code != http.StatusOK || lastToken(t, double) != grant.AccessToken {
		t.Errorf("a call without a tenant header, DEFAULT_TENANT=acme: %d %s; want 200 with acme's token", code, body)
	}
}
