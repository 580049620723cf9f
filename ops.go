package main

import (
	"io"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"thanksio-proxy/metrics"
)

// opsRoutes returns the routes of the operations listener (OPS_ADDR):
// /metrics from reg, /healthz, readyz at /readyz, and adminAPI under
// /admin/ unless it is nil (without ADMIN_TOKEN every /admin/ path is 404).
func opsRoutes(reg prometheus.Gatherer, readyz, adminAPI http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(reg))
	mux.HandleFunc("GET /healthz", healthz)
	mux.Handle("GET /readyz", readyz)
	if adminAPI != nil {
		mux.Handle("/admin/", adminAPI)
	}
	return mux
}

// healthz answers that the process is alive; it checks nothing else.
func healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"status":"ok"}`+"\n")
}
