package thanksiotest

import (
	"crypto/rand"
	"encoding/hex"
	"time"
)

// Prefixes of the random values a Server issues, so that a test can tell
// them apart at a glance. The rest of each value is 32 hex digits (128 random
// bits).
const (
	AccessTokenPrefix   = "at_"
	RefreshTokenPrefix  = "rt_"
	PersonalTokenPrefix = "pat_"
	CodePrefix          = "ac_"
)

// Token is an access and refresh token pair as the server issued it.
type Token struct {
	AccessToken  string
	RefreshToken string
	// ExpiresIn is the lifetime of AccessToken; the token endpoint announces
	// it in whole seconds, at least 1.
	ExpiresIn time.Duration
	// Expiry is when AccessToken stops being valid, by Options.Now.
	Expiry time.Time
}

// grant is one authorization: the chain of access and refresh tokens that
// descends from one consent (or one NewGrant) through rotations. Only the
// current pair can be valid; every earlier one was revoked by its rotation.
type grant struct {
	access        string
	refresh       string
	lifetime      time.Duration
	expiry        time.Time
	accessRevoked bool // the current access token alone was revoked
	revoked       bool // the whole grant was revoked
}

// grantIndex finds the grant that any token ever issued belongs to, so that
// a rotated token is told apart from an unknown one.
type grantIndex struct {
	byAccess  map[string]*grant
	byRefresh map[string]*grant
	// personal maps a personal access token to whether it is still valid.
	personal map[string]bool
}

func newGrantIndex() grantIndex {
	return grantIndex{
		byAccess:  make(map[string]*grant),
		byRefresh: make(map[string]*grant),
		personal:  make(map[string]bool),
	}
}

// randomValue returns prefix followed by 32 random hex digits.
func randomValue(prefix string) string {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand crashes the program instead)
	return prefix + hex.EncodeToString(b[:])
}

// expiresInSeconds returns the expires_in announced for a lifetime: whole
// seconds, at least 1.
func expiresInSeconds(d time.Duration) int64 {
	return max(int64(d/time.Second), 1)
}

// newGrantLocked mints a grant with a fresh pair. s.mu must be held.
func (s *Server) newGrantLocked() *grant {
	g := &grant{}
	s.issueLocked(g)
	return g
}

// issueLocked gives g a fresh pair, which revokes its previous one at once.
// s.mu must be held.
func (s *Server) issueLocked(g *grant) {
	g.access = randomValue(AccessTokenPrefix)
	g.refresh = randomValue(RefreshTokenPrefix)
	g.lifetime = s.accessLifetime
	g.expiry = s.now().Add(g.lifetime)
	g.accessRevoked = false
	s.grants.byAccess[g.access] = g
	s.grants.byRefresh[g.refresh] = g
}

// rotateLocked performs a refresh with refreshToken: it returns the grant
// with its new pair, or false if refreshToken is not the current refresh
// token of a live grant. With StrictReuse, a rotated-away refresh token
// revokes its grant. s.mu must be held.
func (s *Server) rotateLocked(refreshToken string) (*grant, bool) {
	g := s.grants.byRefresh[refreshToken]
	if g == nil || g.revoked {
		return nil, false
	}
	if g.refresh != refreshToken {
		s.reuses++
		if s.opts.StrictReuse {
			g.revoked = true
		}
		return nil, false
	}
	s.issueLocked(g)
	return g, true
}

// tokenOf returns g's current pair.
func tokenOf(g *grant) Token {
	return Token{
		AccessToken:  g.access,
		RefreshToken: g.refresh,
		ExpiresIn:    g.lifetime,
		Expiry:       g.expiry,
	}
}

// accessValidLocked reports whether token is a usable access token. s.mu
// must be held.
func (s *Server) accessValidLocked(token string) bool {
	if valid, ok := s.grants.personal[token]; ok {
		return valid
	}
	g := s.grants.byAccess[token]
	return g != nil && !g.revoked && !g.accessRevoked && g.access == token && s.now().Before(g.expiry)
}

// NewGrant mints a fresh grant directly, as if an account had just been
// connected, and returns its pair. It does not count as a token call.
func (s *Server) NewGrant() Token {
	s.mu.Lock()
	defer s.mu.Unlock()
	return tokenOf(s.newGrantLocked())
}

// NewPersonalAccessToken mints a static access token that never expires and
// has no refresh token, like a thanks.io Personal Access Token. Only
// RevokeAccess ends it.
func (s *Server) NewPersonalAccessToken() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := randomValue(PersonalTokenPrefix)
	s.grants.personal[t] = true
	return t
}

// Rotate refreshes the grant of refreshToken as a successful refresh_token
// request would, as when another client uses the same grant behind the
// test's back, and returns the new pair. It reports false, and changes
// nothing (except under StrictReuse), when refreshToken is not the current
// refresh token of a live grant. It does not count as a token call and no
// fault applies to it.
func (s *Server) Rotate(refreshToken string) (Token, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.rotateLocked(refreshToken)
	if !ok {
		return Token{}, false
	}
	return tokenOf(g), true
}

// Revoke revokes the grant that refreshToken belongs to, whether it is the
// grant's current refresh token or one rotated away: the grant's current
// access and refresh tokens stop working. An unknown token is ignored.
func (s *Server) Revoke(refreshToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.grants.byRefresh[refreshToken]; g != nil {
		g.revoked = true
	}
}

// RevokeAccess revokes one access token (of a grant, or a personal access
// token) and leaves the grant's refresh token usable, as when the upstream
// has dropped an access token that its holder still caches. An unknown or
// rotated-away token is ignored.
func (s *Server) RevokeAccess(accessToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.grants.personal[accessToken]; ok {
		s.grants.personal[accessToken] = false
		return
	}
	if g := s.grants.byAccess[accessToken]; g != nil && g.access == accessToken {
		g.accessRevoked = true
	}
}

// IsRevoked reports whether refreshToken can no longer be used: its grant
// was revoked, or it was rotated away. An unknown token is reported revoked
// too, since the token endpoint refuses it.
func (s *Server) IsRevoked(refreshToken string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.grants.byRefresh[refreshToken]
	return g == nil || g.revoked || g.refresh != refreshToken
}

// AccessValid reports whether the API accepts token now: a grant's current,
// unexpired and unrevoked access token, or an unrevoked personal access
// token.
func (s *Server) AccessValid(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accessValidLocked(token)
}

// CurrentToken returns the current pair of the grant that token (any access
// or refresh token it ever issued) belongs to, and reports whether there is
// such a grant and it is not revoked. A test uses it to learn the winner of
// a rotation it did not perform.
func (s *Server) CurrentToken(token string) (Token, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.grants.byRefresh[token]
	if g == nil {
		g = s.grants.byAccess[token]
	}
	if g == nil || g.revoked {
		return Token{}, false
	}
	return tokenOf(g), true
}
