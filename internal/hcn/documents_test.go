package hcn

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/engine"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// golden compares doc, indented, with testdata/name.
func golden(t *testing.T, name string, doc []byte) {
	t.Helper()
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, doc, "", "  "); err != nil {
		t.Fatalf("%s: not JSON: %v\n%s", name, err, doc)
	}
	pretty.WriteByte('\n')
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, pretty.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(pretty.Bytes(), want) {
		t.Errorf("%s differs from the golden file:\n got %s\nwant %s", name, pretty.Bytes(), want)
	}
}

var (
	node = engine.HCNNetwork{
		Name:    "zlayer-overlay",
		Subnet:  netip.MustParsePrefix("10.200.3.16/28"),
		Gateway: netip.MustParseAddr("10.200.3.17"),
	}
	netID     = "5E0F1B6A-8C3D-4F2E-9A1B-7C6D5E4F3A2B"
	container = engine.HCNAttach{
		Network:     "zlayer-overlay",
		ContainerID: "3f9c2d7e1a",
		IP:          netip.MustParseAddr("10.200.3.20"),
		PrefixLen:   28,
		Gateway:     netip.MustParseAddr("10.200.3.17"),
		Cluster:     netip.MustParsePrefix("10.200.0.0/16"),
		DNSServer:   netip.MustParseAddr("10.200.3.17"),
		DNSDomain:   "zlayer.local",
	}
)

func TestNetworkDocument(t *testing.T) {
	doc, err := NetworkDocument(node)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "network.json", doc)
	if bytes.Contains(doc, []byte("NetAdapterName")) || bytes.Contains(doc, []byte("Policies")) {
		t.Errorf("the Internal network must not be bound to an adapter: %s", doc)
	}

	v6 := engine.HCNNetwork{Name: "v6-overlay", Subnet: netip.MustParsePrefix("fd00:200:0:3::/120"), Gateway: netip.MustParseAddr("fd00:200:0:3::1")}
	doc, err = NetworkDocument(v6)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "network-v6.json", doc)
}

func TestNetworkDocumentRefusesNonsense(t *testing.T) {
	for name, n := range map[string]engine.HCNNetwork{
		"no name":            {Subnet: node.Subnet, Gateway: node.Gateway},
		"host bits":          {Name: "x", Subnet: netip.MustParsePrefix("10.200.3.17/28"), Gateway: node.Gateway},
		"gateway outside":    {Name: "x", Subnet: node.Subnet, Gateway: netip.MustParseAddr("10.200.4.1")},
		"no gateway":         {Name: "x", Subnet: node.Subnet},
		"no subnet":          {Name: "x", Gateway: node.Gateway},
		"family mismatch gw": {Name: "x", Subnet: node.Subnet, Gateway: netip.MustParseAddr("fd00::1")},
	} {
		if doc, err := NetworkDocument(n); err == nil {
			t.Errorf("%s: built %s", name, doc)
		}
	}
}

func TestEndpointDocument(t *testing.T) {
	doc, err := EndpointDocument(netID, container)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "endpoint.json", doc)
	if !bytes.Contains(doc, []byte(`"5e0f1b6a-8c3d-4f2e-9a1b-7c6d5e4f3a2b"`)) {
		t.Errorf("network ID not normalised: %s", doc)
	}

	bare := container
	bare.Cluster, bare.DNSServer, bare.DNSDomain = netip.Prefix{}, netip.Addr{}, ""
	doc, err = EndpointDocument("{"+netID+"}", bare)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "endpoint-minimal.json", doc)
}

func TestEndpointDocumentRefusesNonsense(t *testing.T) {
	mut := func(f func(*engine.HCNAttach)) engine.HCNAttach { a := container; f(&a); return a }
	for name, a := range map[string]engine.HCNAttach{
		"no container": mut(func(a *engine.HCNAttach) { a.ContainerID = "" }),
		"no IP":        mut(func(a *engine.HCNAttach) { a.IP = netip.Addr{} }),
		"prefix 0":     mut(func(a *engine.HCNAttach) { a.PrefixLen = 0 }),
		"prefix 33":    mut(func(a *engine.HCNAttach) { a.PrefixLen = 33 }),
		"no gateway":   mut(func(a *engine.HCNAttach) { a.Gateway = netip.Addr{} }),
		"v6 gateway":   mut(func(a *engine.HCNAttach) { a.Gateway = netip.MustParseAddr("fd00::1") }),
		"v6 cluster":   mut(func(a *engine.HCNAttach) { a.Cluster = netip.MustParsePrefix("fd00::/64") }),
	} {
		if doc, err := EndpointDocument(netID, a); err == nil {
			t.Errorf("%s: built %s", name, doc)
		}
	}
	if _, err := EndpointDocument("not-a-guid", container); err == nil {
		t.Error("a malformed network ID was accepted")
	}
}

func TestNamespaceDocument(t *testing.T) {
	doc, err := NamespaceDocument()
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "namespace.json", doc)
}

func TestEndpointNameIsOursAndDeterministic(t *testing.T) {
	a, b := EndpointName("zlayer-overlay", "c1"), EndpointName("zlayer-overlay", "c1")
	if a != b || !strings.HasPrefix(a, endpointPrefix) {
		t.Errorf("EndpointName: %q, %q", a, b)
	}
	if EndpointName("zlayer-overlay", "c1") == EndpointName("zlayer-overlay", "c2") ||
		EndpointName("a-overlay", "c1") == EndpointName("b-overlay", "c1") {
		t.Error("EndpointName collides")
	}
}

func TestSameNetwork(t *testing.T) {
	// testdata/existing-network.json is a network as HNS describes it:
	// with its ID, flags, MAC pool, health and more than we ever send.
	existing, err := os.ReadFile(filepath.Join("testdata", "existing-network.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := SameNetwork(existing, node); err != nil {
		t.Errorf("our own network not adopted: %v", err)
	}
	for name, want := range map[string]engine.HCNNetwork{
		"other slice":   {Name: node.Name, Subnet: netip.MustParsePrefix("10.200.3.32/28"), Gateway: netip.MustParseAddr("10.200.3.33")},
		"other gateway": {Name: node.Name, Subnet: node.Subnet, Gateway: netip.MustParseAddr("10.200.3.18")},
	} {
		if err := SameNetwork(existing, want); err == nil {
			t.Errorf("%s: adopted", name)
		}
	}
	nat := bytes.Replace(existing, []byte(`"Type": "Internal"`), []byte(`"Type": "NAT"`), 1)
	if err := SameNetwork(nat, node); err == nil || !strings.Contains(err.Error(), "NAT") {
		t.Errorf("a NAT network of that name was adopted (err %v)", err)
	}
	if err := SameNetwork([]byte("{"), node); err == nil {
		t.Error("garbage adopted")
	}
}

func TestBareGUID(t *testing.T) {
	const want = "5e0f1b6a-8c3d-4f2e-9a1b-7c6d5e4f3a2b"
	for _, in := range []string{want, strings.ToUpper(want), "{" + strings.ToUpper(want) + "}", " " + want + "\n"} {
		if got, err := BareGUID(in); err != nil || got != want {
			t.Errorf("BareGUID(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", want[:35], want + "0", strings.ReplaceAll(want, "-", ""), "5e0f1b6a-8c3d-4f2e-9a1b_7c6d5e4f3a2b", "ze0f1b6a-8c3d-4f2e-9a1b-7c6d5e4f3a2b", "{{" + want + "}}"} {
		if got, err := BareGUID(bad); err == nil {
			t.Errorf("BareGUID(%q) accepted: %q", bad, got)
		}
	}
}
