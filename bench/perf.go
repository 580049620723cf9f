//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// perfProfiles loads each target for a round that is not measured while
// perf record samples its process (cpu-clock, user and kernel), and writes
// perf's report and a breakdown by code area to the perf directory.
func (b *bench) perfProfiles(ctx context.Context, n int, targets []*target, tenants *tenantSet) error {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return fmt.Errorf("-perf needs perf (apt-get install linux-perf): %w", err)
	}
	dir, err := filepath.Abs(b.o.perfDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	d := max(b.o.duration, 3*time.Second)
	for _, t := range targets {
		// Counting first (cheap), then sampling.
		stat := exec.CommandContext(ctx, perf, "stat", "-x", ",", "-e", "raw_syscalls:sys_enter,context-switches,page-faults",
			"-p", strconv.Itoa(t.proc.pid()), "--", "sleep", strconv.FormatFloat(d.Seconds(), 'f', 1, 64))
		var statOut strings.Builder
		stat.Stderr = &statOut
		if err := stat.Start(); err != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond)
		counted := closedLoop(t.pool, tenants, d-400*time.Millisecond)
		if err := stat.Wait(); err != nil {
			return fmt.Errorf("perf stat %s: %w: %s", t.name, err, statOut.String())
		}
		counts := map[string]float64{}
		for _, line := range strings.Split(statOut.String(), "\n") {
			f := strings.Split(line, ",")
			if len(f) >= 3 {
				if v, err := strconv.ParseFloat(f[0], 64); err == nil {
					counts[f[2]] = v
				}
			}
		}
		per := func(k string) float64 { return counts[k] / float64(max(counted.requests, 1)) }

		data := filepath.Join(dir, fmt.Sprintf("%s-%d.perf.data", t.name, n))
		rec := exec.CommandContext(ctx, perf, "record", "-q", "-e", "cpu-clock", "-F", "1999", "-g",
			"-p", strconv.Itoa(t.proc.pid()), "-o", data, "--", "sleep", strconv.FormatFloat(d.Seconds(), 'f', 1, 64))
		out, err := os.Create(data + ".log")
		if err != nil {
			return err
		}
		rec.Stdout, rec.Stderr = out, out
		if err := rec.Start(); err != nil {
			out.Close()
			return err
		}
		time.Sleep(200 * time.Millisecond)
		s := closedLoop(t.pool, tenants, d)
		err = rec.Wait()
		out.Close()
		if err != nil {
			return fmt.Errorf("perf record %s: %w", t.name, err)
		}
		report, err := exec.CommandContext(ctx, perf, "report", "-i", data, "--stdio", "--no-children",
			"--sort", "symbol", "-g", "none", "--percent-limit", "0").Output()
		if err != nil {
			return fmt.Errorf("perf report %s: %w", t.name, err)
		}
		if err := os.WriteFile(strings.TrimSuffix(data, ".data")+".txt", report, 0o644); err != nil {
			return err
		}
		areas := perfAreas(string(report))
		b.report.perf = append(b.report.perf, perfResult{name: t.label, tenants: n, areas: areas, rps: s.rps(),
			syscalls: per("raw_syscalls:sys_enter"), switches: per("context-switches"), faults: per("page-faults")})
		logf("perf: %s (%d tenants) profiled at %.0f req/s: %s", t.name, n, s.rps(), data)
	}
	return nil
}

type perfResult struct {
	name    string
	tenants int
	rps     float64
	areas   map[string]float64 // percent of samples by area
	// Per request, counted by perf stat over a round of its own.
	syscalls, switches, faults float64
}

// perfArea names the part of the program a symbol belongs to: the first
// area of perfAreaPrefixes with a prefix of sym.
func perfArea(kernel bool, sym string) string {
	if kernel {
		return "kernel (TCP, syscalls, scheduler)"
	}
	for _, a := range perfAreaPrefixes {
		for _, p := range a.prefixes {
			if strings.HasPrefix(sym, p) {
				return a.area
			}
		}
	}
	return "other"
}

// perfAreaPrefixes are the areas of user-space symbols, each with the
// prefixes of its symbols, in the order they are tried (the runtime's
// garbage collector and allocator before the rest of the runtime).
var perfAreaPrefixes = []struct {
	area     string
	prefixes []string
}{
	{"Go runtime: garbage collection", []string{
		"runtime.gc", "runtime.scan", "runtime.mark", "runtime.greyobject", "runtime.findObject",
		"runtime.wbBuf", "runtime.bulkBarrier", "gcWriteBarrier", "runtime.sweep",
		"runtime.(*mspan).sweep", "runtime.(*gcWork)", "runtime.tryDeferToSpanScan", "runtime.(*spanInlineMarkBits)",
		"runtime.typePointers", "runtime.spanOf", "runtime.(*gcBits)", "runtime.(*mspan).typePointers",
	}},
	{"Go runtime: allocation", []string{
		"runtime.malloc", "runtime.newobject", "runtime.nextFreeFast", "runtime.memclr",
		"runtime.(*mcache)", "runtime.(*mcentral)", "runtime.(*mheap)", "runtime.makeslice",
		"runtime.growslice", "runtime.concatstring", "runtime.rawstring", "runtime.heapSetType",
		"runtime.(*mspan)", "runtime.deductAssistCredit",
	}},
	{"Go runtime: scheduler, maps, time, sync, netpoll", []string{
		"runtime.", "internal/runtime/", "aeshash", "__vdso", "sync.", "internal/", "time.", "context.",
	}},
	{"thanksio-proxy's own code", []string{"thanksio-proxy/"}},
	{"Prometheus client", []string{"github.com/prometheus/"}},
	{"logging", []string{"log/slog", "log."}},
	{"crypto/rand, encoding", []string{"crypto/", "encoding/"}},
	{"net/http and the rest of the standard library", []string{
		"net/", "bufio.", "net.", "syscall.", "io.", "strings.", "strconv.", "bytes.", "unicode/",
		"os.", "fmt.", "errors.", "sort.", "slices.", "vendor/", "mime", "path",
	}},
}

// perfAreas sums the percentages of perf report --sort symbol -g none by
// area.
func perfAreas(report string) map[string]float64 {
	areas := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(report))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || !strings.HasSuffix(f[0], "%") || (f[1] != "[k]" && f[1] != "[.]") {
			continue
		}
		pct, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "%"), 64)
		if err != nil {
			continue
		}
		areas[perfArea(f[1] == "[k]", strings.Join(f[2:], " "))] += pct
	}
	return areas
}

// perfAreaOrder lists the areas in the order they are reported.
var perfAreaOrder = []string{
	"kernel (TCP, syscalls, scheduler)",
	"net/http and the rest of the standard library",
	"Go runtime: allocation",
	"Go runtime: garbage collection",
	"Go runtime: scheduler, maps, time, sync, netpoll",
	"thanksio-proxy's own code",
	"Prometheus client",
	"crypto/rand, encoding",
	"logging",
	"other",
}

func sortedAreas(areas map[string]float64) []string {
	var out []string
	for _, a := range perfAreaOrder {
		if _, ok := areas[a]; ok {
			out = append(out, a)
		}
	}
	for a := range areas {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}
