//go:build linux

package main

import "testing"

// The benchmark learns its children's ports from their output: a line it
// cannot read stops the run at start, so the readers are pinned here.

func TestStartedAddrs(t *testing.T) {
	for _, tc := range []struct {
		line      string
		data, ops string
	}{
		{`time=2026-01-02T03:04:05.000Z level=INFO msg="thanksio-proxy started" listen=127.0.0.1:41234 ops=127.0.0.1:41235 upstream=http://127.0.0.1:9/api/v2 store=redis`,
			"127.0.0.1:41234", "127.0.0.1:41235"},
		{`time=2026-01-02T03:04:05.000Z level=INFO msg=request request_id=a tenant=t listen=x ops=y`, "", ""},
		{`listening on 127.0.0.1:1`, "", ""},
		{``, "", ""},
	} {
		if d, o := startedAddrs(tc.line); d != tc.data || o != tc.ops {
			t.Errorf("startedAddrs(%q) = %q, %q; want %q, %q", tc.line, d, o, tc.data, tc.ops)
		}
	}
}

func TestListeningOn(t *testing.T) {
	for _, tc := range []struct {
		line      string
		addr, ops string
		ok        bool
	}{
		{"listening on 127.0.0.1:4000", "127.0.0.1:4000", "", true},
		{"listening on 127.0.0.1:4000 ops 127.0.0.1:4001", "127.0.0.1:4000", "127.0.0.1:4001", true},
		{"upstream: 10 requests, 0 refused", "", "", false},
		{"listening", "", "", false},
	} {
		addr, ops, ok := listeningOn(tc.line)
		if addr != tc.addr || ops != tc.ops || ok != tc.ok {
			t.Errorf("listeningOn(%q) = %q, %q, %v; want %q, %q, %v", tc.line, addr, ops, ok, tc.addr, tc.ops, tc.ok)
		}
	}
}

func TestTargetFor(t *testing.T) {
	for n, want := range map[int]int{1: 1, 2: 10000, 10000: 10000, 10001: 100000, 100000: 100000, 500000: 100000} {
		if got := targetFor(n).tenants; got != want {
			t.Errorf("targetFor(%d) is the target of %d tenants; want %d", n, got, want)
		}
	}
}

func TestInfoField(t *testing.T) {
	info := "# Stats\r\ntotal_connections_received:3\r\ntotal_reads_processed:1234\r\n"
	if n := infoField(info, "total_reads_processed"); n != 1234 {
		t.Errorf("total_reads_processed = %d; want 1234", n)
	}
	if n := infoField(info, "process_id"); n != -1 {
		t.Errorf("absent field = %d; want -1", n)
	}
}
