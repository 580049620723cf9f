// Command floor is the benchmark's floor: a bare httputil.ReverseProxy that
// adds a constant Authorization header, with the proxy's transport and server
// settings and the same copy-buffer pool (see bench/internal/baseline). It
// runs until it is signalled. With -ops it also serves the Go runtime's
// Prometheus metrics there, as the proxy does on OPS_ADDR, so that the
// benchmark reads both alike (nothing of it is on the request path). Once
// it listens it prints "listening on ADDR" (and " ops ADDR"): with port 0,
// the default, that line is how its starter learns the ports.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"thanksio-proxy/bench/internal/baseline"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:0", "address to listen on (loopback)")
	ops := flag.String("ops", "", "address of the metrics listener (127.0.0.1:0: a port the kernel picks); empty: none")
	upstreamURL := flag.String("upstream", "", "upstream base URL, such as http://127.0.0.1:8081/api/v2")
	token := flag.String("token", "floor-token", "the bearer token added to every request")
	flag.Parse()
	u, err := url.Parse(*upstreamURL)
	if err != nil || u.Host == "" {
		log.Fatalf("floor: -upstream must be an absolute URL")
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	if *ops != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector())
		opsLn, err := net.Listen("tcp", *ops)
		if err != nil {
			log.Fatal(err)
		}
		go http.Serve(opsLn, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		fmt.Printf("listening on %s ops %s\n", ln.Addr(), opsLn.Addr())
	} else {
		fmt.Printf("listening on %s\n", ln.Addr())
	}
	srv := baseline.Server(baseline.New(u, *token, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, func() { _ = srv.Close() })
	_ = srv.Serve(ln)
}
