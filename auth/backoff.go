package auth

import "time"

// exponential is the pause of a retry loop after n consecutive failed
// attempts (n ≥ 1): first, doubled for each failure after the first, and at
// most limit. The lifecycle's retry loops share it and differ only in their
// bounds and jitter: the wait for another replica's lock, a pending write's
// retries, a tenant's refresh backoff.
func exponential(first, limit time.Duration, n int) time.Duration {
	d := first
	for ; n > 1 && d < limit; n-- {
		d *= 2
	}
	return min(d, limit)
}

// sleep waits d and reports whether it did: false when done was closed
// first. A nil done is never closed.
func sleep(done <-chan struct{}, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-done:
		return false
	}
}
