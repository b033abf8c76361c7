//go:build linux

package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/zlayer/zlayer-overlayd/bench/internal/benchlib"
	"github.com/zlayer/zlayer-overlayd/client"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// daemon is a zlayer-overlayd running inside a namespace the benchmark
// owns, with its own data dir and its own /var/run/wireguard (a bind mount
// in a private mount namespace, so two nodes' UAPI sockets never meet).
type daemon struct {
	ns, dir, sock string
	args          []string
	proc          *benchlib.Proc
	started       time.Time
}

func newDaemon(ns, dir string, args ...string) *daemon {
	return &daemon{ns: ns, dir: dir, sock: filepath.Join(dir, "overlayd.sock"), args: args}
}

// start launches the daemon and returns once it answers status.
func (d *daemon) start() error {
	bin, err := daemonBin()
	if err != nil {
		return err
	}
	wgdir := filepath.Join(d.dir, "wireguard")
	os.MkdirAll(wgdir, 0o700)
	script := `mkdir -p /var/run/wireguard && mount --bind "$1" /var/run/wireguard && shift && exec "$@"`
	argv := []string{"ip", "netns", "exec", d.ns, "sh", "-c", script, "sh", wgdir,
		bin, "--data-dir", filepath.Join(d.dir, "data"), "--socket", d.sock, "--log-level", "warn"}
	argv = append(argv, d.args...)
	d.started = time.Now()
	d.proc = benchlib.Start(filepath.Join(d.dir, "daemon.log"), argv...)
	return d.proc.WaitFor("zlayer-overlayd", 60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := client.Dial(ctx, d.sock)
		if err != nil {
			return false
		}
		defer c.Close()
		_, err = c.Status(ctx)
		return err == nil
	})
}

func (d *daemon) stop() {
	if d.proc != nil {
		d.proc.Stop()
		d.proc = nil
	}
}

// kill SIGKILLs the daemon (and `ip netns exec` around it), as a crash.
func (d *daemon) kill() {
	if d.proc != nil {
		d.proc.Cmd.Process.Signal(os.Kill)
		d.proc.Stop()
		d.proc = nil
	}
}

func (d *daemon) log() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "daemon.log"))
	return string(b)
}

// call sends one request on a fresh connection.
func (d *daemon) call(req protocol.Request) (protocol.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := client.Dial(ctx, d.sock)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Call(ctx, req)
}

// rawRoundTrip sends one framed body and returns the response body.
func rawRoundTrip(sock string, frame []byte) ([]byte, error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(frame); err != nil {
		return nil, err
	}
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, err
	}
	body := make([]byte, binary.LittleEndian.Uint32(hdr[:]))
	_, err = io.ReadFull(c, body)
	return body, err
}

// responseObject extracts the "response" member of a response frame.
func responseObject(body []byte) ([]byte, error) {
	var f struct {
		Response json.RawMessage `json:"response"`
	}
	if err := json.Unmarshal(body, &f); err != nil || len(f.Response) == 0 {
		return nil, fmt.Errorf("not a response frame: %s", body)
	}
	return f.Response, nil
}
