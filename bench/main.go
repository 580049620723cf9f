//go:build linux

// Command bench measures thanksio-proxy against its floor, a bare
// httputil.ReverseProxy that adds a constant Authorization header with the
// same transport settings and copy-buffer pool, and prints markdown tables.
//
//	go run ./bench          # the full run, under 10 minutes on 2 cores
//	go run ./bench -quick   # about 2 minutes
//
// Everything runs on loopback. The benchmark builds the proxy (go build .),
// the floor (bench/floor) and a fast upstream (bench/upstream); starts the
// upstream and, unless -redis-url names one, its own redis-server on the load
// generator's core, and the proxies on the other core (taskset); imports the
// tenants' tokens through the proxy's admin API; warms the caches with one
// request per tenant; and then runs the floor and the proxies (in-memory
// store, Redis store, and a few variants: the rate limit on, ACCESS_LOG off,
// a small cache) in interleaved rounds (floor, memory, redis, ..., floor,
// ...), so that drift of the machine falls on all of them alike. Every
// process it starts binds port 0 and says which port it got, but
// redis-server (see startOwnRedis). Then it runs the in-process benchmarks of
// this package (allocations per request, refresh herd) with go test -bench.
// See bench/README.md.
package main

import (
	"bytes"
	"cmp"
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"thanksio-proxy/ratelimit"
)

type options struct {
	quick       bool
	tenants     []int
	rounds      int
	duration    time.Duration
	warmup      time.Duration
	conns       int
	tokenBytes  int
	cacheSize   int
	pacedFrac   float64
	redisURL    string
	proxyCore   string
	loadCore    string
	memTenants  int
	goBench     bool
	noLogRow    bool
	limiterRows bool
	limit       string
	profileDir  string
	perfDir     string
	quietWait   time.Duration
	candidate   string
	evictRow    bool
	out         string
	timeout     time.Duration
	keepWorkDir bool
}

const pinnedEnv = "THANKSIO_BENCH_PINNED"

func main() {
	var o options
	var tenants string
	flag.BoolVar(&o.quick, "quick", false, "a short run: tenants 1 and 10000, 2 rounds of 2s, short go test benchmarks")
	flag.StringVar(&tenants, "tenants", "1,10000,100000", "tenant counts, comma-separated (issue #17's targets are for 1, 10000 and 100000)")
	flag.IntVar(&o.rounds, "rounds", 6, "interleaved saturated rounds per target and tenant count (paced: half as many)")
	flag.DurationVar(&o.duration, "duration", 2*time.Second, "length of one round")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured load on each target before its first round")
	flag.IntVar(&o.conns, "c", 32, "concurrent keep-alive connections of the load generator")
	flag.IntVar(&o.tokenBytes, "token-bytes", 1024, "length of each access token (thanks.io's are JWTs of about 1 KB)")
	flag.IntVar(&o.cacheSize, "cache-size", 0, "CACHE_SIZE of the proxies; 0 keeps the proxy's default (100000)")
	flag.Float64Var(&o.pacedFrac, "paced", 0.5, "also measure latency at this fraction of the floor's throughput (open loop); 0 skips it")
	flag.StringVar(&o.redisURL, "redis-url", "", "use this Redis (redis://127.0.0.1:6379) instead of starting a redis-server of the benchmark's own")
	flag.StringVar(&o.proxyCore, "proxy-cpu", "1", "taskset CPU list of the proxy processes under test")
	flag.StringVar(&o.loadCore, "load-cpu", "0", "taskset CPU list of the load generator, the upstream and the benchmark's Redis")
	flag.IntVar(&o.memTenants, "mem-tenants", 0, "tenant count at which resident memory per cached tenant is measured (default: the largest of -tenants)")
	flag.BoolVar(&o.goBench, "gobench", true, "also run the in-process go test benchmarks (allocations per request, refresh herd)")
	flag.BoolVar(&o.evictRow, "evict-row", true, "also measure, at the largest tenant count, a Redis proxy whose CACHE_SIZE holds half the tenants (eviction, and what a cache miss costs)")
	flag.BoolVar(&o.noLogRow, "access-log-off-row", true, "also measure, at the smallest tenant count, the Redis proxy with ACCESS_LOG=false (every other proxy runs the default, true)")
	flag.BoolVar(&o.limiterRows, "limiter-rows", true, "also measure, at 1 and at 10000 tenants (when -tenants has them), the Redis proxy with the rate limit on (-limit), and its price against the same proxy without it")
	flag.StringVar(&o.limit, "limit", "1000000/1s", "RATE_LIMIT of the limiter rows: far above what the load sends to one tenant, so that every call is admitted at once (at most 1000000 calls; a period of at least 100ms)")
	flag.StringVar(&o.profileDir, "profile", "", "write CPU profiles of the in-process benchmarks (and pprof -top of them) to this directory")
	flag.StringVar(&o.perfDir, "perf", "", "after the measured rounds at the largest tenant count, profile the floor, the Redis proxy and the limiter's processes under load with perf record (linux-perf) and write perf reports to this directory")
	flag.DurationVar(&o.quietWait, "quiet-wait", 3*time.Minute, "in all, how long to wait for other processes of the machine to go quiet before rounds")
	flag.StringVar(&o.candidate, "candidate", "", "also measure the proxy built from this directory (a copy of the module with a change to try), with the Redis store, in the same interleaved rounds")
	flag.StringVar(&o.out, "o", "", "also write the report to this file")
	flag.DurationVar(&o.timeout, "timeout", 20*time.Minute, "give up after this long")
	flag.BoolVar(&o.keepWorkDir, "keep", false, "keep the work directory (binaries and process logs)")
	flag.Parse()

	if o.quick {
		if !isSet("tenants") {
			tenants = "1,10000"
		}
		if !isSet("rounds") {
			o.rounds = 2
		}
		if !isSet("duration") {
			o.duration = 2 * time.Second
		}
		if !isSet("warmup") {
			o.warmup = 500 * time.Millisecond
		}
	}
	for _, s := range strings.Split(tenants, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fatalf("-tenants: %q is not a positive count", s)
		}
		o.tenants = append(o.tenants, n)
	}
	slices.Sort(o.tenants)
	o.tenants = slices.Compact(o.tenants)
	if o.memTenants == 0 {
		o.memTenants = o.tenants[len(o.tenants)-1]
	}
	if o.rounds < 1 || o.duration <= 0 || o.conns < 1 || o.tokenBytes < 16 {
		fatalf("bad -rounds, -duration, -c or -token-bytes")
	}
	if limit, _, err := ratelimit.ParseRule(o.limit); err != nil || limit == 0 {
		fatalf("-limit %q: not a rate limit the proxy takes (RATE_LIMIT): %v", o.limit, err)
	}

	// The load generator runs in this process: pin it (and so every thread
	// of it) to its core by running again under taskset.
	if os.Getenv(pinnedEnv) == "" {
		taskset, err := exec.LookPath("taskset")
		if err != nil {
			fatalf("taskset (util-linux) is required: %v", err)
		}
		exe, err := os.Executable()
		if err != nil {
			fatalf("%v", err)
		}
		env := append(os.Environ(), pinnedEnv+"=1")
		err = syscall.Exec(taskset, append([]string{"taskset", "-c", o.loadCore, exe}, os.Args[1:]...), env)
		fatalf("exec taskset: %v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	err := run(ctx, &o)
	cancel()
	stop()
	stopAll()
	if err != nil {
		fatalf("%v", err)
	}
}

func isSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func fatalf(format string, args ...any) {
	stopAll()
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// bench is one run's shared state.
type bench struct {
	o           *options
	dir         string
	root        string
	bins        map[string]string
	upstreamURL string
	adminToken  string
	encKey      string
	redisAddr   string // host:port of the Redis used
	redisURL    string
	prefix      string // REDIS_KEY_PREFIX of this run
	ownRedis    bool
	names       []string // tenant ids, the largest count
	filler      string
	floor       *target
	report      *report
	waited      time.Duration // in waitQuiet
}

// target is one server under test.
type target struct {
	name    string // of its process and log file
	label   string // its rows' name in the report
	proc    *proc
	addr    string // data plane
	ops     string // metrics listener
	pool    *pool
	redis   bool   // its rounds count Redis commands
	limiter string // its RATE_LIMIT; empty when off
	checked bool   // issue #17's targets are checked on its rows
}

func run(ctx context.Context, o *options) error {
	start := time.Now()
	b := &bench{o: o, bins: map[string]string{}, report: &report{}}
	var err error
	if b.dir, err = os.MkdirTemp("", "thanksio-bench-"); err != nil {
		return err
	}
	if !o.keepWorkDir {
		defer os.RemoveAll(b.dir)
	} else {
		logf("work directory: %s", b.dir)
	}
	if b.root, err = moduleRoot(); err != nil {
		return err
	}
	b.adminToken = randomHex(32)
	key := make([]byte, 32)
	_, _ = crand.Read(key)
	b.encKey = base64.StdEncoding.EncodeToString(key)
	b.prefix = "thanksio-proxy-bench-" + randomHex(6) + ":"
	b.filler = tokenFiller(o.tokenBytes)
	b.names = make([]string, o.tenants[len(o.tenants)-1])
	for i := range b.names {
		b.names[i] = fmt.Sprintf("tenant-%06d", i)
	}
	b.report.machine = describeMachine(o)

	logf("building the proxy, the floor and the upstream")
	for name, pkg := range map[string]string{"thanksio-proxy": ".", "floor": "./bench/floor", "upstream": "./bench/upstream"} {
		bin := filepath.Join(b.dir, name)
		// Both cores: nothing is measured yet.
		cmd := exec.CommandContext(ctx, "taskset", "-c", o.loadCore+","+o.proxyCore, "go", "build", "-o", bin, pkg)
		cmd.Dir = b.root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
		b.bins[name] = bin
	}
	if o.candidate != "" {
		bin := filepath.Join(b.dir, "candidate")
		cmd := exec.CommandContext(ctx, "taskset", "-c", o.loadCore+","+o.proxyCore, "go", "build", "-o", bin, ".")
		cmd.Dir = o.candidate
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build the candidate in %s: %v\n%s", o.candidate, err, out)
		}
		b.bins["candidate"] = bin
	}

	// The upstream, on the load generator's core.
	up, err := startProc(b.dir, "upstream", o.loadCore, baseEnv(), b.bins["upstream"], "-listen", "127.0.0.1:0")
	if err != nil {
		return err
	}
	upAddr, _, err := waitListening(up)
	if err != nil {
		return err
	}
	b.upstreamURL = "http://" + upAddr + "/api/v2"

	if err := b.startRedis(ctx); err != nil {
		return err
	}
	defer b.cleanRedis()

	// The floor, on the proxy's core, for the whole run.
	fp, err := startProc(b.dir, "floor", o.proxyCore, baseEnv(), b.bins["floor"],
		"-listen", "127.0.0.1:0", "-ops", "127.0.0.1:0", "-upstream", b.upstreamURL, "-token", b.accessToken(-1))
	if err != nil {
		return err
	}
	floorAddr, floorOps, err := waitListening(fp)
	if err != nil {
		return err
	}
	if floorOps == "" {
		return fmt.Errorf("floor: its listening line names no ops address: %s", fp.tail())
	}
	b.floor = &target{name: "floor", label: "floor", proc: fp, addr: floorAddr, ops: floorOps, pool: newPool(floorAddr, o.conns)}
	defer b.floor.pool.close()

	// Every tenant's token goes into Redis once, through the admin API of a
	// proxy that is stopped afterwards, so that each measured Redis proxy
	// starts with an empty cache and reads its tenants from Redis.
	imp, err := b.startProxy(ctx, proxySpec{name: "redis-importer", redis: true})
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := b.importTenants(ctx, imp, 0, len(b.names)); err != nil {
		return err
	}
	b.report.importRate = float64(len(b.names)) / time.Since(t0).Seconds()
	logf("imported %d tenants into Redis in %s", len(b.names), time.Since(t0).Round(time.Millisecond))
	imp.proc.stop()

	for i, n := range o.tenants {
		if err := b.measure(ctx, n, i == 0); err != nil {
			return err
		}
	}
	// The go test benchmarks run on the proxy core next: nothing else of
	// the benchmark's may run there but the idle Redis the herd uses.
	b.floor.proc.stop()
	up.stop()

	if o.goBench {
		if err := b.goBenchmarks(ctx); err != nil {
			return err
		}
	}
	b.report.took = time.Since(start)
	b.report.waited = b.waited
	var out bytes.Buffer
	b.report.write(&out, o)
	os.Stdout.Write(out.Bytes())
	if o.out != "" {
		if err := os.WriteFile(o.out, out.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run the benchmark from inside the thanksio-proxy module")
	}
	return filepath.Dir(gomod), nil
}

// baseEnv is the environment of every process the benchmark starts: nothing
// of the caller's configuration (REDIS_URL, GOMAXPROCS...) leaks in.
func baseEnv() []string {
	return []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = crand.Read(b)
	return hex.EncodeToString(b)
}

// tokenFiller returns n base64url characters to pad tokens with.
func tokenFiller(n int) string {
	b := make([]byte, n)
	_, _ = crand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)[:n]
}

// accessToken returns tenant i's access token (i < 0: the floor's), exactly
// tokenBytes long and distinct per tenant.
func (b *bench) accessToken(i int) string {
	p := "floor." + b.filler
	if i >= 0 {
		p = fmt.Sprintf("at.%07d.%s", i, b.filler)
	}
	return p[:b.o.tokenBytes]
}

func (b *bench) refreshToken(i int) string {
	return fmt.Sprintf("rt.%07d.%s", i, b.filler)[:b.o.tokenBytes]
}

func (b *bench) startRedis(ctx context.Context) error {
	if b.o.redisURL != "" {
		b.redisURL = b.o.redisURL
		rest, ok := strings.CutPrefix(b.redisURL, "redis://")
		if !ok || strings.ContainsAny(rest, "@/?") {
			return errors.New("-redis-url: only redis://host:port is supported here")
		}
		b.redisAddr = rest
	} else {
		server, err := exec.LookPath("redis-server")
		if err != nil {
			return errors.New("redis-server not found: install it (apt-get install redis-server) or pass -redis-url")
		}
		if err := b.startOwnRedis(server); err != nil {
			return err
		}
	}
	rc, err := dialRedis(b.redisAddr)
	if err != nil {
		return fmt.Errorf("redis at %s: %w", b.redisAddr, err)
	}
	defer rc.Close()
	if _, err := rc.do("PING"); err != nil {
		return fmt.Errorf("redis at %s: %w", b.redisAddr, err)
	}
	return nil
}

// startOwnRedis starts redis-server on a loopback port of its own. Redis
// cannot be handed a listener, nor asked for a port the kernel picked
// (--port 0 turns TCP off), and the proxy's REDIS_URL takes no unix socket
// (store.OpenRedisURL: redis, rediss and their +cluster and +sentinel
// forms). So a port is drawn below the kernel's range of ephemeral ports,
// where no outgoing connection takes one, and another is drawn when
// redis-server cannot bind it. The server that answers on the port must be
// this process (INFO's process_id), not one that held the port already.
func (b *bench) startOwnRedis(server string) error {
	lo, hi := redisPortRange()
	var lastErr error
	for range 20 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(lo+mrand.IntN(hi-lo)))
		p, err := startProc(b.dir, "redis", b.o.loadCore, baseEnv(), server,
			"--port", addr[strings.LastIndexByte(addr, ':')+1:], "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--daemonize", "no", "--dir", b.dir, "--logfile", "")
		if err != nil {
			return err
		}
		err = waitRedis(p, addr, 10*time.Second)
		if err == nil {
			b.ownRedis = true
			b.redisAddr = addr
			b.redisURL = "redis://" + addr
			return nil
		}
		p.stop()
		if !errors.Is(err, errPortTaken) {
			return err
		}
		lastErr = err
	}
	return fmt.Errorf("redis-server: no port it could bind in 20 tries: %w", lastErr)
}

// redisPortRange returns the ports [lo, hi) that startOwnRedis draws from:
// below the first ephemeral port (/proc/sys/net/ipv4/ip_local_port_range).
func redisPortRange() (lo, hi int) {
	lo, hi = 20000, 32768 // Linux's default ephemeral range starts at 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if first, err := strconv.Atoi(f[0]); err == nil && first > 2024 {
				hi = first
				lo = min(lo, hi-1000)
			}
		}
	}
	return lo, hi
}

// errPortTaken is waitRedis's error when redis-server could not bind its port.
var errPortTaken = errors.New("the port is taken")

// waitRedis waits until the redis-server process p answers on addr.
func waitRedis(p *proc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		exited := p.exited()
		if pid, err := redisPID(addr); err == nil && pid == p.pid() {
			return nil
		}
		if exited {
			if strings.Contains(p.tail(), "Address already in use") {
				return fmt.Errorf("redis-server on %s: %w", addr, errPortTaken)
			}
			return fmt.Errorf("%s exited: %s", p.name, p.tail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server: not answering on %s after %s: %s", addr, timeout, p.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitListening waits for the line in which bench/upstream or bench/floor
// names the addresses it listens on, and returns them.
func waitListening(p *proc) (addr, ops string, err error) {
	line, err := p.waitLine("its listening line", 10*time.Second, func(l string) bool {
		_, _, ok := listeningOn(l)
		return ok
	})
	if err != nil {
		return "", "", err
	}
	addr, ops, _ = listeningOn(line)
	return addr, ops, nil
}

// cleanRedis deletes this run's keys from a Redis the benchmark did not
// start (its own goes away with it).
func (b *bench) cleanRedis() {
	if b.ownRedis || b.redisAddr == "" {
		return
	}
	rc, err := dialRedis(b.redisAddr)
	if err != nil {
		return
	}
	defer rc.Close()
	n, err := rc.deletePrefix(b.prefix)
	if err != nil {
		logf("deleting the benchmark's keys (%s*): %v", b.prefix, err)
		return
	}
	logf("deleted %d benchmark keys (%s*)", n, b.prefix)
}

// proxySpec is a proxy process to start: how it differs from the proxy's
// defaults, which it otherwise runs (ACCESS_LOG=true and LOG_LEVEL=info
// among them: what users run is what is measured), but RATE_LIMIT=off
// unless rateLimit says otherwise (the load sends thousands of calls a
// second to one tenant: the default, 60/1m, would refuse nearly all).
type proxySpec struct {
	name        string // of the process and its log file
	label       string // its rows' name in the report
	redis       bool   // the Redis store; else the in-memory one
	noAccessLog bool   // ACCESS_LOG=false
	cacheSize   int    // CACHE_SIZE; 0: -cache-size
	rateLimit   string // RATE_LIMIT; empty: off
	candidate   bool   // the -candidate build
	checked     bool   // issue #17's targets are checked on its rows
}

// startProxy starts a proxy on the proxy core, its data plane and ops
// listeners on ports the kernel picks, learns them from its startup line,
// and waits until it is ready.
func (b *bench) startProxy(ctx context.Context, spec proxySpec) (*target, error) {
	rateLimit := spec.rateLimit
	if rateLimit == "" {
		rateLimit = "off"
	}
	env := append(baseEnv(),
		"LISTEN_ADDR=127.0.0.1:0",
		"OPS_ADDR=127.0.0.1:0",
		"UPSTREAM_URL="+b.upstreamURL,
		"ADMIN_TOKEN="+b.adminToken,
		"RATE_LIMIT="+rateLimit,
	)
	if spec.noAccessLog {
		env = append(env, "ACCESS_LOG=false")
	}
	if cacheSize := cmp.Or(spec.cacheSize, b.o.cacheSize); cacheSize > 0 {
		env = append(env, "CACHE_SIZE="+strconv.Itoa(cacheSize))
	}
	if spec.redis {
		env = append(env, "REDIS_URL="+b.redisURL, "TOKEN_ENCRYPTION_KEY="+b.encKey, "REDIS_KEY_PREFIX="+b.prefix)
	}
	bin := b.bins["thanksio-proxy"]
	if spec.candidate {
		bin = b.bins["candidate"]
	}
	p, err := startProc(b.dir, spec.name, b.o.proxyCore, env, bin)
	if err != nil {
		return nil, err
	}
	line, err := p.waitLine(`its startup line ("thanksio-proxy started", naming its listeners)`, 20*time.Second,
		func(l string) bool {
			data, ops := startedAddrs(l)
			return data != "" && ops != ""
		})
	if err != nil {
		return nil, err
	}
	addr, ops := startedAddrs(line)
	if err := waitHTTP(ctx, p, "http://"+ops+"/healthz", 15*time.Second); err != nil {
		return nil, err
	}
	return &target{name: spec.name, label: spec.label, proc: p, addr: addr, ops: ops, pool: newPool(addr, b.o.conns),
		redis: spec.redis, limiter: spec.rateLimit, checked: spec.checked}, nil
}

// importTenants imports the tokens of tenants [from, to) through the
// target's admin API, 16 at a time.
func (b *bench) importTenants(ctx context.Context, t *target, from, to int) error {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	var next atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	for range 16 {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= to {
					return
				}
				body, _ := json.Marshal(map[string]any{
					"access_token":  b.accessToken(i),
					"refresh_token": b.refreshToken(i),
					"expires_in":    365 * 24 * 3600,
				})
				req, _ := http.NewRequestWithContext(ctx, http.MethodPut,
					"http://"+t.ops+"/admin/tenants/"+b.names[i]+"/token", bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+b.adminToken)
				req.Header.Set("Content-Type", "application/json")
				res, err := client.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != http.StatusOK {
						err = fmt.Errorf("import %s: status %d", b.names[i], res.StatusCode)
					}
				}
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// memPoint is a reading of a proxy's memory.
type memPoint struct {
	rss       int64
	heapInuse float64
}

func readMem(ctx context.Context, t *target) (memPoint, error) {
	r, err := rss(t.proc.pid())
	if err != nil {
		return memPoint{}, err
	}
	h, err := metricValues(ctx, "http://"+t.ops+"/metrics", "go_memstats_heap_inuse_bytes")
	if err != nil {
		return memPoint{}, err
	}
	return memPoint{rss: r, heapInuse: h[0]}, nil
}

// measure runs the interleaved rounds at n tenants; smallest says n is the
// smallest count of the run.
func (b *bench) measure(ctx context.Context, n int, smallest bool) error {
	o := b.o
	names := b.names[:n]
	logf("%d tenants: starting the proxies", n)
	// The in-memory and the Redis proxy come first (measure's memory
	// readings and the limiter's ratios use them by position).
	specs := []proxySpec{
		{name: fmt.Sprintf("memory-%d", n), label: "proxy, in-memory store"},
		{name: fmt.Sprintf("redis-%d", n), label: "proxy, Redis store", redis: true, checked: true},
	}
	if o.candidate != "" {
		specs = append(specs, proxySpec{name: fmt.Sprintf("candidate-redis-%d", n), label: "candidate (-candidate), Redis store",
			redis: true, candidate: true, checked: true})
	}
	if o.evictRow && n == o.tenants[len(o.tenants)-1] && n >= 2 {
		specs = append(specs, proxySpec{name: fmt.Sprintf("redis-halfcache-%d", n), label: "proxy, Redis, CACHE_SIZE=tenants/2",
			redis: true, cacheSize: n / 2})
	}
	if o.noLogRow && smallest {
		specs = append(specs, proxySpec{name: fmt.Sprintf("redis-noaccesslog-%d", n), label: "proxy, Redis, ACCESS_LOG=false",
			redis: true, noAccessLog: true})
	}
	// Issue #17 prices the limiter at 1 and 10,000 tenants.
	if o.limiterRows && (n == 1 || n == 10000) {
		specs = append(specs, proxySpec{name: fmt.Sprintf("redis-limiter-%d", n), label: "proxy, Redis, RATE_LIMIT=" + o.limit,
			redis: true, rateLimit: o.limit})
	}
	targets := []*target{b.floor}
	for _, spec := range specs {
		t, err := b.startProxy(ctx, spec)
		if err != nil {
			return err
		}
		defer t.pool.close()
		targets = append(targets, t)
	}
	mem, red := targets[1], targets[2]
	var err error

	// Memory per cached tenant: each proxy is read after a short load on one
	// tenant, and again after n tenants were imported, cached and loaded.
	// Fewer tenants would drown in the noise of the resident set.
	measureMem := n == o.memTenants && n >= 1000
	var memBase, redBase memPoint
	first := 0
	if measureMem {
		if err := b.importTenants(ctx, mem, 0, 1); err != nil {
			return err
		}
		first = 1
		one := newTenantSet(names[:1])
		for _, t := range []*target{mem, red} {
			if s := pass(t.pool, names[:1]); s.failures > 0 {
				return fmt.Errorf("%s: %s", t.name, s.firstFailure)
			}
			closedLoop(t.pool, one, time.Second)
		}
		if memBase, err = readMem(ctx, mem); err != nil {
			return err
		}
		if redBase, err = readMem(ctx, red); err != nil {
			return err
		}
	}
	t0 := time.Now()
	if err := b.importTenants(ctx, mem, first, n); err != nil {
		return err
	}
	logf("%d tenants: imported into the in-memory proxy in %s", n, time.Since(t0).Round(time.Millisecond))
	for _, t := range targets[1:] {
		t0 := time.Now()
		s := pass(t.pool, names)
		if s.failures > 0 {
			return fmt.Errorf("%s: warming %d tenants: %d failures, first: %s", t.name, n, s.failures, s.firstFailure)
		}
		logf("%d tenants: %s warmed (one request per tenant) in %s", n, t.name, time.Since(t0).Round(time.Millisecond))
	}

	tenants := newTenantSet(names)
	for _, t := range targets {
		closedLoop(t.pool, tenants, o.warmup)
	}
	rc, err := dialRedis(b.redisAddr)
	if err != nil {
		return err
	}
	defer rc.Close()

	results := make([]*result, len(targets))
	for i, t := range targets {
		results[i] = &result{tenants: n, name: t.label, redis: t.redis, limiter: t.limiter, checked: t.checked}
	}
	closed := func(t *target) *sample { return closedLoop(t.pool, tenants, o.duration) }
	if err := b.rounds(ctx, rc, n, "saturated", targets, o.rounds, closed, func(i int, m *measurement) {
		results[i].closed.add(m)
	}); err != nil {
		return err
	}
	if o.pacedFrac > 0 {
		rate := o.pacedFrac * results[0].closed.sample.rps()
		for _, r := range results {
			r.pacedRate = rate
		}
		logf("%d tenants: paced rounds at %.0f req/s", n, rate)
		pacedRun := func(t *target) *sample { return pacedLoop(t.pool, tenants, rate, o.duration) }
		if err := b.rounds(ctx, rc, n, "paced", targets, max(1, (o.rounds+1)/2), pacedRun, func(i int, m *measurement) {
			results[i].paced.add(m)
		}); err != nil {
			return err
		}
	}
	for _, r := range results {
		r.closed.pair(&results[0].closed)
		r.paced.pair(&results[0].paced)
		if r.limiter != "" {
			// Its price: against the same proxy without the limiter.
			r.base = results[2].name
			r.closed.pairBase(&results[2].closed)
			r.paced.pairBase(&results[2].paced)
		}
	}
	if o.perfDir != "" && n == o.tenants[len(o.tenants)-1] {
		profiled := []*target{b.floor, red}
		for _, t := range targets {
			if strings.HasPrefix(t.name, "candidate") || strings.HasPrefix(t.name, "redis-limiter") {
				profiled = append(profiled, t)
			}
		}
		if err := b.perfProfiles(ctx, n, profiled, tenants); err != nil {
			return err
		}
	}
	b.report.results = append(b.report.results, results...)

	if measureMem {
		memAfter, err := readMem(ctx, mem)
		if err != nil {
			return err
		}
		redAfter, err := readMem(ctx, red)
		if err != nil {
			return err
		}
		tokens := 2 * int64(b.o.tokenBytes)
		b.report.memory = append(b.report.memory,
			memResult{store: "Redis", tenants: n, before: redBase, after: redAfter, tokenBytes: tokens,
				tokenNote: "the access and refresh tokens the cache holds (the refresh token for a write-back after a data loss)"},
			memResult{store: "in-memory", tenants: n, before: memBase, after: memAfter, tokenBytes: tokens,
				tokenNote: "the access and refresh tokens, held once: the store's record and the cache share them"},
		)
	}
	for _, t := range targets[1:] {
		t.proc.stop()
	}
	return nil
}

// measurement is one target's share of one round.
type measurement struct {
	s          *sample
	cpu        time.Duration // the target process's user+system time
	foreign    float64       // cores used by processes not the benchmark's
	gcCycles   float64
	allocBytes float64
	redisBy    map[string]int64 // commands by name; nil when not counted
	// redisReads is the read events of the Redis server (INFO stats
	// total_reads_processed), less the benchmark's own: at least one per
	// command, or pipeline, a client sent and waited for, so a bound on
	// the round trips (commandstats counts the commands a script runs
	// too). -1 when the server does not count them.
	redisReads int64
	limiter    limiterCounts // of a target with the rate limit on
}

// limiterCounts are a rate-limited proxy's counters (its own metrics).
type limiterCounts struct {
	admitted, rejected float64
	waited             float64 // admitted after waiting for their turn
	shared             float64 // the ratelimit_shared gauge: 0 when Redis failed and the limiter paced alone
}

// maxForeign is the CPU (in cores) that processes other than the
// benchmark's may take during a measurement before its round is discarded
// and run again.
const maxForeign = 0.10

// rounds runs want rounds in which every target is measured once, in order,
// with run. A round during which other processes of the machine took more
// than maxForeign of a core is discarded and run again, up to want extra
// times; keep receives each target's measurement of every kept round.
func (b *bench) rounds(ctx context.Context, rc *redisConn, n int, kind string, targets []*target, want int,
	run func(*target) *sample, keep func(i int, m *measurement)) error {
	retries := want
	for done := 0; done < want; {
		b.waitQuiet(ctx)
		ms := make([]*measurement, len(targets))
		disturbed := 0.0
		for i, t := range targets {
			if err := ctx.Err(); err != nil {
				return err
			}
			m, err := b.measureOnce(ctx, rc, t, run)
			if err != nil {
				return err
			}
			ms[i] = m
			disturbed = max(disturbed, m.foreign)
			logf("%d tenants, %s: %-22s %8.0f req/s  p99 %-9s cpu %5.1f µs/req  other load %.2f cores  failures %d (429: %d)",
				n, kind, t.name, m.s.rps(), m.s.percentile(0.99).Round(time.Microsecond),
				float64(m.cpu.Nanoseconds())/1e3/float64(max(m.s.requests, 1)), m.foreign, m.s.failures, m.s.limited)
		}
		if disturbed > maxForeign && retries > 0 {
			retries--
			b.report.discarded++
			logf("%d tenants, %s: round discarded: other processes took %.2f cores", n, kind, disturbed)
			continue
		}
		if disturbed > maxForeign {
			b.report.disturbedKept++
		}
		for i, m := range ms {
			keep(i, m)
		}
		done++
	}
	return nil
}

// waitQuiet waits, within what is left of the quiet-wait budget, until
// processes other than the benchmark's use less than maxForeign of a core
// over half a second.
func (b *bench) waitQuiet(ctx context.Context) {
	start := time.Now()
	defer func() { b.waited += time.Since(start) }()
	for b.waited+time.Since(start) < b.o.quietWait && ctx.Err() == nil {
		busy0, err := machineBusy()
		if err != nil {
			return
		}
		ours0 := oursCPU()
		t0 := time.Now()
		time.Sleep(500 * time.Millisecond)
		busy1, _ := machineBusy()
		foreign := float64((busy1-busy0)-(oursCPU()-ours0)) / float64(time.Since(t0))
		if foreign < maxForeign {
			return
		}
	}
}

// measureOnce loads one target with run and reads its counters around it.
func (b *bench) measureOnce(ctx context.Context, rc *redisConn, t *target, run func(*target) *sample) (*measurement, error) {
	m := &measurement{redisReads: -1}
	t.proc.truncateLog()
	gc0, alloc0, err := runtimeCounters(ctx, t)
	if err != nil {
		return nil, err
	}
	var lim0 limiterCounts
	if t.limiter != "" {
		if lim0, err = readLimiter(ctx, t); err != nil {
			return nil, err
		}
	}
	// The INFO commandstats before INFO stats, and after it at the end:
	// of the benchmark's reads, only the second INFO stats falls between
	// the two readings of total_reads_processed.
	var calls0 map[string]int64
	var reads0 int64
	if t.redis {
		if calls0, err = rc.commandCalls(); err != nil {
			return nil, err
		}
		if reads0, err = rc.readsProcessed(); err != nil {
			return nil, err
		}
	}
	busy0, err := machineBusy()
	if err != nil {
		return nil, err
	}
	ours0 := oursCPU()
	cpu0, err := cpuTime(t.proc.pid())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.name, err)
	}
	start := time.Now()
	m.s = run(t)
	cpu1, err := cpuTime(t.proc.pid())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.name, err)
	}
	ours1 := oursCPU()
	busy1, err := machineBusy()
	if err != nil {
		return nil, err
	}
	wall := time.Since(start)
	m.cpu = cpu1 - cpu0
	m.foreign = max(0, float64((busy1-busy0)-(ours1-ours0))/float64(wall))
	if t.redis {
		reads1, err := rc.readsProcessed()
		if err != nil {
			return nil, err
		}
		calls1, err := rc.commandCalls()
		if err != nil {
			return nil, err
		}
		m.redisBy = callsDelta(calls0, calls1)
		if reads0 >= 0 && reads1 >= 0 {
			m.redisReads = max(0, reads1-reads0-1)
		}
	}
	if t.limiter != "" {
		lim1, err := readLimiter(ctx, t)
		if err != nil {
			return nil, err
		}
		m.limiter = limiterCounts{admitted: lim1.admitted - lim0.admitted, rejected: lim1.rejected - lim0.rejected,
			waited: lim1.waited - lim0.waited, shared: min(lim0.shared, lim1.shared)}
	}
	gc1, alloc1, err := runtimeCounters(ctx, t)
	if err != nil {
		return nil, err
	}
	m.gcCycles, m.allocBytes = gc1-gc0, alloc1-alloc0
	return m, nil
}

// runtimeCounters reads a target's completed GC cycles and bytes allocated
// since it started.
func runtimeCounters(ctx context.Context, t *target) (gc, alloc float64, err error) {
	vals, err := metricValues(ctx, "http://"+t.ops+"/metrics", "go_gc_duration_seconds_count", "go_memstats_alloc_bytes_total")
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", t.name, err)
	}
	return vals[0], vals[1], nil
}

// readLimiter reads a rate-limited target's counters. The calls admitted
// without waiting are the wait histogram's bucket le="0".
func readLimiter(ctx context.Context, t *target) (limiterCounts, error) {
	v, err := metricValues(ctx, "http://"+t.ops+"/metrics",
		"thanksio_proxy_ratelimit_admitted_total", "thanksio_proxy_ratelimit_rejected_total",
		"thanksio_proxy_ratelimit_wait_seconds_count", `thanksio_proxy_ratelimit_wait_seconds_bucket{le="0"}`,
		"thanksio_proxy_ratelimit_shared")
	if err != nil {
		return limiterCounts{}, fmt.Errorf("%s: %w", t.name, err)
	}
	return limiterCounts{admitted: v[0], rejected: v[1], waited: v[2] - v[3], shared: v[4]}, nil
}

// pacedLoop is paced with a guard against a rate of zero.
func pacedLoop(p *pool, tenants *tenantSet, rate float64, d time.Duration) *sample {
	if rate <= 0 {
		rate = 1
	}
	return paced(p, tenants, rate, d)
}

// goBenchmarks runs this package's go test benchmarks on the proxy core.
func (b *bench) goBenchmarks(ctx context.Context) error {
	o := b.o
	allocTime, herdTime := "2s", "5x"
	if o.quick {
		allocTime, herdTime = "300ms", "2x"
	}
	env := append(os.Environ(), "BENCH_REDIS_URL="+b.redisURL, "BENCH_TOKEN_BYTES="+strconv.Itoa(o.tokenBytes))
	runGo := func(args ...string) (string, error) {
		logf("go %s", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, "taskset", append([]string{"-c", o.proxyCore, "go"}, args...)...)
		cmd.Dir = b.root
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	out, err := runGo("test", "-run", "^$", "-bench", "^(BenchmarkHandler|BenchmarkLoopback)$", "-benchmem",
		"-benchtime", allocTime, "-count", "1", "./bench")
	if err != nil {
		return err
	}
	b.report.allocs = parseBench(out)
	out, err = runGo("test", "-run", "^$", "-bench", "^BenchmarkRefreshHerd$", "-benchtime", herdTime, "-count", "1", "./bench")
	if err != nil {
		return err
	}
	b.report.herd = parseBench(out)
	if o.profileDir != "" {
		if err := os.MkdirAll(o.profileDir, 0o755); err != nil {
			return err
		}
		dir, _ := filepath.Abs(o.profileDir)
		for _, name := range []string{"Handler/floor", "Handler/proxy", "Loopback/floor", "Loopback/proxy"} {
			bench, sub, _ := strings.Cut(name, "/")
			prof := filepath.Join(dir, strings.ToLower(bench)+"-"+sub+".pprof")
			bin := filepath.Join(dir, "bench.test")
			if _, err := runGo("test", "-run", "^$", "-bench", "^Benchmark"+bench+"$/^"+sub+"$", "-benchtime", "3s",
				"-cpuprofile", prof, "-o", bin, "./bench"); err != nil {
				return err
			}
			top, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount", "60", bin, prof).Output()
			if err != nil {
				return fmt.Errorf("go tool pprof: %w", err)
			}
			if err := os.WriteFile(strings.TrimSuffix(prof, ".pprof")+".top.txt", top, 0o644); err != nil {
				return err
			}
		}
		logf("profiles in %s", dir)
	}
	return nil
}
