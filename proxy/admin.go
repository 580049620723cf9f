package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/store"
)

// TenantAdmin is what the admin API needs of the token lifecycle.
type TenantAdmin interface {
	Import(ctx context.Context, tenant string, g auth.Grant) (auth.TenantStatus, error)
	Status(ctx context.Context, tenant string) (auth.TenantStatus, error)
	List(ctx context.Context, after string, limit int) ([]string, bool, error)
	// ListByState is List of the tenants in one state; next resumes it.
	ListByState(ctx context.Context, state store.State, after string, limit int) (tenants []string, next string, more bool, err error)
	Forget(ctx context.Context, tenant string) error
	RefreshNow(ctx context.Context, tenant string) (auth.TenantStatus, error)
	// Connect returns a one-time authorize URL for the tenant's account owner.
	Connect(ctx context.Context, tenant, returnTo string) (string, error)
}

// maxAdminBody bounds an admin request body.
const maxAdminBody = 64 << 10

// Admin serves /admin/... for operators. Every call needs
// "Authorization: Bearer <token>"; the token is compared in constant time.
type Admin struct {
	// OnRefused, if non-nil, is called for each call refused for a missing
	// or wrong admin token (for a metric). Set it before serving.
	OnRefused func()

	tenants TenantAdmin
	// tokenSum is the SHA-256 of the admin token: comparing digests keeps
	// the comparison constant-time whatever the presented length.
	tokenSum [32]byte
	log      *slog.Logger
	mux      *http.ServeMux
	now      func() time.Time
	failures *failureLimiter
}

// NewAdmin returns the admin API. An empty token is refused: the caller
// should not mount the admin API at all.
func NewAdmin(tenants TenantAdmin, token string, log *slog.Logger) (*Admin, error) {
	if token == "" {
		return nil, errors.New("proxy: the admin token is empty")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Admin{tenants: tenants, tokenSum: sha256.Sum256([]byte(token)), log: log, mux: http.NewServeMux(), now: time.Now,
		failures: newFailureLimiter(adminFailuresAllowed, adminFailureWindow)}
	a.mux.HandleFunc("GET /admin/tenants", a.list)
	a.mux.HandleFunc("GET /admin/tenants/{tenant}", a.status)
	a.mux.HandleFunc("DELETE /admin/tenants/{tenant}", a.forget)
	a.mux.HandleFunc("PUT /admin/tenants/{tenant}/token", a.importToken)
	a.mux.HandleFunc("POST /admin/tenants/{tenant}/refresh", a.refresh)
	a.mux.HandleFunc("POST /admin/tenants/{tenant}/connect", a.connect)
	a.mux.HandleFunc("/admin/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "No such admin call."})
	})
	return a, nil
}

// ServeHTTP checks the admin token first: the right token is always served,
// whatever others who share the caller's address (a NAT, an ingress, a pod)
// did. A missing or wrong token counts as a failure of that address, and an
// address past the limit is answered 429 until its window ends.
func (a *Admin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !a.authorized(r) {
		client := remoteIP(r)
		if wait := a.failures.blocked(client, a.now()); wait > 0 {
			writeError(w, &Error{Status: http.StatusTooManyRequests, Code: CodeTooManyAttempts,
				Message: "Too many calls with a wrong admin token from this address; wait and try again.", RetryAfter: wait})
			return
		}
		if a.OnRefused != nil {
			a.OnRefused()
		}
		if a.failures.fail(client, a.now()) {
			a.log.Warn("further admin calls with a wrong token from this address are answered 429 for a while", "remote", client)
		}
		a.log.Warn("admin call refused: missing or wrong admin token", "method", r.Method, "path", r.URL.Path, "remote", client)
		w.Header().Set("WWW-Authenticate", `Bearer realm="thanksio-proxy admin"`)
		writeError(w, &Error{Status: http.StatusUnauthorized, Code: CodeUnauthorized,
			Message: "A valid admin token is required in the Authorization header."})
		return
	}
	// The mux answers a method it has no route for with a plain-text 405;
	// answer it in the proxy's shape instead.
	if _, pattern := a.mux.Handler(r); pattern == "" || pattern == "/admin/" {
		if methodMismatch(a.mux, r) {
			writeError(w, &Error{Status: http.StatusMethodNotAllowed, Code: CodeMethodNotAllowed,
				Message: "That method is not allowed on this admin path."})
			return
		}
	}
	a.mux.ServeHTTP(w, r)
}

// methodMismatch reports whether r's path has a route under another method.
func methodMismatch(mux *http.ServeMux, r *http.Request) bool {
	for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete} {
		if m == r.Method {
			continue
		}
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, p := mux.Handler(probe); p != "" && p != "/admin/" {
			return true
		}
	}
	return false
}

func (a *Admin) authorized(r *http.Request) bool {
	h := r.Header.Values("Authorization")
	if len(h) != 1 {
		return false
	}
	token, ok := strings.CutPrefix(h[0], "Bearer ")
	if !ok {
		return false
	}
	sum := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(sum[:], a.tokenSum[:]) == 1
}

// pathTenant returns the {tenant} of the path, or answers 400.
func pathTenant(w http.ResponseWriter, r *http.Request) (string, bool) {
	tenant := r.PathValue("tenant")
	if !ValidTenant(tenant) {
		writeError(w, &Error{Status: http.StatusBadRequest, Code: CodeInvalidTenant,
			Message: "A tenant id is 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-', and not '.' or '..'."})
		return "", false
	}
	return tenant, true
}

// importRequest is the body of PUT /admin/tenants/{tenant}/token.
type importRequest struct {
	AccessToken  *string    `json:"access_token"`
	RefreshToken *string    `json:"refresh_token"`
	ExpiresIn    *int64     `json:"expires_in"`
	Expiry       *time.Time `json:"expiry"`
}

func (a *Admin) importToken(w http.ResponseWriter, r *http.Request) {
	tenant, ok := pathTenant(w, r)
	if !ok {
		return
	}
	var req importRequest
	if e := decodeBody(w, r, &req); e != nil {
		writeError(w, e)
		return
	}
	bad := func(msg string) {
		writeError(w, &Error{Status: http.StatusBadRequest, Code: CodeBadRequest, Message: msg})
	}
	var g auth.Grant
	switch {
	case req.AccessToken == nil || strings.TrimSpace(*req.AccessToken) == "":
		bad("access_token is required.")
		return
	case !printable(*req.AccessToken) || req.RefreshToken != nil && !printable(*req.RefreshToken):
		bad("Tokens must be printable ASCII without spaces.")
		return
	case req.RefreshToken != nil && *req.RefreshToken == "":
		bad("refresh_token, when given, must not be empty.")
		return
	case req.ExpiresIn != nil && req.Expiry != nil:
		bad("Give expires_in or expiry, not both.")
		return
	case req.ExpiresIn != nil && (*req.ExpiresIn < 0 || *req.ExpiresIn > 10*365*24*3600):
		bad("expires_in must be a number of seconds between 0 and ten years.")
		return
	}
	g.AccessToken = *req.AccessToken
	if req.RefreshToken != nil {
		g.RefreshToken = *req.RefreshToken
	}
	switch {
	case req.ExpiresIn != nil:
		g.Expiry = a.now().Add(time.Duration(*req.ExpiresIn) * time.Second)
	case req.Expiry != nil:
		g.Expiry = *req.Expiry
	}
	st, err := a.tenants.Import(r.Context(), tenant, g)
	if err != nil {
		a.log.Error("import failed", "tenant", tenant, "err", err)
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: CodeTokenUnavailable,
			Message: "The token could not be stored; nothing was changed.", RetryAfter: 5 * time.Second})
		return
	}
	a.log.Info("token imported", "tenant", tenant, "refreshable", g.RefreshToken != "")
	writeJSON(w, http.StatusOK, st)
}

// printable reports whether s is non-empty visible ASCII, as a bearer token is.
func printable(s string) bool {
	if s == "" || len(s) > 16<<10 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

func (a *Admin) status(w http.ResponseWriter, r *http.Request) {
	tenant, ok := pathTenant(w, r)
	if !ok {
		return
	}
	st, err := a.tenants.Status(r.Context(), tenant)
	if err != nil {
		writeError(w, a.adminError(err))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *Admin) forget(w http.ResponseWriter, r *http.Request) {
	tenant, ok := pathTenant(w, r)
	if !ok {
		return
	}
	if err := a.tenants.Forget(r.Context(), tenant); err != nil {
		writeError(w, a.adminError(err))
		return
	}
	a.log.Info("tenant forgotten", "tenant", tenant)
	w.WriteHeader(http.StatusNoContent)
}

func (a *Admin) refresh(w http.ResponseWriter, r *http.Request) {
	tenant, ok := pathTenant(w, r)
	if !ok {
		return
	}
	st, err := a.tenants.RefreshNow(r.Context(), tenant)
	if err != nil {
		writeError(w, a.adminError(err))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// connectRequest is the optional body of POST /admin/tenants/{tenant}/connect.
type connectRequest struct {
	ReturnTo *string `json:"return_to"`
}

func (a *Admin) connect(w http.ResponseWriter, r *http.Request) {
	tenant, ok := pathTenant(w, r)
	if !ok {
		return
	}
	var req connectRequest
	if r.ContentLength != 0 {
		if e := decodeBody(w, r, &req); e != nil {
			writeError(w, e)
			return
		}
	}
	returnTo := ""
	if req.ReturnTo != nil {
		returnTo = *req.ReturnTo
	}
	u, err := a.tenants.Connect(r.Context(), tenant, returnTo)
	if err != nil {
		writeError(w, a.adminError(err))
		return
	}
	writeJSON(w, http.StatusOK, struct {
		AuthorizeURL string `json:"authorize_url"`
	}{u})
}

func (a *Admin) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, &Error{Status: http.StatusBadRequest, Code: CodeBadRequest, Message: "limit must be a number from 1 to 1000."})
			return
		}
		limit = n
	}
	after := q.Get("after")
	if after != "" && !ValidTenant(after) {
		writeError(w, &Error{Status: http.StatusBadRequest, Code: CodeBadRequest, Message: "after must be a tenant id."})
		return
	}
	var (
		ids  []string
		next string
		more bool
		err  error
	)
	switch state := store.State(q.Get("state")); state {
	case "":
		ids, more, err = a.tenants.List(r.Context(), after, limit)
		if more && len(ids) > 0 {
			next = ids[len(ids)-1]
		}
	case store.StateActive, store.StateReauthorizationRequired:
		ids, next, more, err = a.tenants.ListByState(r.Context(), state, after, limit)
	default:
		writeError(w, &Error{Status: http.StatusBadRequest, Code: CodeBadRequest, Message: "state must be active or reauthorization_required."})
		return
	}
	if err != nil {
		writeError(w, a.adminError(err))
		return
	}
	page := struct {
		Tenants []string `json:"tenants"`
		Next    string   `json:"next,omitempty"`
	}{Tenants: ids}
	if page.Tenants == nil {
		page.Tenants = []string{}
	}
	if more {
		page.Next = next
	}
	writeJSON(w, http.StatusOK, page)
}

// adminError maps an error of TenantAdmin to an admin answer.
func (a *Admin) adminError(err error) *Error {
	var ce *auth.ConnectError
	switch {
	case errors.Is(err, auth.ErrUnknownTenant):
		return &Error{Status: http.StatusNotFound, Code: CodeUnknownTenant, Message: "No token is held for this tenant."}
	case errors.Is(err, auth.ErrReauthorizationRequired):
		return &Error{Status: http.StatusConflict, Code: CodeReauthorizationRequired,
			Message: "The tenant's authorization was revoked; connect it again or import a new token."}
	case errors.Is(err, auth.ErrNoBetterToken):
		return &Error{Status: http.StatusConflict, Code: CodeNotRefreshable,
			Message: "The tenant's token has no refresh token (a personal access token) and cannot be refreshed."}
	case errors.Is(err, auth.ErrNotConfigured):
		return &Error{Status: http.StatusConflict, Code: CodeNotConfigured,
			Message: "The OAuth client is not configured: set OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET and OAUTH_REDIRECT_URL."}
	case errors.As(err, &ce):
		return &Error{Status: http.StatusBadRequest, Code: ce.Code, Message: ce.Message}
	case errors.Is(err, context.Canceled):
		return &Error{Status: StatusClientClosedRequest, Code: "client_closed_request", Message: "The caller went away."}
	}
	e := tokenError(err)
	a.log.Warn("admin call failed", "code", e.Code, "err", err)
	return e
}

// decodeBody decodes exactly one JSON object of at most maxAdminBody bytes
// with no unknown fields into v.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) *Error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(strings.ToLower(ct), "application/json") {
		return &Error{Status: http.StatusUnsupportedMediaType, Code: CodeBadRequest, Message: "The body must be application/json."}
	}
	body := http.MaxBytesReader(w, r.Body, maxAdminBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooLarge *http.MaxBytesError
		var typeErr *json.UnmarshalTypeError
		var syntaxErr *json.SyntaxError
		var timeout interface{ Timeout() bool }
		switch {
		case errors.As(err, &timeout) && timeout.Timeout():
			// The body did not arrive by REQUEST_BODY_TIMEOUT: 408, and the
			// connection closes, the rest of the body being still on it.
			return bodyError(err)
		case errors.As(err, &tooLarge):
			return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge,
				Message: fmt.Sprintf("The body is larger than %d bytes.", maxAdminBody)}
		case errors.As(err, &typeErr):
			return &Error{Status: http.StatusBadRequest, Code: CodeBadRequest,
				Message: fmt.Sprintf("The field %q has the wrong type.", typeErr.Field)}
		case errors.As(err, &syntaxErr), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
			return &Error{Status: http.StatusBadRequest, Code: CodeBadRequest, Message: "The body is not valid JSON."}
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return &Error{Status: http.StatusBadRequest, Code: CodeBadRequest,
				Message: "The body has an unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ") + "."}
		default:
			return &Error{Status: http.StatusBadRequest, Code: CodeBadRequest, Message: "The body could not be decoded."}
		}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge,
				Message: fmt.Sprintf("The body is larger than %d bytes.", maxAdminBody)}
		}
		return &Error{Status: http.StatusBadRequest, Code: CodeBadRequest, Message: "The body must hold one JSON object and nothing after it."}
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// After adminFailuresAllowed calls with a missing or wrong admin token within
// adminFailureWindow, an address's further failures are answered 429 (and
// not logged one by one) until the window ends. The right token is never
// refused, so the limit does not slow guessing down: the token's length (16
// characters at least) is what makes guessing hopeless.
const (
	adminFailuresAllowed = 10
	adminFailureWindow   = time.Minute
)

// failureLimiter counts failures per client address in fixed windows.
type failureLimiter struct {
	mu      sync.Mutex
	max     int
	window  time.Duration
	clients map[string]*failureWindow
}

type failureWindow struct {
	start time.Time
	count int
}

func newFailureLimiter(max int, window time.Duration) *failureLimiter {
	return &failureLimiter{max: max, window: window, clients: make(map[string]*failureWindow)}
}

// blocked returns how long client must wait, or 0.
func (l *failureLimiter) blocked(client string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	w, ok := l.clients[client]
	if !ok || now.Sub(w.start) >= l.window {
		return 0
	}
	if w.count < l.max {
		return 0
	}
	return w.start.Add(l.window).Sub(now)
}

// fail counts a failure and reports whether it just reached the limit.
func (l *failureLimiter) fail(client string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.clients) > 10_000 {
		for k, w := range l.clients {
			if now.Sub(w.start) >= l.window {
				delete(l.clients, k)
			}
		}
	}
	w, ok := l.clients[client]
	if !ok || now.Sub(w.start) >= l.window {
		w = &failureWindow{start: now}
		l.clients[client] = w
	}
	w.count++
	return w.count == l.max
}

// remoteIP is the address the connection came from. Forwarding headers are
// not trusted: anyone can send them.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
