package proxy

import (
	"errors"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestBodyFailure checks how a body that failed is answered, whichever of
// the reader and the transport noticed first.
func TestBodyFailure(t *testing.T) {
	past, future := time.Now().Add(-time.Second), time.Now().Add(time.Hour)
	tests := []struct {
		name     string
		deadline time.Time
		readErr  error // what a reader of the body met; nil: none yet
		ended    bool
		status   int // 0: no body failure
	}{
		{"deadline passed, no read error seen yet", past, nil, false, http.StatusRequestTimeout},
		{"read timed out", future, timeoutError{}, false, http.StatusRequestTimeout},
		{"malformed body", future, errors.New("invalid byte in chunk length"), false, http.StatusBadRequest},
		{"deadline to come", future, nil, false, 0},
		{"body ended before the deadline passed", past, nil, true, 0},
		{"no deadline", time.Time{}, nil, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &requestBody{deadline: tt.deadline, ended: tt.ended}
			if tt.readErr != nil {
				if e := b.end(tt.readErr); e == nil || !e.Close {
					t.Fatalf("end(%v) = %v; want an answer that closes the connection", tt.readErr, e)
				}
			}
			e := b.failure()
			switch {
			case tt.status == 0 && e != nil:
				t.Errorf("failure() = %v; want none", e)
			case tt.status != 0 && (e == nil || e.Status != tt.status || !e.Close):
				t.Errorf("failure() = %+v; want %d, closing the connection", e, tt.status)
			}
		})
	}
	if e := (&requestBody{}).end(io.EOF); e != nil {
		t.Errorf("end(io.EOF) = %v; want nil", e)
	}
}

type timeoutError struct{}

func (timeoutError) Error() string { return "i/o timeout" }
func (timeoutError) Timeout() bool { return true }
