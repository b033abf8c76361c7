package main

import (
	"context"
	"errors"

	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab/nstest"
)

// get fetches the daemon's command line from its pprof endpoint over conn.
func get(t *testing.T, conn net.Conn) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       func(context.Context, string, string) (net.Conn, error) { return conn, nil },
	}}
	resp, err := c.Get("http://pprof/debug/pprof/cmdline")
	if err != nil {
		t.Fatalf("GET /debug/pprof/cmdline: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// dialAs connects as uid (65534: nobody), or as this process when uid is 0.
func dialAs(t *testing.T, uid uint32, network, addr string) (net.Conn, error) {
	t.Helper()
	if uid == 0 {
		return net.Dial(network, addr)
	}
	var c net.Conn
	err := nstest.OnThreadAs(uid, uid, nil, func() (err error) {
		c, err = net.Dial(network, addr)
		return err
	})
	return c, err
}

// Profiles hold the daemon's memory (its private keys among it): with
// --pprof-listen set, root reads them and user nobody cannot, on a
// loopback TCP port (where any local process can connect) and on a Unix
// socket.
func TestPprofIsForRootOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the daemon and to connect as user nobody")
	}
	t.Run("tcp", func(t *testing.T) {
		free, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := free.Addr().String()
		free.Close()
		startDaemon(t, t.TempDir(), "--pprof-listen", addr)
		waitListening(t, "tcp", addr)

		c, err := dialAs(t, 0, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if code, body := get(t, c); code != http.StatusOK || !strings.Contains(body, "zlayer-overlayd") {
			t.Fatalf("root got %d:\n%s", code, body)
		}
		c, err = dialAs(t, 65534, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if code, body := get(t, c); code != http.StatusForbidden || strings.Contains(body, "--pprof-listen") {
			t.Fatalf("nobody got %d:\n%s", code, body)
		}
	})
	t.Run("unix", func(t *testing.T) {
		dir := t.TempDir()
		os.Chmod(dir, 0o755) // nobody may reach the socket file; its own mode must stop it
		path := filepath.Join(dir, "pprof.sock")
		startDaemon(t, dir, "--pprof-listen", "unix:"+path)
		waitListening(t, "unix", path)
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("pprof socket: %v, %v; want mode 0600", fi, err)
		}
		c, err := dialAs(t, 0, "unix", path)
		if err != nil {
			t.Fatal(err)
		}
		if code, body := get(t, c); code != http.StatusOK || !strings.Contains(body, "zlayer-overlayd") {
			t.Fatalf("root got %d:\n%s", code, body)
		}
		if c, err := dialAs(t, 65534, "unix", path); !errors.Is(err, syscall.EACCES) {
			if err == nil {
				code, _ := get(t, c)
				t.Fatalf("nobody connected to the pprof socket and got %d", code)
			}
			t.Fatalf("nobody connecting: %v, want permission denied", err)
		}
	})
}

func waitListening(t *testing.T, network, addr string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial(network, addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pprof endpoint %s never came up: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
