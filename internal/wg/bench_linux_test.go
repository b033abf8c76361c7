package wg

import (
	"log/slog"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// benchDevice opens a userspace device on a kernel TUN in the test's own
// network namespace. It is never set up, so its random UDP port sees no
// traffic; the benchmarks measure configuration, not packets.
func benchDevice(b *testing.B) Device {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root: creates a TUN device")
	}
	d, err := userspaceBackend{}.Open("zltw"+randHex(b, 6)+"bn", Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	priv, err := GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	if err := d.Configure(wgtypes.Config{PrivateKey: &priv, ListenPort: new(0)}); err != nil {
		b.Fatal(err)
	}
	return d
}

// benchPeers returns n peers shaped like a cluster's: a real public key, an
// endpoint, a keepalive and the peer's node slice as allowed IPs.
func benchPeers(b *testing.B, n int) []wgtypes.PeerConfig {
	b.Helper()
	ka := 25 * time.Second
	peers := make([]wgtypes.PeerConfig, n)
	for i := range peers {
		k, err := GenerateKey()
		if err != nil {
			b.Fatal(err)
		}
		slice := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)}), 32)
		peers[i] = wgtypes.PeerConfig{
			PublicKey:                   k.PublicKey(),
			Endpoint:                    &net.UDPAddr{IP: net.IPv4(192, 0, byte(2+i>>8), byte(i)), Port: 51820},
			PersistentKeepaliveInterval: &ka,
			ReplaceAllowedIPs:           true,
			AllowedIPs:                  []net.IPNet{ipNetFromPrefix(slice)},
		}
	}
	return peers
}

func BenchmarkConfigureOnePeerUpsert(b *testing.B) {
	d := benchDevice(b)
	peers := benchPeers(b, 1000)
	if err := d.Configure(wgtypes.Config{Peers: peers}); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		p := peers[i%len(peers)]
		p.Endpoint = &net.UDPAddr{IP: net.IPv4(198, 51, 100, byte(i)), Port: 51820}
		if err := d.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{p}}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkConfigure1000Peers is the start-up restore: 1,000 peers into an
// empty device in one call.
func BenchmarkConfigure1000Peers(b *testing.B) {
	d := benchDevice(b)
	peers := benchPeers(b, 1000)
	for b.Loop() {
		b.StopTimer()
		if err := d.Configure(wgtypes.Config{ReplacePeers: true}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := d.Configure(wgtypes.Config{Peers: peers}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkConfigure1000PeersNoKeepalive separates wireguard-go's own cost:
// a peer whose keepalive is turned on gets a handshake initiation right
// away, inside the configuration call.
func BenchmarkConfigure1000PeersNoKeepalive(b *testing.B) {
	d := benchDevice(b)
	peers := benchPeers(b, 1000)
	for i := range peers {
		peers[i].PersistentKeepaliveInterval = nil
	}
	for b.Loop() {
		b.StopTimer()
		if err := d.Configure(wgtypes.Config{ReplacePeers: true}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := d.Configure(wgtypes.Config{Peers: peers}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkConfigureReplace1000PeersUnchanged is the reconcile pass: the
// full desired set of 1,000 peers, all already present, with ReplacePeers.
func BenchmarkConfigureReplace1000PeersUnchanged(b *testing.B) {
	d := benchDevice(b)
	peers := benchPeers(b, 1000)
	if err := d.Configure(wgtypes.Config{Peers: peers}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := d.Configure(wgtypes.Config{ReplacePeers: true, Peers: peers}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSnapshot1000Peers(b *testing.B) {
	d := benchDevice(b)
	if err := d.Configure(wgtypes.Config{Peers: benchPeers(b, 1000)}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		snap, err := d.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		if len(snap.Peers) != 1000 {
			b.Fatalf("%d peers", len(snap.Peers))
		}
	}
}
