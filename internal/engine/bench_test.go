package engine

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/engine/enginetest"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// benchEngine is an engine on the test fakes (no kernel) over a store
// without fsync, so the benchmarks measure the engine's own work: locks,
// state, validation, store encoding and the device calls it makes.
func benchEngine(b *testing.B) *Engine {
	b.Helper()
	st, err := store.Open(filepath.Join(b.TempDir(), store.FileName), store.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	n := enginetest.NewNet()
	e, err := New(Config{
		Store: st, Net: n, WG: enginetest.NewWG(n, wg.KindKernel), Procs: enginetest.NewProcs(),
		Log:               slog.New(slog.NewTextHandler(io.Discard, nil)),
		ReconcileInterval: -1, HealthInterval: -1,
		Publish: func(protocol.Event) {},
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(e.Close)
	resp := e.Handle(context.Background(), protocol.SetupGlobalOverlay{Deployment: "bench", InstanceID: "1", ClusterCIDR: "10.200.0.0/16", SliceCIDR: "10.200.3.0/24", WGPort: 51820})
	if er, bad := resp.(protocol.Err); bad {
		b.Fatal(er.Message)
	}
	return e
}

func benchPeers(b *testing.B, e *Engine, n int) {
	b.Helper()
	for i := range n {
		k, _ := wgtypes.GeneratePrivateKey()
		resp := e.Handle(context.Background(), protocol.AddPeer{PeerSpec: protocol.PeerSpec{
			PublicKey: k.PublicKey().String(), Endpoint: fmt.Sprintf("192.0.2.%d:51820", i%250+1),
			AllowedIPs: fmt.Sprintf("10.200.%d.%d/32", 100+i/250, i%250+1),
		}})
		if er, bad := resp.(protocol.Err); bad {
			b.Fatal(er.Message)
		}
	}
}

// BenchmarkDispatch is the request path below the IPC server for the
// requests a main daemon sends most: status (read-only, with 100 peers)
// and hello.
func BenchmarkDispatch(b *testing.B) {
	e := benchEngine(b)
	benchPeers(b, e, 100)
	ctx := context.Background()
	for _, req := range []protocol.Request{protocol.Hello{}, protocol.Status{}} {
		b.Run(req.Op(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, bad := e.Handle(ctx, req).(protocol.Err); bad {
					b.Fatal("err answer")
				}
			}
		})
		b.Run(req.Op()+"-parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					e.Handle(ctx, req)
				}
			})
		})
	}
}

// BenchmarkAddPeerUpsert is add_peer through the engine for a peer that
// already exists with a changed endpoint (the common update), with 1,000
// peers configured: validation, the peer lock, the store commit and the
// device configuration.
func BenchmarkAddPeerUpsert(b *testing.B) {
	e := benchEngine(b)
	benchPeers(b, e, 1000)
	k, _ := wgtypes.GeneratePrivateKey()
	pub := k.PublicKey().String()
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		resp := e.Handle(ctx, protocol.AddPeer{PeerSpec: protocol.PeerSpec{
			PublicKey: pub, Endpoint: fmt.Sprintf("192.0.2.%d:51820", i%250+1), AllowedIPs: "10.200.200.1/32",
		}})
		if er, bad := resp.(protocol.Err); bad {
			b.Fatal(er.Message)
		}
	}
}

// BenchmarkAddPeerAtScale is add_peer of a new peer with 1,000 and 5,000
// peers already there: its cost must not grow with them.
func BenchmarkAddPeerAtScale(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			e := benchEngine(b)
			benchPeers(b, e, n)
			ctx := context.Background()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				k, _ := wgtypes.GeneratePrivateKey()
				resp := e.Handle(ctx, protocol.AddPeer{PeerSpec: protocol.PeerSpec{
					PublicKey: k.PublicKey().String(), Endpoint: "192.0.2.9:51820",
					AllowedIPs: fmt.Sprintf("10.201.%d.%d/32", i/250%250, i%250+1),
				}})
				if er, bad := resp.(protocol.Err); bad {
					b.Fatal(er.Message)
				}
			}
		})
	}
}

// BenchmarkStatusAtScale is a status answer with 5,000 peers, split the
// way its time is: the engine building it, the server encoding the frame,
// and a client decoding it. zlbench's scale goal (status < 50 ms) is their
// sum plus the socket.
func BenchmarkStatusAtScale(b *testing.B) {
	e := benchEngine(b)
	benchPeers(b, e, 5000)
	ctx := context.Background()
	answer := func() protocol.Response {
		resp := e.Handle(ctx, protocol.Status{})
		st, ok := resp.(protocol.StatusResult)
		if !ok || len(st.Peers) != 5000 {
			b.Fatalf("status answered %#v", resp)
		}
		return resp
	}
	b.Run("engine", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			answer()
		}
	})
	frame, err := protocol.MarshalFrame(protocol.ResponseFrame(1, answer()))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode", func(b *testing.B) {
		resp := answer()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := protocol.MarshalFrame(protocol.ResponseFrame(1, resp)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.SetBytes(int64(len(frame)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := protocol.UnmarshalFrame(frame); err != nil {
				b.Fatal(err)
			}
		}
	})
}
