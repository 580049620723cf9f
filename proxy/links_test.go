package proxy

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"
)

func TestLinksRewriteBothSpellings(t *testing.T) {
	l := newLinks("https://api.thanks.io/api/v2", "http://127.0.0.1:8080")
	for _, tc := range []struct{ name, in, want string }{
		{"plain", `{"next":"https://api.thanks.io/api/v2/orders/list?page=2"}`, `{"next":"http://127.0.0.1:8080/orders/list?page=2"}`},
		{"escaped", `{"next":"https:\/\/api.thanks.io\/api\/v2\/orders\/list?page=2"}`, `{"next":"http:\/\/127.0.0.1:8080\/orders\/list?page=2"}`},
		{"the base alone", `{"path":"https://api.thanks.io/api/v2","q":"https://api.thanks.io/api/v2?page=1"}`, `{"path":"http://127.0.0.1:8080","q":"http://127.0.0.1:8080?page=1"}`},
		{"escaped base alone", `["https:\/\/api.thanks.io\/api\/v2"]`, `["http:\/\/127.0.0.1:8080"]`},
		{"a longer version is not the base", `"https://api.thanks.io/api/v20/x"`, `"https://api.thanks.io/api/v20/x"`},
		{"other hosts stay", `"https://api.thanks.io.evil/api/v2/x","http://api.thanks.io/api/v2/x"`, `"https://api.thanks.io.evil/api/v2/x","http://api.thanks.io/api/v2/x"`},
		{"at the very end", `https://api.thanks.io/api/v2`, `http://127.0.0.1:8080`},
		{"nothing to do", `{"data":[]}`, `{"data":[]}`},
		{"many", strings.Repeat(`"https://api.thanks.io/api/v2/a",`, 1000), strings.Repeat(`"http://127.0.0.1:8080/a",`, 1000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// One byte per read: every split of a pattern between reads.
			for name, src := range map[string]io.Reader{"whole": strings.NewReader(tc.in), "bytewise": iotest.OneByteReader(strings.NewReader(tc.in))} {
				r := &linkRewriter{links: l, src: io.NopCloser(src)}
				got, err := io.ReadAll(iotest.OneByteReader(r))
				if err != nil || string(got) != tc.want {
					t.Errorf("%s: rewritten = %q, %v; want %q", name, got, err, tc.want)
				}
			}
		})
	}
}

func TestLinksRewriteLocation(t *testing.T) {
	l := newLinks("https://api.thanks.io/api/v2", "http://127.0.0.1:8080")
	for in, want := range map[string]string{
		"https://api.thanks.io/api/v2/orders/list?page=2": "http://127.0.0.1:8080/orders/list?page=2",
		"https://api.thanks.io/api/v20/x":                 "https://api.thanks.io/api/v20/x",
		"https://dashboard.thanks.io/login":               "https://dashboard.thanks.io/login",
	} {
		if got := l.rewriteURL(in); got != want {
			t.Errorf("rewriteURL(%q) = %q; want %q", in, got, want)
		}
	}
}

func TestLinksOnlyJSON(t *testing.T) {
	l := newLinks("https://api.thanks.io/api/v2", "http://127.0.0.1:8080")
	for _, tc := range []struct {
		header http.Header
		want   bool
	}{
		{http.Header{"Content-Type": {"application/json"}}, true},
		{http.Header{"Content-Type": {"application/json; charset=utf-8"}}, true},
		{http.Header{"Content-Type": {"application/problem+json"}}, true},
		{http.Header{"Content-Type": {"text/html"}}, false},
		{http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {"gzip"}}, false},
		{http.Header{}, false},
	} {
		res := &http.Response{Header: tc.header, Body: io.NopCloser(strings.NewReader("{}"))}
		if got := l.rewrites(res); got != tc.want {
			t.Errorf("rewrites(%v) = %v; want %v", tc.header, got, tc.want)
		}
	}
	var none *links
	if none.rewrites(&http.Response{Header: http.Header{"Content-Type": {"application/json"}}, Body: http.NoBody}) {
		t.Error("without PUBLIC_URL an answer is rewritten")
	}
}

// BenchmarkLinksRewrite reads 4 MiB answers through the rewriter in 16 KiB
// reads: one made of links, one of other strings of the same length. The
// cost per byte must not grow with the links in a read.
func BenchmarkLinksRewrite(b *testing.B) {
	l := newLinks("https://api.thanks.io/api/v2", "http://127.0.0.1:8080")
	link := `"https://api.thanks.io/api/v2/orders/1",`
	for _, bc := range []struct{ name, unit string }{
		{"links", link},
		{"plain", `"` + strings.Repeat("x", len(link)-3) + `",`},
	} {
		body := []byte(strings.Repeat(bc.unit, (4<<20)/len(bc.unit)))
		buf := make([]byte, 16<<10)
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				r := &linkRewriter{links: l, src: io.NopCloser(bytes.NewReader(body))}
				if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{r}, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
