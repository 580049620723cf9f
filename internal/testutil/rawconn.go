package testutil

import (
	"bufio"
	"net"
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
// RawConn is for the rest: several requests on one connection, a body sent
// after a 100 Continue, bytes after a request that must not be taken for
// another.
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
