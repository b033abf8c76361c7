package wg

import (
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Applying PeerChanges to a real device leaves exactly want, and a second
// plan against the result is empty.
func TestPeerChangesConverge(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a TUN device")
	}
	dev, err := userspaceBackend{}.Open("zltw"+randHex(t, 6)+"pc", Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	ka := 25 * time.Second
	want := []wgtypes.PeerConfig{
		{PublicKey: keyN(1), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.1.0/24")}, PersistentKeepaliveInterval: &ka},
		{PublicKey: keyN(2), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.2.0/24"), mustCIDR(t, "10.0.3.0/24")}},
	}
	for _, w := range [][]wgtypes.PeerConfig{want, want[1:], want} {
		snap, err := dev.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		if err := dev.Configure(wgtypes.Config{Peers: PeerChanges(w, snap.Peers)}); err != nil {
			t.Fatal(err)
		}
		snap, _ = dev.Snapshot()
		if rest := PeerChanges(w, snap.Peers); len(rest) != 0 || len(snap.Peers) != len(w) {
			t.Fatalf("after applying the plan: %d peers, and still %+v to do", len(snap.Peers), rest)
		}
	}
}
