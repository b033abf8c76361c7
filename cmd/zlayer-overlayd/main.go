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
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/dns"
	"github.com/zlayer/zlayer-overlayd/internal/engine"
	"github.com/zlayer/zlayer-overlayd/internal/hugepages"
	"github.com/zlayer/zlayer-overlayd/internal/ipc"
	"github.com/zlayer/zlayer-overlayd/internal/nat"
	"github.com/zlayer/zlayer-overlayd/internal/paths"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/version"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == wg.DataplaneCommandName {
		// A detached WireGuard data plane (see internal/wg), started by a
		// daemon: not the daemon.
		os.Exit(wg.RunDataplane(os.Args[2:], os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// runService, when the platform has a service manager to run under
// (--service), runs the daemon there and returns its exit code.
var runService func(o options, stderr io.Writer) int

type options struct {
	observe observeOptions // --pprof-listen, --metrics-listen: observe.go

	dataDir   string
	socket    string
	logLevel  string
	logFormat string
	version   bool
	service   bool

	pipeAccount string
	// stop and ready connect serve to a service manager (the Windows
	// SCM): a stop request is handled exactly like SIGTERM, and ready is
	// called once requests are being served.
	stop  <-chan string
	ready func()

	wireguard     string
	dataplane     string
	maxProcs      int
	mtu           int
	slicePrefix   int
	servicePrefix int
	reconcile     time.Duration
	health        time.Duration

	dns              bool
	dnsPort          uint
	dnsMainPort      uint
	dnsNodeListeners string
	dnsZone          string
	dnsUpstreams     stringList
	dnsTTL           uint

	firewall   bool
	masquerade bool
	isolate    bool
	stun       stringList

	turnServers      stringList
	turnUsername     string
	turnPasswordFile string
	turn             []nat.TURNServer // built from the three above
	natRefresh       time.Duration
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("zlayer-overlayd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.observe.register(fs)
	fs.StringVar(&o.dataDir, "data-dir", "", "state directory (default $ZLAYER_DATA_DIR, else /var/lib/zlayer as root, ~/.zlayer otherwise)")
	fs.StringVar(&o.socket, "socket", "", "control socket (default derived from --data-dir as the ZLayer daemon expects)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.BoolVar(&o.service, "service", false, "run under the Windows Service Control Manager (ignored elsewhere)")
	fs.StringVar(&o.pipeAccount, "pipe-account", "", "Windows: the account or group that may open the pipe besides SYSTEM and Administrators (default: group zlayer when it exists); ignored elsewhere")
	fs.StringVar(&o.wireguard, "wireguard", "auto", "WireGuard backend: auto (kernel when available), kernel or userspace (embedded wireguard-go)")
	fs.StringVar(&o.dataplane, "dataplane", "process", "where userspace WireGuard devices run (Linux): process (each in a process of its own that outlives daemon restarts, so they lose no packet and keep their sessions) or daemon (inside the daemon; they die with it)")
	fs.IntVar(&o.maxProcs, "max-procs", 0, "how many CPUs may run the userspace WireGuard data path's Go code at once (GOMAXPROCS of each data plane process, or of the daemon with --dataplane daemon); 0: half the available CPUs (at least 1). The daemon itself, with the data path elsewhere, keeps the Go default. The GOMAXPROCS environment variable wins everywhere")
	fs.IntVar(&o.mtu, "mtu", 1420, "MTU of the overlay devices, bridges and container links")
	fs.IntVar(&o.slicePrefix, "slice-prefix", 0, "prefix length of a self-assigned node slice (default /28, /120 for IPv6)")
	fs.IntVar(&o.servicePrefix, "service-prefix", 0, "prefix length of a service subnet the main daemon does not assign (default /28, /120 for IPv6)")
	fs.DurationVar(&o.reconcile, "reconcile-interval", 30*time.Second, "how often the kernel is checked against the desired state")
	fs.DurationVar(&o.health, "health-interval", 5*time.Second, "how often peers' handshakes are checked for health events")
	fs.BoolVar(&o.dns, "dns", true, "serve the cluster zone (embedded DNS)")
	fs.UintVar(&o.dnsPort, "dns-port", dns.DefaultPort, "port of our DNS listener on 127.0.0.1 (0: none); the bridge gateways listen on 53")
	fs.UintVar(&o.dnsMainPort, "dns-main-port", dns.MainDaemonPort, "the ZLayer main daemon's DNS port: its DNS server binds 127.0.0.1 and the node IP on it, and the node IP on 53")
	fs.StringVar(&o.dnsNodeListeners, "dns-node-listeners", engine.NodeListenersAuto, "serve the main daemon's DNS addresses (127.0.0.1 and the node IP on --dns-main-port, the node IP on 53): auto (once the main daemon relies on our DNS: register_dns, or hello with the dns feature), on, or off")
	fs.StringVar(&o.dnsZone, "dns-zone", "", "cluster zone (default <deployment>.local, or the dns_domain the main daemon sends)")
	fs.Var(&o.dnsUpstreams, "dns-upstream", "upstream resolver ip[:port] for names outside the zone (repeatable; default: the host's resolv.conf)")
	fs.UintVar(&o.dnsTTL, "dns-ttl", 5, "TTL of the zone's records, in seconds")
	fs.BoolVar(&o.firewall, "firewall", true, "keep our nftables table (container isolation, egress masquerade, MSS clamping)")
	fs.BoolVar(&o.isolate, "isolate", true, "with --firewall: containers are reachable only through the overlay, from their bridge, from join_global containers and from the node, never from the underlay")
	fs.BoolVar(&o.masquerade, "masquerade", true, "masquerade container traffic leaving the node for outside the cluster")
	fs.Var(&o.stun, "stun-server", "STUN server host[:port] for NAT traversal from the WireGuard port (repeatable; none by default)")
	fs.Var(&o.turnServers, "turn-server", "TURN server host[:port] that relays WireGuard traffic to peers no direct path reaches (repeatable, tried in order; none by default; needs --turn-username and --turn-password-file; a setup_global_overlay with turn_servers replaces them)")
	fs.StringVar(&o.turnUsername, "turn-username", "", "username of the long-term credentials for --turn-server")
	fs.StringVar(&o.turnPasswordFile, "turn-password-file", "", "file holding the password for --turn-server (mode 0600 or stricter; one line)")
	fs.DurationVar(&o.natRefresh, "nat-refresh-interval", 60*time.Second, "how often the reflexive (STUN) address is refreshed without waiting for nat_tick; 0 disables the timer")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if err := o.observe.validate(); err != nil {
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
	if o.dnsPort > 65535 {
		return o, fmt.Errorf("--dns-port %d is not a port", o.dnsPort)
	}
	if o.dnsMainPort == 0 || o.dnsMainPort > 65535 {
		return o, fmt.Errorf("--dns-main-port %d is not a port", o.dnsMainPort)
	}
	if o.dnsPort != 0 && o.dnsPort == o.dnsMainPort {
		return o, fmt.Errorf("--dns-port %d is the main daemon's DNS port (--dns-main-port); choose another, or 0 for none", o.dnsPort)
	}
	switch o.dnsNodeListeners {
	case engine.NodeListenersAuto, engine.NodeListenersOn, engine.NodeListenersOff:
	default:
		return o, fmt.Errorf("--dns-node-listeners %q: want auto, on or off", o.dnsNodeListeners)
	}
	if o.dataplane != "process" && o.dataplane != "daemon" {
		return o, fmt.Errorf("--dataplane %q: want process or daemon", o.dataplane)
	}
	if o.maxProcs < 0 {
		return o, fmt.Errorf("--max-procs %d: want 0 (choose) or a number of CPUs", o.maxProcs)
	}
	if o.mtu < 1280 || o.mtu > 65535 {
		return o, fmt.Errorf("--mtu %d: use 1280 to 65535", o.mtu)
	}
	if o.natRefresh < 0 || (o.natRefresh > 0 && o.natRefresh < time.Second) {
		return o, fmt.Errorf("--nat-refresh-interval %v: use 0 (only on nat_tick) or at least 1s", o.natRefresh)
	}
	turn, err := turnFlags(o.turnServers, o.turnUsername, o.turnPasswordFile)
	if err != nil {
		return o, err
	}
	o.turn = turn
	return o, nil
}

// turnFlags builds the TURN servers of --turn-server, --turn-username and
// --turn-password-file. The password file must not be readable by group
// or others: the password is a secret, and so is kept out of the command
// line (where every user sees it) and out of every log.
func turnFlags(servers []string, username, passwordFile string) ([]nat.TURNServer, error) {
	if len(servers) == 0 {
		if username != "" || passwordFile != "" {
			return nil, errors.New("--turn-username and --turn-password-file need --turn-server")
		}
		return nil, nil
	}
	if username == "" || passwordFile == "" {
		return nil, errors.New("--turn-server needs --turn-username and --turn-password-file (long-term credentials)")
	}
	password, err := readSecretFile(passwordFile)
	if err != nil {
		return nil, fmt.Errorf("--turn-password-file: %w", err)
	}
	out := make([]nat.TURNServer, 0, len(servers))
	for _, s := range servers {
		t := nat.TURNServer{Address: s, Username: username, Credential: password}
		if err := t.Validate(); err != nil {
			return nil, fmt.Errorf("--turn-server: %w", err)
		}
		out = append(out, t)
	}
	return out, nil
}

// readSecretFile reads a one-line secret from a regular file of mode 0600
// or stricter.
func readSecretFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s is mode %04o; it holds a password, so group and others must have no access (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", err
	}
	secret := strings.TrimRight(string(b), "\r\n")
	if secret == "" || strings.ContainsAny(secret, "\r\n") {
		return "", fmt.Errorf("%s must hold the password on one line", path)
	}
	return secret, nil
}

// natRefresh maps the flag (0: off) to the engine's setting (negative: off).
func natRefresh(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
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
	if o.service && runService != nil {
		return runService(o, stderr)
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
	if err := hugepages.Refuse(); err != nil {
		log.Warn("transparent huge pages stay as the system sets them; memory returned after bursts may become resident again", "err", err)
	}
	st, err := store.Open(filepath.Join(o.dataDir, store.FileName), store.Options{Logger: log})
	if err != nil {
		return err
	}
	defer st.Close()

	srv := &ipc.Server{Log: log, EventQueue: 1024}
	cfg := engineConfig(o, st, srv, log)
	closers, err := platformNetwork(&cfg, o, log)
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	if err != nil {
		return err
	}
	applyMaxProcs(o.maxProcs, cfg.WG, o.dataplane == "process" && runtime.GOOS == "linux", log)
	if o.dns {
		dcfg, closeDNS, err := newDNS(o, log)
		if err != nil {
			return err
		}
		defer closeDNS()
		cfg.DNS, cfg.DNSPolicy = dcfg.cfg, dcfg.policy
	}
	// The metrics registry exists before the engine, which reports its
	// reconcile passes and firewall failures to it.
	var eng *engine.Engine
	reg := o.observe.registry(func() *engine.Engine { return eng }, srv, cfg.DNS)
	if reg != nil {
		cfg.Observer = reg
	}
	eng, err = engine.New(cfg)
	if err != nil {
		return err
	}
	defer eng.Close()
	srv.Handler = eng
	access := ipc.Access{PipeAccount: o.pipeAccount}
	if err := guardCallers(srv, access); err != nil {
		return err
	}

	ln, err := access.Listen(o.socket, log)
	if err != nil {
		return err
	}
	note := notifier{log: log}
	if err := restore(eng, st, note); err != nil {
		ln.Close()
		return err
	}
	log.Info("zlayer-overlayd serving", "version", version.Version, "socket", o.socket, "data_dir", o.dataDir, "pid", os.Getpid())
	if o.ready != nil {
		o.ready()
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	stopObserve, err := o.observe.start(log, reg, srv)
	if err != nil {
		ln.Close()
		return err
	}
	defer stopObserve()

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if s, ok := eng.Handle(context.Background(), protocol.Status{}).(protocol.StatusResult); ok {
		note.ready(s.StatusSnapshot)
	}
	stopWatchdog := make(chan struct{})
	defer close(stopWatchdog)
	go note.watchdog(eng, stopWatchdog)

	cause, err := waitForStop(eng, sigs, o.stop, served)
	if err != nil {
		return err
	}
	return shutdown(srv, served, cause, note, log)
}

// engineConfig is the engine's configuration from the command line; the
// platform's network backends and DNS are added by the caller.
func engineConfig(o options, st *store.Store, srv *ipc.Server, log *slog.Logger) engine.Config {
	return engine.Config{
		Store:               st,
		Log:                 log,
		Publish:             srv.Broadcast,
		EventsDropped:       srv.EventsDropped,
		MTU:                 o.mtu,
		SliceBits:           o.slicePrefix,
		ServiceBits:         o.servicePrefix,
		ReconcileInterval:   o.reconcile,
		HealthInterval:      o.health,
		NAT:                 &engine.NATConfig{Servers: o.stun, TURN: o.turn, RefreshInterval: natRefresh(o.natRefresh)},
		NodeConfigPath:      filepath.Join(o.dataDir, engine.NodeConfigFile),
		ReferenceMarkerPath: filepath.Join(o.dataDir, engine.ReferenceMarkerFile),
	}
}

// guardCallers makes the server refuse callers the socket's access policy
// does not admit, and marks the privileged ones: root and the daemon's own
// user may ask for what holds private keys (a backup of the state file);
// members of group zlayer may not.
func guardCallers(srv *ipc.Server, access ipc.Access) error {
	policy, err := access.Policy()
	if err != nil {
		return err
	}
	srv.Authorize = func(c net.Conn) error {
		caller, err := ipc.PeerCaller(c)
		if err != nil {
			return fmt.Errorf("cannot identify the caller: %w", err)
		}
		return policy.Allow(caller)
	}
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if caller, err := ipc.PeerCaller(c); err == nil && policy.Privileged(caller) {
			return engine.WithPrivilegedCaller(ctx)
		}
		return ctx
	}
	return nil
}

// restore puts the whole overlay back before the first request is read: the
// main daemon never sees a half-restored overlay.
func restore(eng *engine.Engine, st *store.Store, note notifier) error {
	note.status("restoring the overlay from %s", st.Path())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := eng.Start(ctx); err != nil {
		return fmt.Errorf("restore state: %w", err)
	}
	return nil
}

// waitForStop blocks until something ends the daemon and says what: a
// signal, the service manager's stop (handled exactly like SIGTERM), or a
// shutdown request. A server that stops serving ends it with an error.
func waitForStop(eng *engine.Engine, sigs <-chan os.Signal, stop <-chan string, served <-chan error) (string, error) {
	select {
	case s := <-sigs:
		eng.Stop()
		return "signal " + s.String(), nil
	case cause := <-stop:
		eng.Stop()
		return cause, nil
	case <-eng.ShutdownRequested():
		return "shutdown request", nil
	case err := <-served:
		if err == nil {
			// Serve returns nil only after Shutdown, which nothing has called yet.
			err = errors.New("the socket's server stopped on its own")
		}
		return "", err
	}
}

// shutdown lets the connections in flight finish (10 s at most) and waits
// for the server to return.
func shutdown(srv *ipc.Server, served <-chan error, cause string, note notifier, log *slog.Logger) error {
	log.Info("stopping", "cause", cause)
	note.stopping(cause)
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

type dnsSetup struct {
	cfg    *engine.DNSConfig
	policy *engine.DNSPolicy
}

// newDNS builds the embedded DNS server: upstreams from the flags or the
// host's resolv.conf (without them, names outside the zone get REFUSED).
func newDNS(o options, log *slog.Logger) (dnsSetup, func(), error) {
	var ups []netip.AddrPort
	for _, u := range o.dnsUpstreams {
		ap, err := netip.ParseAddrPort(u)
		if err != nil {
			a, aerr := netip.ParseAddr(u)
			if aerr != nil {
				return dnsSetup{}, nil, fmt.Errorf("--dns-upstream %q: want ip or ip:port", u)
			}
			ap = netip.AddrPortFrom(a, 53)
		}
		ups = append(ups, ap)
	}
	if len(ups) == 0 {
		found, err := dns.UpstreamsFromResolvConf("", "")
		if err != nil {
			log.Warn("no upstream resolvers; names outside the cluster zone will be refused", "err", err)
		}
		ups = found
	}
	policy := engine.NewDNSPolicy()
	zone := o.dnsZone
	if zone == "" {
		zone = "zlayer.local"
	}
	srv, err := dns.New(dns.Config{
		Zone:           zone,
		TTL:            uint32(o.dnsTTL),
		Upstreams:      ups,
		AllowRecursion: policy.AllowRecursion,
		Logger:         log.With("component", "dns"),
	})
	if err != nil {
		return dnsSetup{}, nil, fmt.Errorf("dns: %w", err)
	}
	return dnsSetup{
		cfg: &engine.DNSConfig{Server: srv, Zone: o.dnsZone, LoopbackPort: uint16(o.dnsPort), OverlayPort: 53,
			MainPort: uint16(o.dnsMainPort), NodeListeners: o.dnsNodeListeners},
		policy: policy,
	}, func() { srv.Close() }, nil
}
