//go:build unix

package main

import (
	"bytes"
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/ipc"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// serve runs a protocol server that answers like a small daemon.
func serve(t *testing.T) (*ipc.Server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "d.sock")
	ln, err := ipc.Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := &ipc.Server{EventQueue: 16, Handler: ipc.HandlerFunc(func(ctx context.Context, req protocol.Request) protocol.Response {
		switch req.(type) {
		case protocol.Status:
			h := true
			return protocol.StatusResult{StatusSnapshot: protocol.StatusSnapshot{
				Interface: "zl-prod-g", NodeIP: netip.MustParseAddr("10.200.3.1"), PeerCount: 1, ServiceCount: 1,
				Peers:    []protocol.PeerStatus{{PublicKey: "pk", Endpoint: "192.0.2.1:51820", AllowedIPs: "10.200.4.0/24", LastHandshakeUnixSecs: time.Now().Unix(), Healthy: &h}},
				Services: []protocol.ServiceStatus{{Service: "web", Mode: "shared", Bridge: "zl-prod-web-b", Subnet: "10.200.3.240/28", Used: 3, Free: 11}},
			}}
		case protocol.Hello:
			return protocol.HelloResult{ProtocolVersion: 1, ServerVersion: "test"}
		}
		return protocol.Err{Message: "unknown op " + req.Op()}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv, path
}

func TestStatusTableAndJSON(t *testing.T) {
	_, path := serve(t)
	var out, errOut bytes.Buffer
	if code := run([]string{"--socket", path, "status"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"zl-prod-g", "10.200.3.1", "192.0.2.1:51820", "web", "10.200.3.240/28", "true"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status table lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := run([]string{"--socket", path, "status", "--json"}, &out, &errOut); code != 0 {
		t.Fatal(errOut.String())
	}
	if !strings.HasPrefix(out.String(), `{"result":"status","interface":"zl-prod-g","node_ip":"10.200.3.1"`) {
		t.Fatalf("json: %s", out.String())
	}
}

func TestCallSendsAnyRequest(t *testing.T) {
	_, path := serve(t)
	var out, errOut bytes.Buffer
	if code := run([]string{"--socket", path, "call", `{"op":"hello"}`}, &out, &errOut); code != 0 || !strings.Contains(out.String(), `"result":"hello"`) {
		t.Fatalf("exit %d out %s err %s", code, out.String(), errOut.String())
	}
	out.Reset()
	errOut.Reset()
	// An op this client cannot even decode still reaches the daemon, and
	// its err answer makes the command fail.
	if code := run([]string{"--socket", path, "call", `{"op":"no_such_op"}`}, &out, &errOut); code != 1 || !strings.Contains(out.String(), "no_such_op") {
		t.Fatalf("exit %d out %s err %s", code, out.String(), errOut.String())
	}
	if code := run([]string{"--socket", path, "call", `{"op":`}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "not valid JSON") {
		t.Fatalf("invalid JSON: exit %d %s", code, errOut.String())
	}
}

func TestNotRunning(t *testing.T) {
	var out, errOut bytes.Buffer
	path := filepath.Join(t.TempDir(), "none.sock")
	if code := run([]string{"--socket", path, "status"}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "is not running") {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
}

func TestWatchPrintsEvents(t *testing.T) {
	srv, path := serve(t)
	r, w := newPipe()
	done := make(chan int, 1)
	go func() { done <- run([]string{"--socket", path, "watch"}, w, &bytes.Buffer{}) }()
	deadline := time.Now().Add(10 * time.Second)
	for srv.Connections() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	srv.Broadcast(protocol.PeerHealthChanged{Pubkey: "pk", Healthy: false})
	srv.Broadcast(protocol.NATEndpointChanged{Pubkey: "pk", Endpoint: "198.51.100.7:40123"})
	line1, line2 := r.line(t), r.line(t)
	if !strings.Contains(line1, "peer_health_changed pubkey=pk healthy=false") || !strings.Contains(line2, "nat_endpoint_changed pubkey=pk endpoint=198.51.100.7:40123") {
		t.Fatalf("watch printed %q / %q", line1, line2)
	}
	srv.Shutdown(context.Background())
}

// linePipe hands what the command writes to the test line by line.
type linePipe struct{ lines chan string }

type pipeWriter struct {
	p   *linePipe
	buf []byte
}

func newPipe() (*linePipe, *pipeWriter) {
	p := &linePipe{lines: make(chan string, 16)}
	return p, &pipeWriter{p: p}
}

func (w *pipeWriter) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		w.p.lines <- string(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}

func (p *linePipe) line(t *testing.T) string {
	t.Helper()
	select {
	case l := <-p.lines:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no line printed")
		return ""
	}
}
