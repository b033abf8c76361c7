package store

// The records below are the daemon's desired state. Each is stored as one JSON value under
// one key; the JSON field names are part of the on-disk format, so they are snake_case and
// must never be renamed within a schema version (rename = new SchemaVersion + migration).
// Adding a field is compatible: older binaries ignore fields they do not know.

// Node is this node's own identity. Exactly one exists; Open creates it in a new file.
type Node struct {
	// Identity is random 128-bit hex generated once when the file is created. It never
	// changes (PutNode refuses to change it), so it identifies the node across restarts.
	Identity string `json:"identity"`
	// NodeID is the last value sent with set_local_node_id.
	NodeID uint64 `json:"node_id"`
	// ExpectedPubkey is the last base64 key sent with set_local_wg_pubkey; may be empty.
	ExpectedPubkey string `json:"expected_pubkey"`
	CreatedUnix    int64  `json:"created_unix"`
	// PrivateKey is the node's WireGuard private key (base64), generated on the
	// first setup_global_overlay and kept across teardowns so the node keeps the
	// identity the cluster knows. It lives only in this 0600 file.
	PrivateKey string `json:"private_key,omitempty"`
	// ClusterCIDR and SliceCIDR are the node's slice assignment, kept across
	// teardowns so a later setup gets the same slice (and node IP);
	// SliceExplicit is true when the main daemon sent the slice, false when
	// it was self-assigned from Identity.
	// In a dual-stack cluster each holds one prefix per family, the
	// first family's first, separated by a comma.
	ClusterCIDR   string `json:"cluster_cidr,omitempty"`
	SliceCIDR     string `json:"slice_cidr,omitempty"`
	SliceExplicit bool   `json:"slice_explicit,omitempty"`
	// KeySource says where PrivateKey came from: "request", "node_config"
	// (ZLayer's node_config.json), "generated"; empty in files written
	// before it was recorded.
	KeySource string `json:"key_source,omitempty"`
	// DNSDelegated is set once the main daemon showed that it relies on our
	// DNS server (register_dns, or hello with the "dns" feature): from then
	// on we also serve the addresses its own DNS server would bind.
	DNSDelegated bool `json:"dns_delegated,omitempty"`
}

// Global is the cluster overlay. Its absence means no global overlay is set up.
type Global struct {
	Deployment  string `json:"deployment"`
	InstanceID  string `json:"instance_id"`
	ClusterCIDR string `json:"cluster_cidr"`
	NodeIP      string `json:"node_ip"`
	// NodeIP2 is the node's address in the second family of a dual-stack
	// cluster (ClusterCIDR then holds both prefixes).
	NodeIP2    string `json:"node_ip2,omitempty"`
	WGPort     uint16 `json:"wg_port"`
	NATEnabled bool   `json:"nat_enabled"`
	Interface  string `json:"interface"`
	MTU        int    `json:"mtu"`
	// TURNServers came with setup_global_overlay; they carry credentials,
	// which is why they live in this 0600 file and nowhere else.
	TURNServers []TURNServer `json:"turn_servers,omitempty"`
}

// TURNServer is a TURN server with long-term credentials.
type TURNServer struct {
	Address    string `json:"address"`
	Username   string `json:"username"`
	Credential string `json:"credential"`
}

func (t TURNServer) String() string { return t.Address }

// Service is one per-service overlay network. Key: Name.
type Service struct {
	Name string `json:"name"`
	// Mode is "shared" or "dedicated".
	Mode   string `json:"mode"`
	Subnet string `json:"subnet"`
	// SubnetSource is "explicit", "slice" or "hash": how Subnet was chosen, so a restart
	// re-derives nothing.
	SubnetSource string `json:"subnet_source"`
	Gateway      string `json:"gateway"`
	Bridge       string `json:"bridge"`
	// Interface is the dedicated WireGuard device, if any.
	Interface  string `json:"interface"`
	WGPort     uint16 `json:"wg_port"`
	PrivateKey string `json:"private_key"`
	OverlayIP  string `json:"overlay_ip"`
	// Subnet2 and Gateway2 are the service's range in the second family of
	// a dual-stack cluster.
	Subnet2  string `json:"subnet2,omitempty"`
	Gateway2 string `json:"gateway2,omitempty"`
	// Ranges are the ranges the service grew by when Subnet filled up,
	// carved from the node slice, in the order they were added; each has
	// its first usable address as a gateway on the bridge.
	Ranges []string `json:"ranges,omitempty"`
}

// Allocation is one address handed out from a pool. Key: Pool + "|" + Addr.
type Allocation struct {
	// Pool is "slice" or "service:<name>".
	Pool string `json:"pool"`
	Addr string `json:"addr"`
	// Owner says who holds the address, e.g. "node", "gateway", "attach:linux_pid:4242",
	// "api", "guest:vm-1".
	Owner string `json:"owner"`
}

// Attachment is one container or guest attached to a service. Key: Key.
type Attachment struct {
	// Key is the handle string, e.g. "linux_pid:4242", "guest_managed:vm-1" or
	// "netns:<container id>/<ifname>".
	Key      string `json:"key"`
	Platform string `json:"platform"`
	PID      uint32 `json:"pid"`
	GuestID  string `json:"guest_id"`
	Service  string `json:"service"`
	IP       string `json:"ip"`
	GlobalIP string `json:"global_ip"`
	// IP2 and GlobalIP2 are the addresses in the second family of a
	// dual-stack cluster.
	IP2       string `json:"ip2,omitempty"`
	GlobalIP2 string `json:"global_ip2,omitempty"`
	// HostLink is the host end of the container's eth0 veth.
	HostLink string `json:"host_link"`
	// HostLinkGlobal is the host end of the container's eth1 veth.
	HostLinkGlobal string `json:"host_link_global"`
	// NetnsInode and StartTime identify the process at attach time, so a recycled PID is
	// never mistaken for the attached process: the inode of /proc/<pid>/ns/net and field
	// 22 of /proc/<pid>/stat.
	NetnsInode  uint64 `json:"netns_inode"`
	StartTime   uint64 `json:"start_time"`
	GuestPubkey string `json:"guest_pubkey"`
	DNSServer   string `json:"dns_server"`
	DNSDomain   string `json:"dns_domain"`
	CreatedUnix int64  `json:"created_unix"`
	// NetnsPath, ContainerID and IfName identify a netns attachment (a CNI container):
	// the namespace file it was made in (NetnsInode is that file's inode), the runtime's
	// container id and the container-side interface name.
	NetnsPath   string `json:"netns_path,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
	IfName      string `json:"ifname,omitempty"`
	// Detaching marks an attachment whose removal began but did not finish
	// (a Windows container's HCN endpoint is deleted between two commits):
	// reconcile finishes it, so a crash in between leaks nothing.
	Detaching bool `json:"detaching,omitempty"`
}

// Peer is one WireGuard peer. Key: Scope + "|" + PublicKey.
type Peer struct {
	// Scope is "global" or "service:<name>".
	Scope     string `json:"scope"`
	PublicKey string `json:"public_key"`
	// Endpoint is as requested; it may be a hostname:port.
	Endpoint string `json:"endpoint"`
	// AllowedIPs is a set; PutPeer stores it sorted and without duplicates.
	AllowedIPs []string `json:"allowed_ips"`
	Keepalive  uint64   `json:"keepalive"`
	Candidates []string `json:"candidates"`
	// LearnedEndpoint is an endpoint WireGuard learned by roaming or NAT traversal that
	// we keep across restarts.
	LearnedEndpoint string `json:"learned_endpoint"`
	// Guest is true when a guest_managed attach registered the peer.
	Guest bool `json:"guest"`
}

// DNSRecord is the address set of one name. Key: Name, lower-cased by PutDNS.
type DNSRecord struct {
	Name string `json:"name"`
	// Addrs are kept in registration order.
	Addrs []string `json:"addrs"`
}

// State is everything in the store, as loaded.
type State struct {
	Node        Node
	Global      *Global
	Services    map[string]Service
	Allocations []Allocation
	Attachments map[string]Attachment
	Peers       []Peer
	DNS         map[string]DNSRecord
}
