//go:build linux

package ipc

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// oneConn is a listener that hands out one connection.
type oneConn struct {
	c    chan net.Conn
	done chan struct{}
}

func newOneConn(c net.Conn) *oneConn {
	l := &oneConn{c: make(chan net.Conn, 1), done: make(chan struct{})}
	l.c <- c
	return l
}

func (l *oneConn) Accept() (net.Conn, error) {
	select {
	case c := <-l.c:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *oneConn) Close() error {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	return nil
}

func (l *oneConn) Addr() net.Addr { return &net.UnixAddr{Net: "unix", Name: "fuzz"} }

func socketPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// expectedAnswers is what the documented connection rules promise for a
// stream: every frame that identifies a request, valid or not, is answered
// with its id, in order; client-sent responses and events are ignored; the
// first undecodable frame, an oversized prefix or a cut ends the
// connection after the answers to what came before.
func expectedAnswers(stream []byte) []uint64 {
	bodies, _, _ := splitStream(stream)
	var ids []uint64
	for _, b := range bodies {
		f, err := protocol.UnmarshalFrame(b)
		var bad *protocol.BadRequestError
		switch {
		case errors.As(err, &bad):
			ids = append(ids, bad.ID)
		case err != nil:
			return ids
		case f.Kind == protocol.KindRequest:
			ids = append(ids, f.ID)
		}
	}
	return ids
}

// FuzzServerStream sends an arbitrary byte stream down one connection of a
// real Server (a handler that answers ok to everything) and reads until the
// server hangs up: the answers must be exactly expectedAnswers, each a
// well-formed response frame, and the server must neither panic nor hang.
func FuzzServerStream(f *testing.F) {
	status := `{"frame":"request","id":1,"request":{"op":"status"}}`
	f.Add(frameStream(status))
	f.Add(frameStream(status, `{"frame":"request","id":2,"request":{"op":"no_such_op"}}`, status))
	f.Add(frameStream(`{"frame":"response","id":3,"response":{"result":"ok"}}`, status))
	f.Add(frameStream(status, "garbage", status))
	f.Add(frameStream(status, ""))
	f.Add(append(frameStream(status), 0xff, 0xff, 0xff, 0xff))
	f.Add(append(frameStream(status), 9, 0, 0, 0, '{'))
	f.Add(frameStream(`{"frame":"request","id":18446744073709551615,"request":{"op":"shutdown"}}`, `{"frame":"request","id":7,"request":{"op":"set_local_node_id","node_id":-1}}`))
	quiet := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, stream []byte) {
		want := expectedAnswers(stream)
		srv := &Server{
			Handler:    HandlerFunc(func(context.Context, protocol.Request) protocol.Response { return protocol.OK{} }),
			Log:        quiet,
			EventQueue: 2,
		}
		server, client := socketPair(t)
		defer client.Close()
		served := make(chan error, 1)
		go func() { served <- srv.Serve(newOneConn(server)) }()
		go func() {
			client.Write(stream) // fails once the server hangs up early: fine
			client.CloseWrite()
		}()
		client.SetReadDeadline(time.Now().Add(20 * time.Second))
		fr := NewFrameReader(client)
		var got []uint64
		for {
			body, err := fr.Read()
			if errors.Is(err, ErrClosed) {
				break
			}
			if err != nil {
				t.Fatalf("reading answers after %v: %v", got, err)
			}
			fr, err := protocol.UnmarshalFrame(body)
			if err != nil || fr.Kind != protocol.KindResponse {
				t.Fatalf("the server sent %q (%v)", body, err)
			}
			got = append(got, fr.ID)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("answers for ids %v, want %v", got, want)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Fatalf("shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Fatal(err)
		}
	})
}
