package auth_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/store"
)

func TestTokenEndpointRedirectsAreNotFollowed(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	var received atomic.Int32
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if len(body) > 0 {
			received.Add(1)
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(elsewhere.Close)
	for _, status := range []int{http.StatusTemporaryRedirect, http.StatusPermanentRedirect, http.StatusFound} {
		redirecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, elsewhere.URL+"/oauth/token", status)
		}))
		t.Cleanup(redirecting.Close)
		st := store.NewMemory()
		tokens := replica(t, st, double, func(c *auth.Config) {
			c.OAuth.Endpoint = oauth2.Endpoint{TokenURL: redirecting.URL, AuthStyle: oauth2.AuthStyleInParams}
			// A caller's client that would follow redirects.
			c.HTTPClient = &http.Client{Timeout: 5 * time.Second}
		})
		importExpired(t, double, tokens, "acme")
		if _, err := tokens.Token(t.Context(), "acme"); !errors.Is(err, auth.ErrTokenUnavailable) {
			t.Errorf("%d from the token endpoint: Token = %v; want ErrTokenUnavailable (a failed call, not a revocation)", status, err)
		}
		if st, err := tokens.Status(t.Context(), "acme"); err != nil || st.State != store.StateActive {
			t.Errorf("%d from the token endpoint: state %q, %v; want active", status, st.State, err)
		}
	}
	if n := received.Load(); n != 0 {
		t.Errorf("the redirect target received %d form bodies (client secret, refresh token); want none", n)
	}
}
