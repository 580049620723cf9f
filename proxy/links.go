package proxy

import (
	"bytes"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"
)

// links rewrites the upstream's absolute URLs in JSON answers to the
// proxy's public URL: thanks.io's pagination links (links.next, meta.path)
// name api.thanks.io, and a caller that follows them must stay on the
// proxy. Both spellings are rewritten: plain, and with every '/' escaped as
// '\/' (as PHP's json_encode writes them).
type links struct {
	patterns [2]linkPattern
	prefix   []byte // the patterns' common start: the scheme, at least
}

type linkPattern struct{ from, to []byte }

// newLinks returns the rewriting of upstream's URL prefix to public's, or
// nil when public is empty. Neither has a trailing slash.
func newLinks(upstream, public string) *links {
	if public == "" {
		return nil
	}
	escape := func(s string) []byte { return []byte(strings.ReplaceAll(s, "/", `\/`)) }
	l := &links{patterns: [2]linkPattern{
		{[]byte(upstream), []byte(public)},
		{escape(upstream), escape(public)},
	}}
	a, b := l.patterns[0].from, l.patterns[1].from
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	l.prefix = a[:n]
	return l
}

// rewriteURL returns u with the upstream's base URL at its start replaced
// by the public one (u as it is otherwise).
func (l *links) rewriteURL(u string) string {
	p := l.patterns[0]
	if rest, ok := strings.CutPrefix(u, string(p.from)); ok && (rest == "" || endsURLPrefix(rest[0])) {
		return string(p.to) + rest
	}
	return u
}

// rewrites reports whether res's body is JSON that the proxy can read: a
// JSON media type, without a content encoding (the proxy asks the upstream
// for none it cannot read itself).
func (l *links) rewrites(res *http.Response) bool {
	if l == nil || res.Body == nil || res.Body == http.NoBody || res.Header.Get("Content-Encoding") != "" {
		return false
	}
	mt, _, err := mime.ParseMediaType(res.Header.Get("Content-Type"))
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// wrap makes res's body rewritten as it streams, and drops its length,
// which the rewriting changes.
func (l *links) wrap(res *http.Response) {
	res.Body = &linkRewriter{links: l, src: res.Body}
	res.ContentLength = -1
	res.Header.Del("Content-Length")
}

// linkRewriter rewrites a body as it is read, holding back no more than
// the longest pattern's length, so that a pattern split between two reads
// is still found.
type linkRewriter struct {
	*links
	src  io.ReadCloser
	in   []byte // read from src, not yet rewritten
	out  []byte // rewritten, not yet returned
	read *[]byte
	err  error // src's error, once it has one
}

var linkBuffers = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

func (r *linkRewriter) Read(p []byte) (int, error) {
	for len(r.out) == 0 {
		if r.err != nil {
			if r.read != nil {
				linkBuffers.Put(r.read)
				r.read = nil
			}
			return 0, r.err
		}
		if r.read == nil {
			r.read = linkBuffers.Get().(*[]byte)
		}
		n, err := r.src.Read(*r.read)
		r.in = append(r.in, (*r.read)[:n]...)
		r.err = err
		r.rewrite(err != nil)
	}
	n := copy(p, r.out)
	r.out = r.out[n:]
	return n, nil
}

func (r *linkRewriter) Close() error { return r.src.Close() }

// rewrite moves what can be decided of r.in to r.out, rewritten; final
// means nothing follows r.in. It looks for the patterns' common prefix
// ("https:") once per place, so its cost is linear in the bytes read.
func (r *linkRewriter) rewrite(final bool) {
	b := r.in
	out := r.out[:0] // empty: rewrite runs once all of it was returned
	for {
		i := bytes.Index(b, r.prefix)
		if i < 0 {
			break
		}
		p, partial := r.at(b[i:])
		switch {
		case p == nil && partial && !final:
			// The rest may still become a pattern: wait for more.
			out = append(out, b[:i]...)
			r.in, r.out = append(r.in[:0], b[i:]...), out
			return
		case p == nil:
			out = append(out, b[:i+1]...)
			b = b[i+1:]
			continue
		}
		end := i + len(p.from)
		switch {
		case end == len(b) && !final:
			// Whether the prefix ends there is told by the next byte.
			out = append(out, b[:i]...)
			r.in, r.out = append(r.in[:0], b[i:]...), out
			return
		case end == len(b) || endsURLPrefix(b[end]):
			out = append(out, b[:i]...)
			out = append(out, p.to...)
			b = b[end:]
		default:
			out = append(out, b[:i+1]...)
			b = b[i+1:]
		}
	}
	keep := 0
	if !final {
		// The tail may be the start of the common prefix.
		keep = min(len(b), len(r.prefix)-1)
	}
	out = append(out, b[:len(b)-keep]...)
	r.in, r.out = append(r.in[:0], b[len(b)-keep:]...), out
}

// at returns the pattern that b starts with, or reports whether b, too
// short to tell, is the start of one.
func (l *links) at(b []byte) (p *linkPattern, partial bool) {
	for k := range l.patterns {
		from := l.patterns[k].from
		if bytes.HasPrefix(b, from) {
			return &l.patterns[k], false
		}
		if len(b) < len(from) && bytes.HasPrefix(from, b) {
			partial = true
		}
	}
	return nil, partial
}

// endsURLPrefix reports whether c, following the upstream's base URL, ends
// it: a path, a query, a fragment, or the end of the JSON string (a quote,
// or the backslash of an escaped slash). "https://api.thanks.io/api/v20"
// is not the base URL.
func endsURLPrefix(c byte) bool {
	switch c {
	case '/', '?', '#', '"', '\\':
		return true
	}
	return false
}
