//go:build linux

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// The compatibility suite drives the daemon exactly as the ZLayer main
// daemon's agent does (crates/zlayer-agent/src/overlay_manager.rs and its
// callers at HEAD: daemon.rs Phase 4, serve.rs), next to a stand-in for the
// main daemon's own DNS server and with the node_config.json `zlayer node
// init` writes.

const envMainDNS = "ZLAYER_E2E_MAIN_DNS"

// mainDaemonAnswer is what the main daemon's stand-in DNS answers for every
// A query, so a test can tell its answers from ours.
var mainDaemonAnswer = netip.MustParseAddr("192.0.2.53")

// TestMainDaemonDNSHelper is not a test: re-executed inside a node's
// namespace it is the main daemon's DNS server, binding UDP and TCP on each
// address of $ZLAYER_E2E_MAIN_DNS the way hickory does, then printing
// "bound" (or why it could not) and serving until killed.
func TestMainDaemonDNSHelper(t *testing.T) {
	addrs := os.Getenv(envMainDNS)
	if addrs == "" {
		t.Skip("helper process for the compatibility suite")
	}
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		if q := r.Question[0]; q.Qtype == mdns.TypeA {
			m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: mainDaemonAnswer.AsSlice()})
		}
		w.WriteMsg(m)
	})
	for _, a := range strings.Split(addrs, ",") {
		pc, err := net.ListenPacket("udp", a)
		if err != nil {
			fmt.Println("bind failed:", err)
			os.Exit(1)
		}
		ln, err := net.Listen("tcp", a)
		if err != nil {
			fmt.Println("bind failed:", err)
			os.Exit(1)
		}
		go (&mdns.Server{PacketConn: pc, Handler: h}).ActivateAndServe()
		go (&mdns.Server{Listener: ln, Handler: h}).ActivateAndServe()
	}
	fmt.Println("bound")
	select {}
}

// startMainDaemonDNS binds addrs in node n's namespace like the main
// daemon's DNS server, failing the test when any bind fails.
func startMainDaemonDNS(t *testing.T, n *lab.Node, addrs ...netip.AddrPort) {
	t.Helper()
	list := make([]string, len(addrs))
	for i, a := range addrs {
		list[i] = a.String()
	}
	cmd := exec.Command("ip", "netns", "exec", n.NS, os.Args[0], "-test.run=^TestMainDaemonDNSHelper$")
	cmd.Env = append(os.Environ(), envMainDNS+"="+strings.Join(list, ","))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "bound" {
		t.Fatalf("the main daemon's DNS server cannot bind %v next to ours: %s", list, strings.TrimSpace(line))
	}
}

// writeNodeConfig writes n's node_config.json as `zlayer node init` does
// (plus the 0600 we require) and returns its key.
func writeNodeConfig(t *testing.T, n *lab.Node) wgtypes.Key {
	t.Helper()
	k, err := wg.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := json.MarshalIndent(map[string]any{
		"node_id": "node-" + n.Name, "raft_node_id": 1, "advertise_addr": n.Underlay.String(),
		"api_port": 3669, "raft_port": 9000, "overlay_port": 51420, "overlay_cidr": cluster,
		"wireguard_private_key": k.String(), "wireguard_public_key": k.PublicKey().String(),
		"is_leader": false, "created_at": time.Now().UTC().Format(time.RFC3339),
	}, "", "  ")
	if err := os.WriteFile(filepath.Join(n.DataDir, "node_config.json"), doc, 0o600); err != nil {
		t.Fatal(err)
	}
	return k
}

// agentBringUp is overlay_manager.rs setup_global_overlay followed by what
// serve does next: set_local_node_id{0} (the Raft id is not known yet),
// setup_global_overlay with the main daemon's PID as instance_id, status to
// cache the node IP; then set_local_node_id(raft id) and
// set_local_wg_pubkey(node_config's public key).
func agentBringUp(t *testing.T, n *lab.Node, slice string, raftID uint64, pub wgtypes.Key) protocol.StatusSnapshot {
	t.Helper()
	n.Call(protocol.SetLocalNodeID{NodeID: 0})
	if resp := n.Call(protocol.SetupGlobalOverlay{Deployment: "prod", InstanceID: "31337", ClusterCIDR: cluster, SliceCIDR: slice, WGPort: 51420}); resp.(protocol.BridgeName).Name == "" {
		t.Fatalf("setup_global_overlay answered %+v", resp)
	}
	n.Status()
	n.Call(protocol.SetLocalNodeID{NodeID: raftID})
	n.Call(protocol.SetLocalWGPubkey{Pubkey: pub.String()})
	return n.Status()
}

func TestBesideTheMainDaemon(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("needs dig (apt-get install dnsutils)")
	}
	l := newLab(t)
	a := l.AddNode("a")
	key := writeNodeConfig(t, a)
	st := agentBringUp(t, a, sliceOf(0), 7, key.PublicKey())
	if st.PublicKey != key.PublicKey().String() || st.PubkeyMismatch {
		t.Fatalf("status public_key %s, want node_config's %s", st.PublicKey, key.PublicKey())
	}
	// The main daemon starts its DNS server after setup_global_overlay, on
	// exactly these three addresses: every bind must succeed.
	startMainDaemonDNS(t, a,
		netip.MustParseAddrPort("127.0.0.1:15353"),
		netip.AddrPortFrom(st.NodeIP, 15353),
		netip.AddrPortFrom(st.NodeIP, 53))
	if got := digShort(a.Exec, st.NodeIP.String(), 53, "web.prod.local", "A"); got != mainDaemonAnswer.String() {
		t.Fatalf("the node IP's port 53 answered %q, not the main daemon's DNS", got)
	}

	// Deploy: a shared and a dedicated service; containers start with
	// join_global and the main daemon's DNS settings.
	web := a.Call(protocol.SetupServiceOverlay{Service: "web", Mode: protocol.ModeAuto}).(protocol.ServiceOverlay)
	db := a.Call(protocol.SetupServiceOverlay{Service: "db", Mode: protocol.ModeDedicated}).(protocol.ServiceOverlay)
	if db.WGPublicKey == "" || db.WGPort == 0 {
		t.Fatalf("dedicated answer %+v", db)
	}
	c := l.AddContainer("c")
	att := a.Call(protocol.AttachContainer{Handle: c.Handle(), Service: "web", JoinGlobal: true, DNSServer: st.NodeIP, DNSDomain: "prod.local"}).(protocol.Attached)
	if att.DNSServer != st.NodeIP || att.DNSDomain != "prod.local" {
		t.Fatalf("attached dns %s %q: the main daemon's settings must pass through", att.DNSServer, att.DNSDomain)
	}
	gc := a.Call(protocol.AttachContainer{Handle: protocol.GuestManaged("vz-1"), Service: "web", JoinGlobal: true, DNSServer: st.NodeIP, DNSDomain: "prod.local"}).(protocol.GuestConfig)
	if gc.DNSServer != st.NodeIP || gc.DNSDomain != "prod.local" || gc.Peers[0].PublicKey != key.PublicKey().String() {
		t.Fatalf("guest_config %+v", gc)
	}
	// Our zone still answers on the bridge gateway, from the container
	// (the agent never registers names with us, so ask for the zone's SOA,
	// which only ours has); the main daemon's resolver answers on the node
	// IP.
	ourZone := func() string { return digShort(c.Exec, web.Gateway.String(), 53, "prod.local", "SOA") }
	if got := ourZone(); !strings.HasPrefix(got, "ns.prod.local.") {
		t.Fatalf("our zone on the bridge gateway: %q", got)
	}
	if got := digShort(c.Exec, st.NodeIP.String(), 53, "svc.prod.local", "A"); got != mainDaemonAnswer.String() {
		t.Fatalf("the node IP must stay the main daemon's: %q", got)
	}
	if s := a.Status(); s.DNS == nil || s.DNS.Delegated || hasWarning(s.Warnings, "dns") {
		t.Fatalf("dns status %+v, warnings %q", s.DNS, s.Warnings)
	}

	// Peers the way the agent adds them: global peers with /32 allowed IPs
	// and keepalive 25; the dedicated mesh with add_peer then the (no-op)
	// add_allowed_ip of the same subnet, and remove_peer.
	gpeer, speer := newTestKey(t), newTestKey(t)
	a.Call(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: gpeer, Endpoint: "172.31.0.99:51420", AllowedIPs: "10.200.77.1/32", PersistentKeepaliveSecs: 25}})
	svcScope := protocol.ServiceScope("db")
	a.Call(protocol.AddPeer{Scope: svcScope, PeerSpec: protocol.PeerSpec{PublicKey: speer, Endpoint: "172.31.0.99:51421", AllowedIPs: "10.201.9.0/28", PersistentKeepaliveSecs: 25}})
	a.Call(protocol.AddAllowedIP{Scope: svcScope, Pubkey: speer, CIDR: "10.201.9.0/28"})

	// A crash of our daemon between the main daemon's requests changes
	// nothing it was told.
	before := a.Status()
	a.Kill()
	a.Start()
	after := a.Status()
	if after.PublicKey != before.PublicKey || after.NodeIP != before.NodeIP || fmt.Sprint(after.Services) != fmt.Sprint(before.Services) ||
		fmt.Sprint(after.Attachments) != fmt.Sprint(before.Attachments) || len(after.Guests) != 1 || after.PeerCount != before.PeerCount {
		t.Fatalf("restart changed the state:\nbefore %+v\nafter  %+v", before, after)
	}
	if got := ourZone(); !strings.HasPrefix(got, "ns.prod.local.") {
		t.Fatalf("our zone after the restart: %q", got)
	}
	if got := digShort(a.Exec, st.NodeIP.String(), 53, "x.prod.local", "A"); got != mainDaemonAnswer.String() {
		t.Fatalf("after our restart the node IP's port 53 answered %q", got)
	}

	// Stop, undeploy, shut down, in the agent's order.
	a.Call(protocol.RemovePeer{Scope: svcScope, Pubkey: speer})
	a.Call(protocol.DetachContainer{Handle: c.Handle()})
	a.Call(protocol.DetachContainer{Handle: protocol.GuestManaged("vz-1")})
	a.Call(protocol.TeardownServiceOverlay{Service: "db"})
	a.Call(protocol.TeardownServiceOverlay{Service: "web"})
	a.Call(protocol.TeardownGlobalOverlay{})
	if s := a.Status(); s.Interface != "" || len(s.Services) != 0 || len(s.Attachments) != 0 {
		t.Fatalf("after the agent's cleanup: %+v", s)
	}
	lab.Eventually(t, 10*time.Second, "links gone", func() error {
		if out := a.MustExec("ip", "-o", "link", "show"); strings.Contains(out, "zl-") {
			return fmt.Errorf("links left:\n%s", out)
		}
		return nil
	})
}

// Two nodes configured the way the real cluster configures them: each
// node's peer is added with the public key from the other node's
// node_config.json, never with a key read from our status.
func TestNodesKnownByTheirNodeConfigKeys(t *testing.T) {
	l := newLab(t)
	nodes := []*lab.Node{l.AddNode("a"), l.AddNode("b")}
	keys := make([]wgtypes.Key, len(nodes))
	st := make([]protocol.StatusSnapshot, len(nodes))
	for i, n := range nodes {
		keys[i] = writeNodeConfig(t, n)
		st[i] = agentBringUp(t, n, sliceOf(i), uint64(i+1), keys[i].PublicKey())
	}
	for i, n := range nodes {
		for j, m := range nodes {
			if i == j {
				continue
			}
			n.Call(protocol.AddPeer{PeerSpec: protocol.PeerSpec{
				PublicKey: keys[j].PublicKey().String(), Endpoint: netip.AddrPortFrom(m.Underlay, 51420).String(),
				AllowedIPs: st[j].NodeIP.String() + "/32," + sliceOf(j), PersistentKeepaliveSecs: 25,
			}})
		}
	}
	mustPing(t, "a", nodes[0].Ping, st[1].NodeIP)
	mustPing(t, "b", nodes[1].Ping, st[0].NodeIP)
}

func hasWarning(warnings []string, part string) bool {
	for _, w := range warnings {
		if strings.Contains(w, part) {
			return true
		}
	}
	return false
}

func newTestKey(t *testing.T) string {
	t.Helper()
	k, err := wg.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().String()
}
