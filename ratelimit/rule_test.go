package ratelimit

import (
	"testing"
	"time"
)

func TestParseRule(t *testing.T) {
	for _, tc := range []struct {
		in     string
		limit  int
		period time.Duration
		ok     bool
	}{
		{"60/1m", 60, time.Minute, true},
		{"20/2s", 20, 2 * time.Second, true},
		{" 1000 / 1h ", 1000, time.Hour, true},
		{"60/m", 60, time.Minute, true},
		{"off", 0, 0, true},
		{"OFF", 0, 0, true},
		{FormatRule(DefaultLimit, DefaultPeriod), DefaultLimit, DefaultPeriod, true},
		{"60", 0, 0, false},
		{"0/1m", 0, 0, false},
		{"-1/1m", 0, 0, false},
		{"60/0s", 0, 0, false},
		{"60/1ms", 0, 0, false},
		{"60/forever", 0, 0, false},
		{"sixty/1m", 0, 0, false},
		{"", 0, 0, false},
	} {
		limit, period, err := ParseRule(tc.in)
		if (err == nil) != tc.ok || limit != tc.limit || period != tc.period {
			t.Errorf("ParseRule(%q) = %d, %v, %v; want %d, %v, ok %v", tc.in, limit, period, err, tc.limit, tc.period, tc.ok)
		}
	}
	if got := FormatRule(60, time.Minute); got != "60/1m" {
		t.Errorf("FormatRule(60, 1m) = %q; want 60/1m", got)
	}
}
