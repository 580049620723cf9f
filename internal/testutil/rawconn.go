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

// RawConn opens a connection to addr ("host:port", or a base URL
// "http://host:port") for a test that writes requests on it byte for byte
// and reads the answers, with http.ReadResponse, from the reader it
// returns. deadline bounds everything done on the connection, the dial
// included; the test's cleanup closes it. RawConn fails tb when it cannot
// connect.
//
// Where one request and its final answer are enough, RawHTTP is simpler.
// RawConn is for the rest: several requests on one connection (Exchange
// sends one and reads its answer whole), a body sent after a 100 Continue,
// bytes after a request that must not be taken for another.
func RawConn(tb testing.TB, addr string, deadline time.Duration) (net.Conn, *bufio.Reader) {
	tb.Helper()
	end := time.Now().Add(deadline)
	d := net.Dialer{Deadline: end}
	conn, err := d.Dial("tcp", strings.TrimPrefix(addr, "http://"))
	if err != nil {
		tb.Fatalf("testutil: RawConn: %v", err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(end)
	return conn, bufio.NewReader(conn)
}

// Exchange writes raw on conn and reads the next answer from br, both as
// RawConn returns them, whatever its status: an interim 1xx answer too. It
// reads the answer's body whole and closes it, so that the connection is
// ready for the next answer, and returns the answer and its body. Exchange
// fails tb when it cannot write or read an answer.
func Exchange(tb testing.TB, conn net.Conn, br *bufio.Reader, raw string) (*http.Response, []byte) {
	tb.Helper()
	if _, err := io.WriteString(conn, raw); err != nil {
		tb.Fatalf("testutil: Exchange: writing %.200q: %v", raw, err)
	}
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		tb.Fatalf("testutil: Exchange: reading the answer to %.200q: %v", raw, err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		tb.Fatalf("testutil: Exchange: reading the body of the answer to %.200q: %v", raw, err)
	}
	return res, body
}
