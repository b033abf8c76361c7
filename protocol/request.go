package protocol

import (
	"log/slog"
	"net/netip"
	"strconv"
)

// Request is one operation the main daemon asks overlayd to perform. The
// concrete types below are the variants of the reference's OverlaydRequest
// (tag "op") plus our extensions.
type Request interface {
	// Op is the variant's wire tag, e.g. "add_peer".
	Op() string
}

// SetLocalNodeID pushes this node's Raft id.
type SetLocalNodeID struct {
	NodeID uint64 `json:"node_id"`
}

// SetLocalWGPubkey pushes the WireGuard public key (base64) the cluster
// knows for this node.
type SetLocalWGPubkey struct {
	Pubkey string `json:"pubkey"`
}

// SetupGlobalOverlay brings up (or adopts) the node's global overlay device.
type SetupGlobalOverlay struct {
	Deployment  string `json:"deployment"`
	InstanceID  string `json:"instance_id"`
	ClusterCIDR string `json:"cluster_cidr"`
	// SliceCIDR is the node's slice of the cluster CIDR; empty means "not
	// assigned", and overlayd then self-assigns one.
	SliceCIDR  string `json:"slice_cidr,omitempty"`
	WGPort     uint16 `json:"wg_port"`
	NATEnabled bool   `json:"nat_enabled"`

	// PrivateKey (extension) is a base64 WireGuard private key to adopt
	// instead of the node's persisted or generated one, so the device uses
	// the identity the cluster already knows.
	PrivateKey string `json:"private_key,omitempty"`

	// TURNServers (extension) are TURN servers for relaying the global
	// overlay's WireGuard traffic when no direct path works, as the
	// reference's NatConfig.turn_servers describes them. They replace the
	// daemon's --turn-server flags. Credentials are secrets: the daemon
	// keeps them in its 0600 store only and never logs or reports them.
	TURNServers []TURNServerConfig `json:"turn_servers,omitempty"`
}

// TURNServerConfig is one TURN server with long-term credentials (the
// reference's TurnServerConfig). String, GoString and LogValue print the
// address only.
type TURNServerConfig struct {
	Address    string `json:"address"`
	Username   string `json:"username"`
	Credential string `json:"credential"`
	// Region is informational (the reference does not use it either).
	Region string `json:"region,omitempty"`
}

func (t TURNServerConfig) String() string { return t.Address }
func (t TURNServerConfig) GoString() string {
	return "protocol.TURNServerConfig{Address:" + strconv.Quote(t.Address) + "}"
}
func (t TURNServerConfig) LogValue() slog.Value { return slog.StringValue(t.Address) }

// TeardownGlobalOverlay removes the global overlay device and its state.
type TeardownGlobalOverlay struct{}

// Overlay modes of setup_service_overlay.
const (
	ModeAuto      = "auto"
	ModeShared    = "shared"
	ModeDedicated = "dedicated"
)

// SetupServiceOverlay creates (or adopts) a service's overlay segment.
type SetupServiceOverlay struct {
	Service string `json:"service"`
	// Mode is one of ModeAuto, ModeShared or ModeDedicated; auto resolves
	// to shared.
	Mode string `json:"mode"`

	// Subnet (extension) is the service subnet the main daemon assigned;
	// it wins over every other placement rule. In a dual-stack cluster it
	// may name one subnet of each family, separated by a comma.
	Subnet string `json:"subnet,omitempty"`
}

// TeardownServiceOverlay removes a service's overlay segment.
type TeardownServiceOverlay struct {
	Service string `json:"service"`
}

// AllocateIP allocates an overlay address for a service (or from the node
// slice when the service has no subnet on this node).
type AllocateIP struct {
	Service    string `json:"service"`
	JoinGlobal bool   `json:"join_global"`
	// Family (extension) picks the address family in a dual-stack
	// cluster: FamilyIPv4 or FamilyIPv6; empty is the cluster's first.
	Family string `json:"family,omitempty"`
}

// Address families of AllocateIP.Family.
const (
	FamilyIPv4 = "ipv4"
	FamilyIPv6 = "ipv6"
)

// ReleaseIP returns an address handed out by AllocateIP.
type ReleaseIP struct {
	IP netip.Addr `json:"ip"`
}

// AttachContainer wires a container (or VM guest) into a service overlay.
type AttachContainer struct {
	Handle     AttachHandle `json:"handle"`
	Service    string       `json:"service"`
	JoinGlobal bool         `json:"join_global"`
	DNSServer  netip.Addr   `json:"dns_server,omitzero"`
	DNSDomain  string       `json:"dns_domain,omitempty"`
}

// DetachContainer undoes AttachContainer.
type DetachContainer struct {
	Handle AttachHandle `json:"handle"`
}

// PeerSpec is a WireGuard peer as it crosses the wire.
type PeerSpec struct {
	// PublicKey is the peer's base64 public key.
	PublicKey string `json:"public_key"`
	// Endpoint is "host:port"; host may be an address or a hostname.
	Endpoint string `json:"endpoint"`
	// AllowedIPs is a comma-separated list of CIDRs.
	AllowedIPs string `json:"allowed_ips"`
	// PersistentKeepaliveSecs is the keepalive interval; 0 disables it.
	PersistentKeepaliveSecs uint64 `json:"persistent_keepalive_secs"`
}

// AddPeer adds or updates a WireGuard peer. On the wire the PeerSpec fields
// sit at the request level, followed by scope.
type AddPeer struct {
	PeerSpec
	Scope PeerScope `json:"scope"`

	// Candidates (extension) are further endpoints to try, in order, until
	// a handshake succeeds.
	Candidates []string `json:"candidates,omitempty"`
}

// RemovePeer removes a WireGuard peer by public key.
type RemovePeer struct {
	Pubkey string    `json:"pubkey"`
	Scope  PeerScope `json:"scope"`
}

// AddAllowedIP adds one CIDR to a peer's allowed IPs.
type AddAllowedIP struct {
	Pubkey string    `json:"pubkey"`
	CIDR   string    `json:"cidr"`
	Scope  PeerScope `json:"scope"`
}

// RemoveAllowedIP removes one CIDR from a peer's allowed IPs.
type RemoveAllowedIP struct {
	Pubkey string    `json:"pubkey"`
	CIDR   string    `json:"cidr"`
	Scope  PeerScope `json:"scope"`
}

// RegisterDNS adds an address to a name in the cluster zone.
type RegisterDNS struct {
	Name string     `json:"name"`
	IP   netip.Addr `json:"ip"`
}

// UnregisterDNS removes a name (all its addresses) from the cluster zone.
type UnregisterDNS struct {
	Name string `json:"name"`
}

// Status asks for a snapshot of the overlay.
type Status struct{}

// NATTick runs one NAT-traversal maintenance round.
type NATTick struct{}

// Shutdown asks the daemon to answer and then exit.
type Shutdown struct{}

// Hello (extension) asks for the server's protocol version and features so a
// client can detect version skew instead of misparsing.
type Hello struct {
	// ClientVersion is informational, e.g. "zlayer 0.12.2".
	ClientVersion string `json:"client_version,omitempty"`
	// Features are what the client relies on overlayd for. "dns": the
	// client runs no DNS server of its own, so overlayd also serves the
	// addresses ZLayer's own DNS server would bind (see FeatureDNS).
	Features []string `json:"features,omitempty"`
}

// FeatureDNS in Hello.Features hands the node's DNS addresses to overlayd.
const FeatureDNS = "dns"

// ListDNS (extension) asks for every name of the cluster zone with its
// addresses: what register_dns put there. Read-only.
type ListDNS struct{}

// Backup (extension) asks the daemon to write a consistent copy of its
// state file to Path while it keeps serving. Path is absolute and names a
// file in a directory only root (or the daemon's user) can write; the
// copy is created mode 0600, owned by the daemon's user. Only root and the
// daemon's own user may ask: the state holds private keys.
type Backup struct {
	Path string `json:"path"`
}

func (SetLocalNodeID) Op() string         { return "set_local_node_id" }
func (SetLocalWGPubkey) Op() string       { return "set_local_wg_pubkey" }
func (SetupGlobalOverlay) Op() string     { return "setup_global_overlay" }
func (TeardownGlobalOverlay) Op() string  { return "teardown_global_overlay" }
func (SetupServiceOverlay) Op() string    { return "setup_service_overlay" }
func (TeardownServiceOverlay) Op() string { return "teardown_service_overlay" }
func (AllocateIP) Op() string             { return "allocate_ip" }
func (ReleaseIP) Op() string              { return "release_ip" }
func (AttachContainer) Op() string        { return "attach_container" }
func (DetachContainer) Op() string        { return "detach_container" }
func (AddPeer) Op() string                { return "add_peer" }
func (RemovePeer) Op() string             { return "remove_peer" }
func (AddAllowedIP) Op() string           { return "add_allowed_ip" }
func (RemoveAllowedIP) Op() string        { return "remove_allowed_ip" }
func (RegisterDNS) Op() string            { return "register_dns" }
func (UnregisterDNS) Op() string          { return "unregister_dns" }
func (Status) Op() string                 { return "status" }
func (NATTick) Op() string                { return "nat_tick" }
func (Shutdown) Op() string               { return "shutdown" }
func (Hello) Op() string                  { return "hello" }
func (ListDNS) Op() string                { return "list_dns" }
func (Backup) Op() string                 { return "backup" }

// requestTypes maps every op to a constructor of its zero value; the decoder
// and the golden tests use it, so a new op is registered exactly once.
var requestTypes = map[string]func() Request{
	"set_local_node_id":        func() Request { return &SetLocalNodeID{} },
	"set_local_wg_pubkey":      func() Request { return &SetLocalWGPubkey{} },
	"setup_global_overlay":     func() Request { return &SetupGlobalOverlay{} },
	"teardown_global_overlay":  func() Request { return &TeardownGlobalOverlay{} },
	"setup_service_overlay":    func() Request { return &SetupServiceOverlay{} },
	"teardown_service_overlay": func() Request { return &TeardownServiceOverlay{} },
	"allocate_ip":              func() Request { return &AllocateIP{} },
	"release_ip":               func() Request { return &ReleaseIP{} },
	"attach_container":         func() Request { return &AttachContainer{} },
	"detach_container":         func() Request { return &DetachContainer{} },
	"add_peer":                 func() Request { return &AddPeer{} },
	"remove_peer":              func() Request { return &RemovePeer{} },
	"add_allowed_ip":           func() Request { return &AddAllowedIP{} },
	"remove_allowed_ip":        func() Request { return &RemoveAllowedIP{} },
	"register_dns":             func() Request { return &RegisterDNS{} },
	"unregister_dns":           func() Request { return &UnregisterDNS{} },
	"status":                   func() Request { return &Status{} },
	"nat_tick":                 func() Request { return &NATTick{} },
	"shutdown":                 func() Request { return &Shutdown{} },
	"hello":                    func() Request { return &Hello{} },
	"list_dns":                 func() Request { return &ListDNS{} },
	"backup":                   func() Request { return &Backup{} },
}

// Ops lists every op this package can decode, reference ops first.
func Ops() []string {
	return []string{
		"set_local_node_id", "set_local_wg_pubkey", "setup_global_overlay",
		"teardown_global_overlay", "setup_service_overlay", "teardown_service_overlay",
		"allocate_ip", "release_ip", "attach_container", "detach_container",
		"add_peer", "remove_peer", "add_allowed_ip", "remove_allowed_ip",
		"register_dns", "unregister_dns", "status", "nat_tick", "shutdown",
		"hello", "list_dns", "backup",
	}
}
