package auth

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"thanksio-proxy/store"
)

// ConnectError is a connect request refused for what it asked (a return_to
// outside the allow-list): Code and Message are for the caller.
type ConnectError struct {
	Code    string
	Message string
}

func (e *ConnectError) Error() string { return "auth: connect: " + e.Message }

// stateTTL is how long a connect link stays usable.
const stateTTL = 10 * time.Minute

// Connect starts the OAuth authorization-code flow for tenant: it keeps a
// one-time state (bound to the tenant, returnTo and a PKCE verifier) in the
// store, so that any replica can finish the flow, and returns the URL to send
// the account owner's browser to. returnTo, when not empty, must fall under
// one of Config.ReturnURLs.
func (t *Tokens) Connect(ctx context.Context, tenant, returnTo string) (string, error) {
	if t.cfg.OAuth == nil || t.cfg.OAuth.RedirectURL == "" || t.cfg.OAuth.Endpoint.AuthURL == "" {
		return "", ErrNotConfigured
	}
	if returnTo != "" {
		if _, err := AllowedReturn(t.cfg.ReturnURLs, returnTo); err != nil {
			return "", &ConnectError{Code: "invalid_return_to", Message: err.Error()}
		}
	}
	state, err := randomState()
	if err != nil {
		return "", fmt.Errorf("auth: connect: %w", err)
	}
	verifier := oauth2.GenerateVerifier()
	st := store.OAuthState{
		Tenant:       tenant,
		ReturnTo:     returnTo,
		CodeVerifier: verifier,
		RedirectURL:  t.cfg.OAuth.RedirectURL,
		CreatedAt:    t.now(),
	}
	if err := t.store.PutOAuthState(ctx, state, st, stateTTL); err != nil {
		t.obs.StoreError("put_state")
		return "", unavailable("the token store is unreachable", 5*time.Second, err)
	}
	return t.cfg.OAuth.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier)), nil
}

// randomState returns 256 random bits, URL-safe.
func randomState() (string, error) {
	var b [32]byte
	if _, err := crand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// ParseReturnURLs parses OAUTH_RETURN_URLS: comma-separated absolute http or
// https URLs without query or fragment.
func ParseReturnURLs(s string) ([]*url.URL, error) {
	var out []*url.URL
	for i, raw := range strings.Split(s, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
			u.RawQuery != "" || u.Fragment != "" || hasDotSegment(u.Path) {
			return nil, fmt.Errorf("entry %d is not an absolute http(s) URL without query, fragment or dot segments", i+1)
		}
		out = append(out, u)
	}
	return out, nil
}

// AllowedReturn parses returnTo and reports (as a nil error) whether it falls
// under one of allowed: same scheme, host and port, and a path equal to or
// under the allowed path. It compares parsed URLs, never strings.
func AllowedReturn(allowed []*url.URL, returnTo string) (*url.URL, error) {
	u, err := url.Parse(returnTo)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return nil, errors.New("return_to must be an absolute URL")
	}
	if u.User != nil {
		return nil, errors.New("return_to must not hold a user name or password")
	}
	if hasDotSegment(u.Path) || strings.Contains(strings.ToLower(u.EscapedPath()), "%2f") || strings.Contains(u.Path, "\\") {
		return nil, errors.New("return_to must not hold dot segments or encoded slashes")
	}
	// The callback adds connected= or error= to the query: one already
	// there could be taken for the real result.
	if q := u.Query(); q.Has("connected") || q.Has("error") {
		return nil, errors.New("return_to must not hold a connected or error parameter")
	}
	for _, a := range allowed {
		if strings.EqualFold(a.Scheme, u.Scheme) && sameHostPort(a, u) && pathUnder(u.Path, a.Path) {
			return u, nil
		}
	}
	return nil, errors.New("return_to is not under any URL of OAUTH_RETURN_URLS")
}

func sameHostPort(a, b *url.URL) bool {
	return strings.EqualFold(a.Hostname(), b.Hostname()) && portOf(a) == portOf(b)
}

func portOf(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if strings.EqualFold(u.Scheme, "https") {
		return "443"
	}
	return "80"
}

// pathUnder reports whether p is base or below it, segment-wise.
func pathUnder(p, base string) bool {
	base = strings.TrimSuffix(base, "/")
	if base == "" {
		return true
	}
	return p == base || strings.HasPrefix(p, base+"/")
}

func hasDotSegment(p string) bool {
	for _, s := range strings.Split(p, "/") {
		if s == "." || s == ".." {
			return true
		}
	}
	return false
}

// Callback answers GET /oauth/callback: it consumes the one-time state,
// exchanges the code (with the PKCE verifier and the same redirect_uri),
// stores the token for the tenant bound to the state, makes the tenant
// active, and sends the browser back to return_to with connected=<tenant> or
// error=<code>; without return_to it answers a short page. It never shows or
// logs a token, a code or the client secret.
func (t *Tokens) Callback() http.Handler {
	return http.HandlerFunc(t.callback)
}

// The outcomes of a callback, as error codes in return_to's query.
const (
	callbackInvalidState    = "invalid_state"
	callbackAccessDenied    = "access_denied"
	callbackAuthorizeFailed = "authorization_failed"
	callbackCodeRejected    = "code_rejected"
	callbackTokenEndpoint   = "token_endpoint_unavailable"
	callbackStore           = "store_unavailable"
	callbackInvalidRequest  = "invalid_request"
)

// observeCallback counts a callback's outcome ("connected" for success).
func (t *Tokens) observeCallback(outcome string) {
	if outcome == "" {
		outcome = "connected"
	}
	t.obs.Callback(outcome)
}

func (t *Tokens) callback(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	// The URL holds the code: keep it out of Referer headers.
	w.Header().Set("Referrer-Policy", "no-referrer")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		t.page(w, http.StatusMethodNotAllowed, "", callbackInvalidRequest)
		return
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil || len(q["state"]) != 1 || q.Get("state") == "" || len(q["code"]) > 1 || len(q["error"]) > 1 {
		t.log.Info("oauth callback refused: malformed query")
		t.page(w, http.StatusBadRequest, "", callbackInvalidRequest)
		return
	}
	if t.cfg.OAuth == nil {
		t.page(w, http.StatusNotFound, "", callbackInvalidRequest)
		return
	}
	// The state is consumed first, whatever the outcome: it is single use.
	st, err := t.store.TakeOAuthState(r.Context(), q.Get("state"))
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrSealed):
		t.log.Info("oauth callback refused: unknown, used or expired state")
		t.page(w, http.StatusBadRequest, "", callbackInvalidState)
		return
	case err != nil:
		t.obs.StoreError("take_state")
		t.log.Warn("oauth callback failed: store unreachable", "err", err)
		t.page(w, http.StatusServiceUnavailable, "", callbackStore)
		return
	}
	if t.now().Sub(st.CreatedAt) > stateTTL {
		t.page(w, http.StatusBadRequest, "", callbackInvalidState)
		return
	}
	finish := func(status int, outcome string) {
		t.log.Info("oauth callback", "tenant", st.Tenant, "outcome", outcome)
		if st.ReturnTo != "" {
			if u, err := AllowedReturn(t.cfg.ReturnURLs, st.ReturnTo); err == nil {
				v := u.Query()
				if outcome == "" {
					v.Set("connected", st.Tenant)
				} else {
					v.Set("error", outcome)
				}
				u.RawQuery = v.Encode()
				u.Fragment = ""
				t.observeCallback(outcome)
				http.Redirect(w, r, u.String(), http.StatusSeeOther)
				return
			}
		}
		t.page(w, status, st.Tenant, outcome)
	}
	if e := q.Get("error"); e != "" {
		if e == "access_denied" {
			finish(http.StatusForbidden, callbackAccessDenied)
		} else {
			finish(http.StatusBadRequest, callbackAuthorizeFailed)
		}
		return
	}
	code := q.Get("code")
	if code == "" {
		finish(http.StatusBadRequest, callbackInvalidRequest)
		return
	}
	// The exchange belongs to the flow, not to the browser's connection.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), t.cfg.RefreshTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, t.cfg.HTTPClient)
	cfg := *t.cfg.OAuth
	cfg.RedirectURL = st.RedirectURL
	// An answer without an access token is an error from x/oauth2, which
	// ends as callbackTokenEndpoint below.
	tok, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(st.CodeVerifier))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.Response != nil && re.Response.StatusCode < 500 {
			t.log.Warn("oauth code exchange refused", "tenant", st.Tenant, "reason", describeTokenError(err))
			finish(http.StatusBadRequest, callbackCodeRejected)
			return
		}
		t.log.Warn("oauth code exchange failed", "tenant", st.Tenant, "reason", describeTokenError(err))
		finish(http.StatusServiceUnavailable, callbackTokenEndpoint)
		return
	}
	if _, err := t.Import(ctx, st.Tenant, Grant{AccessToken: tok.AccessToken, RefreshToken: tok.RefreshToken, Expiry: tok.Expiry}); err != nil {
		t.log.Error("oauth callback could not store the token", "tenant", st.Tenant, "err", err)
		finish(http.StatusServiceUnavailable, callbackStore)
		return
	}
	finish(http.StatusOK, "")
}

var callbackPage = template.Must(template.New("callback").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>thanks.io connection</title></head>
<body><h1>{{.Title}}</h1><p>{{.Text}}</p></body></html>
`))

var callbackTexts = map[string][2]string{
	"":                      {"Connected", "The thanks.io account is connected. You can close this page."},
	callbackInvalidState:    {"Link expired", "This link has expired or was already used. Start the connection again."},
	callbackAccessDenied:    {"Not connected", "The thanks.io account owner did not approve the connection."},
	callbackAuthorizeFailed: {"Not connected", "thanks.io did not authorize the connection. Start the connection again."},
	callbackCodeRejected:    {"Not connected", "thanks.io refused the authorization. Start the connection again."},
	callbackTokenEndpoint:   {"Try again", "thanks.io could not be reached to finish the connection. Start the connection again in a moment."},
	callbackStore:           {"Try again", "The connection could not be saved. Start the connection again in a moment."},
	callbackInvalidRequest:  {"Bad request", "This is not a valid thanks.io authorization response."},
}

func (t *Tokens) page(w http.ResponseWriter, status int, tenant, outcome string) {
	t.observeCallback(outcome)
	text := callbackTexts[outcome]
	if outcome == "" && tenant != "" {
		text[1] = "The thanks.io account is connected for " + tenant + ". You can close this page."
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Security-Policy", "default-src 'none'")
	w.WriteHeader(status)
	_ = callbackPage.Execute(w, struct{ Title, Text string }{text[0], text[1]})
}
