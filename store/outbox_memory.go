package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// MemoryOutbox is RedisOutbox's contract kept in this process: for one
// replica with the in-memory store. Its entries do not survive a restart.
// Create it with NewMemoryOutbox. It is safe for concurrent use by multiple
// goroutines.
type MemoryOutbox struct {
	// Now, if non-nil, is the clock that leases and due times are measured
	// against; nil means time.Now. Set it before the first call.
	Now func() time.Time

	mu      sync.Mutex
	entries map[string]*memoryOutboxEntry
	added   uint64 // entries added so far, for memoryOutboxEntry.seq
}

type memoryOutboxEntry struct {
	data     []byte
	due      time.Time
	attempts int
	seq      uint64 // order of Add, to break ties between equal due times
}

// NewMemoryOutbox returns an empty MemoryOutbox that reads time.Now.
func NewMemoryOutbox() *MemoryOutbox {
	return &MemoryOutbox{entries: make(map[string]*memoryOutboxEntry)}
}

func (o *MemoryOutbox) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// Add is RedisOutbox.Add, in this process.
func (o *MemoryOutbox) Add(_ context.Context, id string, data []byte, lease time.Duration) error {
	if err := checkOutboxArgs(id, lease); err != nil {
		return fmt.Errorf("store: outbox add: %w", err)
	}
	if len(data) == 0 {
		return errors.New("store: outbox add: empty data")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	e := o.entries[id]
	if e == nil {
		o.added++
		e = &memoryOutboxEntry{seq: o.added}
		o.entries[id] = e
	}
	e.data = slices.Clone(data)
	e.due = o.now().Add(lease.Truncate(time.Millisecond))
	return nil
}

// Claim is RedisOutbox.Claim, in this process.
func (o *MemoryOutbox) Claim(_ context.Context, n int, lease time.Duration) ([]OutboxItem, error) {
	if n < 1 || lease < 0 {
		return nil, errors.New("store: outbox claim: n must be at least 1 and lease not negative")
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.now()
	type due struct {
		id string
		e  *memoryOutboxEntry
	}
	var all []due
	for id, e := range o.entries {
		if !e.due.After(now) {
			all = append(all, due{id, e})
		}
	}
	slices.SortFunc(all, func(a, b due) int {
		return cmp.Or(a.e.due.Compare(b.e.due), cmp.Compare(a.e.seq, b.e.seq))
	})
	items := make([]OutboxItem, 0, min(n, len(all)))
	for _, d := range all[:min(n, len(all))] {
		d.e.due = now.Add(lease.Truncate(time.Millisecond))
		items = append(items, OutboxItem{ID: d.id, Data: slices.Clone(d.e.data), Attempts: d.e.attempts})
	}
	return items, nil
}

// Retry is RedisOutbox.Retry, in this process.
func (o *MemoryOutbox) Retry(_ context.Context, id string, after time.Duration) error {
	return o.reschedule("retry", id, after, true)
}

// Release is RedisOutbox.Release, in this process.
func (o *MemoryOutbox) Release(_ context.Context, id string) error {
	return o.reschedule("release", id, 0, false)
}

func (o *MemoryOutbox) reschedule(op, id string, after time.Duration, count bool) error {
	if err := checkOutboxArgs(id, after); err != nil {
		return fmt.Errorf("store: outbox %s: %w", op, err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	e := o.entries[id]
	if e == nil {
		return fmt.Errorf("store: outbox %s %q: %w", op, id, ErrNotFound)
	}
	if count {
		e.attempts++
	}
	e.due = o.now().Add(after.Truncate(time.Millisecond))
	return nil
}

// Done is RedisOutbox.Done, in this process.
func (o *MemoryOutbox) Done(_ context.Context, id string) error {
	if err := checkOutboxArgs(id, 0); err != nil {
		return fmt.Errorf("store: outbox done: %w", err)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.entries, id)
	return nil
}
