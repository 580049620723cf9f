package thanksiotest

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"time"

	"golang.org/x/oauth2"
)

// OAuthConfig returns a golang.org/x/oauth2 configuration of the double's
// client (ClientID, ClientSecret) for its authorize and token endpoints,
// with redirectURL ("" for none), that sends the client's credentials in
// the form (oauth2.AuthStyleInParams), as the proxy does. Each call returns
// a new configuration, which the caller may change.
func (s *Server) OAuthConfig(redirectURL string) *oauth2.Config {
	return &oauth2.Config{
		ClientID:     s.ClientID(),
		ClientSecret: s.ClientSecret(),
		Endpoint: oauth2.Endpoint{
			AuthURL:   s.AuthorizeURL(),
			TokenURL:  s.TokenURL(),
			AuthStyle: oauth2.AuthStyleInParams,
		},
		RedirectURL: redirectURL,
	}
}

// Grant types the token endpoint supports.
const (
	grantRefreshToken = "refresh_token"
	grantAuthCode     = "authorization_code"
)

// TokenFault tells the token endpoint to misbehave. The zero value is no
// fault. A request waits for Delay, then for Stall, and is then dropped
// (Drop), failed (Status) or processed; a request whose context ends while
// it waits is abandoned unprocessed, so no refresh token rotates. The fault
// applies to POST requests whose form could be read; they are counted before
// it applies.
type TokenFault struct {
	// Status, if non-zero, answers this status with a server_error JSON
	// body instead of processing the request: nothing rotates.
	Status int
	// Delay is how long to wait before processing. The end of the request's
	// context aborts the wait.
	Delay time.Duration
	// Stall, if non-nil, makes the request wait until it is closed (or the
	// request's context ends) before processing.
	Stall <-chan struct{}
	// Drop hijacks and closes the connection without answering and without
	// processing the request.
	Drop bool
	// LoseResponse processes the request (a refresh rotates) and then closes
	// the connection without answering, so the client never learns the new
	// pair: a response lost on the way back.
	LoseResponse bool
	// Times, if positive, is the number of requests the fault applies to,
	// after which it clears itself. Zero means until the next SetTokenFault.
	Times int
}

// SetTokenFault makes the token endpoint misbehave as f says from the next
// request on; the zero TokenFault restores normal service. Requests already
// waiting keep the fault they got.
func (s *Server) SetTokenFault(f TokenFault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
}

// takeFaultLocked returns the fault for one request and counts it against
// Times. s.mu must be held.
func (s *Server) takeFaultLocked() TokenFault {
	f := s.fault
	if s.fault.Times > 0 {
		s.fault.Times--
		if s.fault.Times == 0 {
			s.fault = TokenFault{}
		}
	}
	return f
}

// TokenRequest is a request received by the token endpoint, as recorded.
type TokenRequest struct {
	// Method is the request's method.
	Method string
	// GrantType is the grant_type of the form, or "" if there was none.
	GrantType string
	// Form is the form body as received. It holds client_secret when the
	// client sent it there.
	Form url.Values
	// BasicAuth reports whether the client authenticated with HTTP Basic
	// instead of client_secret_post.
	BasicAuth bool
	// Status is the status answered, or 0 when no answer was sent (a
	// dropped connection, an abandoned wait) or it is still pending.
	Status int
	// Error is the OAuth error code answered, or "" on success.
	Error string
}

// oauthError is an OAuth error response in league/oauth2-server's shape.
type oauthError struct {
	status      int
	code        string
	description string
	hint        string
}

// oauthErrorBody is the JSON of an oauthError. Passport repeats the
// description as message.
type oauthErrorBody struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
	Hint             string `json:"hint,omitempty"`
	Message          string `json:"message"`
}

func invalidRequest(param string) *oauthError {
	return &oauthError{
		status:      http.StatusBadRequest,
		code:        "invalid_request",
		description: "The request is missing a required parameter, includes an invalid parameter value, includes a parameter more than once, or is otherwise malformed.",
		hint:        fmt.Sprintf("Check the `%s` parameter", param),
	}
}

func invalidClient() *oauthError {
	return &oauthError{
		status:      http.StatusUnauthorized,
		code:        "invalid_client",
		description: "Client authentication failed",
	}
}

func invalidGrant(hint string) *oauthError {
	return &oauthError{
		status:      http.StatusBadRequest,
		code:        "invalid_grant",
		description: "The provided authorization grant (e.g., authorization code, resource owner credentials) or refresh token is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client.",
		hint:        hint,
	}
}

func unsupportedGrantType() *oauthError {
	return &oauthError{
		status:      http.StatusBadRequest,
		code:        "unsupported_grant_type",
		description: "The authorization grant type is not supported by the authorization server.",
		hint:        "Check that all required parameters have been provided",
	}
}

func serverError(status int) *oauthError {
	return &oauthError{
		status:      status,
		code:        "server_error",
		description: "The authorization server encountered an unexpected condition which prevented it from fulfilling the request.",
	}
}

// invalidRefreshToken is the answer to an unknown, rotated or revoked
// refresh token, in the variant the options select.
func (s *Server) invalidRefreshToken() *oauthError {
	e := &oauthError{
		status:      http.StatusBadRequest,
		code:        "invalid_grant",
		description: "The refresh token is invalid.",
		hint:        "Token has been revoked",
	}
	if s.opts.InvalidRefreshAs401 {
		e.status = http.StatusUnauthorized
		e.code = "invalid_request"
	}
	return e
}

// tokenResponse is the JSON of a successful token response.
type tokenResponse struct {
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
}

// serveToken serves POST /oauth/token.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	var form url.Values
	var formErr *oauthError
	if r.Method == http.MethodPost {
		form, formErr = readTokenForm(w, r)
	}
	_, _, basic := r.BasicAuth()

	s.mu.Lock()
	s.tokenCalls++
	grantType := form.Get("grant_type")
	switch grantType {
	case grantRefreshToken:
		s.refreshCalls++
	case grantAuthCode:
		s.codeExchanges++
	}
	idx := len(s.tokenRequests)
	s.tokenRequests = append(s.tokenRequests, TokenRequest{
		Method:    r.Method,
		GrantType: grantType,
		Form:      cloneValues(form),
		BasicAuth: basic,
	})
	var fault TokenFault
	if r.Method == http.MethodPost && formErr == nil {
		fault = s.takeFaultLocked()
	}
	s.notifyLocked()
	s.mu.Unlock()

	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.finishToken(idx, http.StatusMethodNotAllowed, "")
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"message": "The " + r.Method + " method is not supported for route oauth/token. Supported methods: POST."})
		return
	}
	if formErr != nil {
		s.writeTokenError(w, r, idx, formErr)
		return
	}
	if !s.waitFault(r, fault) {
		// The client is gone or the test is over: close rather than let
		// net/http answer an empty 200.
		dropConnection(w)
		return
	}
	if fault.Drop {
		dropConnection(w)
		return
	}
	if fault.Status != 0 {
		s.writeTokenError(w, r, idx, serverError(fault.Status))
		return
	}

	s.mu.Lock()
	g, oerr := s.grantLocked(r, form)
	var resp tokenResponse
	if oerr == nil {
		resp = tokenResponse{
			TokenType:    "Bearer",
			ExpiresIn:    expiresInSeconds(g.lifetime),
			AccessToken:  g.access,
			RefreshToken: g.refresh,
		}
	}
	s.mu.Unlock()

	if fault.LoseResponse {
		dropConnection(w)
		return
	}
	if oerr != nil {
		s.writeTokenError(w, r, idx, oerr)
		return
	}
	s.finishToken(idx, http.StatusOK, "")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	writeJSON(w, http.StatusOK, resp)
}

// readTokenForm reads the form body of a token request. Only the body
// counts: parameters in the URL query are ignored, as RFC 6749 requires.
func readTokenForm(w http.ResponseWriter, r *http.Request) (url.Values, *oauthError) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, invalidRequest("Content-Type")
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxTokenForm)
	if err := r.ParseForm(); err != nil {
		return nil, invalidRequest("body")
	}
	return r.PostForm, nil
}

// waitFault waits as fault says and reports whether to go on; false means
// the request's context (or the test) ended first.
func (s *Server) waitFault(r *http.Request, fault TokenFault) bool {
	if fault.Delay > 0 {
		t := time.NewTimer(fault.Delay)
		defer t.Stop()
		if !waitFor(s, r, t.C) {
			return false
		}
	}
	return fault.Stall == nil || waitFor(s, r, fault.Stall)
}

// waitFor waits until c delivers (or is closed) and reports whether it did
// before r's context or the test ended.
func waitFor[T any](s *Server, r *http.Request, c <-chan T) bool {
	select {
	case <-c:
		return true
	case <-r.Context().Done():
		return false
	case <-s.done:
		return false
	}
}

// dropConnection closes the connection under w without answering.
func dropConnection(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			conn.Close()
			return
		}
	}
	// Not hijackable (HTTP/2): abort the handler, which resets the stream.
	panic(http.ErrAbortHandler)
}

// grantLocked authenticates the client and performs the grant of form,
// returning the grant whose current pair to answer. s.mu must be held.
func (s *Server) grantLocked(r *http.Request, form url.Values) (*grant, *oauthError) {
	grantType := form.Get("grant_type")
	if grantType != grantRefreshToken && grantType != grantAuthCode {
		return nil, unsupportedGrantType()
	}
	for k, vs := range form {
		if len(vs) > 1 {
			return nil, invalidRequest(k)
		}
	}
	clientID, oerr := s.authenticateClient(r, form)
	if oerr != nil {
		return nil, oerr
	}
	if grantType == grantRefreshToken {
		rt := form.Get("refresh_token")
		if rt == "" {
			return nil, invalidRequest("refresh_token")
		}
		g, ok := s.rotateLocked(rt)
		if !ok {
			return nil, s.invalidRefreshToken()
		}
		return g, nil
	}
	return s.exchangeCodeLocked(clientID, form)
}

// authenticateClient checks the client credentials, from the form
// (client_secret_post) or from HTTP Basic, and returns the client id. A
// client may not use both methods at once (RFC 6749 section 2.3).
func (s *Server) authenticateClient(r *http.Request, form url.Values) (string, *oauthError) {
	id, secret := form.Get("client_id"), form.Get("client_secret")
	if user, pass, ok := r.BasicAuth(); ok {
		if _, inForm := form["client_secret"]; inForm {
			return "", invalidRequest("client_secret")
		}
		user, pass = formUnescape(user), formUnescape(pass)
		if id != "" && id != user {
			return "", invalidClient()
		}
		id, secret = user, pass
	}
	if id == "" {
		return "", invalidRequest("client_id")
	}
	idOK := subtle.ConstantTimeCompare([]byte(id), []byte(s.opts.ClientID)) == 1
	secretOK := subtle.ConstantTimeCompare([]byte(secret), []byte(s.opts.ClientSecret)) == 1
	if !idOK || !secretOK {
		return "", invalidClient()
	}
	return id, nil
}

// formUnescape undoes the form encoding RFC 6749 section 2.3.1 applies to
// Basic credentials, keeping v as it is when it is not valid encoding.
func formUnescape(v string) string {
	if u, err := url.QueryUnescape(v); err == nil {
		return u
	}
	return v
}

// exchangeCodeLocked performs the authorization_code grant. s.mu must be
// held.
func (s *Server) exchangeCodeLocked(clientID string, form url.Values) (*grant, *oauthError) {
	code := form.Get("code")
	if code == "" {
		return nil, invalidRequest("code")
	}
	c := s.codes[code]
	if c == nil {
		return nil, invalidGrant("Authorization code is invalid")
	}
	if c.used {
		// A replayed code revokes what it produced (RFC 6749 section 4.1.2).
		if c.grant != nil {
			c.grant.revoked = true
		}
		return nil, invalidGrant("Authorization code has been revoked")
	}
	if c.clientID != clientID {
		return nil, invalidGrant("Authorization code was not issued to this client")
	}
	if !s.now().Before(c.expiry) {
		return nil, invalidGrant("Authorization code has expired")
	}
	redirect, ok := form["redirect_uri"]
	if !ok {
		return nil, invalidRequest("redirect_uri")
	}
	if redirect[0] != c.redirectURI {
		return nil, invalidGrant("Invalid redirect URI")
	}
	verifier, sent := form["code_verifier"]
	switch {
	case c.challenge == "" && sent:
		// A verifier without a challenge is a PKCE downgrade (RFC 9700
		// section 4.8.2).
		return nil, invalidGrant("Failed to verify `code_verifier`.")
	case c.challenge != "" && (!sent || !validPKCEValue(verifier[0]) || !s256Matches(verifier[0], c.challenge)):
		return nil, invalidGrant("Failed to verify `code_verifier`.")
	}
	c.used = true
	c.grant = s.newGrantLocked()
	return c.grant, nil
}

// s256Matches reports whether BASE64URL(SHA256(verifier)) equals challenge.
func s256Matches(verifier, challenge string) bool {
	sum := sha256.Sum256([]byte(verifier))
	want := base64.RawURLEncoding.EncodeToString(sum[:])
	return subtle.ConstantTimeCompare([]byte(want), []byte(challenge)) == 1
}

// validPKCEValue reports whether v is a valid code verifier or challenge:
// 43 to 128 characters of [A-Za-z0-9-._~] (RFC 7636 section 4.1).
func validPKCEValue(v string) bool {
	if len(v) < 43 || len(v) > 128 {
		return false
	}
	for _, c := range []byte(v) {
		ok := 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || slices.Contains([]byte("-._~"), c)
		if !ok {
			return false
		}
	}
	return true
}

// writeTokenError answers e and records it on token request idx.
func (s *Server) writeTokenError(w http.ResponseWriter, r *http.Request, idx int, e *oauthError) {
	s.finishToken(idx, e.status, e.code)
	if e.status == http.StatusUnauthorized && e.code == "invalid_client" {
		if _, _, basic := r.BasicAuth(); basic {
			w.Header().Set("WWW-Authenticate", `Basic realm="OAuth"`)
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, e.status, oauthErrorBody{
		Error:            e.code,
		ErrorDescription: e.description,
		Hint:             e.hint,
		Message:          e.description,
	})
}

// finishToken records the answer to token request idx.
func (s *Server) finishToken(idx, status int, code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokenRequests[idx].Status = status
	s.tokenRequests[idx].Error = code
}

// writeJSON answers v as JSON with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		panic("thanksiotest: encoding a response: " + err.Error())
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}
