package httperr_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"thanksio-proxy/internal/httperr"
)

func TestWrite(t *testing.T) {
	tests := []struct {
		name   string
		e      *httperr.Error
		header map[string]string // "" means absent
		body   string
	}{
		{
			name:   "plain",
			e:      &httperr.Error{Status: http.StatusBadRequest, Code: httperr.CodeBadRequest, Message: "No.", Err: errors.New("logged, not sent")},
			header: map[string]string{httperr.Header: "bad_request", "Retry-After": "", "Allow": "", "Connection": ""},
			body:   `{"error":"bad_request","message":"No."}` + "\n",
		},
		{
			name:   "retry after, rounded up to whole seconds",
			e:      &httperr.Error{Status: http.StatusServiceUnavailable, Code: httperr.CodeTokenUnavailable, Message: "Later.", RetryAfter: 1500 * time.Millisecond},
			header: map[string]string{httperr.Header: "token_unavailable", "Retry-After": "2"},
			body:   `{"error":"token_unavailable","message":"Later."}` + "\n",
		},
		{
			name:   "allow and close",
			e:      &httperr.Error{Status: http.StatusMethodNotAllowed, Code: httperr.CodeMethodNotAllowed, Message: "GET only.", Allow: "GET", Close: true},
			header: map[string]string{"Allow": "GET", "Connection": "close"},
			body:   `{"error":"method_not_allowed","message":"GET only."}` + "\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			httperr.Write(rec, tt.e)
			if rec.Code != tt.e.Status {
				t.Errorf("status = %d; want %d", rec.Code, tt.e.Status)
			}
			want := map[string]string{"Content-Type": "application/json", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
			for k, v := range tt.header {
				want[k] = v
			}
			for k, v := range want {
				if got := rec.Header().Get(k); got != v {
					t.Errorf("%s = %q; want %q", k, got, v)
				}
			}
			if got := rec.Body.String(); got != tt.body {
				t.Errorf("body = %q; want %q", got, tt.body)
			}
		})
	}
}
