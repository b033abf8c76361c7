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
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/engine"
	"github.com/zlayer/zlayer-overlayd/internal/ipc"
	"github.com/zlayer/zlayer-overlayd/internal/metrics"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// observeOptions are the operator endpoints, both off by default.
type observeOptions struct {
	pprofListen      string
	metricsListen    string
	metricsPeerLimit int
}

func (o *observeOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.pprofListen, "pprof-listen", "", "serve Go's pprof profiles at /debug/pprof/ to root and the daemon's user only: unix:PATH (a 0600 socket) or, on Linux, a loopback host:port; off by default")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus metrics at http://ADDR/metrics (off by default)")
	fs.IntVar(&o.metricsPeerLimit, "metrics-peer-limit", metrics.DefaultPeerLimit, "how many WireGuard peers get metric series of their own (traffic, handshake age, health); the rest are counted in zlayer_overlayd_peer_series_omitted. 0: none")
}

// pprofUnixPrefix marks a --pprof-listen that is a Unix socket path.
const pprofUnixPrefix = "unix:"

func (o *observeOptions) validate() error {
	if o.metricsPeerLimit < 0 {
		return fmt.Errorf("--metrics-peer-limit %d: want 0 or more", o.metricsPeerLimit)
	}
	if o.pprofListen == "" {
		return nil
	}
	if path, ok := strings.CutPrefix(o.pprofListen, pprofUnixPrefix); ok {
		if !pprofUnixSupported {
			return fmt.Errorf("--pprof-listen %q: this platform has no Unix socket whose callers the daemon can identify; profiles are not served here", o.pprofListen)
		}
		if !filepath.IsAbs(path) {
			return fmt.Errorf("--pprof-listen %q: give an absolute socket path, e.g. unix:/run/zlayer-overlayd-pprof.sock", o.pprofListen)
		}
		return nil
	}
	host, _, err := net.SplitHostPort(o.pprofListen)
	if err != nil {
		return fmt.Errorf("--pprof-listen %q: want unix:PATH or host:port, e.g. unix:/run/zlayer-overlayd-pprof.sock or 127.0.0.1:6060", o.pprofListen)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--pprof-listen %q: profiles expose the daemon's memory and must stay on this host; use unix:PATH or a loopback address such as 127.0.0.1:6060", o.pprofListen)
	}
	if !tcpPeerUIDSupported {
		return fmt.Errorf("--pprof-listen %q: on this platform the daemon cannot tell which user opened a TCP connection, and profiles are for root only; use unix:PATH", o.pprofListen)
	}
	return nil
}

// pprofCaller is the context key of the uid that opened a connection to
// the pprof endpoint (or the error finding it).
type pprofCaller struct{}

type pprofPeer struct {
	uid uint32
	err error
}

// rootOnly serves h to root and the daemon's own user; profiles hold the
// daemon's memory, including private keys. Every other local user gets
// 403, on TCP too, where any local process can connect.
func rootOnly(h http.Handler) http.Handler {
	self := uint32(os.Geteuid())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _ := r.Context().Value(pprofCaller{}).(pprofPeer)
		if p.err != nil {
			http.Error(w, "cannot tell which user opened this connection: "+p.err.Error(), http.StatusForbidden)
			return
		}
		if p.uid != 0 && p.uid != self {
			http.Error(w, fmt.Sprintf("profiles are for root and uid %d only; this connection is uid %d's", self, p.uid), http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// connPeer finds who opened a connection to the pprof endpoint.
func connPeer(c net.Conn) pprofPeer {
	switch c.(type) {
	case *net.UnixConn:
		uid, err := unixPeerUID(c)
		return pprofPeer{uid: uid, err: err}
	case *net.TCPConn:
		uid, err := tcpPeerUID(c)
		return pprofPeer{uid: uid, err: err}
	}
	return pprofPeer{err: fmt.Errorf("unexpected connection %T", c)}
}

// listenPprof binds the pprof endpoint: a Unix socket made 0600 before
// anyone can connect, or a loopback TCP port.
func listenPprof(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, pprofUnixPrefix)
	if !ok {
		return net.Listen("tcp", addr)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
		}
		if c, err := net.DialTimeout("unix", path, 500*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("something is serving %s already", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	ln, err := listenUnixPrivate(path)
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	return ln, nil
}

// registry builds the metrics registry when --metrics-listen is set (nil
// otherwise), before the engine exists, so the engine can report its
// reconcile passes to it; eng is read at scrape time, once it is set.
func (o *observeOptions) registry(eng func() *engine.Engine, srv *ipc.Server, dnsCfg *engine.DNSConfig) *metrics.Registry {
	if o.metricsListen == "" {
		return nil
	}
	src := metrics.Sources{
		Status: func(ctx context.Context) (protocol.StatusSnapshot, error) {
			e := eng()
			if e == nil {
				return protocol.StatusSnapshot{}, errors.New("the engine is not running yet")
			}
			switch r := e.Handle(ctx, protocol.Status{}).(type) {
			case protocol.StatusResult:
				return r.StatusSnapshot, nil
			case protocol.Err:
				return protocol.StatusSnapshot{}, r
			default:
				return protocol.StatusSnapshot{}, fmt.Errorf("status answered %s", r.Result())
			}
		},
		EventsDropped: srv.EventsDropped,
		ReconcileRuns: func() uint64 {
			if e := eng(); e != nil {
				return e.ReconcileRuns()
			}
			return 0
		},
		PeerLimit: o.metricsPeerLimit,
	}
	if src.PeerLimit == 0 {
		src.PeerLimit = -1 // the flag's 0 means none; Sources' 0 means the default
	}
	if dnsCfg != nil && dnsCfg.Server != nil {
		src.DNS = dnsCfg.Server.Stats
	}
	return metrics.New(src)
}

// start starts the endpoints that are enabled and, with metrics on (reg
// not nil), wraps srv's handler to count requests; call it before srv
// serves. It returns a function that stops the endpoints.
func (o *observeOptions) start(log *slog.Logger, reg *metrics.Registry, srv *ipc.Server) (func(), error) {
	var servers []*http.Server
	stop := func() {
		for _, s := range servers {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			s.Shutdown(ctx)
			cancel()
		}
	}
	serve := func(what string, ln net.Listener, err error, h http.Handler, connContext func(context.Context, net.Conn) context.Context) error {
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ConnContext: connContext}
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
		ln, err := listenPprof(o.pprofListen)
		// Who connected is looked up once per connection, while it is
		// certainly still open.
		identify := func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, pprofCaller{}, connPeer(c))
		}
		if err := serve("pprof", ln, err, rootOnly(mux), identify); err != nil {
			stop()
			return nil, err
		}
	}
	if reg != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", reg.Handler())
		ln, err := net.Listen("tcp", o.metricsListen)
		if err := serve("metrics", ln, err, mux, nil); err != nil {
			stop()
			return nil, err
		}
		srv.Handler = reg.Wrap(srv.Handler)
	}
	return stop, nil
}
