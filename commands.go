package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"thanksio-proxy/metrics"
	"thanksio-proxy/proxy"
	"thanksio-proxy/store"
)

// healthcheck asks the proxy on OPS_ADDR whether it is alive. It reads no
// other variable: a probe runs often, and must not fail over, or reread the
// files of, the rest of the configuration.
func healthcheck(ctx context.Context, getenv func(string) string) error {
	opsAddr, err := loadOpsAddr(getenv)
	if err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(opsAddr)
	if err != nil {
		return &configError{"OPS_ADDR", "not a host:port"}
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/healthz", nil)
	if err != nil {
		return err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: /healthz answered %d", res.StatusCode)
	}
	return nil
}

// newCallerKey makes a random caller key and prints it with the line that
// allows it in the caller keys file.
func newCallerKey(args []string, stdout io.Writer) error {
	if len(args) < 2 || !proxy.ValidTenant(args[0]) {
		return errors.New("usage: thanksio-proxy caller-key NAME TENANT-PATTERN... (NAME of [A-Za-z0-9._-])")
	}
	if _, err := proxy.ParseCallerKeys(strings.NewReader(args[0] + " " + proxy.HashCallerKey("x") + " " + strings.Join(args[1:], " ") + "\n")); err != nil {
		return fmt.Errorf("caller-key: %w", err)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	key := base64.RawURLEncoding.EncodeToString(b[:])
	fmt.Fprintf(stdout, "# Give this key to the caller (shown once, not stored):\n# %s\n# Add this line to CALLER_KEYS_FILE:\n%s %s %s\n",
		key, args[0], proxy.HashCallerKey(key), strings.Join(args[1:], " "))
	return nil
}

// reseal rewrites every Redis record that is not sealed under the first
// TOKEN_ENCRYPTION_KEY, so that an old key can be retired. It reads the
// store's variables alone.
func reseal(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	cfg, err := loadStoreConfig(getenv)
	if err != nil {
		return err
	}
	if cfg.RedisURL == "" {
		return &configError{"REDIS_URL", "reseal works on the Redis store; REDIS_URL is empty"}
	}
	st, closeStore, err := openStore(ctx, cfg, metrics.New(prometheus.NewRegistry(), version), slog.New(slog.NewTextHandler(stdout, nil)))
	if err != nil {
		return err
	}
	defer closeStore()
	r := st.(*store.Redis)
	failed := 0
	n, err := r.Reseal(ctx, func(tenant string) {
		failed++
		fmt.Fprintf(stdout, "tenant %s: the record does not open with any configured key; left as it is\n", tenant)
	})
	fmt.Fprintf(stdout, "resealed %d records under the first key; %d could not be opened\n", n, failed)
	if err != nil {
		return fmt.Errorf("reseal: %w", err)
	}
	if failed > 0 {
		return fmt.Errorf("reseal: %d records could not be opened", failed)
	}
	return nil
}
