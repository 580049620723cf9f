package store

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestParseRedisURL(t *testing.T) {
	t.Run("standalone", func(t *testing.T) {
		tests := []struct {
			name                     string
			url                      string
			addr, user, password     string
			db                       int
			tls                      bool
			dialTimeout, readTimeout time.Duration
		}{
			{name: "bare", url: "redis://localhost", addr: "localhost:6379"},
			{name: "password and db", url: "redis://:s3cret@redis.internal:6380/2", addr: "redis.internal:6380", password: "s3cret", db: 2},
			{name: "user, tls, options", url: "rediss://app:s3cret@redis.internal:6380/0?dial_timeout=3&read_timeout=6s", addr: "redis.internal:6380", user: "app", password: "s3cret", tls: true, dialTimeout: 3 * time.Second, readTimeout: 6 * time.Second},
			{name: "escaped password", url: "redis://:p%40ss%2Fw@h:1", addr: "h:1", password: "p@ss/w"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				o := parseRedisURLAs(t, tt.url, "standalone").standalone
				if o.Addr != tt.addr || o.Username != tt.user || o.Password != tt.password || o.DB != tt.db || (o.TLSConfig != nil) != tt.tls {
					t.Errorf("options = addr %q user %q password %q db %d tls %v; want %q %q %q %d %v",
						o.Addr, o.Username, o.Password, o.DB, o.TLSConfig != nil, tt.addr, tt.user, tt.password, tt.db, tt.tls)
				}
				if o.DialTimeout != tt.dialTimeout || o.ReadTimeout != tt.readTimeout {
					t.Errorf("timeouts = %v, %v; want %v, %v", o.DialTimeout, o.ReadTimeout, tt.dialTimeout, tt.readTimeout)
				}
			})
		}
	})

	t.Run("cluster", func(t *testing.T) {
		tests := []struct {
			name           string
			url            string
			addrs          []string
			user, password string
			tls            bool
		}{
			{name: "one seed", url: "redis+cluster://127.0.0.1:7000", addrs: []string{"127.0.0.1:7000"}},
			{name: "seeds in the host", url: "redis+cluster://:pw@a:7000,b:7001,c", addrs: []string{"a:7000", "b:7001", "c:6379"}, password: "pw"},
			{name: "seeds as addr", url: "rediss+cluster://u:pw@a:7000/?addr=b:7001&addr=c:7002&dial_timeout=2s", addrs: []string{"a:7000", "b:7001", "c:7002"}, user: "u", password: "pw", tls: true},
			{name: "both", url: "redis+cluster://a:1,b:2?addr=c:3", addrs: []string{"a:1", "b:2", "c:3"}},
			{name: "ipv6", url: "redis+cluster://[::1]:7000,[::1]:7001", addrs: []string{"[::1]:7000", "[::1]:7001"}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				o := parseRedisURLAs(t, tt.url, "cluster").cluster
				if !slices.Equal(o.Addrs, tt.addrs) || o.Username != tt.user || o.Password != tt.password || (o.TLSConfig != nil) != tt.tls {
					t.Errorf("options = addrs %q user %q password %q tls %v; want %q %q %q %v",
						o.Addrs, o.Username, o.Password, o.TLSConfig != nil, tt.addrs, tt.user, tt.password, tt.tls)
				}
			})
		}
	})

	t.Run("sentinel", func(t *testing.T) {
		tests := []struct {
			name                           string
			url                            string
			master                         string
			sentinels                      []string
			db                             int
			user, password                 string
			sentinelUser, sentinelPassword string
			tls                            bool
		}{
			{name: "one sentinel", url: "redis+sentinel://s1/mymaster", master: "mymaster", sentinels: []string{"s1:26379"}},
			{name: "several, db, password", url: "redis+sentinel://:pw@s1:26379,s2:26380,s3/mymaster/3", master: "mymaster", sentinels: []string{"s1:26379", "s2:26380", "s3:26379"}, db: 3, password: "pw"},
			{name: "addr, tls, sentinel auth", url: "rediss+sentinel://app:pw@s1:5000/m?addr=s2:5001&sentinel_password=spw&sentinel_username=su&dial_timeout=1s", master: "m", sentinels: []string{"s1:5000", "s2:5001"}, user: "app", password: "pw", sentinelUser: "su", sentinelPassword: "spw", tls: true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				o := parseRedisURLAs(t, tt.url, "failover").failover
				if o.MasterName != tt.master || !slices.Equal(o.SentinelAddrs, tt.sentinels) || o.DB != tt.db {
					t.Errorf("options = master %q sentinels %q db %d; want %q %q %d", o.MasterName, o.SentinelAddrs, o.DB, tt.master, tt.sentinels, tt.db)
				}
				if o.Username != tt.user || o.Password != tt.password || o.SentinelUsername != tt.sentinelUser || o.SentinelPassword != tt.sentinelPassword {
					t.Errorf("credentials = %q %q, sentinel %q %q; want %q %q, sentinel %q %q",
						o.Username, o.Password, o.SentinelUsername, o.SentinelPassword, tt.user, tt.password, tt.sentinelUser, tt.sentinelPassword)
				}
				if (o.TLSConfig != nil) != tt.tls {
					t.Errorf("tls = %v; want %v", o.TLSConfig != nil, tt.tls)
				}
			})
		}
	})
}

// parseRedisURLAs parses raw, and fails t unless it parses to options of
// kind ("standalone", "cluster" or "failover") only.
func parseRedisURLAs(t *testing.T, raw, kind string) redisURLOptions {
	t.Helper()
	opts, err := parseRedisURL(raw)
	if err != nil {
		t.Fatalf("parseRedisURL: %v", err)
	}
	set := map[string]bool{"standalone": opts.standalone != nil, "cluster": opts.cluster != nil, "failover": opts.failover != nil}
	for k, isSet := range set {
		if isSet != (k == kind) {
			t.Fatalf("parseRedisURL = %+v; want %s options only", opts, kind)
		}
	}
	return opts
}

func TestParseRedisURLErrorsHideThePassword(t *testing.T) {
	const password = "Sup3rS3cret"
	tests := []struct {
		name string
		url  string
		// want is a part of the expected error.
		want string
	}{
		{name: "not a URL", url: "redis://u:" + password + "@host:port/0", want: "not a valid URL"},
		{name: "bad escape", url: "redis://u:" + password + "%zz@host/0", want: "not a valid URL"},
		{name: "unknown scheme", url: "http://u:" + password + "@host:6379", want: "scheme"},
		{name: "no scheme", url: "u:" + password + "@host:6379", want: "scheme"},
		{name: "bad db", url: "redis://u:" + password + "@host:6379/x", want: "database"},
		{name: "unknown option", url: "redis://u:" + password + "@host:6379?colour=red", want: "colour"},
		{name: "cluster with a db", url: "redis+cluster://u:" + password + "@a:1,b:2/3", want: "no path"},
		{name: "cluster with a bad port", url: "redis+cluster://u:" + password + "@a:1,b:x", want: "host 2"},
		{name: "cluster with an empty host", url: "redis+cluster://:" + password + "@a:1,,b:2", want: "host 2"},
		{name: "cluster bad addr", url: "redis+cluster://:" + password + "@a:1?addr=" + password, want: "addr"},
		{name: "sentinel without master", url: "redis+sentinel://:" + password + "@s1:26379", want: "master-name"},
		{name: "sentinel bad db", url: "redis+sentinel://:" + password + "@s1/m/x", want: "database"},
		{name: "sentinel password option", url: "redis+sentinel://s1/m?password=" + password, want: "password"},
		{name: "sentinel bad option", url: "redis+sentinel://s1/m?sentinel_password=" + password + "&pool_size=" + password, want: "pool_size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, err := parseRedisURL(tt.url)
			if err == nil {
				t.Fatalf("parseRedisURL = %+v, nil; want an error", opts)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q; want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), password) {
				t.Errorf("error = %q; it holds the password", err)
			}
			if _, err := OpenRedisURL(tt.url); err == nil || strings.Contains(err.Error(), password) {
				t.Errorf("OpenRedisURL error = %v; want an error without the password", err)
			}
		})
	}
}

func TestOpenRedisURL(t *testing.T) {
	// Opening connects to nothing, so these need no server.
	for _, raw := range []string{
		"redis://127.0.0.1:1/0",
		"redis+cluster://127.0.0.1:1,127.0.0.1:2",
		"redis+sentinel://127.0.0.1:1/mymaster",
	} {
		c, err := OpenRedisURL(raw)
		if err != nil {
			t.Errorf("OpenRedisURL(%q): %v", raw, err)
			continue
		}
		if err := c.Close(); err != nil {
			t.Errorf("Close of %q: %v", raw, err)
		}
	}
}

// TestRedisCallsHonourTheirContext checks that a call to a Redis that
// accepts connections but never answers (a hung server) gives up when its
// context ends, not after go-redis's own read timeout.
func TestRedisCallsHonourTheirContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() }) // held open, never answered
		}
	}()
	for _, raw := range []string{
		"redis://" + ln.Addr().String(),
		"redis://" + ln.Addr().String() + "?read_timeout=10s",
	} {
		c, err := OpenRedisURL(raw)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		start := time.Now()
		err = c.Ping(ctx).Err()
		took := time.Since(start)
		cancel()
		c.Close()
		if err == nil || took > time.Second {
			t.Errorf("Ping of a hung Redis (%s) with a 200 ms context = %v after %v; want an error within the context", raw, err, took.Round(time.Millisecond))
		}
	}
}

func TestOpenRedisURLTimeouts(t *testing.T) {
	tests := []struct {
		url        string
		dial, read time.Duration
	}{
		{"redis://127.0.0.1:1", defaultDialTimeout, defaultIOTimeout},
		{"redis://127.0.0.1:1?dial_timeout=7s&read_timeout=9s", 7 * time.Second, 9 * time.Second},
	}
	for _, tt := range tests {
		c, err := OpenRedisURL(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		o := c.(*redis.Client).Options()
		if !o.ContextTimeoutEnabled || o.DialTimeout != tt.dial || o.ReadTimeout != tt.read {
			t.Errorf("OpenRedisURL(%q): context timeouts %v, dial %v, read %v; want true, %v, %v",
				tt.url, o.ContextTimeoutEnabled, o.DialTimeout, o.ReadTimeout, tt.dial, tt.read)
		}
		c.Close()
	}
}
