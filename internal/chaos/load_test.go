//go:build linux

package chaos

import (
	"context"
	"fmt"
	"log/slog"
	gonet "net"
	"net/netip"
	"path/filepath"
	"reflect"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/zlayer/zlayer-overlayd/client"
	"github.com/zlayer/zlayer-overlayd/internal/dns"
	"github.com/zlayer/zlayer-overlayd/internal/engine"
	"github.com/zlayer/zlayer-overlayd/internal/engine/enginetest"
	"github.com/zlayer/zlayer-overlayd/internal/ipc"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// The load suite: 64 concurrent clients × 1,000 mixed requests while
// events stream to every connection. In-process (the real ipc.Server and
// engine on in-memory stand-ins for the kernel, with reconcile and the
// health monitor running every few milliseconds beside the requests) it
// proves under the race detector that nothing deadlocks, every answer is
// the right one, the state ends exactly as the requests leave it, and no
// goroutine outlives the shutdown. Against the real daemon it measures
// throughput and resident memory.

const (
	loadClients  = 64
	loadServices = 4
)

// loadStep is one request of a client's cycle and the answer it must get.
type loadStep struct {
	req  protocol.Request
	want string // result kind
	// check, when set, inspects the answer's content and may record what
	// later steps need (an allocated address).
	check func(protocol.Response) error
}

// loadRun is what the clients of one run share: the answers that must
// agree across them, and where each client's peer stands.
type loadRun struct {
	services sync.Map // service name -> protocol.ServiceOverlay, the first answer
	mu       sync.Mutex
	present  map[string]bool // client's peer key -> whether the last request left it
	// onDevice, when set (in process), reports whether the device holds a
	// peer with a prefix right now: a peer's add_peer and remove_peer
	// answers are checked against the device the moment they arrive, while
	// reconcile passes run beside them.
	onDevice func(key, prefix string) bool
}

func newLoadRun() *loadRun { return &loadRun{present: map[string]bool{}} }

// sharedPrefix is claimed by the peers of every eighth client: WireGuard
// gives a prefix to one peer, the last that claims it, so their add_peer
// requests contend on it.
func sharedPrefix(i int) string { return fmt.Sprintf("172.18.%d.0/24", i%8) }

// loadCycle is the 20-odd-request cycle of client i. Every client works on
// resources of its own (names, PIDs, ranges) besides the shared services,
// node record and contended prefixes; each answer is checked for what it
// must say however the clients interleave. A client's peer outlives most
// cycles: it is removed only every third one.
func loadCycle(i, round int, root bool, procs *enginetest.Procs, peerKey string, run *loadRun) []loadStep {
	svc := fmt.Sprintf("s%d", i%loadServices)
	name := fmt.Sprintf("c%d-%d", i, round%7)
	ip := netip.AddrFrom4([4]byte{10, 1, byte(i), byte(1 + round%250)})
	pid := uint32(1000000 + i*2000 + round)
	var allocated netip.Addr
	steps := []loadStep{
		{req: protocol.Status{}, want: "status", check: checkStatus(root)},
		{req: protocol.Hello{ClientVersion: "chaos"}, want: "hello", check: func(r protocol.Response) error {
			if h := r.(protocol.HelloResult); h.ProtocolVersion != protocol.Version || len(h.Features) == 0 {
				return fmt.Errorf("hello answered %+v", h)
			}
			return nil
		}},
		{req: protocol.RegisterDNS{Name: name, IP: ip}, want: "ok"},
		{req: protocol.UnregisterDNS{Name: name}, want: "ok"},
		{req: protocol.RawRequest(`{"op":"format_disk"}`), want: "err", check: errSays("format_disk")},
		{req: protocol.AllocateIP{Service: "my svc"}, want: "err", check: errSays("service")},
		{req: protocol.SetLocalNodeID{NodeID: 42}, want: "ok"},
	}
	if !root && procs == nil {
		return append(steps, loadStep{req: protocol.Status{}, want: "status", check: checkStatus(root)})
	}
	if procs != nil {
		procs.Add(int(pid))
	}
	own := fmt.Sprintf("172.16.%d.0/24", i)
	allowed := own + "," + sharedPrefix(i)
	extra := fmt.Sprintf("172.17.%d.0/24", i)
	steps = append(steps,
		loadStep{req: protocol.SetupServiceOverlay{Service: svc, Mode: protocol.ModeShared}, want: "service_overlay", check: run.sameService(svc)},
		loadStep{req: protocol.AllocateIP{Service: svc}, want: "ip", check: func(r protocol.Response) error {
			allocated = r.(protocol.IP).IP
			return run.inService(svc, allocated)
		}},
		loadStep{req: nil, want: "ok"}, // release of the address just allocated, filled in by runCycle
		loadStep{req: protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: peerKey, Endpoint: "192.0.2.1:51820", AllowedIPs: allowed, PersistentKeepaliveSecs: 25}}, want: "ok",
			check: run.notePeer(peerKey, true, own)},
		loadStep{req: protocol.AddAllowedIP{Pubkey: peerKey, CIDR: extra}, want: "ok"},
		loadStep{req: protocol.RemoveAllowedIP{Pubkey: peerKey, CIDR: extra}, want: "ok"},
	)
	if round%3 == 2 {
		steps = append(steps, loadStep{req: protocol.RemovePeer{Pubkey: peerKey}, want: "ok", check: run.notePeer(peerKey, false, own)})
	}
	if procs != nil {
		join := round%2 == 0
		steps = append(steps,
			loadStep{req: protocol.AttachContainer{Handle: protocol.LinuxPID(pid), Service: svc, JoinGlobal: join}, want: "attached", check: func(r protocol.Response) error {
				a := r.(protocol.Attached)
				if err := run.inService(svc, a.IP); err != nil {
					return err
				}
				if a.GlobalIP.IsValid() != join || join && !loadSlice.Contains(a.GlobalIP) {
					return fmt.Errorf("join_global=%t answered global_ip %s", join, a.GlobalIP)
				}
				return nil
			}},
			loadStep{req: protocol.Status{}, want: "status", check: checkStatus(root)},
			loadStep{req: protocol.DetachContainer{Handle: protocol.LinuxPID(pid)}, want: "ok"},
		)
	}
	// The release needs the address the allocate returned.
	for k := range steps {
		if steps[k].req == nil {
			steps[k].req = releaseLater{&allocated}
		}
	}
	return steps
}

// loadSlice is the node slice of the load runs.
var loadSlice = netip.MustParsePrefix("10.1.0.0/16")

func checkStatus(root bool) func(protocol.Response) error {
	return func(r protocol.Response) error {
		s := r.(protocol.StatusResult)
		if s.Version == "" || root && (s.Interface != globalIface || s.SliceCIDR != loadSlice.String()) {
			return fmt.Errorf("status: version %q interface %q slice %q", s.Version, s.Interface, s.SliceCIDR)
		}
		return nil
	}
}

func errSays(part string) func(protocol.Response) error {
	return func(r protocol.Response) error {
		if msg := r.(protocol.Err).Message; !strings.Contains(msg, part) {
			return fmt.Errorf("err %q does not mention %q", msg, part)
		}
		return nil
	}
}

// sameService checks every setup of a service answers what the first did.
func (run *loadRun) sameService(svc string) func(protocol.Response) error {
	return func(r protocol.Response) error {
		got := r.(protocol.ServiceOverlay)
		if !loadSlice.Contains(got.Gateway) || got.Subnet == "" {
			return fmt.Errorf("setup of %s answered %+v", svc, got)
		}
		if first, loaded := run.services.LoadOrStore(svc, got); loaded && !reflect.DeepEqual(first.(protocol.ServiceOverlay), got) {
			return fmt.Errorf("setup of %s answered %+v, earlier %+v", svc, got, first)
		}
		return nil
	}
}

// inService checks an address is in a service's subnet.
func (run *loadRun) inService(svc string, a netip.Addr) error {
	v, ok := run.services.Load(svc)
	if !ok {
		return fmt.Errorf("%s handed out before any setup answer", a)
	}
	if subnet := netip.MustParsePrefix(v.(protocol.ServiceOverlay).Subnet); !subnet.Contains(a) || a == v.(protocol.ServiceOverlay).Gateway {
		return fmt.Errorf("%s is not a container address of %s's %s", a, svc, subnet)
	}
	return nil
}

// notePeer records where a client's peer stands once its request is ok,
// and checks the device agrees at that moment (the peer's own prefix is
// claimed by no one else).
func (run *loadRun) notePeer(key string, present bool, own string) func(protocol.Response) error {
	return func(protocol.Response) error {
		run.mu.Lock()
		run.present[key] = present
		run.mu.Unlock()
		if run.onDevice != nil && run.onDevice(key, own) != present {
			return fmt.Errorf("answered ok, but the device has peer %s with %s: %t", key, own, !present)
		}
		return nil
	}
}

// peersLeft are the keys of the peers the run left.
func (run *loadRun) peersLeft() map[string]bool {
	run.mu.Lock()
	defer run.mu.Unlock()
	out := map[string]bool{}
	for k, p := range run.present {
		if p {
			out[k] = true
		}
	}
	return out
}

// releaseLater is a release_ip of an address known only once an earlier
// step has run.
type releaseLater struct{ a *netip.Addr }

func (releaseLater) Op() string { return "release_ip" }

func runCycle(ctx context.Context, c *client.Client, steps []loadStep, lat *latencies) error {
	for _, s := range steps {
		req := s.req
		if r, ok := req.(releaseLater); ok {
			req = protocol.ReleaseIP{IP: *r.a}
		}
		start := time.Now()
		resp, err := c.Do(ctx, req)
		lat.add(req.Op(), time.Since(start))
		lat.done.Add(1)
		if err != nil {
			return fmt.Errorf("%s: %w", req.Op(), err)
		}
		if resp.Result() != s.want {
			return fmt.Errorf("%s answered %#v, want a %s", req.Op(), resp, s.want)
		}
		if s.check != nil {
			if err := s.check(resp); err != nil {
				return fmt.Errorf("%s: %w", req.Op(), err)
			}
		}
	}
	return nil
}

// runLoad drives 64 clients × 1,000 requests (in cycles) and drains their
// events. A deadlock shows as a stall: if no request is answered for two
// minutes, it fails the test with every goroutine's stack. (A slow machine
// is not a deadlock, so there is no limit on the whole run but the test
// timeout.)
func runLoad(t *testing.T, socket string, root bool, procs *enginetest.Procs, perClient int, onDevice func(key, prefix string) bool) (*latencies, []uint64, *loadRun) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lat := &latencies{m: map[string][]time.Duration{}}
	run := newLoadRun()
	run.onDevice = onDevice
	events := make([]uint64, loadClients)
	errs := make(chan error, loadClients)
	var wg sync.WaitGroup
	for i := range loadClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := client.Dial(ctx, socket)
			if err != nil {
				errs <- err
				return
			}
			drained := make(chan struct{})
			go func() {
				defer close(drained)
				for range c.Events() {
					events[i]++
				}
			}()
			defer func() { c.Close(); <-drained }()
			key, err := keyFor("")
			if err != nil {
				errs <- err
				return
			}
			for sent, round := 0, 0; sent < perClient; round++ {
				steps := loadCycle(i, round, root, procs, key, run)
				if n := perClient - sent; n < len(steps) {
					steps = steps[:n]
					// Never stop between a pair: the state must end clean.
					for len(steps) > 0 && !endsClean(steps) {
						steps = steps[:len(steps)-1]
					}
					if len(steps) == 0 {
						break
					}
				}
				if err := runCycle(ctx, c, steps, lat); err != nil {
					errs <- fmt.Errorf("client %d, round %d: %w", i, round, err)
					return
				}
				sent += len(steps)
			}
			errs <- nil
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	last, since := lat.done.Load(), time.Now()
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		case <-time.After(5 * time.Second):
			if n := lat.done.Load(); n != last {
				last, since = n, time.Now()
			} else if time.Since(since) > 2*time.Minute {
				var b strings.Builder
				pprof.Lookup("goroutine").WriteTo(&b, 2)
				cancel()
				t.Fatalf("no request answered for %v after %d (deadlock?); goroutines:\n%s", time.Since(since).Round(time.Second), n, b.String())
			}
		}
	}
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return lat, events, run
}

// endsClean reports whether a cut cycle leaves nothing behind but peers
// (which the run tracks): every register, allocate and attach in it is
// undone in it.
func endsClean(steps []loadStep) bool {
	open := 0
	for _, s := range steps {
		switch s.req.(type) {
		case protocol.RegisterDNS, protocol.AllocateIP, protocol.AttachContainer:
			if r, ok := s.req.(protocol.AllocateIP); ok && r.Service == "my svc" {
				continue
			}
			open++
		case protocol.UnregisterDNS, releaseLater, protocol.DetachContainer:
			open--
		}
	}
	return open == 0
}

// checkPeersLeft compares the peers the device holds (status) with the
// store's and with what the requests left: the same keys, each with the
// same allowed IPs in both, its own prefix on it, and every contended
// prefix on at most one peer in each.
func checkPeersLeft(t *testing.T, s protocol.StatusSnapshot, stored []store.Peer, want map[string]bool) {
	t.Helper()
	device := map[string][]string{}
	for _, p := range s.Peers {
		ips := strings.Split(p.AllowedIPs, ",")
		if p.AllowedIPs == "" {
			ips = nil
		}
		slices.Sort(ips)
		device[p.PublicKey] = ips
	}
	inStore := map[string][]string{}
	for _, p := range stored {
		if p.Scope == "global" {
			inStore[p.PublicKey] = slices.Sorted(slices.Values(p.AllowedIPs))
		}
	}
	if len(device) != len(want) || len(inStore) != len(want) {
		t.Errorf("%d peers on the device, %d in the store, %d left by the requests", len(device), len(inStore), len(want))
	}
	for key := range want {
		if !slices.Equal(device[key], inStore[key]) {
			t.Errorf("peer %s: allowed IPs %v on the device, %v in the store", key, device[key], inStore[key])
		}
		if len(device[key]) == 0 || !strings.HasPrefix(device[key][0], "172.16.") {
			t.Errorf("peer %s lacks its own prefix: %v", key, device[key])
		}
	}
	checkOneHolder(t, "on the device", device)
	checkOneHolder(t, "in the store", inStore)
}

// checkOneHolder checks no prefix is held by two peers.
func checkOneHolder(t *testing.T, where string, peers map[string][]string) {
	t.Helper()
	holders := map[string][]string{}
	for key, ips := range peers {
		for _, ip := range ips {
			holders[ip] = append(holders[ip], key)
		}
	}
	for ip, keys := range holders {
		if len(keys) > 1 {
			slices.Sort(keys)
			t.Errorf("%s is held by %d peers %s: %v", ip, len(keys), where, keys)
		}
	}
}

type latencies struct {
	mu sync.Mutex
	m  map[string][]time.Duration
	// done counts answered requests: the watchdog's measure of progress.
	done atomic.Int64
}

func (l *latencies) add(op string, d time.Duration) {
	l.mu.Lock()
	l.m[op] = append(l.m[op], d)
	l.mu.Unlock()
}

func (l *latencies) report(t *testing.T, total time.Duration) {
	var n int
	ops := make([]string, 0, len(l.m))
	for op, ds := range l.m {
		ops = append(ops, op)
		n += len(ds)
	}
	sort.Strings(ops)
	t.Logf("%d requests in %v: %.0f requests/s", n, total.Round(time.Millisecond), float64(n)/total.Seconds())
	for _, op := range ops {
		ds := l.m[op]
		slices.Sort(ds)
		t.Logf("  %-20s n=%-6d p50=%-10v p99=%-10v max=%v", op, len(ds), ds[len(ds)/2].Round(time.Microsecond), ds[len(ds)*99/100].Round(time.Microsecond), ds[len(ds)-1].Round(time.Microsecond))
	}
}

func TestLoadInProcess(t *testing.T) {
	perClient := *reqsFlag
	if testing.Short() {
		perClient = min(perClient, 100)
	}
	ignore := goleak.IgnoreCurrent()
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, store.FileName), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	dsrv, err := dns.New(dns.Config{Zone: zone, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	net := enginetest.NewNet()
	procs := enginetest.NewProcs()
	srv := &ipc.Server{Log: quiet, EventQueue: 1024}
	wgb := enginetest.NewWG(net, wg.KindUserspace)
	eng, err := engine.New(engine.Config{
		Store: st, Net: net, WG: wgb, Procs: procs, Log: quiet,
		Publish: srv.Broadcast, EventsDropped: srv.EventsDropped,
		ServiceBits: 24,
		// Reconcile and the health monitor run all the time beside the
		// requests: their locking is under test too.
		ReconcileInterval: 50 * time.Millisecond,
		HealthInterval:    50 * time.Millisecond,
		DNS:               &engine.DNSConfig{Server: dsrv, OverlayPort: 0},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.Handler = eng
	socket := filepath.Join(dir, "s.sock")
	ln, err := ipc.Listen(socket, quiet)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	setup, err := client.Dial(context.Background(), socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := setup.Call(ctx, protocol.SetupGlobalOverlay{Deployment: deployment, InstanceID: "1", ClusterCIDR: "10.0.0.0/8", SliceCIDR: "10.1.0.0/16", WGPort: wgPort}); err != nil {
		t.Fatal(err)
	}

	// Events stream to every connection for the whole run.
	stopEvents := make(chan struct{})
	var pushed atomic.Uint64
	evDone := make(chan struct{})
	go func() {
		defer close(evDone)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopEvents:
				return
			case <-tick.C:
				n := pushed.Add(1)
				srv.Broadcast(protocol.PeerHealthChanged{Pubkey: fmt.Sprintf("peer-%d", n%97), Healthy: n%2 == 0})
			}
		}
	}()

	start := time.Now()
	lat, events, run := runLoad(t, socket, true, procs, perClient, func(key, prefix string) bool {
		p, ok := wgb.Device(globalIface).PeerNow(mustParseKey(key))
		return ok && slices.ContainsFunc(p.AllowedIPs, func(n gonet.IPNet) bool { return n.String() == prefix })
	})
	elapsed := time.Since(start)
	close(stopEvents)
	<-evDone
	lat.report(t, elapsed)
	var received uint64
	for i, n := range events {
		if n == 0 {
			t.Errorf("client %d received no events", i)
		}
		received += n
	}
	t.Logf("events: %d pushed to each of %d connections, %d received in all, %d dropped by the server", pushed.Load(), loadClients+1, received, srv.EventsDropped())

	// The state is exactly what the requests leave: the global overlay, the
	// services and the peers, nothing else; the device holds what the store
	// holds. Routes go with the peers, and are checked before Close, which
	// takes the device and every route on it away.
	s, err := setup.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	checkPeersLeft(t, s, loaded.Peers, run.peersLeft())
	wantRoutes := map[string]bool{}
	for _, p := range loaded.Peers {
		for _, ip := range p.AllowedIPs {
			wantRoutes[ip] = true
		}
	}
	routes, _ := net.Routes(globalIface)
	for _, r := range routes {
		if !wantRoutes[r.Dst.String()] {
			t.Errorf("route %s into the global device, which no peer holds", r.Dst)
		}
		delete(wantRoutes, r.Dst.String())
	}
	if len(wantRoutes) != 0 {
		t.Errorf("allowed IPs of peers without a route into the device: %v", wantRoutes)
	}
	eng.Close() // waits for background detaches
	if s, err = setup.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if len(s.Attachments) != 0 || s.DNS.Records != 0 || s.NodeID != 42 || len(s.Services) != loadServices || s.SlicePool.Used != 1 {
		t.Fatalf("state after the load: attachments %v DNS names %d node id %d services %d slice in use %d",
			s.Attachments, s.DNS.Records, s.NodeID, len(s.Services), s.SlicePool.Used)
	}
	for _, svc := range s.Services {
		if svc.Used != 1 {
			t.Errorf("service %s has %d addresses in use after every client released its own", svc.Service, svc.Used)
		}
	}
	if links, _ := net.Links("zl-v"); len(links) != 0 {
		t.Errorf("veths left after every container was detached: %v", links)
	}

	setup.Close()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	dsrv.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("heap in use: %d KiB before, %d KiB after shutdown; %d goroutines", before.HeapInuse>>10, after.HeapInuse>>10, runtime.NumGoroutine())
	goleak.VerifyNone(t, ignore)
}

// TestLoadRealDaemon is the same load against the real daemon (in a lab
// node as root, with a global overlay and services; as this user, on the
// requests that need no devices), reporting throughput, latencies and the
// daemon's resident memory.
func TestLoadRealDaemon(t *testing.T) {
	perClient := *reqsFlag
	if testing.Short() {
		perClient = min(perClient, 100)
	}
	// /24 service subnets: 16 clients share each service's pool.
	d := newTarget(t, "--service-prefix", "24")
	root := d.node != nil
	if root {
		c := dialRaw(t, d.socket)
		c.write(frame(request(1, `{"op":"setup_global_overlay","deployment":"zltr","instance_id":"1","cluster_cidr":"10.0.0.0/8","slice_cidr":"10.1.0.0/16","wg_port":51820,"nat_enabled":false}`)))
		if r, err := c.answer(1); err != nil || r.Result() != "bridge_name" {
			t.Fatalf("setup: %v %#v", err, r)
		}
	}
	pid := d.pid()
	base, err := rss(pid)
	if err != nil {
		t.Fatal(err)
	}
	var peak atomic.Int64
	peak.Store(int64(base))
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				if kb, err := rss(pid); err == nil && int64(kb) > peak.Load() {
					peak.Store(int64(kb))
				}
			}
		}
	}()
	start := time.Now()
	lat, _, run := runLoad(t, d.socket, root, nil, perClient, nil)
	elapsed := time.Since(start)
	close(stop)
	<-sampled
	lat.report(t, elapsed)
	after, _ := rss(pid)
	t.Logf("daemon resident memory: %d KiB before, %d KiB at the peak, %d KiB after", base, peak.Load(), after)
	// A sanity bound, not a measurement: without the race detector the
	// daemon stays under 100 MiB through round after round of this load
	// (measured); the race detector's shadow memory multiplies that.
	bound := int64(256 << 10)
	if raceOn {
		bound = 2 << 20
	}
	if peak.Load() > bound {
		t.Errorf("the daemon's resident memory peaked at %d KiB (bound %d KiB)", peak.Load(), bound)
	}
	s, err := dialRaw(t, d.socket).status(1)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Attachments) != 0 || s.DNS == nil || s.DNS.Records != 0 {
		t.Fatalf("state after the load: attachments %v DNS %+v", s.Attachments, s.DNS)
	}
	if root {
		stored := make([]store.Peer, 0, len(s.Peers))
		for _, p := range s.Peers {
			// The real daemon's store is its own; the device's peers must
			// be the ones the requests left, each with its own prefix.
			stored = append(stored, store.Peer{Scope: "global", PublicKey: p.PublicKey, AllowedIPs: strings.Split(p.AllowedIPs, ",")})
		}
		checkPeersLeft(t, s, stored, run.peersLeft())
	}
	if root {
		for _, svc := range s.Services {
			if svc.Used != 1 {
				t.Errorf("service %s has %d addresses in use after every client released its own", svc.Service, svc.Used)
			}
		}
	}
}

func mustParseKey(b64 string) wgtypes.Key {
	k, err := wg.ParseKey(b64)
	if err != nil {
		panic(err)
	}
	return k
}
