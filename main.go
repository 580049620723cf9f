// Command thanksio-proxy is a credential-injecting reverse proxy for the
// thanks.io API: callers name a tenant in a header, the proxy attaches that
// tenant's OAuth access token and forwards the request. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code := 1
		if ee, ok := errors.AsType[*exitError](err); ok {
			code = ee.code
		}
		os.Exit(code)
	}
}

// run starts the proxy and serves until ctx ends, then drains in-flight
// requests. With a command as its first argument it runs that command
// instead, reading only the variables the command needs: "healthcheck"
// checks a running proxy's /healthz (for container health checks),
// "caller-key" makes a caller key, "reseal" reseals the Redis store's
// records under the first encryption key, "tenants" manages the tenants of
// a running proxy through its admin API (reading tokens from stdin).
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		return serve(ctx, getenv, stdout, nil, nil)
	}
	switch args[0] {
	case "healthcheck":
		return healthcheck(ctx, getenv)
	case "caller-key":
		return newCallerKey(args[1:], stdout)
	case "reseal":
		return reseal(ctx, getenv, stdout)
	case "tenants":
		return tenantsCommand(ctx, args[1:], getenv, stdin, stdout)
	default:
		return fmt.Errorf("unknown command %q (the commands are healthcheck, caller-key, reseal and tenants)", args[0])
	}
}

// serve runs the proxy that the environment configures until ctx ends. It
// serves the data plane on data and the operations routes on ops; a nil
// listener is opened on LISTEN_ADDR or OPS_ADDR once the proxy is ready to
// serve. serve closes the listeners it was given.
func serve(ctx context.Context, getenv func(string) string, stdout io.Writer, data, ops net.Listener) (err error) {
	defer func() {
		// Run closes the listeners it serves; one that never got there is
		// closed here.
		if err != nil {
			closeListeners(data, ops)
		}
	}()
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	tuneGC(getenv)
	m, err := NewMain(ctx, cfg, stdout)
	if err != nil {
		return err
	}
	defer m.Close()
	if data == nil {
		if data, err = net.Listen("tcp", cfg.ListenAddr); err != nil {
			return fmt.Errorf("listen on LISTEN_ADDR %s: %w", cfg.ListenAddr, err)
		}
	}
	if ops == nil {
		if ops, err = net.Listen("tcp", cfg.OpsAddr); err != nil {
			return fmt.Errorf("listen on OPS_ADDR %s: %w", cfg.OpsAddr, err)
		}
	}
	return m.Run(ctx, data, ops)
}

// closeListeners closes the listeners that are not nil.
func closeListeners(lns ...net.Listener) {
	for _, ln := range lns {
		if ln != nil {
			ln.Close()
		}
	}
}
