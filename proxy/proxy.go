// Package proxy is the data plane: it takes a caller's request with a tenant
// header, attaches that tenant's thanks.io access token, and forwards the
// request to the upstream API, answering its own failures as JSON errors.
package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"thanksio-proxy/auth"
	"thanksio-proxy/internal/httperr"
	"thanksio-proxy/ratelimit"
)

// Tokens is what the proxy needs of the token lifecycle. It must be safe for
// concurrent use by multiple goroutines.
type Tokens interface {
	// Authorization returns the value of the Authorization header to send
	// for tenant: its token with the scheme ("Bearer <token>"), formatted
	// by the holder of the token (once per token, not per request), as
	// x/oauth2's Token formats its own header.
	Authorization(ctx context.Context, tenant string) (string, error)
	// Refused returns a replacement for token (the bare token, without its
	// scheme), which the upstream answered 401 to; auth.ErrNoBetterToken
	// means the refusal stands.
	Refused(ctx context.Context, tenant, token string) (string, error)
}

// Observer is told about each request, for metrics. Methods must be cheap and
// safe for concurrent use. Nil observes nothing.
type Observer interface {
	// Served records a finished request: its method, the status the caller
	// got, and the time spent.
	Served(method string, status int, d time.Duration)
	// Upstream records one round trip to the upstream (there are two when a
	// request is replayed): the status of its answer, 0 when none came, or
	// StatusClientClosedRequest when the caller went away first (thanks.io
	// did not fail).
	Upstream(status int, d time.Duration)
	// Replayed counts a request replayed after the upstream refused a token.
	Replayed()
	// Failed counts an answer of the proxy's own, by its error code.
	Failed(code string)
	// InFlight adds delta (1 when a request arrives, -1 when it is done) to
	// the requests in flight.
	InFlight(delta int)
	// UpstreamLimited counts a 429 of the upstream: replayed after the
	// tenant's pause, or relayed to the caller.
	UpstreamLimited(relayed bool)
}

// Limiter paces each tenant's calls to the upstream (ratelimit.Limiter).
// It must be safe for concurrent use.
type Limiter interface {
	// Wait returns when tenant's next call may go, having waited for it;
	// a *ratelimit.RefusedError at once when that would be after
	// deadline; or ctx's error when ctx ends first.
	Wait(ctx context.Context, tenant string, deadline time.Time) (time.Duration, error)
	// Observe reads an upstream answer to a call of tenant's that took
	// took from its sending to the answer, and returns the pause it set
	// when the answer is a 429 (0 otherwise).
	Observe(tenant string, status int, h http.Header, took time.Duration) time.Duration
	// MaxWait is the longest a call may wait for its turn, counted from
	// its arrival.
	MaxWait() time.Duration
}

// The defaults of Config's fields, stated once: the command's configuration
// starts from them too.
const (
	DefaultTenantHeader    = "X-Tenant-ID"
	DefaultCallerKeyHeader = "X-Caller-Key"
	DefaultMaxReplayBody   = 1 << 20
)

// Config configures a Handler.
type Config struct {
	// Tokens gives each tenant's access token. Required.
	Tokens Tokens
	// Upstream is the API base URL; request paths are appended to its path.
	// Required.
	Upstream *url.URL
	// TenantHeader names the header that names the tenant; empty means
	// DefaultTenantHeader. It is never forwarded.
	TenantHeader string
	// DefaultTenant, when set, is the tenant of a request without the
	// tenant header (a sidecar for one account). Empty answers such a
	// request 400 missing_tenant.
	DefaultTenant string
	// Transport makes the upstream round trips; nil means
	// http.DefaultTransport.
	Transport http.RoundTripper
	// MaxReplayBody is the largest request body kept in memory so that the
	// request can be replayed after a 401; zero or less means
	// DefaultMaxReplayBody. Larger bodies stream through and are not
	// replayed.
	MaxReplayBody int64
	// MaxReplayMemory bounds the bytes of request bodies kept for replays
	// across all requests at once (default 64 MiB). A body that arrives
	// while the bound is taken streams through and is not replayed, rather
	// than waiting or failing.
	MaxReplayMemory int64
	// BodyTimeout bounds the time a request body takes to arrive, counted
	// from when the request's headers were read (default 30 s). A body cut
	// by it is answered 408 request_timeout, and its connection closed.
	BodyTimeout time.Duration
	// Observer is told about requests; nil observes nothing.
	Observer Observer
	// Logger receives the proxy's failures, and the access lines when
	// AccessLog is set and AccessLogWriter is nil; it never receives a
	// token. Nil discards.
	Logger *slog.Logger
	// AccessLog turns the per-request access line on.
	AccessLog bool
	// AccessLogWriter, when not nil, writes the access lines instead of
	// Logger: the same lines, at a fraction of slog's cost per line. It
	// does not filter by level: leave AccessLog off when the log's level
	// hides INFO.
	AccessLogWriter *AccessLogWriter
	// Callers, when not nil, turns caller authentication on: every request
	// must present a caller key in CallerKeyHeader, and may name only the
	// tenants that key allows. Nil lets anyone who reaches the proxy name
	// any tenant (a sidecar on loopback).
	Callers *Callers
	// CallerKeyHeader names the header that carries the caller key; empty
	// means DefaultCallerKeyHeader. It is never forwarded.
	CallerKeyHeader string
	// MaxCallerConcurrency bounds the requests that one caller key has in
	// flight when Callers is set; beyond it, the caller is answered 429
	// concurrency_limited. Zero means no bound.
	MaxCallerConcurrency int
	// Limiter, when not nil, paces each tenant's calls: a call waits its
	// turn, is answered 429 rate_limited when its turn would not come
	// within the Limiter's MaxWait, and a 429 of the upstream pauses the
	// tenant and is replayed after the pause when the call's body was
	// kept and the pause fits in its wait. Nil sends every call at once.
	Limiter Limiter
	// PublicURL, when set, is the base URL callers use to reach the
	// proxy: the upstream's absolute URLs in JSON answers (thanks.io's
	// pagination links) are rewritten to it, so that a caller following
	// them stays on the proxy. Empty rewrites nothing.
	PublicURL string
}

// Handler is the proxy's data plane, an http.Handler. It is safe for
// concurrent use.
type Handler struct {
	cfg          Config
	tenantHeader string
	callerHeader string
	basePath     string // upstream path without its trailing slash
	baseRawPath  string
	// rp is what every call's ReverseProxy starts from (the call binds
	// Rewrite and the transport to itself); its Transport serves Check.
	rp           *httputil.ReverseProxy
	log          *slog.Logger
	obs          Observer
	replayMemory replayMemory
	links        *links // nil without a PublicURL
}

// New returns a Handler for cfg.
func New(cfg Config) (*Handler, error) {
	if cfg.Tokens == nil || cfg.Upstream == nil {
		return nil, errors.New("proxy: Tokens and Upstream are required")
	}
	if cfg.Upstream.Scheme != "http" && cfg.Upstream.Scheme != "https" || cfg.Upstream.Host == "" {
		return nil, errors.New("proxy: the upstream must be an absolute http or https URL")
	}
	if cfg.DefaultTenant != "" && !ValidTenant(cfg.DefaultTenant) {
		return nil, errors.New("proxy: the default tenant is not a valid tenant id")
	}
	if cfg.TenantHeader == "" {
		cfg.TenantHeader = DefaultTenantHeader
	}
	if cfg.CallerKeyHeader == "" {
		cfg.CallerKeyHeader = DefaultCallerKeyHeader
	}
	if cfg.MaxReplayBody <= 0 {
		cfg.MaxReplayBody = DefaultMaxReplayBody
	}
	if cfg.MaxReplayMemory <= 0 {
		cfg.MaxReplayMemory = 64 << 20
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = 30 * time.Second
	}
	if cfg.Transport == nil {
		cfg.Transport = http.DefaultTransport
	}
	h := &Handler{
		cfg:          cfg,
		tenantHeader: http.CanonicalHeaderKey(cfg.TenantHeader),
		callerHeader: http.CanonicalHeaderKey(cfg.CallerKeyHeader),
		basePath:     strings.TrimSuffix(cfg.Upstream.Path, "/"),
		baseRawPath:  strings.TrimSuffix(cfg.Upstream.EscapedPath(), "/"),
		log:          cfg.Logger,
		obs:          cfg.Observer,
	}
	h.replayMemory.limit = cfg.MaxReplayMemory
	if cfg.PublicURL != "" {
		h.links = newLinks(strings.TrimSuffix(cfg.Upstream.String(), "/"), strings.TrimSuffix(cfg.PublicURL, "/"))
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.obs == nil {
		h.obs = nopObserver{}
	}
	h.rp = &httputil.ReverseProxy{
		Transport:      &replayTransport{h: h, base: cfg.Transport},
		ModifyResponse: h.modifyResponse,
		ErrorHandler:   h.errorHandler,
		BufferPool:     bufferPool{},
		ErrorLog:       slog.NewLogLogger(h.log.Handler(), slog.LevelWarn),
	}
	return h, nil
}

// ReplayMemory returns the bytes of request bodies held now so that their
// requests can be replayed; it never exceeds MaxReplayMemory.
func (h *Handler) ReplayMemory() int64 { return h.replayMemory.used.Load() }

// call is what the proxy knows of one request while it is proxied.
//
// It holds the ReverseProxy and the transport that serve the request,
// bound to it, in the same allocation: Rewrite and the transport have the
// call without a copy of the request that carries it in its context (an
// allocation of each per request, and a walk of the context per lookup).
type call struct {
	w             statusWriter // the caller's ResponseWriter, in the same allocation
	rp            httputil.ReverseProxy
	transport     replayTransport
	authorization string // "Bearer " + token
	tenant        string
	caller        string
	requestID     string
	path          string // escaped path, relative to the upstream base
	rawQuery      string
	body          *requestBody // nil without a body
	slot          *caller      // whose in-flight requests count this one
	replayable    bool
	replayed      bool
	limitReplayed bool          // replayed after the upstream's 429
	took          time.Duration // the last round trip's time, to its answer's headers
	deadline      time.Time     // the latest a call may go under the rate limit
	waited        time.Duration // time spent waiting for the rate limit
	upstream      time.Duration
	// The values of the X-Request-ID and Authorization headers that the
	// call sets, in the same allocation. They are never changed once set:
	// a header that adds to them gets a new slice (their capacity is 1).
	requestIDValue     [1]string
	authorizationValue [1]string
}

// finish gives back what the request held: its place among its caller's
// requests in flight, and its body's memory.
func (c *call) finish() {
	if c.slot != nil {
		c.slot.inflight.Add(-1)
	}
	if c.body != nil {
		c.body.finish()
	}
}

type callKey struct{}

func callFrom(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	return c
}

// ServeHTTP proxies one request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c := &call{requestID: requestID(r)}
	c.requestIDValue[0] = c.requestID
	rw := &c.w
	rw.ResponseWriter, rw.call, rw.http10 = w, c, !r.ProtoAtLeast(1, 1)
	// Canonical keys, set directly: Header.Set would canonicalize (and
	// allocate for "X-Request-ID") on every request.
	rw.Header()[requestIDHeader] = c.requestIDValue[:]
	var deadline time.Time
	rw.close, deadline = guardConnection(w, r, start, h.cfg.BodyTimeout)
	if r.ContentLength != 0 {
		c.body = &requestBody{w: w, deadline: deadline}
		c.body.held.mem = &h.replayMemory
	}
	h.obs.InFlight(1)
	defer func() {
		c.finish()
		h.obs.InFlight(-1)
		if !h.cfg.AccessLog {
			h.obs.Served(r.Method, rw.status(), time.Since(start))
			return
		}
		// One clock read for the end of the request and the line's time.
		end := time.Now()
		l := accessLine{time: end, requestID: c.requestID, tenant: c.tenant, caller: c.caller,
			method: r.Method, path: r.URL.Path, status: rw.status(), duration: end.Sub(start),
			upstream: c.upstream, replayed: c.replayed, rateLimitWait: c.waited}
		h.obs.Served(r.Method, l.status, l.duration)
		if h.cfg.AccessLogWriter != nil {
			h.cfg.AccessLogWriter.write(&l)
		} else {
			attrs := l.attrs()
			h.log.LogAttrs(r.Context(), slog.LevelInfo, accessMessage, attrs[:]...)
		}
	}()

	if e := h.prepare(r, c); e != nil {
		h.fail(rw, r, c, e)
		return
	}
	authorization, err := h.cfg.Tokens.Authorization(r.Context(), c.tenant)
	if err != nil {
		h.fail(rw, r, c, TokenError(err))
		return
	}
	c.authorization = authorization
	if e := h.bufferBody(r, c); e != nil {
		h.fail(rw, r, c, e)
		return
	}
	if h.cfg.Limiter != nil {
		c.deadline = start.Add(h.cfg.Limiter.MaxWait())
		if e := h.waitTurn(r.Context(), c); e != nil {
			h.fail(rw, r, c, e)
			return
		}
	}
	// ReverseProxy would ask the upstream for the protocol switch the
	// caller asked for, and relay a 101 as a tunnel past the proxy: the
	// caller never gets one.
	delete(r.Header, "Upgrade")
	c.rp = *h.rp
	c.rp.Rewrite = func(pr *httputil.ProxyRequest) { h.rewrite(pr, c) }
	c.transport = replayTransport{h: h, base: h.cfg.Transport, c: c}
	c.rp.Transport = &c.transport
	c.rp.ServeHTTP(rw, r)
}

// prepare checks the request target and method, the caller (when caller
// authentication is on) and the tenant header, and takes the request's
// place among its caller's requests in flight.
func (h *Handler) prepare(r *http.Request, c *call) *Error {
	path, e := relativePath(r)
	if e != nil {
		return e
	}
	c.path, c.rawQuery = path, r.URL.RawQuery
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions:
	default:
		return methodNotAllowed
	}
	var cl *caller
	if h.cfg.Callers != nil {
		if cl, e = h.cfg.Callers.identify(r.Header[h.callerHeader], h.callerHeader); e != nil {
			return e
		}
		c.caller = cl.name
	}
	tenant, e := h.tenant(r.Header)
	if e != nil {
		return e
	}
	c.tenant = tenant
	if cl != nil && !cl.allows(tenant) {
		return notAllowed
	}
	if cl != nil && h.cfg.MaxCallerConcurrency > 0 {
		if cl.inflight.Add(1) > int64(h.cfg.MaxCallerConcurrency) {
			cl.inflight.Add(-1)
			return tooManyInFlight
		}
		c.slot = cl
	}
	return nil
}

// methodNotAllowed answers a method the proxy does not forward: TRACE would
// echo the tenant's token back, CONNECT and the WebDAV and invented methods
// have no use with thanks.io's API.
var methodNotAllowed = &Error{Status: http.StatusMethodNotAllowed, Code: CodeMethodNotAllowed,
	Message: "The proxy forwards only GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS.",
	Allow:   "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"}

// tooManyInFlight answers a caller with MaxCallerConcurrency requests in
// flight already.
var tooManyInFlight = &Error{Status: http.StatusTooManyRequests, Code: CodeConcurrencyLimited,
	Message: "This caller has too many requests in flight; retry when one has finished.", RetryAfter: time.Second}

// tenant returns the one valid tenant id the request names.
func (h *Handler) tenant(header http.Header) (string, *Error) {
	values := header[h.tenantHeader]
	switch {
	case len(values) == 0 && h.cfg.DefaultTenant != "":
		return h.cfg.DefaultTenant, nil
	case len(values) == 0:
		return "", &Error{Status: http.StatusBadRequest, Code: CodeMissingTenant,
			Message: fmt.Sprintf("The %s header is required.", h.tenantHeader)}
	case len(values) > 1:
		return "", &Error{Status: http.StatusBadRequest, Code: CodeInvalidTenant,
			Message: fmt.Sprintf("The %s header must appear once.", h.tenantHeader)}
	case !ValidTenant(values[0]):
		return "", &Error{Status: http.StatusBadRequest, Code: CodeInvalidTenant,
			Message: "A tenant id is 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-', and not '.' or '..'."}
	}
	return values[0], nil
}

// relativePath returns the request's escaped path, to be appended to the
// upstream base, or refuses a target that could leave the base: an
// absolute-form or authority-form target, a dot segment (also encoded), an
// empty segment ("//host"), an encoded slash or backslash, or a control
// character.
func relativePath(r *http.Request) (string, *Error) {
	bad := func(why string) (string, *Error) {
		return "", &Error{Status: http.StatusBadRequest, Code: CodeInvalidPath, Message: why}
	}
	if !strings.HasPrefix(r.RequestURI, "/") || r.URL.Host != "" || r.URL.Scheme != "" {
		return bad("The request target must be a path, not an absolute URL.")
	}
	p := r.URL.Path
	if !strings.HasPrefix(p, "/") {
		return bad("The request path must start with '/'.")
	}
	for i := 0; i < len(p); i++ {
		if b := p[i]; b < 0x20 || b == 0x7f || b == '\\' {
			return bad("The request path holds a character that is not allowed.")
		}
	}
	for rest := p[1:]; ; {
		s, tail, more := strings.Cut(rest, "/")
		if s == "." || s == ".." {
			return bad("The request path must not contain '.' or '..' segments.")
		}
		if s == "" && more {
			return bad("The request path must not contain empty segments.")
		}
		if !more {
			break
		}
		rest = tail
	}
	escaped := r.URL.EscapedPath()
	if strings.IndexByte(escaped, '%') < 0 {
		return escaped, nil
	}
	if lower := strings.ToLower(escaped); strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") {
		return bad("The request path must not contain an encoded '/' or '\\'.")
	}
	return escaped, nil
}

// bufferBody reads a body of up to MaxReplayBody into memory, as its bytes
// arrive, so that the request can be replayed. A larger body, or one that
// arrives while MaxReplayMemory is taken, streams through instead (what was
// read, then the rest) and is not replayed.
func (h *Handler) bufferBody(r *http.Request, c *call) *Error {
	if c.body == nil || r.Body == nil || r.Body == http.NoBody {
		c.replayable = true
		return nil
	}
	b, max := c.body, h.cfg.MaxReplayBody
	if r.ContentLength <= max { // -1, chunked, included
		for b.held.n <= max {
			var n int
			var err error
			if room := b.held.room(); room != nil {
				if left := max + 1 - b.held.n; int64(len(room)) > left {
					room = room[:left] // one byte past max tells a larger body
				}
				n, err = r.Body.Read(room)
				b.held.fill += n
				b.held.n += int64(n)
			} else {
				// No memory for another chunk. The body may have ended
				// all the same (a chunked one says so only on the next
				// read): one byte tells.
				if n, err = r.Body.Read(b.probe[:]); n > 0 {
					b.probed = true
					break
				}
			}
			if err == nil {
				continue
			}
			if e := b.end(err); e != nil {
				return e
			}
			c.replayable = b.held.n <= max
			r.ContentLength = b.held.n
			if b.held.n == 0 {
				r.Body = http.NoBody
			} else {
				r.Body = b.readers[0].init(b, nil)
			}
			return nil
		}
	}
	r.Body = b.readers[0].init(b, r.Body)
	return nil
}

// rewrite builds the upstream request: the upstream URL with the caller's
// path under its base, the caller's query, and the tenant's token as the only
// credential.
func (h *Handler) rewrite(pr *httputil.ProxyRequest, c *call) {
	// The outbound request's URL is its own copy: set in place.
	u := pr.Out.URL
	*u = *h.cfg.Upstream
	u.Path = h.basePath + pr.In.URL.Path
	u.RawPath = h.baseRawPath + c.path
	if u.EscapedPath() != u.RawPath {
		// RawPath was not a valid encoding of Path; let url re-encode it.
		u.RawPath = ""
	}
	u.RawQuery = c.rawQuery
	u.ForceQuery = false
	u.Fragment, u.RawFragment = "", ""
	pr.Out.Host = ""

	// The server canonicalized the inbound header keys, and these are
	// canonical, so map operations do what Del and Set do without
	// canonicalizing again on every request.
	out := pr.Out.Header
	delete(out, h.tenantHeader)
	delete(out, h.callerHeader)
	delete(out, "Proxy-Authorization")
	delete(out, "Cookie")
	// The proxy answers Expect itself (net/http sends 100 Continue when the
	// body is first read); the upstream's 100 would be a second one.
	delete(out, "Expect")
	if h.links != nil {
		// The transport then asks for gzip itself and hands over the
		// answer decoded, so that its links can be rewritten.
		delete(out, "Accept-Encoding")
	}
	// A front end may take a header name with '_' for the one with '-'
	// (X_Tenant_ID for X-Tenant-ID): such names go nowhere, as with nginx.
	for name := range out {
		if strings.IndexByte(name, '_') >= 0 {
			delete(out, name)
		}
	}
	c.authorizationValue[0] = c.authorization
	out["Authorization"] = c.authorizationValue[:]
	out[requestIDHeader] = c.requestIDValue[:]
	// Request trailers could carry the tenant header, the caller key or
	// credentials past the deletions above; the upstream needs none.
	pr.Out.Trailer = nil
}

// modifyResponse removes what the upstream must not say in the proxy's name,
// in the headers and in the trailers, and its cookies (which have no
// business in a caller's cookie jar), and refuses a protocol switch.
func (h *Handler) modifyResponse(res *http.Response) error {
	if res.StatusCode == http.StatusSwitchingProtocols {
		return errSwitchingProtocols
	}
	// Canonical keys, as the transport's are: Del would canonicalize
	// them again on every answer.
	delete(res.Header, ErrorHeader)
	delete(res.Header, "Set-Cookie")
	delete(res.Trailer, ErrorHeader)
	delete(res.Trailer, "Set-Cookie")
	if res.ContentLength < 0 {
		// A chunked answer may carry trailers, declared or not, that the
		// transport adds once the body has been read: drop it then too.
		res.Body = &trailerFilter{ReadCloser: res.Body, res: res}
	}
	if h.links.rewrites(res) {
		h.links.wrap(res)
	}
	if h.links != nil {
		// A redirect to the upstream's own URLs stays on the proxy too.
		if loc := res.Header["Location"]; len(loc) == 1 {
			res.Header["Location"] = []string{h.links.rewriteURL(loc[0])}
		}
	}
	return nil
}

// trailerFilter removes the proxy's error header and cookies from the
// trailers once the body has been read.
type trailerFilter struct {
	io.ReadCloser
	res *http.Response
}

func (f *trailerFilter) Read(p []byte) (int, error) {
	n, err := f.ReadCloser.Read(p)
	if err == io.EOF {
		delete(f.res.Trailer, ErrorHeader)
		delete(f.res.Trailer, "Set-Cookie")
	}
	return n, err
}

func (h *Handler) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	// The writer is the call's own (the ReverseProxy the call binds is
	// given no other).
	var c *call
	if sw, ok := w.(*statusWriter); ok {
		c = sw.call
	}
	if c == nil {
		c = &call{}
	}
	e := upstreamError(err)
	if c.body != nil {
		// A body that stopped arriving also ends the round trip: say so,
		// rather than blame the upstream.
		if be := c.body.failure(); be != nil {
			e = be
		}
	}
	h.fail(w, r, c, e)
}

// fail answers e and logs it, without any token: errors from auth and the
// transport name none.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, c *call, e *Error) {
	level := slog.LevelInfo
	if e.Status >= 500 {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{slog.String("request_id", c.requestID), slog.String("tenant", c.tenant),
		slog.String("caller", c.caller), slog.String("code", e.Code)}
	if e.Err != nil {
		attrs = append(attrs, slog.String("err", e.Err.Error()))
	}
	h.log.LogAttrs(r.Context(), level, "proxy error", attrs...)
	h.obs.Failed(e.Code)
	if e.Status == StatusClientClosedRequest {
		w.WriteHeader(e.Status)
		return
	}
	WriteError(w, e)
}

// replayTransport replays a request once, with a fresh token, when the
// upstream refuses the token the proxy injected. A 401 means the upstream did
// not act on the request, so replaying even a POST is safe.
type replayTransport struct {
	h    *Handler
	base http.RoundTripper
	// c is the call that the transport serves; nil takes the call from
	// each request's context (Check's).
	c *call
}

func (t *replayTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c := t.c
	if c == nil {
		c = callFrom(req.Context())
	}
	res, err := t.roundTrip(req, c)
	if err != nil || c == nil {
		return res, err
	}
	if res, err = t.limited(req, c, res); err != nil {
		return nil, err
	}
	if !c.replayable || c.replayed || !refusesToken(res) {
		return res, nil
	}
	token, err := t.h.cfg.Tokens.Refused(req.Context(), c.tenant, strings.TrimPrefix(c.authorization, bearerPrefix))
	if errors.Is(err, auth.ErrNoBetterToken) {
		return res, nil
	}
	drain(res.Body)
	if err != nil {
		return nil, TokenError(err)
	}
	c.authorization, c.replayed = bearerPrefix+token, true
	t.h.obs.Replayed()
	if t.h.cfg.Limiter != nil {
		if e := t.h.waitTurn(req.Context(), c); e != nil {
			return nil, e
		}
	}
	if res, err = t.again(req, c); err != nil {
		return nil, err
	}
	return t.limited(req, c, res)
}

// limited hands res, an upstream answer, to the rate limiter, and replays
// the call once after the pause that a 429 set, when its body was kept and
// the pause ends before the call's deadline. A 429 that goes back to the
// caller carries Retry-After.
func (t *replayTransport) limited(req *http.Request, c *call, res *http.Response) (*http.Response, error) {
	lim := t.h.cfg.Limiter
	if lim == nil {
		if res.StatusCode == http.StatusTooManyRequests {
			t.h.obs.UpstreamLimited(true)
		}
		return res, nil
	}
	pause := lim.Observe(c.tenant, res.StatusCode, res.Header, c.took)
	if res.StatusCode != http.StatusTooManyRequests {
		return res, nil
	}
	if !c.replayable || c.limitReplayed || time.Now().Add(pause).After(c.deadline) {
		t.h.obs.UpstreamLimited(true)
		if res.Header.Get("Retry-After") == "" {
			res.Header.Set("Retry-After", strconv.Itoa(int((pause+time.Second-1)/time.Second)))
		}
		return res, nil
	}
	drain(res.Body)
	c.limitReplayed = true
	if e := t.h.waitTurn(req.Context(), c); e != nil {
		// The caller gets a 429 all the same: the proxy's.
		t.h.obs.UpstreamLimited(true)
		return nil, e
	}
	t.h.obs.UpstreamLimited(false)
	res, err := t.again(req, c)
	if err != nil {
		return nil, err
	}
	return t.limited(req, c, res)
}

// again sends the call once more, with its current token and a new reader
// of its kept body.
func (t *replayTransport) again(req *http.Request, c *call) (*http.Response, error) {
	again := req.Clone(req.Context())
	again.Header["Authorization"] = []string{c.authorization}
	if c.body != nil && c.body.held.n > 0 {
		// A reader of its own: an earlier attempt's may still be read.
		r := &c.body.readers[1]
		if r.b != nil {
			r = new(bodyReader)
		}
		again.Body = r.init(c.body, nil)
		again.GetBody = c.body.getBody
	} else {
		again.Body = nil
	}
	return t.roundTrip(again, c)
}

// waitTurn waits for c's turn under the rate limit, and returns the
// answer to a call whose turn would not come by its deadline. A call that
// waited takes its tenant's token again: it may have been rotated, or the
// tenant deleted, meanwhile.
func (h *Handler) waitTurn(ctx context.Context, c *call) *Error {
	waited, err := h.cfg.Limiter.Wait(ctx, c.tenant, c.deadline)
	c.waited += waited
	var re *ratelimit.RefusedError
	switch {
	case err == nil && waited > 0:
		if c.authorization, err = h.cfg.Tokens.Authorization(ctx, c.tenant); err != nil {
			return TokenError(err)
		}
		return nil
	case err == nil:
		return nil
	case errors.As(err, &re):
		return &Error{Status: http.StatusTooManyRequests, Code: CodeRateLimited,
			Message:    "The tenant's calls to thanks.io are paced under its rate limit, and this call's turn would not come in time.",
			RetryAfter: max(re.RetryAfter, time.Second), Err: err}
	case errors.Is(err, context.Canceled):
		return httperr.ClientGone(err)
	default:
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeRateLimited,
			Message: "The tenant's rate limit could not be applied.", RetryAfter: time.Second, Err: err}
	}
}

func (t *replayTransport) roundTrip(req *http.Request, c *call) (*http.Response, error) {
	start := time.Now()
	res, err := t.base.RoundTrip(req)
	d := time.Since(start)
	status := 0
	switch {
	case err == nil:
		status = res.StatusCode
	case errors.Is(req.Context().Err(), context.Canceled):
		status = StatusClientClosedRequest
	}
	t.h.obs.Upstream(status, d)
	if c != nil {
		c.upstream += d
		c.took = d
	}
	return res, err
}

// refusesToken reports whether res says the injected token is no good:
// Passport's 401, or the 403 {"message":"Unauthorized"} that thanks.io's
// API description documents for a bad token. Any other 403 is a permission
// answer about the request, and stands.
func refusesToken(res *http.Response) bool {
	switch res.StatusCode {
	case http.StatusUnauthorized:
		return true
	case http.StatusForbidden:
	default:
		return false
	}
	const limit = 256
	if res.ContentLength > limit {
		return false
	}
	head, err := io.ReadAll(io.LimitReader(res.Body, limit+1))
	// Put back what was read, whatever it was.
	res.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(head), res.Body), res.Body}
	if err != nil || len(head) > limit {
		return false
	}
	var body map[string]any
	if json.Unmarshal(head, &body) != nil || len(body) != 1 {
		return false
	}
	return body["message"] == "Unauthorized"
}

// drain reads a little of a discarded body so that its connection can be
// reused, then closes it.
func drain(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, 64<<10)
	_ = body.Close()
}

// requestID returns the caller's X-Request-ID when it is short and printable,
// else a new random one.
func requestID(r *http.Request) string {
	if ids := r.Header[requestIDHeader]; len(ids) > 0 && ids[0] != "" && len(ids[0]) <= 128 {
		id := ids[0]
		ok := true
		for i := 0; i < len(id); i++ {
			if id[i] <= 0x20 || id[i] >= 0x7f {
				ok = false
				break
			}
		}
		if ok {
			return id
		}
	}
	return newRequestID()
}

// Request ids made here are a random prefix drawn once per process and a
// counter: unique across replicas and restarts without a random draw per
// request. They are labels, not secrets.
var (
	requestIDPrefix  = randomHex(8) + "-"
	requestIDCounter atomic.Uint64
)

func newRequestID() string {
	var b [48]byte // on the stack: the string is the one allocation
	id := append(b[:0], requestIDPrefix...)
	return string(strconv.AppendUint(id, requestIDCounter.Add(1), 16))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// statusWriter remembers the status written through it, and keeps the
// proxy's own response headers on the final answer.
//
// ReverseProxy relays the upstream's interim (1xx) answers with the headers
// set so far, then clears them all: statusWriter keeps interim answers
// from carrying what the caller must not get, and sets the proxy's headers
// again on the final answer.
type statusWriter struct {
	http.ResponseWriter
	call    *call // whose answer this is
	code    int
	close   bool // the connection closes after the answer
	http10  bool // the caller speaks HTTP/1.0, which has no interim answers
	interim bool // an interim answer was written, and the headers cleared
}

func (w *statusWriter) WriteHeader(code int) {
	if code < 200 {
		w.interim = true
		// A 100 Continue is net/http's to send, when the body is first
		// read; HTTP/1.0 has no interim answers (RFC 9110 section 15.2).
		if w.code != 0 || code == http.StatusContinue || w.http10 {
			return
		}
		h := w.Header()
		for _, name := range interimDropped {
			delete(h, name)
		}
		w.ResponseWriter.WriteHeader(code)
		return
	}
	if w.code == 0 {
		w.code = code
		if w.interim {
			h := w.Header()
			h[requestIDHeader] = []string{w.call.requestID}
			if w.close {
				h["Connection"] = []string{"close"}
			}
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

// interimDropped are the headers an interim answer never carries: those of
// the connection, the upstream's cookies, and the proxy's error header.
var interimDropped = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Te", "Trailer",
	"Upgrade", "Content-Length", "Set-Cookie", ErrorHeader}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}

// Unwrap lets http.ResponseController reach the underlying writer (for
// flushes of streamed answers).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// bufferPool shares the 32 KiB copy buffers of responses between requests.
type bufferPool struct{}

const copyBufferSize = 32 << 10

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

func (bufferPool) Get() []byte  { return *copyBuffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }

const (
	bearerPrefix    = "Bearer "
	requestIDHeader = "X-Request-Id" // X-Request-ID, canonical
)

type nopObserver struct{}

func (nopObserver) Served(string, int, time.Duration) {}
func (nopObserver) Upstream(int, time.Duration)       {}
func (nopObserver) Replayed()                         {}
func (nopObserver) Failed(string)                     {}
func (nopObserver) InFlight(int)                      {}
func (nopObserver) UpstreamLimited(bool)              {}
