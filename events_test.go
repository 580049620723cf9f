package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
)

const testWebhookSecret = "test-webhook-secret-0123456789"

// delivery is one POST the receiver got, its signature checked.
type delivery struct {
	ID, Type, Tenant, Reason string
	Time                     time.Time
	answered                 int
}

// receiver is an application's webhook endpoint, written from the README's
// scheme alone: it checks the signature over the raw body and answers
// with status() (200 when nil).
type receiver struct {
	t      *testing.T
	url    string
	status atomic.Pointer[func(attempt int) int] // attempt: 1 for an id's first

	mu  sync.Mutex
	got []delivery
	raw []string
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{t: t}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if err := checkSignature(req.Header.Get("X-Thanksio-Proxy-Signature"), body); err != "" {
			t.Errorf("webhook call with a bad signature (%s): %s", err, body)
			http.Error(w, "bad signature", http.StatusBadRequest)
			return
		}
		var d delivery
		if err := json.Unmarshal(body, &d); err != nil {
			t.Errorf("webhook body is not an event: %s", body)
		}
		r.mu.Lock()
		attempt := 1
		for _, g := range r.got {
			if g.ID == d.ID {
				attempt++
			}
		}
		d.answered = http.StatusOK
		if f := r.status.Load(); f != nil {
			d.answered = (*f)(attempt)
		}
		r.got = append(r.got, d)
		r.raw = append(r.raw, string(body))
		r.mu.Unlock()
		w.WriteHeader(d.answered)
	}))
	t.Cleanup(srv.Close)
	r.url = srv.URL + "/hooks/thanksio"
	return r
}

// checkSignature checks "t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">"
// and returns what is wrong, or "".
func checkSignature(header string, body []byte) string {
	fields := map[string]string{}
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		fields[k] = v
	}
	ts, err := strconv.ParseInt(fields["t"], 10, 64)
	if err != nil || time.Since(time.Unix(ts, 0)).Abs() > 5*time.Minute {
		return "timestamp"
	}
	mac := hmac.New(sha256.New, []byte(testWebhookSecret))
	mac.Write([]byte(fields["t"] + "." + string(body)))
	if !hmac.Equal([]byte(hex.EncodeToString(mac.Sum(nil))), []byte(fields["v1"])) {
		return "v1"
	}
	return ""
}

// delivered returns the ids of the events of type typ answered 2xx, and
// how many attempts each took.
func (r *receiver) delivered(typ string) map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	attempts := map[string]int{}
	ok := map[string]bool{}
	for _, d := range r.got {
		if d.Type == typ {
			attempts[d.ID]++
			ok[d.ID] = ok[d.ID] || d.answered < 300
		}
	}
	for id := range attempts {
		if !ok[id] {
			delete(attempts, id)
		}
	}
	return attempts
}

func (r *receiver) answer(status int) {
	f := func(int) int { return status }
	r.status.Store(&f)
}

func TestEventsOnePerChangeAcrossReplicas(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	hook := newReceiver(t)
	// The first attempt of each event fails: every event is redelivered.
	first := func(attempt int) int {
		if attempt == 1 {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	}
	hook.status.Store(&first)
	env := redisEnv(t)
	env["EVENTS_WEBHOOK_URL"] = hook.url
	env["EVENTS_WEBHOOK_SECRET"] = testWebhookSecret
	ps := []*instance{start(t, double, env), start(t, double, env), start(t, double, env)}

	grant := double.NewGrant()
	ps[0].importToken(t, "acme", grant, 0) // expired: refreshed at its first use
	double.Revoke(grant.RefreshToken)
	var wg sync.WaitGroup
	for i := range 9 {
		wg.Go(func() {
			if code, header, _ := ps[i%3].call(t, "acme", "/ping"); code != http.StatusUnauthorized || header.Get("X-Thanksio-Proxy-Error") != "reauthorization_required" {
				t.Errorf("a call with a revoked refresh token: %d %s; want 401 reauthorization_required", code, header.Get("X-Thanksio-Proxy-Error"))
			}
		})
	}
	wg.Wait()

	testutil.Eventually(t, "both events delivered", func() bool {
		return len(hook.delivered("tenant.connected")) > 0 && len(hook.delivered("tenant.reauthorization_required")) > 0
	})
	for _, typ := range []string{"tenant.connected", "tenant.reauthorization_required"} {
		got := hook.delivered(typ)
		if len(got) != 1 {
			t.Errorf("%s: %d events; want one across the 3 replicas", typ, len(got))
		}
		for id, attempts := range got {
			if attempts < 2 {
				t.Errorf("%s %s delivered after %d attempts; want the failed first attempt redelivered", typ, id, attempts)
			}
		}
	}
	hook.mu.Lock()
	raw := strings.Join(hook.raw, "\n")
	hook.mu.Unlock()
	secretsAbsent(t, "the events", raw, grant.AccessToken, grant.RefreshToken, testWebhookSecret)
	for _, p := range ps {
		secretsAbsent(t, "the logs", p.logs.String(), testWebhookSecret, hook.url)
	}
}

func TestEventsSurviveTheSendingReplicasRestart(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	hook := newReceiver(t)
	hook.answer(http.StatusServiceUnavailable)
	env := redisEnv(t)
	env["EVENTS_WEBHOOK_URL"] = hook.url
	env["EVENTS_WEBHOOK_SECRET"] = testWebhookSecret
	sender := start(t, double, env)
	sender.importToken(t, "acme", double.NewGrant(), 3600)
	testutil.Eventually(t, "the receiver refused the event once", func() bool {
		hook.mu.Lock()
		defer hook.mu.Unlock()
		return len(hook.got) > 0
	})
	if err := sender.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	hook.mu.Lock()
	refused := hook.got[0].ID
	hook.mu.Unlock()

	// The receiver is back; the sending replica is not. Another replica on
	// the same Redis delivers what it left.
	hook.answer(http.StatusOK)
	start(t, double, env)
	testutil.Eventually(t, "the event delivered by another replica", func() bool {
		_, ok := hook.delivered("tenant.connected")[refused]
		return ok
	})
}
