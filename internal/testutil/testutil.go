// Package testutil provides the helpers shared by the tests of the proxy,
// one of each:
//
//   - Eventually waits for a condition that no event announces.
//   - Clock is a clock that moves only when told, for code that takes a Now.
//   - RawHTTP sends raw bytes to a server and reads its answer, for requests
//     net/http's client will not send; RawConn and Exchange do the same
//     request after request on one connection.
//   - MetricSamples and LintMetrics read a Prometheus text exposition.
//   - RedisURL, KeyPrefix and RedisStores give a test a Redis of its own: a
//     fresh key prefix on REDIS_URL, or a miniredis whose clock follows real
//     time.
//   - StartRedis, StartReplica and StartSentinel run redis-server processes
//     that a test owns, for fault injection.
//   - CheckRedirectTarget and UnderAllowed check a URL the OAuth callback
//     may send a browser to against OAUTH_RETURN_URLS.
//
// Helpers that can fail end the test they were given with Fatalf, so they
// belong on that test's goroutine.
package testutil

import (
	"testing"
	"time"
)

// Eventually waits until cond returns true, calling it every 5 ms, and
// fails tb, saying it was waiting until what, if that has not happened
// within 10 s. It is for conditions that no event announces; where there is
// an event, wait on it instead.
func Eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	waitUntil(tb, what, 10*time.Second, 5*time.Millisecond, cond)
}

func waitUntil(tb testing.TB, what string, timeout, interval time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(interval)
	}
}
