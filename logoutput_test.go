package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestLogOutputReachesTheFileByClose(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, closeLog := newLogOutput(f)
	if _, ok := w.(*bufferedOutput); !ok {
		t.Fatalf("a file is not buffered")
	}
	for range 1000 {
		if _, err := w.Write([]byte("a line of the access log\n")); err != nil {
			t.Fatal(err)
		}
	}
	closeLog()
	if _, err := w.Write([]byte("a line after close\n")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "a line of the access log\n"); n != 1000 {
		t.Errorf("the file holds %d lines after close; want all 1000", n)
	}
	if !strings.HasSuffix(string(b), "a line after close\n") {
		t.Errorf("a line written after close is not at the end of the file")
	}
}

// TestLogOutputLinesKeepWhole writes lines of many sizes from many
// goroutines: each must reach the file whole, once, in its writer's order.
func TestLogOutputLinesKeepWhole(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, closeLog := newLogOutput(f)
	const writers, lines = 8, 2000
	var wg sync.WaitGroup
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range lines {
				if _, err := io.WriteString(w, logLine(g, i)+"\n"); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	closeLog()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	next := make([]int, writers)
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var g, i int
		if _, err := fmt.Sscanf(sc.Text(), "writer=%d line=%d", &g, &i); err != nil || g < 0 || g >= writers {
			t.Fatalf("a line is not whole: %.80q (%v)", sc.Text(), err)
		}
		if i != next[g] || sc.Text() != logLine(g, i) {
			t.Fatalf("writer %d's line %d came where its line %d was due, or not whole", g, i, next[g])
		}
		next[g]++
	}
	for g, n := range next {
		if n != lines {
			t.Errorf("writer %d: %d lines in the file; want %d", g, n, lines)
		}
	}
}

// logLine is writer g's line i: up to 3 KiB, so that batches end anywhere
// in a line.
func logLine(g, i int) string {
	return fmt.Sprintf("writer=%d line=%d pad=%s end", g, i, strings.Repeat(string(rune('a'+g)), (i*37)%3000))
}

// TestLogOutputWritesWithinTheInterval reads a line from the other end of
// a pipe before close: it must come within logFlushInterval (and a margin
// for a busy machine).
func TestLogOutputWritesWithinTheInterval(t *testing.T) {
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer pw.Close()
	w, closeLog := newLogOutput(pw)
	defer closeLog()
	start := time.Now()
	if _, err := w.Write([]byte("one line\n")); err != nil {
		t.Fatal(err)
	}
	if err := r.SetReadDeadline(start.Add(logFlushInterval + 2*time.Second)); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil || line != "one line\n" {
		t.Fatalf("read %q, %v; want the line within %v", line, err, logFlushInterval)
	}
	t.Logf("the line came after %v", time.Since(start))
}

// TestLogOutputHoldsWritersWhenTheFileFallsBehind writes far more than
// logMaxPending to a pipe read slowly: the lines written and not yet read
// stay bounded (writers wait), and none is lost.
func TestLogOutputHoldsWritersWhenTheFileFallsBehind(t *testing.T) {
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer pw.Close()
	w, closeLog := newLogOutput(pw)
	line := []byte(strings.Repeat("x", 1023) + "\n")
	const total = 16 << 20
	var written atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for written.Load() < total {
			if _, err := w.Write(line); err != nil {
				t.Error(err)
				return
			}
			written.Add(int64(len(line)))
		}
		closeLog()
		pw.Close()
	}()
	// What may wait: the pending lines, a batch being written, what the
	// pipe holds (64 KiB on Linux, up to 1 MiB if raised), a line.
	const bound = 2*logMaxPending + 1<<20 + 1024
	var read int64
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		for _, c := range buf[:n] {
			if c != 'x' && c != '\n' {
				t.Fatalf("byte %q in the pipe", c)
			}
		}
		read += int64(n)
		if ahead := written.Load() - read; ahead > bound {
			t.Fatalf("%d bytes written and not yet read; want at most %d", ahead, bound)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	<-done
	if read != written.Load() {
		t.Errorf("read %d bytes; want all %d written", read, written.Load())
	}
}

// BenchmarkLogOutput writes access-line-sized lines from parallel
// goroutines to a file (/dev/null): the cost a request pays to hand its
// line over.
func BenchmarkLogOutput(b *testing.B) {
	f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	w, closeLog := newLogOutput(f)
	defer closeLog()
	line := []byte(strings.Repeat("x", 299) + "\n")
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := w.Write(line); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
