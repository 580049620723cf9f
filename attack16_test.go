package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"thanksio-proxy/internal/thanksiotest"
)

// jwtLike is the shape of a thanks.io personal access token: a JWT, far
// longer than a tenant id may be.
var jwtLike = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + strings.Repeat("eyJhdWQiOiIxIiwianRpIjoi", 8) + ".c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"

// With THANKSIO_TOKEN, the admin API accepts a token for DEFAULT_TENANT
// (200, and a tenant.connected event), but the proxy never serves it: the
// static token shadows it. An operator who imports (or OAuth-connects) the
// default tenant to replace the token sees success and nothing changes;
// one who deletes it sees 204 and calls go on.
func TestAttack16ImportForTheStaticTenantIsNeverServed(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	static := double.NewPersonalAccessToken()
	env := redisEnv(t)
	env["THANKSIO_TOKEN"] = static
	p := start(t, double, env)

	g := double.NewGrant()
	body, _ := json.Marshal(map[string]any{"access_token": g.AccessToken, "refresh_token": g.RefreshToken, "expires_in": 3600})
	code, answer := p.admin(t, http.MethodPut, "/admin/tenants/default/token", string(body))
	secretsAbsent(t, "the admin answer", answer, static, g.AccessToken, g.RefreshToken)
	if code/100 != 2 {
		return // refused: what an operator can act on
	}
	if code, _, b := do(t, http.MethodGet, p.data+"/ping", nil, ""); code != http.StatusOK {
		t.Fatalf("a call for the default tenant: %d %s", code, b)
	}
	if got := lastToken(t, double); got != g.AccessToken {
		t.Errorf("the admin API answered %d to importing a token for DEFAULT_TENANT, but calls carry THANKSIO_TOKEN's token, not the imported one (%s)", code, answer)
	}
	if code, _ := p.admin(t, http.MethodDelete, "/admin/tenants/default", ""); code/100 == 2 {
		if code, _, _ := do(t, http.MethodGet, p.data+"/ping", nil, ""); code == http.StatusOK {
			t.Errorf("DELETE /admin/tenants/default answered success, yet the default tenant's calls still carry a token")
		}
	}
}

// "tenants import $TOKEN" (the mistake the command guards against) prints
// the token back in its usage error, to the terminal and to whatever
// collects the job's output.
func TestAttack16TenantsUsageErrorEchoesATokenGivenAsArgument(t *testing.T) {
	env := map[string]string{"ADMIN_TOKEN": testAdminToken, "ADMIN_URL": "http://127.0.0.1:1"}
	for _, args := range [][]string{
		{"import", jwtLike},
		{"show", jwtLike},
		{"check", jwtLike},
	} {
		var out strings.Builder
		err := tenantsCommand(t.Context(), args, func(k string) string { return env[k] }, strings.NewReader(""), &out)
		if err == nil {
			t.Fatalf("tenants %s <token> succeeded", args[0])
		}
		secretsAbsent(t, "the error of tenants "+args[0]+" <token>", err.Error()+out.String(), jwtLike)
	}
}

// THANKSIO_TOKEN_FILE given the token itself (a one-letter slip from
// THANKSIO_TOKEN): the start's one error line holds the token.
func TestAttack16TokenFileSetToTheTokenIsNotEchoed(t *testing.T) {
	env := map[string]string{"THANKSIO_TOKEN_FILE": jwtLike}
	err := run(t.Context(), nil, func(k string) string { return env[k] }, nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "THANKSIO_TOKEN_FILE") {
		t.Fatalf("start = %v; want an error naming THANKSIO_TOKEN_FILE", err)
	}
	secretsAbsent(t, "the start's error", err.Error(), jwtLike)
}
