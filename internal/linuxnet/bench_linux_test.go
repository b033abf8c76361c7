package linuxnet

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// newNetInFreshNetns returns a Net bound to a new, unnamed network namespace. The calling
// thread is inside that namespace only while New opens its sockets; the namespace lives as
// long as the Net does.
func newNetInFreshNetns(tb testing.TB) *Net {
	tb.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatal(err)
	}
	defer orig.Close()
	fresh, err := netns.New() // moves this thread into it
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatal(err)
	}
	n, newErr := New()
	fresh.Close()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked so the runtime destroys it with this goroutine.
		tb.Fatalf("could not return to the original network namespace: %v", err)
	}
	runtime.UnlockOSThread()
	if newErr != nil {
		tb.Fatal(newErr)
	}
	tb.Cleanup(n.Close)
	return n
}

type benchEnv struct {
	n   *Net
	id  string
	br  string
	gw  netip.Addr
	ctr []*container
}

func setupBench(b *testing.B, containers int) *benchEnv {
	requirePrivileges(b)
	e := &benchEnv{n: newNetInFreshNetns(b), id: randomID(b), gw: netip.MustParseAddr("10.200.3.1")}
	e.br = "zltl" + e.id + "b"
	if err := e.n.EnsureBridge(BridgeSpec{Name: e.br, Gateway: netip.MustParsePrefix("10.200.3.1/24"), MTU: 1400}); err != nil {
		b.Fatal(err)
	}
	for i := range containers {
		e.ctr = append(e.ctr, newNamedContainer(b, fmt.Sprintf("zltl-%s-b%d", e.id, i)))
	}
	return e
}

func (e *benchEnv) spec(i int) AttachSpec {
	return AttachSpec{
		PID:      e.ctr[i].pid,
		HostName: fmt.Sprintf("zltl%sh%d", e.id, i),
		IfName:   "eth0",
		Addr:     netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, 3, byte(10 + i)}), 24),
		MTU:      1400,
		Bridge:   e.br,
		Gateway:  e.gw,
	}
}

// attachDetach times one Attach and the Detach that follows it.
func attachDetach(n *Net, spec AttachSpec) (attach, detach time.Duration, err error) {
	t0 := time.Now()
	if err := n.Attach(spec); err != nil {
		return 0, 0, err
	}
	t1 := time.Now()
	if err := n.Detach(spec.HostName); err != nil {
		return 0, 0, err
	}
	return t1.Sub(t0), time.Since(t1), nil
}

func reportPercentiles(b *testing.B, attach, detach []time.Duration) {
	b.ReportMetric(percentileMs(attach, 50), "p50-attach-ms")
	b.ReportMetric(percentileMs(attach, 90), "p90-attach-ms")
	b.ReportMetric(percentileMs(detach, 50), "p50-detach-ms")
	b.ReportMetric(percentileMs(detach, 90), "p90-detach-ms")
}

// BenchmarkAttachDetach measures one bridged attach (veth pair with the peer born in the
// container, address, MTU, lo, default route, bridge port, up) and its detach.
func BenchmarkAttachDetach(b *testing.B) {
	e := setupBench(b, 1)
	spec := e.spec(0)
	var attach, detach []time.Duration
	for b.Loop() {
		a, d, err := attachDetach(e.n, spec)
		if err != nil {
			b.Fatal(err)
		}
		attach, detach = append(attach, a), append(detach, d)
	}
	reportPercentiles(b, attach, detach)
}

// BenchmarkAttachDetachParallel runs attach+detach for four containers at once through one
// Net, showing that a slow detach does not hold up other operations.
func BenchmarkAttachDetachParallel(b *testing.B) {
	const workers = 4
	e := setupBench(b, workers)
	var mu sync.Mutex
	var attach, detach []time.Duration
	for b.Loop() {
		var wg sync.WaitGroup
		for i := range workers {
			wg.Go(func() {
				a, d, err := attachDetach(e.n, e.spec(i))
				if err != nil {
					b.Error(err)
					return
				}
				mu.Lock()
				attach, detach = append(attach, a), append(detach, d)
				mu.Unlock()
			})
		}
		wg.Wait()
		if b.Failed() {
			b.FailNow()
		}
	}
	reportPercentiles(b, attach, detach)
}

func percentileMs(d []time.Duration, p int) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[(len(s)-1)*p/100]) / float64(time.Millisecond)
}
