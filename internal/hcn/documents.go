package hcn

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/zlayer/zlayer-overlayd/internal/engine"
)

// The HCN v2 schema, reduced to the fields we set or compare. Field names
// and omitempty behaviour follow github.com/Microsoft/hcsshim/hcn, into
// whose types the Windows code decodes these documents strictly (an extra
// field here fails there).
type (
	schemaVersion struct {
		Major int `json:"Major"`
		Minor int `json:"Minor"`
	}
	route struct {
		NextHop           string `json:",omitempty"`
		DestinationPrefix string `json:",omitempty"`
	}
	subnet struct {
		IpAddressPrefix string  `json:",omitempty"`
		Routes          []route `json:",omitempty"`
	}
	ipam struct {
		Type    string   `json:",omitempty"`
		Subnets []subnet `json:",omitempty"`
	}
	dns struct {
		Domain     string   `json:",omitempty"`
		Search     []string `json:",omitempty"`
		ServerList []string `json:",omitempty"`
	}
	ipConfig struct {
		IpAddress    string `json:",omitempty"`
		PrefixLength uint8  `json:",omitempty"`
	}

	networkDoc struct {
		Id            string        `json:"ID,omitempty"`
		Name          string        `json:",omitempty"`
		Type          string        `json:",omitempty"`
		Ipams         []ipam        `json:",omitempty"`
		SchemaVersion schemaVersion `json:",omitzero"`
	}
	endpointDoc struct {
		Name               string        `json:",omitempty"`
		HostComputeNetwork string        `json:",omitempty"`
		IpConfigurations   []ipConfig    `json:",omitempty"`
		Dns                dns           `json:",omitzero"`
		Routes             []route       `json:",omitempty"`
		SchemaVersion      schemaVersion `json:",omitzero"`
	}
	namespaceDoc struct {
		Type          string        `json:",omitempty"`
		SchemaVersion schemaVersion `json:",omitzero"`
	}
)

// v2 is the schema version of every document: HNS's v2 API (Windows
// Server 2019 / 1809 and later).
var v2 = schemaVersion{Major: 2, Minor: 0}

// networkType is HNS's Internal network mode: a virtual switch connecting
// containers and the host only. hcsshim has no constant for it.
const networkType = "Internal"

// endpointPrefix starts the name of every endpoint we create, so that a
// detach never deletes an endpoint someone else added to a namespace.
const endpointPrefix = "zlayer-overlayd_"

// EndpointName is the HNS name of a container's endpoint on a network:
// deterministic, so that an endpoint left by a crash before its attachment
// was recorded is found and replaced by the next attach.
func EndpointName(network, containerID string) string {
	return endpointPrefix + network + "_" + containerID
}

func defaultRoute(a netip.Addr) string {
	if a.Is4() {
		return "0.0.0.0/0"
	}
	return "::/0"
}

func checkNetwork(n engine.HCNNetwork) error {
	if n.Name == "" {
		return fmt.Errorf("HCN network has no name")
	}
	if !n.Subnet.IsValid() || n.Subnet != n.Subnet.Masked() {
		return fmt.Errorf("HCN network %s: subnet %v is not a network prefix", n.Name, n.Subnet)
	}
	if !n.Gateway.IsValid() || !n.Subnet.Contains(n.Gateway) {
		return fmt.Errorf("HCN network %s: gateway %v is not inside %s", n.Name, n.Gateway, n.Subnet)
	}
	return nil
}

// NetworkDocument is the HNS document creating the node's Internal
// network: one static subnet, the node slice, whose default route names
// the gateway (that is how HNS learns a subnet's gateway).
func NetworkDocument(n engine.HCNNetwork) ([]byte, error) {
	if err := checkNetwork(n); err != nil {
		return nil, err
	}
	return json.Marshal(networkDoc{
		Name: n.Name,
		Type: networkType,
		Ipams: []ipam{{
			Type: "Static",
			Subnets: []subnet{{
				IpAddressPrefix: n.Subnet.String(),
				Routes:          []route{{NextHop: n.Gateway.String(), DestinationPrefix: defaultRoute(n.Gateway)}},
			}},
		}},
		SchemaVersion: v2,
	})
}

// EndpointDocument is the HNS document creating a container's endpoint on
// the network with ID networkID: its fixed address, the cluster CIDR
// routed via the gateway (the node, which forwards it into the overlay)
// and the cluster's resolver.
func EndpointDocument(networkID string, a engine.HCNAttach) ([]byte, error) {
	id, err := BareGUID(networkID)
	if err != nil {
		return nil, fmt.Errorf("HCN network ID: %w", err)
	}
	switch {
	case a.ContainerID == "":
		return nil, fmt.Errorf("HCN endpoint: container ID is empty")
	case !a.IP.IsValid():
		return nil, fmt.Errorf("HCN endpoint for %s: no address", a.ContainerID)
	case a.PrefixLen <= 0 || a.PrefixLen > a.IP.BitLen():
		return nil, fmt.Errorf("HCN endpoint for %s: prefix length %d does not fit %s", a.ContainerID, a.PrefixLen, a.IP)
	case !a.Gateway.IsValid() || a.Gateway.Is4() != a.IP.Is4():
		return nil, fmt.Errorf("HCN endpoint for %s: gateway %v is not an address of %s's family", a.ContainerID, a.Gateway, a.IP)
	}
	doc := endpointDoc{
		Name:               EndpointName(a.Network, a.ContainerID),
		HostComputeNetwork: id,
		IpConfigurations:   []ipConfig{{IpAddress: a.IP.String(), PrefixLength: uint8(a.PrefixLen)}},
		SchemaVersion:      v2,
	}
	if a.Cluster.IsValid() {
		if a.Cluster.Addr().Is4() != a.IP.Is4() {
			return nil, fmt.Errorf("HCN endpoint for %s: cluster %s is not of %s's family", a.ContainerID, a.Cluster, a.IP)
		}
		doc.Routes = []route{{NextHop: a.Gateway.String(), DestinationPrefix: a.Cluster.Masked().String()}}
	}
	if a.DNSServer.IsValid() {
		doc.Dns.ServerList = []string{a.DNSServer.String()}
	}
	if a.DNSDomain != "" {
		doc.Dns.Domain = a.DNSDomain
		doc.Dns.Search = []string{a.DNSDomain}
	}
	return json.Marshal(doc)
}

// NamespaceDocument is the HNS document creating a container's namespace:
// a host compartment of its own, what process-isolated Windows containers
// use.
func NamespaceDocument() ([]byte, error) {
	return json.Marshal(namespaceDoc{Type: "Host", SchemaVersion: v2})
}

// SameNetwork explains how an existing HNS network (its JSON as HNS
// returns it) differs from the one we want, or returns nil when it can be
// adopted as it is.
func SameNetwork(existing []byte, want engine.HCNNetwork) error {
	var have networkDoc
	if err := json.Unmarshal(existing, &have); err != nil {
		return fmt.Errorf("HCN network %s: unreadable description: %w", want.Name, err)
	}
	if !strings.EqualFold(have.Type, networkType) {
		return fmt.Errorf("HCN network %s is of type %q, not %s", want.Name, have.Type, networkType)
	}
	var subnets []string
	for _, ip := range have.Ipams {
		for _, s := range ip.Subnets {
			subnets = append(subnets, s.IpAddressPrefix)
			p, err := netip.ParsePrefix(s.IpAddressPrefix)
			if err != nil || p.Masked() != want.Subnet {
				continue
			}
			for _, r := range s.Routes {
				if gw, err := netip.ParseAddr(r.NextHop); err == nil && gw == want.Gateway {
					return nil
				}
			}
			return fmt.Errorf("HCN network %s has subnet %s but not gateway %s", want.Name, want.Subnet, want.Gateway)
		}
	}
	return fmt.Errorf("HCN network %s has subnets %v, not the node slice %s", want.Name, subnets, want.Subnet)
}

// BareGUID normalises a GUID to the form the protocol carries: 36
// characters, lower case, no braces.
func BareGUID(s string) (string, error) {
	g := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s), "{"), "}"))
	if len(g) != 36 {
		return "", fmt.Errorf("%q is not a GUID (want 8-4-4-4-12 hex digits)", s)
	}
	for i, c := range g {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return "", fmt.Errorf("%q is not a GUID (want 8-4-4-4-12 hex digits)", s)
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return "", fmt.Errorf("%q is not a GUID (want 8-4-4-4-12 hex digits)", s)
			}
		}
	}
	return g, nil
}
