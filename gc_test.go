package main

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

func TestGCPercent(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name string
		live uint64
		want int
	}{
		{"nothing read", 0, 100},
		{"1 MiB live grows to 17 MiB", 1 * mib, 425},
		{"2 MiB live grows to 18 MiB", 2 * mib, 450},
		{"8 MiB live grows by 16 MiB", 8 * mib, 200},
		{"16 MiB live keeps Go's default", 16 * mib, 100},
		{"a middling heap keeps Go's default", 40 * mib, 100},
		{"64 MiB live", 64 * mib, 100},
		{"128 MiB live grows by 64 MiB", 128 * mib, 50},
		{"256 MiB live grows by 64 MiB", 256 * mib, 25},
		{"1 GiB live grows by a quarter", 1024 * mib, 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := gcPercent(tc.live); got != tc.want {
				t.Errorf("gcPercent(%d MiB) = %d; want %d", tc.live/mib, got, tc.want)
			}
		})
	}
}

// After each collection the tuner sets GOGC from the heap left live.
func TestGCTunerFollowsTheLiveHeap(t *testing.T) {
	var live atomic.Uint64
	live.Store(256 << 20)
	tuner := newGCTuner(live.Load, func(int) int { return 100 })
	tuner.tuned = make(chan int, 1)
	tuner.start()
	t.Cleanup(tuner.stop)

	next := func(what string) int {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			runtime.GC()
			select {
			case p := <-tuner.tuned:
				return p
			case <-deadline:
				t.Fatalf("no GOGC set after collections with %s", what)
			case <-time.After(10 * time.Millisecond):
				// The cleanup runs after the collection; another one
				// finds the tuner armed if this one came too early.
			}
		}
	}
	if p := next("256 MiB live"); p != 25 {
		t.Errorf("GOGC set with 256 MiB live = %d; want 25 (64 MiB of headroom)", p)
	}
	live.Store(16 << 20)
	if p := next("16 MiB live"); p != 100 {
		t.Errorf("GOGC set with 16 MiB live = %d; want 100 (Go's default)", p)
	}
}

// GOGC in the environment is the operator's choice: the proxy leaves the
// collector alone.
func TestTuneGCLeavesTheOperatorsChoice(t *testing.T) {
	for _, value := range []string{"100", "off", "50"} {
		getenv := func(k string) string {
			if k == "GOGC" {
				return value
			}
			return ""
		}
		if tuneGC(getenv) {
			t.Errorf("tuneGC with GOGC=%s = true; want false (the operator chose)", value)
		}
	}
}

func TestLiveHeapIsRead(t *testing.T) {
	runtime.GC()
	if liveHeap() == 0 {
		t.Error("liveHeap() = 0 after a collection; want the heap it left live")
	}
}
