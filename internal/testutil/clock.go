package testutil

import (
	"sync"
	"time"
)

// Clock is a clock that moves only when told: pass its Now where the code
// under test takes a clock, and Advance it. Its methods are safe for
// concurrent use by multiple goroutines. The zero value stands at the zero
// time; NewClock starts one elsewhere.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock that stands at start.
func NewClock(start time.Time) *Clock {
	return &Clock{now: start}
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
