package events_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/events"
	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/store"
)

const secret = "whsec_test-secret"

// delivery is one request the receiver got.
type delivery struct {
	header http.Header
	body   []byte
}

// receiver is the application's webhook endpoint. answer decides the
// status of each request (the nth, from 1); nil answers 200.
type receiver struct {
	url    string
	answer func(n int, r *http.Request) int
	n      atomic.Int64
	got    chan delivery
}

func newReceiver(t *testing.T, answer func(n int, r *http.Request) int) *receiver {
	t.Helper()
	rc := &receiver{answer: answer, got: make(chan delivery, 100)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		n := int(rc.n.Add(1))
		status := http.StatusOK
		if rc.answer != nil {
			status = rc.answer(n, r)
		}
		if status == http.StatusFound {
			// A redirect to a place that would accept it: followed, it
			// would count as delivered.
			w.Header().Set("Location", "/accepted")
		}
		w.WriteHeader(status)
		if status == http.StatusOK {
			rc.got <- delivery{header: r.Header.Clone(), body: body}
		}
	}))
	t.Cleanup(srv.Close)
	rc.url = srv.URL + "/hooks/thanksio"
	return rc
}

// next waits for the next delivery the receiver accepted.
func (rc *receiver) next(t *testing.T) delivery {
	t.Helper()
	select {
	case d := <-rc.got:
		return d
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for a delivery")
		return delivery{}
	}
}

// results records what the Dispatcher told its Observer.
type results chan string

func (r results) Delivered(result string) { r <- result }

// expect waits for the next result and checks it.
func (r results) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-r:
		if got != want {
			t.Fatalf("delivery result = %q; want %q", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for a %q result", want)
	}
}

// verify checks a signature header the way a receiver that read only the
// documented scheme would: "t=<unix seconds>,v1=<hex HMAC-SHA256 of
// "<t>.<raw body>">", and a timestamp within tolerance of now.
func verify(header string, body []byte, key string, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs [][]byte
	for part := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return errors.New("malformed signature header")
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			b, err := hex.DecodeString(v)
			if err != nil {
				return err
			}
			sigs = append(sigs, b)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return errors.New("no timestamp")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return errors.New("timestamp outside the tolerance")
	}
	mac := hmac.New(sha256.New, []byte(key))
	mac.Write([]byte(ts + "." + string(body)))
	want := mac.Sum(nil)
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			return nil
		}
	}
	return errors.New("no matching v1 signature")
}

// dispatcher returns a started Dispatcher (Run until the test ends) with
// cfg completed for rc.
func dispatcher(t *testing.T, rc *receiver, cfg events.Config) *events.Dispatcher {
	t.Helper()
	cfg.URL = rc.url
	if cfg.Secret == "" {
		cfg.Secret = secret
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 10 * time.Millisecond
	}
	d, err := events.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		d.Run(ctx)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		d.Close()
	})
	return d
}

func change(typ, tenant string, at time.Time) auth.StateChange {
	return auth.StateChange{Tenant: tenant, Type: typ, Reason: "because", Time: at}
}

var eventID = regexp.MustCompile(`^evt_[0-9a-f]{32}$`)

func TestSignatureVerifiesAtTheReceiver(t *testing.T) {
	rc := newReceiver(t, nil)
	obs := make(results, 10)
	d := dispatcher(t, rc, events.Config{Observer: obs})
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	d.Notify(change(auth.ChangeReauthorizationRequired, "acme", at))

	got := rc.next(t)
	obs.expect(t, "delivered")
	if err := verify(got.header.Get("X-Thanksio-Proxy-Signature"), got.body, secret, time.Now(), 5*time.Minute); err != nil {
		t.Errorf("signature does not verify: %v", err)
	}
	if err := verify(got.header.Get("X-Thanksio-Proxy-Signature"), got.body, "another secret", time.Now(), 5*time.Minute); err == nil {
		t.Errorf("signature verifies under another secret")
	}
	tampered := []byte(strings.Replace(string(got.body), "acme", "acmf", 1))
	if err := verify(got.header.Get("X-Thanksio-Proxy-Signature"), tampered, secret, time.Now(), 5*time.Minute); err == nil {
		t.Errorf("signature verifies a tampered body")
	}
	if ct, ua := got.header.Get("Content-Type"), got.header.Get("User-Agent"); ct != "application/json" || ua != "thanksio-proxy" {
		t.Errorf("Content-Type %q, User-Agent %q; want application/json, thanksio-proxy", ct, ua)
	}
	var fields map[string]any
	if err := json.Unmarshal(got.body, &fields); err != nil {
		t.Fatal(err)
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range fields {
			if !yield(k) {
				return
			}
		}
	})
	if want := []string{"id", "reason", "tenant", "time", "type"}; !slices.Equal(keys, want) {
		t.Errorf("event fields = %v; want %v", keys, want)
	}
	var ev events.Event
	if err := json.Unmarshal(got.body, &ev); err != nil {
		t.Fatal(err)
	}
	if !eventID.MatchString(ev.ID) || ev.Type != "tenant.reauthorization_required" || ev.Tenant != "acme" ||
		!ev.Time.Equal(at) || ev.Reason != "because" {
		t.Errorf("event = %+v; want the change, with an evt_ id", ev)
	}
}

func TestRedeliveryAfterTheReceiverFails(t *testing.T) {
	clock := testutil.NewClock(time.Now())
	outbox := store.NewMemoryOutbox()
	outbox.Now = clock.Now
	var redirected atomic.Bool
	rc := newReceiver(t, func(n int, r *http.Request) int {
		switch {
		case r.URL.Path == "/accepted":
			redirected.Store(true)
			return http.StatusOK
		case n == 1:
			return http.StatusInternalServerError
		case n == 2:
			return http.StatusFound
		}
		return http.StatusOK
	})
	obs := make(results, 10)
	d := dispatcher(t, rc, events.Config{Outbox: outbox, Observer: obs, Now: clock.Now})
	d.Notify(change(auth.ChangeConnected, "acme", clock.Now()))

	obs.expect(t, "failed") // 500
	clock.Advance(10 * time.Minute)
	obs.expect(t, "failed") // a redirect, not followed
	clock.Advance(10 * time.Minute)
	obs.expect(t, "delivered")
	got := rc.next(t)
	if redirected.Load() {
		t.Errorf("the redirect was followed")
	}
	if n := rc.n.Load(); n != 3 {
		t.Errorf("receiver got %d requests; want 3", n)
	}
	if err := verify(got.header.Get(events.SignatureHeader), got.body, secret, clock.Now(), time.Minute); err != nil {
		t.Errorf("redelivery's signature: %v", err)
	}
	clock.Advance(time.Hour)
	if left, err := outbox.Claim(t.Context(), 10, 0); err != nil || len(left) != 0 {
		t.Errorf("outbox after delivery = %+v, %v; want empty", left, err)
	}
}

func TestGivesUpAfterMaxAge(t *testing.T) {
	clock := testutil.NewClock(time.Now())
	outbox := store.NewMemoryOutbox()
	outbox.Now = clock.Now
	rc := newReceiver(t, func(int, *http.Request) int { return http.StatusServiceUnavailable })
	obs := make(results, 10)
	dispatcher(t, rc, events.Config{Outbox: outbox, Observer: obs, Now: clock.Now}).
		Notify(change(auth.ChangeConnected, "acme", clock.Now()))

	obs.expect(t, "failed")
	clock.Advance(23 * time.Hour)
	obs.expect(t, "failed")
	clock.Advance(time.Hour)
	obs.expect(t, "dropped")
	if n := rc.n.Load(); n != 3 {
		t.Errorf("receiver got %d requests; want 3", n)
	}
	clock.Advance(time.Hour)
	if left, err := outbox.Claim(t.Context(), 10, 0); err != nil || len(left) != 0 {
		t.Errorf("outbox after giving up = %+v, %v; want empty", left, err)
	}
}

func TestCloseGivesClaimsBack(t *testing.T) {
	outbox := store.NewMemoryOutbox()
	release := make(chan struct{})
	defer close(release)
	var ids sync.Map
	rc := newReceiver(t, func(n int, r *http.Request) int {
		if n == 1 {
			// The first attempt hangs until the sender gives up on it.
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	obsA := make(results, 10)
	a, err := events.New(events.Config{URL: rc.url, Secret: secret, Outbox: outbox, Observer: obsA,
		Concurrency: 1, CloseTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	a.Notify(change(auth.ChangeConnected, "one", time.Now()))
	testutil.Eventually(t, "the first attempt reaches the receiver", func() bool { return rc.n.Load() == 1 })
	// The second waits behind the first, claimed by a for 30 s.
	a.Notify(change(auth.ChangeConnected, "two", time.Now()))
	a.Close()
	select {
	case r := <-obsA:
		t.Errorf("a told %q; want nothing from an attempt cut short by Close", r)
	default:
	}

	// Another replica takes both over at once, not when a's leases end.
	start := time.Now()
	dispatcher(t, rc, events.Config{Outbox: outbox})
	for range 2 {
		var ev events.Event
		if err := json.Unmarshal(rc.next(t).body, &ev); err != nil {
			t.Fatal(err)
		}
		ids.Store(ev.Tenant, ev.ID)
	}
	if waited := time.Since(start); waited > 10*time.Second {
		t.Errorf("the other replica delivered after %v; want at once", waited)
	}
	for _, tenant := range []string{"one", "two"} {
		if _, ok := ids.Load(tenant); !ok {
			t.Errorf("event of %q not delivered by the other replica", tenant)
		}
	}
}

func TestSurvivesARestartWithRedis(t *testing.T) {
	open := testutil.RedisStores(t, "")
	var down atomic.Bool
	down.Store(true)
	rc := newReceiver(t, func(int, *http.Request) int {
		if down.Load() {
			return http.StatusBadGateway
		}
		return http.StatusOK
	})
	obs := make(results, 10)
	a, err := events.New(events.Config{URL: rc.url, Secret: secret, Outbox: open().Outbox(), Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	a.Notify(change(auth.ChangeDeleted, "acme", time.Now()))
	obs.expect(t, "failed")
	a.Close() // the replica stops; its event waits in Redis for its retry

	down.Store(false)
	dispatcher(t, rc, events.Config{Outbox: open().Outbox(), Observer: obs})
	obs.expect(t, "delivered")
	var ev events.Event
	if err := json.Unmarshal(rc.next(t).body, &ev); err != nil || ev.Tenant != "acme" || ev.Type != auth.ChangeDeleted {
		t.Errorf("delivered after the restart: %+v, %v; want acme's tenant.deleted", ev, err)
	}
}

// refusingOutbox refuses every call, as an outbox whose Redis is down.
type refusingOutbox struct{}

var errDown = errors.New("connection refused")

func (refusingOutbox) Add(context.Context, string, []byte, time.Duration) error { return errDown }
func (refusingOutbox) Claim(context.Context, int, time.Duration) ([]store.OutboxItem, error) {
	return nil, errDown
}
func (refusingOutbox) Retry(context.Context, string, time.Duration) error { return errDown }
func (refusingOutbox) Release(context.Context, string) error              { return errDown }
func (refusingOutbox) Done(context.Context, string) error                 { return errDown }

func TestDeliversFromMemoryWhenTheOutboxRefuses(t *testing.T) {
	rc := newReceiver(t, nil)
	obs := make(results, 10)
	dispatcher(t, rc, events.Config{Outbox: refusingOutbox{}, Observer: obs}).
		Notify(change(auth.ChangeRecovered, "acme", time.Now()))
	obs.expect(t, "delivered")
	rc.next(t)
}

func TestNewRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  events.Config
	}{
		{"no URL", events.Config{Secret: secret}},
		{"relative URL", events.Config{URL: "/hooks", Secret: secret}},
		{"other scheme", events.Config{URL: "ftp://app.example/hooks", Secret: secret}},
		{"no secret", events.Config{URL: "https://user:pw@app.example/hooks"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := events.New(tt.cfg)
			if err == nil {
				t.Fatalf("New = nil error; want one")
			}
			if strings.Contains(err.Error(), "pw") || strings.Contains(err.Error(), "app.example") {
				t.Errorf("error %q repeats the URL", err)
			}
		})
	}
}

// issuedToken matches any token or code the thanks.io double issues.
var issuedToken = regexp.MustCompile(`(at|rt|pat|ac)_[0-9a-f]{32}`)

func TestNoTokenInAnyEvent(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	rc := newReceiver(t, nil)
	d := dispatcher(t, rc, events.Config{})
	tokens := auth.New(auth.Config{Store: store.NewMemory(), OAuth: double.OAuthConfig(""), Notifier: d})
	t.Cleanup(tokens.Close)
	ctx := t.Context()

	g := double.NewGrant()
	grant := auth.Grant{AccessToken: g.AccessToken, RefreshToken: g.RefreshToken, Expiry: time.Now().Add(-time.Second)}
	if _, err := tokens.Import(ctx, "acme", grant); err != nil { // connected
		t.Fatal(err)
	}
	double.SetTokenFault(thanksiotest.TokenFault{Status: http.StatusInternalServerError, Times: auth.RefreshFailingAfter})
	for range auth.RefreshFailingAfter { // refresh_failing
		_, _ = tokens.RefreshNow(ctx, "acme")
	}
	if _, err := tokens.RefreshNow(ctx, "acme"); err != nil { // recovered
		t.Fatal(err)
	}
	cur, _ := double.CurrentToken(g.RefreshToken)
	double.Revoke(cur.RefreshToken)
	if _, err := tokens.RefreshNow(ctx, "acme"); !errors.Is(err, auth.ErrReauthorizationRequired) { // reauthorization_required
		t.Fatalf("RefreshNow after the revocation = %v", err)
	}
	if err := tokens.Forget(ctx, "acme"); err != nil { // deleted
		t.Fatal(err)
	}

	want := []string{auth.ChangeConnected, auth.ChangeRefreshFailing, auth.ChangeRecovered,
		auth.ChangeReauthorizationRequired, auth.ChangeDeleted}
	var got []string
	for range want {
		body := rc.next(t).body
		if issuedToken.Match(body) {
			t.Errorf("event %s holds a token", body)
		}
		for _, secret := range []string{double.ClientSecret(), g.AccessToken, g.RefreshToken, cur.AccessToken, cur.RefreshToken} {
			if strings.Contains(string(body), secret) {
				t.Errorf("event %s holds a secret", body)
			}
		}
		var ev events.Event
		if err := json.Unmarshal(body, &ev); err != nil {
			t.Fatal(err)
		}
		got = append(got, ev.Type)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("event types = %v; want %v", got, want)
	}
}
