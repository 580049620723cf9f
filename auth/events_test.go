package auth_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/store"
)

// changes records the state changes told to it, by every replica it is
// given to.
type changes struct {
	mu   sync.Mutex
	all  []auth.StateChange
	more chan struct{} // closed and replaced on every change
}

func newChanges() *changes { return &changes{more: make(chan struct{})} }

func (c *changes) Notify(sc auth.StateChange) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.all = append(c.all, sc)
	close(c.more)
	c.more = make(chan struct{})
}

// of returns the changes of type typ so far.
func (c *changes) of(typ string) []auth.StateChange {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []auth.StateChange
	for _, sc := range c.all {
		if sc.Type == typ {
			out = append(out, sc)
		}
	}
	return out
}

// wait waits until n changes of type typ were told, failing the test after
// 10 seconds.
func (c *changes) wait(t *testing.T, typ string, n int) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		more := c.more
		c.mu.Unlock()
		if len(c.of(typ)) >= n {
			return
		}
		select {
		case <-more:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %d %s changes; got %d", n, typ, len(c.of(typ)))
		}
	}
}

// expect checks that exactly want changes of type typ were told, each for
// tenant, with a reason that holds no token of g.
func (c *changes) expect(t *testing.T, typ, tenant string, want int, g ...thanksiotest.Token) {
	t.Helper()
	got := c.of(typ)
	if len(got) != want {
		t.Errorf("%s changes = %d (%+v); want %d", typ, len(got), got, want)
	}
	for _, sc := range got {
		if sc.Tenant != tenant || sc.Reason == "" || sc.Time.IsZero() {
			t.Errorf("%s change = %+v; want tenant %q, a reason and a time", typ, sc, tenant)
		}
		for _, tok := range g {
			if strings.Contains(sc.Reason, tok.AccessToken) || strings.Contains(sc.Reason, tok.RefreshToken) {
				t.Errorf("%s change's reason %q holds a token", typ, sc.Reason)
			}
		}
	}
}

func notifyTo(c *changes) func(*auth.Config) {
	return func(cfg *auth.Config) { cfg.Notifier = c }
}

func TestImportAndForgetTellOnce(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	got := newChanges()
	tokens := replica(t, store.NewMemory(), double, notifyTo(got))
	g := double.NewGrant()
	importGrant(t, tokens, "acme", g, g.Expiry)
	got.expect(t, auth.ChangeConnected, "acme", 1, g)

	if err := tokens.Forget(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	got.expect(t, auth.ChangeDeleted, "acme", 1)
	// Nothing left to delete: no change.
	for _, tenant := range []string{"acme", "never-held"} {
		if err := tokens.Forget(t.Context(), tenant); err != nil {
			t.Fatal(err)
		}
	}
	got.expect(t, auth.ChangeDeleted, "acme", 1)
	if n := len(got.of(auth.ChangeConnected)) + len(got.of(auth.ChangeDeleted)); n != 2 {
		t.Errorf("%d changes; want one connected and one deleted", n)
	}
}

func TestConnectCompletedTellsConnected(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	const callback = "https://proxy.example/oauth/callback"
	double.AddRedirectURL(callback)
	got := newChanges()
	tokens := replica(t, store.NewMemory(), double, notifyTo(got), func(c *auth.Config) {
		c.OAuth = double.OAuthConfig(callback)
	})
	link, err := tokens.Connect(t.Context(), "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	// The account owner approves: the double redirects to the callback.
	client := double.Client()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	res, err := client.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	loc, err := url.Parse(res.Header.Get("Location"))
	if err != nil || loc.Query().Get("code") == "" {
		t.Fatalf("authorize answered %d, Location %q; want a redirect with a code", res.StatusCode, res.Header.Get("Location"))
	}
	done, err := tokens.Complete(t.Context(), loc.Query().Get("state"), loc.Query().Get("code"), "")
	if err != nil || done.Outcome != "" {
		t.Fatalf("Complete = %+v, %v; want success", done, err)
	}
	got.expect(t, auth.ChangeConnected, "acme", 1)
	// The state is used: a replay completes nothing and tells nothing.
	if done, _ := tokens.Complete(t.Context(), loc.Query().Get("state"), loc.Query().Get("code"), ""); done.Outcome == "" {
		t.Fatalf("second Complete succeeded")
	}
	got.expect(t, auth.ChangeConnected, "acme", 1)
}

// threeReplicas returns three token lifecycles on one Redis, telling got,
// and the opener of that Redis's stores.
func threeReplicas(t *testing.T, double *thanksiotest.Server) ([]*auth.Tokens, *changes, func() *store.Redis) {
	t.Helper()
	open := testutil.RedisStores(t, "")
	got := newChanges()
	var replicas []*auth.Tokens
	for range 3 {
		replicas = append(replicas, replica(t, open(), double, notifyTo(got)))
	}
	return replicas, got, open
}

func TestRevokedRefreshTellsOnceAcrossThreeReplicas(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	replicas, got, _ := threeReplicas(t, double)
	g := importExpired(t, double, replicas[0], "acme")
	double.Revoke(g.RefreshToken)
	double.SetTokenFault(thanksiotest.TokenFault{Delay: 50 * time.Millisecond})

	var wg sync.WaitGroup
	errs := make(chan error, 30)
	for i := range 30 {
		wg.Go(func() {
			_, err := replicas[i%3].Token(context.Background(), "acme")
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, auth.ErrReauthorizationRequired) {
			t.Errorf("Token = %v; want ErrReauthorizationRequired", err)
		}
	}
	got.expect(t, auth.ChangeReauthorizationRequired, "acme", 1, g)
	got.expect(t, auth.ChangeConnected, "acme", 1, g)
}

func TestRefreshFailingAndRecoveredTellOnceAcrossReplicas(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	replicas, got, open := threeReplicas(t, double)
	g := double.NewGrant()
	importGrant(t, replicas[0], "acme", g, g.Expiry)

	fail := func(n int) {
		t.Helper()
		double.SetTokenFault(thanksiotest.TokenFault{Status: http.StatusServiceUnavailable})
		for i := range n {
			if _, err := replicas[i%3].RefreshNow(t.Context(), "acme"); !errors.Is(err, auth.ErrTokenUnavailable) {
				t.Fatalf("RefreshNow with the token endpoint down = %v; want ErrTokenUnavailable", err)
			}
		}
		double.SetTokenFault(thanksiotest.TokenFault{})
	}
	refresh := func(r *auth.Tokens) {
		t.Helper()
		if _, err := r.RefreshNow(t.Context(), "acme"); err != nil {
			t.Fatalf("RefreshNow = %v", err)
		}
	}

	// Two failures, then a success: below the threshold, nothing to tell.
	fail(auth.RefreshFailingAfter - 1)
	refresh(replicas[2])
	got.expect(t, auth.ChangeRefreshFailing, "acme", 0)
	got.expect(t, auth.ChangeRecovered, "acme", 0)

	// Failures on every replica in turn: the count is the record's, and
	// the one replica that takes it to the threshold tells.
	fail(auth.RefreshFailingAfter + 2)
	got.expect(t, auth.ChangeRefreshFailing, "acme", 1, g)
	if sc := got.of(auth.ChangeRefreshFailing); len(sc) == 1 && !strings.Contains(sc[0].Reason, "503") {
		t.Errorf("refresh_failing reason = %q; want the token endpoint's status", sc[0].Reason)
	}
	refresh(replicas[1])
	refresh(replicas[0])
	got.expect(t, auth.ChangeRecovered, "acme", 1)
	if rec, err := open().Get(t.Context(), "acme"); err != nil || rec.Failures != 0 {
		t.Errorf("stored Failures after a success = %d, %v; want 0", rec.Failures, err)
	}

	// A new run of failures is a new change.
	fail(auth.RefreshFailingAfter)
	got.expect(t, auth.ChangeRefreshFailing, "acme", 2)
}

func TestRecoveredIsToldWhenAPendingWriteLands(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	got := newChanges()
	flaky := &flakyPutStore{Store: store.NewMemory()}
	tokens := replica(t, flaky, double, notifyTo(got))
	g := double.NewGrant()
	importGrant(t, tokens, "acme", g, g.Expiry)
	double.SetTokenFault(thanksiotest.TokenFault{Status: http.StatusBadGateway, Times: auth.RefreshFailingAfter})
	for range auth.RefreshFailingAfter {
		_, _ = tokens.RefreshNow(t.Context(), "acme")
	}
	got.expect(t, auth.ChangeRefreshFailing, "acme", 1)

	// The refresh succeeds, but the store refuses its write for a while:
	// the recovery is told when the rotated pair lands, not before.
	flaky.failures.Store(2)
	_, _ = tokens.RefreshNow(t.Context(), "acme")
	got.wait(t, auth.ChangeRecovered, 1)
	if rec, err := flaky.Get(t.Context(), "acme"); err != nil || rec.Failures != 0 || double.IsRevoked(rec.RefreshToken) {
		t.Errorf("stored record after recovery: Failures %d, %v; want the rotated pair with 0 failures", rec.Failures, err)
	}
	got.expect(t, auth.ChangeRecovered, "acme", 1)
}
