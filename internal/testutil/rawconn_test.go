package testutil_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"thanksio-proxy/internal/testutil"
)

func TestRawConnExchange(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.URL.Path)
	}))
	t.Cleanup(srv.Close)
	for _, addr := range []string{srv.URL, srv.Listener.Addr().String()} {
		t.Run(addr, func(t *testing.T) {
			conn, br := testutil.RawConn(t, addr, 5*time.Second)
			// Two requests on one connection, answered in order.
			for _, path := range []string{"/one", "/two"} {
				_, body := testutil.Exchange(t, conn, br, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
				if string(body) != path {
					t.Errorf("answer to %s = %q; want %q", path, body, path)
				}
			}
		})
	}
}
