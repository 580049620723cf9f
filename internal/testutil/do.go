package testutil

import (
	"io"
	"net/http"
	"testing"
)

// Do sends req with c (http.DefaultClient when nil) and returns the answer
// with its body, read whole and closed, so that the answer's trailers are
// in. Do fails tb when no answer comes or its body cannot be read.
func Do(tb testing.TB, c *http.Client, req *http.Request) (*http.Response, []byte) {
	tb.Helper()
	if c == nil {
		c = http.DefaultClient
	}
	res, err := c.Do(req)
	if err != nil {
		tb.Fatalf("testutil: Do: %s %s: %v", req.Method, req.URL, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		tb.Fatalf("testutil: Do: %s %s: reading the answer: %v", req.Method, req.URL, err)
	}
	return res, body
}
