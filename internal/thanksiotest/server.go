// Package thanksiotest provides a test double of thanks.io for the tests of
// the proxy: a strict OAuth 2.0 authorization server that behaves like
// Laravel Passport (the software behind dashboard.thanks.io) and, where a
// stricter server would refuse something, refuses it too; and the thanks.io
// API under /api/v2, which answers only requests that carry a valid bearer
// token.
//
// A Server records what it receives (token requests, API requests, the last
// authorize request) so that a test can assert what a client sent, and can be
// told to fail, stall or answer slowly on its token endpoint (SetTokenFault).
// Every method of a Server is safe for concurrent use by multiple goroutines.
//
// The token endpoint follows Passport's defaults: refresh tokens rotate (a
// refresh revokes the old access token and the old refresh token at once), an
// authorization code is single use, bound to its client and redirect URI, and
// to its PKCE challenge when there was one, and expires after CodeLifetime.
package thanksiotest

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"
)

// Paths served by a Server.
const (
	tokenPath     = "/oauth/token"
	authorizePath = "/oauth/authorize"
	apiBasePath   = "/api/v2"
)

const (
	// DefaultClientID is the client id a Server accepts when
	// Options.ClientID is empty.
	DefaultClientID = "test-client"
	// DefaultClientSecret is the client secret a Server accepts when
	// Options.ClientSecret is empty.
	DefaultClientSecret = "test-secret"
	// DefaultAccessLifetime is the lifetime of access tokens when
	// Options.AccessLifetime is zero.
	DefaultAccessLifetime = time.Hour
	// CodeLifetime is how long an authorization code can be exchanged after
	// it was issued, by the clock in Options.Now.
	CodeLifetime = 10 * time.Minute
	// MaxAPIBody is the number of bytes of an API request body that a Server
	// reads and records. A longer body is answered 413 after the token check.
	MaxAPIBody = 10 << 20
	// maxTokenForm bounds the form body read by the token endpoint.
	maxTokenForm = 1 << 20
)

// Options configures a Server. The zero value is a usable configuration
// with the defaults described on each field.
type Options struct {
	// ClientID and ClientSecret are the only client credentials accepted.
	// Empty means DefaultClientID and DefaultClientSecret.
	ClientID, ClientSecret string
	// RedirectURLs are the registered redirect URIs. The authorize request
	// and the code exchange must name one of them exactly (string
	// comparison, no normalization). Each must be an absolute URL without a
	// fragment. Nil means none is registered, so every authorize request is
	// refused until AddRedirectURL registers one.
	RedirectURLs []string
	// AccessLifetime is the lifetime of the access tokens issued. Zero means
	// DefaultAccessLifetime. The expires_in of a token response is the
	// lifetime in whole seconds, and at least 1, while the token itself
	// stops being valid after exactly AccessLifetime, so a negative or
	// sub-second lifetime issues tokens that die before their client
	// expects it.
	AccessLifetime time.Duration
	// StrictReuse makes the presentation of a refresh token that was rotated
	// away revoke the whole grant, including its current access and refresh
	// tokens, as ORY Hydra does. Without it, such a presentation is refused
	// and changes nothing, as Passport does.
	StrictReuse bool
	// InvalidRefreshAs401 answers an unknown, rotated or revoked refresh
	// token as some Passport versions do, with 401 invalid_request "The
	// refresh token is invalid.", instead of 400 invalid_grant.
	InvalidRefreshAs401 bool
	// RequirePKCE refuses authorize requests without a code_challenge.
	// Without it, PKCE is used only when the client asks for it, as in
	// Passport.
	RequirePKCE bool
	// UnauthenticatedAs403 answers an API request without a valid token with
	// 403 {"message":"Unauthorized"}, as the thanks.io OpenAPI file
	// documents, instead of Passport's 401 {"message":"Unauthenticated."}.
	UnauthenticatedAs403 bool
	// Now is the clock for token and code expiry. Nil means time.Now.
	Now func() time.Time
}

// Server is a running test double of thanks.io: the OAuth endpoints under
// /oauth and the API under /api/v2 on one httptest server. Create it with
// NewServer; it is closed when the test ends.
type Server struct {
	opts Options // with defaults applied; never changed after NewServer
	srv  *httptest.Server
	// done is closed when the test ends so that stalled or delayed token
	// requests return and the httptest server can close.
	done chan struct{}

	mu             sync.Mutex
	redirectURLs   []string
	accessLifetime time.Duration
	grants         grantIndex
	codes          map[string]*authCode
	fault          TokenFault
	deny           bool
	lastAuthorize  url.Values
	authorizeCalls int
	tokenCalls     int
	refreshCalls   int
	reuses         int
	codeExchanges  int
	tokenRequests  []TokenRequest
	apiRequests    []APIRequest
	apiHandlers    map[string]http.HandlerFunc
	apiMux         *http.ServeMux // nil while no handler is registered
	rateLimit      int            // requests per ratePeriod per account; 0: no limit
	ratePeriod     time.Duration
	windows        map[any]*rateWindow
	// changed is closed and replaced each time a request is recorded, so
	// that waiters wake up without polling.
	changed chan struct{}
}

// NewServer starts a Server configured by opts and closes it when the test
// ends (tb.Cleanup). An invalid registered redirect URL fails the test.
func NewServer(tb testing.TB, opts Options) *Server {
	tb.Helper()
	if opts.ClientID == "" {
		opts.ClientID = DefaultClientID
	}
	if opts.ClientSecret == "" {
		opts.ClientSecret = DefaultClientSecret
	}
	if opts.AccessLifetime == 0 {
		opts.AccessLifetime = DefaultAccessLifetime
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	for _, u := range opts.RedirectURLs {
		if err := checkRedirectURL(u); err != nil {
			tb.Fatalf("thanksiotest.NewServer: %v", err)
		}
	}
	s := &Server{
		opts:           opts,
		done:           make(chan struct{}),
		redirectURLs:   slices.Clone(opts.RedirectURLs),
		accessLifetime: opts.AccessLifetime,
		grants:         newGrantIndex(),
		codes:          make(map[string]*authCode),
		apiHandlers:    make(map[string]http.HandlerFunc),
		changed:        make(chan struct{}),
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	tb.Cleanup(func() {
		close(s.done)
		s.srv.Close()
	})
	return s
}

// checkRedirectURL reports why u cannot be registered as a redirect URI, or
// nil when it can.
func checkRedirectURL(u string) error {
	p, err := url.Parse(u)
	if err != nil {
		return fmt.Errorf("redirect URL %q: %w", u, err)
	}
	if !p.IsAbs() || p.Host == "" {
		return fmt.Errorf("redirect URL %q is not absolute", u)
	}
	if p.Fragment != "" || p.RawFragment != "" {
		return fmt.Errorf("redirect URL %q has a fragment", u)
	}
	return nil
}

// URL returns the base URL of the server, such as "http://127.0.0.1:1234".
func (s *Server) URL() string { return s.srv.URL }

// TokenURL returns the URL of the token endpoint.
func (s *Server) TokenURL() string { return s.srv.URL + tokenPath }

// AuthorizeURL returns the URL of the authorize endpoint.
func (s *Server) AuthorizeURL() string { return s.srv.URL + authorizePath }

// APIURL returns the base URL of the API, without a trailing slash.
func (s *Server) APIURL() string { return s.srv.URL + apiBasePath }

// Client returns an HTTP client configured for the server. It follows
// redirects; a test of the authorize endpoint wants one that does not.
func (s *Server) Client() *http.Client { return s.srv.Client() }

// ClientID returns the client id the server accepts.
func (s *Server) ClientID() string { return s.opts.ClientID }

// ClientSecret returns the client secret the server accepts.
func (s *Server) ClientSecret() string { return s.opts.ClientSecret }

// AddRedirectURL registers u as a redirect URI, for tests that learn the
// callback URL only after the server started. It panics if u is not an
// absolute URL without a fragment.
func (s *Server) AddRedirectURL(u string) {
	if err := checkRedirectURL(u); err != nil {
		panic("thanksiotest: AddRedirectURL: " + err.Error())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Contains(s.redirectURLs, u) {
		s.redirectURLs = append(s.redirectURLs, u)
	}
}

// SetAccessLifetime sets the lifetime of the access tokens issued from now
// on; tokens already issued keep theirs. A lifetime under one second is
// still announced as expires_in 1 (see Options.AccessLifetime).
func (s *Server) SetAccessLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accessLifetime = d
}

// SetAuthorizeDecision sets how the authorize endpoint answers a valid
// request from now on: deny redirects with error=access_denied, as when the
// account owner refuses; otherwise a code is issued (the default).
func (s *Server) SetAuthorizeDecision(deny bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deny = deny
}

// TokenCalls returns the number of requests the token endpoint received,
// whatever their method, grant or outcome.
func (s *Server) TokenCalls() int { return s.count(&s.tokenCalls) }

// RefreshCalls returns the number of refresh_token grant requests the token
// endpoint received, whatever their outcome (including faults).
func (s *Server) RefreshCalls() int { return s.count(&s.refreshCalls) }

// RefreshTokenReuses returns how many refresh requests presented a refresh
// token that an earlier refresh had already rotated away: each is a refresh
// token presented twice, which a strict server answers by revoking the grant
// (StrictReuse). A client that never loses a rotated token keeps it at 0.
func (s *Server) RefreshTokenReuses() int { return s.count(&s.reuses) }

// CodeExchanges returns the number of authorization_code grant requests the
// token endpoint received, whatever their outcome (including faults).
func (s *Server) CodeExchanges() int { return s.count(&s.codeExchanges) }

// AuthorizeCalls returns the number of requests the authorize endpoint
// received, whatever their outcome.
func (s *Server) AuthorizeCalls() int { return s.count(&s.authorizeCalls) }

// count returns the counter n, one of s's fields, read under s.mu.
func (s *Server) count(n *int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return *n
}

// LastAuthorize returns a copy of the query of the last request to the
// authorize endpoint (client_id, redirect_uri, scope, state,
// code_challenge...), or nil if there was none.
func (s *Server) LastAuthorize() url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cloneValues(s.lastAuthorize)
}

// TokenRequests returns copies of the requests the token endpoint received,
// in arrival order.
func (s *Server) TokenRequests() []TokenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]TokenRequest, len(s.tokenRequests))
	for i, tr := range s.tokenRequests {
		tr.Form = cloneValues(tr.Form)
		out[i] = tr
	}
	return out
}

// APIRequests returns copies of the requests recorded outside the OAuth
// endpoints (those to the API and those that fell outside it), in arrival
// order.
func (s *Server) APIRequests() []APIRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]APIRequest, len(s.apiRequests))
	for i, ar := range s.apiRequests {
		out[i] = ar.clone()
	}
	return out
}

// ResetAPIRequests forgets the recorded API requests.
func (s *Server) ResetAPIRequests() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apiRequests = nil
	s.notifyLocked()
}

// WaitTokenCalls waits until the token endpoint has received at least n
// requests, counted when they arrive (before any fault applies), or until
// ctx ends, and then returns ctx's error.
func (s *Server) WaitTokenCalls(ctx context.Context, n int) error {
	return s.waitFor(ctx, func() bool { return s.tokenCalls >= n })
}

// WaitAPIRequests waits until at least n API requests are recorded (since
// the last ResetAPIRequests), or until ctx ends, and then returns ctx's
// error. A request is recorded before it is answered.
func (s *Server) WaitAPIRequests(ctx context.Context, n int) error {
	return s.waitFor(ctx, func() bool { return len(s.apiRequests) >= n })
}

// waitFor waits until cond, evaluated with s.mu held, is true.
func (s *Server) waitFor(ctx context.Context, cond func() bool) error {
	for {
		s.mu.Lock()
		ok := cond()
		changed := s.changed
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// notifyLocked wakes up the waiters of waitFor. s.mu must be held.
func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// now returns the current time by the configured clock.
func (s *Server) now() time.Time { return s.opts.Now() }

// serveHTTP routes a request to the OAuth endpoints or the API.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case tokenPath:
		s.serveToken(w, r)
	case authorizePath:
		s.serveAuthorize(w, r)
	default:
		s.serveAPI(w, r)
	}
}

// cloneValues returns a deep copy of v, or nil if v is nil.
func cloneValues(v url.Values) url.Values {
	if v == nil {
		return nil
	}
	out := make(url.Values, len(v))
	for k, vs := range v {
		out[k] = slices.Clone(vs)
	}
	return out
}
