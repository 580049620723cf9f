// Package store keeps the proxy's state: one sealed token record per tenant, the
// per-tenant refresh lock, an index of tenants by token expiry, the one-time OAuth
// states of the connect flow, and a channel that tells every replica when a
// tenant's record changed.
//
// Two implementations satisfy the same contract: Redis (any go-redis
// UniversalClient: standalone, Sentinel or Cluster), for any number of replicas,
// and Memory, for one process. Only this package imports go-redis; callers see
// ErrNotFound, ErrConflict and ErrSealed, never redis.Nil.
//
// A tenant's versions never restart: Delete leaves a tombstone that keeps the
// version, so that a writer that read a record before it was deleted cannot
// overwrite the record imported after it. The expiry index (DueBefore), the
// per-state counts (CountByState) and the invalidations are hints kept
// beside the records: the token lifecycle re-reads a record under the
// tenant's lock before it acts on one.
package store

import (
	"errors"
	"time"
	"unsafe"
)

// Errors returned by every implementation. Test them with errors.Is.
var (
	// ErrNotFound means the store holds no record (or no OAuth state) under that name.
	ErrNotFound = errors.New("store: not found")
	// ErrConflict means a conditional write lost: the record's version was not the
	// one the writer read. Re-read and decide again.
	ErrConflict = errors.New("store: version conflict")
	// ErrSealed means a record exists but no configured key opens it (a wrong or
	// retired TOKEN_ENCRYPTION_KEY, or a record tampered with or moved from
	// another tenant). Nothing was changed.
	ErrSealed = errors.New("store: record does not open with any configured key")
)

// AnyVersion, passed as the expected version to Put, writes whatever the
// stored version is (an operator's import).
const AnyVersion int64 = -1

// State is a tenant's health.
type State string

// The states a tenant can be in.
const (
	// StateActive: the tenant has a token that is used and refreshed.
	StateActive State = "active"
	// StateReauthorizationRequired: the refresh token was revoked; nothing is
	// sent to the token endpoint until the tenant is connected again or a new
	// token is imported.
	StateReauthorizationRequired State = "reauthorization_required"
)

// TokenRecord is what the store keeps for one tenant. It is sealed as a whole
// (AES-256-GCM, the tenant id as additional data) in Redis.
type TokenRecord struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token,omitempty"`
	// Authorization, when a store sets it, is "Bearer " + AccessToken: a
	// store that keeps records in memory hands out the one copy it holds,
	// so that a cache of the header value need not make a second. It is
	// never stored nor sealed; Put ignores it.
	Authorization string `json:"-"`
	// Expiry is when the access token stops working; zero means never (a
	// personal access token).
	Expiry time.Time `json:"expiry,omitzero"`
	// State is the tenant's health. The store keeps it as written; its
	// indexes (DueBefore, CountByState) count an empty State as StateActive.
	State State `json:"state"`
	// Version is set by the store: 1 for the first write, one more on every
	// write. It never restarts: a record written after a Delete continues
	// from the deleted record's version. It is not part of the sealed data;
	// Put ignores the field.
	Version int64 `json:"-"`

	UpdatedAt   time.Time `json:"updated_at,omitzero"`
	LastRefresh time.Time `json:"last_refresh,omitzero"`
	// RefreshForced reports that the last refresh was forced by thanks.io
	// refusing the access token before it expired. Kept in the record, so
	// that every replica knows a refused token already caused its one
	// rotation.
	RefreshForced bool `json:"refresh_forced,omitempty"`
	// RestoredAt is when a replica wrote the record back after the store
	// lost its data (zero otherwise). The lock of a refresh in flight was
	// lost with the data, and its holder takes it back only at its next
	// renewal: until then, the refresh token of a written-back record may
	// be being redeemed, and must not be presented again.
	RestoredAt time.Time `json:"restored_at,omitzero"`
	// LastError says why the last refresh failed, in words that hold no secret;
	// empty after a success.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// Failures counts the tenant's consecutive failed refreshes (not
	// revocations); a successful refresh, or a new grant, resets it.
	Failures int `json:"failures,omitempty"`
}

// Refreshable reports whether the record can be refreshed with the
// refresh-token grant.
func (r TokenRecord) Refreshable() bool { return r.RefreshToken != "" }

// WithAuthorization returns r with Authorization set to "Bearer " and the
// access token, and AccessToken and RefreshToken parts of one string that
// holds both tokens: the tokens held once, in one allocation, in the form a
// request carries them. A record already in that form is returned as it is,
// so that whoever holds its strings shares them.
func (r TokenRecord) WithAuthorization() TokenRecord {
	const prefix = "Bearer "
	if r.packed() {
		return r
	}
	text := prefix + r.AccessToken + r.RefreshToken
	n := len(prefix) + len(r.AccessToken)
	r.Authorization, r.AccessToken, r.RefreshToken = text[:n], text[len(prefix):n], text[n:]
	return r
}

// packed reports whether r is as WithAuthorization returns it: its
// Authorization is "Bearer " and AccessToken, AccessToken is the end of it,
// and RefreshToken (unless empty) follows it in the same allocation.
func (r TokenRecord) packed() bool {
	const prefix = "Bearer "
	a := r.Authorization
	if len(a) != len(prefix)+len(r.AccessToken) || a[:len(prefix)] != prefix {
		return false
	}
	// The access token is the end of a itself: one address and one length
	// are the same bytes.
	if r.AccessToken != "" && unsafe.StringData(a[len(prefix):]) != unsafe.StringData(r.AccessToken) {
		return false
	}
	// Addresses compared as numbers: no pointer is made past a's end.
	end := uintptr(unsafe.Pointer(unsafe.StringData(a))) + uintptr(len(a))
	return r.RefreshToken == "" || uintptr(unsafe.Pointer(unsafe.StringData(r.RefreshToken))) == end
}

// OAuthState is the server side of one connect flow, kept until the
// callback consumes it or it expires.
type OAuthState struct {
	Tenant       string `json:"tenant"`
	ReturnTo     string `json:"return_to,omitempty"`
	CodeVerifier string `json:"code_verifier"`
	// RedirectURL is the redirect_uri sent with the authorize request; the code
	// exchange must send the same one.
	RedirectURL string    `json:"redirect_url"`
	CreatedAt   time.Time `json:"created_at"`
}

// Invalidation tells subscribers that a tenant's record was written
// (Version is the new version) or deleted (Deleted, and Version is the
// version its tombstone keeps: every version up to it is dead), or, with
// Tenant empty, carries a heartbeat.
type Invalidation struct {
	Tenant  string
	Version int64
	Deleted bool
	// Heartbeat is set, and Tenant empty, on a message sent by Heartbeat:
	// the id its sender gave. A subscriber that hears its own heartbeats
	// knows that invalidations reach it.
	Heartbeat string
}
