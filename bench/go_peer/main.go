// The original tool's design as a benchmark peer: a round-robin balancer on Go's
// net/http/httputil.ReverseProxy, standard library only, with the original's flags
// (-backends, -port) and a periodic health check. Tuned as a user would for 50 client
// connections: an idle backend pool of 128 connections per backend (nginx's peer keeps
// `keepalive 128`). bench/targets.ts builds it with `go build` and runs it with GOMAXPROCS=1.
//
//	go run bench/go_peer/main.go -backends=http://127.0.0.1:8081,http://127.0.0.1:8082 -port=3030
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

type backend struct {
	url   *url.URL
	proxy *httputil.ReverseProxy
	alive atomic.Bool
}

func main() {
	list := flag.String("backends", "", "comma-separated backend URLs")
	port := flag.Int("port", 3030, "port to listen on")
	host := flag.String("host", "", "address to listen on (default: all)")
	flag.Parse()

	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        0, // no total cap; the per-host cap below applies
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     90 * time.Second,
	}
	var backends []*backend
	for _, raw := range strings.Split(*list, ",") {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || u.Host == "" {
			log.Fatalf("bad backend URL %q", raw)
		}
		b := &backend{url: u, proxy: httputil.NewSingleHostReverseProxy(u)}
		b.proxy.Transport = transport
		b.alive.Store(true)
		backends = append(backends, b)
		log.Printf("Configured server: %s", u)
	}
	go healthCheck(backends, 10*time.Second)

	var next atomic.Uint64
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Round-robin over the live backends: at most one full turn.
		for i := 0; i < len(backends); i++ {
			b := backends[next.Add(1)%uint64(len(backends))]
			if b.alive.Load() {
				b.proxy.ServeHTTP(w, r)
				return
			}
		}
		http.Error(w, "no backend available", http.StatusServiceUnavailable)
	})
	addr := net.JoinHostPort(*host, strconv.Itoa(*port))
	log.Printf("Load balancer started at %s", addr)
	log.Fatal((&http.Server{Addr: addr, Handler: handler}).ListenAndServe())
}

// healthCheck probes every backend with a GET of / and logs only when a state flips.
func healthCheck(backends []*backend, every time.Duration) {
	client := &http.Client{Timeout: 2 * time.Second}
	for range time.Tick(every) {
		for _, b := range backends {
			resp, err := client.Get(b.url.String())
			up := err == nil && resp.StatusCode < 500
			if err == nil {
				resp.Body.Close()
			}
			if b.alive.Swap(up) != up {
				log.Printf("%s [%s]", b.url, map[bool]string{true: "up", false: "down"}[up])
			}
		}
	}
}
