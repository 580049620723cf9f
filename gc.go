package main

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

// The collector's headroom. Go's default (GOGC=100) lets the heap grow to
// twice what is live before it collects. With many tenants cached, most of
// what is live is their tokens, and that headroom doubles their memory:
// 200 MiB of tokens at 100,000 tenants would cost 400 MiB. Unless the
// operator set GOGC, the proxy lets the heap grow by
// gcHeadroom or by minGCPercent of what is live, whichever is more, and
// never by more than Go's default: it sets GOGC after each collection from
// the heap that collection left live. A small heap (under gcHeadroom live)
// keeps Go's default; a large one is collected more often, each cycle
// marking little besides the tokens, which hold no pointers. GOMEMLIMIT,
// a ceiling rather than a proportion, still applies: the runtime collects
// at whichever of the two comes first.
const (
	gcHeadroom   = 64 << 20
	minGCPercent = 25
)

// gcPercent returns the GOGC for a live heap of live bytes.
func gcPercent(live uint64) int {
	if live <= gcHeadroom {
		return 100
	}
	return max(minGCPercent, int(100*gcHeadroom/live))
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
