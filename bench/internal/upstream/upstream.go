// Package upstream is a fast stand-in for the thanks.io API in benchmarks: a
// minimal HTTP/1.1 keep-alive server that answers every request with the same
// small JSON document, so that as little CPU as possible goes to the upstream
// and the proxy under test is what limits throughput.
//
// It reads request headers line by line without allocating, skips a body
// framed by Content-Length, and refuses (401) a request without a bearer
// token, so that a proxy that forgot to inject one is noticed. Chunked request
// bodies are not supported (answered 501, connection closed).
package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"strconv"
	"sync/atomic"
)

// Body is the JSON document of every successful answer.
const Body = `{"data":[{"id":1042,"status":"delivered","recipient":"Ada Lovelace"}],"meta":{"current_page":1,"total":1}}`

var (
	okResponse = []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(Body)) + "\r\n\r\n" + Body)
	unauthorized = []byte("HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 30\r\n\r\n" +
		`{"message":"Unauthenticated."}`)
	notImplemented = []byte("HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
)

// Server answers connections accepted from a listener.
type Server struct {
	// Requests counts the requests answered; Refused those answered 401.
	Requests, Refused atomic.Int64
}

// Serve accepts connections on ln until it fails (as when ln is closed).
func (s *Server) Serve(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return err
		}
		go s.serveConn(c)
	}
}

var (
	authPrefix = []byte("authorization: bearer ")
	clPrefix   = []byte("content-length:")
	tePrefix   = []byte("transfer-encoding:")
)

func (s *Server) serveConn(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 8<<10)
	w := bufio.NewWriterSize(c, 4<<10)
	for {
		// Request line.
		if _, err := readLine(r); err != nil {
			return
		}
		authorized, chunked, length := false, false, int64(0)
		for {
			line, err := readLine(r)
			if err != nil {
				return
			}
			if len(line) == 0 {
				break
			}
			switch {
			case hasPrefixFold(line, authPrefix) && len(line) > len(authPrefix):
				authorized = true
			case hasPrefixFold(line, clPrefix):
				n, err := strconv.ParseInt(string(bytes.TrimSpace(line[len(clPrefix):])), 10, 64)
				if err != nil || n < 0 {
					return
				}
				length = n
			case hasPrefixFold(line, tePrefix):
				chunked = true
			}
		}
		if chunked {
			_, _ = w.Write(notImplemented)
			_ = w.Flush()
			return
		}
		if length > 0 {
			if _, err := r.Discard(int(length)); err != nil {
				return
			}
		}
		s.Requests.Add(1)
		if authorized {
			_, _ = w.Write(okResponse)
		} else {
			s.Refused.Add(1)
			_, _ = w.Write(unauthorized)
		}
		// Flush only when no pipelined request is waiting.
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

var errLineTooLong = errors.New("upstream: header line too long")

// readLine returns one line without its CRLF; the slice is valid until the
// next read.
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return nil, errLineTooLong
	}
	if err != nil {
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// hasPrefixFold reports whether s starts with prefix, ASCII case-insensitively
// (prefix is lower case).
func hasPrefixFold(s, prefix []byte) bool {
	if len(s) < len(prefix) {
		return false
	}
	for i, p := range prefix {
		b := s[i]
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if b != p {
			return false
		}
	}
	return true
}
