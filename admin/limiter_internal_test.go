package admin

import (
	"fmt"
	"testing"
	"time"
)

func TestFailureLimiterStaysBounded(t *testing.T) {
	l := newFailureLimiter(10, time.Minute)
	now := time.Now()
	for i := range 3 * maxFailureClients {
		l.fail(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), now)
	}
	if n := len(l.clients); n > maxFailureClients {
		t.Errorf("addresses counted after %d distinct ones = %d; want at most %d", 3*maxFailureClients, n, maxFailureClients)
	}
	// An address that fails within the bound is still limited.
	for range 10 {
		l.fail("192.0.2.1", now)
	}
	if wait := l.blocked("192.0.2.1", now); wait <= 0 {
		t.Errorf("blocked after 10 failures = %v; want a wait", wait)
	}
}
