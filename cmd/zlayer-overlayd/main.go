// Command zlayer-overlayd is the per-node daemon that owns the ZLayer overlay
// network plane. This file only parses flags and wires the pieces; the work
// is done in internal/.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/engine"
	"github.com/zlayer/zlayer-overlayd/internal/ipc"
	"github.com/zlayer/zlayer-overlayd/internal/paths"
	"github.com/zlayer/zlayer-overlayd/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	dataDir   string
	socket    string
	logLevel  string
	logFormat string
	version   bool
	service   bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("zlayer-overlayd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.dataDir, "data-dir", "", "state directory (default $ZLAYER_DATA_DIR, else /var/lib/zlayer as root, ~/.zlayer otherwise)")
	fs.StringVar(&o.socket, "socket", "", "control socket (default derived from --data-dir as the ZLayer daemon expects)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.BoolVar(&o.service, "service", false, "run under the Windows Service Control Manager (ignored elsewhere)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if o.dataDir == "" {
		o.dataDir = paths.DefaultDataDir()
	}
	if o.socket == "" {
		o.socket = paths.DefaultSocket(o.dataDir)
	}
	return o, nil
}

func newLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	ho := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, ho)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "zlayer-overlayd:", err)
		return 2
	}
	if o.version {
		fmt.Fprintln(stdout, "zlayer-overlayd", version.Version)
		return 0
	}
	log, err := newLogger(o.logLevel, o.logFormat, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "zlayer-overlayd:", err)
		return 2
	}
	if err := serve(o, log); err != nil {
		log.Error("zlayer-overlayd stopped", "err", err)
		fmt.Fprintln(stderr, "zlayer-overlayd:", err)
		return 1
	}
	return 0
}

func serve(o options, log *slog.Logger) error {
	srv := &ipc.Server{Log: log, QueueDepth: 64, EventQueue: 1024}
	eng, err := engine.New(engine.Config{
		Log:           log,
		Publish:       srv.Broadcast,
		EventsDropped: srv.EventsDropped,
	})
	if err != nil {
		return err
	}
	srv.Handler = eng
	policy := ipc.DefaultPolicy()
	srv.Authorize = func(c net.Conn) error {
		caller, err := ipc.PeerCaller(c)
		if err != nil {
			return fmt.Errorf("cannot identify the caller: %w", err)
		}
		return policy.Allow(caller)
	}

	ln, err := ipc.Listen(o.socket, log)
	if err != nil {
		return err
	}
	log.Info("zlayer-overlayd serving", "version", version.Version, "socket", o.socket, "data_dir", o.dataDir, "pid", os.Getpid())

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	var cause string
	select {
	case s := <-sigs:
		cause = "signal " + s.String()
		eng.Stop()
	case <-eng.ShutdownRequested():
		cause = "shutdown request"
	case err := <-served:
		return err
	}
	log.Info("stopping", "cause", cause)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("connections did not finish in time", "err", err)
	}
	if err := <-served; err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}
