//go:build unix

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"slices"
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
		switch r := req.(type) {
		case protocol.Status:
			h := true
			return protocol.StatusResult{StatusSnapshot: protocol.StatusSnapshot{
				Interface: "zl-prod-g", NodeIP: netip.MustParseAddr("10.200.3.1"), PeerCount: 1, ServiceCount: 1,
				Peers: []protocol.PeerStatus{{PublicKey: "pk", Endpoint: "192.0.2.1:51820", AllowedIPs: "10.200.4.0/24",
					LastHandshakeUnixSecs: time.Now().Unix() - 12, Healthy: &h, RxBytes: 1536, TxBytes: 3 << 20}},
				ServicePeers: []protocol.ServicePeerSet{{Service: "db", Peers: []protocol.PeerStatus{{PublicKey: "dbpeer"}}}},
				Services:     []protocol.ServiceStatus{{Service: "web", Mode: "shared", Bridge: "zl-prod-web-b", Subnet: "10.200.3.240/28", Gateway: netip.MustParseAddr("10.200.3.241"), Used: 3, Free: 11}},
				Attachments:  []protocol.AttachStatus{{Handle: protocol.LinuxPID(4242), Service: "web", IP: netip.MustParseAddr("10.200.3.242"), HostLink: "zl-v4242-e0"}},
				Guests:       []protocol.GuestStatus{{ID: "vm-1", Service: "web", IP: netip.MustParseAddr("10.200.3.243"), PublicKey: "guestkey0123456789"}},
			}}
		case protocol.ListDNS:
			return protocol.DNSRecords{Zone: "prod.local", Records: []protocol.DNSRecord{{Name: "web.prod.local", IPs: []netip.Addr{netip.MustParseAddr("10.200.3.242")}}}}
		case protocol.Backup:
			return protocol.BackupDone{Path: r.Path, Bytes: 32768}
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
	for _, want := range []string{"zl-prod-g", "10.200.3.1", "192.0.2.1:51820", "web", "10.200.3.240/28", "healthy", "4242"} {
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

// Each list is a table a person reads (humanised bytes and handshake age,
// health, the container's PID) and, with --json, JSON.
func TestListCommands(t *testing.T) {
	_, path := serve(t)
	for _, c := range []struct {
		cmd        string
		table      []string
		jsonPrefix string
		jsonHas    string
	}{
		{"peers", []string{"PEER", "pk", "global", "192.0.2.1:51820", "12s ago|13s ago", "1.5 KiB", "3.0 MiB", "healthy", "dbpeer", "service:db", "never", "(none)"}, "[", `"public_key": "pk"`},
		{"services", []string{"SERVICE", "web", "zl-prod-web-b", "10.200.3.240/28", "10.200.3.241"}, "[", `"bridge": "zl-prod-web-b"`},
		{"containers", []string{"PID/ID", "4242", "linux_pid", "10.200.3.242", "zl-v4242-e0", "vm-1", "guest_managed"}, "[", `"pid":4242`},
		{"dns", []string{"NAME", "web.prod.local", "10.200.3.242"}, "{", `"zone": "prod.local"`},
	} {
		var out, errOut bytes.Buffer
		if code := run([]string{"--socket", path, c.cmd}, &out, &errOut); code != 0 {
			t.Fatalf("%s: exit %d: %s", c.cmd, code, errOut.String())
		}
		for _, want := range c.table {
			// want|other: either will do. The handshake is 12 s before
			// the server's clock read, in whole seconds, so the client's
			// read, a moment later, may be in the next second.
			if !slices.ContainsFunc(strings.Split(want, "|"), func(w string) bool { return strings.Contains(out.String(), w) }) {
				t.Errorf("%s table lacks %q:\n%s", c.cmd, want, out.String())
			}
		}
		// Columns are aligned: every row's second column starts where the
		// header's does.
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		col := strings.Index(lines[0], "  ")
		for col < len(lines[0]) && lines[0][col] == ' ' {
			col++
		}
		for _, l := range lines[1:] {
			if len(l) <= col || l[col-1] != ' ' || l[col] == ' ' {
				t.Errorf("%s: row %q is not aligned with header %q", c.cmd, l, lines[0])
			}
		}
		out.Reset()
		if code := run([]string{"--socket", path, c.cmd, "--json"}, &out, &errOut); code != 0 {
			t.Fatalf("%s --json: exit %d: %s", c.cmd, code, errOut.String())
		}
		if !json.Valid(out.Bytes()) || !strings.HasPrefix(out.String(), c.jsonPrefix) || !strings.Contains(strings.ReplaceAll(out.String(), `"pid": `, `"pid":`), c.jsonHas) {
			t.Errorf("%s --json:\n%s", c.cmd, out.String())
		}
	}
}

func TestBackupSendsAnAbsolutePath(t *testing.T) {
	_, path := serve(t)
	dir := t.TempDir()
	t.Chdir(dir)
	var out, errOut bytes.Buffer
	if code := run([]string{"--socket", path, "backup", "state.bak"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), filepath.Join(dir, "state.bak")) || !strings.Contains(out.String(), "32.0 KiB") {
		t.Fatalf("backup printed %q", out.String())
	}
}

// A wrong command line exits 2, a failed command 1; doctor exits 1 and
// says what to do when the daemon is not there.
func TestExitStatuses(t *testing.T) {
	_, path := serve(t)
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{nil, 2, "a command is needed"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"--socket", path, "peers", "extra"}, 2, "takes no arguments"},
		{[]string{"--socket", path, "backup"}, 2, "one argument"},
		{[]string{"--no-such-flag", "status"}, 2, "unknown flag"},
		{[]string{"--socket", filepath.Join(t.TempDir(), "none.sock"), "doctor"}, 1, "systemctl start"},
	} {
		var out, errOut bytes.Buffer
		code := run(c.args, &out, &errOut)
		if code != c.code || !strings.Contains(out.String()+errOut.String(), c.says) {
			t.Errorf("%q: exit %d (want %d)\nstdout %s\nstderr %s", c.args, code, c.code, out.String(), errOut.String())
		}
	}
}

func TestCompletionScripts(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		var out, errOut bytes.Buffer
		if code := run([]string{"completion", shell}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "overlayctl") {
			t.Errorf("completion %s: exit %d, %d bytes: %s", shell, code, out.Len(), errOut.String())
		}
	}
	// The completion of commands lists ours.
	var out bytes.Buffer
	run([]string{"__complete", ""}, &out, &bytes.Buffer{})
	for _, want := range []string{"peers", "services", "containers", "dns", "doctor", "backup"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("command completion lacks %s:\n%s", want, out.String())
		}
	}
}
