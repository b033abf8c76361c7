package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/ipc"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// nodeIDEcho answers set_local_node_id with a status carrying the same id,
// so every answer proves which request it belongs to.
var nodeIDEcho = ipc.HandlerFunc(func(ctx context.Context, req protocol.Request) protocol.Response {
	if r, ok := req.(protocol.SetLocalNodeID); ok {
		return protocol.StatusResult{StatusSnapshot: protocol.StatusSnapshot{NodeID: r.NodeID}}
	}
	return protocol.OK{}
})

func serve(t *testing.T, path string, h ipc.Handler) *ipc.Server {
	t.Helper()
	ln, err := ipc.Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := &ipc.Server{Handler: h, EventQueue: 64}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv
}

func TestConcurrentClientsGetTheirOwnAnswers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.sock")
	serve(t, path, nodeIDEcho)
	const clients, perClient = 64, 1000
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := Dial(ctx, path)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for j := range perClient {
				want := uint64(i*perClient + j)
				s, err := c.Call(ctx, protocol.SetLocalNodeID{NodeID: want})
				if err != nil {
					errs <- err
					return
				}
				if got := s.(protocol.StatusResult).NodeID; got != want {
					errs <- fmt.Errorf("client %d request %d got the answer for %d", i, j, got)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestPipeliningOnOneClient(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.sock")
	serve(t, path, nodeIDEcho)
	ctx := context.Background()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	var bad sync.Map
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 200 {
				want := uint64(i*1000 + j)
				s, err := c.Call(ctx, protocol.SetLocalNodeID{NodeID: want})
				if err != nil || s.(protocol.StatusResult).NodeID != want {
					bad.Store(want, err)
				}
			}
		}()
	}
	wg.Wait()
	bad.Range(func(k, v any) bool { t.Errorf("request %v: %v", k, v); return true })
}

// A server that answers out of order: the client must match by id.
func TestAnswersMatchedByIDInAnyOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rev.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		fr := ipc.NewFrameReader(nc)
		var held []protocol.Frame
		for len(held) < 3 {
			body, err := fr.Read()
			if err != nil {
				return
			}
			f, _ := protocol.UnmarshalFrame(body)
			held = append(held, f)
		}
		for i := len(held) - 1; i >= 0; i-- {
			r := held[i].Request.(protocol.SetLocalNodeID)
			ipc.WriteFrame(nc, protocol.ResponseFrame(held[i].ID, protocol.StatusResult{StatusSnapshot: protocol.StatusSnapshot{NodeID: r.NodeID}}))
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := c.Call(ctx, protocol.SetLocalNodeID{NodeID: uint64(100 + i)})
			if err != nil {
				t.Error(err)
				return
			}
			if got := s.(protocol.StatusResult).NodeID; got != uint64(100+i) {
				t.Errorf("request %d got answer %d", 100+i, got)
			}
		}()
	}
	wg.Wait()
}

func TestReconnectsAfterDaemonRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.sock")
	ln, err := ipc.Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := &ipc.Server{Handler: nodeIDEcho}
	go srv.Serve(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Call(ctx, protocol.Status{}); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown(ctx)
	// While the daemon is down a request waits (bounded by its context)
	// and goes through once it is back.
	go func() {
		time.Sleep(300 * time.Millisecond)
		serve(t, path, nodeIDEcho)
	}()
	s, err := c.Call(ctx, protocol.SetLocalNodeID{NodeID: 42})
	if err != nil {
		t.Fatalf("request after restart: %v", err)
	}
	if s.(protocol.StatusResult).NodeID != 42 {
		t.Fatalf("got %+v", s)
	}
}

func TestDaemonNotRunning(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nobody.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := Dial(ctx, path)
	if err == nil || !strings.Contains(err.Error(), path) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
}

func TestEventsAndErrResponses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.sock")
	srv := serve(t, path, ipc.HandlerFunc(func(ctx context.Context, req protocol.Request) protocol.Response {
		return protocol.Err{Message: "no dedicated overlay for service x"}
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Call(ctx, protocol.Status{})
	var perr protocol.Err
	if !errors.As(err, &perr) || perr.Message != "no dedicated overlay for service x" {
		t.Fatalf("Call: %v", err)
	}
	resp, err := c.Do(ctx, protocol.Status{})
	if err != nil || resp.Result() != "err" {
		t.Fatalf("Do: %v %v", resp, err)
	}
	srv.Broadcast(protocol.NATEndpointChanged{Pubkey: "k", Endpoint: "198.51.100.7:40123"})
	select {
	case ev := <-c.Events():
		if e, ok := ev.(protocol.NATEndpointChanged); !ok || e.Endpoint != "198.51.100.7:40123" {
			t.Fatalf("event %+v", ev)
		}
	case <-ctx.Done():
		t.Fatal("no event")
	}
}

func TestRawRequestReachesServerVerbatim(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.sock")
	serve(t, path, nodeIDEcho)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.DoRaw(ctx, []byte(`{"op":"no_such_op"}`))
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := resp.(protocol.Err); !ok || !strings.Contains(e.Message, "no_such_op") {
		t.Fatalf("got %+v", resp)
	}
	if _, err := c.DoRaw(ctx, []byte(`{"op":`)); err == nil {
		t.Fatal("invalid JSON sent")
	}
}

// The daemon writes its refusal and hangs up; when the client's request
// hits the closed socket before the read loop has read that refusal (a
// slow CPU makes this the common order), the reason must still be what
// the client reports, not "use of closed network connection".
func TestRefusalSurvivesAFailedWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	refused := make(chan error, 1)
	go func() {
		nc, err := ln.Accept()
		if err == nil {
			err = ipc.WriteFrame(nc, protocol.ResponseFrame(0, protocol.Err{Message: "permission denied: uid 1234"}))
			nc.Close()
		}
		refused <- err
	}()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-refused; err != nil {
		t.Fatal(err)
	}
	c := New(path)
	defer c.Close()
	cc := &conn{client: c, nc: nc, pending: map[uint64]chan protocol.Response{}, dead: make(chan struct{})}
	// Write until the closed peer makes it fail (the first write may still
	// land in the socket buffer).
	for i := 0; ; i++ {
		if err := cc.write(context.Background(), protocol.RequestFrame(1, protocol.Status{})); err != nil {
			break
		}
		if i == 100 {
			t.Fatal("writes to a socket whose peer hung up kept succeeding")
		}
		time.Sleep(time.Millisecond)
	}
	cc.readLoop()
	if err := cc.failure(); err == nil || !strings.Contains(err.Error(), "refused the connection: permission denied: uid 1234") {
		t.Fatalf("failure after the refusal: %v", err)
	}
}

func TestRefusedConnectionExplainsWhy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.sock")
	ln, err := ipc.Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := &ipc.Server{Handler: nodeIDEcho, Authorize: func(net.Conn) error { return errors.New("permission denied: uid 1234") }}
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c := New(path)
	defer c.Close()
	_, err = c.Call(ctx, protocol.Status{})
	if err == nil || !strings.Contains(err.Error(), "permission denied: uid 1234") {
		t.Fatalf("got %v", err)
	}
}
