package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"thanksio-proxy/auth"
)

// storeCheckInterval is how often the store is pinged for /readyz, and
// storeCheckTimeout how long one ping may take.
const (
	storeCheckInterval = time.Second
	storeCheckTimeout  = time.Second
)

// storeCheck pings the store in the background, so that /readyz answers from
// memory at once, however the store behaves (a hung Redis must not make
// every replica's probe time out).
type storeCheck struct {
	st  auth.Store
	log *slog.Logger
	// reached is set once a ping succeeded since start; ok holds the last
	// ping's result.
	reached atomic.Bool
	ok      atomic.Bool
}

// newStoreCheck returns a check of st whose first ping has been made
// (bounded by storeCheckTimeout), so that the first probe finds a result.
func newStoreCheck(ctx context.Context, st auth.Store, log *slog.Logger) *storeCheck {
	c := &storeCheck{st: st, log: log}
	c.check(ctx, true)
	return c
}

// run pings the store every storeCheckInterval until ctx ends.
func (c *storeCheck) run(ctx context.Context) {
	tick := time.NewTicker(storeCheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c.check(ctx, false)
	}
}

// check pings the store once and logs a change of the result (and a first
// failure).
func (c *storeCheck) check(ctx context.Context, first bool) {
	pctx, cancel := context.WithTimeout(ctx, storeCheckTimeout)
	err := c.st.Ping(pctx)
	cancel()
	if ctx.Err() != nil {
		return
	}
	ok := err == nil
	if was := c.ok.Swap(ok); was != ok || first && !ok {
		if ok {
			c.log.Info("the token store answers")
		} else {
			// The error says what it is: a refused AUTH, NOPERM, a
			// timeout, a refused connection.
			c.log.Warn("the token store does not answer", "err", err)
		}
	}
	if ok {
		c.reached.Store(true)
	}
}

// readiness answers /readyz from what the background checks last found.
// Until the store has answered once since start, the replica is not ready:
// a wrong REDIS_URL or password must stop a rollout, not complete it with
// replicas that can only answer token_unavailable. After that, an outage of
// the store leaves it ready (cached tokens serve), unless strict.
func readiness(c *storeCheck, tokens *auth.Tokens, shuttingDown *atomic.Bool, strict bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		status := struct {
			Ready bool   `json:"ready"`
			Store string `json:"store"`
			// Invalidations is "subscribed" while other replicas' writes
			// and deletions reach this one, "down" otherwise (cached
			// tokens are then re-read every CACHE_REVALIDATE); it does not
			// make the replica unready.
			Invalidations string `json:"invalidations"`
			Note          string `json:"note,omitempty"`
		}{Ready: true, Store: "ok", Invalidations: "subscribed"}
		if ok, _ := tokens.Invalidations(); !ok {
			status.Invalidations = "down"
		}
		switch {
		case c.ok.Load():
		case !c.reached.Load():
			status.Ready = false
			status.Store = "unreachable"
			status.Note = "the token store has not answered since start (check REDIS_URL, its password and ACL user)"
		default:
			status.Store = "unreachable"
			status.Note = "cached tokens are served until they expire"
			if strict {
				status.Ready = false
			}
		}
		if shuttingDown.Load() {
			status.Ready = false
			status.Note = "shutting down"
		}
		code := http.StatusOK
		if !status.Ready {
			code = http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(status)
	})
}
