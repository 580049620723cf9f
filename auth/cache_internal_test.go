package auth

import (
	"fmt"
	"runtime"
	"strings"
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
