package auth

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"thanksio-proxy/store"
)

// modelWant is what the model expects a tenant's snapshot to hold.
type modelWant struct {
	bearer, refresh string
	state           store.State
	expiry, lastRef time.Time
	version         int64
	shared          bool
}

// modelTenant is the model of one tenant's entry: its floor (the newest
// version announced), whether it holds a snapshot, and which.
type modelTenant struct {
	floor int64
	held  bool
	want  modelWant
	e     entry
}

// handedOut is a string the cache handed out, and a copy of it then.
type handedOut struct{ got, want string }

// modelTime returns a time of the kinds a record can hold.
func modelTime(rng *rand.Rand) time.Time {
	switch rng.IntN(7) {
	case 0:
		return time.Time{}
	case 1:
		return time.Unix(rng.Int64N(1<<40), rng.Int64N(1e9)) // far future
	case 2:
		return time.Unix(-rng.Int64N(1<<38), rng.Int64N(1e9)) // before 1970 and year 1
	case 3:
		return time.Now() // monotonic, local
	case 4:
		return time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.FixedZone("x", 3600))
	case 5:
		return time.Unix(0, rng.Int64N(1e9)) // sub-second
	default:
		return time.Unix(1_900_000_000, 1)
	}
}

// modelLen returns a text length, from empty to longer than a chunk.
func modelLen(rng *rand.Rand) int {
	switch rng.IntN(10) {
	case 0:
		return 0
	case 1:
		return arenaChunkSize/4 - rng.IntN(40)
	case 2:
		return arenaChunkSize/4 + rng.IntN(40)
	case 3:
		return arenaChunkSize + rng.IntN(1000)
	case 4:
		return rng.IntN(30000)
	default:
		return rng.IntN(3000)
	}
}

// modelText returns n bytes that start with tag, then a run of letters
// that changes every 64 bytes.
func modelText(rng *rand.Rand, tag string, n int) string {
	if n == 0 {
		return ""
	}
	b := make([]byte, n)
	for i := 0; i < n; i += 64 {
		copy(b[i:], strings.Repeat(string(rune('a'+rng.IntN(26))), 64))
	}
	copy(b, tag)
	return string(b)
}

// modelSnapshot returns a snapshot of version v of tenant's token, one in
// three as an in-memory store shares it.
func modelSnapshot(rng *rand.Rand, tenant string, v int64) *snapshot {
	access := modelText(rng, fmt.Sprintf("%s/v%d/", tenant, v), modelLen(rng))
	refresh := modelText(rng, fmt.Sprintf("r-%s/v%d/", tenant, v), modelLen(rng)/2)
	states := []store.State{"", store.StateActive, store.StateReauthorizationRequired, store.State(fmt.Sprintf("odd-%s-%d", tenant, v))}
	rec := store.TokenRecord{AccessToken: access, RefreshToken: refresh, Expiry: modelTime(rng), LastRefresh: modelTime(rng),
		State: states[rng.IntN(len(states))], Version: v}
	if rng.IntN(3) == 0 { // an in-memory store's record
		rec = rec.WithAuthorization()
	}
	s := snapshotOf(rec)
	s.redeemed = rng.IntN(2) == 0
	return s
}

func wantOf(s *snapshot) modelWant {
	return modelWant{s.bearer, s.refresh, s.state, s.expiry, s.lastRefresh, s.version, s.shared}
}

// checkArena fails t unless the arena's counts, chunks and owners match
// what the slots hold, and free or unshared slots keep no shared strings.
func checkArena(t *testing.T, c *cache, step int, op string) {
	t.Helper()
	a := &c.text
	live := make(map[int32]int)
	for n, p := range c.pages {
		for j := range p {
			s := &p[j]
			i := int32(n*slotsPerPage + j)
			sh := c.sharedAt(i)
			if s.gen == 0 {
				if s.textLen() != 0 || (sh != nil && *sh != (sharedText{})) {
					t.Fatalf("step %d (%s): free slot %d keeps text %v len %d / shared %v", step, op, i, s.text, s.textLen(), sh)
				}
				continue
			}
			if !s.shared && sh != nil && *sh != (sharedText{}) {
				t.Fatalf("step %d (%s): unshared slot %d keeps shared strings", step, op, i)
			}
			if s.shared && (sh == nil || s.stamp == 0) {
				t.Fatalf("step %d (%s): shared slot %d has no shared page / stamp", step, op, i)
			}
			if n := s.textLen(); n > 0 {
				ch := a.chunks[s.text.chunk]
				if ch == nil {
					t.Fatalf("step %d (%s): slot %d points at chunk %d, let go", step, op, i, s.text.chunk)
				}
				if int(s.text.off)+int(n) > len(ch.buf) {
					t.Fatalf("step %d (%s): slot %d text past its chunk", step, op, i)
				}
				owned := false
				for _, o := range ch.owners {
					owned = owned || o == i
				}
				if !owned {
					t.Fatalf("step %d (%s): slot %d not among chunk %d's owners", step, op, i, s.text.chunk)
				}
				live[s.text.chunk] += int(n)
			}
		}
	}
	for n, ch := range a.chunks {
		if ch == nil {
			continue
		}
		if ch.live != live[int32(n)] {
			t.Fatalf("step %d (%s): chunk %d counts %d live bytes; slots hold %d", step, op, n, ch.live, live[int32(n)])
		}
		if ch.live == 0 && int32(n) != a.cur {
			t.Fatalf("step %d (%s): chunk %d empty, kept", step, op, n)
		}
	}
}

// runCacheModel runs steps random operations on a cache of maxT tenants,
// checking it against the model after each.
func runCacheModel(t *testing.T, seed uint64, colliding bool, maxT, steps int) {
	rng := rand.New(rand.NewPCG(seed, seed*7+1))
	evictions := 0
	var c *cache
	if colliding {
		c, _ = collidingCache(maxT)
		c.evicted = func() { evictions++ }
	} else {
		c = newCache(maxT, time.Now, func() { evictions++ })
	}
	names := []string{""}
	for i := range maxT + 4 {
		names = append(names, fmt.Sprintf("t%d", i)+strings.Repeat("n", rng.IntN(3)*rng.IntN(40)))
	}
	if rng.IntN(2) == 0 {
		names = append(names, strings.Repeat("L", arenaChunkSize/4+5)) // a tenant id longer than a quarter chunk
	}
	model := map[string]*modelTenant{}
	var handed []handedOut
	var version int64
	var stale []entry
	hand := func(s string) { handed = append(handed, handedOut{s, strings.Clone(s)}) }
	for step := range steps {
		tenant := names[rng.IntN(len(names))]
		var op string
		before := evictions
		switch k := rng.IntN(100); {
		case k < 15:
			op = "entryFor"
			e := c.entryFor(tenant)
			if m := model[tenant]; m != nil {
				if e != m.e {
					t.Fatalf("step %d: entryFor(%q) changed entry", step, tenant)
				}
			} else {
				model[tenant] = &modelTenant{e: e}
			}
		case k < 45, k < 55:
			op = "fill"
			if k >= 45 {
				op = "put"
			}
			e := c.entryFor(tenant)
			m := model[tenant]
			if m == nil {
				m = &modelTenant{e: e}
				model[tenant] = m
			}
			var v int64
			if rng.IntN(6) == 0 && m.held {
				v = m.want.version - int64(rng.IntN(2))
			} else {
				version++
				v = version
			}
			s := modelSnapshot(rng, tenant, v)
			var ok bool
			if op == "put" {
				ok = c.put(e, s)
			} else {
				ok = c.fill(e, s)
			}
			// The tenant may have been evicted by entryFor: re-check.
			if c.get(tenant) != e {
				t.Fatalf("step %d: fill's entry gone", step)
			}
			wantOK := !(v < m.floor || (m.held && m.want.version > v))
			if ok != wantOK {
				t.Fatalf("step %d: %s(%q v%d) = %v; want %v", step, op, tenant, v, ok, wantOK)
			}
			if ok {
				if op == "put" {
					m.floor = max(m.floor, v)
				}
				m.held, m.want = true, wantOf(s)
			}
		case k < 62:
			op = "dropToken"
			v := c.lookup(tenant)
			access := "nope"
			if v.held && rng.IntN(4) != 0 {
				access = v.snap.access
			}
			c.dropToken(tenant, access)
			if m := model[tenant]; m != nil && m.held && m.want.bearer[len(bearerPrefix):] == access {
				m.held = false
			}
		case k < 72:
			op = "written"
			v := version - 3 + int64(rng.IntN(6))
			if rng.IntN(2) == 0 {
				version++
				v = version
			}
			c.written(tenant, v)
			if m := model[tenant]; m != nil {
				m.floor = max(m.floor, v)
				if m.held && m.want.version < v {
					m.held = false
				}
			}
		case k < 80:
			op = "deleted"
			c.deleted(tenant)
			if m := model[tenant]; m != nil {
				stale = append(stale, m.e)
			}
			delete(model, tenant)
		case k < 86:
			op = "end"
			if m := model[tenant]; m != nil {
				c.end(m.e)
				stale = append(stale, m.e)
				delete(model, tenant)
			} else {
				if len(stale) > 0 {
					c.end(stale[rng.IntN(len(stale))]) // an ended entry ends nobody
				}
			}
		case k < 88:
			op = "dropUnheld"
			c.dropUnheld()
			for n, m := range model {
				if !m.held {
					delete(model, n)
				}
			}
		default:
			op = "lookup"
		}
		// Evicted and ended tenants leave the model.
		gone := 0
		for n, m := range model {
			if c.get(n) != m.e {
				if c.get(n).found() {
					t.Fatalf("step %d (%s): %q has a new entry unseen", step, op, n)
				}
				delete(model, n)
				stale = append(stale, m.e)
				gone++
			}
		}
		if gone != evictions-before && !(op == "end" && gone <= 1 && evictions == before) {
			t.Fatalf("step %d (%s): %d tenants gone, %d evicted", step, op, gone, evictions-before)
		}
		if c.len() != len(model) {
			t.Fatalf("step %d (%s): len %d, model %d", step, op, c.len(), len(model))
		}
		// Every tenant: its own token, exactly.
		for n, m := range model {
			v := c.lookup(n)
			if v.entry != m.e || v.held != m.held {
				t.Fatalf("step %d (%s): lookup(%q) entry %v held %v; want %v %v", step, op, n, v.entry, v.held, m.e, m.held)
			}
			if !m.held {
				continue
			}
			w := m.want
			s := v.snap
			if s.bearer != w.bearer || s.access != w.bearer[len(bearerPrefix):] || s.refresh != w.refresh || s.state != w.state ||
				!s.expiry.Equal(w.expiry) || !s.lastRefresh.Equal(w.lastRef) || s.version != w.version {
				t.Fatalf("step %d (%s): lookup(%q) = %.40q/%.20q/%q v%d exp %v; want %.40q/%.20q/%q v%d exp %v", step, op, n,
					s.bearer, s.refresh, s.state, s.version, s.expiry, w.bearer, w.refresh, w.state, w.version, w.expiry)
			}
			if s.expiry.IsZero() != w.expiry.IsZero() {
				t.Fatalf("step %d: zero expiry changed", step)
			}
			if rng.IntN(4) == 0 {
				hand(s.bearer)
				hand(s.refresh)
				hand(string(s.state))
			}
		}
		if rng.IntN(20) == 0 {
			for _, sn := range c.snapshots() {
				hand(sn.tenant)
				hand(sn.snap.bearer)
			}
		}
		checkArena(t, c, step, op)
		if step%50 == 0 {
			for _, h := range handed {
				if h.got != h.want {
					t.Fatalf("step %d: a string handed out changed from %.40q to %.40q", step, h.want, h.got)
				}
			}
			if len(handed) > 2000 {
				handed = handed[1000:]
			}
		}
	}
}

// The cache against a model of it: random sequences of what the token
// lifecycle does to it (fills, imports, refused tokens, announced writes,
// deletions, evictions, a data loss's dropUnheld) with colliding and
// ordinary hashes, tenant ids and tokens from empty to longer than a chunk
// of the arena, shared and arena strings, and times from year 1 to far
// future. After each step every tenant holds exactly its own token, the
// arena's bookkeeping matches what the slots hold, and strings handed out
// earlier are unchanged.
func TestCacheAgainstModel(t *testing.T) {
	for seed := uint64(1); seed <= 12; seed++ {
		for _, colliding := range []bool{false, true} {
			for _, max := range []int{3, 40} {
				t.Run(fmt.Sprintf("seed=%d/colliding=%v/max=%d", seed, colliding, max), func(t *testing.T) {
					runCacheModel(t, seed, colliding, max, 600)
				})
			}
		}
	}
}
