//go:build linux

// Package e2e holds the end-to-end acceptance tests: real daemons in
// network namespaces (internal/lab), real WireGuard tunnels, real bridges,
// veths, nftables and DNS, checked with independent tools (ping, wg, dig,
// nft, tcpdump). They need root and skip otherwise.
package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/internal/testbin"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

func TestMain(m *testing.M) { testbin.Main(m) }

const cluster = "10.200.0.0/16"

// newLab builds a lab whose daemons reconcile and check health quickly, so
// tests observe the periodic behaviour in seconds.
func newLab(t *testing.T, extraArgs ...string) *lab.Lab {
	t.Helper()
	if err := lab.Check(); err != nil {
		t.Skip("end-to-end tests: " + err.Error())
	}
	for _, bin := range []string{"ping", "wg"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("end-to-end tests need %s (apt-get install iputils-ping wireguard-tools)", bin)
		}
	}
	args := append([]string{"--reconcile-interval", "2s", "--health-interval", "1s"}, extraArgs...)
	if mode := os.Getenv(envBackend); mode != "" && !slices.Contains(extraArgs, "--wireguard") {
		args = append(args, "--wireguard", mode)
	}
	return lab.New(t, lab.Options{Daemon: testbin.Build(t, "zlayer-overlayd"), DaemonArgs: args})
}

// envBackend forces the daemons' --wireguard backend for the tests that do
// not choose one themselves: the VM lab runs this package twice on a kernel
// with WireGuard, once as `auto` picks (kernel) and once with userspace.
const envBackend = "ZLAYER_E2E_WIREGUARD"

// sliceOf is the explicit slice of node i (10.200.<i+1>.0/24).
func sliceOf(i int) string { return fmt.Sprintf("10.200.%d.0/24", i+1) }

// setupGlobal brings the global overlay up on every node with its own
// slice and returns the status of each.
func setupGlobal(t *testing.T, nodes []*lab.Node) []protocol.StatusSnapshot {
	t.Helper()
	out := make([]protocol.StatusSnapshot, len(nodes))
	for i, n := range nodes {
		n.Call(protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: n.Name, ClusterCIDR: cluster, SliceCIDR: sliceOf(i), WGPort: 51820})
		out[i] = n.Status()
	}
	return out
}

// meshPeers tells every node about every other one, with allowed IPs =
// the other's slice plus extra(j): what the main daemon must send so that
// node IPs, join_global containers and service subnets all route.
func meshPeers(t *testing.T, nodes []*lab.Node, st []protocol.StatusSnapshot, extra func(j int) []string) {
	t.Helper()
	for i, n := range nodes {
		for j, m := range nodes {
			if i == j {
				continue
			}
			allowed := []string{sliceOf(j)}
			if extra != nil {
				allowed = append(allowed, extra(j)...)
			}
			n.Call(protocol.AddPeer{PeerSpec: protocol.PeerSpec{
				PublicKey:               st[j].PublicKey,
				Endpoint:                netip.AddrPortFrom(m.Underlay, 51820).String(),
				AllowedIPs:              strings.Join(allowed, ","),
				PersistentKeepaliveSecs: 25,
			}})
		}
	}
}

// mustPing waits until one ping of addr is answered. The first contact
// takes a handshake, retried every 5 s (REKEY_TIMEOUT)
// while an answer is missing. On our machines that is well under a second;
// in the VM lab's emulated CPU a first kernel WireGuard contact once took
// longer than 15 s, so it gets 45 s, and a slow one is logged.
func mustPing(t *testing.T, what string, ping func(netip.Addr, int) error, addr netip.Addr) {
	t.Helper()
	start := time.Now()
	lab.Eventually(t, 45*time.Second, what+" pings "+addr.String(), func() error { return ping(addr, 1) })
	if took := time.Since(start); took > 5*time.Second {
		t.Logf("%s reached %s only after %v", what, addr, took.Round(100*time.Millisecond))
	}
}

func errMessage(resp protocol.Response, err error) string {
	if err != nil {
		return err.Error()
	}
	if e, ok := resp.(protocol.Err); ok {
		return e.Message
	}
	return ""
}

func errf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// peerDedicated makes the two nodes' dedicated "db" devices peers of each
// other and waits until node 0 pings node 1 over them.
func peerDedicated(t *testing.T, nodes []*lab.Node, ded [2]protocol.ServiceOverlay) {
	t.Helper()
	for i, n := range nodes {
		j := 1 - i
		n.Call(protocol.AddPeer{
			PeerSpec: protocol.PeerSpec{PublicKey: ded[j].WGPublicKey, Endpoint: netip.AddrPortFrom(nodes[j].Underlay, ded[j].WGPort).String(),
				AllowedIPs: ded[j].Subnet, PersistentKeepaliveSecs: 25},
			Scope: protocol.ServiceScope("db"),
		})
	}
	lab.Eventually(t, 15*time.Second, "ping over the dedicated device", func() error {
		out, err := nodes[0].Exec("ping", "-c", "1", "-W", "1", "-I", ded[0].OverlayIP.String(), ded[1].OverlayIP.String())
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
}

// snmpCounters are the counters of one protocol ("Udp", "Icmp") in the
// text of /proc/net/snmp: a line of names, then a line of values.
func snmpCounters(snmp, proto string) map[string]uint64 {
	var names []string
	for _, line := range strings.Split(snmp, "\n") {
		rest, ok := strings.CutPrefix(line, proto+": ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if names == nil {
			names = f
			continue
		}
		out := make(map[string]uint64, len(names))
		for i, n := range names {
			if i < len(f) {
				if v, err := strconv.ParseUint(f[i], 10, 64); err == nil {
					out[n] = v
				}
			}
		}
		return out
	}
	return nil
}
