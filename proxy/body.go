package proxy

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// GuardConnection prepares the answer to r for any handler of a listener
// that callers, or a front end shared by callers, reach. When r is chunked,
// or HTTP/1.0, the connection closes after the answer; r's body must arrive
// within bodyTimeout (zero: no bound). It reports whether the connection
// closes.
//
// net/http drops a Content-Length sent beside Transfer-Encoding before a
// handler runs, so such a request looks like any chunked one, while a front
// end may have framed it by the Content-Length: closing the connection after
// every chunked request (RFC 9112 section 6.1) keeps the bytes that the front
// end took for body from being read here as another request.
//
// The other way round, net/http drops the Transfer-Encoding of an HTTP/1.0
// request (HTTP/1.0 has no chunked coding) and frames its body by the
// Content-Length, or takes it for empty, while a front end may have read it
// as chunked: RFC 9112 section 6.1 closes the connection after such a
// request too. A handler cannot tell it from another HTTP/1.0 request, so
// every HTTP/1.0 request closes its connection (HTTP/1.0 keep-alive is
// rare, and reconnecting costs such a caller little).
//
// The bound is a read deadline on the connection. A handler that reads the
// whole body and then waits on something else must lift it
// (SetReadDeadline with the zero time): net/http keeps reading the
// connection once a body has ended, and a deadline that passes then cancels
// the request's context.
func GuardConnection(w http.ResponseWriter, r *http.Request, bodyTimeout time.Duration) (closes bool) {
	closes, _ = guardConnection(w, r, time.Now(), bodyTimeout)
	return closes
}

// guardConnection is GuardConnection, with the time the request started;
// it also returns the body's deadline (zero without a body).
func guardConnection(w http.ResponseWriter, r *http.Request, now time.Time, bodyTimeout time.Duration) (closes bool, deadline time.Time) {
	if len(r.TransferEncoding) > 0 || !r.ProtoAtLeast(1, 1) {
		w.Header().Set("Connection", "close")
		closes = true
	}
	if r.ContentLength != 0 && bodyTimeout > 0 {
		deadline = now.Add(bodyTimeout)
		_ = http.NewResponseController(w).SetReadDeadline(deadline)
	}
	return closes, deadline
}

// GuardBodies returns h with GuardConnection applied to every request, for
// the handlers of a listener that read a body whole before they wait on
// anything else (the operations listener: the admin API reads a JSON body,
// then stores it). The body's deadline is lifted once h has read the body to
// its end. A body that h does not read is still bounded: net/http reads (to
// discard) what is left of it after h returns, within the deadline, and
// closes the connection when that fails.
func GuardBodies(h http.Handler, bodyTimeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, deadline := guardConnection(w, r, time.Now(), bodyTimeout)
		if deadline.IsZero() || r.Body == nil || r.Body == http.NoBody {
			h.ServeHTTP(w, r)
			return
		}
		b := &requestBody{w: w, deadline: deadline}
		defer b.finish()
		r.Body = &endNotingBody{ReadCloser: r.Body, b: b}
		h.ServeHTTP(w, r)
	})
}

// endNotingBody notes the end of the body it reads, which lifts the body's
// deadline while the handler runs.
type endNotingBody struct {
	io.ReadCloser
	b *requestBody
}

func (e *endNotingBody) Read(p []byte) (int, error) {
	n, err := e.ReadCloser.Read(p)
	if err != nil {
		_ = e.b.end(err)
	}
	return n, err
}

// replayMemory bounds the bytes of request bodies that a Handler holds for
// replays, across all its requests. It is safe for concurrent use.
type replayMemory struct {
	limit int64
	used  atomic.Int64
}

// reserve takes n bytes of the bound and reports whether they were free.
func (m *replayMemory) reserve(n int64) bool {
	for {
		used := m.used.Load()
		if used+n > m.limit {
			return false
		}
		if m.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

func (m *replayMemory) release(n int64) { m.used.Add(-n) }

// A body is read into pooled chunks as its bytes arrive, never into a buffer
// sized from the Content-Length the caller announced. The first chunk is
// small, so that the usual JSON body holds little; the others are the 32 KiB
// copy buffers that responses use.
const smallChunkSize = 4 << 10

var smallChunks = sync.Pool{New: func() any { b := make([]byte, smallChunkSize); return &b }}

func putChunk(p *[]byte) {
	if len(*p) == smallChunkSize {
		smallChunks.Put(p)
	} else {
		copyBuffers.Put(p)
	}
}

// replayBody is the part of a request body read into memory: all of it when
// the request can be replayed, its start when the rest streams.
//
// The transport reads the chunks through bodyReaders, and may go on reading
// after the handler returned (when the upstream answered before it had the
// whole body). So the chunks go back to their pools only once no reader can
// touch them, and are otherwise left to the garbage collector; their memory
// is given back to the bound either way.
type replayBody struct {
	mem    *replayMemory
	chunks []*[]byte // all full but the last, which holds fill bytes
	fill   int
	n      int64 // bytes held
	// reserved is the chunks' capacity, taken from mem.
	reserved int64
	// readers counts the readers handed out that may still read a chunk.
	readers atomic.Int32
	freed   atomic.Bool
	array   [4]*[]byte // the first chunks, without an allocation
}

// room returns free space to read into: what is left of the last chunk, or
// a new chunk if mem allows one; nil if it does not.
func (b *replayBody) room() []byte {
	if k := len(b.chunks); k > 0 && b.fill < len(*b.chunks[k-1]) {
		return (*b.chunks[k-1])[b.fill:]
	}
	size, pool := int64(smallChunkSize), &smallChunks
	if len(b.chunks) > 0 {
		size, pool = copyBufferSize, &copyBuffers
	}
	if !b.mem.reserve(size) {
		return nil
	}
	b.reserved += size
	p := pool.Get().(*[]byte)
	if b.chunks == nil {
		b.chunks = b.array[:0]
	}
	b.chunks = append(b.chunks, p)
	b.fill = 0
	return *p
}

// release gives the chunks' memory back to the bound, once; reuse returns
// the chunks to their pools, which only a caller that knows no reader will
// touch them again may ask.
func (b *replayBody) release(reuse bool) {
	if b.reserved == 0 || !b.freed.CompareAndSwap(false, true) {
		return
	}
	b.mem.release(b.reserved)
	if reuse {
		for _, p := range b.chunks {
			putChunk(p)
		}
	}
}

// requestBody is what the proxy keeps of a request's body while the request
// is proxied. The handler and the transport's readers of the body share it.
type requestBody struct {
	w        http.ResponseWriter // the caller's, to lift the read deadline
	deadline time.Time           // when the body must have arrived
	held     replayBody
	readers  [2]bodyReader // the first attempt's and the replay's
	// probe is the byte read past held when the bound left no room for
	// it; probed is set when there is one.
	probe  [1]byte
	probed bool

	mu     sync.Mutex
	served bool   // the handler returned: w must not be used any more
	ended  bool   // the caller's body ended
	err    *Error // reading the caller's body failed
}

// end notes the end of the caller's body, by io.EOF or by a failure, and
// returns the answer to a failure (nil at io.EOF). At the end, it lifts the
// read deadline, which would otherwise cancel the request when it passes.
func (b *requestBody) end(err error) *Error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != io.EOF {
		b.err = BodyError(err)
		return b.err
	}
	b.ended = true
	if !b.served && !b.deadline.IsZero() {
		_ = http.NewResponseController(b.w).SetReadDeadline(time.Time{})
	}
	return nil
}

// failure returns the answer to a request whose body failed: a read error
// that a reader met, or a deadline that passed before the body ended (the
// transport may report the request's canceled context before the reader
// has seen why).
func (b *requestBody) failure() *Error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.err != nil:
		return b.err
	case !b.ended && !b.deadline.IsZero() && !time.Now().Before(b.deadline):
		return BodyError(os.ErrDeadlineExceeded)
	}
	return nil
}

// finish is called when the handler returns: the memory held goes back to
// the bound, and the chunks to their pools when no reader can touch them.
func (b *requestBody) finish() {
	b.mu.Lock()
	b.served = true
	reuse := b.held.readers.Load() == 0
	b.mu.Unlock()
	b.held.release(reuse)
}

// getBody is the replay's GetBody, for a transport that must send it again.
func (b *requestBody) getBody() (io.ReadCloser, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.served {
		return nil, errors.New("proxy: the request is over")
	}
	return new(bodyReader).init(b, nil), nil
}

// bodyReader reads a replayBody from its start, then rest: the part of the
// caller's body not read into memory (nil when all of it was), starting
// with the probed byte if there is one. It notes the end of the caller's
// body, and turns a failure to read it into the proxy's answer.
type bodyReader struct {
	b        *requestBody
	rest     io.Reader
	i, off   int   // the position in the chunks
	read     int64 // bytes of the chunks read
	inChunks bool  // counted in b.held.readers
	probed   bool  // the probed byte was read
}

// init makes r a reader of b from its start, and returns it.
func (r *bodyReader) init(b *requestBody, rest io.Reader) *bodyReader {
	*r = bodyReader{b: b, rest: rest, inChunks: true}
	b.held.readers.Add(1)
	return r
}

func (r *bodyReader) Read(p []byte) (int, error) {
	held := &r.b.held
	if r.read < held.n {
		chunk := *held.chunks[r.i]
		end := len(chunk)
		if left := held.n - r.read; int64(end-r.off) > left {
			end = r.off + int(left)
		}
		n := copy(p, chunk[r.off:end])
		r.off += n
		r.read += int64(n)
		if r.off == len(chunk) {
			r.i, r.off = r.i+1, 0
		}
		if r.read < held.n {
			return n, nil
		}
		r.passed()
		if r.rest == nil {
			// The last bytes come with io.EOF, so that a transport that
			// stops reading at the Content-Length still lets the chunks go.
			return n, io.EOF
		}
		return n, nil
	}
	r.passed()
	if r.rest == nil {
		return 0, io.EOF
	}
	if r.b.probed && !r.probed && len(p) > 0 {
		r.probed = true
		p[0] = r.b.probe[0]
		return 1, nil
	}
	n, err := r.rest.Read(p)
	if err != nil {
		if e := r.b.end(err); e != nil {
			return n, e
		}
	}
	return n, err
}

// Close does nothing: net/http closes the caller's body.
func (r *bodyReader) Close() error { return nil }

// passed notes that r will not read the chunks again.
func (r *bodyReader) passed() {
	if !r.inChunks {
		return
	}
	r.inChunks = false
	r.b.held.readers.Add(-1)
	if r.rest != nil {
		// A streamed body has no replay: its one reader is done with the
		// chunks, which need not wait for the request's end.
		r.b.held.release(true)
	}
}
