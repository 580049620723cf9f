package thanksiotest

import (
	"net/http"
	"strconv"
	"testing"
	"time"
)

func TestRateLimitFixedWindowsPerAccount(t *testing.T) {
	clock := newClock()
	s := NewServer(t, Options{Now: clock.Now, AccessLifetime: time.Hour})
	s.SetRateLimit(3, 10*time.Second)
	one, other := s.NewGrant(), s.NewPersonalAccessToken()

	for i := range 3 {
		res, _ := apiGet(t, s, "/ping", one.AccessToken)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("request %d within the limit: %d", i+1, res.StatusCode)
		}
		if got, want := res.Header.Get("X-RateLimit-Remaining"), strconv.Itoa(2-i); got != want || res.Header.Get("X-RateLimit-Limit") != "3" {
			t.Errorf("request %d: X-RateLimit-Remaining %q, Limit %q; want %q, 3", i+1, got, res.Header.Get("X-RateLimit-Limit"), want)
		}
	}
	clock.Advance(2500 * time.Millisecond)
	res, body := apiGet(t, s, "/ping", one.AccessToken)
	if res.StatusCode != http.StatusTooManyRequests || string(body) != `{"message":"Too Many Attempts."}`+"\n" {
		t.Fatalf("request past the limit: %d %s; want 429 Too Many Attempts.", res.StatusCode, body)
	}
	if got := res.Header.Get("Retry-After"); got != "8" {
		t.Errorf("Retry-After = %q; want 8 (7.5 s left, rounded up)", got)
	}
	if got, want := res.Header.Get("X-RateLimit-Reset"), clock.Now().Unix()+8; got != strconv.FormatInt(want, 10) {
		t.Errorf("X-RateLimit-Reset = %q; want %d", got, want)
	}
	// A rotation keeps the account; another account has its own window.
	rotated, ok := s.Rotate(one.RefreshToken)
	if !ok {
		t.Fatal("Rotate failed")
	}
	if res, _ := apiGet(t, s, "/ping", rotated.AccessToken); res.StatusCode != http.StatusTooManyRequests {
		t.Errorf("the rotated token of a limited account: %d; want 429", res.StatusCode)
	}
	if res, _ := apiGet(t, s, "/ping", other); res.StatusCode != http.StatusOK {
		t.Errorf("another account: %d; want 200", res.StatusCode)
	}
	if res, _ := apiGet(t, s, "/ping", "not-a-token"); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("an unauthorized request: %d; want 401", res.StatusCode)
	}
	// The window ends 10 s after its first request, wherever that was.
	clock.Advance(7500 * time.Millisecond)
	if res, _ := apiGet(t, s, "/ping", rotated.AccessToken); res.StatusCode != http.StatusOK {
		t.Errorf("a request in the next window: %d; want 200", res.StatusCode)
	}
	if n := s.RateLimited(); n != 2 {
		t.Errorf("RateLimited() = %d; want 2", n)
	}
}
