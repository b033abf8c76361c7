package device

import (
	"encoding/hex"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// oneBatchTUN hands its packets to the device's TUN reader in a single Read,
// then blocks until it is closed, as a TSO read does with its segments.
type oneBatchTUN struct {
	packets [][]byte
	once    sync.Once
	closed  chan struct{}
	events  chan tun.Event
}

func (t *oneBatchTUN) File() *os.File { return nil }
func (t *oneBatchTUN) Read(bufs [][]byte, sizes []int, offset int) (n int, err error) {
	served := false
	t.once.Do(func() {
		for i, p := range t.packets {
			sizes[i] = copy(bufs[i][offset:], p)
		}
		n, served = len(t.packets), true
	})
	if served {
		return n, nil
	}
	<-t.closed
	return 0, os.ErrClosed
}
func (t *oneBatchTUN) Write(bufs [][]byte, offset int) (int, error) { return len(bufs), nil }
func (t *oneBatchTUN) MTU() (int, error)                            { return 1420, nil }
func (t *oneBatchTUN) Name() (string, error)                        { return "onebatch", nil }
func (t *oneBatchTUN) Events() <-chan tun.Event                     { return t.events }
func (t *oneBatchTUN) Close() error                                 { close(t.closed); return nil }
func (t *oneBatchTUN) BatchSize() int                               { return 128 }

// TestReadFromTUNGroupsABatchByPeer checks that the TUN reader, which looks
// a peer up again only where the destination changes, still gives every
// packet of a mixed batch to its own peer, in order, and none to a peer
// whose allowed IPs do not hold it.
func TestReadFromTUNGroupsABatchByPeer(t *testing.T) {
	dsts := []string{"10.0.1.1", "10.0.1.1", "10.0.2.1", "10.0.1.1", "10.0.9.9", "10.0.2.1", "10.0.1.2", "10.0.1.2"}
	want := map[string][]string{
		"a": {"10.0.1.1", "10.0.1.1", "10.0.1.1", "10.0.1.2", "10.0.1.2"},
		"b": {"10.0.2.1", "10.0.2.1"},
	}
	src := netip.MustParseAddr("10.0.0.1")
	tunDev := &oneBatchTUN{closed: make(chan struct{}), events: make(chan tun.Event, 1)}
	for _, d := range dsts {
		tunDev.packets = append(tunDev.packets, tuntest.Ping(netip.MustParseAddr(d), src))
	}
	tunDev.events <- tun.EventUp

	binds := bindtest.NewChannelBinds()
	dev := NewDevice(tunDev, binds[0], NewLogger(LogLevelSilent, ""))
	defer dev.Close()
	peerKeys := map[string]NoisePublicKey{}
	for name, allowed := range map[string]string{"a": "10.0.1.0/24", "b": "10.0.2.0/24"} {
		sk, err := newPrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		pk := sk.publicKey()
		peerKeys[name] = pk
		cfg := uapiCfg("public_key", hex.EncodeToString(pk[:]), "allowed_ip", allowed)
		if err := dev.IpcSet(cfg); err != nil {
			t.Fatal(err)
		}
	}
	sk, err := newPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.IpcSet(uapiCfg("private_key", hex.EncodeToString(sk[:]))); err != nil {
		t.Fatal(err)
	}
	if err := dev.Up(); err != nil {
		t.Fatal(err)
	}

	got := map[string][]string{}
	deadline := time.Now().Add(10 * time.Second)
	for name, pk := range peerKeys {
		peer := dev.LookupPeer(pk)
		for len(got[name]) < len(want[name]) && time.Now().Before(deadline) {
			select {
			case c := <-peer.queue.staged:
				for _, elem := range c.elems {
					got[name] = append(got[name], netip.AddrFrom4([4]byte(elem.packet[IPv4offsetDst:IPv4offsetDst+4])).String())
				}
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	for name := range want {
		if !equalStrings(got[name], want[name]) {
			t.Errorf("peer %s was given the packets to %v, want %v", name, got[name], want[name])
		}
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestAddressRunLooksUpOnlyNewAddresses checks that a run answers an address
// it has seen from memory and any other address from the allowed IPs, and
// that a fresh run sees a change of the allowed IPs.
func TestAddressRunLooksUpOnlyNewAddresses(t *testing.T) {
	dev := &Device{}
	a, b := &Peer{}, &Peer{}
	dev.allowedips.Insert(netip.MustParsePrefix("10.0.1.0/24"), a)
	dev.allowedips.Insert(netip.MustParsePrefix("fd00::/64"), b)
	ip4 := func(s string) []byte { x := netip.MustParseAddr(s).As4(); return x[:] }
	ip6 := func(s string) []byte { x := netip.MustParseAddr(s).As16(); return x[:] }

	var run addressRun
	if p := run.lookup(dev, ip4("10.0.1.7")); p != a {
		t.Fatalf("10.0.1.7: got %p, want peer a %p", p, a)
	}
	dev.allowedips.RemoveByPeer(a)
	dev.allowedips.Insert(netip.MustParsePrefix("10.0.1.0/24"), b)
	if p := run.lookup(dev, ip4("10.0.1.7")); p != a {
		t.Errorf("the same address within a run was looked up again: got %p, want peer a %p", p, a)
	}
	if p := run.lookup(dev, ip4("10.0.1.8")); p != b {
		t.Errorf("10.0.1.8: got %p, want peer b %p", p, b)
	}
	if p := run.lookup(dev, ip6("fd00::1")); p != b {
		t.Errorf("fd00::1: got %p, want peer b %p", p, b)
	}
	// An IPv6 address whose first four bytes are a remembered IPv4
	// address is a different address.
	v6 := make([]byte, 16)
	copy(v6, ip4("10.0.1.8"))
	if p := run.lookup(dev, v6); p != nil {
		t.Errorf("%x: got %p, want no peer", v6, p)
	}
	if p := run.lookup(dev, ip4("10.0.9.9")); p != nil {
		t.Errorf("10.0.9.9: got %p, want no peer", p)
	}

	var fresh addressRun
	if p := fresh.lookup(dev, ip4("10.0.1.7")); p != b {
		t.Errorf("a fresh run did not see the change: got %p, want peer b %p", p, b)
	}
}
