package engine

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/engine/enginetest"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// configText is what a device says about its configuration, in an order
// that does not depend on the order of writes.
func configText(d *wgtypes.Device) string {
	lines := []string{}
	for _, p := range d.Peers {
		ips := make([]string, 0, len(p.AllowedIPs))
		for _, n := range p.AllowedIPs {
			ips = append(ips, n.String())
		}
		sort.Strings(ips)
		ep := ""
		if p.Endpoint != nil {
			ep = p.Endpoint.String()
		}
		lines = append(lines, fmt.Sprintf("%s ep=%s ka=%v ips=%s", p.PublicKey, ep, p.PersistentKeepaliveInterval, strings.Join(slices.Compact(ips), ",")))
	}
	sort.Strings(lines)
	return fmt.Sprintf("port %d\n%s", d.ListenPort, strings.Join(lines, "\n"))
}

// deviceOf is the device as the reading has it, sorted by key as a read is.
func deviceOf(r *reading) *wgtypes.Device {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := &wgtypes.Device{ListenPort: r.port}
	for _, p := range r.peers {
		d.Peers = append(d.Peers, clonePeer(*p))
	}
	slices.SortFunc(d.Peers, func(a, b wgtypes.Peer) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
	return d
}

// Random writes leave a reading holding what a device given the same
// writes holds: peers, endpoints, keepalives, and allowed IPs moving from
// peer to peer as WireGuard moves them.
func TestReadingFollowsWrites(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	keys := make([]wgtypes.Key, 12)
	for i := range keys {
		keys[i] = newKey(t)
	}
	prefix := func() net.IPNet {
		return net.IPNet{IP: net.IPv4(10, 9, byte(rng.IntN(3)), byte(rng.IntN(6))).To4(), Mask: net.CIDRMask(32, 32)}
	}
	for round := range 50 {
		w := enginetest.NewWG(enginetest.NewNet(), wg.KindKernel)
		dev, err := w.Open(fmt.Sprintf("zl-r%d", round), wg.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var r reading
		port := 51820
		for range 5 {
			_ = dev.Configure(randomConfig(rng, keys, prefix, &port))
		}
		snap, _ := dev.Snapshot()
		tok := r.begin()
		r.finish(tok, snap, time.Now(), time.Second)
		for step := range 40 {
			cfg := randomConfig(rng, keys, prefix, &port)
			if err := dev.Configure(cfg); err != nil {
				t.Fatal(err)
			}
			r.apply(cfg)
			want, _ := dev.Snapshot()
			shown, _, _, ok := r.recentStatuses(time.Hour, time.Now())
			if !ok {
				t.Fatal("a fresh reading is not recent")
			}
			got := deviceOf(&r)
			if configText(got) != configText(want) {
				t.Fatalf("round %d step %d, after %+v:\nreading:\n%s\ndevice:\n%s", round, step, cfg, configText(got), configText(want))
			}
			// What status shows is built once per reading and kept:
			// every write must drop it.
			wantShown := make([]protocol.PeerStatus, len(got.Peers))
			for i := range got.Peers {
				wantShown[i] = peerStatus(&got.Peers[i])
			}
			if !slices.Equal(shown, wantShown) {
				t.Fatalf("round %d step %d, after %+v: status shows\n%+v\nwant\n%+v", round, step, cfg, shown, wantShown)
			}
		}
	}
}

func randomConfig(rng *rand.Rand, keys []wgtypes.Key, prefix func() net.IPNet, port *int) wgtypes.Config {
	var cfg wgtypes.Config
	if rng.IntN(8) == 0 {
		*port++
		cfg.ListenPort = new(*port)
	}
	for range 1 + rng.IntN(3) {
		pc := wgtypes.PeerConfig{PublicKey: keys[rng.IntN(len(keys))]}
		switch rng.IntN(6) {
		case 0:
			pc.Remove = true
		case 1:
			pc.UpdateOnly = true
		}
		if rng.IntN(2) == 0 {
			pc.Endpoint = &net.UDPAddr{IP: net.IPv4(192, 0, 2, byte(rng.IntN(9))), Port: 51820}
		}
		if rng.IntN(3) == 0 {
			pc.PersistentKeepaliveInterval = new(time.Duration(rng.IntN(30)) * time.Second)
		}
		pc.ReplaceAllowedIPs = rng.IntN(2) == 0
		for range rng.IntN(3) {
			pc.AllowedIPs = append(pc.AllowedIPs, prefix())
		}
		cfg.Peers = append(cfg.Peers, pc)
	}
	return cfg
}

// A write made while a read is in flight is in the reading the read
// leaves, whether the read saw it or not.
func TestReadingKeepsWritesMadeDuringARead(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	ip := func(s string) net.IPNet { _, n, _ := net.ParseCIDR(s); return *n }
	base := &wgtypes.Device{ListenPort: 1, Peers: []wgtypes.Peer{{PublicKey: k1, AllowedIPs: []net.IPNet{ip("10.0.0.1/32")}}}}
	add := wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: k2, AllowedIPs: []net.IPNet{ip("10.0.0.2/32")}}}}
	withAdd := &wgtypes.Device{ListenPort: 1, Peers: []wgtypes.Peer{base.Peers[0], {PublicKey: k2, AllowedIPs: []net.IPNet{ip("10.0.0.2/32")}}}}
	for _, sawIt := range []*wgtypes.Device{base, withAdd} {
		var r reading
		tok := r.begin()
		r.finish(tok, &wgtypes.Device{ListenPort: 1}, time.Now(), time.Second)
		tok = r.begin()
		r.apply(add) // while the read is in flight
		r.finish(tok, sawIt, time.Now(), time.Second)
		got, _, _, _ := r.recentStatuses(time.Hour, time.Now())
		if len(got) != 2 {
			t.Fatalf("read that saw the write: %v; the reading has %d peers, want 2", sawIt == withAdd, len(got))
		}
		if len(r.during) != 0 {
			t.Fatalf("%d writes kept after the last read ended", len(r.during))
		}
	}
}

// How long a reading serves is set by what a read costs, capped by
// PeerStatsMaxAge; a failed write makes the next status read the device.
func TestReadingAge(t *testing.T) {
	var r reading
	t0 := time.Now()
	tok := r.begin()
	r.finish(tok, &wgtypes.Device{}, t0, 50*time.Millisecond)
	for _, c := range []struct {
		after, maxAge time.Duration
		ok            bool
	}{
		{500 * time.Millisecond, 5 * time.Second, true},
		{1100 * time.Millisecond, 5 * time.Second, false}, // 20 reads' worth is 1 s
		{500 * time.Millisecond, 200 * time.Millisecond, false},
	} {
		if _, _, _, ok := r.recentStatuses(c.maxAge, t0.Add(c.after)); ok != c.ok {
			t.Errorf("%v after a 50 ms read, max age %v: recent = %v, want %v", c.after, c.maxAge, ok, c.ok)
		}
	}
	r.forget()
	if _, _, _, ok := r.recentStatuses(time.Hour, t0); ok {
		t.Error("a forgotten reading still answers")
	}
}

// slowWG is a backend whose reads take a while, as reading thousands of
// peers does, and are counted.
type slowWG struct {
	*enginetest.WG
	mu    sync.Mutex
	reads int
}

type slowDevice struct {
	wg.Device
	b *slowWG
}

func (b *slowWG) Open(name string, o wg.Options) (wg.Device, error) {
	d, err := b.WG.Open(name, o)
	if err != nil {
		return nil, err
	}
	return slowDevice{d, b}, nil
}

func (d slowDevice) Snapshot() (*wgtypes.Device, error) {
	d.b.mu.Lock()
	d.b.reads++
	d.b.mu.Unlock()
	time.Sleep(20 * time.Millisecond)
	return d.Device.Snapshot()
}

// status of a big device answers from the reading while it is young: a
// peer added, moved or removed shows at once, without the device being
// read again.
func TestStatusAnswersFromTheReading(t *testing.T) {
	var slow *slowWG
	h := newHarnessWith(t, func(c *Config) {
		if slow == nil {
			slow = &slowWG{WG: c.WG.(*enginetest.WG)}
		}
		c.WG = slow
		c.PeerStatsMaxAge = time.Hour
	})
	h.ok(globalReq("10.200.1.0/24"))
	for i := range staleMinPeers {
		h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: newKey(t).PublicKey().String(),
			AllowedIPs: fmt.Sprintf("10.201.%d.%d/32", i/250, i%250+1)}})
	}
	k1, k2 := newKey(t).PublicKey().String(), newKey(t).PublicKey().String()
	h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: k1, Endpoint: "192.0.2.1:51820", AllowedIPs: "10.200.2.0/24"}})
	h.status()
	slow.mu.Lock()
	before := slow.reads
	slow.mu.Unlock()
	h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: k2, Endpoint: "192.0.2.2:51820", AllowedIPs: "10.200.3.0/24", PersistentKeepaliveSecs: 25}})
	h.ok(protocol.AddAllowedIP{Pubkey: k2, CIDR: "10.200.9.0/24"})
	h.ok(protocol.RemovePeer{Pubkey: k1})
	s := h.status()
	slow.mu.Lock()
	reads := slow.reads - before
	slow.mu.Unlock()
	if reads != 0 {
		t.Fatalf("status read the device %d times though its reading was young", reads)
	}
	i := slices.IndexFunc(s.Peers, func(p protocol.PeerStatus) bool { return p.PublicKey == k2 })
	if len(s.Peers) != staleMinPeers+1 || i < 0 || slices.ContainsFunc(s.Peers, func(p protocol.PeerStatus) bool { return p.PublicKey == k1 }) {
		t.Fatalf("status from the reading has %d peers (k2 at %d), want %d without k1", len(s.Peers), i, staleMinPeers+1)
	}
	if p := s.Peers[i]; p.AllowedIPs != "10.200.3.0/24,10.200.9.0/24" || p.Endpoint != "192.0.2.2:51820" || p.PersistentKeepaliveSecs != 25 {
		t.Fatalf("status from the reading: %+v", p)
	}
	if s.PeersRead == 0 || time.Since(time.UnixMilli(s.PeersRead)) > time.Minute {
		t.Fatalf("peers_read_unix_ms %d", s.PeersRead)
	}
}

// What the device does by itself (a handshake after a ping) shows in the
// next status of a mesh of ordinary size, however recently status was
// asked before: the reading only stands in for devices too big to read
// for every status.
func TestStatusOfASmallDeviceIsLive(t *testing.T) {
	h := newHarnessWith(t, func(c *Config) { c.PeerStatsMaxAge = time.Hour })
	h.ok(globalReq("10.200.1.0/24"))
	k := newKey(t).PublicKey()
	h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: k.String(), Endpoint: "192.0.2.1:51820", AllowedIPs: "10.200.2.0/24"}})
	if s := h.status(); len(s.Peers) != 1 || s.Peers[0].LastHandshakeUnixSecs != 0 {
		t.Fatalf("before the handshake: %+v", s.Peers)
	}
	shook := time.Now().Truncate(time.Second)
	h.wg.Device("zl-prod-g").Handshake(k, shook, "192.0.2.1:51820")
	if s := h.status(); len(s.Peers) != 1 || s.Peers[0].LastHandshakeUnixSecs != shook.Unix() {
		t.Fatalf("status right after the device's handshake: %+v", s.Peers)
	}
}

// status marks each peer with the monitor's verdict and whether its
// endpoint is one the daemon learned, for a few peers and for as many as
// make a device big enough to be answered from its reading.
func TestStatusMarksHealthAndLearnedEndpoints(t *testing.T) {
	for _, n := range []int{3, staleMinPeers} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			h := newHarness(t)
			h.ok(globalReq("10.200.3.0/24"))
			pubs := make([]string, n)
			for i := range pubs {
				pubs[i] = newKey(t).PublicKey().String()
				h.ok(protocol.AddPeer{PeerSpec: protocol.PeerSpec{
					PublicKey: pubs[i], Endpoint: fmt.Sprintf("192.0.2.%d:%d", i%250+1, 51820+i/250),
					AllowedIPs: fmt.Sprintf("10.200.%d.%d/32", 100+i/250, i%250+1),
				}})
			}
			h.status() // a big device is answered from its reading from now on
			h.e.locked(func() {
				h.e.health[peerKey(scopeGlobal, pubs[0])] = true
				h.e.health[peerKey(scopeGlobal, pubs[1])] = false
				h.e.st.peers[peerKey(scopeGlobal, pubs[0])].LearnedEndpoint = "192.0.2.1:51820"
				h.e.st.peers[peerKey(scopeGlobal, pubs[2])].LearnedEndpoint = "198.51.100.7:51820" // not where the device sends
			})
			type mark struct {
				healthy *bool
				learned bool
			}
			got := map[string]mark{}
			for _, p := range h.status().Peers {
				got[p.PublicKey] = mark{p.Healthy, p.EndpointLearned}
			}
			if len(got) != n {
				t.Fatalf("status shows %d peers, want %d", len(got), n)
			}
			if m := got[pubs[0]]; m.healthy == nil || !*m.healthy || !m.learned {
				t.Errorf("peer 0: healthy %v, learned %v; want healthy, learned", m.healthy, m.learned)
			}
			if m := got[pubs[1]]; m.healthy == nil || *m.healthy || m.learned {
				t.Errorf("peer 1: healthy %v, learned %v; want unhealthy, not learned", m.healthy, m.learned)
			}
			if m := got[pubs[2]]; m.healthy != nil || m.learned {
				t.Errorf("peer 2: healthy %v, learned %v; want no verdict, not learned", m.healthy, m.learned)
			}
		})
	}
}
