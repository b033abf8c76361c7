package nat

import (
	"net/netip"
	"testing"

	"github.com/pion/stun/v3"
	"golang.zx2c4.com/wireguard/conn"
)

// benchBatch is a full wireguard-go receive batch (conn.IdealBatchSize) of
// MTU-sized transport packets, with every stunEvery-th replaced by a STUN
// answer nobody waits for (0: none).
func benchBatch(b *testing.B, stunEvery int) ([][]byte, []int, []conn.Endpoint) {
	b.Helper()
	n := conn.IdealBatchSize
	resp := mustBuild(b, stun.NewTransactionIDSetter(TransactionID{1}), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: []byte{203, 0, 113, 1}, Port: 51830}, stun.Fingerprint)
	packets := make([][]byte, n)
	sizes := make([]int, n)
	eps := make([]conn.Endpoint, n)
	for i := range packets {
		packets[i] = make([]byte, 1500)
		p := wireGuardPacket(4, 1452, [4]byte{byte(i), 1, 2, 3})
		if stunEvery > 0 && i%stunEvery == 0 {
			p = resp
		}
		sizes[i] = copy(packets[i], p)
		eps[i] = fakeEndpoint{netip.MustParseAddrPort("192.0.2.1:3478")}
	}
	return packets, sizes, eps
}

// BenchmarkFilter measures the cost the STUN filter adds to one receive
// batch of 128 packets; ns/pkt is the per-packet share.
func BenchmarkFilter(b *testing.B) {
	for _, bc := range []struct {
		name      string
		stunEvery int
	}{
		{"wireguard-only", 0},
		{"one-stun-in-128", conn.IdealBatchSize},
		{"every-8th-stun", 8},
	} {
		b.Run(bc.name, func(b *testing.B) {
			bind := NewBind(newFakeBind(), nil)
			packets, sizes, eps := benchBatch(b, bc.stunEvery)
			orig := append([]int(nil), sizes...)
			b.ReportAllocs()
			for b.Loop() {
				copy(sizes, orig)
				bind.filter(packets, sizes, eps)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(packets)), "ns/pkt")
		})
	}
}

// BenchmarkReceive compares a receive function of an inner bind that
// returns a ready batch with the same function wrapped by Bind: the
// difference is everything the wrapper costs wireguard-go per batch.
func BenchmarkReceive(b *testing.B) {
	packets, sizes, eps := benchBatch(b, 0)
	orig := append([]int(nil), sizes...)
	inner := func(p [][]byte, s []int, e []conn.Endpoint) (int, error) {
		copy(s, orig)
		return len(orig), nil
	}
	b.Run("inner", func(b *testing.B) {
		for b.Loop() {
			inner(packets, sizes, eps)
		}
	})
	b.Run("wrapped", func(b *testing.B) {
		fn := NewBind(newFakeBind(), nil).receiveIPv4(inner)
		b.ReportAllocs()
		for b.Loop() {
			fn(packets, sizes, eps)
		}
	})
}

func BenchmarkParseBindingResponse(b *testing.B) {
	resp := mustBuild(b, stun.NewTransactionIDSetter(TransactionID{1}), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: []byte{203, 0, 113, 1}, Port: 51830}, stun.NewSoftware("bench"), stun.Fingerprint)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ParseBindingResponse(resp); err != nil {
			b.Fatal(err)
		}
	}
}
