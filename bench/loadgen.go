//go:build linux

package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The load generator speaks HTTP/1.1 over raw keep-alive connections with
// requests built in place and responses parsed without allocating, so that
// it costs the core it shares with the upstream as little as possible. It
// understands Content-Length and chunked answers and "Connection: close".

// requestPath is the API path every benchmark request asks for.
const requestPath = "/orders/list"

// conn is one keep-alive client connection to a target.
type conn struct {
	addr string
	c    net.Conn
	r    *bufio.Reader
	req  []byte
}

func (c *conn) close() {
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
}

func (c *conn) dial() error {
	nc, err := net.DialTimeout("tcp", c.addr, 5*time.Second)
	if err != nil {
		return err
	}
	c.c = nc
	if c.r == nil {
		c.r = bufio.NewReaderSize(nc, 16<<10)
	} else {
		c.r.Reset(nc)
	}
	return nil
}

// get sends GET requestPath for tenant and reads the whole answer, returning
// its status. As HTTP clients do, a request that fails on a kept-alive
// connection the server may have closed meanwhile (its IdleTimeout ran out
// between rounds) is sent once more on a new connection.
func (c *conn) get(tenant string) (int, error) {
	reused := c.c != nil
	status, err := c.try(tenant)
	if err != nil && reused {
		status, err = c.try(tenant)
	}
	return status, err
}

func (c *conn) try(tenant string) (int, error) {
	if c.c == nil {
		if err := c.dial(); err != nil {
			return 0, err
		}
	}
	c.req = append(c.req[:0], "GET "+requestPath+" HTTP/1.1\r\nHost: "...)
	c.req = append(c.req, c.addr...)
	c.req = append(c.req, "\r\nX-Tenant-ID: "...)
	c.req = append(c.req, tenant...)
	c.req = append(c.req, "\r\n\r\n"...)
	_ = c.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.c.Write(c.req); err != nil {
		c.close()
		return 0, err
	}
	status, err := c.readResponse()
	if err != nil {
		c.close()
	}
	return status, err
}

var errMalformed = errors.New("loadgen: malformed response")

func (c *conn) readResponse() (int, error) {
	line, err := readLine(c.r)
	if err != nil {
		return 0, err
	}
	if len(line) < 12 || string(line[:5]) != "HTTP/" {
		return 0, errMalformed
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, errMalformed
	}
	length, chunked, closing := int64(-1), false, false
	for {
		line, err := readLine(c.r)
		if err != nil {
			return 0, err
		}
		if len(line) == 0 {
			break
		}
		switch {
		case hasPrefixFold(line, "content-length:"):
			n, err := strconv.ParseInt(string(trimSpace(line[len("content-length:"):])), 10, 64)
			if err != nil || n < 0 {
				return 0, errMalformed
			}
			length = n
		case hasPrefixFold(line, "transfer-encoding:"):
			chunked = true
		case hasPrefixFold(line, "connection:"):
			closing = hasPrefixFold(trimSpace(line[len("connection:"):]), "close")
		}
	}
	switch {
	case chunked:
		err = discardChunked(c.r)
	case length > 0:
		_, err = c.r.Discard(int(length))
	case length < 0:
		_, err = io.Copy(io.Discard, c.r)
		closing = true
	}
	if err != nil {
		return 0, err
	}
	if closing {
		c.close()
	}
	return status, nil
}

func discardChunked(r *bufio.Reader) error {
	for {
		line, err := readLine(r)
		if err != nil {
			return err
		}
		if i := indexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		n, err := strconv.ParseInt(string(trimSpace(line)), 16, 64)
		if err != nil || n < 0 {
			return errMalformed
		}
		if n == 0 {
			for { // trailers
				line, err := readLine(r)
				if err != nil {
					return err
				}
				if len(line) == 0 {
					return nil
				}
			}
		}
		if _, err := r.Discard(int(n) + 2); err != nil {
			return err
		}
	}
}

func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		if err == bufio.ErrBufferFull {
			return nil, errMalformed
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

func hasPrefixFold(s []byte, prefix string) bool {
	if len(s) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		b := s[i]
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if b != prefix[i] {
			return false
		}
	}
	return true
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// pool is a target's set of client connections, kept across rounds.
type pool struct {
	conns []*conn
}

func newPool(addr string, n int) *pool {
	p := &pool{}
	for range n {
		p.conns = append(p.conns, &conn{addr: addr})
	}
	return p
}

func (p *pool) close() {
	for _, c := range p.conns {
		c.close()
	}
}

// sample is the outcome of one load run.
type sample struct {
	requests int64
	failures int64 // transport errors and answers other than 200
	limited  int64 // of the failures, answers 429 (the rate limit's rate_limited)
	elapsed  time.Duration
	// latencies in nanoseconds, one per request, in no order.
	latencies []int64
	// firstFailure describes the first failure, if any.
	firstFailure string
}

func (s *sample) rps() float64 { return float64(s.requests) / s.elapsed.Seconds() }

// merge adds o to s (elapsed times add up: runs are sequential).
func (s *sample) merge(o *sample) {
	s.requests += o.requests
	s.failures += o.failures
	s.limited += o.limited
	s.elapsed += o.elapsed
	s.latencies = append(s.latencies, o.latencies...)
	if s.firstFailure == "" {
		s.firstFailure = o.firstFailure
	}
}

// percentile returns the q-quantile (0..1) of the latencies; it sorts them.
func (s *sample) percentile(q float64) time.Duration {
	if len(s.latencies) == 0 {
		return 0
	}
	slices.Sort(s.latencies)
	i := int(q * float64(len(s.latencies)-1))
	return time.Duration(s.latencies[i])
}

// tenantSet names the tenants requests are spread over, round robin.
type tenantSet struct {
	names []string
	next  atomic.Uint64
}

func newTenantSet(names []string) *tenantSet { return &tenantSet{names: names} }

func (t *tenantSet) pick() string {
	return t.names[(t.next.Add(1)-1)%uint64(len(t.names))]
}

// closedLoop runs every connection of p as a closed loop (send, wait for the
// answer, send again) for d, spreading requests over tenants.
func closedLoop(p *pool, tenants *tenantSet, d time.Duration) *sample {
	start := time.Now()
	deadline := start.Add(d)
	return runWorkers(p, start, func(c *conn, out *sample) {
		for {
			t0 := time.Now()
			if !t0.Before(deadline) {
				return
			}
			status, err := c.get(tenants.pick())
			record(out, t0, status, err)
		}
	})
}

// paced sends rate requests a second in all, spread evenly over the
// connections of p, for d. Latency counts from the moment a request was due,
// not from when it was sent, so that a stall is not hidden by the requests
// it held back (coordinated omission).
func paced(p *pool, tenants *tenantSet, rate float64, d time.Duration) *sample {
	start := time.Now().Add(10 * time.Millisecond)
	deadline := start.Add(d)
	interval := time.Duration(float64(len(p.conns)) / rate * float64(time.Second))
	var idx atomic.Int64
	return runWorkers(p, start, func(c *conn, out *sample) {
		i := idx.Add(1) - 1
		due := start.Add(time.Duration(i) * interval / time.Duration(len(p.conns)))
		for due.Before(deadline) {
			if wait := time.Until(due); wait > 0 {
				time.Sleep(wait)
			}
			status, err := c.get(tenants.pick())
			record(out, due, status, err)
			due = due.Add(interval)
		}
	})
}

// pass sends exactly one request for each tenant, as fast as the connections
// of p allow, and returns the failures.
func pass(p *pool, names []string) *sample {
	var next atomic.Int64
	return runWorkers(p, time.Now(), func(c *conn, out *sample) {
		for {
			i := next.Add(1) - 1
			if i >= int64(len(names)) {
				return
			}
			t0 := time.Now()
			status, err := c.get(names[i])
			record(out, t0, status, err)
		}
	})
}

func record(out *sample, t0 time.Time, status int, err error) {
	out.latencies = append(out.latencies, int64(time.Since(t0)))
	out.requests++
	if err != nil || status != 200 {
		out.failures++
		if status == 429 {
			out.limited++
		}
		if out.firstFailure == "" {
			if err != nil {
				out.firstFailure = err.Error()
			} else {
				out.firstFailure = fmt.Sprintf("status %d", status)
			}
		}
		if err != nil {
			// Do not spin on a target that is down.
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// runWorkers starts one worker per connection and merges their samples.
func runWorkers(p *pool, start time.Time, work func(c *conn, out *sample)) *sample {
	samples := make([]sample, len(p.conns))
	var wg sync.WaitGroup
	for i, c := range p.conns {
		samples[i].latencies = make([]int64, 0, 4096)
		wg.Go(func() { work(c, &samples[i]) })
	}
	wg.Wait()
	total := &sample{elapsed: time.Since(start)}
	for i := range samples {
		elapsed := total.elapsed
		total.merge(&samples[i])
		total.elapsed = elapsed
	}
	return total
}
