package proxy_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/proxy"
	"thanksio-proxy/ratelimit"
)

// pauseCounter is a ratelimit.Observer that counts pauses.
type pauseCounter struct {
	mu     sync.Mutex
	paused int
}

func (*pauseCounter) Admitted(time.Duration) {}
func (*pauseCounter) Rejected()              {}
func (p *pauseCounter) Paused()              { p.mu.Lock(); p.paused++; p.mu.Unlock() }
func (*pauseCounter) Shared(bool)            {}

func (p *pauseCounter) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused
}

// A 429 that answers the replay after a 401 is thanks.io's 429 like any
// other: it pauses the tenant and is counted as relayed to the caller.
func TestAttack429OnThe401ReplayPausesAndIsCounted(t *testing.T) {
	upstream, got := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer old" {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"message":"Unauthenticated."}`)
			return
		}
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusTooManyRequests)
		_, _ = io.WriteString(w, `{"message":"Too Many Attempts."}`)
	})
	pauses := &pauseCounter{}
	lim, err := ratelimit.New(ratelimit.Config{Limit: 10, Period: time.Minute, MaxWait: 2 * time.Second, Observer: pauses})
	if err != nil {
		t.Fatal(err)
	}
	obs := &limitObserver{}
	tokens := staticTokens(map[string]string{"acme": "old"})
	tokens.refused = func(context.Context, string, string) (string, error) { return "new", nil }
	h, err := proxy.New(proxy.Config{Tokens: tokens, Upstream: upstream, Limiter: lim, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, h)

	res, body := testutil.Do(t, nil, newRequest(t, "GET", srv.URL+"/ping", nil, "acme"))
	if res.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("status %d %s; want thanks.io's 429", res.StatusCode, body)
	}
	if n := pauses.count(); n != 1 {
		t.Errorf("the tenant was paused %d times; want 1: thanks.io's 429 to the replay must pause it", n)
	}
	obs.mu.Lock()
	relayed := obs.relayed
	obs.mu.Unlock()
	if relayed != 1 {
		t.Errorf("upstream 429s relayed = %d; want 1 (one reached the caller)", relayed)
	}
	// The tenant is paused for 30 s: the next call, with 2 s to wait, is
	// the proxy's 429 and reaches nothing.
	before := got.count()
	res, body = testutil.Do(t, nil, newRequest(t, "GET", srv.URL+"/ping", nil, "acme"))
	if res.StatusCode != http.StatusTooManyRequests || res.Header.Get(proxy.ErrorHeader) != proxy.CodeRateLimited {
		t.Errorf("a call during thanks.io's 30 s pause: %d %s; want the proxy's 429 rate_limited", res.StatusCode, body)
	}
	if after := got.count(); after != before {
		t.Errorf("a call during the pause reached thanks.io %d times", after-before)
	}
}

// A 429 whose replay the rate limit then refuses (the caller gets the
// proxy's rate_limited) was not replayed: the metric must not say so.
func TestAttack429NotReplayedIsNotCountedReplayed(t *testing.T) {
	upstream, got := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
	})
	// One call per 2.5 s; 2 s to wait: the replay's turn, after the first
	// call's, would come past the deadline, though the 1 s pause fits.
	lim, err := ratelimit.New(ratelimit.Config{Limit: 1, Period: 2500 * time.Millisecond, MaxWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	obs := &limitObserver{}
	h, err := proxy.New(proxy.Config{Tokens: staticTokens(map[string]string{"acme": "tok"}), Upstream: upstream, Limiter: lim, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, h)
	res, body := testutil.Do(t, nil, newRequest(t, "POST", srv.URL+"/send/postcard", strings.NewReader(`{}`), "acme"))
	if res.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("status %d %s; want 429", res.StatusCode, body)
	}
	if n := got.count(); n != 1 {
		t.Fatalf("thanks.io saw %d calls; want 1 (no replay)", n)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.replayed != 0 {
		t.Errorf("upstream 429s counted replayed = %d, relayed = %d; want replayed 0: thanks.io saw one call and no replay", obs.replayed, obs.relayed)
	}
}

// The check's answer never holds the tenant's token, whatever thanks.io's
// message says.
func TestAttackCheckNeverEchoesTheToken(t *testing.T) {
	const token = "s3cr3t-access-token-of-acme"
	upstream, _ := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"message":"The access token `+strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")+` was revoked."}`)
	})
	h, err := proxy.New(proxy.Config{Tokens: staticTokens(map[string]string{"acme": token}), Upstream: upstream})
	if err != nil {
		t.Fatal(err)
	}
	status, message, err := h.Check(context.Background(), "acme")
	if err != nil || status != http.StatusUnauthorized {
		t.Fatalf("Check = %d, %q, %v; want 401", status, message, err)
	}
	if strings.Contains(message, token) {
		t.Errorf("Check's message %q holds the tenant's token", message)
	}
}

// linksReference is what the rewriting must give: every occurrence of the
// base URL (plain or with escaped slashes) followed by a path, query,
// fragment, quote, backslash or the end, replaced.
func linksReference(body, from, to string) string {
	esc := func(s string) string { return strings.ReplaceAll(s, "/", `\/`) }
	var b strings.Builder
	for i := 0; i < len(body); {
		matched := false
		for _, p := range [][2]string{{from, to}, {esc(from), esc(to)}} {
			if strings.HasPrefix(body[i:], p[0]) {
				end := i + len(p[0])
				if end == len(body) || strings.IndexByte(`/?#"\`, body[end]) >= 0 {
					b.WriteString(p[1])
					i = end
					matched = true
					break
				}
			}
		}
		if !matched {
			b.WriteByte(body[i])
			i++
		}
	}
	return b.String()
}

// JSON answers streamed in random pieces, plain or gzipped, come out
// rewritten exactly as the reference says, with no length that lies.
func TestAttackLinksRandomSplitsAndGzip(t *testing.T) {
	var base string
	var mu sync.Mutex
	var body []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		b := body
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		var out io.Writer = w
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") && r.URL.Query().Get("gz") == "1" {
			w.Header().Set("Content-Encoding", "gzip")
			gz := gzip.NewWriter(w)
			defer gz.Close()
			out = gz
		}
		rc := http.NewResponseController(w)
		for len(b) > 0 {
			n := min(len(b), 1+rand.IntN(40))
			_, _ = out.Write(b[:n])
			if gz, ok := out.(*gzip.Writer); ok {
				_ = gz.Flush()
			}
			_ = rc.Flush()
			b = b[n:]
		}
	}))
	t.Cleanup(srv.Close)
	base = srv.URL + "/api/v2"
	upstream, _ := url.Parse(base)
	const public = "http://proxy.invalid:8080"
	h, err := proxy.New(proxy.Config{Tokens: staticTokens(map[string]string{"acme": "tok"}), Upstream: upstream, PublicURL: public})
	if err != nil {
		t.Fatal(err)
	}
	p := newServer(t, h)
	esc := strings.ReplaceAll(base, "/", `\/`)
	pieces := []string{base, esc, base + "/orders?page=2", esc + `\/orders`, base + "0", esc + "0", `"`, `\`, "/", "?", "#", "x", "h", "htt", base[:len(base)-1], esc[:len(esc)-1], `{"a":`, "\n", " "}
	for round := range 200 {
		var b strings.Builder
		for range 1 + rand.IntN(30) {
			b.WriteString(pieces[rand.IntN(len(pieces))])
		}
		in := b.String()
		want := linksReference(in, base, public)
		mu.Lock()
		body = []byte(in)
		mu.Unlock()
		gz := strconv.Itoa(round % 2)
		req := newRequest(t, "GET", p.URL+"/orders/list?gz="+gz, nil, "acme")
		if round%4 < 2 {
			req.Header.Set("Accept-Encoding", "gzip")
		}
		res, got := testutil.Do(t, nil, req)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status %d", res.StatusCode)
		}
		if res.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(bytes.NewReader(got))
			if err != nil {
				t.Fatal(err)
			}
			got, _ = io.ReadAll(zr)
		}
		if string(got) != want {
			t.Fatalf("round %d (gz=%s): body\n%q\nrewritten to\n%q\nwant\n%q", round, gz, in, got, want)
		}
		if cl := res.Header.Get("Content-Length"); cl != "" && cl != strconv.Itoa(len(got)) {
			t.Fatalf("Content-Length %s for %d bytes", cl, len(got))
		}
	}
}
