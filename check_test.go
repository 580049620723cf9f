package main

import (
	"encoding/json"
	"net/http"
	"testing"

	"thanksio-proxy/internal/thanksiotest"
)

func TestAdminCheckCallsThanksioPing(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	p := start(t, double, map[string]string{"RATE_LIMIT": "2/1m", "RATE_LIMIT_MAX_WAIT": "1s"})
	token := double.NewPersonalAccessToken()
	if code, b := p.admin(t, http.MethodPut, "/admin/tenants/acme/token", `{"access_token":"`+token+`"}`); code != http.StatusOK {
		t.Fatalf("import: %d %s", code, b)
	}
	check := func(tenant string) (int, map[string]any, string) {
		t.Helper()
		code, body := p.admin(t, http.MethodPost, "/admin/tenants/"+tenant+"/check", "")
		var answer map[string]any
		_ = json.Unmarshal([]byte(body), &answer)
		secretsAbsent(t, "the check's answer", body, token)
		return code, answer, body
	}

	if code, a, body := check("acme"); code != http.StatusOK || a["ok"] != true || a["status"] != 200.0 {
		t.Errorf("check of a good token: %d %s; want 200 {\"ok\":true,\"status\":200}", code, body)
	}
	pings := 0
	for _, r := range double.APIRequests() {
		if r.Path == "/api/v2/ping" && r.Token == token {
			pings++
		}
	}
	if pings != 1 {
		t.Errorf("thanks.io got %d pings with the tenant's token; want 1", pings)
	}

	double.RevokeAccess(token)
	if code, a, body := check("acme"); code != http.StatusOK || a["ok"] != false || a["status"] != 401.0 || a["message"] != "Unauthenticated." {
		t.Errorf("check of a revoked token: %d %s; want 200 {\"ok\":false,\"status\":401,\"message\":\"Unauthenticated.\"}", code, body)
	}
	// The check's calls count under the tenant's rate limit (2 a minute):
	// a third is refused by the proxy, without reaching thanks.io.
	if code, a, body := check("acme"); code != http.StatusOK || a["ok"] != false || a["status"] != 429.0 || a["error"] != "rate_limited" {
		t.Errorf("check past the rate limit: %d %s; want 200 with ok false, status 429, error rate_limited", code, body)
	}
	if code, _, body := check("nobody"); code != http.StatusNotFound {
		t.Errorf("check of an unknown tenant: %d %s; want 404", code, body)
	}
	if code, _, body := check("bad%20id"); code != http.StatusBadRequest {
		t.Errorf("check of an invalid tenant id: %d %s; want 400", code, body)
	}
	secretsAbsent(t, "the logs", p.logs.String(), token)
}
