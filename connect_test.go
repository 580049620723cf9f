package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"thanksio-proxy/internal/thanksiotest"
)

// app is the application an account owner's browser returns to.
type app struct {
	srv  *httptest.Server
	mu   sync.Mutex
	hits []url.Values
}

func newApp(t *testing.T) *app {
	a := &app{}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.hits = append(a.hits, r.URL.Query())
		a.mu.Unlock()
		_, _ = w.Write([]byte("app page"))
	}))
	t.Cleanup(a.srv.Close)
	return a
}

// front stands where a deployment's public OAUTH_REDIRECT_URL points (a load
// balancer, say) and forwards to one proxy. A test needs it because the
// redirect URL is configuration, known before the proxy starts, while the
// proxy's own port is picked by the kernel when it starts.
type front struct {
	url   string // base URL, without a trailing slash
	proxy atomic.Pointer[httputil.ReverseProxy]
}

func newFront(t *testing.T) *front {
	t.Helper()
	f := &front{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rp := f.proxy.Load()
		if rp == nil {
			http.Error(w, "front: no proxy behind it yet", http.StatusBadGateway)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

// callbackURL returns the OAUTH_REDIRECT_URL that reaches the proxy behind f.
func (f *front) callbackURL() string { return f.url + "/oauth/callback" }

// forwardTo sends the requests f receives from now on to in's data plane.
func (f *front) forwardTo(t *testing.T, in *instance) {
	t.Helper()
	u, err := url.Parse(in.data)
	if err != nil {
		t.Fatal(err)
	}
	f.proxy.Store(httputil.NewSingleHostReverseProxy(u))
}

// connectFlow is what an OAuth connect flow needs besides the proxies: a
// thanks.io double that requires PKCE, the application that connects
// tenants, the front that OAUTH_REDIRECT_URL points to, and the
// environment of the proxies that take part (on a fresh Redis prefix).
type connectFlow struct {
	double *thanksiotest.Server
	app    *app
	front  *front
	env    map[string]string
}

func newConnectFlow(t *testing.T) *connectFlow {
	t.Helper()
	double := thanksiotest.NewServer(t, thanksiotest.Options{RequirePKCE: true})
	a := newApp(t)
	env := redisEnv(t)
	f := newFront(t)
	double.AddRedirectURL(f.callbackURL())
	env["OAUTH_REDIRECT_URL"] = f.callbackURL()
	env["OAUTH_RETURN_URLS"] = a.srv.URL + "/settings"
	return &connectFlow{double: double, app: a, front: f, env: env}
}

// connectSetup is two proxy instances sharing one Redis, the second answering
// the OAuth callback, and the application that connects tenants.
type connectSetup struct {
	*connectFlow
	one, two *instance
}

func newConnectSetup(t *testing.T) *connectSetup {
	t.Helper()
	flow := newConnectFlow(t)
	flow.env["OAUTH_SCOPES"] = "read write"
	one := start(t, flow.double, flow.env)
	two := start(t, flow.double, flow.env)
	flow.front.forwardTo(t, two)
	return &connectSetup{connectFlow: flow, one: one, two: two}
}

// connect asks instance one for an authorize URL.
func (s *connectSetup) connect(t *testing.T, tenant, returnTo string) (int, string) {
	t.Helper()
	return s.one.connect(t, tenant, returnTo)
}

// connect asks in for an authorize URL for tenant, and returns the status
// and the URL (or the body of an answer other than 200).
func (in *instance) connect(t *testing.T, tenant, returnTo string) (int, string) {
	t.Helper()
	body := "{}"
	if returnTo != "" {
		b, _ := json.Marshal(map[string]string{"return_to": returnTo})
		body = string(b)
	}
	code, resp := in.admin(t, http.MethodPost, "/admin/tenants/"+tenant+"/connect", body)
	if code != http.StatusOK {
		return code, resp
	}
	var out struct {
		AuthorizeURL string `json:"authorize_url"`
	}
	if err := json.Unmarshal([]byte(resp), &out); err != nil || out.AuthorizeURL == "" {
		t.Fatalf("connect answer %s has no authorize_url", resp)
	}
	return code, out.AuthorizeURL
}

// approve follows the authorize URL to the double and returns the callback
// URL it redirects the browser to, without following it.
func approve(t *testing.T, authorizeURL string) string {
	t.Helper()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Get(authorizeURL)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusFound {
		t.Fatalf("authorize answered %d; want 302", res.StatusCode)
	}
	return res.Header.Get("Location")
}

// browse gets u like a browser that follows redirects, and returns the final
// URL, status and body.
func browse(t *testing.T, u string) (*url.URL, int, string) {
	t.Helper()
	res, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.Request.URL, res.StatusCode, string(b)
}

func TestConnectEndToEndAcrossReplicas(t *testing.T) {
	s := newConnectSetup(t)
	code, authorizeURL := s.connect(t, "acme", s.app.srv.URL+"/settings/thanksio?tab=1")
	if code != http.StatusOK {
		t.Fatalf("connect: %d %s", code, authorizeURL)
	}
	u, _ := url.Parse(authorizeURL)
	q := u.Query()
	for _, k := range []string{"response_type", "client_id", "redirect_uri", "state", "code_challenge", "code_challenge_method", "scope"} {
		if q.Get(k) == "" {
			t.Errorf("authorize URL lacks %s", k)
		}
	}
	if q.Get("code_challenge_method") != "S256" || q.Get("scope") != "read write" || len(q.Get("state")) < 22 {
		t.Errorf("authorize URL parameters: method %q, scope %q, state of %d characters", q.Get("code_challenge_method"), q.Get("scope"), len(q.Get("state")))
	}

	// A real browser: the double approves and redirects to instance two's
	// callback, which redirects back to the application.
	final, status, _ := browse(t, authorizeURL)
	if status != http.StatusOK || final.Path != "/settings/thanksio" || final.Query().Get("connected") != "acme" || final.Query().Get("tab") != "1" {
		t.Fatalf("browser ended at %s (%d); want the return_to with connected=acme", final, status)
	}
	if n := s.double.CodeExchanges(); n != 1 {
		t.Errorf("code exchanges = %d; want 1", n)
	}

	// Instance one proxies with the token the double issued.
	code, _, body := s.one.call(t, "acme", "/ping")
	if code != http.StatusOK {
		t.Fatalf("call after connect: %d %s", code, body)
	}
	reqs := s.double.APIRequests()
	if last := reqs[len(reqs)-1]; !last.Authorized || !strings.HasPrefix(last.Token, thanksiotest.AccessTokenPrefix) {
		t.Errorf("upstream did not get a token issued by the code exchange")
	}
	if status := mustStatus(t, s.one, "acme"); !strings.Contains(status, `"has_refresh_token":true`) {
		t.Errorf("status after connect: %s", status)
	}
	for _, in := range []*instance{s.one, s.two} {
		if logs := in.logs.String(); strings.Contains(logs, q.Get("state")) || strings.Contains(logs, "ac_") {
			t.Errorf("logs hold the state or the code")
		}
	}
}

func TestConnectFailuresChangeNothing(t *testing.T) {
	s := newConnectSetup(t)
	returnTo := s.app.srv.URL + "/settings/thanksio"

	unchanged := func(t *testing.T) {
		t.Helper()
		if code, body := s.one.admin(t, http.MethodGet, "/admin/tenants/acme", ""); code != http.StatusNotFound {
			t.Errorf("tenant after a failed connect: %d %s; want 404 (nothing stored)", code, body)
		}
	}

	t.Run("return_to outside the allow-list", func(t *testing.T) {
		host := strings.TrimPrefix(s.app.srv.URL, "http://")
		for _, rt := range []string{
			"https://evil.example/settings",
			"https://" + host + "/settings",
			"http://" + host + "/settingsx",
			"http://" + host + "/other",
			"http://" + host + "/settings/../admin",
			"http://user:pw@" + host + "/settings",
			"http://" + strings.Replace(host, "127.0.0.1", "localhost", 1) + "/settings",
			"//" + host + "/settings",
			"javascript:alert(1)",
		} {
			code, body := s.connect(t, "acme", rt)
			if code != http.StatusBadRequest || !strings.Contains(body, "invalid_return_to") {
				t.Errorf("connect with return_to %q: %d %s; want 400 invalid_return_to", rt, code, body)
			}
		}
		unchanged(t)
	})

	t.Run("forged state", func(t *testing.T) {
		_, status, body := browse(t, s.two.data+"/oauth/callback?state=forged&code=ac_x")
		if status != http.StatusBadRequest || !strings.Contains(body, "expired or was already used") {
			t.Errorf("forged state: %d %s; want 400 saying the link expired or was used", status, body)
		}
		if n := s.double.CodeExchanges(); n != 0 {
			t.Errorf("code exchanges = %d; want 0", n)
		}
		unchanged(t)
	})

	t.Run("access denied", func(t *testing.T) {
		s.double.SetAuthorizeDecision(true)
		defer s.double.SetAuthorizeDecision(false)
		_, authorizeURL := s.connect(t, "acme", returnTo)
		final, _, _ := browse(t, authorizeURL)
		if final.Query().Get("error") != "access_denied" || final.Query().Get("connected") != "" {
			t.Errorf("denied: browser ended at %s; want error=access_denied", final)
		}
		unchanged(t)
	})

	// rejected follows the callback cb with its code replaced by code, and
	// fails the test unless the code is rejected and nothing changes.
	rejected := func(t *testing.T, what string, cb *url.URL, code string) {
		t.Helper()
		q := cb.Query()
		q.Set("code", code)
		cb.RawQuery = q.Encode()
		final, _, _ := browse(t, cb.String())
		if final.Query().Get("error") != "code_rejected" {
			t.Errorf("%s: browser ended at %s; want error=code_rejected", what, final)
		}
		unchanged(t)
	}

	t.Run("refused code", func(t *testing.T) {
		_, authorizeURL := s.connect(t, "acme", returnTo)
		cb, _ := url.Parse(approve(t, authorizeURL))
		rejected(t, "tampered code", cb, cb.Query().Get("code")+"x")
	})

	t.Run("mismatched PKCE verifier", func(t *testing.T) {
		// The code of one flow with the state (and so the verifier) of another.
		_, first := s.connect(t, "acme", returnTo)
		_, second := s.connect(t, "acme", returnTo)
		cb1, _ := url.Parse(approve(t, first))
		cb2, _ := url.Parse(approve(t, second))
		rejected(t, "wrong verifier", cb2, cb1.Query().Get("code"))
	})

	t.Run("replayed callback", func(t *testing.T) {
		_, authorizeURL := s.connect(t, "acme", returnTo)
		cb := approve(t, authorizeURL)
		if final, _, _ := browse(t, cb); final.Query().Get("connected") != "acme" {
			t.Fatalf("first callback ended at %s; want connected=acme", final)
		}
		before := mustStatus(t, s.one, "acme")
		exchanges := s.double.CodeExchanges()
		_, status, body := browse(t, cb)
		if status != http.StatusBadRequest || !strings.Contains(body, "already used") {
			t.Errorf("replayed callback: %d %s; want 400 saying the link was used", status, body)
		}
		if s.double.CodeExchanges() != exchanges {
			t.Errorf("a replayed callback reached the token endpoint")
		}
		if after := mustStatus(t, s.one, "acme"); after != before {
			t.Errorf("a replayed callback changed the tenant: %s -> %s", before, after)
		}
	})

	t.Run("no return_to answers a page", func(t *testing.T) {
		_, authorizeURL := s.connect(t, "globex", "")
		final, status, body := browse(t, authorizeURL)
		if final.Path != "/oauth/callback" || status != http.StatusOK || !strings.Contains(body, "connected for globex") {
			t.Errorf("without return_to: %s %d %s; want the callback's page", final, status, body)
		}
		if strings.Contains(body, "at_") || strings.Contains(body, "rt_") || strings.Contains(body, thanksiotest.DefaultClientSecret) {
			t.Errorf("the page shows a token or the client secret")
		}
	})
}

func TestConnectWithoutOAuthClient(t *testing.T) {
	p := start(t, nil, nil)
	code, body := p.admin(t, http.MethodPost, "/admin/tenants/acme/connect", `{}`)
	if code != http.StatusConflict || !strings.Contains(body, "not_configured") {
		t.Errorf("connect without an OAuth client: %d %s; want 409 not_configured", code, body)
	}
}
