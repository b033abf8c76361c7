package engine

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// fakeResolver answers host names from a table. With together > 0 it
// holds every lookup until that many are in flight at once (or the
// lookup's context ends); with hang set it answers none, as a resolver
// nobody reaches. It records the time each lookup was given to finish.
type fakeResolver struct {
	mu        sync.Mutex
	addrs     map[string]netip.Addr
	together  int
	hang      bool
	inFlight  int
	release   chan struct{}
	lookups   int
	maxBudget time.Duration // the longest deadline a lookup was given
}

func newFakeResolver() *fakeResolver {
	return &fakeResolver{addrs: map[string]netip.Addr{}, release: make(chan struct{})}
}

// hangFromNow makes every later lookup wait until its context ends, and
// forgets the lookups seen so far.
func (r *fakeResolver) hangFromNow() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hang = true
	r.lookups, r.maxBudget = 0, 0
}

// seen is the number of lookups since hangFromNow and the longest time
// one of them was given to finish.
func (r *fakeResolver) seen() (lookups int, budget time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lookups, r.maxBudget
}

func (r *fakeResolver) LookupNetIP(ctx context.Context, _, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	r.lookups++
	if dl, ok := ctx.Deadline(); ok {
		r.maxBudget = max(r.maxBudget, time.Until(dl))
	}
	a, known := r.addrs[host]
	wait := r.hang || r.together > 0
	if r.together > 0 {
		if r.inFlight++; r.inFlight == r.together {
			close(r.release)
		}
	}
	release := r.release
	hang := r.hang
	r.mu.Unlock()
	if wait {
		if hang {
			release = nil
		}
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if !known {
		return nil, fmt.Errorf("no such host %s", host)
	}
	return []netip.Addr{a}, nil
}

// namedPeers adds n peers whose endpoints are host names the resolver
// knows, and returns their endpoints' addresses by public key.
func namedPeers(t *testing.T, h *harness, r *fakeResolver, n int) map[string]netip.AddrPort {
	t.Helper()
	want := map[string]netip.AddrPort{}
	for i := range n {
		pk := newKey(t)
		host := fmt.Sprintf("node-%d.cluster.test", i)
		a := netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)})
		r.mu.Lock()
		r.addrs[host] = a
		r.mu.Unlock()
		h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{
			PublicKey:  pk.String(),
			Endpoint:   host + ":51820",
			AllowedIPs: fmt.Sprintf("10.200.7.%d/32", i+1),
		}})
		want[pk.String()] = netip.AddrPortFrom(a, 51820)
	}
	return want
}

// At restore nothing is resolved yet, and the names of all peers are
// looked up side by side: this resolver answers only once all four
// lookups are in flight. One after another, the first waited for the
// others until the restore's budget for names ran out, and the peers came
// back without their endpoints.
func TestNamedPeersResolveSideBySideAtRestore(t *testing.T) {
	r := newFakeResolver()
	h := newHarnessWith(t, func(c *Config) { c.Resolver = r })
	h.ok(globalReq("10.200.3.0/24"))
	const peers = 4
	want := namedPeers(t, h, r, peers)
	r.mu.Lock()
	r.together = peers
	r.mu.Unlock()
	h.crash()
	dev := h.wg.Device("zl-prod-g")
	for pub, ap := range want {
		key, err := wgtypes.ParseKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		p := dev.Peer(key)
		if p == nil {
			t.Fatalf("peer %s missing after restore", pub)
		}
		if p.Endpoint == nil || p.Endpoint.String() != ap.String() {
			t.Errorf("peer %s restored with endpoint %v, want %s", pub, p.Endpoint, ap)
		}
	}
}

// A resolver nobody reaches must not hold back the restore, which comes
// before the node serves anyone: every lookup at start is given at most
// the start's budget for names, however many names there are, and the
// rest of the restore (a bridge someone deleted) still happens.
func TestUnansweredNamesDoNotHoldBackRestore(t *testing.T) {
	r := newFakeResolver()
	h := newHarnessWith(t, func(c *Config) { c.Resolver = r })
	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})
	namedPeers(t, h, r, 40)
	bridge := h.status().Services[0].Bridge
	h.net.DeleteLink(bridge)
	r.hangFromNow()
	h.crash()
	lookups, budget := r.seen()
	if lookups == 0 {
		t.Fatal("the restore looked no name up")
	}
	if budget > startupResolveBudget {
		t.Errorf("a lookup at restore was given %v to finish; the restore's budget for names is %v", budget, startupResolveBudget)
	}
	if !h.net.Has(bridge) {
		t.Errorf("bridge %s not restored", bridge)
	}
	if s := h.status(); len(s.Peers) != 40 {
		t.Errorf("%d peers after restore, want 40", len(s.Peers))
	}
}

// The health monitor looks up the named candidates it moves peers to side
// by side too: this resolver answers only once all three lookups are in
// flight, so one after another each would time out and no peer would
// move.
func TestCandidateNamesResolveSideBySide(t *testing.T) {
	r := newFakeResolver()
	h := newHarnessWith(t, func(c *Config) { c.Resolver = r })
	h.ok(globalReq("10.200.3.0/24"))
	const peers = 3
	want := map[wgtypes.Key]string{}
	for i := range peers {
		pk := newKey(t)
		host := fmt.Sprintf("candidate-%d.cluster.test", i)
		r.mu.Lock()
		r.addrs[host] = netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i)})
		r.mu.Unlock()
		spec := protocol.PeerSpec{PublicKey: pk.String(), Endpoint: fmt.Sprintf("192.0.2.%d:51820", 10+i), AllowedIPs: fmt.Sprintf("10.200.7.%d/32", i+1), PersistentKeepaliveSecs: 25}
		h.ok(protocol.AddPeer{PeerSpec: spec, Candidates: []string{host + ":51820"}})
		want[pk] = fmt.Sprintf("192.0.2.%d:51820", 100+i)
	}
	r.mu.Lock()
	r.together = peers
	r.mu.Unlock()
	now := time.Now()
	h.e.checkPeers(now)                      // never handshaken: trial of each peer's first endpoint starts
	h.e.checkPeers(now.Add(7 * time.Second)) // it had its chance: on to the named candidate
	dev := h.wg.Device("zl-prod-g")
	for pk, ep := range want {
		if got := dev.Peer(pk).Endpoint; got == nil || got.String() != ep {
			t.Errorf("peer %s at %v, want its candidate %s", pk, got, ep)
		}
	}
}

// setup_global_overlay, which the main daemon sends at its own start,
// waits for names no longer than a restore does: before, it gave every
// unresolved name its whole lookup timeout, one after another.
func TestSetupGlobalDoesNotWaitOutUnansweredNames(t *testing.T) {
	r := newFakeResolver()
	h := newHarnessWith(t, func(c *Config) { c.Resolver = r })
	h.ok(globalReq("10.200.3.0/24"))
	want := namedPeers(t, h, r, 20)
	r.hangFromNow()
	h.crash()
	r.hangFromNow() // the restore's lookups are not this test's
	h.ok(globalReq("10.200.3.0/24"))
	lookups, budget := r.seen()
	if lookups == 0 {
		t.Fatal("setup_global_overlay looked no name up")
	}
	if budget > startupResolveBudget {
		t.Errorf("a lookup during setup_global_overlay was given %v to finish; its budget for names is %v", budget, startupResolveBudget)
	}
	if s := h.status(); len(s.Peers) != len(want) {
		t.Errorf("%d peers after the setup, want %d", len(s.Peers), len(want))
	}
}
