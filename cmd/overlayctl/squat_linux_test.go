package main

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab/nstest"
)

// Another local user listening on the socket path (here nobody, in a
// directory anyone may write to) gets nothing from overlayctl: it checks
// who serves the socket before sending, and says why it stopped.
func TestOverlayctlRefusesASocketOfAnotherUser(t *testing.T) {
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
	path := filepath.Join(dir, "zlayer-overlayd.sock")
	var ln net.Listener
	if err := nstest.OnThreadAs(65534, 65534, nil, func() (err error) {
		ln, err = net.Listen("unix", path)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var received atomic.Int64
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
	var out, errOut bytes.Buffer
	if code := run([]string{"--socket", path, "--timeout", "1s", "status"}, &out, &errOut); code == 0 {
		t.Fatalf("overlayctl talked to a socket of uid 65534:\n%s", out.String())
	}
	if !strings.Contains(errOut.String(), "served by uid 65534") {
		t.Fatalf("overlayctl does not say who serves the socket:\n%s", errOut.String())
	}
	if n := received.Load(); n != 0 {
		t.Fatalf("the squatter received %d bytes", n)
	}
}
