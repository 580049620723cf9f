package thanksiotest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"thanksio-proxy/internal/testutil"
)

// testRedirectURL is the redirect URI registered by the tests that need
// one; its own query must survive the redirect.
const testRedirectURL = "https://app.example/oauth/callback?from=test"

// newClock returns a clock for the tests, standing at a fixed time.
func newClock() *testutil.Clock {
	return testutil.NewClock(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
}

// clientContext returns a context that makes golang.org/x/oauth2 use s's
// HTTP client.
func clientContext(ctx context.Context, s *Server) context.Context {
	return context.WithValue(ctx, oauth2.HTTPClient, s.Client())
}

// refresh uses refreshToken once through golang.org/x/oauth2.
func refresh(ctx context.Context, conf *oauth2.Config, refreshToken string) (*oauth2.Token, error) {
	expired := &oauth2.Token{RefreshToken: refreshToken, Expiry: time.Unix(1, 0)}
	return conf.TokenSource(ctx, expired).Token()
}

// errorCode returns the OAuth error code of a *oauth2.RetrieveError, or ""
// for any other error.
func errorCode(err error) string {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return re.ErrorCode
	}
	return ""
}

// waitContext returns a context that bounds a wait for an event.
func waitContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// decodeStrings decodes a JSON object whose values are all strings.
func decodeStrings(t *testing.T, body []byte) map[string]string {
	t.Helper()
	var m map[string]string
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("decoding %s: %v", body, err)
	}
	return m
}

// tokenForm returns a form authenticated with the default client.
func tokenForm(kv ...string) url.Values {
	v := url.Values{"client_id": {DefaultClientID}, "client_secret": {DefaultClientSecret}}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return v
}

// newFormRequest returns a POST of form to the token endpoint.
func newFormRequest(t *testing.T, s *Server, form url.Values) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.TokenURL(), strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return req
}

// apiGet sends GET path (relative to the API base) with token as bearer
// ("" sends none).
func apiGet(t *testing.T, s *Server, path, token string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.APIURL()+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return testutil.Do(t, s.Client(), req)
}

func TestRefreshRotatesAndRevokesOldPair(t *testing.T) {
	s := NewServer(t, Options{})
	old := s.NewGrant()
	conf := s.OAuthConfig("")

	got, err := refresh(clientContext(t.Context(), s), conf, old.RefreshToken)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if !strings.HasPrefix(got.AccessToken, AccessTokenPrefix) || !strings.HasPrefix(got.RefreshToken, RefreshTokenPrefix) {
		t.Errorf("refresh = %q, %q; want prefixes %q, %q", got.AccessToken, got.RefreshToken, AccessTokenPrefix, RefreshTokenPrefix)
	}
	if got.AccessToken == old.AccessToken || got.RefreshToken == old.RefreshToken {
		t.Errorf("refresh returned the old access or refresh token; want a new pair")
	}
	if got.TokenType != "Bearer" {
		t.Errorf("TokenType = %q; want Bearer", got.TokenType)
	}
	if got.ExpiresIn != 3600 {
		t.Errorf("ExpiresIn = %d; want 3600", got.ExpiresIn)
	}

	checks := []struct {
		name string
		got  bool
		want bool
	}{
		{"AccessValid(old access)", s.AccessValid(old.AccessToken), false},
		{"IsRevoked(old refresh)", s.IsRevoked(old.RefreshToken), true},
		{"AccessValid(new access)", s.AccessValid(got.AccessToken), true},
		{"IsRevoked(new refresh)", s.IsRevoked(got.RefreshToken), false},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v; want %v", c.name, c.got, c.want)
		}
	}
	if resp, _ := apiGet(t, s, "/ping", old.AccessToken); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /ping with the old access token: status %d; want 401", resp.StatusCode)
	}
	if resp, _ := apiGet(t, s, "/ping", got.AccessToken); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /ping with the new access token: status %d; want 200", resp.StatusCode)
	}

	if n := s.RefreshCalls(); n != 1 {
		t.Errorf("RefreshCalls() = %d; want 1", n)
	}
	reqs := s.TokenRequests()
	if len(reqs) != 1 {
		t.Fatalf("TokenRequests() has %d entries; want 1", len(reqs))
	}
	if r := reqs[0]; r.GrantType != "refresh_token" || r.BasicAuth || r.Status != http.StatusOK || r.Form.Get("client_secret") != DefaultClientSecret {
		t.Errorf("TokenRequests()[0] = %+v; want a refresh_token grant with client_secret_post answered 200", r)
	}
}

func TestRefreshResponseHeaders(t *testing.T) {
	s := NewServer(t, Options{})
	tok := s.NewGrant()
	resp, body := testutil.Do(t, s.Client(), newFormRequest(t, s, tokenForm("grant_type", "refresh_token", "refresh_token", tok.RefreshToken)))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("refresh: status %d, body %s; want 200", resp.StatusCode, body)
	}
	for k, want := range map[string]string{"Content-Type": "application/json", "Cache-Control": "no-store"} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("header %s = %q; want %q", k, got, want)
		}
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	keys := []string{"access_token", "expires_in", "refresh_token", "token_type"}
	if got := slices.Sorted(maps.Keys(m)); !slices.Equal(got, keys) {
		t.Errorf("response keys = %v; want %v", got, keys)
	}
}

func TestExpiresIn(t *testing.T) {
	tests := []struct {
		name     string
		lifetime time.Duration
		want     int64
	}{
		{"one hour", time.Hour, 3600},
		{"thirty seconds", 30 * time.Second, 30},
		{"fraction rounds down", 1500 * time.Millisecond, 1},
		{"sub-second is at least 1", 200 * time.Millisecond, 1},
		{"negative is at least 1", -time.Minute, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newClock()
			s := NewServer(t, Options{Now: clock.Now})
			s.SetAccessLifetime(tt.lifetime)
			minted := s.NewGrant()
			if minted.ExpiresIn != tt.lifetime || !minted.Expiry.Equal(clock.Now().Add(tt.lifetime)) {
				t.Errorf("NewGrant() = ExpiresIn %v, Expiry %v; want %v, %v", minted.ExpiresIn, minted.Expiry, tt.lifetime, clock.Now().Add(tt.lifetime))
			}
			resp, body := testutil.Do(t, s.Client(), newFormRequest(t, s, tokenForm("grant_type", "refresh_token", "refresh_token", minted.RefreshToken)))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("refresh: status %d, body %s", resp.StatusCode, body)
			}
			var tr tokenResponse
			if err := json.Unmarshal(body, &tr); err != nil {
				t.Fatal(err)
			}
			if tr.ExpiresIn != tt.want {
				t.Errorf("expires_in = %d; want %d", tr.ExpiresIn, tt.want)
			}
			wantValid := tt.lifetime > 0
			if got := s.AccessValid(tr.AccessToken); got != wantValid {
				t.Errorf("AccessValid(new token) = %v; want %v", got, wantValid)
			}
		})
	}
}

func TestAccessTokenExpiresByClock(t *testing.T) {
	clock := newClock()
	s := NewServer(t, Options{Now: clock.Now, AccessLifetime: 30 * time.Second})
	tok := s.NewGrant()
	clock.Advance(29 * time.Second)
	if !s.AccessValid(tok.AccessToken) {
		t.Fatalf("AccessValid after 29s of 30s = false; want true")
	}
	clock.Advance(time.Second)
	if s.AccessValid(tok.AccessToken) {
		t.Fatalf("AccessValid after 30s of 30s = true; want false")
	}
	if s.IsRevoked(tok.RefreshToken) {
		t.Errorf("IsRevoked(refresh) after access expiry = true; want false")
	}
	if _, err := refresh(clientContext(t.Context(), s), s.OAuthConfig(""), tok.RefreshToken); err != nil {
		t.Errorf("refresh after access expiry: %v", err)
	}
}

// reuseModes are the two ways the double can answer a refresh token that
// was rotated away: as Laravel Passport does, refusing only that token, or,
// with StrictReuse, by revoking the whole grant. wantCurrentAlive reports
// whether the grant's current tokens still work afterwards.
var reuseModes = []struct {
	name             string
	strictReuse      bool
	wantCurrentAlive bool
}{
	{"passport", false, true},
	{"strict reuse revokes grant", true, false},
}

func TestRefreshTokenReuse(t *testing.T) {
	for _, tt := range reuseModes {
		t.Run(tt.name, func(t *testing.T) {
			s := NewServer(t, Options{StrictReuse: tt.strictReuse})
			ctx := clientContext(t.Context(), s)
			conf := s.OAuthConfig("")
			first := s.NewGrant()
			current, err := refresh(ctx, conf, first.RefreshToken)
			if err != nil {
				t.Fatalf("first refresh: %v", err)
			}

			_, err = refresh(ctx, conf, first.RefreshToken)
			if code := errorCode(err); code != "invalid_grant" {
				t.Fatalf("reuse of a rotated refresh token: error %v (code %q); want invalid_grant", err, code)
			}
			if got := s.AccessValid(current.AccessToken); got != tt.wantCurrentAlive {
				t.Errorf("AccessValid(current access) = %v; want %v", got, tt.wantCurrentAlive)
			}
			if got := s.IsRevoked(current.RefreshToken); got == tt.wantCurrentAlive {
				t.Errorf("IsRevoked(current refresh) = %v; want %v", got, !tt.wantCurrentAlive)
			}
			_, err = refresh(ctx, conf, current.RefreshToken)
			if alive := err == nil; alive != tt.wantCurrentAlive {
				t.Errorf("refresh with the current refresh token: error %v; want success %v", err, tt.wantCurrentAlive)
			}
			if n := s.RefreshCalls(); n != 3 {
				t.Errorf("RefreshCalls() = %d; want 3", n)
			}
		})
	}
}

func TestInvalidRefreshTokenBody(t *testing.T) {
	variants := []struct {
		name       string
		as401      bool
		wantStatus int
		wantError  string
	}{
		{"invalid_grant", false, http.StatusBadRequest, "invalid_grant"},
		{"passport 401", true, http.StatusUnauthorized, "invalid_request"},
	}
	tokens := []struct {
		name  string
		token func(s *Server) string
	}{
		{"unknown", func(*Server) string { return randomValue(RefreshTokenPrefix) }},
		{"rotated", func(s *Server) string {
			tok := s.NewGrant()
			if _, ok := s.Rotate(tok.RefreshToken); !ok {
				panic("Rotate failed")
			}
			return tok.RefreshToken
		}},
		{"revoked", func(s *Server) string {
			tok := s.NewGrant()
			s.Revoke(tok.RefreshToken)
			return tok.RefreshToken
		}},
		{"an access token", func(s *Server) string { return s.NewGrant().AccessToken }},
	}
	for _, v := range variants {
		for _, tk := range tokens {
			t.Run(v.name+"/"+tk.name, func(t *testing.T) {
				s := NewServer(t, Options{InvalidRefreshAs401: v.as401})
				rt := tk.token(s)
				resp, body := testutil.Do(t, s.Client(), newFormRequest(t, s, tokenForm("grant_type", "refresh_token", "refresh_token", rt)))
				if resp.StatusCode != v.wantStatus {
					t.Errorf("status = %d; want %d", resp.StatusCode, v.wantStatus)
				}
				want := map[string]string{
					"error":             v.wantError,
					"error_description": "The refresh token is invalid.",
					"hint":              "Token has been revoked",
					"message":           "The refresh token is invalid.",
				}
				if got := decodeStrings(t, body); !maps.Equal(got, want) {
					t.Errorf("body = %v; want %v", got, want)
				}
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type = %q; want application/json", ct)
				}
				if strings.Contains(string(body), rt) || strings.Contains(string(body), DefaultClientSecret) {
					t.Errorf("body %s echoes a secret", body)
				}
			})
		}
	}
}

func TestConcurrentRefreshOneWinner(t *testing.T) {
	const clients = 16
	// Every loser presents a rotated-away token: under StrictReuse, the
	// winner's tokens die with the grant.
	for _, tt := range reuseModes {
		t.Run(tt.name, func(t *testing.T) {
			s := NewServer(t, Options{StrictReuse: tt.strictReuse})
			conf := s.OAuthConfig("")
			ctx := clientContext(t.Context(), s)
			rt := s.NewGrant().RefreshToken

			type result struct {
				tok *oauth2.Token
				err error
			}
			start := make(chan struct{})
			results := make(chan result, clients)
			var wg sync.WaitGroup
			for range clients {
				wg.Go(func() {
					<-start
					tok, err := refresh(ctx, conf, rt)
					results <- result{tok, err}
				})
			}
			close(start)
			wg.Wait()
			close(results)

			var winners []*oauth2.Token
			for r := range results {
				if r.err == nil {
					winners = append(winners, r.tok)
					continue
				}
				if code := errorCode(r.err); code != "invalid_grant" {
					t.Errorf("losing refresh: error %v (code %q); want invalid_grant", r.err, code)
				}
			}
			if len(winners) != 1 {
				t.Fatalf("%d refreshes succeeded; want exactly 1", len(winners))
			}
			if n := s.RefreshCalls(); n != clients {
				t.Errorf("RefreshCalls() = %d; want %d", n, clients)
			}
			if got := s.AccessValid(winners[0].AccessToken); got != tt.wantCurrentAlive {
				t.Errorf("AccessValid(winner) = %v; want %v", got, tt.wantCurrentAlive)
			}
		})
	}
}

func TestClientAuthenticationBasic(t *testing.T) {
	s := NewServer(t, Options{})
	conf := s.OAuthConfig("")
	conf.Endpoint.AuthStyle = oauth2.AuthStyleInHeader
	tok := s.NewGrant()
	if _, err := refresh(clientContext(t.Context(), s), conf, tok.RefreshToken); err != nil {
		t.Fatalf("refresh with HTTP Basic: %v", err)
	}
	reqs := s.TokenRequests()
	if len(reqs) != 1 || !reqs[0].BasicAuth || reqs[0].Form.Has("client_secret") {
		t.Errorf("TokenRequests() = %+v; want one request authenticated with HTTP Basic", reqs)
	}
	if n := s.RefreshCalls(); n != 1 {
		t.Errorf("RefreshCalls() = %d; want 1", n)
	}
}

func TestTokenEndpointRefusals(t *testing.T) {
	invalidClient := map[string]string{
		"error":             "invalid_client",
		"error_description": "Client authentication failed",
		"message":           "Client authentication failed",
	}
	// refreshWith returns a refresh_token grant request for rt whose form
	// has the parameters kv (name, value, ...) set besides.
	refreshWith := func(kv ...string) func(t *testing.T, s *Server, rt string) *http.Request {
		return func(t *testing.T, s *Server, rt string) *http.Request {
			return newFormRequest(t, s, tokenForm(append([]string{"grant_type", "refresh_token", "refresh_token", rt}, kv...)...))
		}
	}
	tests := []struct {
		name       string
		request    func(t *testing.T, s *Server, rt string) *http.Request
		wantStatus int
		wantError  string            // checked when wantBody is nil
		wantBody   map[string]string // exact body
	}{
		{name: "wrong secret", request: refreshWith("client_secret", "wrong"), wantStatus: http.StatusUnauthorized, wantBody: invalidClient},
		{name: "unknown client", request: refreshWith("client_id", "other"), wantStatus: http.StatusUnauthorized, wantBody: invalidClient},
		{
			name: "wrong basic secret",
			request: func(t *testing.T, s *Server, rt string) *http.Request {
				req := newFormRequest(t, s, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}})
				req.SetBasicAuth(DefaultClientID, "wrong")
				return req
			},
			wantStatus: http.StatusUnauthorized,
			wantBody:   invalidClient,
		},
		{
			name: "no client",
			request: func(t *testing.T, s *Server, rt string) *http.Request {
				return newFormRequest(t, s, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}})
			},
			wantStatus: http.StatusBadRequest,
			wantError:  "invalid_request",
		},
		{
			name: "two authentication methods",
			request: func(t *testing.T, s *Server, rt string) *http.Request {
				req := newFormRequest(t, s, tokenForm("grant_type", "refresh_token", "refresh_token", rt))
				req.SetBasicAuth(DefaultClientID, DefaultClientSecret)
				return req
			},
			wantStatus: http.StatusBadRequest,
			wantError:  "invalid_request",
		},
		{
			name: "GET",
			request: func(t *testing.T, s *Server, rt string) *http.Request {
				req, err := http.NewRequest(http.MethodGet, s.TokenURL()+"?"+tokenForm("grant_type", "refresh_token", "refresh_token", rt).Encode(), nil)
				if err != nil {
					t.Fatal(err)
				}
				return req
			},
			wantStatus: http.StatusMethodNotAllowed,
		},
		{
			name: "unknown grant type",
			request: func(t *testing.T, s *Server, rt string) *http.Request {
				return newFormRequest(t, s, tokenForm("grant_type", "password", "username", "u", "password", "p"))
			},
			wantStatus: http.StatusBadRequest,
			wantError:  "unsupported_grant_type",
		},
		{
			name: "no grant type",
			request: func(t *testing.T, s *Server, rt string) *http.Request {
				return newFormRequest(t, s, tokenForm("refresh_token", rt))
			},
			wantStatus: http.StatusBadRequest,
			wantError:  "unsupported_grant_type",
		},
		{
			name: "JSON body",
			request: func(t *testing.T, s *Server, rt string) *http.Request {
				req := newFormRequest(t, s, tokenForm("grant_type", "refresh_token", "refresh_token", rt))
				req.Header.Set("Content-Type", "application/json")
				return req
			},
			wantStatus: http.StatusBadRequest,
			wantError:  "invalid_request",
		},
		{
			name: "refresh token in the query",
			request: func(t *testing.T, s *Server, rt string) *http.Request {
				req := newFormRequest(t, s, tokenForm("grant_type", "refresh_token"))
				req.URL.RawQuery = url.Values{"refresh_token": {rt}}.Encode()
				return req
			},
			wantStatus: http.StatusBadRequest,
			wantError:  "invalid_request",
		},
		{
			name: "parameter twice",
			request: func(t *testing.T, s *Server, rt string) *http.Request {
				f := tokenForm("grant_type", "refresh_token", "refresh_token", rt)
				f.Add("refresh_token", rt)
				return newFormRequest(t, s, f)
			},
			wantStatus: http.StatusBadRequest,
			wantError:  "invalid_request",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewServer(t, Options{})
			tok := s.NewGrant()
			resp, body := testutil.Do(t, s.Client(), tt.request(t, s, tok.RefreshToken))
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status = %d (body %s); want %d", resp.StatusCode, body, tt.wantStatus)
			}
			switch {
			case tt.wantBody != nil:
				if got := decodeStrings(t, body); !maps.Equal(got, tt.wantBody) {
					t.Errorf("body = %v; want %v", got, tt.wantBody)
				}
			case tt.wantError != "":
				if got := decodeStrings(t, body)["error"]; got != tt.wantError {
					t.Errorf("error = %q; want %q", got, tt.wantError)
				}
			}
			if s.IsRevoked(tok.RefreshToken) {
				t.Errorf("a refused request rotated the refresh token")
			}
			if n := s.TokenCalls(); n != 1 {
				t.Errorf("TokenCalls() = %d; want 1", n)
			}
		})
	}
}

// authorizeCode runs the authorize endpoint for conf and returns the code,
// failing the test if none is issued.
func authorizeCode(t *testing.T, s *Server, conf *oauth2.Config, opts ...oauth2.AuthCodeOption) string {
	t.Helper()
	loc := authorizeRedirect(t, s, conf.AuthCodeURL("state-1", opts...))
	code := loc.Query().Get("code")
	if code == "" {
		t.Fatalf("authorize redirected to %s; want a code", loc)
	}
	return code
}

// authorizeRedirect GETs authorizeURL and returns the redirect's Location,
// failing the test if the answer is not 302.
func authorizeRedirect(t *testing.T, s *Server, authorizeURL string) *url.URL {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, authorizeURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, body := testutil.Do(t, noRedirectClient(s), req)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("GET %s: status %d, body %s; want 302", authorizeURL, resp.StatusCode, body)
	}
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("GET %s: %v", authorizeURL, err)
	}
	return loc
}

// noRedirectClient returns a client of s that does not follow redirects.
func noRedirectClient(s *Server) *http.Client {
	return &http.Client{
		Transport: s.Client().Transport,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// rightVerifier sends the right PKCE verifier at the code exchange.
func rightVerifier(v string) []oauth2.AuthCodeOption {
	return []oauth2.AuthCodeOption{oauth2.VerifierOption(v)}
}

// otherVerifier sends a well-formed but wrong PKCE verifier.
func otherVerifier(string) []oauth2.AuthCodeOption {
	return []oauth2.AuthCodeOption{oauth2.VerifierOption(oauth2.GenerateVerifier())}
}

// noVerifier sends no PKCE verifier.
func noVerifier(string) []oauth2.AuthCodeOption { return nil }

func TestCodeExchange(t *testing.T) {
	const otherRedirect = "https://app.example/other"
	tests := []struct {
		name string
		// noChallenge authorizes without PKCE.
		noChallenge bool
		// redirect is the redirect_uri of the exchange; "" means the one
		// authorized.
		redirect string
		// verifier returns the exchange's PKCE options, given the right
		// verifier.
		verifier  func(right string) []oauth2.AuthCodeOption
		secret    string
		advance   time.Duration
		wantError string
	}{
		{
			name:     "pkce",
			verifier: rightVerifier,
		},
		{
			name:        "without pkce",
			noChallenge: true,
			verifier:    noVerifier,
		},
		{
			name:      "pkce mismatch",
			verifier:  otherVerifier,
			wantError: "invalid_grant",
		},
		{
			name:      "pkce verifier missing",
			verifier:  noVerifier,
			wantError: "invalid_grant",
		},
		{
			name:        "verifier without challenge",
			noChallenge: true,
			verifier:    otherVerifier,
			wantError:   "invalid_grant",
		},
		{
			name:      "redirect_uri mismatch",
			redirect:  otherRedirect,
			verifier:  rightVerifier,
			wantError: "invalid_grant",
		},
		{
			name:     "just before expiry",
			advance:  CodeLifetime - time.Second,
			verifier: rightVerifier,
		},
		{
			name:      "expired",
			advance:   CodeLifetime,
			verifier:  rightVerifier,
			wantError: "invalid_grant",
		},
		{
			name:      "wrong client secret",
			secret:    "wrong",
			verifier:  rightVerifier,
			wantError: "invalid_client",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newClock()
			// Both URIs are registered: a code is bound to the one it was
			// issued for, not to any registered one.
			s := NewServer(t, Options{RedirectURLs: []string{testRedirectURL, otherRedirect}, Now: clock.Now})
			conf := s.OAuthConfig(testRedirectURL)
			verifier := oauth2.GenerateVerifier()
			var authOpts []oauth2.AuthCodeOption
			if !tt.noChallenge {
				authOpts = append(authOpts, oauth2.S256ChallengeOption(verifier))
			}
			code := authorizeCode(t, s, conf, authOpts...)
			if !strings.HasPrefix(code, CodePrefix) {
				t.Errorf("code %q lacks prefix %q", code, CodePrefix)
			}
			clock.Advance(tt.advance)

			exchange := s.OAuthConfig(testRedirectURL)
			if tt.redirect != "" {
				exchange.RedirectURL = tt.redirect
			}
			if tt.secret != "" {
				exchange.ClientSecret = tt.secret
			}
			tok, err := exchange.Exchange(clientContext(t.Context(), s), code, tt.verifier(verifier)...)
			if n := s.CodeExchanges(); n != 1 {
				t.Errorf("CodeExchanges() = %d; want 1", n)
			}
			if tt.wantError != "" {
				if code := errorCode(err); code != tt.wantError {
					t.Fatalf("Exchange: error %v (code %q); want %q", err, code, tt.wantError)
				}
				return
			}
			if err != nil {
				t.Fatalf("Exchange: %v", err)
			}
			if !s.AccessValid(tok.AccessToken) || s.IsRevoked(tok.RefreshToken) {
				t.Errorf("Exchange returned a pair that is not valid")
			}
		})
	}
}

func TestCodeSingleUse(t *testing.T) {
	s := NewServer(t, Options{RedirectURLs: []string{testRedirectURL}})
	conf := s.OAuthConfig(testRedirectURL)
	ctx := clientContext(t.Context(), s)
	verifier := oauth2.GenerateVerifier()
	code := authorizeCode(t, s, conf, oauth2.S256ChallengeOption(verifier))

	first, err := conf.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatalf("first Exchange: %v", err)
	}
	// Rotate once: the replay must revoke what descends from the code, not
	// only the pair it issued.
	current, err := refresh(ctx, conf, first.RefreshToken)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	_, err = conf.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if code := errorCode(err); code != "invalid_grant" {
		t.Fatalf("second Exchange: error %v (code %q); want invalid_grant", err, code)
	}
	if s.AccessValid(current.AccessToken) || !s.IsRevoked(current.RefreshToken) {
		t.Errorf("after the code was replayed, the grant it issued is still valid; want it revoked")
	}
	if n := s.CodeExchanges(); n != 2 {
		t.Errorf("CodeExchanges() = %d; want 2", n)
	}
}

func TestAuthorize(t *testing.T) {
	challenge := oauth2.S256ChallengeFromVerifier(oauth2.GenerateVerifier())
	valid := func() url.Values {
		return url.Values{
			"response_type":         {"code"},
			"client_id":             {DefaultClientID},
			"redirect_uri":          {testRedirectURL},
			"state":                 {"st-42"},
			"scope":                 {"orders send"},
			"code_challenge":        {challenge},
			"code_challenge_method": {"S256"},
		}
	}
	with := func(k, v string) url.Values {
		q := valid()
		if v == "" {
			q.Del(k)
		} else {
			q.Set(k, v)
		}
		return q
	}
	tests := []struct {
		name       string
		opts       Options
		deny       bool
		method     string
		query      url.Values
		wantStatus int
		wantError  string // the error redirected; "" with 302 means a code
		wantState  bool
	}{
		{name: "approve", query: valid(), wantStatus: http.StatusFound, wantState: true},
		{name: "approve without pkce", query: func() url.Values {
			q := valid()
			q.Del("code_challenge")
			q.Del("code_challenge_method")
			return q
		}(), wantStatus: http.StatusFound, wantState: true},
		{name: "challenge without method", query: with("code_challenge_method", ""), wantStatus: http.StatusFound, wantError: "invalid_request", wantState: true},
		{name: "method without challenge", query: with("code_challenge", ""), wantStatus: http.StatusFound, wantError: "invalid_request", wantState: true},
		{name: "deny", deny: true, query: valid(), wantStatus: http.StatusFound, wantError: "access_denied", wantState: true},
		{name: "unknown client", query: with("client_id", "other"), wantStatus: http.StatusBadRequest},
		{name: "no client", query: with("client_id", ""), wantStatus: http.StatusBadRequest},
		{name: "unregistered redirect", query: with("redirect_uri", "https://evil.example/cb"), wantStatus: http.StatusBadRequest},
		{name: "redirect not exact", query: with("redirect_uri", "https://app.example/oauth/callback?from=test&x=1"), wantStatus: http.StatusBadRequest},
		{name: "no redirect", query: with("redirect_uri", ""), wantStatus: http.StatusBadRequest},
		{name: "plain pkce", query: with("code_challenge_method", "plain"), wantStatus: http.StatusFound, wantError: "invalid_request", wantState: true},
		{name: "bad challenge", query: with("code_challenge", "short"), wantStatus: http.StatusFound, wantError: "invalid_request", wantState: true},
		{name: "no state", query: with("state", ""), wantStatus: http.StatusFound, wantError: "invalid_request"},
		{name: "token response type", query: with("response_type", "token"), wantStatus: http.StatusFound, wantError: "unsupported_response_type", wantState: true},
		{name: "pkce required", opts: Options{RequirePKCE: true}, query: func() url.Values {
			q := valid()
			q.Del("code_challenge")
			q.Del("code_challenge_method")
			return q
		}(), wantStatus: http.StatusFound, wantError: "invalid_request", wantState: true},
		{name: "POST", method: http.MethodPost, query: valid(), wantStatus: http.StatusMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			opts.RedirectURLs = []string{testRedirectURL}
			s := NewServer(t, opts)
			s.SetAuthorizeDecision(tt.deny)
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			req, err := http.NewRequest(method, s.AuthorizeURL()+"?"+tt.query.Encode(), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, body := testutil.Do(t, noRedirectClient(s), req)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d (body %s); want %d", resp.StatusCode, body, tt.wantStatus)
			}
			if got := s.LastAuthorize().Get("scope"); got != tt.query.Get("scope") {
				t.Errorf("LastAuthorize() scope = %q; want %q", got, tt.query.Get("scope"))
			}
			if tt.wantStatus != http.StatusFound {
				if loc := resp.Header.Get("Location"); loc != "" {
					t.Errorf("Location = %q; want none (no redirect on this error)", loc)
				}
				return
			}
			loc, err := resp.Location()
			if err != nil {
				t.Fatal(err)
			}
			if got := loc.Scheme + "://" + loc.Host + loc.Path; got != "https://app.example/oauth/callback" {
				t.Errorf("redirected to %s; want the redirect URI", loc)
			}
			q := loc.Query()
			if q.Get("from") != "test" {
				t.Errorf("redirect query %v lost the redirect URI's own from=test", q)
			}
			if got, want := q.Get("state"), tt.query.Get("state"); tt.wantState && got != want {
				t.Errorf("state = %q; want %q", got, want)
			}
			if got := q.Get("error"); got != tt.wantError {
				t.Errorf("error = %q; want %q", got, tt.wantError)
			}
			if tt.wantError != "" && (q.Has("code") || q.Get("error_description") == "") {
				t.Errorf("error redirect query %v; want error_description and no code", q)
			}
			if tt.wantError == "" && !strings.HasPrefix(q.Get("code"), CodePrefix) {
				t.Errorf("code = %q; want one with prefix %q", q.Get("code"), CodePrefix)
			}
		})
	}
}

func TestAddRedirectURL(t *testing.T) {
	s := NewServer(t, Options{})
	conf := s.OAuthConfig(testRedirectURL)
	req, err := http.NewRequest(http.MethodGet, conf.AuthCodeURL("st"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp, _ := testutil.Do(t, noRedirectClient(s), req); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("authorize before registration: status %d; want 400", resp.StatusCode)
	}
	s.AddRedirectURL(testRedirectURL)
	code := authorizeCode(t, s, conf)
	if _, err := conf.Exchange(clientContext(t.Context(), s), code); err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	if n := s.AuthorizeCalls(); n != 2 {
		t.Errorf("AuthorizeCalls() = %d; want 2", n)
	}
}

func TestAPIAuthentication(t *testing.T) {
	// answer is what the API answers: a status and a JSON body.
	type answer struct {
		status int
		body   map[string]string
	}
	refused := answer{http.StatusUnauthorized, map[string]string{"message": "Unauthenticated."}}
	pong := answer{http.StatusOK, map[string]string{"message": "pong"}}
	// What a case sends: a token of the double's, something done to it
	// before, and the Authorization header values that carry it.
	grant := func(s *Server) Token { return s.NewGrant() }
	pat := func(s *Server) Token { return Token{AccessToken: s.NewPersonalAccessToken()} }
	unknown := func(*Server) Token { return Token{AccessToken: randomValue(AccessTokenPrefix)} }
	expire := func(_ *Server, clock *testutil.Clock, _ Token) { clock.Advance(DefaultAccessLifetime) }
	revokeAccess := func(s *Server, _ *testutil.Clock, tok Token) { s.RevokeAccess(tok.AccessToken) }
	revokeGrant := func(s *Server, _ *testutil.Clock, tok Token) { s.Revoke(tok.RefreshToken) }
	bearer := func(tok Token) []string { return []string{"Bearer " + tok.AccessToken} }
	tests := []struct {
		name string
		opts Options
		// token issues the token to send; nil sends no Authorization header.
		token func(s *Server) Token
		// then, if set, happens to the token before it is sent.
		then func(s *Server, clock *testutil.Clock, tok Token)
		// header returns the Authorization header values; nil means bearer.
		header func(tok Token) []string
		want   answer
	}{
		{name: "no token", want: refused},
		{name: "unknown token", token: unknown, want: refused},
		{name: "refresh token as bearer", token: grant, header: func(tok Token) []string { return []string{"Bearer " + tok.RefreshToken} }, want: refused},
		{name: "basic scheme", token: grant, header: func(tok Token) []string { return []string{"Basic " + tok.AccessToken} }, want: refused},
		{name: "two authorization headers", token: grant, header: func(tok Token) []string { return append(bearer(tok), bearer(tok)...) }, want: refused},
		{name: "expired", token: grant, then: expire, want: refused},
		{name: "access revoked", token: grant, then: revokeAccess, want: refused},
		{name: "grant revoked", token: grant, then: revokeGrant, want: refused},
		{
			name:  "openapi 403",
			opts:  Options{UnauthenticatedAs403: true},
			token: unknown,
			want:  answer{http.StatusForbidden, map[string]string{"message": "Unauthorized"}},
		},
		{name: "valid", token: grant, want: pong},
		{name: "lowercase scheme", token: grant, header: func(tok Token) []string { return []string{"bearer " + tok.AccessToken} }, want: pong},
		{
			name:  "personal access token never expires",
			token: pat,
			then:  func(_ *Server, clock *testutil.Clock, _ Token) { clock.Advance(10 * 365 * 24 * time.Hour) },
			want:  pong,
		},
		{name: "personal access token revoked", token: pat, then: revokeAccess, want: refused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newClock()
			opts := tt.opts
			opts.Now = clock.Now
			s := NewServer(t, opts)
			req, err := http.NewRequest(http.MethodGet, s.APIURL()+"/ping", nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.token != nil {
				tok := tt.token(s)
				if tt.then != nil {
					tt.then(s, clock, tok)
				}
				header := tt.header
				if header == nil {
					header = bearer
				}
				for _, a := range header(tok) {
					req.Header.Add("Authorization", a)
				}
			}
			resp, body := testutil.Do(t, s.Client(), req)
			if resp.StatusCode != tt.want.status {
				t.Errorf("status = %d; want %d", resp.StatusCode, tt.want.status)
			}
			if got := decodeStrings(t, body); !maps.Equal(got, tt.want.body) {
				t.Errorf("body = %v; want %v", got, tt.want.body)
			}
			reqs := s.APIRequests()
			if len(reqs) != 1 {
				t.Fatalf("APIRequests() has %d entries; want 1", len(reqs))
			}
			if got, want := reqs[0].Authorized, tt.want.status == http.StatusOK; got != want {
				t.Errorf("APIRequests()[0].Authorized = %v; want %v", got, want)
			}
		})
	}
}

func TestAPIRecordsAndRoutes(t *testing.T) {
	tests := []struct {
		name string
		// target is the request target as sent, after the server's URL.
		target      string
		method      string
		body        string
		wantStatus  int
		wantBody    string // a substring of the answer
		wantPath    string
		wantRawPath string
	}{
		{name: "default answer", method: http.MethodPost, target: "/api/v2/send/postcard?dry=1", body: `{"x":1}`, wantStatus: http.StatusOK,
			wantBody: `{"ok":true,"method":"POST","path":"/api/v2/send/postcard","query":"dry=1"}`, wantPath: "/api/v2/send/postcard"},
		{name: "ping", method: http.MethodGet, target: "/api/v2/ping", wantStatus: http.StatusOK, wantBody: `{"message":"pong"}`, wantPath: "/api/v2/ping"},
		{name: "handler", method: http.MethodGet, target: "/api/v2/orders/77/track", wantStatus: http.StatusTeapot, wantBody: "track 77 at /api/v2/orders/77/track", wantPath: "/api/v2/orders/77/track"},
		{name: "handler wrong method falls to default", method: http.MethodDelete, target: "/api/v2/orders/77/track", wantStatus: http.StatusOK, wantBody: `"method":"DELETE"`, wantPath: "/api/v2/orders/77/track"},
		{name: "handler reads body", method: http.MethodPost, target: "/api/v2/recipients", body: "hello", wantStatus: http.StatusCreated, wantBody: "got hello", wantPath: "/api/v2/recipients"},
		{name: "encoded slash", method: http.MethodGet, target: "/api/v2/a%2Fb", wantStatus: http.StatusOK, wantPath: "/api/v2/a/b", wantRawPath: "/api/v2/a%2Fb"},
		{name: "outside", method: http.MethodGet, target: "/admin/tenants", wantStatus: http.StatusNotFound, wantPath: "/admin/tenants"},
		{name: "prefix lookalike", method: http.MethodGet, target: "/api/v2x/ping", wantStatus: http.StatusNotFound, wantPath: "/api/v2x/ping"},
		{name: "dot segments", method: http.MethodGet, target: "/api/v2/../secret", wantStatus: http.StatusNotFound, wantPath: "/api/v2/../secret"},
		{name: "encoded dot segments", method: http.MethodGet, target: "/api/v2/%2e%2e/secret", wantStatus: http.StatusNotFound, wantPath: "/api/v2/../secret", wantRawPath: "/api/v2/%2e%2e/secret"},
		{name: "old api version", method: http.MethodGet, target: "/api/v1/ping", wantStatus: http.StatusNotFound, wantPath: "/api/v1/ping"},
	}
	s := NewServer(t, Options{})
	s.HandleAPI("GET /orders/{id}/track", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		io.WriteString(w, "track "+r.PathValue("id")+" at "+r.URL.Path)
	})
	s.HandleAPI("POST /api/v2/recipients", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "got "+string(b))
	})
	at := s.NewGrant().AccessToken
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.ResetAPIRequests()
			req, err := http.NewRequest(tt.method, s.URL()+tt.target, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+at)
			resp, body := testutil.Do(t, s.Client(), req)
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status = %d (body %s); want %d", resp.StatusCode, body, tt.wantStatus)
			}
			if !strings.Contains(string(body), tt.wantBody) {
				t.Errorf("body = %s; want it to contain %s", body, tt.wantBody)
			}
			reqs := s.APIRequests()
			if len(reqs) != 1 {
				t.Fatalf("APIRequests() has %d entries; want 1", len(reqs))
			}
			r := reqs[0]
			if r.Path != tt.wantPath || r.RawPath != tt.wantRawPath || r.RequestURI != tt.target {
				t.Errorf("recorded Path %q, RawPath %q, RequestURI %q; want %q, %q, %q", r.Path, r.RawPath, r.RequestURI, tt.wantPath, tt.wantRawPath, tt.target)
			}
			if r.Method != tt.method || string(r.Body) != tt.body || r.Token != at || !r.Authorized {
				t.Errorf("recorded %+v; want method %s, body %q, the token, authorized", r, tt.method, tt.body)
			}
		})
	}
}

func TestAPIUnauthorizedSkipsHandler(t *testing.T) {
	s := NewServer(t, Options{})
	var (
		mu    sync.Mutex
		calls int
	)
	s.HandleAPI("/", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		mu.Unlock()
		io.WriteString(w, "override")
	})
	if resp, _ := apiGet(t, s, "/ping", "nope"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /ping with a bad token: status %d; want 401", resp.StatusCode)
	}
	if _, body := apiGet(t, s, "/ping", s.NewPersonalAccessToken()); string(body) != "override" {
		t.Errorf("GET /ping with HandleAPI(\"/\"): body %q; want override", body)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls != 1 {
		t.Errorf("handler ran %d times; want 1 (only for the authorized request)", calls)
	}
}

func TestAPIBodyBound(t *testing.T) {
	s := NewServer(t, Options{})
	req, err := http.NewRequest(http.MethodPost, s.APIURL()+"/recipients", strings.NewReader(strings.Repeat("x", MaxAPIBody+1)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.NewPersonalAccessToken())
	resp, _ := testutil.Do(t, s.Client(), req)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("status = %d; want 413", resp.StatusCode)
	}
	reqs := s.APIRequests()
	if len(reqs) != 1 || len(reqs[0].Body) != MaxAPIBody || !reqs[0].BodyTruncated {
		t.Errorf("recorded %d requests; want one with a truncated body of %d bytes", len(reqs), MaxAPIBody)
	}
}

func TestAPIConcurrentRecording(t *testing.T) {
	s := NewServer(t, Options{})
	at := s.NewGrant().AccessToken
	const n = 32
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req, err := http.NewRequest(http.MethodGet, s.APIURL()+"/ping", nil)
			if err != nil {
				t.Error(err)
				return
			}
			req.Header.Set("Authorization", "Bearer "+at)
			resp, err := s.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
		})
	}
	if err := s.WaitAPIRequests(waitContext(t), n); err != nil {
		t.Fatalf("WaitAPIRequests(%d): %v", n, err)
	}
	wg.Wait()
	if got := len(s.APIRequests()); got != n {
		t.Errorf("len(APIRequests()) = %d; want %d", got, n)
	}
	s.ResetAPIRequests()
	if got := len(s.APIRequests()); got != 0 {
		t.Errorf("len(APIRequests()) after reset = %d; want 0", got)
	}
}

func TestTokenFaults(t *testing.T) {
	tests := []struct {
		name  string
		fault TokenFault
		// wantStatus is the status of a *oauth2.RetrieveError; 0 means a
		// transport error (no answer).
		wantStatus  int
		wantRotated bool
		// wantNext reports whether the next refresh succeeds.
		wantNext bool
	}{
		{name: "status", fault: TokenFault{Status: http.StatusServiceUnavailable}, wantStatus: http.StatusServiceUnavailable},
		{name: "status once", fault: TokenFault{Status: http.StatusBadGateway, Times: 1}, wantStatus: http.StatusBadGateway, wantNext: true},
		{name: "drop", fault: TokenFault{Drop: true}},
		{name: "lose response", fault: TokenFault{LoseResponse: true}, wantRotated: true},
		{name: "short delay", fault: TokenFault{Delay: time.Millisecond}, wantStatus: http.StatusOK, wantRotated: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewServer(t, Options{})
			conf := s.OAuthConfig("")
			ctx := clientContext(t.Context(), s)
			tok := s.NewGrant()
			s.SetTokenFault(tt.fault)

			_, err := refresh(ctx, conf, tok.RefreshToken)
			var re *oauth2.RetrieveError
			switch {
			case tt.wantStatus == http.StatusOK:
				if err != nil {
					t.Errorf("refresh: %v; want success", err)
				}
			case tt.wantStatus != 0:
				if !errors.As(err, &re) || re.Response.StatusCode != tt.wantStatus || re.ErrorCode != "server_error" {
					t.Errorf("refresh: error %v; want server_error with status %d", err, tt.wantStatus)
				}
			default:
				if err == nil || errors.As(err, &re) {
					t.Errorf("refresh: error %v; want a transport error", err)
				}
			}
			if got := s.IsRevoked(tok.RefreshToken); got != tt.wantRotated {
				t.Errorf("IsRevoked(refresh token) = %v; want %v", got, tt.wantRotated)
			}
			if n := s.RefreshCalls(); n != 1 {
				t.Errorf("RefreshCalls() = %d; want 1", n)
			}
			if tt.wantRotated {
				return
			}
			_, err = refresh(ctx, conf, tok.RefreshToken)
			if ok := err == nil; ok != tt.wantNext {
				t.Errorf("next refresh: error %v; want success %v", err, tt.wantNext)
			}
		})
	}
}

func TestTokenFaultWaits(t *testing.T) {
	tests := []struct {
		name string
		// fault returns the fault to set, given a channel the test closes
		// to release a stall.
		fault func(release <-chan struct{}) TokenFault
		// cancel ends the client's context instead of releasing.
		cancel bool
	}{
		{name: "delay aborted by context", fault: func(<-chan struct{}) TokenFault { return TokenFault{Delay: time.Hour} }, cancel: true},
		{name: "stall aborted by context", fault: func(r <-chan struct{}) TokenFault { return TokenFault{Stall: r} }, cancel: true},
		{name: "stall released", fault: func(r <-chan struct{}) TokenFault { return TokenFault{Stall: r} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewServer(t, Options{})
			conf := s.OAuthConfig("")
			tok := s.NewGrant()
			release := make(chan struct{})
			s.SetTokenFault(tt.fault(release))

			ctx, cancel := context.WithCancel(clientContext(t.Context(), s))
			defer cancel()
			errc := make(chan error, 1)
			go func() {
				_, err := refresh(ctx, conf, tok.RefreshToken)
				errc <- err
			}()
			if err := s.WaitTokenCalls(waitContext(t), 1); err != nil {
				t.Fatalf("WaitTokenCalls(1): %v", err)
			}
			if s.IsRevoked(tok.RefreshToken) {
				t.Fatalf("the refresh token rotated while the request waits")
			}
			if tt.cancel {
				cancel()
			} else {
				close(release)
			}
			err := <-errc
			if tt.cancel {
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("refresh: error %v; want context.Canceled", err)
				}
				// The abandoned request must not have rotated anything:
				// the same refresh token still works.
				s.SetTokenFault(TokenFault{})
				if _, err := refresh(clientContext(t.Context(), s), conf, tok.RefreshToken); err != nil {
					t.Errorf("refresh after the abandoned one: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("refresh after release: %v", err)
			}
			if !s.IsRevoked(tok.RefreshToken) {
				t.Errorf("IsRevoked(old refresh token) after release = false; want true")
			}
		})
	}
}

func TestRotateAndCurrentToken(t *testing.T) {
	s := NewServer(t, Options{})
	tok := s.NewGrant()
	next, ok := s.Rotate(tok.RefreshToken)
	if !ok {
		t.Fatalf("Rotate(current) = false; want true")
	}
	if _, ok := s.Rotate(tok.RefreshToken); ok {
		t.Errorf("Rotate(rotated) = true; want false")
	}
	for _, token := range []string{tok.AccessToken, tok.RefreshToken, next.AccessToken} {
		if got, ok := s.CurrentToken(token); !ok || got != next {
			t.Errorf("CurrentToken(%q) = %+v, %v; want %+v, true", token, got, ok, next)
		}
	}
	if n := s.TokenCalls(); n != 0 {
		t.Errorf("TokenCalls() = %d; want 0 (Rotate is not a request)", n)
	}
	s.Revoke(tok.RefreshToken) // a rotated-away token still names its grant
	if _, ok := s.CurrentToken(next.RefreshToken); ok || s.AccessValid(next.AccessToken) {
		t.Errorf("after Revoke(old refresh token), the current pair is still valid")
	}
}

func TestAPIPattern(t *testing.T) {
	tests := []struct {
		pattern string
		want    string
	}{
		{"/ping", "/api/v2/ping"},
		{"GET /ping", "GET /api/v2/ping"},
		{"GET /api/v2/ping", "GET /api/v2/ping"},
		{"/", "/api/v2/"},
		{"POST example.com/send/{kind}", "POST example.com/api/v2/send/{kind}"},
		{"/api/v2", "/api/v2"},
	}
	for _, tt := range tests {
		if got := apiPattern(tt.pattern); got != tt.want {
			t.Errorf("apiPattern(%q) = %q; want %q", tt.pattern, got, tt.want)
		}
	}
}
