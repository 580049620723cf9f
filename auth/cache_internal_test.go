package auth

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"thanksio-proxy/store"
)

// collidingCache is a cache whose tenants all hash alike, so that every
// lookup walks one chain.
func collidingCache(max int) (*cache, *int) {
	evictions := 0
	c := newCache(max, time.Now, func() { evictions++ })
	c.hash = func(string) uint64 { return 7 }
	return c, &evictions
}

func tokenFor(tenant string, version int64) *snapshot {
	return &snapshot{access: "token-of-" + tenant, bearer: bearerPrefix + "token-of-" + tenant, refresh: "refresh-of-" + tenant, version: version}
}

func cachedToken(c *cache, tenant string) string {
	v := c.lookup(tenant)
	if !v.held {
		return ""
	}
	return v.snap.access
}

func TestCacheKeepsCollidingTenantsApart(t *testing.T) {
	c, _ := collidingCache(100)
	tenants := []string{"a", "b", "c", "d"}
	for i, tenant := range tenants {
		if !c.fill(c.entryFor(tenant), tokenFor(tenant, int64(i+1))) {
			t.Fatalf("fill(%q) refused", tenant)
		}
	}
	c.deleted("a") // the chain's first
	c.deleted("c") // one in the middle
	for _, tenant := range tenants {
		want := "token-of-" + tenant
		if tenant == "a" || tenant == "c" {
			want = ""
		}
		if got := cachedToken(c, tenant); got != want {
			t.Errorf("token of %q = %q; want %q", tenant, got, want)
		}
	}
	c.fill(c.entryFor("c"), tokenFor("c", 9))
	if got := cachedToken(c, "c"); got != "token-of-c" {
		t.Errorf("token of %q after it came back = %q; want token-of-c", "c", got)
	}
	if got, want := c.len(), 3; got != want {
		t.Errorf("len() = %d; want %d", got, want)
	}
}

// A fill, a backoff or the end of a background refresh that started with an
// entry since deleted must not reach whoever has its slot now, the same
// tenant included.
func TestCacheEndedEntryReachesNothing(t *testing.T) {
	c, _ := collidingCache(100)
	old := c.entryFor("acme")
	if !c.startRefresh(old, time.Now()) {
		t.Fatal("startRefresh of a new entry refused")
	}
	c.deleted("acme")
	other := c.entryFor("other") // takes the freed slot
	again := c.entryFor("acme")
	if old.i != other.i && old.i != again.i {
		t.Fatalf("no slot was reused (old %d, other %d, again %d): the test proves nothing", old.i, other.i, again.i)
	}
	if c.fill(old, tokenFor("acme", 1)) {
		t.Error("fill with the deleted tenant's entry was taken")
	}
	if got := cachedToken(c, "other"); got != "" {
		t.Errorf("token of %q = %q after a fill of an ended entry; want none", "other", got)
	}
	c.failed(old, func(int) time.Duration { return time.Hour })
	c.endRefresh(old)
	for _, e := range []entry{other, again} {
		if at := c.retryAt(e); at != 0 {
			t.Errorf("retryAt = %d after a failure noted on an ended entry; want 0", at)
		}
	}
	if !c.startRefresh(again, time.Now()) {
		t.Error("startRefresh of the tenant's new entry refused: the deleted entry's refresh holds it")
	}
}

func TestCacheIsBoundedAndEvicts(t *testing.T) {
	c, evictions := collidingCache(3)
	for i := range 10 {
		tenant := fmt.Sprint("t", i)
		c.fill(c.entryFor(tenant), tokenFor(tenant, 1))
		if got := cachedToken(c, tenant); got != "token-of-"+tenant {
			t.Fatalf("token of %q just added = %q", tenant, got)
		}
	}
	if got := c.len(); got != 3 {
		t.Errorf("len() = %d; want 3", got)
	}
	if *evictions != 7 {
		t.Errorf("evictions = %d; want 7", *evictions)
	}
	if got := len(c.snapshots()); got != 3 {
		t.Errorf("snapshots() lists %d; want 3", got)
	}
}

// A token dropped from the cache no longer holds the tenant id's memory
// alive with it, and the slot keeps the tenant.
func TestCacheDropKeepsTheEntry(t *testing.T) {
	c, _ := collidingCache(10)
	e := c.entryFor("acme")
	c.fill(e, tokenFor("acme", 3))
	c.dropToken("acme", "token-of-acme")
	if got := cachedToken(c, "acme"); got != "" {
		t.Fatalf("token after dropToken = %q; want none", got)
	}
	if c.get("acme") != e {
		t.Error("dropToken ended the entry")
	}
	c.written("acme", 5)
	if c.fill(e, tokenFor("acme", 4)) {
		t.Error("a fill older than an announced write was taken")
	}
	if !c.fill(e, tokenFor("acme", 5)) {
		t.Error("a fill of the announced version was refused")
	}
}

// BenchmarkCacheGC is one full garbage collection with 100,000 tenants in
// the cache, each with an access and a refresh token of 1 KiB: the
// collector's work per cycle that the cache brings, which a process under
// load pays on every cycle. It also reports the heap in use per tenant
// beyond its two tokens.
func BenchmarkCacheGC(b *testing.B) {
	benchmarkGC(b, func(n int) (any, func()) {
		c := newCache(n, time.Now, func() {})
		for i := range n {
			rec := store.TokenRecord{AccessToken: gcToken("access", i), RefreshToken: gcToken("refresh", i),
				Expiry: time.Now().Add(time.Hour), State: store.StateActive, Version: 1}
			c.fill(c.entryFor(fmt.Sprintf("tenant-%d", i)), snapshotOf(rec))
		}
		return c, func() {}
	})
}

// BenchmarkMemoryStoreGC is BenchmarkCacheGC with the in-memory store
// behind the cache, filled as imports fill it. Each tenant keeps its id in
// the store and in the cache, its record in the store's pages and its
// cache slot; its tokens are one allocation, which the store and the cache
// share.
func BenchmarkMemoryStoreGC(b *testing.B) {
	benchmarkGC(b, func(n int) (any, func()) {
		tokens := New(Config{Store: store.NewMemory()})
		if err := tokens.Start(b.Context()); err != nil {
			b.Fatal(err)
		}
		for i := range n {
			g := Grant{AccessToken: gcToken("access", i), RefreshToken: gcToken("refresh", i), Expiry: time.Now().Add(time.Hour)}
			if _, err := tokens.Import(b.Context(), fmt.Sprintf("tenant-%d", i), g); err != nil {
				b.Fatal(err)
			}
		}
		return tokens, tokens.Close
	})
}

// benchmarkGC times full collections with what fill(n) returns alive: n
// tenants, each with two tokens of gcToken's 1 KiB, until the function it
// returns with it stops it. It reports the heap in use per tenant beyond
// the tokens.
func benchmarkGC(b *testing.B, fill func(n int) (held any, stop func())) {
	const n = 100_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	held, stop := fill(n)
	defer stop()
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ResetTimer()
	for range b.N {
		runtime.GC()
	}
	b.StopTimer()
	b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/n-2048, "heap-B/tenant-beyond-tokens")
	runtime.KeepAlive(held)
}

// gcToken returns tenant i's token of the kind given, 1 KiB long.
func gcToken(kind string, i int) string {
	return fmt.Sprintf("%s-%s-%0*d", strings.Repeat("x", 1000), kind, 1024-1000-2-len(kind), i)
}

// With the in-memory store, the process holds each token once: the cache
// shares the store's strings, after an import and after a read.
func TestMemoryStoreAndCacheHoldOneCopy(t *testing.T) {
	st := store.NewMemory()
	tokens := New(Config{Store: st})
	if err := tokens.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(tokens.Close)
	g := Grant{AccessToken: "access-" + strings.Repeat("a", 1000), RefreshToken: "refresh-" + strings.Repeat("r", 1000), Expiry: time.Now().Add(time.Hour)}
	sameCopy := func(when string) {
		t.Helper()
		v := tokens.cache.lookup("acme")
		rec, err := st.Get(t.Context(), "acme")
		if err != nil || !v.held {
			t.Fatalf("%s: Get: %v; cached: %v", when, err, v.held)
		}
		if unsafe.StringData(v.snap.bearer) != unsafe.StringData(rec.Authorization) ||
			unsafe.StringData(v.snap.refresh) != unsafe.StringData(rec.RefreshToken) {
			t.Errorf("%s: the cache holds a second copy of the tokens the store holds", when)
		}
	}
	if _, err := tokens.Import(t.Context(), "acme", g); err != nil {
		t.Fatalf("Import: %v", err)
	}
	sameCopy("after the import")
	tokens.cache.deleted("acme")
	if _, err := tokens.Authorization(t.Context(), "acme"); err != nil {
		t.Fatalf("Authorization: %v", err)
	}
	sameCopy("after a read from the store")
}

// The pages of slots hold no pointer, so that the collector never scans
// them: with 100,000 tenants cached a collection would otherwise walk them
// all (BenchmarkCacheGC).
func TestCacheSlotsHoldNoPointer(t *testing.T) {
	var walk func(reflect.Type, string)
	walk = func(typ reflect.Type, path string) {
		switch typ.Kind() {
		case reflect.Struct:
			for i := range typ.NumField() {
				f := typ.Field(i)
				walk(f.Type, path+"."+f.Name)
			}
		case reflect.Array:
			walk(typ.Elem(), path+"[]")
		case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float64:
		default:
			t.Errorf("slot%s is a %s, which holds a pointer", path, typ)
		}
	}
	walk(reflect.TypeFor[slot](), "")
}

// Tokens refreshed, dropped, deleted and evicted in any order: every
// tenant keeps its own token, and the arena's garbage stays bounded.
func TestCacheArenaKeepsTokensAndBoundsGarbage(t *testing.T) {
	const tenants = 2000
	c := newCache(tenants, time.Now, func() {})
	rng := rand.New(rand.NewPCG(1, 2))
	version := make(map[string]int64)
	token := func(tenant string, v int64) *snapshot {
		// Of varied lengths, up to 1.5 KiB, some longer than a quarter
		// of a chunk.
		n := 200 + rng.IntN(1300)
		if rng.IntN(100) == 0 {
			n = arenaChunkSize/4 + 1
		}
		access := fmt.Sprintf("%s-v%d-", tenant, v) + strings.Repeat("a", n)
		return &snapshot{access: access, bearer: bearerPrefix + access, refresh: fmt.Sprintf("refresh-%s-v%d", tenant, v),
			version: v, state: store.StateActive, expiry: time.Unix(1_900_000_000, 5).UTC()}
	}
	check := func(step int) {
		t.Helper()
		for tenant, v := range version {
			got := c.lookup(tenant)
			if v == 0 {
				if got.held {
					t.Fatalf("step %d: %s holds a token after it was dropped", step, tenant)
				}
				continue
			}
			prefix := fmt.Sprintf("%s-v%d-", tenant, v)
			if !got.held || !strings.HasPrefix(got.snap.access, prefix) || got.snap.bearer != bearerPrefix+got.snap.access ||
				got.snap.refresh != fmt.Sprintf("refresh-%s-v%d", tenant, v) || got.snap.version != v ||
				got.snap.state != store.StateActive || !got.snap.expiry.Equal(time.Unix(1_900_000_000, 5)) {
				t.Fatalf("step %d: %s holds %.40q (v%d, held %v); want its own token of v%d", step, tenant, got.snap.access, got.snap.version, got.held, v)
			}
		}
		if used, live := c.text.bytes(); used-live > live/3+2*arenaChunkSize {
			t.Fatalf("step %d: %d bytes of garbage in the arena for %d live; want at most a third of live and two chunks", step, used-live, live)
		}
	}
	for step := range 40_000 {
		tenant := fmt.Sprint("tenant-", rng.IntN(tenants))
		switch op := rng.IntN(10); {
		case op < 6: // a refresh
			version[tenant]++
			if v := version[tenant]; !c.fill(c.entryFor(tenant), token(tenant, v)) {
				t.Fatalf("fill of %s v%d refused", tenant, v)
			}
		case op < 8: // a token refused upstream
			if v := c.lookup(tenant); v.held {
				c.dropToken(tenant, v.snap.access)
				version[tenant] = 0
			}
		default: // a deletion
			c.deleted(tenant)
			delete(version, tenant)
		}
		if step%1000 == 0 {
			check(step)
		}
	}
	check(40_000)
	// Everything gone: so is every chunk.
	for tenant := range version {
		c.deleted(tenant)
	}
	if used, live := c.text.bytes(); live != 0 || used > arenaChunkSize {
		t.Errorf("with the cache empty, the arena holds %d bytes live and %d used; want 0 and at most the current chunk", live, used)
	}
}

// A token handed out keeps its bytes after its text was moved, replaced or
// removed: requests in flight still send it.
func TestCacheTokenHandedOutStaysIntact(t *testing.T) {
	c := newCache(1000, time.Now, func() {})
	filler := strings.Repeat("x", 1000)
	for i := range 1000 {
		tenant := fmt.Sprint("t", i)
		c.fill(c.entryFor(tenant), &snapshot{access: "old-" + tenant + filler, bearer: bearerPrefix + "old-" + tenant + filler, version: 1})
	}
	held := make(map[string]string)
	for i := range 1000 {
		tenant := fmt.Sprint("t", i)
		held[tenant] = c.lookup(tenant).snap.bearer
	}
	// Three in four replaced: every chunk but the current one turns sparse
	// and is compacted; the rest are deleted.
	for i := range 1000 {
		tenant := fmt.Sprint("t", i)
		if i%4 != 0 {
			c.fill(c.entryFor(tenant), &snapshot{access: "new-" + tenant, bearer: bearerPrefix + "new-" + tenant, version: 2})
		}
	}
	for i := range 1000 {
		if i%4 == 0 {
			c.deleted(fmt.Sprint("t", i))
		}
	}
	for tenant, bearer := range held {
		if want := bearerPrefix + "old-" + tenant + filler; bearer != want {
			t.Fatalf("the Authorization of %s handed out before changed to %.30q", tenant, bearer)
		}
	}
}

// Lookups while writes move texts around the arena: each reader gets whole
// tokens of the tenant it asked for (run with -race).
func TestCacheArenaUnderConcurrentLookups(t *testing.T) {
	const tenants = 300
	c := newCache(tenants, time.Now, func() {})
	filler := strings.Repeat("y", 900)
	fill := func(tenant string, v int64) {
		access := fmt.Sprintf("%s-v%d-%s", tenant, v, filler)
		c.fill(c.entryFor(tenant), &snapshot{access: access, bearer: bearerPrefix + access, version: v})
	}
	for i := range tenants {
		fill(fmt.Sprint("t", i), 1)
	}
	done := make(chan struct{})
	var readers sync.WaitGroup
	for r := range 4 {
		readers.Go(func() {
			for i := r; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				tenant := fmt.Sprint("t", i%tenants)
				v := c.lookup(tenant)
				if !v.held {
					continue
				}
				if want := fmt.Sprintf("%s%s-v%d-%s", bearerPrefix, tenant, v.snap.version, filler); v.snap.bearer != want {
					t.Errorf("lookup(%s) = %.30q; want its own token of v%d", tenant, v.snap.bearer, v.snap.version)
					return
				}
			}
		})
	}
	for v := int64(2); v < 40; v++ {
		for i := range tenants {
			if i%3 != int(v%3) {
				fill(fmt.Sprint("t", i), v)
			}
		}
	}
	close(done)
	readers.Wait()
}
