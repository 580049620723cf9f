package proxy

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"time"
)

// checkPath is thanks.io's call that checks a token and does nothing else.
const checkPath = "/ping"

// Check calls the upstream's GET /ping with tenant's token, as a caller's
// call would go (the rate limit, the 401 replay and the metrics apply),
// and returns the status of the answer and its message when it is not a
// 200 (thanks.io's "message", at most 200 bytes; never a token). A call
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
	if json.Unmarshal(head, &body) == nil && len(body.Message) > 200 {
		body.Message = body.Message[:200]
	}
	return res.StatusCode, body.Message, nil
}
