//go:build linux

package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// redisConn is a minimal RESP2 client: enough to read INFO commandstats and
// to delete the benchmark's own keys. The benchmark uses it only outside the
// measured rounds (INFO before and after them).
type redisConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialRedis(addr string) (*redisConn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &redisConn{c: c, r: bufio.NewReader(c)}, nil
}

func (rc *redisConn) Close() error { return rc.c.Close() }

// do sends one command and returns its reply: a string, an int64, nil, or a
// []any of those.
func (rc *redisConn) do(args ...string) (any, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	_ = rc.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := rc.c.Write([]byte(b.String())); err != nil {
		return nil, err
	}
	return rc.reply()
}

func (rc *redisConn) reply() (any, error) {
	line, err := rc.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("redis: empty reply")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, errors.New("redis: " + line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(rc.r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = rc.reply(); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("redis: unexpected reply %q", line)
}

// commandCalls returns the calls of every command since the server started
// (INFO commandstats), by command name.
func (rc *redisConn) commandCalls() (map[string]int64, error) {
	v, err := rc.do("INFO", "commandstats")
	if err != nil {
		return nil, err
	}
	s, _ := v.(string)
	calls := make(map[string]int64)
	for _, line := range strings.Split(s, "\n") {
		// cmdstat_get:calls=2,usec=15,usec_per_call=7.50,...
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				calls[strings.TrimPrefix(name, "cmdstat_")] = n
			}
		}
	}
	return calls, nil
}

// deletePrefix deletes every key that starts with prefix (SCAN and UNLINK).
func (rc *redisConn) deletePrefix(prefix string) (int, error) {
	cursor, deleted := "0", 0
	for {
		v, err := rc.do("SCAN", cursor, "MATCH", prefix+"*", "COUNT", "1000")
		if err != nil {
			return deleted, err
		}
		parts, ok := v.([]any)
		if !ok || len(parts) != 2 {
			return deleted, errors.New("redis: malformed SCAN reply")
		}
		cursor, _ = parts[0].(string)
		keys, _ := parts[1].([]any)
		if len(keys) > 0 {
			args := []string{"UNLINK"}
			for _, k := range keys {
				s, _ := k.(string)
				args = append(args, s)
			}
			if _, err := rc.do(args...); err != nil {
				return deleted, err
			}
			deleted += len(keys)
		}
		if cursor == "0" {
			return deleted, nil
		}
	}
}

// callsDelta returns the calls made between two commandCalls readings, by
// command, leaving out the INFO calls that took the readings.
func callsDelta(before, after map[string]int64) map[string]int64 {
	by := make(map[string]int64)
	for name, n := range after {
		if name == "info" {
			continue
		}
		if d := n - before[name]; d > 0 {
			by[name] = d
		}
	}
	return by
}
