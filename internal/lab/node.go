//go:build linux

package lab

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zlayer/zlayer-overlayd/client"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Node is one simulated machine: a network namespace on the underlay
// running its own zlayer-overlayd. The daemon also gets a private mount
// namespace in which the node's own directory is bound over
// /var/run/wireguard, because WireGuard's UAPI sockets live in the file
// system, not in the network namespace: without this, two nodes' devices of
// the same name would fight over one socket, and `wg show` on a node would
// list every node's devices.
type Node struct {
	lab  *Lab
	Name string
	// NS is the node's network namespace (as `ip netns` knows it).
	NS string
	// Underlay is the node's address on the underlay switch.
	Underlay netip.Addr
	DataDir  string
	Socket   string
	WGDir    string
	// Env is added to the daemon's environment at its next Start.
	Env []string
	// Binds are files bound over paths of the daemon's mount namespace
	// at its next Start, source → target (a node's own /etc/hosts or
	// /etc/resolv.conf). Rewriting a source in place changes what the
	// running daemon reads.
	Binds map[string]string
	args  []string

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	logFile *os.File
	client  *client.Client
}

// AddNode creates a node on the underlay switch and starts its daemon.
func (l *Lab) AddNode(name string, args ...string) *Node {
	l.t.Helper()
	l.mu.Lock()
	idx := len(l.nodes)
	l.mu.Unlock()
	n := l.newNode(name, l.underlayAddr(idx+1).Addr(), args)
	l.attachToSwitch(n.NS, "eth0", l.underlayAddr(idx+1), fmt.Sprintf("n%d", idx))
	l.register(n)
	return n
}

func (l *Lab) newNode(name string, underlay netip.Addr, args []string) *Node {
	l.t.Helper()
	n := &Node{
		lab:      l,
		Name:     name,
		NS:       l.nsName(name),
		Underlay: underlay,
		DataDir:  filepath.Join(l.nodeDir(name), "data"),
		WGDir:    filepath.Join(l.nodeDir(name), "wireguard"),
		args:     append(append([]string{}, l.opts.DaemonArgs...), args...),
	}
	n.Socket = filepath.Join(n.DataDir, "run", "zlayer-overlayd.sock")
	for _, d := range []string{n.DataDir, n.WGDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			l.t.Fatalf("lab: %v", err)
		}
	}
	l.addNS(n.NS)
	return n
}

func (l *Lab) register(n *Node) {
	l.mu.Lock()
	l.nodes = append(l.nodes, n)
	l.mu.Unlock()
	n.Start()
}

// LogPath is the daemon's log file (appended across restarts).
func (n *Node) LogPath() string { return filepath.Join(n.lab.nodeDir(n.Name), "daemon.log") }

// Start launches the daemon and waits until it answers.
func (n *Node) Start() {
	t := n.lab.t
	t.Helper()
	n.mu.Lock()
	if n.cmd != nil {
		n.mu.Unlock()
		t.Fatalf("lab: node %s already running", n.Name)
		return
	}
	if n.logFile == nil {
		f, err := os.OpenFile(n.LogPath(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			n.mu.Unlock()
			t.Fatalf("lab: %v", err)
			return
		}
		n.logFile = f
	}
	fmt.Fprintf(n.logFile, "--- start %s ---\n", time.Now().Format(time.RFC3339Nano))
	// ip netns exec gives the command its own mount namespace (to remount
	// /sys); the bind mounts below live only there. The binds come as
	// pairs of arguments up to "--", so no path is quoted into the script.
	script := `mkdir -p /var/run/wireguard && mount --bind "$1" /var/run/wireguard && shift &&
while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 1; shift 2; done && shift && exec "$@"`
	argv := []string{"netns", "exec", n.NS, "sh", "-c", script, "sh", n.WGDir}
	for _, src := range slices.Sorted(maps.Keys(n.Binds)) {
		argv = append(argv, src, n.Binds[src])
	}
	argv = append(argv, "--", n.lab.opts.Daemon, "--data-dir", n.DataDir, "--log-level", "debug")
	argv = append(argv, n.args...)
	cmd := exec.Command("ip", argv...)
	cmd.Env = append(os.Environ(), n.Env...)
	cmd.Stdout = n.logFile
	cmd.Stderr = n.logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		n.mu.Unlock()
		t.Fatalf("lab: start node %s: %v", n.Name, err)
		return
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		select {
		case <-exited:
			b, _ := os.ReadFile(n.LogPath())
			t.Fatalf("lab: daemon of node %s exited during start:\n%s", n.Name, b)
			return
		case <-ctx.Done():
			t.Fatalf("lab: daemon of node %s did not come up", n.Name)
			return
		case <-time.After(20 * time.Millisecond):
		}
		if _, err := os.Stat(n.Socket); err == nil {
			c := n.Client()
			sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := c.Status(sctx)
			scancel()
			if err == nil {
				return
			}
		}
	}
}

// PID of the running daemon (0 when stopped).
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Client is a client connected to the node's daemon; it reconnects by
// itself across restarts.
func (n *Node) Client() *client.Client {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.client == nil {
		n.client = client.New(n.Socket)
		n.lab.t.Cleanup(func() { n.client.Close() })
	}
	return n.client
}

// Call sends a request and fails the test on an error or err response.
func (n *Node) Call(req protocol.Request) protocol.Response {
	t := n.lab.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := n.Client().Call(ctx, req)
	if err != nil {
		t.Fatalf("node %s: %s: %v", n.Name, req.Op(), err)
	}
	return resp
}

// Do sends a request and returns the response, err responses included.
func (n *Node) Do(req protocol.Request) (protocol.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return n.Client().Do(ctx, req)
}

// Status fails the test when status cannot be read.
func (n *Node) Status() protocol.StatusSnapshot {
	t := n.lab.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := n.Client().Status(ctx)
	if err != nil {
		t.Fatalf("node %s: status: %v", n.Name, err)
	}
	return s
}

// Kill SIGKILLs the daemon (a crash) and waits for it to be gone.
func (n *Node) Kill() { n.stop(true) }

// Stop SIGTERMs the daemon and returns its exit code.
func (n *Node) Stop() int { return n.stop(false) }

func (n *Node) stop(kill bool) int {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.cmd = nil
	n.mu.Unlock()
	if cmd == nil {
		return -1
	}
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
	return cmd.ProcessState.ExitCode()
}

// Restart SIGKILLs the daemon and starts it again.
func (n *Node) Restart() {
	n.lab.t.Helper()
	n.Kill()
	n.Start()
}

// Exec runs a command inside the node: its network namespace and the
// daemon's mount namespace (so `wg` sees the node's UAPI sockets).
func (n *Node) Exec(args ...string) (string, error) {
	if pid := n.PID(); pid != 0 {
		return run(append([]string{"nsenter", "-t", strconv.Itoa(pid), "-m", "-n", "--"}, args...)...)
	}
	return run(append([]string{"ip", "netns", "exec", n.NS}, args...)...)
}

// MustExec is Exec that fails the test on error.
func (n *Node) MustExec(args ...string) string {
	t := n.lab.t
	t.Helper()
	out, err := n.Exec(args...)
	if err != nil {
		t.Fatalf("node %s: %s: %v\n%s", n.Name, strings.Join(args, " "), err, out)
	}
	return out
}

// Ping sends count pings to addr from the node and reports success.
func (n *Node) Ping(addr netip.Addr, count int) error {
	return ping(n.Exec, addr, count)
}

func ping(exec func(...string) (string, error), addr netip.Addr, count int) error {
	out, err := exec("ping", "-c", strconv.Itoa(count), "-W", "1", "-i", "0.2", "-n", addr.String())
	if err != nil {
		return fmt.Errorf("ping %s: %v\n%s", addr, err, out)
	}
	return nil
}
