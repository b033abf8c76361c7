//go:build linux

package chaos

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/ipc"
	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/internal/testbin"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// rawConn is a connection to the daemon that writes exactly the bytes a
// test gives it: no client library smooths anything over.
type rawConn struct {
	t  testing.TB
	nc *net.UnixConn
	fr *ipc.FrameReader
}

func dialRaw(t testing.TB, socket string) *rawConn {
	t.Helper()
	nc, err := ipc.Dial(socket, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", socket, err)
	}
	t.Cleanup(func() { nc.Close() })
	return &rawConn{t: t, nc: nc.(*net.UnixConn), fr: ipc.NewFrameReader(nc)}
}

func prefix(n uint32) []byte { return binary.LittleEndian.AppendUint32(nil, n) }

// frame is body with its length prefix.
func frame(body string) []byte { return append(prefix(uint32(len(body))), body...) }

func request(id uint64, req string) string {
	return `{"frame":"request","id":` + strconv.FormatUint(id, 10) + `,"request":` + req + `}`
}

func (c *rawConn) write(b []byte) {
	c.t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// next reads one frame, or returns the error that ended the connection.
func (c *rawConn) next(timeout time.Duration) (protocol.Frame, []byte, error) {
	c.nc.SetReadDeadline(time.Now().Add(timeout))
	body, err := c.fr.Read()
	if err != nil {
		return protocol.Frame{}, nil, err
	}
	f, err := protocol.UnmarshalFrame(body)
	if err != nil {
		c.t.Fatalf("the daemon sent an undecodable frame %q: %v", body, err)
	}
	return f, body, nil
}

// answer reads frames until the response with id, skipping events.
func (c *rawConn) answer(id uint64) (protocol.Response, error) {
	for {
		f, body, err := c.next(30 * time.Second)
		if err != nil {
			return nil, err
		}
		switch {
		case f.Kind == protocol.KindEvent:
			continue
		case f.Kind != protocol.KindResponse || f.ID != id:
			return nil, fmt.Errorf("expected the answer to request %d, got %s", id, body)
		}
		return f.Response, nil
	}
}

// closed waits for the daemon to end the connection; any frame before
// that is a failure (events aside).
func (c *rawConn) closed() error {
	for {
		f, body, err := c.next(15 * time.Second)
		switch {
		case err == nil && f.Kind == protocol.KindEvent:
			continue
		case err == nil:
			return fmt.Errorf("expected the daemon to close the connection, got %s", body)
		case errors.Is(err, ipc.ErrClosed), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed), isReset(err):
			return nil
		}
		return fmt.Errorf("expected the daemon to close the connection: %v", err)
	}
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

// status asks for status on this connection and returns it.
func (c *rawConn) status(id uint64) (protocol.StatusSnapshot, error) {
	c.write(frame(request(id, `{"op":"status"}`)))
	resp, err := c.answer(id)
	if err != nil {
		return protocol.StatusSnapshot{}, err
	}
	s, ok := resp.(protocol.StatusResult)
	if !ok {
		return protocol.StatusSnapshot{}, fmt.Errorf("status answered %#v", resp)
	}
	return s.StatusSnapshot, nil
}

// digest is the state a status shows, without what changes by itself
// (traffic counters, handshakes, when the peers were read, reconcile
// bookkeeping).
func digest(s protocol.StatusSnapshot) string {
	s.LastReconcile, s.ReconcileChanges, s.EventsDropped, s.PeersRead = 0, 0, 0, 0
	for i := range s.Peers {
		p := &s.Peers[i]
		p.LastHandshakeUnixSecs, p.RxBytes, p.TxBytes, p.Healthy = 0, 0, 0, nil
	}
	if s.DNS != nil {
		dns := *s.DNS
		dns.Listeners = slices.Sorted(slices.Values(dns.Listeners))
		s.DNS = &dns
	}
	b, _ := json.MarshalIndent(s, "", " ")
	return string(b)
}

// target is a running daemon the suites talk to through its socket.
type target struct {
	t      *testing.T
	socket string
	// node is set when the daemon runs in a lab node (as root): the
	// kernel can then be observed and the daemon can have state that
	// needs devices.
	node *lab.Node
	lab  *lab.Lab
	// proc is the daemon process when it runs as this (unprivileged) user.
	proc *daemonProc
}

func (d *target) exec() execFunc {
	if d.node != nil {
		return d.node.Exec
	}
	return nil
}

// pid of the daemon process.
func (d *target) pid() int {
	if d.node != nil {
		return d.node.PID()
	}
	return d.proc.cmd.Process.Pid
}

// restart starts the daemon again after it exited (or kills it first).
func (d *target) restart() {
	if d.node != nil {
		d.node.Kill()
		d.node.Start()
		return
	}
	d.proc.stop()
	d.proc = startProc(d.t, d.proc.dataDir, d.proc.args...)
}

// newTarget starts a daemon for a suite: inside a lab node when we are
// root (nothing touches the host), else as this user in its default
// namespace, where it has no privilege to change anything.
func newTarget(t *testing.T, args ...string) *target {
	t.Helper()
	if lab.Check() == nil {
		l := lab.New(t, lab.Options{Daemon: testbin.Build(t, "zlayer-overlayd")})
		n := l.AddNode("a", args...)
		return &target{t: t, socket: n.Socket, node: n, lab: l}
	}
	p := startProc(t, t.TempDir(), append([]string{"--dns-port", "0"}, args...)...)
	return &target{t: t, socket: p.socket, proc: p}
}

// daemonProc is a daemon process started directly: as this user when it
// is not root, else in a network namespace of its own.
type daemonProc struct {
	t       *testing.T
	cmd     *exec.Cmd
	dataDir string
	socket  string
	args    []string
	log     *lockedBuffer
	exited  chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startProc(t *testing.T, dataDir string, args ...string) *daemonProc {
	t.Helper()
	p := &daemonProc{t: t, dataDir: dataDir, socket: filepath.Join(dataDir, "run", "zlayer-overlayd.sock"), args: args, log: &lockedBuffer{}, exited: make(chan struct{})}
	argv := append([]string{testbin.Build(t, "zlayer-overlayd"), "--data-dir", dataDir, "--log-level", "debug"}, args...)
	if os.Geteuid() == 0 {
		// A root daemon outside a lab gets a network namespace of its own,
		// which dies with it: nothing of the host's is touched.
		argv = append([]string{"unshare", "--net", "--"}, argv...)
	}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("daemon log:\n%s", p.log.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if c, err := net.Dial("unix", p.socket); err == nil {
			c.Close()
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("daemon exited at start:\n%s", p.log.String())
		case <-ctx.Done():
			t.Fatalf("daemon did not come up:\n%s", p.log.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (p *daemonProc) stop() {
	select {
	case <-p.exited:
	default:
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// rss is the resident memory of a process, in KiB.
func rss(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
		}
	}
	return 0, errors.New("no VmRSS")
}
