package doctor

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

type fakeHost struct {
	sysctls   map[string]string
	modules   map[string]bool
	tun       bool
	mtus      map[string]int
	route     map[netip.Addr]int // endpoint -> underlay MTU via eth0
	defDev    string
	nft       []Chain
	legacy    []Chain
	nftErr    error // what reading nftables fails with, if set
	legacyErr error
	dnsRcode  map[netip.AddrPort]string
}

func (h *fakeHost) Sysctl(name string) (string, error) {
	v, ok := h.sysctls[name]
	if !ok {
		return "", errors.New("no such sysctl")
	}
	return v, nil
}
func (h *fakeHost) Module(name string) (bool, bool, error) {
	return h.modules[name], h.modules[name], nil
}
func (h *fakeHost) DeviceNode(string) bool { return h.tun }
func (h *fakeHost) LinkMTU(name string) (int, error) {
	m, ok := h.mtus[name]
	if !ok {
		return 0, fmt.Errorf("link %s not found", name)
	}
	return m, nil
}
func (h *fakeHost) RouteTo(dst netip.Addr) (string, int, error) {
	m, ok := h.route[dst]
	if !ok {
		return "", 0, errors.New("no route")
	}
	return "eth0", m, nil
}
func (h *fakeHost) DefaultRouteDevice(bool) (string, error) { return h.defDev, nil }
func (h *fakeHost) NFTables() ([]Chain, error)              { return h.nft, h.nftErr }
func (h *fakeHost) LegacyIPTables(v6 bool) ([]Chain, error) {
	if h.legacyErr != nil {
		return nil, h.legacyErr
	}
	if v6 {
		return nil, nil
	}
	return h.legacy, nil
}
func (h *fakeHost) QueryDNS(_ context.Context, server netip.AddrPort, _ string) (string, error) {
	rc, ok := h.dnsRcode[server]
	if !ok {
		return "", errors.New("i/o timeout")
	}
	return rc, nil
}

var now = time.Unix(1_800_000_000, 0)

// healthy is a node as the two-node lab leaves it: a global overlay, one
// service with a bridge, one peer that handshook a few seconds ago.
func healthy() (protocol.StatusSnapshot, *fakeHost) {
	s := protocol.StatusSnapshot{
		Version: "test", Interface: "zl-prod-g", OverlayCIDR: "10.200.0.0/16", MTU: 1420, WGBackend: "userspace",
		LastReconcile: now.Unix() - 3,
		Services:      []protocol.ServiceStatus{{Service: "web", Bridge: "zl-prod-web-b", Subnet: "10.200.1.16/28", Gateway: netip.MustParseAddr("10.200.1.17")}},
		Peers:         []protocol.PeerStatus{{PublicKey: "PEERKEY1234567890", Endpoint: "172.31.0.3:51820", LastHandshakeUnixSecs: now.Unix() - 5, PersistentKeepaliveSecs: 25}},
		DNS:           &protocol.DNSStatus{Zone: "prod.local", Listeners: []string{"127.0.0.1:15354", "10.200.1.17:53"}},
		Firewall:      &protocol.FirewallStatus{Table: "zlayer_overlay", Rules: 20},
	}
	h := &fakeHost{
		sysctls: map[string]string{"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/rp_filter": "0",
			"net/ipv4/conf/zl-prod-g/rp_filter": "0", "net/ipv4/conf/zl-prod-web-b/rp_filter": "2"},
		modules:  map[string]bool{"bridge": true},
		tun:      true,
		mtus:     map[string]int{"zl-prod-g": 1420, "zl-prod-web-b": 1420, "eth0": 1500},
		route:    map[netip.Addr]int{netip.MustParseAddr("172.31.0.3"): 1500},
		defDev:   "eth0",
		nft:      []Chain{{View: "nftables", Family: "inet", Table: "zlayer_overlay", Name: "forward", Hook: "forward", Policy: "accept", Rules: []Rule{{Verdict: "drop", Text: "anything else"}}}},
		dnsRcode: map[netip.AddrPort]string{netip.MustParseAddrPort("10.200.1.17:53"): "NOERROR"},
	}
	return s, h
}

func TestHealthyNodePassesEveryCheck(t *testing.T) {
	s, h := healthy()
	r := Run(context.Background(), Inputs{Status: s, Host: h, Now: now})
	if r.Failed() {
		t.Fatalf("a healthy node fails: %+v", r.Results)
	}
	for _, res := range r.Results {
		if res.Status != OK {
			t.Errorf("%s: %s %s", res.Check, res.Status, res.Message)
		}
	}
	if len(r.Results) != 10 {
		t.Fatalf("%d results, want 10 checks", len(r.Results))
	}
}

func TestDaemonDownFailsAndSkipsWhatNeedsIt(t *testing.T) {
	_, h := healthy()
	r := Run(context.Background(), Inputs{StatusErr: errors.New("zlayer-overlayd is not running (no socket at /run/x.sock)"), Socket: "/run/x.sock", Host: h, Now: now})
	if !r.Failed() || r.Results[0].Status != Fail || !strings.Contains(r.Results[0].Fix, "systemctl start") {
		t.Fatalf("daemon down: %+v", r.Results[0])
	}
	if r.Results[1].Status != OK || r.Results[2].Status != OK {
		t.Fatalf("kernel checks should still run: %+v", r.Results[1:3])
	}
	if r.Results[len(r.Results)-1].Status != Skip {
		t.Fatalf("peers should be skipped without the daemon: %+v", r.Results[len(r.Results)-1])
	}
}

// dockerChains is what Docker leaves in ip filter (seen through
// iptables-nft or iptables-legacy): FORWARD drops by policy, and accepts
// only for its own bridges.
func dockerChains(view string, user ...Rule) []Chain {
	return []Chain{
		{View: view, Family: "ip", Table: "filter", Name: "FORWARD", Hook: "forward", Policy: "drop", Rules: []Rule{
			{Verdict: "jump", Target: "DOCKER-USER", Text: "FORWARD -j DOCKER-USER"},
			{Verdict: "jump", Target: "DOCKER-FORWARD", Text: "FORWARD -j DOCKER-FORWARD"},
		}},
		{View: view, Family: "ip", Table: "filter", Name: "DOCKER-USER", Rules: user},
		{View: view, Family: "ip", Table: "filter", Name: "DOCKER-FORWARD", Rules: []Rule{
			{Conditional: true, Out: "docker0", Verdict: "accept", Text: "-o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"},
			{In: "docker0", Verdict: "accept", Text: "-i docker0 -j ACCEPT"},
			{Conditional: true, In: "docker0", Verdict: "drop", Text: "-i docker0 ! -o docker0 -j DROP"},
		}},
	}
}

func TestForwardPolicyDropIsFoundInBothViews(t *testing.T) {
	for _, view := range []string{"nftables", "iptables-legacy"} {
		s, h := healthy()
		if view == "nftables" {
			h.nft = append(h.nft, dockerChains(view)...)
		} else {
			h.legacy = dockerChains(view)
		}
		r := ForwardFirewall(h, s)
		if r.Status != Fail || !strings.Contains(r.Message, "chain FORWARD") || !strings.Contains(r.Message, "policy DROP") ||
			!strings.Contains(r.Message, "zl-prod-web-b → zl-prod-g") || !strings.Contains(r.Message, view) {
			t.Fatalf("%s: %+v", view, r)
		}
		if !strings.Contains(r.Fix, "-I DOCKER-USER -i zl-+ -j ACCEPT") {
			t.Fatalf("%s: the fix does not name DOCKER-USER: %s", view, r.Fix)
		}
		// The operator's fix is recognised.
		allow := Rule{In: "zl-+", Verdict: "accept", Text: "-i zl-+ -j ACCEPT"}
		if view == "nftables" {
			h.nft = append(h.nft[:1], dockerChains(view, allow)...)
		} else {
			h.legacy = dockerChains(view, allow)
		}
		if r := ForwardFirewall(h, s); r.Status != OK {
			t.Fatalf("%s: accepted in DOCKER-USER, still %+v", view, r)
		}
	}
}

func TestForwardFirewallRulesAndScope(t *testing.T) {
	s, h := healthy()
	// A plain `iptables -P FORWARD DROP` (no Docker): the fix offers the policy too.
	h.nft = append(h.nft, Chain{View: "nftables", Family: "ip", Table: "filter", Name: "FORWARD", Hook: "forward", Policy: "drop"})
	r := ForwardFirewall(h, s)
	if r.Status != Fail || !strings.Contains(r.Fix, "-P FORWARD ACCEPT") || strings.Contains(r.Fix, "DOCKER") {
		t.Fatalf("policy drop: %+v", r)
	}
	// A rule dropping our overlay, in an accepting chain, is named.
	s, h = healthy()
	h.nft = append(h.nft, Chain{View: "nftables", Family: "inet", Table: "custom", Name: "fwd", Hook: "forward", Policy: "accept", Rules: []Rule{
		{Out: "zl-prod-g", Verdict: "drop", Text: "oifname zl-prod-g drop"},
	}})
	if r := ForwardFirewall(h, s); r.Status != Fail || !strings.Contains(r.Message, "oifname zl-prod-g drop") {
		t.Fatalf("rule drop: %+v", r)
	}
	// Conditional drops, IPv6 tables for an IPv4 overlay, bridge-family
	// chains and our own table are no finding.
	s, h = healthy()
	h.nft = append(h.nft,
		Chain{View: "nftables", Family: "ip", Table: "filter", Name: "FORWARD", Hook: "forward", Policy: "accept", Rules: []Rule{{Conditional: true, Verdict: "drop", Text: "-s 192.0.2.0/24 -j DROP"}}},
		Chain{View: "nftables", Family: "ip6", Table: "filter", Name: "FORWARD", Hook: "forward", Policy: "drop"},
		Chain{View: "nftables", Family: "bridge", Table: "filter", Name: "FORWARD", Hook: "forward", Policy: "drop"},
	)
	if r := ForwardFirewall(h, s); r.Status != OK {
		t.Fatalf("no real drop, got %+v", r)
	}
	// Egress to the underlay is a flow too.
	s, h = healthy()
	h.nft = append(h.nft, Chain{View: "nftables", Family: "ip", Table: "filter", Name: "FORWARD", Hook: "forward", Policy: "accept", Rules: []Rule{{Out: "eth0", Verdict: "reject", Text: "-o eth0 -j REJECT"}}})
	if r := ForwardFirewall(h, s); r.Status != Fail || !strings.Contains(r.Message, "to the outside") {
		t.Fatalf("egress: %+v", r)
	}
}

// What cannot be read is said, with what to do, and never passes for "no drop".
func TestForwardFirewallUnreadable(t *testing.T) {
	for _, c := range []struct {
		name              string
		nftErr, legacyErr error
		status            Status
		message, fix      string
	}{
		{"no netfilter", ErrUnsupported, nil, Skip, "cannot read netfilter on this platform", ""},
		{"not root", errors.New("operation not permitted"), nil, Fail, "cannot read nftables: operation not permitted", "as root"},
		{"no iptables-legacy-save", nil, errors.New("executable file not found"), Warn, "cannot read iptables-legacy rules: executable file not found", "install iptables"},
	} {
		s, h := healthy()
		h.nftErr, h.legacyErr = c.nftErr, c.legacyErr
		r := ForwardFirewall(h, s)
		if r.Check != "firewall" || r.Status != c.status || r.Message != c.message || !strings.Contains(r.Fix, c.fix) {
			t.Errorf("%s: %+v", c.name, r)
		}
	}
}

func TestParseIPTablesSave(t *testing.T) {
	dump := `# Generated by iptables-save v1.8.9
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [12:720]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A DOCKER-USER -i zl-+ -m comment --comment "zlayer \"overlay\"" -j ACCEPT
-A DOCKER-USER -j RETURN
-A FORWARD -p tcp -j REJECT --reject-with tcp-reset
COMMIT
`
	chains := ParseIPTablesSave(dump, "ip")
	if len(chains) != 4 {
		t.Fatalf("%d chains", len(chains))
	}
	fwd, user := chains[1], chains[3]
	if fwd.Name != "FORWARD" || fwd.Hook != "forward" || fwd.Policy != "drop" || len(fwd.Rules) != 4 {
		t.Fatalf("FORWARD: %+v", fwd)
	}
	want := []Rule{
		{Verdict: "jump", Target: "DOCKER-USER"},
		{Out: "docker0", Conditional: true, Verdict: "accept"},
		{In: "docker0", Out: "docker0", Conditional: true, Verdict: "accept"},
		{Conditional: true, Verdict: "reject"},
	}
	for i, w := range want {
		g := fwd.Rules[i]
		g.Text = ""
		if g != w {
			t.Errorf("FORWARD rule %d = %+v, want %+v", i, g, w)
		}
	}
	if u := user.Rules[0]; u.In != "zl-+" || u.Conditional || u.Verdict != "accept" {
		t.Fatalf("DOCKER-USER rule with a quoted comment: %+v", u)
	}
	if chains[0].Hook != "input" || user.Hook != "" || user.Policy != "" {
		t.Fatalf("hooks: %+v %+v", chains[0], user)
	}
}

func TestForwardingRPFilterAndMTU(t *testing.T) {
	s, h := healthy()
	h.sysctls["net/ipv4/ip_forward"] = "0"
	if r := Forwarding(h, s); r.Status != Fail || !strings.Contains(r.Fix, "sysctl -w net.ipv4.ip_forward=1") {
		t.Fatalf("forwarding off: %+v", r)
	}
	h.sysctls["net/ipv4/conf/all/rp_filter"] = "1"
	if r := RPFilter(h, s); r.Status != Warn || !strings.Contains(r.Message, "zl-prod-g") || strings.Contains(r.Message, "zl-prod-web-b") {
		// zl-prod-web-b is 2 (loose), the higher value wins there.
		t.Fatalf("strict rp_filter: %+v", r)
	}

	s, h = healthy()
	h.mtus["zl-prod-web-b"] = 1500
	if r := MTU(h, s); r.Status != Fail || !strings.Contains(r.Fix, "ip link set zl-prod-web-b mtu 1420") {
		t.Fatalf("bridge MTU: %+v", r)
	}
	s, h = healthy()
	h.route[netip.MustParseAddr("172.31.0.3")] = 1450
	if r := MTU(h, s); r.Status != Fail || !strings.Contains(r.Fix, "--mtu to 1390") {
		t.Fatalf("underlay MTU: %+v", r)
	}
}

func TestDNSCheck(t *testing.T) {
	s, h := healthy()
	h.dnsRcode[netip.MustParseAddrPort("10.200.1.17:53")] = "SERVFAIL"
	if r := DNS(context.Background(), h, s); r.Status != Fail || !strings.Contains(r.Message, "SERVFAIL") {
		t.Fatalf("servfail: %+v", r)
	}
	delete(h.dnsRcode, netip.MustParseAddrPort("10.200.1.17:53"))
	if r := DNS(context.Background(), h, s); r.Status != Fail || !strings.Contains(r.Message, "does not answer") {
		t.Fatalf("no answer: %+v", r)
	}
	s.DNS.Listeners = []string{"127.0.0.1:15354"}
	if r := DNS(context.Background(), h, s); r.Status != Fail || !strings.Contains(r.Message, "no DNS listener on 10.200.1.17") {
		t.Fatalf("no listener: %+v", r)
	}
}

func TestPeersWithoutHandshakeAndWhy(t *testing.T) {
	s, _ := healthy()
	s.Peers = []protocol.PeerStatus{
		{PublicKey: "NOENDPOINTxxxxxx", PersistentKeepaliveSecs: 25},
		{PublicKey: "STALExxxxxxxxxxx", Endpoint: "192.0.2.9:51820", LastHandshakeUnixSecs: now.Unix() - 600, PersistentKeepaliveSecs: 25},
		{PublicKey: "IDLExxxxxxxxxxxx", Endpoint: "192.0.2.8:51820", LastHandshakeUnixSecs: now.Unix() - 600},
	}
	r := Peers(s, now)
	if r.Status != Fail || !strings.Contains(r.Message, "2 of 3") || !strings.Contains(r.Message, "no endpoint") ||
		!strings.Contains(r.Message, "10m0s ago") || strings.Contains(r.Message, "IDLE") {
		t.Fatalf("peers: %+v", r)
	}
	s.Peers = s.Peers[1:2]
	s.NAT = &protocol.NATStatus{Enabled: true, Behaviour: "endpoint-dependent"}
	if r := Peers(s, now); r.Status != Fail || !strings.Contains(r.Message, "symmetric") {
		t.Fatalf("symmetric NAT: %+v", r)
	}
}

func TestAge(t *testing.T) {
	for _, c := range []struct {
		ago  time.Duration
		want string
	}{{12 * time.Second, "12s"}, {3*time.Minute + 4*time.Second, "3m4s"}, {2*time.Hour + 5*time.Minute, "2h5m"}, {72 * time.Hour, "3d"}} {
		if got := Age(now, now.Add(-c.ago).Unix()); got != c.want {
			t.Errorf("Age(%s) = %q, want %q", c.ago, got, c.want)
		}
	}
	if Age(now, 0) != "never" {
		t.Error("Age of 0 is not never")
	}
}

// A dual-stack overlay needs forwarding of both families.
func TestForwardingOfEveryFamily(t *testing.T) {
	s, h := healthy()
	s.OverlayCIDRs = []string{"10.200.0.0/16", "fd00:200::/56"}
	h.sysctls["net/ipv6/conf/all/forwarding"] = "0"
	if r := Forwarding(h, s); r.Status != Fail || !strings.Contains(r.Message, "net.ipv6.conf.all.forwarding") {
		t.Fatalf("IPv6 forwarding off in a dual-stack overlay: %+v", r)
	}
	h.sysctls["net/ipv6/conf/all/forwarding"] = "1"
	if r := Forwarding(h, s); r.Status != OK {
		t.Fatalf("both on: %+v", r)
	}
}
