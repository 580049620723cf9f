// Command upstream is the benchmark's stand-in for the thanks.io API: a fast
// HTTP/1.1 server answering a small JSON document (see
// bench/internal/upstream). It prints "listening on ADDR" once ready and runs
// until it is signalled.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"thanksio-proxy/bench/internal/upstream"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:0", "address to listen on (loopback)")
	flag.Parse()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	var s upstream.Server
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, func() { _ = ln.Close() })
	_ = s.Serve(ln)
	fmt.Fprintf(os.Stderr, "upstream: %d requests, %d refused\n", s.Requests.Load(), s.Refused.Load())
}
