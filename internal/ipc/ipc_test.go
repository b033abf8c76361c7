//go:build unix

package ipc

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

func TestFramingRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	frames := []protocol.Frame{
		protocol.RequestFrame(7, protocol.Status{}),
		protocol.ResponseFrame(7, protocol.OK{}),
		protocol.EventFrame(protocol.PeerHealthChanged{Pubkey: "k", Healthy: true}),
	}
	for _, f := range frames {
		if err := WriteFrame(&buf, f); err != nil {
			t.Fatal(err)
		}
	}
	fr := NewFrameReader(&buf)
	for _, want := range frames {
		body, err := fr.Read()
		if err != nil {
			t.Fatal(err)
		}
		got, err := protocol.UnmarshalFrame(body)
		if err != nil {
			t.Fatal(err)
		}
		if got.Kind != want.Kind || got.ID != want.ID {
			t.Fatalf("got %+v want %+v", got, want)
		}
	}
	if _, err := fr.Read(); !errors.Is(err, ErrClosed) {
		t.Fatalf("clean EOF at a frame boundary should be ErrClosed, got %v", err)
	}
}

func TestFramingTruncation(t *testing.T) {
	// EOF inside the prefix or the body is not a clean close.
	for _, in := range [][]byte{{5, 0}, {5, 0, 0, 0, '{', '"'}} {
		_, err := NewFrameReader(bytes.NewReader(in)).Read()
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("%v: got %v, want unexpected EOF", in, err)
		}
	}
}

// countingReader fails the test if more than the 4-byte prefix is read:
// an oversized length must be refused before the body is touched.
type countingReader struct {
	data []byte
	read int
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.read >= len(c.data) {
		return 0, io.EOF
	}
	n := copy(p, c.data[c.read:])
	c.read += n
	return n, nil
}

func TestFramingRejectsOversizeBeforeAllocating(t *testing.T) {
	for _, size := range []uint32{protocol.MaxFrameBytes + 1, 9 << 20, 1<<32 - 1} {
		var hdr [4]byte
		binary.LittleEndian.PutUint32(hdr[:], size)
		fr := NewFrameReader(&countingReader{data: hdr[:]})
		_, err := fr.Read()
		var tl *FrameTooLargeError
		if !errors.As(err, &tl) || tl.Size != uint64(size) {
			t.Fatalf("size %d: got %v", size, err)
		}
		if fr.buf != nil {
			t.Fatalf("size %d: buffer allocated for an oversized frame", size)
		}
	}
	// Exactly the limit is allowed.
	var hdr [4]byte
	binary.LittleEndian.PutUint32(hdr[:], protocol.MaxFrameBytes)
	if _, err := NewFrameReader(bytes.NewReader(hdr[:])).Read(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("limit-sized frame should be read (then hit EOF), got %v", err)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// startServer serves h on a fresh socket and returns its path.
func startServer(t *testing.T, h Handler, configure ...func(*Server)) (*Server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "overlayd.sock")
	ln, err := Listen(path, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Handler: h, Log: testLogger(t), EventQueue: 8}
	for _, f := range configure {
		f(srv)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return srv, path
}

type rawConn struct {
	t  *testing.T
	nc net.Conn
	fr *FrameReader
}

func dialRaw(t *testing.T, path string) *rawConn {
	t.Helper()
	nc, err := Dial(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{t: t, nc: nc, fr: NewFrameReader(nc)}
}

func (c *rawConn) sendRaw(body string) {
	c.t.Helper()
	var hdr [4]byte
	binary.LittleEndian.PutUint32(hdr[:], uint32(len(body)))
	if _, err := c.nc.Write(append(hdr[:], body...)); err != nil {
		c.t.Fatal(err)
	}
}

func (c *rawConn) recv() protocol.Frame {
	c.t.Helper()
	body, err := c.fr.Read()
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	f, err := protocol.UnmarshalFrame(body)
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	return f
}

var echoStatus = HandlerFunc(func(ctx context.Context, req protocol.Request) protocol.Response {
	switch r := req.(type) {
	case protocol.SetLocalNodeID:
		return protocol.StatusResult{StatusSnapshot: protocol.StatusSnapshot{NodeID: r.NodeID}}
	case protocol.Shutdown:
		panic("boom")
	}
	return protocol.OK{}
})

func TestUnknownOpGetsErrWithIDAndConnectionStays(t *testing.T) {
	_, path := startServer(t, echoStatus)
	c := dialRaw(t, path)
	c.sendRaw(`{"frame":"request","id":5,"request":{"op":"no_such_op"}}`)
	f := c.recv()
	e, ok := f.Response.(protocol.Err)
	if f.ID != 5 || !ok || !strings.Contains(e.Message, "no_such_op") {
		t.Fatalf("got %+v", f)
	}
	c.sendRaw(`{"frame":"request","id":6,"request":{"op":"status"}}`)
	if f := c.recv(); f.ID != 6 || f.Response.Result() != "ok" {
		t.Fatalf("follow-up request on the same connection: %+v", f)
	}
}

func TestPipelinedRequestsAnswerInOrder(t *testing.T) {
	_, path := startServer(t, echoStatus)
	c := dialRaw(t, path)
	var batch bytes.Buffer
	for i := 1; i <= 200; i++ {
		if err := WriteFrame(&batch, protocol.RequestFrame(uint64(i), protocol.SetLocalNodeID{NodeID: uint64(i)})); err != nil {
			t.Fatal(err)
		}
	}
	// One write carrying 200 frames; the server must not lose any.
	go c.nc.Write(batch.Bytes())
	for i := 1; i <= 200; i++ {
		f := c.recv()
		s, ok := f.Response.(protocol.StatusResult)
		if f.ID != uint64(i) || !ok || s.NodeID != uint64(i) {
			t.Fatalf("answer %d: %+v", i, f)
		}
	}
}

func TestOversizeFrameClosesOnlyThatConnection(t *testing.T) {
	_, path := startServer(t, echoStatus)
	good := dialRaw(t, path)
	bad := dialRaw(t, path)
	var hdr [4]byte
	binary.LittleEndian.PutUint32(hdr[:], 9<<20)
	if _, err := bad.nc.Write(hdr[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := bad.fr.Read(); err == nil {
		t.Fatal("server answered an oversized frame instead of closing")
	}
	good.sendRaw(`{"frame":"request","id":1,"request":{"op":"status"}}`)
	if f := good.recv(); f.ID != 1 {
		t.Fatalf("other connection broken: %+v", f)
	}
}

func TestGarbageClosesOnlyThatConnection(t *testing.T) {
	_, path := startServer(t, echoStatus)
	good := dialRaw(t, path)
	for _, body := range []string{`{not json`, `[1,2,3]`, `{"frame":"request","request":{"op":"status"}}`, strings.Repeat("[", 100000)} {
		bad := dialRaw(t, path)
		bad.sendRaw(body)
		if _, err := bad.fr.Read(); err == nil {
			t.Fatalf("%q: server kept a connection that sent garbage", body[:min(20, len(body))])
		}
	}
	good.sendRaw(`{"frame":"request","id":2,"request":{"op":"status"}}`)
	if f := good.recv(); f.ID != 2 {
		t.Fatalf("other connection broken: %+v", f)
	}
}

func TestHandlerPanicBecomesErr(t *testing.T) {
	_, path := startServer(t, echoStatus)
	c := dialRaw(t, path)
	c.sendRaw(`{"frame":"request","id":9,"request":{"op":"shutdown"}}`)
	f := c.recv()
	if e, ok := f.Response.(protocol.Err); !ok || f.ID != 9 || !strings.Contains(e.Message, "internal error") {
		t.Fatalf("got %+v", f)
	}
	c.sendRaw(`{"frame":"request","id":10,"request":{"op":"status"}}`)
	if f := c.recv(); f.ID != 10 {
		t.Fatalf("connection did not survive a panic: %+v", f)
	}
}

func TestEventsReachEveryClientAndSlowClientsDoNotBlock(t *testing.T) {
	srv, path := startServer(t, echoStatus)
	a := dialRaw(t, path)
	stuck := dialRaw(t, path) // never reads
	_ = stuck
	// Make sure both connections are registered before broadcasting.
	a.sendRaw(`{"frame":"request","id":1,"request":{"op":"status"}}`)
	a.recv()
	waitFor(t, func() bool { return srv.Connections() == 2 })

	done := make(chan struct{})
	go func() {
		for i := 0; i < 10000; i++ {
			srv.Broadcast(protocol.PeerHealthChanged{Pubkey: "k", Healthy: i%2 == 0})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Broadcast blocked on a client that does not read")
	}
	f := a.recv()
	if f.Kind != protocol.KindEvent || f.Event.Name() != "peer_health_changed" {
		t.Fatalf("got %+v", f)
	}
	if srv.EventsDropped() == 0 {
		t.Fatal("a client that never reads must lose (and count) events")
	}
}

// A client that sends requests and never reads the answers fills the
// socket's buffers; the server's write then waits. It must give up after
// WriteTimeout and drop that client, not keep its goroutine and socket for
// ever; others are served throughout.
func TestClientThatDoesNotReadIsDisconnected(t *testing.T) {
	srv, path := startServer(t, echoStatus, func(s *Server) { s.WriteTimeout = 200 * time.Millisecond })
	stuck := dialRaw(t, path)
	var batch bytes.Buffer
	for i := 1; i <= 20000; i++ {
		WriteFrame(&batch, protocol.RequestFrame(uint64(i), protocol.SetLocalNodeID{NodeID: uint64(i)}))
	}
	go stuck.nc.Write(batch.Bytes()) // never reads a single answer
	other := dialRaw(t, path)
	other.sendRaw(`{"frame":"request","id":1,"request":{"op":"status"}}`)
	if f := other.recv(); f.ID != 1 {
		t.Fatalf("other client: %+v", f)
	}
	waitFor(t, func() bool { return srv.Connections() == 1 })
}

// The write deadline is moved lazily (refreshWriteDeadline): a connection
// that has lived several WriteTimeouts, idle in between, must still get its
// answers rather than find an expired deadline on its next write.
func TestLongLivedConnectionKeepsGettingAnswers(t *testing.T) {
	_, path := startServer(t, echoStatus, func(s *Server) { s.WriteTimeout = 100 * time.Millisecond })
	c := dialRaw(t, path)
	for i := uint64(1); i <= 4; i++ {
		c.sendRaw(fmt.Sprintf(`{"frame":"request","id":%d,"request":{"op":"status"}}`, i))
		if f := c.recv(); f.ID != i || f.Response.Result() != "ok" {
			t.Fatalf("request %d after %d idle write timeouts: %+v", i, i-1, f)
		}
		time.Sleep(150 * time.Millisecond)
	}
}

func TestShutdownFlushesAnswers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen(path, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var started atomic.Int32
	srv := &Server{Log: testLogger(t), EventQueue: 4, Handler: HandlerFunc(func(ctx context.Context, req protocol.Request) protocol.Response {
		started.Add(1)
		<-release
		return protocol.OK{}
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	c := dialRaw(t, path)
	c.sendRaw(`{"frame":"request","id":1,"request":{"op":"status"}}`)
	waitFor(t, func() bool { return started.Load() == 1 })
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	close(release)
	if f := c.recv(); f.ID != 1 || f.Response.Result() != "ok" {
		t.Fatalf("in-flight request lost at shutdown: %+v", f)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket file left behind: %v", err)
	}
}

func TestAuthorizeRefusalSendsErr(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.sock")
	ln, err := Listen(path, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Handler: echoStatus, Log: testLogger(t), Authorize: func(net.Conn) error {
		return errors.New("permission denied: you are not welcome")
	}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	c := dialRaw(t, path)
	f := c.recv()
	if e, ok := f.Response.(protocol.Err); !ok || !strings.Contains(e.Message, "not welcome") {
		t.Fatalf("got %+v", f)
	}
	if _, err := c.fr.Read(); err == nil {
		t.Fatal("refused connection stayed open")
	}
}

func TestListenSocketRules(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "nested", "run", "x.sock")
	ln, err := Listen(path, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, want socket 0660", fi.Mode())
	}
	// A live listener is never stolen.
	srv := &Server{Handler: echoStatus, Log: testLogger(t)}
	go srv.Serve(ln)
	if _, err := Listen(path, testLogger(t)); err == nil || !strings.Contains(err.Error(), "another zlayer-overlayd is serving "+path) {
		t.Fatalf("second Listen: %v", err)
	}
	srv.Shutdown(context.Background())

	// A dead socket (process killed, file left behind) is replaced.
	stale := filepath.Join(dir, "stale.sock")
	l2, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l2.(*net.UnixListener).SetUnlinkOnClose(false)
	l2.Close()
	if _, err := os.Stat(stale); err != nil {
		t.Fatal("test setup: stale socket should exist")
	}
	l3, err := Listen(stale, testLogger(t))
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l3.Close()

	// A regular file is not ours to delete.
	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, []byte("keep"), 0o644)
	if _, err := Listen(regular, testLogger(t)); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file: %v", err)
	}
	if b, _ := os.ReadFile(regular); string(b) != "keep" {
		t.Fatal("regular file was modified")
	}
}

func TestPolicy(t *testing.T) {
	p := Policy{DaemonUID: 0, GroupID: 990, HasGroup: true}
	cases := []struct {
		c    Caller
		want bool
	}{
		{Caller{UID: 0}, true},
		{Caller{UID: 1000, GID: 990}, true},
		{Caller{UID: 1000, GID: 1000, Groups: []uint32{4, 990}}, true},
		{Caller{UID: 1000, GID: 1000, Groups: []uint32{4}}, false},
	}
	for _, c := range cases {
		if got := p.Allow(c.c) == nil; got != c.want {
			t.Errorf("%+v: allowed=%v want %v", c.c, got, c.want)
		}
	}
	// The daemon's own (non-root) user is allowed; without the group,
	// strangers are refused with a hint.
	p = Policy{DaemonUID: 1500}
	if p.Allow(Caller{UID: 1500, GID: 1500}) != nil {
		t.Error("daemon's own uid refused")
	}
	if err := p.Allow(Caller{UID: 1000, GID: 990}); err == nil || !strings.Contains(err.Error(), "create group zlayer") {
		t.Errorf("stranger: %v", err)
	}
}

func TestPeerCallerIsUs(t *testing.T) {
	var mu sync.Mutex
	var got Caller
	_, path := startServer(t, echoStatus, func(srv *Server) {
		srv.Authorize = func(c net.Conn) error {
			caller, err := PeerCaller(c)
			mu.Lock()
			got = caller
			mu.Unlock()
			return err
		}
	})
	c := dialRaw(t, path)
	c.sendRaw(`{"frame":"request","id":1,"request":{"op":"status"}}`)
	c.recv()
	mu.Lock()
	defer mu.Unlock()
	if got.UID != uint32(os.Geteuid()) || got.PID != int32(os.Getpid()) {
		t.Fatalf("peer credentials %+v, want our uid %d pid %d", got, os.Geteuid(), os.Getpid())
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ConnContext runs once per connection, and every request of that
// connection (and only of it) sees what it put in the context.
func TestConnContextReachesEveryRequestOfItsConnection(t *testing.T) {
	type key struct{}
	var calls atomic.Int64
	h := HandlerFunc(func(ctx context.Context, req protocol.Request) protocol.Response {
		n, _ := ctx.Value(key{}).(int64)
		return protocol.StatusResult{StatusSnapshot: protocol.StatusSnapshot{NodeID: uint64(n)}}
	})
	_, path := startServer(t, h, func(srv *Server) {
		srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, key{}, calls.Add(1))
		}
	})
	for conn := 1; conn <= 2; conn++ {
		c := dialRaw(t, path)
		for id := range 3 {
			c.sendRaw(fmt.Sprintf(`{"frame":"request","id":%d,"request":{"op":"status"}}`, id))
			if got := c.recv().Response.(protocol.StatusResult).NodeID; got != uint64(conn) {
				t.Fatalf("connection %d request %d saw connection %d's context", conn, id, got)
			}
		}
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("ConnContext ran %d times for 2 connections", n)
	}
}

func TestPrivilegedIsRootAndTheDaemonsUserOnly(t *testing.T) {
	p := Policy{DaemonUID: 1500, GroupID: 990, HasGroup: true}
	for _, c := range []struct {
		c    Caller
		want bool
	}{
		{Caller{UID: 0}, true},
		{Caller{UID: 1500}, true},
		{Caller{UID: 1000, GID: 990}, false},
		{Caller{UID: 1000, Groups: []uint32{990}}, false},
	} {
		if got := p.Privileged(c.c); got != c.want {
			t.Errorf("%+v: privileged=%v want %v", c.c, got, c.want)
		}
	}
}
