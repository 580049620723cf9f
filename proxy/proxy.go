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
)

// Tokens is what the proxy needs of the token lifecycle. It must be safe for
// concurrent use by multiple goroutines.
type Tokens interface {
	// Token returns the access token to send for tenant.
	Token(ctx context.Context, tenant string) (string, error)
	// Refused returns a replacement for token, which the upstream answered
	// 401 to; auth.ErrNoBetterToken means the refusal stands.
	Refused(ctx context.Context, tenant, token string) (string, error)
}

// authorizer is implemented by Tokens that hand out the Authorization header
// value ready-made ("Bearer <token>", built once per token), which spares
// the proxy building it for every request. *auth.Tokens implements it.
type authorizer interface {
	Authorization(ctx context.Context, tenant string) (string, error)
}

// Observer is told about each request, for metrics. Methods must be cheap and
// safe for concurrent use. Nil observes nothing.
type Observer interface {
	// Served records a finished request: its method, the status the caller
	// got, and the time spent.
	Served(method string, status int, d time.Duration)
	// Upstream records one round trip to the upstream (there are two when a
	// request is replayed).
	Upstream(status int, d time.Duration)
	// Replayed counts a request replayed after the upstream refused a token.
	Replayed()
}

// Config configures a Handler.
type Config struct {
	// Tokens gives each tenant's access token. Required.
	Tokens Tokens
	// Upstream is the API base URL; request paths are appended to its path.
	// Required.
	Upstream *url.URL
	// TenantHeader names the header that names the tenant (default
	// X-Tenant-ID). It is never forwarded.
	TenantHeader string
	// Transport makes the upstream round trips; nil means
	// http.DefaultTransport.
	Transport http.RoundTripper
	// MaxReplayBody is the largest request body kept in memory so that the
	// request can be replayed after a 401 (default 1 MiB). Larger bodies
	// stream through and are not replayed.
	MaxReplayBody int64
	// Observer is told about requests; nil observes nothing.
	Observer Observer
	// Logger receives one access line per request (when AccessLog is set)
	// and the proxy's failures; it never receives a token. Nil discards.
	Logger *slog.Logger
	// AccessLog turns the per-request access line on.
	AccessLog bool
	// Callers, when not nil, turns caller authentication on: every request
	// must present a caller key in CallerKeyHeader, and may name only the
	// tenants that key allows. Nil lets anyone who reaches the proxy name
	// any tenant (a sidecar on loopback).
	Callers *Callers
	// CallerKeyHeader names the header that carries the caller key (default
	// X-Caller-Key). It is never forwarded.
	CallerKeyHeader string
}

// Handler is the proxy's data plane, an http.Handler. It is safe for
// concurrent use.
type Handler struct {
	cfg          Config
	tenantHeader string
	callerHeader string
	basePath     string // upstream path without its trailing slash
	baseRawPath  string
	rp           *httputil.ReverseProxy
	// authorization returns the Authorization header value for a tenant.
	authorization func(ctx context.Context, tenant string) (string, error)
	log           *slog.Logger
	obs           Observer
}

// New returns a Handler for cfg.
func New(cfg Config) (*Handler, error) {
	if cfg.Tokens == nil || cfg.Upstream == nil {
		return nil, errors.New("proxy: Tokens and Upstream are required")
	}
	if cfg.Upstream.Scheme != "http" && cfg.Upstream.Scheme != "https" || cfg.Upstream.Host == "" {
		return nil, errors.New("proxy: the upstream must be an absolute http or https URL")
	}
	if cfg.TenantHeader == "" {
		cfg.TenantHeader = "X-Tenant-ID"
	}
	if cfg.CallerKeyHeader == "" {
		cfg.CallerKeyHeader = "X-Caller-Key"
	}
	if cfg.MaxReplayBody <= 0 {
		cfg.MaxReplayBody = 1 << 20
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
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.obs == nil {
		h.obs = nopObserver{}
	}
	if a, ok := cfg.Tokens.(authorizer); ok {
		h.authorization = a.Authorization
	} else {
		h.authorization = func(ctx context.Context, tenant string) (string, error) {
			token, err := cfg.Tokens.Token(ctx, tenant)
			return bearerPrefix + token, err
		}
	}
	h.rp = &httputil.ReverseProxy{
		Rewrite:        h.rewrite,
		Transport:      &replayTransport{h: h, base: cfg.Transport},
		ModifyResponse: h.modifyResponse,
		ErrorHandler:   h.errorHandler,
		BufferPool:     bufferPool{},
		ErrorLog:       slog.NewLogLogger(h.log.Handler(), slog.LevelWarn),
	}
	return h, nil
}

// call is what the proxy knows of one request while it is proxied.
type call struct {
	w             statusWriter // the caller's ResponseWriter, in the same allocation
	authorization string       // "Bearer " + token
	tenant        string
	caller        string
	requestID     string
	path          string // escaped path, relative to the upstream base
	rawQuery      string
	body          []byte // the buffered body, when replayable
	replayable    bool
	replayed      bool
	upstream      time.Duration
}

type callKey struct{}

func callFrom(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	return c
}

// ServeHTTP proxies one request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c := &call{w: statusWriter{ResponseWriter: w}, requestID: requestID(r)}
	rw := &c.w
	// Canonical keys, set directly: Header.Set would canonicalize (and
	// allocate for "X-Request-ID") on every request.
	rw.Header()[requestIDHeader] = []string{c.requestID}
	if len(r.TransferEncoding) > 0 {
		// net/http drops a Content-Length sent beside Transfer-Encoding
		// before a handler runs, so such a request looks like any chunked
		// one: close the connection after every chunked request (RFC 9112
		// section 6.1), so that bytes a front end framed by Content-Length
		// are never read here as another request.
		rw.Header().Set("Connection", "close")
	}
	defer func() {
		d := time.Since(start)
		h.obs.Served(r.Method, rw.status(), d)
		if h.cfg.AccessLog {
			h.log.LogAttrs(r.Context(), slog.LevelInfo, "request",
				slog.String("request_id", c.requestID),
				slog.String("tenant", c.tenant),
				slog.String("caller", c.caller),
				slog.String("method", r.Method),
				slog.String("path", r.URL.Path),
				slog.Int("status", rw.status()),
				slog.Duration("duration", d),
				slog.Duration("upstream_duration", c.upstream),
				slog.Bool("replayed", c.replayed),
			)
		}
	}()

	if e := h.prepare(r, c); e != nil {
		h.fail(rw, r, c, e)
		return
	}
	authorization, err := h.authorization(r.Context(), c.tenant)
	if err != nil {
		h.fail(rw, r, c, tokenError(err))
		return
	}
	c.authorization = authorization
	if e := h.bufferBody(r, c); e != nil {
		h.fail(rw, r, c, e)
		return
	}
	h.rp.ServeHTTP(rw, r.WithContext(context.WithValue(r.Context(), callKey{}, c)))
}

// prepare checks the request target, the caller (when caller
// authentication is on) and the tenant header.
func (h *Handler) prepare(r *http.Request, c *call) *Error {
	path, e := relativePath(r)
	if e != nil {
		return e
	}
	c.path, c.rawQuery = path, r.URL.RawQuery
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
	return nil
}

// tenant returns the one valid tenant id the request names.
func (h *Handler) tenant(header http.Header) (string, *Error) {
	values := header[h.tenantHeader]
	switch {
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

// ValidTenant reports whether id is a well-formed tenant id:
// [A-Za-z0-9._-]{1,128}, and neither "." nor "..".
func ValidTenant(id string) bool {
	if len(id) == 0 || len(id) > 128 || id == "." || id == ".." {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch b := id[i]; {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', b == '.', b == '_', b == '-':
		default:
			return false
		}
	}
	return true
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
	if lower := strings.ToLower(escaped); strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") {
		return bad("The request path must not contain an encoded '/' or '\\'.")
	}
	return escaped, nil
}

// bufferBody keeps a body of up to MaxReplayBody in memory so that the
// request can be replayed; a larger one streams through, unreplayable.
func (h *Handler) bufferBody(r *http.Request, c *call) *Error {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		c.replayable = true
		return nil
	}
	max := h.cfg.MaxReplayBody
	if r.ContentLength > max {
		return nil
	}
	buf := bytes.NewBuffer(make([]byte, 0, min(max, max64(r.ContentLength, 512))))
	n, err := io.Copy(buf, io.LimitReader(r.Body, max+1))
	if err != nil {
		return &Error{Status: http.StatusBadRequest, Code: CodeBadRequest,
			Message: "The request body could not be read.", Err: err}
	}
	if n > max {
		// Too large to keep: stream what was read, then the rest.
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(buf.Bytes()), r.Body), r.Body}
		return nil
	}
	c.body = buf.Bytes()
	c.replayable = true
	r.Body = io.NopCloser(bytes.NewReader(c.body))
	r.ContentLength = n
	return nil
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// rewrite builds the upstream request: the upstream URL with the caller's
// path under its base, the caller's query, and the tenant's token as the only
// credential.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	c := callFrom(pr.In.Context())
	u := *h.cfg.Upstream
	u.Path = h.basePath + pr.In.URL.Path
	u.RawPath = h.baseRawPath + c.path
	if u.EscapedPath() != u.RawPath {
		// RawPath was not a valid encoding of Path; let url re-encode it.
		u.RawPath = ""
	}
	u.RawQuery = c.rawQuery
	u.ForceQuery = false
	u.Fragment, u.RawFragment = "", ""
	pr.Out.URL = &u
	pr.Out.Host = ""

	// The server canonicalized the inbound header keys, and these are
	// canonical, so map operations do what Del and Set do without
	// canonicalizing again on every request.
	out := pr.Out.Header
	delete(out, h.tenantHeader)
	delete(out, h.callerHeader)
	delete(out, "Proxy-Authorization")
	delete(out, "Cookie")
	out["Authorization"] = []string{c.authorization}
	out[requestIDHeader] = []string{c.requestID}
	// Request trailers could carry the tenant header, the caller key or
	// credentials past the deletions above; the upstream needs none.
	pr.Out.Trailer = nil
}

// modifyResponse removes what the upstream must not say in the proxy's name,
// in the headers and in the trailers.
func (h *Handler) modifyResponse(res *http.Response) error {
	delete(res.Header, ErrorHeader) // canonical, as the transport's keys are
	res.Trailer.Del(ErrorHeader)
	if res.ContentLength < 0 {
		// A chunked answer may carry trailers, declared or not, that the
		// transport adds once the body has been read: drop it then too.
		res.Body = &trailerFilter{ReadCloser: res.Body, res: res}
	}
	return nil
}

// trailerFilter removes the proxy's error header from the trailers once the
// body has been read.
type trailerFilter struct {
	io.ReadCloser
	res *http.Response
}

func (f *trailerFilter) Read(p []byte) (int, error) {
	n, err := f.ReadCloser.Read(p)
	if err == io.EOF {
		f.res.Trailer.Del(ErrorHeader)
	}
	return n, err
}

func (h *Handler) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	c := callFrom(r.Context())
	if c == nil {
		c = &call{}
	}
	h.fail(w, r, c, upstreamError(err))
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
	if e.Status == StatusClientClosedRequest {
		w.WriteHeader(e.Status)
		return
	}
	writeError(w, e)
}

// replayTransport replays a request once, with a fresh token, when the
// upstream refuses the token the proxy injected. A 401 means the upstream did
// not act on the request, so replaying even a POST is safe.
type replayTransport struct {
	h    *Handler
	base http.RoundTripper
}

func (t *replayTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c := callFrom(req.Context())
	res, err := t.roundTrip(req, c)
	if err != nil || c == nil || !c.replayable || c.replayed || !refusesToken(res) {
		return res, err
	}
	token, err := t.h.cfg.Tokens.Refused(req.Context(), c.tenant, strings.TrimPrefix(c.authorization, bearerPrefix))
	if errors.Is(err, auth.ErrNoBetterToken) {
		return res, nil
	}
	drain(res.Body)
	if err != nil {
		return nil, tokenError(err)
	}
	c.authorization, c.replayed = bearerPrefix+token, true
	t.h.obs.Replayed()
	again := req.Clone(req.Context())
	again.Header["Authorization"] = []string{c.authorization}
	if c.body != nil {
		again.Body = io.NopCloser(bytes.NewReader(c.body))
		again.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(c.body)), nil }
	} else {
		again.Body = nil
	}
	return t.roundTrip(again, c)
}

func (t *replayTransport) roundTrip(req *http.Request, c *call) (*http.Response, error) {
	start := time.Now()
	res, err := t.base.RoundTrip(req)
	d := time.Since(start)
	status := 0
	if err == nil {
		status = res.StatusCode
	}
	t.h.obs.Upstream(status, d)
	if c != nil {
		c.upstream += d
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
	var b [16]byte
	return requestIDPrefix + string(strconv.AppendUint(b[:0], requestIDCounter.Add(1), 16))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// statusWriter remembers the status written through it.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 && code >= 200 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
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

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

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
