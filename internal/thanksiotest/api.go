package thanksiotest

import (
	"bytes"
	"io"
	"maps"
	"net/http"
	"path"
	"slices"
	"strings"
	"time"
)

// APIRequest is a request received outside the OAuth endpoints, as
// recorded: one to the API, or one that fell outside it (answered 404).
type APIRequest struct {
	// Method, Host and RequestURI are as the server received them.
	Method, Host, RequestURI string
	// Path is r.URL.Path (decoded) and RawPath is r.URL.RawPath (set only
	// when the path's encoding is not the default one).
	Path, RawPath string
	// RawQuery is the query, without '?'.
	RawQuery string
	// Header is a copy of the request's header.
	Header http.Header
	// Body is the request's body, up to MaxAPIBody bytes.
	Body []byte
	// BodyTruncated reports whether the body was longer than MaxAPIBody.
	BodyTruncated bool
	// Token is the bearer token presented in the first Authorization
	// header, or "" if there was none.
	Token string
	// Authorized reports whether the request carried exactly one
	// Authorization header with a valid access token when it arrived.
	Authorized bool
	// Time is when the request arrived, by Options.Now.
	Time time.Time
	// RateLimited reports whether the request was answered 429 for being
	// over the account's rate limit (SetRateLimit).
	RateLimited bool
	// RateWindow is the end of the account's window the request was
	// counted in (SetRateLimit); zero when no limit applied to it.
	RateWindow time.Time
}

// clone returns a deep copy of ar.
func (ar APIRequest) clone() APIRequest {
	ar.Header = ar.Header.Clone()
	ar.Body = bytes.Clone(ar.Body)
	return ar
}

// HandleAPI makes h answer the API requests that pattern matches, in place
// of the default answer. The pattern has http.ServeMux's syntax with a path
// relative to /api/v2 ("GET /orders/{id}/track"); a path that already starts
// with /api/v2/ is taken as it is. h sees the full request path, path values
// included, and a body it can read again (the server has already read and
// recorded it). The token check comes first: h runs only for authorized
// requests. Registering a pattern again replaces its handler. HandleAPI
// panics on a pattern that http.ServeMux refuses or that conflicts with
// another one.
func (s *Server) HandleAPI(pattern string, h http.HandlerFunc) {
	full := apiPattern(pattern)
	s.mu.Lock()
	defer s.mu.Unlock()
	handlers := maps.Clone(s.apiHandlers)
	handlers[full] = h
	mux := http.NewServeMux()
	for _, p := range slices.Sorted(maps.Keys(handlers)) {
		mux.HandleFunc(p, handlers[p])
	}
	s.apiHandlers, s.apiMux = handlers, mux
}

// apiPattern puts pattern's path under /api/v2.
func apiPattern(pattern string) string {
	method, rest, found := strings.Cut(pattern, " ")
	if !found {
		method, rest = "", pattern
	}
	rest = strings.TrimLeft(rest, " \t")
	i := strings.IndexByte(rest, '/')
	if i < 0 {
		panic("thanksiotest: HandleAPI: pattern " + pattern + " has no path")
	}
	host, p := rest[:i], rest[i:]
	if !inAPI(p) {
		p = apiBasePath + p
	}
	if method != "" {
		return method + " " + host + p
	}
	return host + p
}

// inAPI reports whether p is the API's base path or below it.
func inAPI(p string) bool {
	return p == apiBasePath || strings.HasPrefix(p, apiBasePath+"/")
}

// cleanPath reports whether p is in canonical form: rooted, without "." or
// ".." segments or empty segments (a trailing slash is allowed).
func cleanPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c == p
}

// bearerToken returns the bearer token of the first Authorization header,
// and reports whether the request carries exactly one Authorization header
// and it is a well-formed bearer credential.
func bearerToken(h http.Header) (string, bool) {
	values := h.Values("Authorization")
	if len(values) == 0 {
		return "", false
	}
	scheme, token, found := strings.Cut(values[0], " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	if token == "" || strings.ContainsAny(token, " \t") {
		return token, false
	}
	return token, len(values) == 1
}

// apiDefaultResponse is the default answer of the API.
type apiDefaultResponse struct {
	OK     bool   `json:"ok"`
	Method string `json:"method"`
	Path   string `json:"path"`
	Query  string `json:"query"`
}

// serveAPI records a request outside the OAuth endpoints and answers it: 404
// outside the API (or for a path that is not canonical, since a real server
// would route it elsewhere), the token check's 401, 413 for an oversized
// body, then a handler registered with HandleAPI, GET /api/v2/ping, or the
// default answer.
func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxAPIBody+1))
	readFailed := err != nil
	truncated := len(body) > MaxAPIBody
	if truncated {
		body = body[:MaxAPIBody]
	}
	token, tokenOK := bearerToken(r.Header)

	s.mu.Lock()
	authorized := tokenOK && s.accessValidLocked(token)
	var rateHeader http.Header
	var window time.Time
	limited := false
	if authorized && inAPI(r.URL.Path) && cleanPath(r.URL.Path) {
		rateHeader, window, limited = s.throttleLocked(token)
	}
	s.apiRequests = append(s.apiRequests, APIRequest{
		Method:        r.Method,
		Host:          r.Host,
		RequestURI:    r.RequestURI,
		Path:          r.URL.Path,
		RawPath:       r.URL.RawPath,
		RawQuery:      r.URL.RawQuery,
		Header:        r.Header.Clone(),
		Body:          bytes.Clone(body),
		BodyTruncated: truncated,
		Token:         token,
		Authorized:    authorized,
		Time:          s.now(),
		RateLimited:   limited,
		RateWindow:    window,
	})
	mux, handlers := s.apiMux, s.apiHandlers
	s.notifyLocked()
	s.mu.Unlock()

	switch {
	case !inAPI(r.URL.Path) || !cleanPath(r.URL.Path):
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
		return
	case !authorized && s.opts.UnauthenticatedAs403:
		writeJSON(w, http.StatusForbidden, map[string]string{"message": "Unauthorized"})
		return
	case !authorized:
		writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Unauthenticated."})
		return
	}
	for k, v := range rateHeader {
		w.Header()[k] = v
	}
	switch {
	case limited:
		writeJSON(w, http.StatusTooManyRequests, map[string]string{"message": "Too Many Attempts."})
		return
	case truncated:
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"message": "Payload Too Large"})
		return
	case readFailed:
		writeJSON(w, http.StatusBadRequest, map[string]string{"message": "The request body could not be read."})
		return
	}

	r.Body = io.NopCloser(bytes.NewReader(body))
	if mux != nil {
		// Only a registered pattern may answer: the mux's own 404, 405 and
		// redirects give way to the defaults below.
		if _, pattern := mux.Handler(r); handlers[pattern] != nil {
			mux.ServeHTTP(w, r)
			return
		}
	}
	if r.URL.Path == apiBasePath+"/ping" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		writeJSON(w, http.StatusOK, map[string]string{"message": "pong"})
		return
	}
	writeJSON(w, http.StatusOK, apiDefaultResponse{
		OK:     true,
		Method: r.Method,
		Path:   r.URL.Path,
		Query:  r.URL.RawQuery,
	})
}
