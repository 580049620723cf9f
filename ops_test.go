package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"thanksio-proxy/internal/testutil"
	"thanksio-proxy/internal/thanksiotest"
	"thanksio-proxy/proxy"
	"thanksio-proxy/store"
)

func TestMetricsAndLogsAfterRealTraffic(t *testing.T) {
	// The encryption key is set here, to look for it in the logs later.
	env := map[string]string{"REFRESH_AHEAD": "90m", "LOG_FORMAT": "json", "TOKEN_ENCRYPTION_KEY": randomKey(t)}
	// acme is due: its first call starts a refresh that succeeds.
	double, p, acme := startWithDueToken(t, env, 3*time.Hour)
	if code, _, _ := p.call(t, "acme", "/ping"); code != 200 {
		t.Fatalf("acme: %d", code)
	}
	testutil.Eventually(t, "acme's refresh lands", func() bool { return strings.Contains(mustStatus(t, p, "acme"), "last_refresh") })

	// The current token is revoked at thanks.io: the next call is replayed.
	current, ok := double.CurrentToken(acme.AccessToken)
	if !ok || current.AccessToken == acme.AccessToken {
		t.Fatal("the double knows no refreshed token for acme")
	}
	testutil.Eventually(t, "the proxy sends the refreshed token", func() bool {
		p.call(t, "acme", "/ping")
		reqs := double.APIRequests()
		return reqs[len(reqs)-1].Token == current.AccessToken
	})
	double.RevokeAccess(current.AccessToken)
	if code, _, body := p.call(t, "acme", "/orders/list"); code != 200 {
		t.Fatalf("acme after its token was revoked: %d %s; want 200 after a replay\n%s", code, body, p.logs)
	}

	// broken's token has expired and the token endpoint fails.
	broken := double.NewGrant()
	p.importToken(t, "broken", broken, 0)
	double.SetTokenFault(thanksiotest.TokenFault{Status: 500})
	if code, h, _ := p.call(t, "broken", "/ping"); code != 503 || h.Get("X-Thanksio-Proxy-Error") != "token_unavailable" {
		t.Errorf("broken: %d; want 503 token_unavailable", code)
	}
	double.SetTokenFault(thanksiotest.TokenFault{})

	// revoked's refresh token was revoked.
	revoked := double.NewGrant()
	p.importToken(t, "revoked", revoked, 0)
	double.Revoke(revoked.RefreshToken)
	if code, h, _ := p.call(t, "revoked", "/ping"); code != 401 || h.Get("X-Thanksio-Proxy-Error") != "reauthorization_required" {
		t.Errorf("revoked: %d; want 401 reauthorization_required", code)
	}
	p.call(t, "nobody", "/ping")

	// The tenants gauge is read from the store in the background, started
	// by a scrape that finds it old: the next scrapes show it.
	var exposition string
	var samples map[string]float64
	testutil.Eventually(t, "/metrics shows the tenants by state", func() bool {
		var code int
		code, _, exposition = do(t, http.MethodGet, p.ops+"/metrics", nil, "")
		if code != 200 {
			return false
		}
		samples = testutil.MetricSamples(t, exposition)
		v, ok := samples[`thanksio_proxy_tenants{state="active"}`]
		return ok && v == 2
	})
	testutil.LintMetrics(t, exposition)
	// Exact where the traffic fixes the number; at least where a refresh
	// racing a request can add a replay.
	for _, want := range []struct {
		sample   string
		min, max float64
	}{
		{`thanksio_proxy_requests_total{code="200",method="GET"}`, 3, 100},
		{`thanksio_proxy_requests_total{code="503",method="GET"}`, 1, 1},
		{`thanksio_proxy_requests_total{code="401",method="GET"}`, 2, 2},
		{`thanksio_proxy_request_duration_seconds_count{method="GET"}`, 6, 100},
		{`thanksio_proxy_upstream_responses_total{code="401"}`, 1, 100},
		{`thanksio_proxy_upstream_duration_seconds_count`, 4, 100},
		{`thanksio_proxy_replays_total`, 1, 100},
		{`thanksio_proxy_refreshes_total{result="success"}`, 2, 2},
		{`thanksio_proxy_refreshes_total{result="error"}`, 1, 1},
		{`thanksio_proxy_refreshes_total{result="revoked"}`, 1, 1},
		{`thanksio_proxy_refreshes_total{result="lost_race"}`, 0, 0},
		{`thanksio_proxy_refresh_lock_waits_total{result="acquired"}`, 4, 8},
		{`thanksio_proxy_refresh_duration_seconds_count{result="success"}`, 2, 2},
		{`thanksio_proxy_token_lookups_total{layer="store",result="miss"}`, 1, 1},
		{`thanksio_proxy_token_lookups_total{layer="memory",result="hit"}`, 1, 100},
		{`thanksio_proxy_token_time_left_seconds_count`, 3, 100},
		{`thanksio_proxy_errors_total{code="unknown_tenant"}`, 1, 1},
		{`thanksio_proxy_errors_total{code="token_unavailable"}`, 1, 1},
		{`thanksio_proxy_errors_total{code="reauthorization_required"}`, 1, 1},
		{`thanksio_proxy_errors_total{code="invalid_path"}`, 0, 0},
		{`thanksio_proxy_requests_in_flight`, 0, 0},
		{`thanksio_proxy_cache_entries`, 1, 100},
		{`thanksio_proxy_replay_memory_bytes`, 0, 0},
		{`thanksio_proxy_tenants{state="active"}`, 2, 2},
		{`thanksio_proxy_tenants{state="reauthorization_required"}`, 1, 1},
		{`process_cpu_seconds_total`, 0, 1e6},
		{`go_goroutines`, 1, 1e6},
	} {
		v, ok := samples[want.sample]
		if !ok || v < want.min || v > want.max {
			t.Errorf("%s = %v (present: %v); want %v to %v", want.sample, v, ok, want.min, want.max)
		}
	}
	if !strings.Contains(exposition, "thanksio_proxy_build_info{") {
		t.Errorf("metrics lack build info")
	}
	if strings.Contains(exposition, `tenant="`) {
		t.Errorf("a metric carries a tenant label")
	}

	// No secret in any log line: every token the double issued or was sent,
	// the client secret, the admin token and the encryption key.
	logs := p.logs.String()
	secrets := []string{thanksiotest.DefaultClientSecret, testAdminToken, env["TOKEN_ENCRYPTION_KEY"], "caller-own-token"}
	for _, g := range []thanksiotest.Token{acme, broken, revoked} {
		secrets = append(secrets, g.AccessToken, g.RefreshToken)
	}
	for _, r := range double.APIRequests() {
		secrets = append(secrets, r.Token)
	}
	for _, r := range double.TokenRequests() {
		secrets = append(secrets, r.Form.Get("refresh_token"))
	}
	secretsAbsent(t, "the logs", logs, secrets...)
	for _, want := range []string{`"msg":"request"`, `"request_id":`, `"tenant":"acme"`, `"replayed":true`, `"upstream_duration":`, `"msg":"token refreshed"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the logs lack %s", want)
		}
	}
}

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// buildBinary builds the proxy once for the tests that run it as a process.
func buildBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "thanksio-proxy-bin")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "thanksio-proxy")
		out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("go build: %v", buildErr)
	}
	return binary
}

func TestSIGTERMDrainsInFlightRequests(t *testing.T) {
	bin := buildBinary(t)
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	release := make(chan struct{})
	double.HandleAPI("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		<-release
		_, _ = w.Write([]byte(`{"slow":true}`))
	})
	env := redisEnv(t)
	env["LISTEN_ADDR"] = "127.0.0.1:0"
	env["OPS_ADDR"] = "127.0.0.1:0"
	env["ADMIN_TOKEN"] = testAdminToken
	env["UPSTREAM_URL"] = double.APIURL()
	env["OAUTH_TOKEN_URL"] = double.TokenURL()
	env["OAUTH_CLIENT_ID"] = double.ClientID()
	env["OAUTH_CLIENT_SECRET"] = double.ClientSecret()
	env["REFRESH_TIMEOUT"] = "2s"
	env["SHUTDOWN_TIMEOUT"] = "20s"

	cmd := exec.Command(bin)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		defer close(exited)
		waitErr = cmd.Wait()
	}()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	var dataAddr, opsAddr string
	if _, ok := logs.waitLine(t, "the proxy logs that it started", exited, func(line string) bool {
		dataAddr, opsAddr = startedAddrs(line)
		return dataAddr != "" && opsAddr != ""
	}); !ok {
		t.Fatalf("the proxy exited at start: %v\n%s", waitErr, logs)
	}
	p := &instance{data: "http://" + dataAddr, ops: "http://" + opsAddr, logs: logs}
	if code, _, body := do(t, http.MethodGet, p.ops+"/readyz", nil, ""); code != http.StatusOK {
		t.Fatalf("/readyz after the start: %d %s; want 200", code, body)
	}
	p.importToken(t, "acme", double.NewGrant(), 3600)
	stale := double.NewGrant()
	p.importToken(t, "stale", stale, 0)

	// Five slow requests in flight, and one waiting on a refresh that holds
	// the refresh lock at a stalled token endpoint.
	stall := make(chan struct{})
	defer close(stall)
	double.SetTokenFault(thanksiotest.TokenFault{Stall: stall})
	results := make(chan int, 6)
	for range 5 {
		go func() {
			code, _, _ := p.call(t, "acme", "/slow")
			results <- code
		}()
	}
	go func() {
		code, _, _ := p.call(t, "stale", "/ping")
		results <- code
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := double.WaitAPIRequests(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if err := double.WaitTokenCalls(ctx, 1); err != nil {
		t.Fatal(err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "readiness goes false", func() bool {
		res, err := http.Get(p.ops + "/readyz")
		if err != nil {
			return true // the ops listener closed: not ready either
		}
		res.Body.Close()
		return res.StatusCode == http.StatusServiceUnavailable
	})
	testutil.Eventually(t, "new connections are refused", func() bool {
		c, err := net.DialTimeout("tcp", dataAddr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	close(release)
	codes := map[int]int{}
	for range 6 {
		codes[<-results]++
	}
	// The five slow requests complete; the caller of the stalled refresh
	// is told to retry when the refresh times out.
	if codes[http.StatusOK] != 5 || codes[http.StatusServiceUnavailable] != 1 {
		t.Errorf("in-flight requests ended with %v; want 5 × 200 and 1 × 503", codes)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("the proxy exited with %v; want 0\n%s", waitErr, logs)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the proxy did not exit after SIGTERM\n%s", logs)
	}
	if !strings.Contains(logs.String(), "shutting down") || !strings.Contains(logs.String(), "stopped") {
		t.Errorf("the logs do not record the shutdown:\n%s", logs)
	}

	// The refresh lock was released, not left to expire (its lease is 10s).
	client, err := store.OpenRedisURL(env["REDIS_URL"])
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	keys, _ := store.ParseKeys(env["TOKEN_ENCRYPTION_KEY"])
	sealer, _ := store.NewSealer(keys)
	st := store.NewRedis(client, env["REDIS_KEY_PREFIX"], sealer)
	if ok, err := st.TryLock(t.Context(), "stale", "test", time.Second); err != nil || !ok {
		t.Errorf("the refresh lock of the stalled refresh is still held after exit (%v)", err)
	}
}

func TestEncryptionKeyRotation(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	env := redisEnv(t)
	oldKey, newKey := env["TOKEN_ENCRYPTION_KEY"], randomKey(t)
	tenants := []string{"acme", "globex", "initech"}
	importAndStop(t, double, env, tenants...)

	// New key first, old second: every tenant keeps working.
	env["TOKEN_ENCRYPTION_KEY"] = newKey + "," + oldKey
	both := start(t, double, env)
	for _, tenant := range tenants {
		if code, _, body := both.call(t, tenant, "/ping"); code != http.StatusOK {
			t.Errorf("%s with keys new,old: %d %s", tenant, code, body)
		}
	}
	both.stop()

	// The documented command re-seals every record under the new key.
	var out syncBuffer
	if err := run(t.Context(), []string{"reseal"}, func(k string) string { return env[k] }, nil, &out); err != nil {
		t.Fatalf("reseal: %v\n%s", err, &out)
	}
	if !strings.Contains(out.String(), "resealed 3 records") {
		t.Errorf("reseal said %q; want 3 records resealed", out.String())
	}

	// The old key can go.
	env["TOKEN_ENCRYPTION_KEY"] = newKey
	only := start(t, double, env)
	for _, tenant := range tenants {
		if code, _, body := only.call(t, tenant, "/ping"); code != http.StatusOK {
			t.Errorf("%s with the new key only, after reseal: %d %s", tenant, code, body)
		}
	}
}

func TestReadinessWithTheStoreDown(t *testing.T) {
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprintf("READY_REQUIRES_STORE=%v", strict), func(t *testing.T) {
			m := miniredis.RunT(t)
			env := redisEnv(t)
			env["REDIS_URL"] = "redis://" + m.Addr()
			env["READY_REQUIRES_STORE"] = strconv.FormatBool(strict)
			p := start(t, nil, env)
			if code, _, body := do(t, http.MethodGet, p.ops+"/readyz", nil, ""); code != 200 || !strings.Contains(body, `"store":"ok"`) {
				t.Fatalf("/readyz with the store up: %d %s", code, body)
			}
			m.Close()
			want := http.StatusOK
			if strict {
				want = http.StatusServiceUnavailable
			}
			// The store is checked in the background, every second.
			testutil.Eventually(t, "/readyz says the store is unreachable", func() bool {
				_, _, body := do(t, http.MethodGet, p.ops+"/readyz", nil, "")
				return strings.Contains(body, `"store":"unreachable"`)
			})
			code, _, body := do(t, http.MethodGet, p.ops+"/readyz", nil, "")
			if code != want || !strings.Contains(body, `"store":"unreachable"`) {
				t.Errorf("/readyz with the store down: %d %s; want %d saying the store is unreachable", code, body, want)
			}
			if code, _, _ := do(t, http.MethodGet, p.ops+"/healthz", nil, ""); code != 200 {
				t.Errorf("/healthz with the store down: %d; want 200", code)
			}
		})
	}
}

func TestHealthcheckCommand(t *testing.T) {
	p := start(t, nil, nil)
	ops := strings.TrimPrefix(p.ops, "http://")
	if err := run(t.Context(), []string{"healthcheck"}, func(k string) string {
		return map[string]string{"OPS_ADDR": ops}[k]
	}, nil, io.Discard); err != nil {
		t.Errorf("healthcheck of a running proxy: %v", err)
	}
	dead := refusingAddr(t)
	if err := run(t.Context(), []string{"healthcheck"}, func(k string) string {
		return map[string]string{"OPS_ADDR": dead}[k]
	}, nil, io.Discard); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("healthcheck of nothing listening: %v; want connection refused", err)
	}
	if err := run(t.Context(), []string{"frobnicate"}, func(string) string { return "" }, nil, io.Discard); err == nil || !strings.Contains(err.Error(), "healthcheck") {
		t.Errorf("an unknown command: %v; want an error listing the commands", err)
	}
}

// TestCommandsReadOnlyTheirVariables checks that a command reads only the
// variables it needs: a configuration the proxy would refuse elsewhere
// does not fail a health probe, and no probe reads CALLER_KEYS_FILE.
func TestCommandsReadOnlyTheirVariables(t *testing.T) {
	p := start(t, nil, nil)
	broken := map[string]string{
		"OPS_ADDR":         strings.TrimPrefix(p.ops, "http://"),
		"CALLER_KEYS_FILE": "/nonexistent/callers",
		"UPSTREAM_URL":     "api.thanks.io",
		"REFRESH_AHEAD":    "soon",
		"LOG_FORMAT":       "xml",
	}
	getenv := func(k string) string { return broken[k] }
	if err := run(t.Context(), []string{"healthcheck"}, getenv, nil, io.Discard); err != nil {
		t.Errorf("healthcheck with the rest of the configuration broken: %v; want nil", err)
	}
	if err := run(t.Context(), []string{"caller-key", "billing", "acme"}, getenv, nil, io.Discard); err != nil {
		t.Errorf("caller-key with the configuration broken: %v; want nil", err)
	}
	if err := run(t.Context(), []string{"reseal"}, getenv, nil, io.Discard); err == nil || !strings.Contains(err.Error(), "REDIS_URL") {
		t.Errorf("reseal without REDIS_URL, the rest broken: %v; want the error naming REDIS_URL", err)
	}
	broken["OPS_ADDR"] = "nowhere"
	if err := run(t.Context(), []string{"healthcheck"}, getenv, nil, io.Discard); err == nil || !strings.Contains(err.Error(), "OPS_ADDR") {
		t.Errorf("healthcheck with OPS_ADDR %q: %v; want the error naming OPS_ADDR", broken["OPS_ADDR"], err)
	}
}

// refusingAddr returns a loopback address that refuses connections for the
// rest of the test. A socket bound to its port, and never listening, holds
// the port: no listener can bind it and no outgoing connection is given it,
// so a connection is refused for certain. (A port taken from a listener that
// was then closed is free for anyone to take again; a listener that closes
// what it accepts would test a proxy that hangs up, not one that is absent.)
func refusingAddr(t *testing.T) string {
	t.Helper()
	syscall.ForkLock.RLock() // so that no child started meanwhile inherits it
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
}

func TestCallerKeyCommand(t *testing.T) {
	var out syncBuffer
	if err := run(t.Context(), []string{"caller-key", "billing", "acme", "eu-*"}, func(string) string { return "" }, nil, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	key := strings.TrimPrefix(lines[1], "# ")
	entry := lines[len(lines)-1]
	if !strings.HasPrefix(entry, "billing "+proxy.HashCallerKey(key)+" acme eu-*") || len(key) < 40 {
		t.Errorf("caller-key printed key %q and line %q; want a long key and its hash with the patterns", key, entry)
	}
	if err := run(t.Context(), []string{"caller-key", "billing", "ac/me"}, func(string) string { return "" }, nil, io.Discard); err == nil {
		t.Errorf("caller-key with a bad pattern: nil; want an error")
	}
}

func TestRedisUserWithoutChannelPermission(t *testing.T) {
	redis := testutil.StartRedis(t)
	// A Redis 7 user with every command and key but no channel, as
	// acl-pubsub-default resetchannels makes by default.
	if err := redis.Client().Do(t.Context(), "ACL", "SETUSER", "proxy", "on", ">secret", "~*", "+@all", "resetchannels").Err(); err != nil {
		t.Fatal(err)
	}
	env := redisEnv(t)
	env["REDIS_URL"] = strings.Replace(redis.URL(), "redis://", "redis://proxy:secret@", 1)

	err := run(t.Context(), nil, func(k string) string { return env[k] }, nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "REDIS_URL") || !strings.Contains(err.Error(), "NOPERM") ||
		!strings.Contains(err.Error(), "REDIS_REQUIRE_PUBSUB") || strings.Contains(err.Error(), "secret") {
		t.Fatalf("run with a user that may not PUBLISH = %v; want one line naming REDIS_URL, NOPERM and REDIS_REQUIRE_PUBSUB, without the password", err)
	}

	env["REDIS_REQUIRE_PUBSUB"] = "false"
	p := start(t, nil, env)
	testutil.Eventually(t, "/readyz reports invalidations down", func() bool {
		code, _, body := do(t, http.MethodGet, p.ops+"/readyz", nil, "")
		return code == http.StatusOK && strings.Contains(body, `"invalidations":"down"`)
	})
	_, _, metricsText := do(t, http.MethodGet, p.ops+"/metrics", nil, "")
	if v, ok := testutil.MetricSamples(t, metricsText)["thanksio_proxy_invalidations_subscribed"]; !ok || v != 0 {
		t.Errorf("thanksio_proxy_invalidations_subscribed = %v (found %v); want 0", v, ok)
	}
	if !strings.Contains(p.logs.String(), "invalidations do not reach this replica") {
		t.Errorf("no warning that invalidations do not reach the replica; logs:\n%s", p.logs)
	}
}

func TestReadinessReportsInvalidations(t *testing.T) {
	p := start(t, nil, nil)
	if code, _, body := do(t, http.MethodGet, p.ops+"/readyz", nil, ""); code != 200 || !strings.Contains(body, `"invalidations":"subscribed"`) {
		t.Errorf("/readyz with the memory store = %d %s; want invalidations subscribed", code, body)
	}
}

func TestNotReadyUntilTheStoreAnswered(t *testing.T) {
	redis := testutil.StartRedis(t)
	if err := redis.Client().ConfigSet(t.Context(), "requirepass", "right").Err(); err != nil {
		t.Fatal(err)
	}
	env := redisEnv(t)
	env["REDIS_URL"] = strings.Replace(redis.URL(), "redis://", "redis://:wrong@", 1)
	p := start(t, nil, env)
	code, _, body := do(t, http.MethodGet, p.ops+"/readyz", nil, "")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"store":"unreachable"`) {
		t.Errorf("/readyz with a wrong Redis password = %d %s; want 503: a broken rollout must not complete", code, body)
	}
	if !strings.Contains(p.logs.String(), "WRONGPASS") {
		t.Errorf("the refused AUTH is not logged as what it is; logs:\n%s", p.logs)
	}
	if strings.Contains(p.logs.String(), "wrong@") {
		t.Errorf("the logs hold the Redis password")
	}
}

func TestProbesAnswerWhileRedisHangs(t *testing.T) {
	redis := testutil.StartRedis(t)
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	env := redisEnv(t)
	env["REDIS_URL"] = redis.URL()
	p := start(t, double, env)
	g := double.NewGrant()
	p.importToken(t, "acme", g, 3600)
	if code, _, _ := do(t, http.MethodGet, p.data+"/ping", map[string]string{"X-Tenant-ID": "acme"}, ""); code != 200 {
		t.Fatalf("warming: %d", code)
	}

	redis.Pause() // SIGSTOP: connections stay open, nothing answers
	t.Cleanup(redis.Resume)
	for range 3 {
		start := time.Now()
		code, _, body := do(t, http.MethodGet, p.ops+"/readyz", nil, "")
		if took := time.Since(start); took > time.Second || code != http.StatusOK {
			t.Errorf("/readyz with Redis hung = %d %s after %v; want 200 within 1 s", code, body, took.Round(time.Millisecond))
		}
		start = time.Now()
		code, _, _ = do(t, http.MethodGet, p.data+"/ping", map[string]string{"X-Tenant-ID": "acme"}, "")
		if took := time.Since(start); took > time.Second || code != http.StatusOK {
			t.Errorf("a cached tenant's call with Redis hung = %d after %v; want 200 at once", code, took.Round(time.Millisecond))
		}
	}
	testutil.Eventually(t, "/readyz says the store is unreachable", func() bool {
		_, _, body := do(t, http.MethodGet, p.ops+"/readyz", nil, "")
		return strings.Contains(body, `"store":"unreachable"`)
	})
}

// TestEncryptionKeyRolloutKeepsEveryReplicaReading plays the documented
// two-phase rollout with two replicas, one a step behind the other at each
// moment, and checks that each opens what the other wrote.
func TestEncryptionKeyRolloutKeepsEveryReplicaReading(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	env := redisEnv(t)
	oldKey, newKey := env["TOKEN_ENCRYPTION_KEY"], randomKey(t)
	with := func(keys string) map[string]string {
		e := maps.Clone(env)
		e["TOKEN_ENCRYPTION_KEY"] = keys
		return e
	}
	steps := []struct {
		name             string
		updated, pending string // the keys of a replica already updated, and of one not yet
	}{
		{"step 2: old,new beside old", oldKey + "," + newKey, oldKey},
		{"step 3: new,old beside old,new", newKey + "," + oldKey, oldKey + "," + newKey},
		{"step 5: new beside new,old, after reseal", newKey, newKey + "," + oldKey},
	}
	for i, step := range steps {
		if i == 2 {
			var out syncBuffer
			if err := run(t.Context(), []string{"reseal"}, func(k string) string { return with(newKey + "," + oldKey)[k] }, nil, &out); err != nil {
				t.Fatalf("reseal: %v\n%s", err, &out)
			}
		}
		updated, pending := start(t, double, with(step.updated)), start(t, double, with(step.pending))
		tenant := fmt.Sprintf("tenant-%d", i)
		updated.importToken(t, tenant, double.NewGrant(), 3600)
		pending.importToken(t, tenant+"-b", double.NewGrant(), 3600)
		for _, p := range []*instance{updated, pending} {
			for _, tn := range []string{tenant, tenant + "-b"} {
				if code, _, body := p.call(t, tn, "/ping"); code != http.StatusOK {
					t.Errorf("%s: %s: %d %s; want every replica to open every record", step.name, tn, code, body)
				}
			}
		}
		updated.stop()
		pending.stop()
	}

	// The step the rollout must not skip: new,old beside old.
	ahead, behind := start(t, double, with(newKey+","+oldKey)), start(t, double, with(oldKey))
	ahead.importToken(t, "skipped", double.NewGrant(), 3600)
	if code, h, _ := behind.call(t, "skipped", "/ping"); code != http.StatusServiceUnavailable || h.Get("X-Thanksio-Proxy-Error") != "token_unavailable" {
		t.Errorf("old beside new,old: %d %s; want 503 token_unavailable (why step 2 comes first)", code, h.Get("X-Thanksio-Proxy-Error"))
	}
}

func TestCallerHangUpIsNotAnUpstreamError(t *testing.T) {
	double := thanksiotest.NewServer(t, thanksiotest.Options{})
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	double.HandleAPI("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusOK)
	})
	t.Cleanup(func() { close(release) })
	p := start(t, double, nil)
	g := double.NewGrant()
	p.importToken(t, "acme", g, 3600)

	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.data+"/slow", nil)
	req.Header.Set("X-Tenant-ID", "acme")
	done := make(chan error, 1)
	go func() {
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
		}
		done <- err
	}()
	<-arrived // thanks.io has the request; the caller hangs up
	cancel()
	<-done
	testutil.Eventually(t, "the hang-up is counted as canceled", func() bool {
		_, _, text := do(t, http.MethodGet, p.ops+"/metrics", nil, "")
		v, ok := testutil.MetricSamples(t, text)[`thanksio_proxy_upstream_responses_total{code="canceled"}`]
		return ok && v == 1
	})
	_, _, text := do(t, http.MethodGet, p.ops+"/metrics", nil, "")
	samples := testutil.MetricSamples(t, text)
	if v, ok := samples[`thanksio_proxy_upstream_responses_total{code="error"}`]; ok && v != 0 {
		t.Errorf(`upstream_responses_total{code="error"} = %v after a caller hung up; want 0 (thanks.io did not fail)`, v)
	}
	if v := samples[`thanksio_proxy_errors_total{code="client_closed_request"}`]; v != 1 {
		t.Errorf(`errors_total{code="client_closed_request"} = %v; want 1`, v)
	}
	if v := samples[`thanksio_proxy_errors_total{code="token_unavailable"}`]; v != 0 {
		t.Errorf(`errors_total{code="token_unavailable"} = %v; want 0`, v)
	}
}
