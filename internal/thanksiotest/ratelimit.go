package thanksiotest

import (
	"math"
	"net/http"
	"strconv"
	"time"
)

// rateWindow is one account's fixed window, as Laravel's rate limiter
// keeps it: it starts at the first request after the last one ended.
type rateWindow struct {
	end   time.Time
	count int
}

// SetRateLimit makes the API allow each account (a grant, whatever its
// rotations, or a personal access token) at most n requests per period,
// counted as Laravel's throttle middleware counts them: in fixed windows
// that start at an account's first request, then 429 with Retry-After,
// X-RateLimit-Reset, X-RateLimit-Limit and X-RateLimit-Remaining: 0 until
// the window ends. Every answer within the limit carries X-RateLimit-Limit
// and X-RateLimit-Remaining. Only authorized requests count. n <= 0 turns
// the limit off, and forgets the windows.
func (s *Server) SetRateLimit(n int, period time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rateLimit, s.ratePeriod = n, period
	s.windows = make(map[any]*rateWindow)
}

// RateLimited returns how many API requests were answered 429 so far.
func (s *Server) RateLimited() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.apiRequests {
		if r.RateLimited {
			n++
		}
	}
	return n
}

// accountLocked returns what the limit counts an authorized token's
// requests under. s.mu must be held.
func (s *Server) accountLocked(token string) any {
	if g := s.grants.byAccess[token]; g != nil {
		return g
	}
	return token
}

// throttleLocked counts an authorized request of token's account against
// the limit, and returns the rate-limit headers of its answer, the end of
// the window it was counted in, and whether it is refused. s.mu must be
// held.
func (s *Server) throttleLocked(token string) (http.Header, time.Time, bool) {
	if s.rateLimit <= 0 {
		return nil, time.Time{}, false
	}
	now := s.now()
	key := s.accountLocked(token)
	w := s.windows[key]
	if w == nil || !now.Before(w.end) {
		w = &rateWindow{end: now.Add(s.ratePeriod)}
		s.windows[key] = w
	}
	h := http.Header{"X-Ratelimit-Limit": {strconv.Itoa(s.rateLimit)}}
	if w.count >= s.rateLimit {
		retry := int64(math.Ceil(w.end.Sub(now).Seconds()))
		h.Set("Retry-After", strconv.FormatInt(retry, 10))
		h.Set("X-Ratelimit-Reset", strconv.FormatInt(now.Unix()+retry, 10))
		h.Set("X-Ratelimit-Remaining", "0")
		return h, w.end, true
	}
	w.count++
	h.Set("X-Ratelimit-Remaining", strconv.Itoa(s.rateLimit-w.count))
	return h, w.end, false
}
