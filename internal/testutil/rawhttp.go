package testutil

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// RawHTTP sends raw, byte for byte, on a new connection to addr ("host:port",
// or a base URL "http://host:port"), and returns the final answer: interim
// 1xx answers are skipped, and a 101 is final. It writes in the background,
// since a server may answer before it has read everything. deadline bounds
// the whole exchange from the dial on, the reading of the answer's body
// included; the test's cleanup closes the connection. RawHTTP fails tb when
// it cannot connect or read an answer.
//
// It is for requests that net/http's client will not send: malformed or
// ambiguous framing, odd targets, interim answers.
func RawHTTP(tb testing.TB, addr, raw string, deadline time.Duration) *http.Response {
	tb.Helper()
	addr = strings.TrimPrefix(addr, "http://")
	conn, err := net.DialTimeout("tcp", addr, deadline)
	if err != nil {
		tb.Fatalf("testutil: RawHTTP: %v", err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(deadline))
	go func() { _, _ = io.WriteString(conn, raw) }()
	br := bufio.NewReader(conn)
	for {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			tb.Fatalf("testutil: RawHTTP: reading the answer to %.200q: %v", raw, err)
		}
		if res.StatusCode >= 200 || res.StatusCode == http.StatusSwitchingProtocols {
			return res
		}
	}
}
