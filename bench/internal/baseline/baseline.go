// Package baseline is the floor that the proxy is measured against: a bare
// httputil.ReverseProxy that adds one constant Authorization header, with the
// proxy's upstream transport settings and the same pooled 32 KiB copy buffer,
// so that a comparison with the proxy shows only what the proxy adds.
package baseline

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"
)

// Transport returns a transport with the settings of main.go's
// upstreamTransport at the proxy's default configuration
// (UPSTREAM_DIAL_TIMEOUT=5s, UPSTREAM_MAX_IDLE_CONNS=256,
// UPSTREAM_TIMEOUT=60s). Keep the two in step.
func Transport() *http.Transport {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// New returns the floor: a ReverseProxy to upstream (request paths under its
// path) that sets "Authorization: Bearer <token>" on every request. A nil
// transport means Transport().
func New(upstream *url.URL, token string, transport http.RoundTripper) *httputil.ReverseProxy {
	if transport == nil {
		transport = Transport()
	}
	auth := "Bearer " + token
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(upstream)
			pr.Out.Header.Set("Authorization", auth)
		},
		Transport:  transport,
		BufferPool: BufferPool{},
		ErrorLog:   log.New(io.Discard, "", 0),
	}
}

// BufferPool shares 32 KiB copy buffers between responses, as the proxy's
// does: without it the ReverseProxy allocates one per response.
type BufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// Get returns a 32 KiB buffer.
func (BufferPool) Get() []byte { return *buffers.Get().(*[]byte) }

// Put returns b to the pool.
func (BufferPool) Put(b []byte) { buffers.Put(&b) }

// Server returns an http.Server for h with the proxy's default server
// settings (main.go's newServer).
func Server(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
}
