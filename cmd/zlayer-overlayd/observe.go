package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/engine"
	"github.com/zlayer/zlayer-overlayd/internal/ipc"
	"github.com/zlayer/zlayer-overlayd/internal/metrics"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// observeOptions are the operator endpoints, both off by default.
type observeOptions struct {
	pprofListen   string
	metricsListen string
}

func (o *observeOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.pprofListen, "pprof-listen", "", "serve Go's pprof profiles at http://ADDR/debug/pprof/ (loopback addresses only; off by default)")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus metrics at http://ADDR/metrics (off by default)")
}

func (o *observeOptions) validate() error {
	if o.pprofListen == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(o.pprofListen)
	if err != nil {
		return fmt.Errorf("--pprof-listen %q: want host:port, e.g. 127.0.0.1:6060", o.pprofListen)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--pprof-listen %q: profiles expose the daemon's memory and must stay on this host; use a loopback address such as 127.0.0.1:6060", o.pprofListen)
	}
	return nil
}

// start starts the endpoints that are enabled and, with metrics on, wraps
// srv's handler to count requests; call it before srv serves. It returns a
// function that stops the endpoints.
func (o *observeOptions) start(log *slog.Logger, eng *engine.Engine, srv *ipc.Server, dnsCfg *engine.DNSConfig) (func(), error) {
	var servers []*http.Server
	stop := func() {
		for _, s := range servers {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			s.Shutdown(ctx)
			cancel()
		}
	}
	serve := func(what, addr string, h http.Handler) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, s)
		go func() {
			if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Warn(what+" stopped", "err", err)
			}
		}()
		log.Info(what+" listening", "addr", ln.Addr().String())
		return nil
	}
	if o.pprofListen != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		if err := serve("pprof", o.pprofListen, mux); err != nil {
			stop()
			return nil, err
		}
	}
	if o.metricsListen != "" {
		src := metrics.Sources{
			Status: func(ctx context.Context) (protocol.StatusSnapshot, error) {
				switch r := eng.Handle(ctx, protocol.Status{}).(type) {
				case protocol.StatusResult:
					return r.StatusSnapshot, nil
				case protocol.Err:
					return protocol.StatusSnapshot{}, r
				default:
					return protocol.StatusSnapshot{}, fmt.Errorf("status answered %s", r.Result())
				}
			},
			EventsDropped: srv.EventsDropped,
			ReconcileRuns: eng.ReconcileRuns,
		}
		if dnsCfg != nil && dnsCfg.Server != nil {
			src.DNS = dnsCfg.Server.Stats
		}
		reg := metrics.New(src)
		mux := http.NewServeMux()
		mux.Handle("/metrics", reg.Handler())
		if err := serve("metrics", o.metricsListen, mux); err != nil {
			stop()
			return nil, err
		}
		srv.Handler = reg.Wrap(srv.Handler)
	}
	return stop, nil
}
