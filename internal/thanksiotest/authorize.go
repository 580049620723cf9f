package thanksiotest

import (
	"net/http"
	"net/url"
	"slices"
	"time"
)

// authCode is an authorization code issued by the authorize endpoint.
type authCode struct {
	clientID    string
	redirectURI string
	challenge   string // S256 code challenge, or "" without PKCE
	expiry      time.Time
	used        bool
	grant       *grant // issued from this code, once exchanged
}

// serveAuthorize serves GET /oauth/authorize. It approves (or denies, see
// SetAuthorizeDecision) at once, as if the account owner had clicked.
func (s *Server) serveAuthorize(w http.ResponseWriter, r *http.Request) {
	q, qerr := url.ParseQuery(r.URL.RawQuery)

	s.mu.Lock()
	s.authorizeCalls++
	s.lastAuthorize = cloneValues(q)
	deny := s.deny
	redirectURLs := slices.Clone(s.redirectURLs)
	s.notifyLocked()
	s.mu.Unlock()

	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		writeErrorPage(w, http.StatusMethodNotAllowed, "The authorize endpoint accepts only GET.")
		return
	}
	if qerr != nil {
		writeErrorPage(w, http.StatusBadRequest, "invalid_request: the query is malformed.")
		return
	}
	// Until the client and its redirect URI are known good, an error must
	// not be redirected anywhere (RFC 6749 section 4.1.2.1).
	if len(q["client_id"]) != 1 || q.Get("client_id") != s.opts.ClientID {
		writeErrorPage(w, http.StatusBadRequest, "invalid_client: Client authentication failed.")
		return
	}
	redirectURI := q.Get("redirect_uri")
	if len(q["redirect_uri"]) != 1 || !slices.Contains(redirectURLs, redirectURI) {
		writeErrorPage(w, http.StatusBadRequest, "invalid_request: the redirect_uri is missing or not registered for this client.")
		return
	}

	state, hasState := q["state"]
	fail := func(code, description string) {
		v := url.Values{"error": {code}, "error_description": {description}}
		if hasState {
			v.Set("state", state[0])
		}
		redirectWith(w, redirectURI, v)
	}
	for k, vs := range q {
		if len(vs) > 1 {
			fail("invalid_request", "The parameter "+k+" is included more than once.")
			return
		}
	}
	if q.Get("response_type") != "code" {
		fail("unsupported_response_type", "The authorization server does not support obtaining an authorization code using this method.")
		return
	}
	if !hasState || state[0] == "" {
		fail("invalid_request", "The state parameter is required.")
		return
	}
	challenge, hasChallenge := q["code_challenge"]
	_, hasMethod := q["code_challenge_method"]
	switch {
	case hasChallenge && q.Get("code_challenge_method") != "S256":
		// An absent method means "plain" (RFC 7636 section 4.3): refused.
		fail("invalid_request", "Code challenge method must be S256.")
		return
	case hasChallenge && !validPKCEValue(challenge[0]):
		fail("invalid_request", "Code challenge must follow the specifications of RFC-7636.")
		return
	case !hasChallenge && hasMethod:
		fail("invalid_request", "A code_challenge_method was sent without a code_challenge.")
		return
	case !hasChallenge && s.opts.RequirePKCE:
		fail("invalid_request", "Code challenge must be provided for this client.")
		return
	}
	if deny {
		fail("access_denied", "The resource owner or authorization server denied the request.")
		return
	}

	code := &authCode{
		clientID:    s.opts.ClientID,
		redirectURI: redirectURI,
		challenge:   q.Get("code_challenge"),
		expiry:      s.now().Add(CodeLifetime),
	}
	value := randomValue(CodePrefix)
	s.mu.Lock()
	s.codes[value] = code
	s.mu.Unlock()
	redirectWith(w, redirectURI, url.Values{"code": {value}, "state": {state[0]}})
}

// redirectWith answers 302 to redirectURI with params added to its query,
// which keeps the parameters redirectURI already has.
func redirectWith(w http.ResponseWriter, redirectURI string, params url.Values) {
	u, err := url.Parse(redirectURI)
	if err != nil {
		// Registered URLs were checked; this cannot happen.
		writeErrorPage(w, http.StatusInternalServerError, "The redirect URI cannot be parsed.")
		return
	}
	q := u.Query()
	for k, vs := range params {
		q[k] = vs
	}
	u.RawQuery = q.Encode()
	w.Header().Set("Location", u.String())
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusFound)
}

// writeErrorPage answers a plain error page that a person would read in
// the browser.
func writeErrorPage(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write([]byte(msg + "\n"))
}
