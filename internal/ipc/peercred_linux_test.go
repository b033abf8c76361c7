package ipc

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab/nstest"
)

// The supplementary groups of a caller come from its socket
// (SO_PEERGROUPS), as they were when it connected: here the connecting
// thread has groups the process does not, which /proc/<pid>/status (the
// process's main thread, or whoever holds the pid by the time it is read)
// would not show.
func TestPeerGroupsComeFromTheSocket(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect with other supplementary groups")
	}
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	var cc net.Conn
	if err := nstest.OnThreadAs(0, 0, []uint32{4242, 4343}, func() (err error) {
		cc, err = net.Dial("unix", path)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sc := <-accepted
	defer sc.Close()
	caller, err := PeerCaller(sc)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(caller.Groups, []uint32{4242, 4343}) {
		t.Fatalf("caller groups %v, want the connecting thread's [4242 4343]", caller.Groups)
	}
}

// squat listens on path as user nobody (uid 65534), as another local user
// can wherever it may create files, and counts the bytes clients send it.
func squat(t *testing.T) (path string, received *atomic.Int64) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to listen as another user")
	}
	dir, err := os.MkdirTemp("", "zlayer-squat-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "zlayer-overlayd.sock")
	var ln net.Listener
	if err := nstest.OnThreadAs(65534, 65534, nil, func() (err error) {
		ln, err = net.Listen("unix", path)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	received = new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, _ := io.Copy(io.Discard, c)
				received.Add(n)
			}()
		}
	}()
	return path, received
}

// A client refuses a socket served by another user before sending a byte.
func TestDialRefusesAServerOfAnotherUser(t *testing.T) {
	path, received := squat(t)
	c, err := Dial(path, time.Second)
	if err == nil {
		c.Close()
		t.Fatal("Dial accepted a socket served by uid 65534")
	}
	if !strings.Contains(err.Error(), "served by uid 65534") || !strings.Contains(err.Error(), "nothing was sent") {
		t.Fatalf("Dial error %q does not say who serves the socket", err)
	}
	if n := received.Load(); n != 0 {
		t.Fatalf("the squatter received %d bytes", n)
	}
}

func TestCheckServerAcceptsRootAndSelf(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if err := checkServer(a, "pipe", 1000); err == nil {
		t.Fatal("a connection without peer credentials was accepted")
	}
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	self := uint32(os.Geteuid())
	if err := checkServer(c, path, self); err != nil {
		t.Fatalf("a server of our own uid was refused: %v", err)
	}
	if self != 0 {
		if err := checkServer(c, path, self+1); err == nil {
			t.Fatal("a server of another uid was accepted")
		}
	}
}

// A daemon starting on a path another user has squatted takes it back
// (root may remove it even from a sticky /tmp) instead of refusing to
// start, and then serves there.
func TestListenTakesBackASquattedPath(t *testing.T) {
	path, _ := squat(t)
	ln, err := Listen(path, nil)
	if err != nil {
		t.Fatalf("Listen on a squatted path: %v", err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := Dial(path, time.Second)
	if err != nil {
		t.Fatalf("the daemon's own socket is refused after taking it back: %v", err)
	}
	c.Close()
}
