package wg

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/zlayer/zlayer-overlayd/internal/hugepages"
)

// The detached data plane. A userspace device lives as long as the process
// holding its TUN, and its sessions live in that process's memory: a
// daemon restart used to take both down, losing packets until the device
// was rebuilt and every peer handshook again. Here each userspace device
// runs in a small process of its own (this executable, RunDataplane),
// started by the daemon and left running when the daemon stops or crashes,
// exactly as a kernel device is: the daemon configures it over its UAPI
// socket (as wg(8) does) and the next daemon adopts it, sessions,
// queues and all. The process ends when its link is deleted (a teardown,
// or reconcile removing a device nothing wants) or when the daemon's state
// file is gone (the data directory was deleted: nothing will adopt it).

// DataplaneCommandName is the argument that makes the daemon's executable
// run a data plane instead of the daemon.
const DataplaneCommandName = "wg-dataplane"

// DataplaneConfig configures the detached data plane.
type DataplaneConfig struct {
	// Command runs RunDataplane; the device's flags are appended. Default:
	// this executable with DataplaneCommandName.
	Command []string
	// Env is added to the process's environment.
	Env []string
	// StatePath is the daemon's state file: the process ends once it is
	// gone.
	StatePath string
	// LogDir gets one log file per device (dataplane-<name>.log).
	LogDir string
	// MaxProcs is the process's GOMAXPROCS (0: the Go default).
	MaxProcs int
	Logger   *slog.Logger
}

// NewDataplaneBackend is the userspace backend with every device in a
// process of its own. A device opened with Options.Bind (NAT traversal's
// demultiplexing bind lives in the daemon) stays in the daemon's process.
func NewDataplaneBackend(cfg DataplaneConfig) (Backend, error) {
	if len(cfg.Command) == 0 {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find this executable to run WireGuard data planes with: %w", err)
		}
		cfg.Command = []string{self, DataplaneCommandName}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &dataplaneBackend{cfg: cfg}, nil
}

type dataplaneBackend struct{ cfg DataplaneConfig }

func (*dataplaneBackend) Kind() string { return KindUserspace }

// Open adopts the running data plane of name, or starts one.
func (b *dataplaneBackend) Open(name string, opts Options) (Device, error) {
	if opts.Bind != nil {
		return userspaceBackend{}.Open(name, opts)
	}
	if err := validateName(name); err != nil {
		return nil, err
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	log := opts.Logger.With("device", name, "backend", KindUserspace, "dataplane", "process")
	if err := awaitUnservedDataplane(name, opts.Owner, log); err != nil {
		return nil, err
	}
	if serving(name) {
		link, err := netlink.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("a WireGuard data plane serves %s but no link of that name is in this network namespace: %w", name, err)
		}
		if err := checkDataplaneLink(link, opts.Owner); err != nil {
			return nil, err
		}
		d := newProcessDevice(name, log)
		log.Info("wireguard data plane adopted from a previous run", "pid", d.pid())
		return d, nil
	}
	if err := freeUAPI(name, log); err != nil {
		return nil, err
	}
	if err := checkLinkFree(name); err != nil {
		return nil, err
	}
	if err := b.start(name, opts, log); err != nil {
		return nil, err
	}
	d := newProcessDevice(name, log)
	if opts.Owner != "" {
		// The process labelled its link before it served; this is for
		// a data plane binary from before it did, which is not this one
		// unless the executable was replaced under a running daemon.
		if link, err := netlink.LinkByName(name); err == nil && link.Attrs().Alias == "" {
			netlink.LinkSetAlias(link, label(name, opts.Owner))
		}
	}
	log.Info("wireguard data plane started", "pid", d.pid(), "mtu", opts.MTU)
	return d, nil
}

// unservedDataplaneWait bounds how long Open waits for a data plane that
// has its link but does not serve: as long as start gives one to serve.
const unservedDataplaneWait = 15 * time.Second

// awaitUnservedDataplane waits while name's link is a data plane's TUN
// labelled ours that nothing serves. Such a data plane was started by a
// daemon that died before it served: it is about to find its starter gone
// and end, taking the link with it, or, if it passed that check just
// before, to serve. Opening at once would refuse the link as someone
// else's. A link that is not such a TUN is left to the checks after this.
func awaitUnservedDataplane(name, owner string, log *slog.Logger) error {
	deadline := time.Now().Add(unservedDataplaneWait)
	for waited := false; !serving(name); waited = true {
		link, err := netlink.LinkByName(name)
		if err != nil || !isOurDataplaneLink(link, name, owner) {
			return nil
		}
		if !waited {
			log.Info("a data plane of this node has its link but does not serve yet; waiting for it to serve or end")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the TUN %q is labelled %q by a data plane of this node, but nothing has served its UAPI socket %s for %s: the process holding it hangs or was stopped (find it with ps; ip link del %s ends it)", name, link.Attrs().Alias, uapiSocketPath(name), unservedDataplaneWait, name)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// isOurDataplaneLink reports whether link is a TUN carrying the label a
// data plane of owner gives name's link before it serves.
func isOurDataplaneLink(link netlink.Link, name, owner string) bool {
	if link.Type() != "tuntap" && link.Type() != "tun" {
		return false
	}
	if owner == "" {
		return false // a data plane without an owner does not label its link
	}
	return link.Attrs().Alias == label(name, owner)
}

// serving reports whether a process answers on name's UAPI socket.
func serving(name string) bool {
	c, err := net.DialTimeout("unix", uapiSocketPath(name), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// checkDataplaneLink accepts a running data plane's link only if it is a
// TUN labelled as ours (owner), or carrying the bare label of a start that
// was interrupted before it was labelled.
func checkDataplaneLink(link netlink.Link, owner string) error {
	name, alias := link.Attrs().Name, link.Attrs().Alias
	if link.Type() != "tuntap" && link.Type() != "tun" {
		return fmt.Errorf("a %s link named %q exists and is not a WireGuard data plane's TUN; refusing to adopt it", link.Type(), name)
	}
	if alias == "" || (owner != "" && !strings.HasPrefix(alias, owner)) {
		return fmt.Errorf("a WireGuard data plane serves %q but its link is labelled %q, not by this node (%q); refusing to adopt it (stop it with ip link del %s if it is left over)", name, alias, owner, name)
	}
	return nil
}

// start runs the data plane of name and waits until its UAPI socket
// answers.
func (b *dataplaneBackend) start(name string, opts Options, log *slog.Logger) error {
	cmd := b.command(name, opts)
	// Its own session: not killed with the daemon, nor by a signal sent to
	// the daemon's process group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var logFile *os.File
	if b.cfg.LogDir != "" {
		f, err := os.OpenFile(b.cfg.LogDir+"/dataplane-"+name+".log", os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("open the data plane's log: %w", err)
		}
		logFile = f
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	// The process serves only if we still live once its labelled link
	// exists (RunDataplane): our end of this pipe closes when we die.
	starterR, starterW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start the WireGuard data plane of %s: %w", name, err)
	}
	defer starterW.Close()
	cmd.ExtraFiles = []*os.File{starterR}
	cmd.Args = append(cmd.Args, "--starter-fd", strconv.Itoa(starterFD))
	err = cmd.Start()
	starterR.Close()
	if err != nil {
		return fmt.Errorf("start the WireGuard data plane of %s: %w", name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it whenever it ends
	deadline := time.After(15 * time.Second)
	for !serving(name) {
		select {
		case err := <-exited:
			return fmt.Errorf("the WireGuard data plane of %s exited at start (%v)%s", name, err, tail(logFile))
		case <-deadline:
			cmd.Process.Kill()
			return fmt.Errorf("the WireGuard data plane of %s did not serve its UAPI socket within 15 s%s", name, tail(logFile))
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// command is the data plane process of name.
func (b *dataplaneBackend) command(name string, opts Options) *exec.Cmd {
	args := append(append([]string(nil), b.cfg.Command[1:]...),
		"--name", name, "--mtu", strconv.Itoa(opts.MTU), "--state", b.cfg.StatePath, "--max-procs", strconv.Itoa(b.cfg.MaxProcs))
	if opts.Owner != "" {
		args = append(args, "--owner", opts.Owner)
	}
	if b.cfg.Logger.Enabled(context.Background(), slog.LevelDebug) {
		// A daemon run at debug is being diagnosed: wireguard-go's own log
		// (handshakes sent and retried, keepalives, roaming) is the half
		// of the story only the data plane sees.
		args = append(args, "--log-level", "debug")
	}
	cmd := exec.Command(b.cfg.Command[0], args...)
	cmd.Env = append(os.Environ(), b.cfg.Env...)
	return cmd
}

// tail is the end of a data plane's log, for an error message.
func tail(f *os.File) string {
	if f == nil {
		return ""
	}
	b, err := os.ReadFile(f.Name())
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return ": " + strings.TrimSpace(string(b))
}

func deleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil
	}
	if err != nil {
		return err
	}
	return removeLink(link)
}

// processDevice is a data plane in another process, configured over its
// UAPI socket with the same encoder and parser the in-process device uses,
// so both backends read back identical state (wgctrl's userspace client,
// for one, reports IPv4 endpoints as IPv4-mapped IPv6).
type processDevice struct {
	name   string
	log    *slog.Logger
	mu     sync.Mutex // serialises read-plan-apply in Configure
	closed bool
}

func newProcessDevice(name string, log *slog.Logger) *processDevice {
	return &processDevice{name: name, log: log}
}

// uapiTimeout bounds one UAPI operation: a data plane that accepts but
// never answers must not hang the daemon. A get of thousands of peers
// takes milliseconds.
const uapiTimeout = 10 * time.Second

// uapi runs one operation (request ends in a blank line) and returns the
// reply up to and including its blank line.
func (d *processDevice) uapi(request []byte) ([]byte, error) {
	c, err := net.DialTimeout("unix", uapiSocketPath(d.name), time.Second)
	if err != nil {
		return nil, fmt.Errorf("the data plane does not answer: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(uapiTimeout))
	if _, err := c.Write(request); err != nil {
		return nil, err
	}
	r := bufio.NewReaderSize(c, 64<<10)
	var reply []byte
	for {
		line, err := r.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("read the data plane's reply: %w", err)
		}
		reply = append(reply, line...)
		if err == nil && len(line) == 1 {
			return reply, nil
		}
	}
}

func (d *processDevice) Name() string { return d.name }
func (d *processDevice) Kind() string { return KindUserspace }

// Survives reports that the device outlives the daemon: closing the
// daemon leaves it running.
func (d *processDevice) Survives() bool { return true }

func (d *processDevice) pid() int {
	c, err := net.DialTimeout("unix", uapiSocketPath(d.name), time.Second)
	if err != nil {
		return 0
	}
	defer c.Close()
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0
	}
	var pid int
	raw.Control(func(fd uintptr) {
		if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return pid
}

func (d *processDevice) Configure(cfg wgtypes.Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("configure wireguard device %q: %w", d.name, net.ErrClosed)
	}
	if _, err := encodeUAPISet(cfg); err != nil {
		return fmt.Errorf("configure wireguard device %q: %w", d.name, err)
	}
	if needsCurrent(cfg) {
		cur, err := d.get()
		if err != nil {
			return fmt.Errorf("configure wireguard device %q: %w", d.name, err)
		}
		cfg = planConfig(cfg, cur)
	}
	body, err := encodeUAPISet(cfg)
	if err != nil {
		return fmt.Errorf("configure wireguard device %q: %w", d.name, err)
	}
	req := make([]byte, 0, len(body)+8)
	req = append(append(append(req, "set=1\n"...), body...), '\n')
	reply, err := d.uapi(req)
	if err == nil {
		// The reply is only "errno=N".
		_, err = parseUAPIGet(reply)
	}
	if err != nil {
		return fmt.Errorf("configure wireguard device %q: %w", d.name, err)
	}
	return nil
}

func (d *processDevice) get() (*wgtypes.Device, error) {
	reply, err := d.uapi([]byte("get=1\n\n"))
	if err != nil {
		return nil, err
	}
	dev, err := parseUAPIGet(reply)
	if err != nil {
		return nil, err
	}
	dev.Name = d.name
	dev.Type = wgtypes.Userspace
	return dev, nil
}

func (d *processDevice) Snapshot() (*wgtypes.Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("read wireguard device %q: %w", d.name, net.ErrClosed)
	}
	dev, err := d.get()
	if err != nil {
		return nil, fmt.Errorf("read wireguard device %q: %w", d.name, err)
	}
	sortPeers(dev.Peers)
	return dev, nil
}

// Close ends the data plane: deleting its link makes the process end.
func (d *processDevice) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if err := deleteLink(d.name); err != nil {
		return fmt.Errorf("delete the link of wireguard data plane %q: %w", d.name, err)
	}
	// The socket goes with the process; give it a moment.
	for range 100 {
		if !serving(d.name) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A process killed before Close (OOM killer, kill -9) could not remove
	// its socket, and wg show would list a device nobody serves.
	if err := freeUAPI(d.name, d.log); err != nil {
		d.log.Warn("wireguard data plane stopped, but its UAPI socket is not free", "err", err)
		return nil
	}
	d.log.Info("wireguard data plane stopped")
	return nil
}

// starterFD is the descriptor of the starter pipe in a data plane
// process: the first of exec.Cmd's ExtraFiles.
const starterFD = 3

var errStarterGone = errors.New("the daemon that started this data plane is gone")

// starterLives reads the starter pipe once, then closes it. A daemon
// killed while its data plane starts leaves a process no request waits
// for; if it then served its device, a daemon started in between (whose
// start-up reconcile, the only pass that judges devices, had found no
// link yet) would leave it running. Asked once the labelled link exists,
// "does the starter still live" makes every later daemon find either
// that link or nothing. fd < 0: started without a pipe (by hand, or by a
// test), nothing to ask.
func starterLives(fd int) error {
	if fd < 0 {
		return nil
	}
	defer unix.Close(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		return fmt.Errorf("starter pipe (--starter-fd %d): %w", fd, err)
	}
	var b [1]byte
	for {
		n, err := unix.Read(fd, b[:])
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			return nil // open, empty: the daemon holds its end
		case err != nil:
			return fmt.Errorf("starter pipe (--starter-fd %d): %w", fd, err)
		case n == 0:
			return errStarterGone // every write end is closed
		}
		return nil // the daemon never writes; a byte still means it lived
	}
}

// beforeStarterCheck runs in a data plane process once its link exists and
// is labelled, before it asks whether its starter lives: the tests hold a
// data plane there, in the state a daemon's crash can leave it in.
var beforeStarterCheck = func() {}

// RunDataplane is the data plane process: it runs one userspace device
// until its link is deleted, it receives SIGTERM or SIGINT, or the state
// file is gone. args are the flags after DataplaneCommandName.
func RunDataplane(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(DataplaneCommandName, flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "device name")
	mtu := fs.Int("mtu", DefaultMTU, "MTU")
	state := fs.String("state", "", "the daemon's state file: end when it is gone")
	maxProcs := fs.Int("max-procs", 0, "GOMAXPROCS (0: default)")
	owner := fs.String("owner", "", "label prefix of the daemon identity the device belongs to")
	starter := fs.Int("starter-fd", -1, "read end of a pipe whose write end only the starting daemon holds: serve only if it still lives")
	var level slog.Level
	fs.TextVar(&level, "log-level", slog.LevelInfo, "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *maxProcs > 0 {
		runtime.GOMAXPROCS(*maxProcs)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})).With("dataplane", *name, "pid", os.Getpid())
	// Before the device allocates: the heap trim below is only worth
	// something if khugepaged cannot make the trimmed heap resident again.
	if err := hugepages.Refuse(); err != nil {
		log.Warn("transparent huge pages stay as the system sets them; memory returned after bursts may become resident again", "err", err)
	}
	// Labelled before it serves: the daemon that started it may be killed
	// at any moment, and only a labelled link is one the next daemon
	// adopts, or removes when nothing wants it.
	d, err := openUserspace(*name, Options{MTU: *mtu, Logger: log, Owner: *owner}, func() error {
		beforeStarterCheck()
		return starterLives(*starter)
	})
	if errors.Is(err, errStarterGone) {
		log.Info("the daemon that started this data plane died before it was served; nothing will adopt the device, ending")
		return 1
	}
	if err != nil {
		log.Error("cannot start the data plane", "err", err)
		return 1
	}
	ud := d.(*userspaceDevice)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGHUP) // a daemon's terminal going away is not ours
	check := time.NewTicker(2 * time.Second)
	defer check.Stop()
	trim := newHeapTrim()
	for {
		select {
		case <-ud.dev.Wait():
			log.Info("the device's link is gone; ending")
			d.Close()
			return 0
		case s := <-sigs:
			log.Info("ending", "signal", s.String())
			d.Close()
			return 0
		case <-check.C:
			trim.tick(ud.requests.Load(), ud.serving())
			if *state != "" {
				if _, err := os.Stat(*state); errors.Is(err, os.ErrNotExist) {
					log.Info("the daemon's state file is gone: nothing will adopt this device; ending", "state", *state)
					d.Close()
					deleteLink(*name)
					return 0
				}
			}
		}
	}
}
