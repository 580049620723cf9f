package store

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// scriptBatch runs the schedule's scripts so that concurrent calls share
// round trips to Redis. A script asked for while no round trip is under way
// goes at once, alone, on its caller's context: a lone caller waits for
// nothing. Scripts asked for while one is under way wait for it to end and
// then go together, in the order they came, as one pipeline (a Cluster
// client splits it by node; one tenant's keys share a slot): many tenants'
// calls at once cost one round trip, not one each, and Redis one read and
// one write. It is safe for concurrent use.
//
// A pipeline is sent on a context of its own, which ends at the latest of
// its callers' deadlines (never, when one has none): a caller that goes
// away, or whose deadline comes first, fails no one else. Each caller gets
// its own script's answer or error, as if it had run its script alone.
type scriptBatch struct {
	client redis.UniversalClient

	mu    sync.Mutex
	busy  bool          // a round trip is under way
	queue []*scriptCall // the calls waiting for it to end, in order

	// onQueue, when set, is told the length of the queue each time a
	// call joins it, under mu (for tests).
	onQueue func(queued int)
}

// maxBatch bounds the scripts of one pipeline: a longer queue goes in
// several, one after the other.
const maxBatch = 512

// scriptCall is one script waiting for its round trip.
type scriptCall struct {
	script   *redis.Script
	keys     []string
	args     []any
	deadline time.Time // its caller's; zero means none

	// cmd is its answer, set once done is closed.
	cmd  *redis.Cmd
	done chan struct{}

	// Guarded by scriptBatch.mu.
	sent      bool // taken into a pipeline: the script may run
	abandoned bool // its caller went away before it was sent
}

// run runs script with keys and args and returns its answer. When ctx ends
// before the answer comes, run returns ctx's error, and sent reports whether
// the script went to Redis (it may run, or have run): a script still
// waiting for its round trip is dropped, and never runs.
func (b *scriptBatch) run(ctx context.Context, script *redis.Script, keys []string, args ...any) (cmd *redis.Cmd, sent bool, err error) {
	b.mu.Lock()
	if !b.busy {
		b.busy = true
		b.mu.Unlock()
		cmd = script.Run(ctx, b.client, keys, args...)
		b.next()
		return cmd, true, cmd.Err()
	}
	c := &scriptCall{script: script, keys: keys, args: args, done: make(chan struct{})}
	c.deadline, _ = ctx.Deadline()
	b.queue = append(b.queue, c)
	if b.onQueue != nil {
		b.onQueue(len(b.queue))
	}
	b.mu.Unlock()

	select {
	case <-c.done:
		return c.cmd, true, c.cmd.Err()
	case <-ctx.Done():
	}
	b.mu.Lock()
	select {
	case <-c.done:
		// The answer came as the caller went: it is the caller's.
		b.mu.Unlock()
		return c.cmd, true, c.cmd.Err()
	default:
	}
	c.abandoned = !c.sent
	sent = c.sent
	b.mu.Unlock()
	return nil, sent, ctx.Err()
}

// next ends a round trip: the calls that waited for it go now, from a
// goroutine of their own.
func (b *scriptBatch) next() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) == 0 {
		b.busy = false
		return
	}
	go b.drain()
}

// drain sends the waiting calls in pipelines, one round trip at a time,
// until none waits.
func (b *scriptBatch) drain() {
	var batch []*scriptCall
	for {
		batch = b.take(batch[:0])
		if batch == nil {
			return
		}
		b.send(batch)
		clear(batch)
	}
}

// take moves up to maxBatch waiting calls into batch and marks them sent;
// it returns nil, and ends the round trips, when none waits.
func (b *scriptBatch) take(batch []*scriptCall) []*scriptCall {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := 0
	for ; i < len(b.queue) && len(batch) < maxBatch; i++ {
		if c := b.queue[i]; !c.abandoned {
			c.sent = true
			batch = append(batch, c)
		}
	}
	n := copy(b.queue, b.queue[i:])
	clear(b.queue[n:])
	b.queue = b.queue[:n]
	if len(batch) == 0 {
		b.busy = false
		return nil
	}
	return batch
}

// send runs batch's scripts in one pipeline, and those that Redis did not
// know (NOSCRIPT: it restarted, or its scripts were flushed) in a second,
// by their source, and hands each call its answer.
func (b *scriptBatch) send(batch []*scriptCall) {
	ctx, cancel := batchContext(batch)
	defer cancel()
	pipe := b.client.Pipeline()
	for _, c := range batch {
		c.cmd = c.script.EvalSha(ctx, pipe, c.keys, c.args...)
	}
	// Each command holds its own error, which its caller gets.
	_, _ = pipe.Exec(ctx)
	var unknown []*scriptCall
	for _, c := range batch {
		if err := c.cmd.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			unknown = append(unknown, c)
		}
	}
	if len(unknown) > 0 {
		pipe := b.client.Pipeline()
		for _, c := range unknown {
			c.cmd = c.script.Eval(ctx, pipe, c.keys, c.args...)
		}
		_, _ = pipe.Exec(ctx)
	}
	for _, c := range batch {
		close(c.done)
	}
}

// batchContext returns the context of a pipeline of batch: it ends at the
// latest of its callers' deadlines, or never when one has none (the
// client's read and write timeouts bound it then).
func batchContext(batch []*scriptCall) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, c := range batch {
		if c.deadline.IsZero() {
			return context.Background(), func() {}
		}
		if c.deadline.After(latest) {
			latest = c.deadline
		}
	}
	return context.WithDeadline(context.Background(), latest)
}
