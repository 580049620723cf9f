package main

import (
	"bufio"
	"io"
	"os"
	"sync"
	"time"
)

// logFlushInterval bounds how long a log line waits in the buffer.
const logFlushInterval = 100 * time.Millisecond

// bufferedOutput batches log lines written to a file (standard output, as
// a rule) into few writes: with one access line per request, a write(2)
// per line cost as much CPU as everything else the proxy adds to a request.
// A line reaches the file within logFlushInterval, and every line is
// written by Close.
type bufferedOutput struct {
	mu   sync.Mutex
	w    *bufio.Writer
	stop chan struct{}
	done chan struct{}
}

// newLogOutput returns w buffered when it is a file, else w itself (an
// in-memory writer costs no system call), and the function that flushes
// and stops it.
func newLogOutput(w io.Writer) (io.Writer, func()) {
	if _, ok := w.(*os.File); !ok {
		return w, func() {}
	}
	b := &bufferedOutput{w: bufio.NewWriterSize(w, 64<<10), stop: make(chan struct{}), done: make(chan struct{})}
	go b.flushEvery(logFlushInterval)
	return b, b.close
}

func (b *bufferedOutput) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.w.Write(p)
}

func (b *bufferedOutput) flush() {
	b.mu.Lock()
	_ = b.w.Flush()
	b.mu.Unlock()
}

func (b *bufferedOutput) flushEvery(d time.Duration) {
	defer close(b.done)
	tick := time.NewTicker(d)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			b.flush()
		case <-b.stop:
			b.flush()
			return
		}
	}
}

func (b *bufferedOutput) close() {
	close(b.stop)
	<-b.done
}
