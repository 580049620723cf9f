package proxy_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/proxy"
	"thanksio-proxy/ratelimit"
)

// limitedProxy is a proxy in front of the thanks.io double, pacing tenants
// "acme" and "globex" (each holding a personal access token of the
// double) by limiter. It returns the proxy's URL and acme's token.
func limitedProxy(t *testing.T, api *thanksiotest.Server, limiter proxy.Limiter, obs proxy.Observer) (string, string) {
	t.Helper()
	upstream, _ := url.Parse(api.APIURL())
	acme := api.NewPersonalAccessToken()
	h, err := proxy.New(proxy.Config{
		Tokens:   staticTokens(map[string]string{"acme": acme, "globex": api.NewPersonalAccessToken()}),
		Upstream: upstream,
		Limiter:  limiter,
		Observer: obs,
	})
	if err != nil {
		t.Fatal(err)
	}
	return newServer(t, h).URL, acme
}

// spend sends n calls with token straight to the double, as another client
// of the same account would.
func spend(t *testing.T, api *thanksiotest.Server, token string, n int) {
	t.Helper()
	for range n {
		req := newRequest(t, "GET", api.APIURL()+"/ping", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		if res, body := testutil.Do(t, api.Client(), req); res.StatusCode != http.StatusOK {
			t.Fatalf("spending the account: %d %s", res.StatusCode, body)
		}
	}
}

func newLimiter(t *testing.T, limit int, period, maxWait time.Duration) *ratelimit.Limiter {
	t.Helper()
	l, err := ratelimit.New(ratelimit.Config{Limit: limit, Period: period, MaxWait: maxWait})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestRateLimitedAtOnce(t *testing.T) {
	api := thanksiotest.NewServer(t, thanksiotest.Options{})
	srv, _ := limitedProxy(t, api, newLimiter(t, 2, time.Minute, 2*time.Second), nil)

	for i := range 2 {
		if res, body := testutil.Do(t, nil, newRequest(t, "GET", srv+"/ping", nil, "acme")); res.StatusCode != http.StatusOK {
			t.Fatalf("call %d within the limit: %d %s", i+1, res.StatusCode, body)
		}
	}
	start := time.Now()
	res, body := testutil.Do(t, nil, newRequest(t, "POST", srv+"/send/postcard", strings.NewReader(`{}`), "acme"))
	if d := time.Since(start); d > time.Second {
		t.Errorf("the refusal took %v; want it at once, not after waiting in vain", d)
	}
	if res.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("a call past the limit: %d %s; want 429", res.StatusCode, body)
	}
	if code, _ := proxyError(t, res, body); code != proxy.CodeRateLimited {
		t.Errorf("code %q; want %q", code, proxy.CodeRateLimited)
	}
	if ra, err := strconv.Atoi(res.Header.Get("Retry-After")); err != nil || ra < 55 || ra > 62 {
		t.Errorf("Retry-After %q; want about 60 (whole seconds)", res.Header.Get("Retry-After"))
	}
	if n := len(api.APIRequests()); n != 2 {
		t.Errorf("thanks.io got %d calls; want 2 (the refused call reaches nothing)", n)
	}
	// Another tenant is paced apart.
	if res, _ := testutil.Do(t, nil, newRequest(t, "GET", srv+"/ping", nil, "globex")); res.StatusCode != http.StatusOK {
		t.Errorf("another tenant's call: %d; want 200", res.StatusCode)
	}
}

// limitObserver counts the upstream's 429s by outcome.
type limitObserver struct {
	codeObserver
	mu                sync.Mutex
	replayed, relayed int
}

func (o *limitObserver) UpstreamLimited(relayed bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if relayed {
		o.relayed++
	} else {
		o.replayed++
	}
}

func TestRemainingZeroPausesBeforeA429(t *testing.T) {
	api := thanksiotest.NewServer(t, thanksiotest.Options{})
	// thanks.io allows 2 a second; the proxy believes in 10 a second.
	api.SetRateLimit(2, time.Second)
	srv, _ := limitedProxy(t, api, newLimiter(t, 10, time.Second, 10*time.Second), nil)
	for i := range 5 {
		if res, body := testutil.Do(t, nil, newRequest(t, "GET", srv+"/ping", nil, "acme")); res.StatusCode != http.StatusOK {
			t.Fatalf("call %d: %d %s; want 200", i+1, res.StatusCode, body)
		}
	}
	if n := api.RateLimited(); n != 0 {
		t.Errorf("thanks.io answered %d calls 429; want none: its X-RateLimit-Remaining: 0 pauses the tenant first", n)
	}
}

func TestUpstream429PausesAndReplays(t *testing.T) {
	api := thanksiotest.NewServer(t, thanksiotest.Options{})
	api.SetRateLimit(2, time.Second)
	obs := &limitObserver{}
	srv, token := limitedProxy(t, api, newLimiter(t, 10, time.Second, 10*time.Second), obs)
	// Another client spent the account's window.
	spend(t, api, token, 2)

	res, got := testutil.Do(t, nil, newRequest(t, "POST", srv+"/send/postcard", strings.NewReader(`{"n":1}`), "acme"))
	if res.StatusCode != http.StatusOK {
		t.Fatalf("a call that thanks.io refused for a second, with 10 s to wait: %d %s; want 200 after the replay", res.StatusCode, got)
	}
	reqs := api.APIRequests()[2:]
	if len(reqs) != 2 || !reqs[0].RateLimited || reqs[1].RateLimited {
		t.Fatalf("thanks.io saw %d calls of the proxy; want 2: a 429, then the replay after the pause", len(reqs))
	}
	if string(reqs[1].Body) != `{"n":1}` {
		t.Errorf("the replay carried %q; want the refused call's body", reqs[1].Body)
	}
	if obs.replayed != 1 || obs.relayed != 0 {
		t.Errorf("429s replayed %d, relayed %d; want 1, 0", obs.replayed, obs.relayed)
	}
}

func TestUpstream429BeyondTheWaitReachesTheCaller(t *testing.T) {
	api := thanksiotest.NewServer(t, thanksiotest.Options{})
	api.SetRateLimit(1, 10*time.Second)
	obs := &limitObserver{}
	srv, token := limitedProxy(t, api, newLimiter(t, 10, 10*time.Second, time.Second), obs)
	spend(t, api, token, 1)

	res, body := testutil.Do(t, nil, newRequest(t, "GET", srv+"/ping", nil, "acme"))
	if res.StatusCode != http.StatusTooManyRequests || res.Header.Get(proxy.ErrorHeader) != "" {
		t.Fatalf("a call thanks.io refuses for 10 s with 1 s to wait: %d %s; want thanks.io's own 429", res.StatusCode, body)
	}
	if ra, err := strconv.Atoi(res.Header.Get("Retry-After")); err != nil || ra < 9 || ra > 10 {
		t.Errorf("Retry-After %q; want thanks.io's 10", res.Header.Get("Retry-After"))
	}
	if obs.relayed != 1 {
		t.Errorf("429s relayed %d; want 1", obs.relayed)
	}
	// The tenant is paused: the next call is refused by the proxy, at once,
	// without reaching thanks.io.
	before := len(api.APIRequests())
	res, body = testutil.Do(t, nil, newRequest(t, "GET", srv+"/ping", nil, "acme"))
	if code, _ := proxyError(t, res, body); res.StatusCode != http.StatusTooManyRequests || code != proxy.CodeRateLimited {
		t.Errorf("a call during the pause: %d %s; want 429 rate_limited", res.StatusCode, body)
	}
	if after := len(api.APIRequests()); after != before {
		t.Errorf("a call during the pause reached thanks.io")
	}
}

func TestPaginationLinksStayOnTheProxy(t *testing.T) {
	api := thanksiotest.NewServer(t, thanksiotest.Options{})
	base := api.APIURL()
	// thanks.io's list answers: Laravel's paginator, with absolute links,
	// its slashes escaped.
	api.HandleAPI("GET /orders/list", func(w http.ResponseWriter, r *http.Request) {
		page, _ := strconv.Atoi(r.URL.Query().Get("page"))
		page = max(page, 1)
		next := "null"
		if page < 3 {
			next = fmt.Sprintf(`"%s/orders/list?page=%d"`, base, page+1)
		}
		body := fmt.Sprintf(`{"data":[{"id":%d}],"links":{"first":"%s/orders/list?page=1","next":%s},"meta":{"current_page":%d,"path":"%s/orders/list"}}`,
			page, base, next, page, base)
		body = strings.ReplaceAll(body, "/", `\/`)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write([]byte(body))
	})
	upstream, _ := url.Parse(base)
	h, err := proxy.New(proxy.Config{Tokens: staticTokens(map[string]string{"acme": api.NewPersonalAccessToken()}),
		Upstream: upstream, PublicURL: "http://proxy.invalid"})
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, h)

	var ids []int
	for next := "http://proxy.invalid/orders/list"; next != ""; {
		if !strings.HasPrefix(next, "http://proxy.invalid/") {
			t.Fatalf("links.next = %q; want it on the proxy", next)
		}
		res, body := testutil.Do(t, nil, newRequest(t, "GET", srv.URL+strings.TrimPrefix(next, "http://proxy.invalid"), nil, "acme"))
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", next, res.StatusCode, body)
		}
		if cl := res.Header.Get("Content-Length"); cl != "" && cl != strconv.Itoa(len(body)) {
			t.Errorf("Content-Length %s for a body of %d bytes", cl, len(body))
		}
		if strings.Contains(string(body), "127.0.0.1") {
			t.Errorf("an answer still names the upstream: %s", body)
		}
		var page struct {
			Data  []struct{ ID int }
			Links struct{ Next *string }
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatalf("the rewritten answer is not JSON: %v: %s", err, body)
		}
		ids = append(ids, page.Data[0].ID)
		next = ""
		if page.Links.Next != nil {
			next = *page.Links.Next
		}
	}
	if fmt.Sprint(ids) != "[1 2 3]" {
		t.Errorf("pages %v; want [1 2 3]", ids)
	}
}
