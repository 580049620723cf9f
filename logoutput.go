package main

import (
	"io"
	"os"
	"sync"
	"time"
)

const (
	// logFlushInterval bounds how long a log line waits before it is
	// written.
	logFlushInterval = 100 * time.Millisecond
	// logBatchSize is the size of pending lines that has them written at
	// once rather than at the next interval.
	logBatchSize = 64 << 10
	// logMaxPending bounds the lines waiting while a write is under way:
	// about a fifth of a second of access lines at 20,000 requests a
	// second. Beyond it, writers wait (see bufferedOutput).
	logMaxPending = 1 << 20
)

// bufferedOutput batches log lines written to a file (standard output, as
// a rule) into few writes, made by one goroutine of its own: with one
// access line per request, a write(2) per line cost as much CPU as
// everything else the proxy adds to a request.
//
// A Write appends the line to the pending lines under a short lock; the
// writer goroutine swaps them for an empty buffer and writes them, while
// new lines gather in the other buffer. Lines keep their order and never
// interleave (each Write holds whole lines, as slog's handlers and the
// proxy's access log write them). A line reaches the file within
// logFlushInterval, and every line is written by close.
//
// When the file does not take lines as fast as they come (a log collector
// that stalls standard output), a Write waits once logMaxPending bytes are
// pending: requests slow down rather than lose their access lines, the
// record of what was done in each tenant's name. Nothing is dropped, so
// there is nothing to count.
type bufferedOutput struct {
	w io.Writer

	mu      sync.Mutex
	room    sync.Cond // signalled when the pending lines are taken
	pending []byte
	closed  bool // close has run: Write writes through

	spare []byte        // the writer goroutine's other buffer
	wake  chan struct{} // logBatchSize bytes are pending
	stop  chan struct{}
	done  chan struct{}
}

// newLogOutput returns w buffered when it is a file, else w behind a lock
// (an in-memory writer costs no system call), and the function that
// flushes and stops it. Either takes whole lines from concurrent writers:
// slog's handlers, which lock only among themselves, and the access log.
func newLogOutput(w io.Writer) (io.Writer, func()) {
	if _, ok := w.(*os.File); !ok {
		return &lockedWriter{w: w}, func() {}
	}
	b := &bufferedOutput{
		w:       w,
		pending: make([]byte, 0, logBatchSize),
		spare:   make([]byte, 0, logBatchSize),
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	b.room.L = &b.mu
	go b.run(logFlushInterval)
	return b, b.close
}

func (b *bufferedOutput) Write(p []byte) (int, error) {
	b.mu.Lock()
	for len(b.pending) >= logMaxPending && !b.closed {
		b.room.Wait()
	}
	if b.closed {
		defer b.mu.Unlock()
		return b.w.Write(p)
	}
	before := len(b.pending)
	b.pending = append(b.pending, p...)
	full := before < logBatchSize && len(b.pending) >= logBatchSize
	b.mu.Unlock()
	if full {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

// run writes the pending lines every interval, and when a batch is full,
// until close.
func (b *bufferedOutput) run(interval time.Duration) {
	defer close(b.done)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-b.wake:
		case <-b.stop:
			b.writePending()
			return
		}
		b.writePending()
	}
}

// writePending writes the lines pending now. Only the writer goroutine
// calls it.
func (b *bufferedOutput) writePending() {
	b.mu.Lock()
	lines := b.pending
	b.pending = b.spare[:0]
	b.room.Broadcast()
	b.mu.Unlock()
	if len(lines) > 0 {
		// A failed write (standard output closed) has nowhere to be
		// reported; the lines are dropped, as slog drops them.
		_, _ = b.w.Write(lines)
	}
	b.spare = lines[:0]
}

// close writes every pending line and stops the writer goroutine; lines
// written after it go straight to the file.
func (b *bufferedOutput) close() {
	close(b.stop)
	<-b.done
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	if len(b.pending) > 0 {
		_, _ = b.w.Write(b.pending)
		b.pending = nil
	}
	b.room.Broadcast()
}

// lockedWriter serializes the Writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
