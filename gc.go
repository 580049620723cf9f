package main

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

// The collector's headroom: how far the heap grows past what is live
// before a collection. Go's default (GOGC=100) is what is live again, and
// at least 4 MiB of heap in all. Unless the operator set GOGC, the proxy
// sets GOGC after each collection, from the heap that collection left
// live, for a headroom of:
//
//   - at least minHeadroom. A proxy with few tenants keeps a few MiB live
//     and allocates 7 to 8 KiB per request: under Go's 4 MiB minimum it
//     collected 34 times per 10,000 requests (5 with minHeadroom), marking
//     the same few objects again each time.
//   - what is live, up to bigHeadroom live (Go's default);
//   - above that, bigHeadroom or a quarter of what is live, whichever is
//     more. With many tenants cached, most of what is live is their tokens,
//     and Go's default would double their memory: 200 MiB of tokens at
//     100,000 tenants would cost 400 MiB. Such a heap is collected more
//     often, each cycle marking little besides the tokens, which hold no
//     pointers.
//
// GOMEMLIMIT, a ceiling rather than a proportion, still applies: the
// runtime collects at whichever of the two comes first.
const (
	minHeadroom  = 16 << 20
	bigHeadroom  = 64 << 20
	minGCPercent = 25
	// goHeapMinimum is the runtime's smallest heap goal at GOGC=100; it
	// scales with GOGC.
	goHeapMinimum = 4 << 20
)

// gcPercent returns the GOGC for a live heap of live bytes.
func gcPercent(live uint64) int {
	switch {
	case live == 0:
		return 100
	case live < minHeadroom:
		// The runtime's minimum goal grows with GOGC too: no more than
		// live and minHeadroom in all.
		return int(min(100*minHeadroom/live, 100*(live+minHeadroom)/goHeapMinimum))
	case live <= bigHeadroom:
		return 100
	}
	return max(minGCPercent, int(100*bigHeadroom/live))
}

// tuneGC starts the collector's tuning for the life of the process (the
// heap is the process's; a second call changes nothing), unless getenv
// names GOGC: the operator chose. It reports whether the tuning runs.
func tuneGC(getenv func(string) string) bool {
	if getenv("GOGC") != "" {
		return false
	}
	gcTuning.Do(func() { newGCTuner(liveHeap, debug.SetGCPercent).start() })
	return true
}

var gcTuning sync.Once

// gcTuner sets GOGC after each collection, from the heap it left live. Its
// work runs on the runtime's cleanup goroutine, shared by the whole
// process: it never blocks.
type gcTuner struct {
	live    func() uint64 // the heap the last collection left live
	set     func(int) int // debug.SetGCPercent
	last    int           // the GOGC it set last; 0 before the first
	stopped atomic.Bool
	tuned   chan int // when not nil, offered each GOGC set (tests)
}

func newGCTuner(live func() uint64, set func(int) int) *gcTuner {
	return &gcTuner{live: live, set: set}
}

// gcSentinel is an object that only the tuner allocates, so that its
// cleanup runs after the collection that found it unreachable. It is larger
// than the runtime's tiny allocations, which are batched and may never be
// freed alone.
type gcSentinel struct{ _ [64]byte }

// start arms the tuner for the next collection.
func (t *gcTuner) start() {
	runtime.AddCleanup(new(gcSentinel), (*gcTuner).collected, t)
}

// stop ends the tuning at the next collection; GOGC stays as it was last
// set.
func (t *gcTuner) stop() { t.stopped.Store(true) }

// collected runs after a collection: it sets GOGC when the live heap asks
// for another one, and arms the tuner for the next collection.
func (t *gcTuner) collected() {
	if t.stopped.Load() {
		return
	}
	if p := gcPercent(t.live()); p != t.last {
		t.set(p)
		t.last = p
		select {
		case t.tuned <- p:
		default:
		}
	}
	t.start()
}

// liveHeap returns the heap that the last collection left live.
func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
