package auth

import (
	"errors"
	"fmt"
	"time"
)

// Errors returned by Tokens. Test them with errors.Is; the proxy turns each
// into its own error code.
var (
	// ErrUnknownTenant means no token is held for the tenant.
	ErrUnknownTenant = errors.New("auth: no token held for the tenant")
	// ErrReauthorizationRequired means the tenant's refresh token was revoked
	// (or its token expired with no way to refresh it): the account owner must
	// connect again, or an operator must import a new token.
	ErrReauthorizationRequired = errors.New("auth: the tenant must be connected again")
	// ErrTokenUnavailable means no usable token can be had right now; an
	// *UnavailableError says when to try again.
	ErrTokenUnavailable = errors.New("auth: no usable token right now")
	// ErrNoBetterToken means the upstream refused a token and nothing better
	// is known: the refusal should reach the caller as it is.
	ErrNoBetterToken = errors.New("auth: no other token to offer")
	// ErrNotConfigured means the OAuth client (OAUTH_CLIENT_ID,
	// OAUTH_CLIENT_SECRET and, to connect, OAUTH_REDIRECT_URL) is not set.
	ErrNotConfigured = errors.New("auth: the OAuth client is not configured")
)

// UnavailableError is an ErrTokenUnavailable with its cause and a hint of
// when a retry may succeed.
type UnavailableError struct {
	// Reason is a short sentence for the caller; it names no secret.
	Reason string
	// RetryAfter is how long a caller should wait before trying again.
	RetryAfter time.Duration
	// Err is the cause, for logs; it names no secret either.
	Err error
}

func (e *UnavailableError) Error() string {
	if e.Err == nil {
		return "auth: " + e.Reason
	}
	return fmt.Sprintf("auth: %s: %v", e.Reason, e.Err)
}

// Is reports whether target is ErrTokenUnavailable.
func (e *UnavailableError) Is(target error) bool { return target == ErrTokenUnavailable }

func (e *UnavailableError) Unwrap() error { return e.Err }

func unavailable(reason string, retryAfter time.Duration, err error) error {
	if retryAfter < time.Second {
		retryAfter = time.Second
	}
	return &UnavailableError{Reason: reason, RetryAfter: retryAfter, Err: err}
}
