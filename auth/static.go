package auth

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// StaticTenant serves one tenant's static access token (a thanks.io
// personal access token given to the process, THANKSIO_TOKEN), held in
// memory only, in front of the tokens of every other tenant. The token is
// never stored, refreshed or logged. It is safe for concurrent use.
type StaticTenant struct {
	tenant string
	others *Tokens
	log    *slog.Logger

	authorization atomic.Pointer[string] // "Bearer " + the token

	mu          sync.Mutex
	lastRefusal time.Time // when a refusal was last logged
}

// refusalLogEvery bounds the log lines about thanks.io refusing the static
// token: a caller that keeps calling must not flood the log.
const refusalLogEvery = time.Minute

// NewStaticTenant returns tenant's static token in front of others (nil:
// no other tenant has a token).
func NewStaticTenant(tenant, token string, others *Tokens, log *slog.Logger) *StaticTenant {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &StaticTenant{tenant: tenant, others: others, log: log}
	s.Set(token)
	return s
}

// Set replaces the static token (its file changed).
func (s *StaticTenant) Set(token string) {
	a := bearerPrefix + token
	s.authorization.Store(&a)
}

// Authorization returns the Authorization header of tenant's token.
func (s *StaticTenant) Authorization(ctx context.Context, tenant string) (string, error) {
	if tenant == s.tenant {
		return *s.authorization.Load(), nil
	}
	if s.others == nil {
		return "", ErrUnknownTenant
	}
	return s.others.Authorization(ctx, tenant)
}

// Refused returns the token to use after the upstream refused token. For
// the static tenant that is the current token when the file changed since
// the refused one was taken; otherwise the refusal stands (thanks.io's 401
// reaches the caller), and it is logged at most once a minute.
func (s *StaticTenant) Refused(ctx context.Context, tenant, token string) (string, error) {
	if tenant != s.tenant {
		if s.others == nil {
			return "", ErrNoBetterToken
		}
		return s.others.Refused(ctx, tenant, token)
	}
	if current := (*s.authorization.Load())[len(bearerPrefix):]; current != token {
		return current, nil
	}
	s.mu.Lock()
	now := time.Now()
	logIt := now.Sub(s.lastRefusal) >= refusalLogEvery
	if logIt {
		s.lastRefusal = now
	}
	s.mu.Unlock()
	if logIt {
		s.log.Error("thanks.io refused the static token of THANKSIO_TOKEN or THANKSIO_TOKEN_FILE: callers get thanks.io's 401 until it is replaced (logged at most once a minute)", "tenant", tenant)
	}
	return "", ErrNoBetterToken
}
