package store_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/ratelimit"
	"thanksio-proxy/store"
)

// tripGate is a go-redis hook that counts a client's round trips (a
// command sent alone, or a pipeline) and, while holding is set, holds each
// until the test lets it go: a round trip "in flight" for as long as the
// test needs.
type tripGate struct {
	trips   atomic.Int64
	holding atomic.Bool
	held    chan heldTrip     // the round trips held, as they come
	done    chan answeredTrip // every round trip, once answered
}

// answeredTrip is a round trip of scripts that has been answered.
type answeredTrip struct {
	cmds []redis.Cmder // their arguments may be read, not their answers
	err  error
}

// heldTrip is a round trip that waits for its release to be closed.
type heldTrip struct {
	cmds    []redis.Cmder
	release chan struct{}
}

func newTripGate() *tripGate {
	return &tripGate{held: make(chan heldTrip, 100), done: make(chan answeredTrip, 1000)}
}

func (g *tripGate) DialHook(next redis.DialHook) redis.DialHook { return next }

func (g *tripGate) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		cmds := []redis.Cmder{cmd}
		if err := g.pass(ctx, cmds); err != nil {
			cmd.SetErr(err)
			return err
		}
		err := next(ctx, cmd)
		g.answered(cmds, err)
		return err
	}
}

func (g *tripGate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if err := g.pass(ctx, cmds); err != nil {
			for _, cmd := range cmds {
				cmd.SetErr(err)
			}
			return err
		}
		err := next(ctx, cmds)
		g.answered(cmds, err)
		return err
	}
}

// pass counts a round trip of scripts and holds it while the gate holds.
// Others (a new connection's HELLO) pass.
func (g *tripGate) pass(ctx context.Context, cmds []redis.Cmder) error {
	if !slices.ContainsFunc(cmds, isScript) {
		return nil
	}
	g.trips.Add(1)
	if !g.holding.Load() {
		return nil
	}
	t := heldTrip{cmds: cmds, release: make(chan struct{})}
	g.held <- t
	select {
	case <-t.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func isScript(cmd redis.Cmder) bool { return cmd.Name() == "evalsha" || cmd.Name() == "eval" }

func (g *tripGate) answered(cmds []redis.Cmder, err error) {
	if !slices.ContainsFunc(cmds, isScript) {
		return
	}
	select {
	case g.done <- answeredTrip{cmds, err}:
	default:
	}
}

// nextHeld returns the next round trip the gate holds.
func (g *tripGate) nextHeld(t *testing.T, what string) heldTrip {
	t.Helper()
	select {
	case h := <-g.held:
		return h
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s to reach Redis", what)
		return heldTrip{}
	}
}

// waitAnswered waits until a command sent alone that names key has been
// answered without an error.
func (g *tripGate) waitAnswered(t *testing.T, what, key string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case a := <-g.done:
			if len(a.cmds) == 1 && a.err == nil && slices.Contains(a.cmds[0].Args(), any(key)) {
				return
			}
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// gatedSchedule is a RedisSchedule on a client of its own, with a tripGate,
// and what a test needs to look at its keys.
type gatedSchedule struct {
	*store.RedisSchedule
	gate   *tripGate
	prefix string
	admin  redis.UniversalClient // a client of the same Redis, without the gate
	queued chan int              // the queue's length each time a call joins it
}

// openGated opens a gatedSchedule on the Redis at url ("" for REDIS_URL's,
// as the other store tests use it), under a fresh key prefix, with its
// scripts loaded. It fails t when the Redis cannot be reached.
func openGated(t *testing.T, url string) *gatedSchedule {
	t.Helper()
	if url == "" {
		url = testutil.RedisURL(t)
	}
	client, err := store.OpenRedisURL(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	admin, err := store.OpenRedisURL(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close() })
	key := make([]byte, store.KeySize)
	_, _ = rand.Read(key)
	sealer, err := store.NewSealer([][]byte{key})
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedSchedule{gate: newTripGate(), prefix: testutil.KeyPrefix(), admin: admin, queued: make(chan int, 1000)}
	client.AddHook(g.gate)
	g.RedisSchedule = store.NewRedis(client, g.prefix, sealer).Schedule()
	store.OnQueue(g.RedisSchedule, func(n int) {
		select {
		case g.queued <- n:
		default: // no test waits
		}
	})
	// The scripts loaded on every server (else a first EVALSHA finds
	// none: NOSCRIPT, then EVAL), so that each call below is one command.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := store.LoadScheduleScripts(ctx, admin); err != nil {
		t.Fatalf("the Redis does not answer: %v", err)
	}
	return g
}

// waitQueued waits until n calls wait for the round trip under way.
func (g *gatedSchedule) waitQueued(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case q := <-g.queued:
			if q >= n {
				return
			}
		case <-deadline:
			t.Fatalf("timed out waiting for %d calls to wait for the round trip under way", n)
		}
	}
}

// reservations returns how many reservations tenant's schedule holds.
func (g *gatedSchedule) reservations(t *testing.T, tenant string) int64 {
	t.Helper()
	n, err := g.admin.ZCard(context.Background(), g.prefix+"{"+tenant+"}:rate").Result()
	if err != nil {
		t.Fatalf("ZCARD: %v", err)
	}
	return n
}

// holdLeader starts a reservation of tenant that finds no round trip under
// way, and so goes alone, and holds it in flight: the calls made until it
// is released wait for it, and go together after it. It returns the held
// round trip and the reservation's result.
func (g *gatedSchedule) holdLeader(t *testing.T, tenant string) (heldTrip, <-chan reservation) {
	t.Helper()
	g.gate.holding.Store(true)
	res := make(chan reservation, 1)
	go func() {
		slot, err := g.Reserve(context.Background(), tenant, batchRule, time.Hour, 0)
		res <- reservation{tenant, slot, err}
	}()
	return g.gate.nextHeld(t, "the first reservation"), res
}

type reservation struct {
	tenant string
	slot   store.Slot
	err    error
}

// queueReservations reserves a slot for each tenant at once, each in a
// goroutine of its own, and returns once all of them wait in the batch
// queue (behind a leader held in flight); their results come on the
// channel.
func (g *gatedSchedule) queueReservations(t *testing.T, ctx context.Context, tenants ...string) <-chan reservation {
	t.Helper()
	results := make(chan reservation, len(tenants))
	for _, tenant := range tenants {
		go func() {
			slot, err := g.Reserve(ctx, tenant, batchRule, time.Hour, 0)
			results <- reservation{tenant, slot, err}
		}()
	}
	g.waitQueued(t, len(tenants))
	return results
}

// batchRule is the rule of the batching tests: one call per window, so
// that each reservation of a tenant waits a window longer than the one
// before it.
var batchRule = store.RateRule{Limit: 1, Period: 10 * time.Second, Guard: 500 * time.Millisecond}

const batchSpaced = 10*time.Second + 500*time.Millisecond

// Reservations of many tenants made while one round trip is under way go
// together in the next, one pipeline, and each caller gets its own
// tenant's slot.
func TestRedisScheduleBatchesTenants(t *testing.T) {
	g := openGated(t, "")
	ctx := context.Background()
	const tenants = 50
	// Tenant i holds i%3 reservations already: its call waits i%3 windows.
	for i := range tenants {
		for range i % 3 {
			if _, err := g.Reserve(ctx, fmt.Sprintf("t%d", i), batchRule, time.Hour, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	before := g.gate.trips.Load()
	leader, leaderRes := g.holdLeader(t, "leader")
	ids := make([]string, tenants)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%d", i)
	}
	results := g.queueReservations(t, ctx, ids...)
	g.gate.holding.Store(false)
	close(leader.release)
	if r := <-leaderRes; r.err != nil || !r.slot.Reserved() {
		t.Fatalf("the first reservation = %+v, %v", r.slot, r.err)
	}
	for range tenants {
		r := <-results
		if r.err != nil || !r.slot.Reserved() {
			t.Errorf("Reserve(%q) = %+v, %v; want a slot", r.tenant, r.slot, r.err)
			continue
		}
		var i int
		_, _ = fmt.Sscanf(r.tenant, "t%d", &i)
		want := time.Duration(i%3) * batchSpaced
		if d := r.slot.Wait - want; d < -time.Second || d > time.Second {
			t.Errorf("Reserve(%q) waits %v; want %v (another tenant's answer?)", r.tenant, r.slot.Wait, want)
		}
		// The slot is in the caller's own tenant's schedule.
		if w, err := g.Confirm(ctx, r.tenant, r.slot.ID); err != nil || (w-r.slot.Wait).Abs() > time.Second {
			t.Errorf("Confirm(%q, its slot) = %v, %v; want %v", r.tenant, w, err, r.slot.Wait)
		}
	}
	// The confirms above went one at a time; the reservations took two
	// round trips: the first call's, and one for the 50 that waited (a
	// Cluster client splits that one by node, and sends the parts at
	// once).
	if trips := g.gate.trips.Load() - before - tenants; trips != 2 {
		t.Errorf("%d reservations took %d round trips; want 2", tenants+1, trips)
	}
}

// A caller that goes away while its reservation waits for its round trip
// takes it out of the batch: its script never runs, and the others' do.
func TestRedisScheduleCallerGoneBeforeItsBatch(t *testing.T) {
	g := openGated(t, "")
	leader, leaderRes := g.holdLeader(t, "leader")
	gone, cancel := context.WithCancel(context.Background())
	goneRes := make(chan error, 1)
	go func() {
		_, err := g.Reserve(gone, "gone", batchRule, time.Hour, 0)
		goneRes <- err
	}()
	g.waitQueued(t, 1)
	stay := make(chan reservation, 1)
	go func() {
		slot, err := g.Reserve(context.Background(), "stays", batchRule, time.Hour, 0)
		stay <- reservation{"stays", slot, err}
	}()
	g.waitQueued(t, 2)
	cancel()
	if err := <-goneRes; !errors.Is(err, context.Canceled) {
		t.Errorf("Reserve of a caller gone while queued = %v; want context.Canceled", err)
	}
	close(leader.release)
	<-leaderRes
	batch := g.gate.nextHeld(t, "the batch")
	close(batch.release)
	if r := <-stay; r.err != nil || !r.slot.Reserved() {
		t.Errorf("Reserve(%q) in the same batch = %+v, %v; want a slot", r.tenant, r.slot, r.err)
	}
	if len(batch.cmds) != 1 {
		t.Errorf("the batch sent %d scripts; want 1 (the gone caller's stays out)", len(batch.cmds))
	}
	if n := g.reservations(t, "gone"); n != 0 {
		t.Errorf("the gone caller's tenant holds %d reservations; want 0", n)
	}
}

// A caller that goes away while its batch is in flight gets its context's
// error at once, leaves no reservation behind (the script may run: its id
// is dropped), and the others in the batch get theirs.
func TestRedisScheduleCallerGoneWhileItsBatchIsInFlight(t *testing.T) {
	g := openGated(t, "")
	leader, leaderRes := g.holdLeader(t, "leader")
	gone, cancel := context.WithCancel(context.Background())
	goneRes := make(chan error, 1)
	go func() {
		_, err := g.Reserve(gone, "gone", batchRule, time.Hour, 0)
		goneRes <- err
	}()
	stay := make(chan reservation, 1)
	go func() {
		slot, err := g.Reserve(context.Background(), "stays", batchRule, time.Hour, 0)
		stay <- reservation{"stays", slot, err}
	}()
	g.waitQueued(t, 2)
	close(leader.release)
	<-leaderRes
	batch := g.gate.nextHeld(t, "the batch")
	g.gate.holding.Store(false)
	cancel()
	select {
	case err := <-goneRes:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Reserve of a caller gone while its batch is in flight = %v; want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Reserve of a caller gone while its batch is in flight did not return before the batch's answer")
	}
	close(batch.release)
	if r := <-stay; r.err != nil || !r.slot.Reserved() || r.slot.Wait != 0 {
		t.Errorf("Reserve(%q) in the same batch = %+v, %v; want a slot at once", r.tenant, r.slot, r.err)
	}
	g.gate.waitAnswered(t, "the gone caller's reservation dropped", g.prefix+"{gone}:dropped")
	if n := g.reservations(t, "gone"); n != 0 {
		t.Errorf("the gone caller's tenant holds %d reservations; want 0", n)
	}
}

// A script's error in a batch reaches its own caller, as it would alone,
// and no other.
func TestRedisScheduleBatchErrorsReachTheirCaller(t *testing.T) {
	g := openGated(t, "")
	ctx := context.Background()
	// A pause that is not a number: the script fails.
	if err := g.admin.Set(ctx, g.prefix+"{broken}:pause", "x", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	leader, leaderRes := g.holdLeader(t, "leader")
	results := g.queueReservations(t, ctx, "before", "broken", "after")
	g.gate.holding.Store(false)
	close(leader.release)
	<-leaderRes
	var batched error
	for range 3 {
		r := <-results
		switch {
		case r.tenant == "broken":
			batched = r.err
		case r.err != nil || !r.slot.Reserved():
			t.Errorf("Reserve(%q) in a batch with a broken schedule = %+v, %v; want a slot", r.tenant, r.slot, r.err)
		}
	}
	_, alone := g.Reserve(ctx, "broken", batchRule, time.Hour, 0)
	if alone == nil || batched == nil || batched.Error() != alone.Error() {
		t.Errorf("Reserve of a broken schedule in a batch = %v; want %v, as alone", batched, alone)
	}
}

// A Redis that has lost its scripts (restarted, or SCRIPT FLUSH) while a
// batch was on its way runs them from their source: no caller sees
// NOSCRIPT.
func TestRedisScheduleBatchAfterScriptsFlushed(t *testing.T) {
	srv := testutil.StartRedis(t)
	g := openGated(t, srv.URL())
	ctx := context.Background()
	leader, leaderRes := g.holdLeader(t, "leader")
	results := g.queueReservations(t, ctx, "a", "b", "c")
	close(leader.release)
	<-leaderRes
	batch := g.gate.nextHeld(t, "the batch")
	g.gate.holding.Store(false)
	if err := g.admin.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	close(batch.release)
	for range 3 {
		if r := <-results; r.err != nil || !r.slot.Reserved() {
			t.Errorf("Reserve(%q) after the scripts were flushed = %+v, %v; want a slot", r.tenant, r.slot, r.err)
		}
	}
}

// A Redis that goes down while a batch is in flight fails each of its
// calls with its own error, by the callers' deadline; none hangs.
func TestRedisScheduleRedisDownMidBatch(t *testing.T) {
	srv := testutil.StartRedis(t)
	g := openGated(t, srv.URL())
	leader, leaderRes := g.holdLeader(t, "leader")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	tenants := []string{"a", "b", "c"}
	results := g.queueReservations(t, ctx, tenants...)
	close(leader.release)
	<-leaderRes
	batch := g.gate.nextHeld(t, "the batch")
	g.gate.holding.Store(false)
	srv.Kill()
	close(batch.release)
	for range tenants {
		r := <-results
		if r.err == nil || !strings.Contains(r.err.Error(), fmt.Sprintf("store: reserve %q: ", r.tenant)) {
			t.Errorf("Reserve(%q) with Redis gone mid-batch = %+v, %v; want its own error", r.tenant, r.slot, r.err)
		}
	}
}

// limiterEvents is a ratelimit.Observer that keeps what it is told.
type limiterEvents struct {
	mu       sync.Mutex
	admitted int
	shared   []bool
}

func (e *limiterEvents) Admitted(time.Duration) { e.mu.Lock(); e.admitted++; e.mu.Unlock() }
func (e *limiterEvents) Rejected()              {}
func (e *limiterEvents) Paused()                {}
func (e *limiterEvents) Shared(ok bool)         { e.mu.Lock(); e.shared = append(e.shared, ok); e.mu.Unlock() }

func newBatchLimiter(t *testing.T, g *gatedSchedule) (*ratelimit.Limiter, *limiterEvents) {
	t.Helper()
	events := new(limiterEvents)
	l, err := ratelimit.New(ratelimit.Config{Limit: batchRule.Limit, Period: batchRule.Period, MaxWait: time.Second,
		Shared: g.RedisSchedule, Observer: events})
	if err != nil {
		t.Fatal(err)
	}
	return l, events
}

// holdLimiterLeader is holdLeader for a call of l's.
func holdLimiterLeader(t *testing.T, g *gatedSchedule, l *ratelimit.Limiter, tenant string) (heldTrip, <-chan error) {
	t.Helper()
	g.gate.holding.Store(true)
	res := make(chan error, 1)
	go func() {
		_, err := l.Wait(context.Background(), tenant, time.Now().Add(time.Second))
		res <- err
	}()
	return g.gate.nextHeld(t, "the first call"), res
}

// A caller of the limiter that hangs up while its batch is in flight is
// told so once the batch answers, and its slot is given back before Wait
// returns, as when its call went alone; the other callers of the batch
// are let through, and the shared schedule is not taken for down.
func TestLimiterCallerGoneWhileItsBatchIsInFlight(t *testing.T) {
	g := openGated(t, "")
	l, events := newBatchLimiter(t, g)
	leader, leaderRes := holdLimiterLeader(t, g, l, "leader")
	gone, cancel := context.WithCancel(context.Background())
	goneRes := make(chan error, 1)
	go func() {
		_, err := l.Wait(gone, "gone", time.Now().Add(time.Second))
		goneRes <- err
	}()
	stayRes := make(chan error, 1)
	go func() {
		_, err := l.Wait(context.Background(), "stays", time.Now().Add(time.Second))
		stayRes <- err
	}()
	g.waitQueued(t, 2)
	close(leader.release)
	if err := <-leaderRes; err != nil {
		t.Fatalf("the first call = %v", err)
	}
	batch := g.gate.nextHeld(t, "the batch")
	g.gate.holding.Store(false)
	cancel()
	close(batch.release)
	if err := <-goneRes; !errors.Is(err, context.Canceled) {
		t.Errorf("Wait of a caller gone while its batch was in flight = %v; want context.Canceled", err)
	}
	if n := g.reservations(t, "gone"); n != 0 {
		t.Errorf("the gone caller's tenant holds %d reservations after Wait returned; want 0 (its slot given back)", n)
	}
	if err := <-stayRes; err != nil {
		t.Errorf("Wait of another caller in the same batch = %v; want it let through", err)
	}
	// With one call a window, the gone caller's slot is free again.
	if d, err := l.Wait(context.Background(), "gone", time.Now().Add(time.Second)); err != nil || d > 100*time.Millisecond {
		t.Errorf("the next call of the gone caller's tenant = %v, %v; want it let through at once", d, err)
	}
	events.mu.Lock()
	defer events.mu.Unlock()
	if slices.Contains(events.shared, false) {
		t.Errorf("Shared reported %v: a caller going away marked the shared schedule down", events.shared)
	}
	if events.admitted != 3 {
		t.Errorf("admitted %d calls; want 3", events.admitted)
	}
}

// A Redis that goes down while a batch of the limiter's calls is in flight
// fails each call's reservation, and each call is paced by the local
// schedule instead, as a call alone would be.
func TestLimiterRedisDownMidBatch(t *testing.T) {
	srv := testutil.StartRedis(t)
	g := openGated(t, srv.URL())
	l, events := newBatchLimiter(t, g)
	leader, leaderRes := holdLimiterLeader(t, g, l, "leader")
	tenants := []string{"a", "b", "c"}
	results := make(chan error, len(tenants))
	for _, tenant := range tenants {
		go func() {
			_, err := l.Wait(context.Background(), tenant, time.Now().Add(time.Second))
			results <- err
		}()
	}
	g.waitQueued(t, len(tenants))
	close(leader.release)
	if err := <-leaderRes; err != nil {
		t.Fatalf("the first call = %v", err)
	}
	batch := g.gate.nextHeld(t, "the batch")
	g.gate.holding.Store(false)
	srv.Kill()
	close(batch.release)
	for range tenants {
		if err := <-results; err != nil {
			t.Errorf("Wait with Redis gone mid-batch = %v; want it paced locally", err)
		}
	}
	// The local schedule counts the calls: a second call of a tenant, one
	// a window, is refused.
	var re *ratelimit.RefusedError
	if _, err := l.Wait(context.Background(), "a", time.Now().Add(time.Second)); !errors.As(err, &re) {
		t.Errorf("a second call of a tenant in the window, Redis down = %v; want a *RefusedError", err)
	}
	events.mu.Lock()
	defer events.mu.Unlock()
	if !slices.Equal(events.shared, []bool{true, false}) {
		t.Errorf("Shared reported %v; want [true false]", events.shared)
	}
}

// Many callers of the limiter at once, of many tenants, each under its
// limit: every call is let through, and their reservations share round
// trips.
func TestLimiterCallsShareRoundTrips(t *testing.T) {
	g := openGated(t, "")
	l, err := ratelimit.New(ratelimit.Config{Limit: 1000, Period: time.Minute, Shared: g.RedisSchedule})
	if err != nil {
		t.Fatal(err)
	}
	const callers, calls = 64, 20
	before := g.gate.trips.Load()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range callers {
		wg.Go(func() {
			for j := range calls {
				tenant := fmt.Sprintf("t%d", (i*calls+j)%500)
				if _, err := l.Wait(context.Background(), tenant, time.Now().Add(time.Minute)); err != nil {
					failed.Add(1)
				}
				l.Observe(tenant, http.StatusOK, nil, time.Millisecond)
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d calls under the limit failed", n)
	}
	trips := g.gate.trips.Load() - before
	t.Logf("%d calls took %d round trips", callers*calls, trips)
	if trips >= callers*calls {
		t.Errorf("%d calls of %d callers at once took %d round trips; want fewer (batched)", callers*calls, callers, trips)
	}
}
