//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// A node whose peers were given by host name restarts while its resolver
// does not answer: the daemon restores and serves as after any restart,
// keeps every peer, and the overlay goes on carrying traffic. The names
// first resolve through the node's own /etc/hosts; for the restart they
// are taken out of it, and its resolv.conf names a server that swallows
// the queries, so each lookup runs into its timeout.
// Looked up one after another, 5 s each, 30 names held the restore for
// two and a half minutes, past the lab's 30 s for a daemon to come up.
func TestRestartWithAResolverThatDoesNotAnswer(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft (apt-get install nftables)")
	}
	l := newLab(t)
	a, b := l.AddNode("a"), l.AddNode("b")
	st := setupGlobal(t, []*lab.Node{a, b})
	b.Call(protocol.AddPeer{PeerSpec: protocol.PeerSpec{
		PublicKey:  st[0].PublicKey,
		Endpoint:   netip.AddrPortFrom(a.Underlay, 51820).String(),
		AllowedIPs: sliceOf(0),
	}})

	dir := t.TempDir()
	hosts, resolv := filepath.Join(dir, "hosts"), filepath.Join(dir, "resolv.conf")
	const fakes = 29
	names := fmt.Sprintf("127.0.0.1 localhost\n%s b.cluster.test\n", b.Underlay)
	for i := range fakes {
		names += fmt.Sprintf("192.0.2.%d node-%d.cluster.test\n", i+1, i)
	}
	write := func(path, content string) {
		// In place: the daemon's bind mount keeps the inode.
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A name server that swallows every query: no answer and no ICMP
	// error, so each lookup waits for its timeout.
	dns := l.AddHost("dns", 100)
	if out, err := dns.Exec("nft", "add table ip swallow; add chain ip swallow in { type filter hook input priority 0; }; add rule ip swallow in udp dport 53 drop; add rule ip swallow in tcp dport 53 drop"); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	write(hosts, names)
	write(resolv, fmt.Sprintf("nameserver %s\n", dns.Addr))
	a.Binds = map[string]string{hosts: "/etc/hosts", resolv: "/etc/resolv.conf"}
	a.Restart()

	a.Call(protocol.AddPeer{PeerSpec: protocol.PeerSpec{
		PublicKey:  st[1].PublicKey,
		Endpoint:   "b.cluster.test:51820",
		AllowedIPs: sliceOf(1),
	}})
	for i := range fakes {
		a.Call(protocol.AddPeer{PeerSpec: protocol.PeerSpec{
			PublicKey:  newTestKey(t),
			Endpoint:   fmt.Sprintf("node-%d.cluster.test:51820", i),
			AllowedIPs: fmt.Sprintf("10.200.%d.0/24", 100+i),
		}})
	}
	mustPing(t, "a", a.Ping, st[1].NodeIP)

	write(hosts, "127.0.0.1 localhost\n")
	a.Restart() // fails the test if the daemon does not serve in time
	if s := a.Status(); len(s.Peers) != fakes+1 {
		t.Fatalf("a has %d peers after the restart, want %d", len(s.Peers), fakes+1)
	}
	mustPing(t, "a", a.Ping, st[1].NodeIP)
	mustPing(t, "b", b.Ping, st[0].NodeIP)
	log, err := os.ReadFile(a.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	restart := string(log[strings.LastIndex(string(log), "--- start "):])
	if want := fmt.Sprintf("peers=%d", fakes+1); !strings.Contains(restart, "peer endpoints unresolved") || !strings.Contains(restart, want) {
		t.Errorf("the restart's log does not say that %d names were left unresolved:\n%s", fakes+1, restart)
	}
}
