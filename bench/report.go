//go:build linux

package main

import (
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// result is what one target did at one tenant count, over all rounds.
type result struct {
	tenants   int
	name      string
	redis     bool
	limiter   string // RATE_LIMIT; empty when off
	checked   bool   // issue #17's targets are checked on it
	base      string // a limiter row's: the name of the row without the limiter
	closed    series // saturated, closed loop
	paced     series // open loop at pacedRate
	pacedRate float64
}

// series is one target's measurements of one kind, round by round, with
// their sums and their ratios to the floor's measurement of the same round.
type series struct {
	rounds     []*measurement
	sample     sample
	cpu        time.Duration
	gcCycles   float64
	allocBytes float64
	redisBy    map[string]int64
	redisReads int64 // -1 when a round's are unknown
	limiter    limiterCounts
	// Paired with the floor's measurement of the same round.
	rps, cpuPer, p50, p99 []float64
	// A limiter row's, paired with the same proxy without the limiter in
	// the same round; CPU is per admitted call.
	vsBase struct{ rps, cpuPer, p99 []float64 }
}

func (s *series) add(m *measurement) {
	if m.redisReads < 0 || s.redisReads < 0 {
		s.redisReads = -1
	} else {
		s.redisReads += m.redisReads
	}
	s.limiter.admitted += m.limiter.admitted
	s.limiter.rejected += m.limiter.rejected
	s.limiter.waited += m.limiter.waited
	if len(s.rounds) == 0 || m.limiter.shared < s.limiter.shared {
		s.limiter.shared = m.limiter.shared // the lowest of the rounds
	}
	s.rounds = append(s.rounds, m)
	s.sample.merge(m.s)
	s.cpu += m.cpu
	s.gcCycles += m.gcCycles
	s.allocBytes += m.allocBytes
	if m.redisBy != nil {
		if s.redisBy == nil {
			s.redisBy = map[string]int64{}
		}
		for k, v := range m.redisBy {
			s.redisBy[k] += v
		}
	}
}

// pair computes the ratios of each round to the floor's same round.
func (s *series) pair(floor *series) {
	for i, m := range s.rounds {
		if i >= len(floor.rounds) {
			break
		}
		f := floor.rounds[i]
		s.rps = append(s.rps, m.s.rps()/f.s.rps())
		s.cpuPer = append(s.cpuPer, perRequest(m.cpu, m.s.requests)/perRequest(f.cpu, f.s.requests))
		s.p50 = append(s.p50, float64(m.s.percentile(0.5))/float64(f.s.percentile(0.5)))
		s.p99 = append(s.p99, float64(m.s.percentile(0.99))/float64(f.s.percentile(0.99)))
	}
}

// pairBase computes a limiter row's ratios to the same proxy without the
// limiter (base) in each round: CPU per admitted call against CPU per
// request.
func (s *series) pairBase(base *series) {
	for i, m := range s.rounds {
		if i >= len(base.rounds) {
			break
		}
		b := base.rounds[i]
		s.vsBase.rps = append(s.vsBase.rps, m.s.rps()/b.s.rps())
		s.vsBase.cpuPer = append(s.vsBase.cpuPer, perRequest(m.cpu, int64(m.limiter.admitted))/perRequest(b.cpu, b.s.requests))
		s.vsBase.p99 = append(s.vsBase.p99, float64(m.s.percentile(0.99))/float64(b.s.percentile(0.99)))
	}
}

func perRequest(d time.Duration, n int64) float64 {
	return float64(d.Nanoseconds()) / 1e3 / float64(max(n, 1))
}

// cpuPerRequest is in microseconds.
func (s *series) cpuPerRequest() float64 { return perRequest(s.cpu, s.sample.requests) }

// periodic reports whether a Redis command is one the proxies send on a
// clock, whatever the load (every Redis proxy alive, the idle ones too):
// PING keeps the pub/sub subscription alive (go-redis, every few seconds),
// ZRANGEBYSCORE is the background refresher's look at the expiry index
// (BACKGROUND_REFRESH_INTERVAL, 30s), and every 5 s each replica reads the
// store's epoch (GET) and publishes a heartbeat on the invalidation
// channel (PUBLISH). Two more come from outside the requests: SCARD reads
// the tenants by state for the tenants gauge, when a scrape of /metrics
// (the benchmark's own, each round) finds the counts older than 10 s, and
// HELLO is go-redis's handshake on a connection it opens. None is on a
// request's path. But GET is also what the rate limit's reservation script
// runs, once per call: with the limiter on, GET is counted as the calls'.
func periodic(cmd string, limiter bool) bool {
	switch cmd {
	case "ping", "zrangebyscore", "publish", "scard", "hello":
		return true
	case "get":
		return !limiter
	}
	return false
}

// redisPerRequest returns the Redis commands per request, leaving out the
// periodic ones, and the counts of both; limiter says the rate limit was
// on.
func (s *series) redisPerRequest(limiter bool) (float64, int64, int64) {
	var calls, timed int64
	for k, v := range s.redisBy {
		if periodic(k, limiter) {
			timed += v
		} else {
			calls += v
		}
	}
	return float64(calls) / float64(max(s.sample.requests, 1)), calls, timed
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	c := slices.Clone(v)
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

type memResult struct {
	store         string
	tenants       int
	before, after memPoint
	tokenBytes    int64
	tokenNote     string
}

// benchLine is one result line of go test -bench.
type benchLine struct {
	name   string
	n      int64
	values map[string]float64 // by unit: ns/op, B/op, allocs/op, custom
}

type report struct {
	machine       []string
	importRate    float64
	results       []*result
	memory        []memResult
	allocs        []benchLine
	herd          []benchLine
	perf          []perfResult
	discarded     int // rounds run again because other processes took CPU
	disturbedKept int // rounds kept although they were disturbed (no retry left)
	waited        time.Duration
	took          time.Duration
}

// parseBench reads the result lines of go test -bench output.
func parseBench(out string) []benchLine {
	var lines []benchLine
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		bl := benchLine{name: strings.TrimPrefix(name, "Benchmark"), n: n, values: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			bl.values[f[i+1]] = v
		}
		lines = append(lines, bl)
	}
	return lines
}

func describeMachine(o *options) []string {
	model := "unknown"
	cpus := 0
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(l, ":")
			if !ok {
				continue
			}
			switch strings.TrimSpace(k) {
			case "processor":
				cpus++
			case "model name":
				model = strings.TrimSpace(v)
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	redis := "unknown"
	if out, err := exec.Command("redis-server", "--version").Output(); err == nil {
		redis = strings.TrimSpace(string(out))
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if l, _, ok := strings.Cut(string(b), "\n"); ok {
			mem = strings.Join(strings.Fields(l)[1:], " ")
		}
	}
	return []string{
		fmt.Sprintf("CPU: %s, %d logical CPUs (nproc), MemTotal %s", model, cpus, mem),
		fmt.Sprintf("Linux %s, %s, %s", strings.TrimSpace(string(kernel)), runtime.Version(), redis),
		fmt.Sprintf("proxies under test (the floor, the proxy processes, the go test benchmarks): taskset -c %s", o.proxyCore),
		fmt.Sprintf("load generator (this program), the upstream and the benchmark's redis-server: taskset -c %s", o.loadCore),
		fmt.Sprintf("load: %d keep-alive connections, closed loop, GET %s, requests spread round robin over the tenants; access tokens of %d bytes",
			o.conns, requestPath, o.tokenBytes),
		"proxies: the proxy's defaults (among them ACCESS_LOG=true and LOG_LEVEL=info: an access line per request, on standard output, which goes to a file, as a container's goes to its log) but RATE_LIMIT=off; a row's name says what else differs",
		fmt.Sprintf("rounds of %s, interleaved (the floor, then each proxy in turn, then the floor again, ...): %d saturated and %d paced per tenant count, after %s of unmeasured load on each target",
			o.duration, o.rounds, max(1, (o.rounds+1)/2), o.warmup),
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1e3) }

func check(ok bool) string {
	if ok {
		return "✓"
	}
	return "✗"
}

// spread formats the median of per-round ratios and their range.
func spread(v []float64) string {
	if len(v) == 0 {
		return "–"
	}
	if slices.Min(v) == slices.Max(v) {
		return fmt.Sprintf("%.3f", v[0])
	}
	return fmt.Sprintf("%.3f (%.2f–%.2f)", median(v), slices.Min(v), slices.Max(v))
}

// write writes the report in Markdown: the machine and the run, then a
// section for each kind of measurement the run made.
func (rep *report) write(w io.Writer, o *options) {
	fmt.Fprintf(w, "## thanksio-proxy against its floor\n\n")
	for _, m := range rep.machine {
		fmt.Fprintf(w, "- %s\n", m)
	}
	fmt.Fprintf(w, "- rounds run again because other processes took more than %.2f of a core: %d; disturbed rounds kept (no retry left): %d\n",
		maxForeign, rep.discarded, rep.disturbedKept)
	fmt.Fprintf(w, "- waited for other processes of the machine to go quiet: %s in all\n", rep.waited.Round(time.Second))
	fmt.Fprintf(w, "- whole run: %s; token import through the admin API (Redis store, 16 at a time): %.0f tenants/s\n\n",
		rep.took.Round(time.Second), rep.importRate)
	writeLines(w, "×floor is the median, over rounds, of the ratio to the floor's measurement in the same round (range in brackets); absolute figures are over all rounds. CPU is the process's user+system time (/proc/<pid>/stat) per request; alloc and GC are the process's own runtime counters.", "")

	fmt.Fprintf(w, "### Saturated (closed loop, %d connections)\n\n", o.conns)
	rep.writeThroughput(w, func(r *result) *series { return &r.closed }, false)
	if o.pacedFrac > 0 {
		fmt.Fprintf(w, "### At %.0f%% of the floor's saturated throughput (open loop; latency counted from when each request was due)\n\n", 100*o.pacedFrac)
		rep.writeThroughput(w, func(r *result) *series { return &r.paced }, true)
	}
	writeLines(w, "### Targets of issue #17 (Redis store, the proxy's defaults but RATE_LIMIT=off, saturated; medians of per-round ratios to the floor)", "")
	rep.writeTargets(w)
	if rep.hasLimiter() {
		writeLines(w, "### The rate limit's price (saturated; every call under the limit; medians of per-round ratios to the Redis proxy with RATE_LIMIT=off in the same round)", "",
			"Round trips are the Redis server's read events (INFO stats total_reads_processed) less the benchmark's own and the periodic commands: at least one per command, or pipeline, that a client sends and waits for, so a bound from above. Commands are INFO commandstats, which also counts those a script runs.", "")
		rep.writeLimiter(w)
	}
	if len(rep.memory) > 0 {
		writeLines(w, "### Resident memory per cached tenant", "",
			"Read after a load on one tenant, and again after all tenants were imported, cached and loaded (VmRSS from /proc; heap in use from the proxy's go_memstats_heap_inuse_bytes).", "")
		rep.writeMemory(w)
	}
	if len(rep.perf) >= 2 {
		rep.writePerf(w)
	}
	if len(rep.allocs) > 0 {
		writeLines(w, "### Per request, in process (go test -bench -benchmem, GOMAXPROCS=1)", "",
			"Handler: ServeHTTP called directly, upstream answered by an in-memory RoundTripper (what the proxy adds, nothing else). Loopback: client, server, handler, http.Transport and upstream over 127.0.0.1 in one process.", "")
		rep.writeAllocs(w)
	}
	if len(rep.herd) > 0 {
		writeLines(w, "### Refresh herd (token endpoint answers after 50 ms)", "")
		rep.writeHerd(w)
	}
}

// writeLines writes each line and a line break after it; "" is a blank line.
func writeLines(w io.Writer, lines ...string) {
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}

// byTenants returns the results by tenant count, and the tenant counts in
// increasing order.
func (rep *report) byTenants() (map[int][]*result, []int) {
	by := map[int][]*result{}
	for _, r := range rep.results {
		by[r.tenants] = append(by[r.tenants], r)
	}
	return by, slices.Sorted(maps.Keys(by))
}

// writeThroughput writes the table of the series that pick selects of every
// result: paced ones with the rate offered, saturated ones with ratios to
// the floor's throughput and the Redis commands per request.
func (rep *report) writeThroughput(w io.Writer, pick func(*result) *series, paced bool) {
	if paced {
		writeLines(w,
			"| tenants | server | req/s offered → done | p50 | ×floor | p99 | ×floor | CPU/req | ×floor | alloc/req | GC/10k req | failures |",
			"| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	} else {
		writeLines(w,
			"| tenants | server | req/s | ×floor | p50 | ×floor | p99 | ×floor | CPU/req | ×floor | alloc/req | GC/10k req | Redis cmds/req | failures |",
			"| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	}
	byTenants, counts := rep.byTenants()
	for _, n := range counts {
		for _, r := range byTenants[n] {
			s := pick(r)
			req := float64(max(s.sample.requests, 1))
			rpsCol := fmt.Sprintf("%.0f | %s", s.sample.rps(), spread(s.rps))
			if paced {
				rpsCol = fmt.Sprintf("%.0f → %.0f", r.pacedRate, s.sample.rps())
			}
			fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %s | %s | %.1f µs | %s | %.1f KiB | %.1f |",
				n, r.name, rpsCol, ms(s.sample.percentile(0.5)), spread(s.p50),
				ms(s.sample.percentile(0.99)), spread(s.p99), s.cpuPerRequest(), spread(s.cpuPer),
				s.allocBytes/req/1024, s.gcCycles/req*1e4)
			if !paced {
				fmt.Fprintf(w, " %s |", redisCommands(r, s))
			}
			fmt.Fprintf(w, " %d |\n", s.sample.failures)
		}
	}
	fmt.Fprintln(w)
}

// redisCommands formats the Redis commands per request of r's series s, by
// command, the periodic ones apart; "–" for a result without Redis.
func redisCommands(r *result, s *series) string {
	if !r.redis {
		return "–"
	}
	per, _, _ := s.redisPerRequest(r.limiter != "")
	cmds := fmt.Sprintf("%.4f", per)
	var parts, timed []string
	for _, k := range slices.Sorted(maps.Keys(s.redisBy)) {
		if periodic(k, r.limiter != "") {
			timed = append(timed, fmt.Sprintf("%s %d", strings.ToUpper(k), s.redisBy[k]))
		} else {
			parts = append(parts, fmt.Sprintf("%s %d", strings.ToUpper(k), s.redisBy[k]))
		}
	}
	if len(parts) > 0 {
		cmds += " (" + strings.Join(parts, ", ") + ")"
	}
	if len(timed) > 0 {
		cmds += "; periodic: " + strings.Join(timed, ", ")
	}
	return cmds
}

// issueTarget is what issue #17 asks of the proxy (Redis store, its
// defaults but RATE_LIMIT=off) against the floor, saturated, at a tenant
// count: CPU per request and p99 at most, throughput at least, these
// multiples of the floor's.
type issueTarget struct {
	tenants       int
	cpu, rps, p99 float64
}

var issueTargets = []issueTarget{
	{tenants: 1, cpu: 1.05, rps: 0.95, p99: 1.15},
	{tenants: 10000, cpu: 1.05, rps: 0.95, p99: 1.2},
	{tenants: 100000, cpu: 1.08, rps: 0.92, p99: 1.3},
}

// targetFor returns the targets that apply at n tenants: those of the
// smallest of the issue's counts at or above n, or of its largest.
func targetFor(n int) issueTarget {
	for _, t := range issueTargets {
		if n <= t.tenants {
			return t
		}
	}
	return issueTargets[len(issueTargets)-1]
}

// writeTargets writes the table that checks the proxy's saturated
// Redis-store rows against issue #17's targets.
func (rep *report) writeTargets(w io.Writer) {
	writeLines(w, "| tenants | server | CPU/req ×floor | req/s ×floor | p99 ×floor | 0 Redis cmds/req (PING, ZRANGEBYSCORE, GET, PUBLISH, SCARD and HELLO, which come on a clock or from a scrape, aside) |", "| ---: | --- | --- | --- | --- | --- |")
	byTenants, counts := rep.byTenants()
	for _, n := range counts {
		goal := targetFor(n)
		tenants := strconv.Itoa(n)
		if goal.tenants != n {
			tenants += fmt.Sprintf(" (the targets of %d)", goal.tenants)
		}
		for _, r := range byTenants[n] {
			if !r.checked {
				continue
			}
			s := &r.closed
			c, t, p := median(s.cpuPer), median(s.rps), median(s.p99)
			_, calls, timed := s.redisPerRequest(false)
			fmt.Fprintf(w, "| %s | %s | %s %.3f (≤ %.2f) | %s %.3f (≥ %.2f) | %s %.3f (≤ %.2f) | %s %d in %d requests (and %d periodic) |\n",
				tenants, r.name, check(c <= goal.cpu), c, goal.cpu, check(t >= goal.rps), t, goal.rps, check(p <= goal.p99), p, goal.p99,
				check(calls == 0), calls, s.sample.requests, timed)
		}
	}
	fmt.Fprintln(w)
}

func (rep *report) hasLimiter() bool {
	return slices.ContainsFunc(rep.results, func(r *result) bool { return r.limiter != "" })
}

// The goals of issue #17 for the rate limit, every call under it: per
// admitted call, at most this many Redis round trips, and CPU at most this
// multiple of the same proxy's without the limiter.
const (
	limiterRoundTrips = 1
	limiterCPU        = 1.15
)

// writeLimiter writes the table of what the rate limit costs: the limiter
// rows against the Redis proxy without it, saturated.
func (rep *report) writeLimiter(w io.Writer) {
	writeLines(w,
		fmt.Sprintf("| tenants | server | CPU/admitted call | ×RATE_LIMIT=off (goal ≤ %.2f) | Redis round trips/admitted call (goal ≤ %d) | Redis commands/admitted call (by name: calls in all) | p99 ×RATE_LIMIT=off | req/s ×RATE_LIMIT=off | admitted | of them waited | rejected, 429 (must be 0) |", limiterCPU, limiterRoundTrips),
		"| ---: | --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | --- |")
	byTenants, counts := rep.byTenants()
	for _, n := range counts {
		var base *result
		for _, r := range byTenants[n] {
			if r.limiter == "" || r.base == "" {
				continue
			}
			for _, b := range byTenants[n] {
				if b.name == r.base {
					base = b
				}
			}
			s := &r.closed
			admitted := max(s.limiter.admitted, 1)
			c := median(s.vsBase.cpuPer)
			baseCPU := "–"
			if base != nil {
				baseCPU = fmt.Sprintf("%.1f µs", base.closed.cpuPerRequest())
			}
			_, calls, timed := s.redisPerRequest(true)
			trips := "– (the server does not count its reads)"
			if s.redisReads >= 0 {
				// The periodic commands are sent and waited for one at a
				// time: a read each. The check is at the precision shown.
				t := float64(s.redisReads-timed) / admitted
				trips = fmt.Sprintf("%s %.3f", check(t < limiterRoundTrips+0.0005), t)
			}
			var byName []string
			for _, k := range slices.Sorted(maps.Keys(s.redisBy)) {
				if !periodic(k, true) {
					byName = append(byName, fmt.Sprintf("%s %d", strings.ToUpper(k), s.redisBy[k]))
				}
			}
			cmds := fmt.Sprintf("%.2f", float64(calls)/admitted)
			if len(byName) > 0 {
				cmds += " (" + strings.Join(byName, ", ") + ")"
			}
			refused := int64(s.limiter.rejected) + s.sample.limited
			rejected := fmt.Sprintf("%s %.0f rejected; %d answers 429", check(refused == 0), s.limiter.rejected, s.sample.limited)
			if s.limiter.shared < 1 {
				rejected += "; the schedule was not shared through Redis in some round (Redis failed: the limiter paced alone)"
			}
			fmt.Fprintf(w, "| %d | %s | %.1f µs (without: %s) | %s %.3f | %s | %s | %s | %s | %.0f | %.0f | %s |\n",
				n, r.name, perRequest(s.cpu, int64(admitted)), baseCPU, check(c <= limiterCPU), c, trips, cmds,
				spread(s.vsBase.p99), spread(s.vsBase.rps), s.limiter.admitted, s.limiter.waited, rejected)
		}
	}
	fmt.Fprintln(w)
}

// writeMemory writes the table of the resident memory each cached tenant costs.
func (rep *report) writeMemory(w io.Writer) {
	writeLines(w, "| store | tenants | VmRSS before → after | per tenant | token bytes subtracted | per tenant beyond tokens (target ≤ 2 KiB) | heap in use per tenant, beyond tokens |", "| --- | ---: | ---: | ---: | --- | ---: | ---: |")
	for _, m := range rep.memory {
		per := float64(m.after.rss-m.before.rss) / float64(m.tenants)
		heap := (m.after.heapInuse-m.before.heapInuse)/float64(m.tenants) - float64(m.tokenBytes)
		beyond := per - float64(m.tokenBytes)
		fmt.Fprintf(w, "| %s | %d | %.1f → %.1f MiB | %.0f B | %d B: %s | %s %.0f B | %.0f B |\n",
			m.store, m.tenants, float64(m.before.rss)/(1<<20), float64(m.after.rss)/(1<<20), per,
			m.tokenBytes, m.tokenNote, check(beyond <= 2048), beyond, heap)
	}
	fmt.Fprintln(w)
}

// writePerf writes where each process's CPU goes, by area, beside the
// floor's (the first perf result), and what perf stat counted.
func (rep *report) writePerf(w io.Writer) {
	cpuOf := func(pr perfResult) float64 {
		for _, r := range rep.results {
			if r.tenants == pr.tenants && r.name == pr.name {
				return r.closed.cpuPerRequest()
			}
		}
		return 0
	}
	f := rep.perf[0]
	fc := cpuOf(f)
	fmt.Fprintf(w, "### Where the CPU goes (perf record -e cpu-clock on the processes, saturated, %d tenants)\n\n", f.tenants)
	writeLines(w, "Share of each process's samples, times its CPU per request in the measured rounds; then the difference from the floor.", "")
	head, sep := "| area | "+f.name+" | µs/req |", "| --- | ---: | ---: |"
	union := map[string]float64{}
	for _, pr := range rep.perf {
		for k := range pr.areas {
			union[k] = 0
		}
		if pr.name != f.name {
			head += " " + pr.name + " | µs/req | added |"
			sep += " ---: | ---: | ---: |"
		}
	}
	writeLines(w, head, sep)
	for _, a := range append(sortedAreas(union), "total") {
		fmt.Fprintf(w, "| %s |", a)
		for _, pr := range rep.perf {
			pct, base := pr.areas[a], f.areas[a]
			if a == "total" {
				pct, base = 100, 100
			}
			c := cpuOf(pr)
			fmt.Fprintf(w, " %.1f%% | %.1f |", pct, pct/100*c)
			if pr.name != f.name {
				fmt.Fprintf(w, " %+.1f |", pct/100*c-base/100*fc)
			}
		}
		fmt.Fprintln(w)
	}
	writeLines(w, "", "Counted by perf stat over a round of their own, per request:", "")
	head, sep = "| |", "| --- |"
	for _, pr := range rep.perf {
		head += " " + pr.name + " |"
		sep += " ---: |"
	}
	writeLines(w, head, sep)
	for _, row := range []struct {
		name string
		get  func(perfResult) float64
		f    string
	}{
		{"system calls", func(p perfResult) float64 { return p.syscalls }, " %.2f |"},
		{"context switches", func(p perfResult) float64 { return p.switches }, " %.3f |"},
		{"page faults", func(p perfResult) float64 { return p.faults }, " %.4f |"},
	} {
		fmt.Fprintf(w, "| %s |", row.name)
		for _, pr := range rep.perf {
			fmt.Fprintf(w, row.f, row.get(pr))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
}

// writeAllocs writes the table of the in-process benchmarks' cost per request.
func (rep *report) writeAllocs(w io.Writer) {
	writeLines(w, "| benchmark | ns/op | B/op | allocs/op |", "| --- | ---: | ---: | ---: |")
	for _, l := range rep.allocs {
		fmt.Fprintf(w, "| %s | %.0f | %.0f | %.0f |\n", l.name, l.values["ns/op"], l.values["B/op"], l.values["allocs/op"])
	}
	fmt.Fprintln(w)
}

// writeHerd writes the table of the refresh herd benchmark's results against its targets.
func (rep *report) writeHerd(w io.Writer) {
	writeLines(w, "| benchmark | herds | token-endpoint calls per herd (max) | added latency p50 | p99 (target < 10 ms) | max |", "| --- | ---: | ---: | ---: | ---: | ---: |")
	for _, l := range rep.herd {
		v := l.values
		fmt.Fprintf(w, "| %s | %d | %s %.0f | %.2f ms | %s %.2f ms | %.2f ms |\n", l.name, l.n,
			check(v["max-token-calls"] == 1), v["max-token-calls"], v["added-p50-ms"],
			check(v["added-p99-ms"] < 10), v["added-p99-ms"], v["added-max-ms"])
	}
	fmt.Fprintln(w)
}
