package proxy

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"time"
)

// checkPath is thanks.io's call that checks a token and does nothing else.
const checkPath = "/ping"

// Check calls the upstream's GET /ping with tenant's token, as a caller's
// call would go (the rate limit, the 401 replay and the metrics apply),
// and returns the status of the answer and its message when it is not a
// 200 (thanks.io's "message", at most 200 bytes, the token replaced by
// "[redacted]" should it hold it). A call
// that did not reach the upstream returns the proxy's *Error.
func (h *Handler) Check(ctx context.Context, tenant string) (status int, message string, err error) {
	c := &call{tenant: tenant, requestID: newRequestID(), path: checkPath, replayable: true}
	if c.authorization, err = h.cfg.Tokens.Authorization(ctx, tenant); err != nil {
		return 0, "", TokenError(err)
	}
	if h.cfg.Limiter != nil {
		c.deadline = time.Now().Add(h.cfg.Limiter.MaxWait())
		if e := h.waitTurn(ctx, c); e != nil {
			return 0, "", e
		}
	}
	u := *h.cfg.Upstream
	u.Path, u.RawPath = h.basePath+checkPath, ""
	req, err := http.NewRequestWithContext(context.WithValue(ctx, callKey{}, c), http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, "", err
	}
	req.Header = http.Header{
		"Authorization": {c.authorization},
		"Accept":        {"application/json"},
		requestIDHeader: {c.requestID},
	}
	res, err := h.rp.Transport.RoundTrip(req)
	if err != nil {
		return 0, "", upstreamError(err)
	}
	defer drain(res.Body)
	if res.StatusCode == http.StatusOK {
		return res.StatusCode, "", nil
	}
	var body struct {
		Message string `json:"message"`
	}
	head, _ := io.ReadAll(io.LimitReader(res.Body, 4<<10))
	if json.Unmarshal(head, &body) != nil {
		return res.StatusCode, "", nil
	}
	// thanks.io's words, but never the token, should they quote it.
	message = strings.ReplaceAll(body.Message, strings.TrimPrefix(c.authorization, bearerPrefix), "[redacted]")
	if len(message) > 200 {
		message = message[:200]
	}
	return res.StatusCode, message, nil
}
