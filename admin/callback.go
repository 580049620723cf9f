package admin

import (
	"context"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"

	"thanksio-proxy/auth"
)

// Completer finishes an OAuth flow; *auth.Tokens is one.
type Completer interface {
	// Complete consumes state and stores the token that code is exchanged
	// for, as auth.Tokens.Complete documents.
	Complete(ctx context.Context, state, code, errParam string) (auth.Completion, error)
}

// Callback answers GET /oauth/callback: it hands the state, code and error
// of the query to Complete, and sends the browser back to return_to with
// connected=<tenant> or error=<code> added (303); without return_to it
// answers a short page (200 on success, 4xx or 503 on failure). It never
// shows a token, a code or the client secret.
type Callback struct {
	// OnOutcome, if non-nil, is called once for each callback with its
	// outcome: "connected", or the error code it answered (for a metric).
	// Set it before serving.
	OnOutcome func(outcome string)

	tokens Completer
	log    *slog.Logger
}

// NewCallback returns the OAuth callback over tokens. A nil log logs
// nothing.
func NewCallback(tokens Completer, log *slog.Logger) *Callback {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Callback{tokens: tokens, log: log}
}

// callbackStatus is the status of the page that answers each outcome.
var callbackStatus = map[string]int{
	"":                          http.StatusOK,
	auth.OutcomeInvalidState:    http.StatusBadRequest,
	auth.OutcomeAccessDenied:    http.StatusForbidden,
	auth.OutcomeAuthorizeFailed: http.StatusBadRequest,
	auth.OutcomeCodeRejected:    http.StatusBadRequest,
	auth.OutcomeTokenEndpoint:   http.StatusServiceUnavailable,
	auth.OutcomeStore:           http.StatusServiceUnavailable,
	auth.OutcomeInvalidRequest:  http.StatusBadRequest,
}

func (c *Callback) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	// The URL holds the code: keep it out of Referer headers.
	w.Header().Set("Referrer-Policy", "no-referrer")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		c.page(w, http.StatusMethodNotAllowed, "", auth.OutcomeInvalidRequest)
		return
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil || len(q["state"]) != 1 || q.Get("state") == "" || len(q["code"]) > 1 || len(q["error"]) > 1 {
		c.log.Info("oauth callback refused: malformed query")
		c.page(w, http.StatusBadRequest, "", auth.OutcomeInvalidRequest)
		return
	}
	done, err := c.tokens.Complete(r.Context(), q.Get("state"), q.Get("code"), q.Get("error"))
	switch {
	case errors.Is(err, auth.ErrNotConfigured):
		c.page(w, http.StatusNotFound, "", auth.OutcomeInvalidRequest)
		return
	case err != nil:
		c.log.Warn("oauth callback failed", "err", err)
		c.page(w, http.StatusServiceUnavailable, "", auth.OutcomeStore)
		return
	}
	if u := done.ReturnTo; u != nil {
		v := u.Query()
		if done.Outcome == "" {
			v.Set("connected", done.Tenant)
		} else {
			v.Set("error", done.Outcome)
		}
		u.RawQuery = v.Encode()
		u.Fragment = ""
		c.observe(done.Outcome)
		http.Redirect(w, r, u.String(), http.StatusSeeOther)
		return
	}
	status, ok := callbackStatus[done.Outcome]
	if !ok {
		status = http.StatusBadRequest
	}
	c.page(w, status, done.Tenant, done.Outcome)
}

// observe counts a callback's outcome ("connected" for success).
func (c *Callback) observe(outcome string) {
	if outcome == "" {
		outcome = "connected"
	}
	if c.OnOutcome != nil {
		c.OnOutcome(outcome)
	}
}

var callbackPage = template.Must(template.New("callback").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>thanks.io connection</title></head>
<body><h1>{{.Title}}</h1><p>{{.Text}}</p></body></html>
`))

var callbackTexts = map[string][2]string{
	"":                          {"Connected", "The thanks.io account is connected. You can close this page."},
	auth.OutcomeInvalidState:    {"Link expired", "This link has expired or was already used. Start the connection again."},
	auth.OutcomeAccessDenied:    {"Not connected", "The thanks.io account owner did not approve the connection."},
	auth.OutcomeAuthorizeFailed: {"Not connected", "thanks.io did not authorize the connection. Start the connection again."},
	auth.OutcomeCodeRejected:    {"Not connected", "thanks.io refused the authorization. Start the connection again."},
	auth.OutcomeTokenEndpoint:   {"Try again", "thanks.io could not be reached to finish the connection. Start the connection again in a moment."},
	auth.OutcomeStore:           {"Try again", "The connection could not be saved. Start the connection again in a moment."},
	auth.OutcomeInvalidRequest:  {"Bad request", "This is not a valid thanks.io authorization response."},
}

// page answers the callback with a short HTML page, and counts its outcome.
func (c *Callback) page(w http.ResponseWriter, status int, tenant, outcome string) {
	c.observe(outcome)
	text := callbackTexts[outcome]
	if outcome == "" && tenant != "" {
		text[1] = "The thanks.io account is connected for " + tenant + ". You can close this page."
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Security-Policy", "default-src 'none'")
	w.WriteHeader(status)
	_ = callbackPage.Execute(w, struct{ Title, Text string }{text[0], text[1]})
}
