// Package httperr is the proxy's own error answer, shared by its two HTTP
// edges, the data plane (package proxy) and the control plane (package
// admin): the JSON body {"error": code, "message": sentence}, the
// X-Thanksio-Proxy-Error header, the codes, and the rules both edges apply
// in the same way (which tenant ids are valid, how an error of package auth
// or of a request body is answered).
package httperr

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"strconv"
	"time"

	"thanksio-proxy/auth"
)

// Header names the header that marks an answer as the proxy's own. The
// proxy owns it: it is removed from upstream responses.
const Header = "X-Thanksio-Proxy-Error"

// The proxy's error codes.
const (
	CodeMissingTenant           = "missing_tenant"
	CodeInvalidTenant           = "invalid_tenant"
	CodeInvalidPath             = "invalid_path"
	CodeUnknownTenant           = "unknown_tenant"
	CodeReauthorizationRequired = "reauthorization_required"
	CodeTokenUnavailable        = "token_unavailable"
	CodeUpstreamUnreachable     = "upstream_unreachable"
	CodeUpstreamTimeout         = "upstream_timeout"
	CodeUnauthorized            = "unauthorized"
	CodeInvalidCaller           = "invalid_caller"
	CodeTenantNotAllowed        = "tenant_not_allowed"
	CodeTooManyAttempts         = "too_many_attempts"
	CodeBadRequest              = "bad_request"
	CodeTooLarge                = "request_too_large"
	CodeNotFound                = "not_found"
	CodeMethodNotAllowed        = "method_not_allowed"
	CodeRequestTimeout          = "request_timeout"
	CodeConcurrencyLimited      = "concurrency_limited"
	CodeRateLimited             = "rate_limited"
	CodeNotConfigured           = "not_configured"
	CodeNotRefreshable          = "not_refreshable"
	CodeStaticTenant            = "static_tenant"
	// CodeClientClosedRequest is logged and counted, never sent: the caller
	// went away.
	CodeClientClosedRequest = "client_closed_request"
)

// StatusClientClosedRequest is logged when the caller hung up first.
const StatusClientClosedRequest = 499

// Error is an answer of the proxy's own: what the caller sees (Status, Code,
// Message) apart from what is logged (Err).
type Error struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration
	// Allow, when set, is the Allow header of a 405.
	Allow string
	// Close closes the connection after the answer: what is left of the
	// request on it cannot be trusted to frame the next one.
	Close bool
	Err   error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Code + ": " + e.Err.Error()
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// Write answers e as JSON with the proxy's error header.
func Write(w http.ResponseWriter, e *Error) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(Header, e.Code)
	if e.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int((e.RetryAfter+time.Second-1)/time.Second)))
	}
	if e.Allow != "" {
		h.Set("Allow", e.Allow)
	}
	if e.Close {
		h.Set("Connection", "close")
	}
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}{e.Code, e.Message})
}

// ValidTenant reports whether id is a well-formed tenant id:
// [A-Za-z0-9._-]{1,128}, and neither "." nor "..". Any other id is answered
// CodeInvalidTenant.
func ValidTenant(id string) bool {
	if len(id) == 0 || len(id) > 128 || id == "." || id == ".." {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch b := id[i]; {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', b == '.', b == '_', b == '-':
		default:
			return false
		}
	}
	return true
}

// TokenError maps an error of auth.Tokens to the proxy's answer.
func TokenError(err error) *Error {
	var ue *auth.UnavailableError
	switch {
	case errors.Is(err, auth.ErrUnknownTenant):
		return &Error{Status: http.StatusUnauthorized, Code: CodeUnknownTenant,
			Message: "No thanks.io token is held for this tenant.", Err: err}
	case errors.Is(err, auth.ErrReauthorizationRequired):
		return &Error{Status: http.StatusUnauthorized, Code: CodeReauthorizationRequired,
			Message: "The tenant's thanks.io authorization was revoked; the account owner must connect again.", Err: err}
	case errors.As(err, &ue):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeTokenUnavailable,
			Message: "No usable thanks.io token right now: " + ue.Reason + ".", RetryAfter: ue.RetryAfter, Err: err}
	case errors.Is(err, context.Canceled):
		// The caller hung up while its token was being fetched: not a
		// token that is unavailable.
		return ClientGone(err)
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeTokenUnavailable,
			Message: "No usable thanks.io token could be had in time.", RetryAfter: time.Second, Err: err}
	default:
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeTokenUnavailable,
			Message: "No usable thanks.io token right now.", RetryAfter: 5 * time.Second, Err: err}
	}
}

// BodyError maps an error reading the caller's request body to the proxy's
// answer: 408 when the body did not arrive by REQUEST_BODY_TIMEOUT, 400
// otherwise. Either way the connection closes, since the rest of the body
// is still on it.
func BodyError(err error) *Error {
	var te interface{ Timeout() bool }
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &te) && te.Timeout() {
		return &Error{Status: http.StatusRequestTimeout, Code: CodeRequestTimeout,
			Message: "The request body did not arrive in time.", Close: true, Err: err}
	}
	return &Error{Status: http.StatusBadRequest, Code: CodeBadRequest,
		Message: "The request body could not be read.", Close: true, Err: err}
}

// ClientGone is the answer to a caller that went away (err is its
// context's cancellation): 499, logged and counted, never sent. It is the
// one place that answer is made; TokenError gives it, and so does the data
// plane's mapping of upstream errors.
func ClientGone(err error) *Error {
	return &Error{Status: StatusClientClosedRequest, Code: CodeClientClosedRequest,
		Message: "The caller went away.", Err: err}
}
