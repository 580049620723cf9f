//go:build linux

package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"thanksio-proxy/auth"
	"thanksio-proxy/bench/internal/baseline"
	"thanksio-proxy/bench/internal/upstream"
	"thanksio-proxy/metrics"
	"thanksio-proxy/proxy"
	"thanksio-proxy/store"
)

// These benchmarks put the proxy's data plane (proxy.New over auth.New with
// the in-memory store and the Prometheus observer, wired as main.go wires
// them) beside the floor (bench/internal/baseline) in one process, for
// allocations per request and for CPU profiles:
//
//	go test -run '^$' -bench . -benchmem ./bench
//	go test -run '^$' -bench 'Loopback/proxy$' -cpuprofile cpu.pprof ./bench

const benchTenant = "tenant-000000"

// benchTokenBytes is the length of the access tokens (BENCH_TOKEN_BYTES,
// default 1024, as in the load benchmark).
func benchTokenBytes() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_TOKEN_BYTES")); err == nil && n >= 16 {
		return n
	}
	return 1024
}

func benchToken(prefix string) string {
	n := benchTokenBytes()
	return (prefix + strings.Repeat("x", n))[:n]
}

// newDataPlane returns the proxy's data plane for one tenant whose token is
// imported and cached, over transport.
func newDataPlane(tb testing.TB, upstreamURL *url.URL, transport http.RoundTripper, accessLog bool) http.Handler {
	tb.Helper()
	// main.go logs text to stdout; here the lines are formatted and dropped.
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	m := metrics.New(prometheus.NewRegistry(), "bench")
	tokens := auth.New(auth.Config{
		Store:    store.NewMemory(),
		Observer: m,
		Logger:   log.With("component", "auth"),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tokens.Start(ctx); err != nil {
		tb.Fatalf("Start: %v", err)
	}
	tb.Cleanup(tokens.Close)
	if _, err := tokens.Import(ctx, benchTenant, auth.Grant{
		AccessToken:  benchToken("at."),
		RefreshToken: benchToken("rt."),
		Expiry:       time.Now().Add(365 * 24 * time.Hour),
	}); err != nil {
		tb.Fatalf("Import: %v", err)
	}
	h, err := proxy.New(proxy.Config{
		Tokens:        tokens,
		Upstream:      upstreamURL,
		TenantHeader:  "X-Tenant-ID",
		Transport:     transport,
		MaxReplayBody: 1 << 20,
		Observer:      m,
		Logger:        log.With("component", "proxy"),
		AccessLog:     accessLog,
		// As app.go wires it: the access lines through the proxy's own
		// writer, formatted and dropped.
		AccessLogWriter: proxy.NewAccessLogWriter(io.Discard, proxy.LogText, "component", "proxy"),
	})
	if err != nil {
		tb.Fatalf("proxy.New: %v", err)
	}
	// As main.go's dataPlane: the callback path aside, everything is proxied.
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/oauth/callback" && r.URL.RawPath == "" {
			http.NotFound(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// cannedTransport answers every request with the upstream's document,
// without a network.
type cannedTransport struct{}

func (cannedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		r.Body.Close()
	}
	status := http.StatusOK
	if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
		status = http.StatusUnauthorized
	}
	return &http.Response{
		Status: strconv.Itoa(status), StatusCode: status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{
			"Content-Type":   {"application/json"},
			"Content-Length": {strconv.Itoa(len(upstream.Body))},
		},
		Body:          io.NopCloser(strings.NewReader(upstream.Body)),
		ContentLength: int64(len(upstream.Body)),
		Request:       r,
	}, nil
}

// discardWriter is a ResponseWriter that keeps only the status.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }

// BenchmarkHandler calls ServeHTTP directly, the upstream answered in memory:
// what the proxy's own code costs per request, beside the floor's.
func BenchmarkHandler(b *testing.B) {
	u, _ := url.Parse("http://upstream.invalid/api/v2")
	handlers := []struct {
		name string
		h    http.Handler
	}{
		{"floor", baseline.New(u, benchToken("floor."), cannedTransport{})},
		{"proxy", newDataPlane(b, u, cannedTransport{}, false)},
		{"proxy-accesslog", newDataPlane(b, u, cannedTransport{}, true)},
	}
	for _, hc := range handlers {
		b.Run(hc.name, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, requestPath, nil)
			req.Header.Set("X-Tenant-ID", benchTenant)
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				w.code = 0
				hc.h.ServeHTTP(w, req)
				if w.code != http.StatusOK {
					b.Fatalf("status %d; want 200", w.code)
				}
			}
		})
	}
}

// BenchmarkLoopback sends requests over loopback to an http.Server running
// the floor or the proxy, which forward them with the proxy's transport
// settings to the fast upstream, all in this process. The client is the load
// generator's (it allocates nothing per request), so allocations are the
// server's, the handler's and the transport's.
func BenchmarkLoopback(b *testing.B) {
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var up upstream.Server
	go up.Serve(upLn)
	b.Cleanup(func() { upLn.Close() })
	u, _ := url.Parse("http://" + upLn.Addr().String() + "/api/v2")

	handlers := []struct {
		name string
		h    func() http.Handler
	}{
		{"floor", func() http.Handler { return baseline.New(u, benchToken("floor."), baseline.Transport()) }},
		{"proxy", func() http.Handler { return newDataPlane(b, u, baseline.Transport(), false) }},
	}
	for _, hc := range handlers {
		b.Run(hc.name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			srv := baseline.Server(hc.h())
			go srv.Serve(ln)
			defer srv.Close()
			addr := ln.Addr().String()
			b.ReportAllocs()
			b.SetParallelism(32) // 32 connections at GOMAXPROCS=1, as the load benchmark
			b.RunParallel(func(pb *testing.PB) {
				c := &conn{addr: addr}
				defer c.close()
				for pb.Next() {
					status, err := c.get(benchTenant)
					if err != nil || status != http.StatusOK {
						b.Errorf("GET: status %d, %v", status, err)
						return
					}
				}
			})
		})
	}
}
