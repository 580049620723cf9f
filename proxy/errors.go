package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"

	"thanksio-proxy/internal/httperr"
)

// The proxy's own answers are httperr's, which the admin API gives too.
// Package proxy names them again for its callers, which cannot import an
// internal package.

// ErrorHeader names the header that marks an answer as the proxy's own. The
// proxy owns it: it is removed from upstream responses.
const ErrorHeader = httperr.Header

// The proxy's error codes.
const (
	CodeMissingTenant           = httperr.CodeMissingTenant
	CodeInvalidTenant           = httperr.CodeInvalidTenant
	CodeInvalidPath             = httperr.CodeInvalidPath
	CodeUnknownTenant           = httperr.CodeUnknownTenant
	CodeReauthorizationRequired = httperr.CodeReauthorizationRequired
	CodeTokenUnavailable        = httperr.CodeTokenUnavailable
	CodeUpstreamUnreachable     = httperr.CodeUpstreamUnreachable
	CodeUpstreamTimeout         = httperr.CodeUpstreamTimeout
	CodeUnauthorized            = httperr.CodeUnauthorized
	CodeInvalidCaller           = httperr.CodeInvalidCaller
	CodeTenantNotAllowed        = httperr.CodeTenantNotAllowed
	CodeTooManyAttempts         = httperr.CodeTooManyAttempts
	CodeBadRequest              = httperr.CodeBadRequest
	CodeTooLarge                = httperr.CodeTooLarge
	CodeNotFound                = httperr.CodeNotFound
	CodeMethodNotAllowed        = httperr.CodeMethodNotAllowed
	CodeRequestTimeout          = httperr.CodeRequestTimeout
	CodeConcurrencyLimited      = httperr.CodeConcurrencyLimited
	CodeRateLimited             = httperr.CodeRateLimited
	CodeNotConfigured           = httperr.CodeNotConfigured
	CodeNotRefreshable          = httperr.CodeNotRefreshable
	// CodeClientClosedRequest is logged and counted, never sent: the caller
	// went away.
	CodeClientClosedRequest = httperr.CodeClientClosedRequest
)

// DataPlaneCodes are the codes the data plane answers (or, for
// CodeClientClosedRequest, logs), for metrics that list every one from the
// start.
var DataPlaneCodes = []string{
	CodeMissingTenant, CodeInvalidTenant, CodeInvalidPath, CodeUnknownTenant,
	CodeReauthorizationRequired, CodeTokenUnavailable, CodeUpstreamUnreachable,
	CodeUpstreamTimeout, CodeInvalidCaller, CodeTenantNotAllowed, CodeBadRequest,
	CodeMethodNotAllowed, CodeRequestTimeout, CodeConcurrencyLimited, CodeRateLimited, CodeClientClosedRequest,
}

// Error is an answer of the proxy's own: what the caller sees (Status, Code,
// Message) apart from what is logged (Err).
type Error = httperr.Error

// StatusClientClosedRequest is logged when the caller hung up first.
const StatusClientClosedRequest = httperr.StatusClientClosedRequest

// WriteError is httperr.Write: it answers e as JSON with the proxy's error
// header.
func WriteError(w http.ResponseWriter, e *Error) { httperr.Write(w, e) }

// TokenError is httperr.TokenError: it maps an error of auth.Tokens to the
// proxy's answer.
func TokenError(err error) *Error { return httperr.TokenError(err) }

// BodyError is httperr.BodyError: it maps an error reading the caller's
// request body to the proxy's answer (408 or 400, closing the connection).
func BodyError(err error) *Error { return httperr.BodyError(err) }

// ValidTenant is httperr.ValidTenant: it reports whether id is a
// well-formed tenant id, [A-Za-z0-9._-]{1,128} and neither "." nor "..".
func ValidTenant(id string) bool { return httperr.ValidTenant(id) }

// errSwitchingProtocols is the upstream's 101, which the proxy never relays:
// it would hand the caller a raw connection to the upstream, past every
// check of the proxy.
var errSwitchingProtocols = errors.New("the upstream answered 101 Switching Protocols")

// upstreamError maps an error of the round trip to the proxy's answer. A
// caller that went away gets nothing; the status 499 is only logged.
func upstreamError(err error) *Error {
	var te interface{ Timeout() bool }
	var pe *Error
	switch {
	case errors.As(err, &pe):
		return pe
	case errors.Is(err, errSwitchingProtocols):
		return &Error{Status: http.StatusBadGateway, Code: CodeUpstreamUnreachable,
			Message: "thanks.io answered with a protocol switch, which the proxy does not relay.", Err: err}
	case errors.Is(err, context.Canceled):
		return httperr.ClientGone(err)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &te) && te.Timeout():
		return &Error{Status: http.StatusGatewayTimeout, Code: CodeUpstreamTimeout,
			Message: "thanks.io did not answer in time.", Err: err}
	default:
		var oe *net.OpError
		msg := "thanks.io could not be reached."
		if errors.As(err, &oe) && oe.Op == "dial" {
			msg = "thanks.io could not be reached: the connection failed."
		}
		return &Error{Status: http.StatusBadGateway, Code: CodeUpstreamUnreachable, Message: msg, Err: err}
	}
}
