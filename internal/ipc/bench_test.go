package ipc

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// benchServer serves a handler that answers status with a fixed snapshot,
// so the benchmark measures the server: framing, decoding, encoding and
// the socket.
func benchServer(b *testing.B) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "b.sock")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ln, err := Listen(path, log)
	if err != nil {
		b.Fatal(err)
	}
	snap := protocol.StatusResult{StatusSnapshot: protocol.StatusSnapshot{Version: "bench", MTU: 1420, WGBackend: "userspace"}}
	srv := &Server{Log: log, EventQueue: 16, Handler: HandlerFunc(func(context.Context, protocol.Request) protocol.Response { return snap })}
	go srv.Serve(ln)
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return path
}

func benchRoundTrips(b *testing.B, path string, pb interface{ Next() bool }) {
	c, err := net.Dial("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	body := `{"frame":"request","id":1,"request":{"op":"status"}}`
	req := append(binary.LittleEndian.AppendUint32(nil, uint32(len(body))), body...)
	buf := make([]byte, 4096)
	for pb.Next() {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf[:4]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf[:binary.LittleEndian.Uint32(buf[:4])]); err != nil {
			b.Fatal(err)
		}
	}
}

type loopNext struct{ b *testing.B }

func (l loopNext) Next() bool { return l.b.Loop() }

// BenchmarkStatusRoundTrip is one client doing request/response over a
// Unix socket: the latency a caller sees, minus the engine.
func BenchmarkStatusRoundTrip(b *testing.B) {
	path := benchServer(b)
	b.ReportAllocs()
	benchRoundTrips(b, path, loopNext{b})
}

// BenchmarkStatusRoundTripParallel is GOMAXPROCS clients, one connection
// each.
func BenchmarkStatusRoundTripParallel(b *testing.B) {
	path := benchServer(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) { benchRoundTrips(b, path, pb) })
}

// BenchmarkFrameReader is the framing alone: length prefix and body from
// a buffered stream.
func BenchmarkFrameReader(b *testing.B) {
	body := `{"frame":"request","id":1,"request":{"op":"status"}}`
	one := append(binary.LittleEndian.AppendUint32(nil, uint32(len(body))), body...)
	r := &repeatReader{frame: one}
	fr := NewFrameReader(r)
	b.SetBytes(int64(len(one)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := fr.Read(); err != nil {
			b.Fatal(err)
		}
	}
}

type repeatReader struct {
	frame []byte
	off   int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.frame[r.off:])
		n += c
		r.off = (r.off + c) % len(r.frame)
	}
	return n, nil
}
