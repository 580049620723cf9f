package auth

import "unsafe"

// arena holds the cache's text (each tenant's id, Authorization value and
// refresh token, end to end) in large chunks of bytes, so that the garbage
// collector marks a few hundred chunks instead of one object per tenant,
// and the slots that say where each text is hold no pointer at all: with
// 100,000 tenants a collection no longer walks the cache.
//
// A text is written once, when it is added, and its bytes are never written
// again: the strings handed out (unsafe.String over a chunk) stay valid and
// unchanged for as long as anyone holds them, and the collector keeps their
// chunk alive for them after the arena has let it go. A chunk whose texts
// are all gone is let go; one that is mostly garbage has its live texts
// copied into the current chunk by the cache (see cache.compactLocked), so
// that garbage stays under a quarter of the arena's bytes.
//
// An arena is not safe for concurrent use: the cache's lock guards it.
type arena struct {
	chunks []*arenaChunk // by chunk number; nil: a number free for reuse
	free   []int32       // numbers of chunks let go
	cur    int32         // the chunk texts are added to; -1: none yet

	// sparse are the chunks worth compacting, each once.
	sparse []int32
}

// arenaChunkSize is the size of a chunk. A text longer than a quarter of it
// gets a chunk of its own, of its size.
const arenaChunkSize = 256 << 10

type arenaChunk struct {
	buf    []byte // appended to within its capacity, never moved
	live   int    // bytes of texts still referenced
	sparse bool   // listed in arena.sparse
	// owners are the slots whose texts were added to this chunk, some
	// since moved or removed: the places compaction looks at.
	owners []int32
}

// arenaRef is where a text lives: its chunk and offset. The zero arenaRef
// with a zero length is the empty text.
type arenaRef struct {
	chunk, off int32
}

func newArena() arena { return arena{cur: -1} }

// add appends the texts end to end for slot owner and returns where they
// start.
func (a *arena) add(owner int32, texts ...string) arenaRef {
	n := 0
	for _, t := range texts {
		n += len(t)
	}
	if n == 0 {
		return arenaRef{}
	}
	var c int32
	switch {
	case n > arenaChunkSize/4:
		c = a.newChunk(n)
	case a.cur < 0 || len(a.chunks[a.cur].buf)+n > cap(a.chunks[a.cur].buf):
		full := a.cur
		a.cur = a.newChunk(arenaChunkSize)
		c = a.cur
		if full >= 0 {
			a.check(full) // its garbage was not counted while it was current
		}
	default:
		c = a.cur
	}
	ch := a.chunks[c]
	off := len(ch.buf)
	for _, t := range texts {
		ch.buf = append(ch.buf, t...)
	}
	ch.live += n
	ch.owners = append(ch.owners, owner)
	return arenaRef{chunk: c, off: int32(off)}
}

func (a *arena) newChunk(size int) int32 {
	ch := &arenaChunk{buf: make([]byte, 0, size)}
	if n := len(a.free); n > 0 {
		c := a.free[n-1]
		a.free = a.free[:n-1]
		a.chunks[c] = ch
		return c
	}
	a.chunks = append(a.chunks, ch)
	return int32(len(a.chunks) - 1)
}

// text returns the n bytes at r as a string that shares the chunk's bytes.
func (a *arena) text(r arenaRef, n int32) string {
	if n == 0 {
		return ""
	}
	ch := a.chunks[r.chunk]
	return unsafe.String(&ch.buf[r.off], n)
}

// release gives back the n bytes of a text at r.
func (a *arena) release(r arenaRef, n int32) {
	if n == 0 {
		return
	}
	a.chunks[r.chunk].live -= int(n)
	a.check(r.chunk)
}

// check lets chunk c go when it holds no live text, or lists it as sparse
// when more than a quarter of its bytes are garbage; the current chunk
// stays as it is.
func (a *arena) check(c int32) {
	ch := a.chunks[c]
	switch {
	case c == a.cur:
	case ch.live == 0:
		a.chunks[c] = nil
		a.free = append(a.free, c)
		// A number listed as sparse is checked again when it is taken
		// off the list.
	case !ch.sparse && ch.live < len(ch.buf)*3/4:
		ch.sparse = true
		a.sparse = append(a.sparse, c)
	}
}

// nextSparse takes a sparse chunk off the list and returns it, or -1 when
// none is left.
func (a *arena) nextSparse() (int32, *arenaChunk) {
	for len(a.sparse) > 0 {
		c := a.sparse[len(a.sparse)-1]
		a.sparse = a.sparse[:len(a.sparse)-1]
		if ch := a.chunks[c]; ch != nil && ch.sparse {
			ch.sparse = false
			return c, ch
		}
	}
	return -1, nil
}

// bytes returns the bytes of the chunks held that texts took, and those of
// texts still referenced.
func (a *arena) bytes() (used, live int) {
	for _, ch := range a.chunks {
		if ch != nil {
			used += len(ch.buf)
			live += ch.live
		}
	}
	return used, live
}
