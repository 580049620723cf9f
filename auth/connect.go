package auth

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
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

// The outcomes of Complete other than success: the error codes that the
// callback adds to return_to's query.
const (
	OutcomeInvalidState    = "invalid_state"
	OutcomeAccessDenied    = "access_denied"
	OutcomeAuthorizeFailed = "authorization_failed"
	OutcomeCodeRejected    = "code_rejected"
	OutcomeTokenEndpoint   = "token_endpoint_unavailable"
	OutcomeStore           = "store_unavailable"
	OutcomeInvalidRequest  = "invalid_request"
)

// Completion is what Complete made of an OAuth callback.
type Completion struct {
	// Tenant is the tenant bound to the state; empty when the state was
	// unknown, used, expired or could not be read.
	Tenant string
	// ReturnTo is where the account owner's browser goes back to, checked
	// again against Config.ReturnURLs; nil when the flow has none, or it is
	// no longer allowed.
	ReturnTo *url.URL
	// Outcome is empty when the token was stored, else one of the Outcome
	// codes.
	Outcome string
}

// Complete finishes the flow Connect started, from what the authorization
// server sent back (state, code, and its error parameter errParam): it
// consumes the one-time state whatever the outcome, exchanges the code (with
// the PKCE verifier and the same redirect_uri), stores the token for the
// tenant bound to the state and makes the tenant active. The exchange is the
// flow's, not ctx's caller's: it goes on if ctx is canceled. Its only error
// is ErrNotConfigured, without an OAuth client; every other outcome is in
// the Completion. It never logs a token, a code or the client secret.
func (t *Tokens) Complete(ctx context.Context, state, code, errParam string) (Completion, error) {
	if t.cfg.OAuth == nil {
		return Completion{}, ErrNotConfigured
	}
	st, err := t.store.TakeOAuthState(ctx, state)
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrSealed):
		t.log.Info("oauth callback refused: unknown, used or expired state")
		return Completion{Outcome: OutcomeInvalidState}, nil
	case err != nil:
		t.obs.StoreError("take_state")
		t.log.Warn("oauth callback failed: store unreachable", "err", err)
		return Completion{Outcome: OutcomeStore}, nil
	}
	if t.now().Sub(st.CreatedAt) > stateTTL {
		return Completion{Outcome: OutcomeInvalidState}, nil
	}
	done := Completion{Tenant: st.Tenant, Outcome: t.exchange(ctx, st, code, errParam)}
	t.log.Info("oauth callback", "tenant", st.Tenant, "outcome", done.Outcome)
	if st.ReturnTo != "" {
		if u, err := AllowedReturn(t.cfg.ReturnURLs, st.ReturnTo); err == nil {
			done.ReturnTo = u
		}
	}
	return done, nil
}

// exchange trades code for the tenant's token and stores it, and returns
// the outcome.
func (t *Tokens) exchange(ctx context.Context, st store.OAuthState, code, errParam string) string {
	switch {
	case errParam == "access_denied":
		return OutcomeAccessDenied
	case errParam != "":
		return OutcomeAuthorizeFailed
	case code == "":
		return OutcomeInvalidRequest
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.cfg.RefreshTimeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, t.cfg.HTTPClient)
	cfg := *t.cfg.OAuth
	cfg.RedirectURL = st.RedirectURL
	// An answer without an access token is an error from x/oauth2, which
	// ends as OutcomeTokenEndpoint below.
	tok, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(st.CodeVerifier))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.Response != nil && re.Response.StatusCode < 500 {
			t.log.Warn("oauth code exchange refused", "tenant", st.Tenant, "reason", describeTokenError(err))
			return OutcomeCodeRejected
		}
		t.log.Warn("oauth code exchange failed", "tenant", st.Tenant, "reason", describeTokenError(err))
		return OutcomeTokenEndpoint
	}
	if _, err := t.storeGrant(ctx, st.Tenant, Grant{AccessToken: tok.AccessToken, RefreshToken: tok.RefreshToken, Expiry: tok.Expiry}); err != nil {
		t.log.Error("oauth callback could not store the token", "tenant", st.Tenant, "err", err)
		return OutcomeStore
	}
	t.notify(st.Tenant, ChangeConnected, "account connected through OAuth")
	return ""
}
