package main

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
)

// replicas starts n proxies that share one Redis and key prefix, with env
// added to their environment, and imports a personal access token of
// double for each tenant through the first.
func replicas(t *testing.T, double *thanksiotest.Server, n int, env map[string]string, tenants ...string) ([]*instance, map[string]string) {
	t.Helper()
	shared := redisEnv(t)
	for k, v := range env {
		shared[k] = v
	}
	var ps []*instance
	for range n {
		ps = append(ps, start(t, double, shared))
	}
	tokens := make(map[string]string)
	for _, tenant := range tenants {
		tokens[tenant] = double.NewPersonalAccessToken()
		body := `{"access_token":"` + tokens[tenant] + `"}`
		if code, b := ps[0].admin(t, http.MethodPut, "/admin/tenants/"+tenant+"/token", body); code != http.StatusOK {
			t.Fatalf("import %s: %d %s", tenant, code, b)
		}
	}
	return ps, tokens
}

// answer is what a caller got.
type answer struct {
	status  int
	header  http.Header
	body    string
	took    time.Duration
	replica int
}

// burst sends n calls for tenant at once, spread over ps, and returns
// their answers.
func burst(t *testing.T, ps []*instance, tenant string, n int) []answer {
	t.Helper()
	answers := make([]answer, n)
	var wg sync.WaitGroup
	release := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-release
			p := ps[i%len(ps)]
			start := time.Now()
			status, header, body := p.call(t, tenant, "/ping")
			answers[i] = answer{status, header, body, time.Since(start), i % len(ps)}
		})
	}
	close(release)
	wg.Wait()
	return answers
}

// checkSlidingWindow fails t when more than limit of tenant's calls reached
// double within any window of period.
func checkSlidingWindow(t *testing.T, reqs []thanksiotest.APIRequest, token string, limit int, period time.Duration) {
	t.Helper()
	var at []time.Time
	for _, r := range reqs {
		if r.Token == token {
			at = append(at, r.Time)
		}
	}
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	for i := limit; i < len(at); i++ {
		if gap := at[i].Sub(at[i-limit]); gap < period {
			t.Errorf("calls %d and %d reached thanks.io %v apart: %d calls within %v; want at most %d", i-limit+1, i+1, gap, limit+1, period, limit)
		}
	}
}

// limiterCommands returns how many commands the rate limiter ran on the
// Redis at url: its scripts (EVALSHA, EVAL) and releases (ZREM).
func limiterCommands(t *testing.T, url string) int64 {
	t.Helper()
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opt)
	defer c.Close()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || (name != "cmdstat_evalsha" && name != "cmdstat_eval" && name != "cmdstat_zrem") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		v, _ := strconv.ParseInt(calls, 10, 64)
		n += v
	}
	return n
}

func TestRateLimitAcrossReplicas(t *testing.T) {
	const (
		limit  = 20
		period = 2 * time.Second
		calls  = 100
	)
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	double.SetRateLimit(limit, period)
	// A Redis of the test's own, so that its command counts are the
	// proxies' alone.
	own := testutil.StartRedis(t)
	ps, tokens := replicas(t, double, 3, map[string]string{"REDIS_URL": own.URL(), "RATE_LIMIT": "20/2s"}, "acme", "globex")
	before := limiterCommands(t, own.URL())

	// Another tenant calls, one call at a time, while acme's calls wait
	// for their turns: from the arrival of acme's first window, every
	// 150 ms (under its own limit).
	var others []time.Duration
	stop := make(chan struct{})
	otherDone := make(chan struct{})
	go func() {
		defer close(otherDone)
		if err := double.WaitAPIRequests(t.Context(), limit); err != nil {
			return
		}
		tick := time.NewTicker(150 * time.Millisecond)
		defer tick.Stop()
		for {
			start := time.Now()
			if status, _, body := ps[len(others)%3].call(t, "globex", "/ping"); status != http.StatusOK {
				t.Errorf("another tenant's call during the burst: %d %s", status, body)
				return
			}
			others = append(others, time.Since(start))
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()

	start := time.Now()
	answers := burst(t, ps, "acme", calls)
	took := time.Since(start)
	close(stop)
	<-otherDone

	for i, a := range answers {
		if a.status != http.StatusOK {
			t.Fatalf("call %d: %d %s; want every call answered 200", i, a.status, a.body)
		}
	}
	if n := double.RateLimited(); n != 0 {
		t.Errorf("thanks.io answered %d calls 429; want none", n)
	}
	checkSlidingWindow(t, double.APIRequests(), tokens["acme"], limit, period)
	// Four full windows after the first burst: 8 s, and a guard (400 ms)
	// for each.
	ideal := time.Duration(calls/limit-1) * period
	if took > ideal*13/10 {
		t.Errorf("%d calls took %v; want at most 1.3 times the ideal %v", calls, took, ideal)
	}
	slices.Sort(others)
	if len(others) == 0 {
		t.Fatal("the other tenant made no call")
	}
	if p99 := others[len(others)*99/100]; p99 > 50*time.Millisecond {
		t.Errorf("another tenant's p99 during the burst: %v over %d calls; want under 50ms", p99, len(others))
	}
	// Its calls never waited for a turn.
	for _, p := range ps {
		for _, line := range strings.Split(p.logs.String(), "\n") {
			if f := logFields(line); f["msg"] == "request" && f["tenant"] == "globex" && f["rate_limit_wait"] != "0s" {
				t.Errorf("another tenant's call waited %s for a turn: %s", f["rate_limit_wait"], line)
			}
		}
	}
	used := limiterCommands(t, own.URL()) - before
	admitted := int64(calls + len(others))
	t.Logf("%d calls in %v (ideal %v); the other tenant's p99 %v; %d limiter commands for %d admitted calls: %.2f each",
		calls, took.Round(time.Millisecond), ideal, others[len(others)*99/100], used, admitted, float64(used)/float64(admitted))
	if float64(used)/float64(admitted) > 3 {
		t.Errorf("%d Redis commands for %d admitted calls; want at most 3 each", used, admitted)
	}
}

func TestRateLimitRefusesAtOnceBeyondTheWait(t *testing.T) {
	const limit = 20
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	double.SetRateLimit(limit, 2*time.Second)
	own := testutil.StartRedis(t)
	ps, _ := replicas(t, double, 3, map[string]string{"REDIS_URL": own.URL(), "RATE_LIMIT": "20/2s", "RATE_LIMIT_MAX_WAIT": "2s"}, "acme")

	answers := burst(t, ps, "acme", 200)
	ok, refused := 0, 0
	for i, a := range answers {
		switch {
		case a.status == http.StatusOK:
			ok++
			if a.took > 3*time.Second {
				t.Errorf("call %d was answered after %v; want its turn within the 2 s wait", i, a.took)
			}
		case a.status == http.StatusTooManyRequests && a.header.Get("X-Thanksio-Proxy-Error") == "rate_limited":
			refused++
			// Its turn would have come after the burst's window (2.4 s)
			// or the next (4.8 s).
			if ra, err := strconv.Atoi(a.header.Get("Retry-After")); err != nil || ra < 2 || ra > 5 {
				t.Errorf("call %d: Retry-After %q; want the whole seconds until its turn", i, a.header.Get("Retry-After"))
			}
			if a.took > time.Second {
				t.Errorf("call %d was refused after %v; want at once", i, a.took)
			}
		default:
			t.Errorf("call %d: %d %s; want 200 or 429 rate_limited", i, a.status, a.body)
		}
	}
	// The burst's window goes at once; a call of the next one goes only
	// if it arrived 0.4 s late, its turn then being within its 2 s.
	if ok < limit || ok > 2*limit || ok+refused != 200 {
		t.Errorf("%d answered 200, %d refused; want %d to %d answered and the rest refused", ok, refused, limit, 2*limit)
	}
	if n := double.RateLimited(); n != 0 {
		t.Errorf("thanks.io answered %d calls 429; want none", n)
		for _, p := range ps {
			if strings.Contains(p.logs.String(), "shared rate limit schedule failed") {
				t.Log("a replica paced alone: its Redis calls took longer than the limiter allows")
			}
		}
	}
	if n := len(double.APIRequests()); n != ok {
		t.Errorf("thanks.io got %d calls; want the %d answered (refused calls reach nothing)", n, ok)
	}
	t.Logf("%d calls answered 200, %d refused at once", ok, refused)
}

func TestRateLimitYieldsToAnotherClientOfTheAccount(t *testing.T) {
	const (
		limit  = 20
		period = 2 * time.Second
		theirs = 12 // calls another client makes in each of thanks.io's windows
		ours   = 6  // calls of each replica's one caller
	)
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	double.SetRateLimit(limit, period)
	own := testutil.StartRedis(t)
	ps, tokens := replicas(t, double, 3, map[string]string{"REDIS_URL": own.URL(), "RATE_LIMIT": "20/2s"}, "acme")

	// The other client spends its share at the start of every window.
	spent := make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for round := 0; ; round++ {
			for range theirs {
				req, _ := http.NewRequest(http.MethodGet, double.APIURL()+"/ping", nil)
				req.Header.Set("Authorization", "Bearer "+tokens["acme"])
				if res, err := double.Client().Do(req); err == nil {
					res.Body.Close()
				}
			}
			if round == 0 {
				close(spent)
			}
			select {
			case <-done:
				return
			case <-time.After(period):
			}
		}
	}()
	<-spent

	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Go(func() {
			for k := range ours {
				// The caller's request id reaches thanks.io: it tells the
				// replicas apart there.
				id := "replica" + strconv.Itoa(i) + "-" + strconv.Itoa(k)
				if status, _, body := do(t, http.MethodGet, p.data+"/ping", map[string]string{"X-Tenant-ID": "acme", "X-Request-ID": id}, ""); status != http.StatusOK {
					t.Errorf("replica %d, call %d: %d %s; want 200 (the caller can wait)", i, k, status, body)
				}
			}
		})
	}
	wg.Wait()

	// The 429s each replica got, by thanks.io's window: at most one each.
	seen := make(map[string]int)
	total := 0
	for _, r := range double.APIRequests() {
		id := r.Header.Get("X-Request-Id")
		if !r.RateLimited || id == "" {
			continue
		}
		replica, _, _ := strings.Cut(id, "-")
		seen[replica+"@"+r.RateWindow.String()]++
		total++
	}
	for k, n := range seen {
		if n > 1 {
			t.Errorf("replica %s got %d 429s in one of thanks.io's windows; want at most one per pause", k, n)
		}
	}
	t.Logf("the proxies got %d 429s from thanks.io while another client spent %d calls of each window", total, theirs)
}
