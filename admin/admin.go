// Package admin is the control plane's HTTP: the admin API that operators
// call on the operations listener, and the pages and redirects of the OAuth
// callback. It serves over operations that package auth exposes, and answers
// errors in the proxy's JSON shape (httperr.Error), as the data plane does.
package admin

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
	"thanksio-proxy/internal/httperr"
)

// TenantAdmin is what the admin API needs of the token lifecycle.
type TenantAdmin interface {
	Import(ctx context.Context, tenant string, g auth.Grant) (auth.TenantStatus, error)
	Status(ctx context.Context, tenant string) (auth.TenantStatus, error)
	List(ctx context.Context, after string, limit int) ([]string, bool, error)
	// ListByState is List of the tenants in one state; next resumes it.
	ListByState(ctx context.Context, state auth.State, after string, limit int) (tenants []string, next string, more bool, err error)
	Forget(ctx context.Context, tenant string) error
	RefreshNow(ctx context.Context, tenant string) (auth.TenantStatus, error)
	// Connect returns a one-time authorize URL for the tenant's account owner.
	Connect(ctx context.Context, tenant, returnTo string) (string, error)
}

// Checker checks a tenant's connection to thanks.io (proxy.Handler.Check):
// the status of thanks.io's answer to GET /ping with the tenant's token and
// its message, or an *httperr.Error when the call did not reach thanks.io.
type Checker interface {
	Check(ctx context.Context, tenant string) (status int, message string, err error)
}

// maxAdminBody bounds an admin request body.
const maxAdminBody = 64 << 10

// Admin serves /admin/... for operators. Every call needs
// "Authorization: Bearer <token>"; the token is compared in constant time.
type Admin struct {
	// OnRefused, if non-nil, is called for each call refused for a missing
	// or wrong admin token (for a metric). Set it before serving.
	OnRefused func()
	// Checker serves POST /admin/tenants/{tenant}/check; nil answers it
	// 404. Set it before serving.
	Checker Checker
	// StaticTenant, when set, is the tenant served from THANKSIO_TOKEN:
	// importing, refreshing, connecting or deleting it is refused (409
	// static_tenant), since the process serves its static token whatever
	// the store holds. Set it before serving.
	StaticTenant string

	tenants TenantAdmin
	// tokenSum is the SHA-256 of the admin token: comparing digests keeps
	// the comparison constant-time whatever the presented length.
	tokenSum [32]byte
	log      *slog.Logger
	mux      *http.ServeMux
	serve    http.HandlerFunc
	now      func() time.Time
	failures *failureLimiter
}

// NewAdmin returns the admin API. An empty token is refused: the caller
// should not mount the admin API at all.
func NewAdmin(tenants TenantAdmin, token string, log *slog.Logger) (*Admin, error) {
	if token == "" {
		return nil, errors.New("admin: the admin token is empty")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Admin{tenants: tenants, tokenSum: sha256.Sum256([]byte(token)), log: log, mux: http.NewServeMux(), now: time.Now,
		failures: newFailureLimiter(adminFailuresAllowed, adminFailureWindow)}
	a.mux.HandleFunc("GET /admin/tenants", a.handle(a.list))
	a.mux.HandleFunc("GET /admin/tenants/{tenant}", a.handle(tenantStatus(tenants.Status)))
	a.mux.HandleFunc("DELETE /admin/tenants/{tenant}", a.handle(a.forget))
	a.mux.HandleFunc("PUT /admin/tenants/{tenant}/token", a.handle(a.importToken))
	a.mux.HandleFunc("POST /admin/tenants/{tenant}/refresh", a.handle(tenantStatus(tenants.RefreshNow)))
	a.mux.HandleFunc("POST /admin/tenants/{tenant}/connect", a.handle(a.connect))
	a.mux.HandleFunc("POST /admin/tenants/{tenant}/check", a.handle(a.check))
	a.mux.HandleFunc("/admin/", a.handle(func(http.ResponseWriter, *http.Request) error {
		return &httperr.Error{Status: http.StatusNotFound, Code: httperr.CodeNotFound, Message: "No such admin call."}
	}))
	a.serve = a.handle(a.route)
	return a, nil
}

// ServeHTTP checks the admin token first: the right token is always served,
// whatever others who share the caller's address (a NAT, an ingress, a pod)
// did. A missing or wrong token counts as a failure of that address, and an
// address past the limit is answered 429 until its window ends.
func (a *Admin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.serve(w, r)
}

// route refuses a call without the admin token, or with a method its path
// has no route for, and hands the others to the mux.
func (a *Admin) route(w http.ResponseWriter, r *http.Request) error {
	if !a.authorized(r) {
		client := remoteIP(r)
		if wait := a.failures.blocked(client, a.now()); wait > 0 {
			return &httperr.Error{Status: http.StatusTooManyRequests, Code: httperr.CodeTooManyAttempts,
				Message: "Too many calls with a wrong admin token from this address; wait and try again.", RetryAfter: wait}
		}
		if a.OnRefused != nil {
			a.OnRefused()
		}
		if a.failures.fail(client, a.now()) {
			a.log.Warn("further admin calls with a wrong token from this address are answered 429 for a while", "remote", client)
		}
		a.log.Warn("admin call refused: missing or wrong admin token", "method", r.Method, "path", r.URL.Path, "remote", client)
		w.Header().Set("WWW-Authenticate", `Bearer realm="thanksio-proxy admin"`)
		return &httperr.Error{Status: http.StatusUnauthorized, Code: httperr.CodeUnauthorized,
			Message: "A valid admin token is required in the Authorization header."}
	}
	if e := a.refuseStatic(r); e != nil {
		return e
	}
	// The mux answers a method it has no route for with a plain-text 405;
	// answer it in the proxy's shape instead.
	if _, pattern := a.mux.Handler(r); pattern == "" || pattern == "/admin/" {
		if methodMismatch(a.mux, r) {
			return &httperr.Error{Status: http.StatusMethodNotAllowed, Code: httperr.CodeMethodNotAllowed,
				Message: "That method is not allowed on this admin path."}
		}
	}
	a.mux.ServeHTTP(w, r)
	return nil
}

// refuseStatic refuses a call that would change StaticTenant.
func (a *Admin) refuseStatic(r *http.Request) error {
	if a.StaticTenant == "" || r.Method == http.MethodGet || r.Method == http.MethodHead {
		return nil
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/admin/tenants/"+a.StaticTenant)
	if !ok || (rest != "" && rest[0] != '/') || rest == "/check" {
		return nil
	}
	return &httperr.Error{Status: http.StatusConflict, Code: httperr.CodeStaticTenant,
		Message: "This tenant is served from THANKSIO_TOKEN or THANKSIO_TOKEN_FILE; change that variable or file instead."}
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

// handler is an admin call that answers on success and returns the error it
// failed with otherwise; handle renders that error.
type handler func(w http.ResponseWriter, r *http.Request) error

// handle adapts h: an error it returns is answered in the proxy's JSON
// shape, as errorFor maps it. Nothing else writes an admin error.
func (a *Admin) handle(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			httperr.Write(w, a.errorFor(err))
		}
	}
}

// badRequest is a 400 bad_request saying msg.
func badRequest(msg string) *httperr.Error {
	return &httperr.Error{Status: http.StatusBadRequest, Code: httperr.CodeBadRequest, Message: msg}
}

// pathTenant returns the {tenant} of the path, or the 400 that refuses it.
func pathTenant(r *http.Request) (string, error) {
	tenant := r.PathValue("tenant")
	if !httperr.ValidTenant(tenant) {
		return "", &httperr.Error{Status: http.StatusBadRequest, Code: httperr.CodeInvalidTenant,
			Message: "A tenant id is 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-', and not '.' or '..'."}
	}
	return tenant, nil
}

// importRequest is the body of PUT /admin/tenants/{tenant}/token.
type importRequest struct {
	AccessToken  *string    `json:"access_token"`
	RefreshToken *string    `json:"refresh_token"`
	ExpiresIn    *int64     `json:"expires_in"`
	Expiry       *time.Time `json:"expiry"`
}

func (a *Admin) importToken(w http.ResponseWriter, r *http.Request) error {
	tenant, err := pathTenant(r)
	if err != nil {
		return err
	}
	var req importRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	switch {
	case req.AccessToken == nil || strings.TrimSpace(*req.AccessToken) == "":
		return badRequest("access_token is required.")
	case !printable(*req.AccessToken) || req.RefreshToken != nil && !printable(*req.RefreshToken):
		return badRequest("Tokens must be printable ASCII without spaces.")
	case req.RefreshToken != nil && *req.RefreshToken == "":
		return badRequest("refresh_token, when given, must not be empty.")
	case req.ExpiresIn != nil && req.Expiry != nil:
		return badRequest("Give expires_in or expiry, not both.")
	case req.ExpiresIn != nil && (*req.ExpiresIn < 0 || *req.ExpiresIn > 10*365*24*3600):
		return badRequest("expires_in must be a number of seconds between 0 and ten years.")
	}
	g := auth.Grant{AccessToken: *req.AccessToken}
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
		return &httperr.Error{Status: http.StatusServiceUnavailable, Code: httperr.CodeTokenUnavailable,
			Message: "The token could not be stored; nothing was changed.", RetryAfter: 5 * time.Second, Err: err}
	}
	a.log.Info("token imported", "tenant", tenant, "refreshable", g.RefreshToken != "")
	writeJSON(w, http.StatusOK, st)
	return nil
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

// tenantStatus is a call that answers the tenant's status after op (Status
// reads it, RefreshNow refreshes first).
func tenantStatus(op func(ctx context.Context, tenant string) (auth.TenantStatus, error)) handler {
	return func(w http.ResponseWriter, r *http.Request) error {
		tenant, err := pathTenant(r)
		if err != nil {
			return err
		}
		st, err := op(r.Context(), tenant)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, st)
		return nil
	}
}

func (a *Admin) forget(w http.ResponseWriter, r *http.Request) error {
	tenant, err := pathTenant(r)
	if err != nil {
		return err
	}
	if err := a.tenants.Forget(r.Context(), tenant); err != nil {
		return err
	}
	a.log.Info("tenant forgotten", "tenant", tenant)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// checkAnswer is the answer of POST /admin/tenants/{tenant}/check.
type checkAnswer struct {
	OK bool `json:"ok"`
	// Status is thanks.io's status, or the proxy's when the call did not
	// reach thanks.io (then Error is the proxy's code).
	Status  int    `json:"status"`
	Error   string `json:"error,omitempty"`
	Message string `json:"message,omitempty"`
}

// check calls thanks.io's GET /ping with the tenant's token. The answer is
// 200 whatever thanks.io said (the check itself worked), but for a tenant
// id that is invalid (400) or holds no token (404).
func (a *Admin) check(w http.ResponseWriter, r *http.Request) error {
	tenant, err := pathTenant(r)
	if err != nil {
		return err
	}
	if a.Checker == nil {
		return &httperr.Error{Status: http.StatusNotFound, Code: httperr.CodeNotFound, Message: "No such admin call."}
	}
	status, message, err := a.Checker.Check(r.Context(), tenant)
	var pe *httperr.Error
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, checkAnswer{OK: status == http.StatusOK, Status: status, Message: message})
	case errors.Is(err, auth.ErrUnknownTenant):
		// As every admin call answers a tenant without a token: 404.
		return auth.ErrUnknownTenant
	case errors.As(err, &pe) && pe.Status != httperr.StatusClientClosedRequest:
		writeJSON(w, http.StatusOK, checkAnswer{Status: pe.Status, Error: pe.Code, Message: pe.Message})
	default:
		return err
	}
	a.log.Info("connection checked", "tenant", tenant, "status", status)
	return nil
}

// connectRequest is the optional body of POST /admin/tenants/{tenant}/connect.
type connectRequest struct {
	ReturnTo *string `json:"return_to"`
}

func (a *Admin) connect(w http.ResponseWriter, r *http.Request) error {
	tenant, err := pathTenant(r)
	if err != nil {
		return err
	}
	var req connectRequest
	if r.ContentLength != 0 {
		if err := decodeBody(w, r, &req); err != nil {
			return err
		}
	}
	returnTo := ""
	if req.ReturnTo != nil {
		returnTo = *req.ReturnTo
	}
	u, err := a.tenants.Connect(r.Context(), tenant, returnTo)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct {
		AuthorizeURL string `json:"authorize_url"`
	}{u})
	return nil
}

func (a *Admin) list(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			return badRequest("limit must be a number from 1 to 1000.")
		}
		limit = n
	}
	after := q.Get("after")
	if after != "" && !httperr.ValidTenant(after) {
		return badRequest("after must be a tenant id.")
	}
	var (
		ids  []string
		next string
		more bool
		err  error
	)
	switch state := auth.State(q.Get("state")); state {
	case "":
		ids, more, err = a.tenants.List(r.Context(), after, limit)
		if more && len(ids) > 0 {
			next = ids[len(ids)-1]
		}
	case auth.StateActive, auth.StateReauthorizationRequired:
		ids, next, more, err = a.tenants.ListByState(r.Context(), state, after, limit)
	default:
		return badRequest("state must be active or reauthorization_required.")
	}
	if err != nil {
		return err
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
	return nil
}

// errorFor maps an error of a handler to its answer: a *httperr.Error is
// answered as it is; an error of TenantAdmin by what it means. A caller
// that went away gets httperr.TokenError's answer, which is where that
// decision is made.
func (a *Admin) errorFor(err error) *httperr.Error {
	var (
		pe *httperr.Error
		ce *auth.ConnectError
	)
	switch {
	case errors.As(err, &pe):
		return pe
	case errors.Is(err, auth.ErrUnknownTenant):
		return &httperr.Error{Status: http.StatusNotFound, Code: httperr.CodeUnknownTenant, Message: "No token is held for this tenant."}
	case errors.Is(err, auth.ErrReauthorizationRequired):
		return &httperr.Error{Status: http.StatusConflict, Code: httperr.CodeReauthorizationRequired,
			Message: "The tenant's authorization was revoked; connect it again or import a new token."}
	case errors.Is(err, auth.ErrNoBetterToken):
		return &httperr.Error{Status: http.StatusConflict, Code: httperr.CodeNotRefreshable,
			Message: "The tenant's token has no refresh token (a personal access token) and cannot be refreshed."}
	case errors.Is(err, auth.ErrNotConfigured):
		return &httperr.Error{Status: http.StatusConflict, Code: httperr.CodeNotConfigured,
			Message: "The OAuth client is not configured: set OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET and OAUTH_REDIRECT_URL."}
	case errors.As(err, &ce):
		return &httperr.Error{Status: http.StatusBadRequest, Code: ce.Code, Message: ce.Message}
	}
	e := httperr.TokenError(err)
	if e.Status != httperr.StatusClientClosedRequest {
		a.log.Warn("admin call failed", "code", e.Code, "err", err)
	}
	return e
}

// decodeBody decodes exactly one JSON object of at most maxAdminBody bytes
// with no unknown fields into v.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(strings.ToLower(ct), "application/json") {
		return &httperr.Error{Status: http.StatusUnsupportedMediaType, Code: httperr.CodeBadRequest, Message: "The body must be application/json."}
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
			return httperr.BodyError(err)
		case errors.As(err, &tooLarge):
			return &httperr.Error{Status: http.StatusRequestEntityTooLarge, Code: httperr.CodeTooLarge,
				Message: fmt.Sprintf("The body is larger than %d bytes.", maxAdminBody)}
		case errors.As(err, &typeErr):
			return &httperr.Error{Status: http.StatusBadRequest, Code: httperr.CodeBadRequest,
				Message: fmt.Sprintf("The field %q has the wrong type.", typeErr.Field)}
		case errors.As(err, &syntaxErr), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
			return &httperr.Error{Status: http.StatusBadRequest, Code: httperr.CodeBadRequest, Message: "The body is not valid JSON."}
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return &httperr.Error{Status: http.StatusBadRequest, Code: httperr.CodeBadRequest,
				Message: "The body has an unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ") + "."}
		default:
			return &httperr.Error{Status: http.StatusBadRequest, Code: httperr.CodeBadRequest, Message: "The body could not be decoded."}
		}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return &httperr.Error{Status: http.StatusRequestEntityTooLarge, Code: httperr.CodeTooLarge,
				Message: fmt.Sprintf("The body is larger than %d bytes.", maxAdminBody)}
		}
		return &httperr.Error{Status: http.StatusBadRequest, Code: httperr.CodeBadRequest, Message: "The body must hold one JSON object and nothing after it."}
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
	pruned  time.Time // when expired windows were last removed
}

// maxFailureClients bounds the addresses whose failures are counted at once.
const maxFailureClients = 10_000

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
	if len(l.clients) >= maxFailureClients {
		// Expired windows go at most once a window (a scan per failure
		// would cost O(addresses) under the lock); if the map is still
		// full, arbitrary entries go: the bound on memory wins over the
		// count of one address, and the right token is never counted.
		if now.Sub(l.pruned) >= l.window {
			for k, w := range l.clients {
				if now.Sub(w.start) >= l.window {
					delete(l.clients, k)
				}
			}
			l.pruned = now
		}
		for k := range l.clients {
			if len(l.clients) < maxFailureClients {
				break
			}
			delete(l.clients, k)
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
