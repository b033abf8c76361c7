package protocol

import "net/netip"

// Response is overlayd's answer to a Request (tag "result").
type Response interface {
	// Result is the variant's wire tag, e.g. "attached".
	Result() string
}

// OK is a success without payload.
type OK struct{}

// IP answers allocate_ip.
type IP struct {
	IP netip.Addr `json:"ip"`
}

// Attached answers a linux_pid or windows_container attach.
type Attached struct {
	IP            netip.Addr `json:"ip"`
	NamespaceGUID string     `json:"namespace_guid,omitempty"`

	// Extensions: the container's address on the global overlay (eth1) when
	// it joined it, and the resolver the runtime should write into the
	// container's resolv.conf.
	GlobalIP  netip.Addr `json:"global_ip,omitzero"`
	DNSServer netip.Addr `json:"dns_server,omitzero"`
	DNSDomain string     `json:"dns_domain,omitempty"`
	// Extensions of a dual-stack cluster: the container's addresses in
	// each family (ip and global_ip are the first family's), omitted with
	// one family.
	IPs       []netip.Addr `json:"ips,omitempty"`
	GlobalIPs []netip.Addr `json:"global_ips,omitempty"`
	// Interfaces (extension, netns handles only) are the links the attach
	// built in the namespace, with what a CNI result reports of each.
	Interfaces []AttachedInterface `json:"interfaces,omitempty"`
}

// AttachedInterface (extension) is one link an attach built: its name in
// the container, the host end's name, its addresses (one per family), and
// every route via it inside the container.
type AttachedInterface struct {
	IfName    string            `json:"ifname"`
	HostLink  string            `json:"host_link"`
	Addresses []AttachedAddress `json:"addresses"`
	Routes    []AttachedRoute   `json:"routes,omitempty"`
}

// AttachedAddress (extension) is an address of an attached interface with
// its prefix length, and the gateway of the interface's default route in
// that family, if it has one.
type AttachedAddress struct {
	Address netip.Prefix `json:"address"`
	Gateway netip.Addr   `json:"gateway,omitzero"`
}

// AttachedRoute (extension) is a route inside the container via its
// interface. OnLink: Via is reachable on the link although no address of
// the interface covers it.
type AttachedRoute struct {
	Dst    netip.Prefix `json:"dst"`
	Via    netip.Addr   `json:"via,omitzero"`
	OnLink bool         `json:"on_link,omitempty"`
}

// GuestConfig answers a guest_managed attach: everything the guest needs to
// bring up its own WireGuard interface.
type GuestConfig struct {
	OverlayIP  netip.Addr `json:"overlay_ip"`
	PrefixLen  uint8      `json:"prefix_len"`
	PrivateKey string     `json:"private_key"`
	PublicKey  string     `json:"public_key"`
	ListenPort uint16     `json:"listen_port"`
	Peers      []PeerSpec `json:"peers"`
	DNSServer  netip.Addr `json:"dns_server,omitzero"`
	DNSDomain  string     `json:"dns_domain,omitempty"`
	// OverlayIPs (extension, dual-stack only) are the guest's addresses in
	// each family; overlay_ip and prefix_len are the first family's.
	OverlayIPs []netip.Addr `json:"overlay_ips,omitempty"`
}

// BridgeName answers setup_global_overlay with the device's name.
type BridgeName struct {
	Name string `json:"name"`
}

// StatusResult answers status; on the wire its fields sit beside the tag.
type StatusResult struct {
	StatusSnapshot
}

// ServiceOverlay answers setup_service_overlay. The identity fields are set
// for dedicated overlays only.
type ServiceOverlay struct {
	Name        string     `json:"name"`
	Mode        string     `json:"mode"`
	WGPublicKey string     `json:"wg_public_key,omitempty"`
	WGPort      uint16     `json:"wg_port,omitempty"`
	OverlayIP   netip.Addr `json:"overlay_ip,omitzero"`
	Subnet      string     `json:"subnet,omitempty"`

	// Extension: the bridge gateway (and so the containers' default route
	// and DNS server) of the service on this node.
	Gateway netip.Addr `json:"gateway,omitzero"`
	// Extensions of a dual-stack cluster: the service's subnet and gateway
	// in each family, the first family's first (omitted with one family).
	Subnets  []string     `json:"subnets,omitempty"`
	Gateways []netip.Addr `json:"gateways,omitempty"`
}

// Err is a failed request; Message says what was wrong and what to do.
type Err struct {
	Message string `json:"message"`
}

// Error makes Err usable as a Go error on the client side.
func (e Err) Error() string { return e.Message }

// HelloResult (extension) answers hello.
type HelloResult struct {
	ProtocolVersion uint32   `json:"protocol_version"`
	ServerVersion   string   `json:"server_version"`
	Features        []string `json:"features"`
}

// StatusSnapshot is the overlay as status reports it. The first nine fields
// are the reference's; the rest are extensions and are omitted when empty.
type StatusSnapshot struct {
	Interface         string                   `json:"interface,omitempty"`
	NodeIP            netip.Addr               `json:"node_ip,omitzero"`
	PublicKey         string                   `json:"public_key,omitempty"`
	OverlayCIDR       string                   `json:"overlay_cidr,omitempty"`
	SliceCIDR         string                   `json:"slice_cidr,omitempty"`
	PeerCount         uint32                   `json:"peer_count"`
	ServiceCount      uint32                   `json:"service_count"`
	Peers             []PeerStatus             `json:"peers,omitempty"`
	DedicatedServices []DedicatedServiceStatus `json:"dedicated_services,omitempty"`

	// Extensions.
	Version        string `json:"version,omitempty"`
	NodeID         uint64 `json:"node_id,omitempty"`
	Deployment     string `json:"deployment,omitempty"`
	WGPort         uint16 `json:"wg_port,omitempty"`
	WGBackend      string `json:"wg_backend,omitempty"`
	MTU            int    `json:"mtu,omitempty"`
	ExpectedPubkey string `json:"expected_public_key,omitempty"`
	PubkeyMismatch bool   `json:"public_key_mismatch,omitempty"`
	KeySource      string `json:"key_source,omitempty"`
	// NodeIPs, OverlayCIDRs and SliceCIDRs list every family of a
	// dual-stack cluster (node_ip, overlay_cidr and slice_cidr keep the
	// first family's for reference clients); omitted with one family.
	NodeIPs          []netip.Addr    `json:"node_ips,omitempty"`
	OverlayCIDRs     []string        `json:"overlay_cidrs,omitempty"`
	SliceCIDRs       []string        `json:"slice_cidrs,omitempty"`
	Services         []ServiceStatus `json:"services,omitempty"`
	SlicePool        *PoolStatus     `json:"slice_pool,omitempty"`
	Attachments      []AttachStatus  `json:"attachments,omitempty"`
	DNS              *DNSStatus      `json:"dns,omitempty"`
	NAT              *NATStatus      `json:"nat,omitempty"`
	Firewall         *FirewallStatus `json:"firewall,omitempty"`
	EventsDropped    uint64          `json:"events_dropped,omitempty"`
	LastReconcile    int64           `json:"last_reconcile_unix_secs,omitempty"`
	ReconcileChanges uint64          `json:"reconcile_changes,omitempty"`
	// PeersRead is when the peers' handshakes, byte counters and
	// endpoints were read from the global device (Unix milliseconds):
	// status answers from the last read while it is at most
	// Config.PeerStatsMaxAge old.
	PeersRead    int64            `json:"peers_read_unix_ms,omitempty"`
	Warnings     []string         `json:"warnings,omitempty"`
	Guests       []GuestStatus    `json:"guests,omitempty"`
	ServicePeers []ServicePeerSet `json:"service_peers,omitempty"`
	// NetnsAttachments are the attachments of netns handles (CNI), apart
	// from Attachments so that a client that does not know the platform
	// still reads the rest.
	NetnsAttachments []AttachStatus `json:"netns_attachments,omitempty"`
}

// PeerStatus is one peer of the global overlay.
type PeerStatus struct {
	PublicKey             string `json:"public_key"`
	Endpoint              string `json:"endpoint"`
	AllowedIPs            string `json:"allowed_ips"`
	LastHandshakeUnixSecs int64  `json:"last_handshake_unix_secs"`

	// Extensions.
	RxBytes                 uint64 `json:"rx_bytes,omitempty"`
	TxBytes                 uint64 `json:"tx_bytes,omitempty"`
	PersistentKeepaliveSecs uint64 `json:"persistent_keepalive_secs,omitempty"`
	// Healthy is a pointer so "unknown" (no monitor yet) stays omitted.
	Healthy *bool `json:"healthy,omitempty"`
	// EndpointLearned marks an endpoint WireGuard learned from the peer's
	// packets (roaming, NAT) rather than the one configured.
	EndpointLearned bool `json:"endpoint_learned,omitempty"`
	// Path is PathDirect or PathRelay (global peers with NAT traversal);
	// Relay names the TURN server a relayed path goes through.
	Path  string `json:"path,omitempty"`
	Relay string `json:"relay,omitempty"`
}

// Paths to a peer (PeerStatus.Path, NATEndpointChanged.Path).
const (
	PathDirect = "direct"
	PathRelay  = "relay"
)

// DedicatedServiceStatus is one service with its own WireGuard device.
type DedicatedServiceStatus struct {
	Service    string     `json:"service"`
	Interface  string     `json:"interface"`
	PublicKey  string     `json:"public_key"`
	ListenPort uint16     `json:"listen_port"`
	OverlayIP  netip.Addr `json:"overlay_ip"`
	Subnet     string     `json:"subnet"`
	PeerCount  uint32     `json:"peer_count"`
}

// ServiceStatus (extension) is one service overlay on this node.
type ServiceStatus struct {
	Service string     `json:"service"`
	Mode    string     `json:"mode"`
	Bridge  string     `json:"bridge,omitempty"`
	Subnet  string     `json:"subnet"`
	Gateway netip.Addr `json:"gateway,omitzero"`
	Used    uint64     `json:"used"`
	Free    uint64     `json:"free"`
	// Subnets (dual-stack only) are the service's subnet in each family,
	// the first family's first.
	Subnets []string `json:"subnets,omitempty"`
	// Ranges are the ranges the service grew by when Subnet filled up,
	// carved from the node slice (each with its first usable address as a
	// further gateway on the bridge); used and free count them all.
	Ranges []string `json:"ranges,omitempty"`
}

// PoolStatus (extension) is the use of an address pool.
type PoolStatus struct {
	CIDR string `json:"cidr"`
	Used uint64 `json:"used"`
	Free uint64 `json:"free"`
}

// AttachStatus (extension) is one attached container.
type AttachStatus struct {
	Handle   AttachHandle `json:"handle"`
	Service  string       `json:"service"`
	IP       netip.Addr   `json:"ip"`
	GlobalIP netip.Addr   `json:"global_ip,omitzero"`
	HostLink string       `json:"host_link,omitempty"`
	// IPs and GlobalIPs (netns attachments in a dual-stack cluster) are
	// the addresses in each family; ip and global_ip are the first's.
	IPs       []netip.Addr `json:"ips,omitempty"`
	GlobalIPs []netip.Addr `json:"global_ips,omitempty"`
}

// GuestStatus (extension) is one guest_managed attachment.
type GuestStatus struct {
	ID        string     `json:"id"`
	Service   string     `json:"service,omitempty"`
	IP        netip.Addr `json:"ip"`
	PublicKey string     `json:"public_key"`
}

// ServicePeerSet (extension) lists the peers of one dedicated overlay.
type ServicePeerSet struct {
	Service string       `json:"service"`
	Peers   []PeerStatus `json:"peers,omitempty"`
}

// DNSStatus (extension) describes the embedded DNS server.
type DNSStatus struct {
	Zone      string   `json:"zone"`
	Listeners []string `json:"listeners,omitempty"`
	Records   int      `json:"records"`
	Upstreams []string `json:"upstreams,omitempty"`
	// Delegated is true once the main daemon relies on our DNS server
	// (register_dns, or hello with the "dns" feature): we then also serve
	// the addresses its own DNS server would bind.
	Delegated bool `json:"delegated,omitempty"`
}

// NATStatus (extension) describes NAT traversal.
type NATStatus struct {
	Enabled         bool     `json:"enabled"`
	ReflexiveAddrs  []string `json:"reflexive_endpoints,omitempty"`
	Behaviour       string   `json:"behaviour,omitempty"`
	LastRefreshUnix int64    `json:"last_refresh_unix_secs,omitempty"`
	LastError       string   `json:"last_error,omitempty"`
	STUNServers     []string `json:"stun_servers,omitempty"`
	Masquerade      bool     `json:"masquerade"`
	// RelayAddrs are this node's relayed transport addresses on TURN
	// servers: candidates other nodes can always reach it at.
	RelayAddrs []string `json:"relay_endpoints,omitempty"`
	// TURNServers is the state of every configured TURN server (addresses
	// only, never credentials).
	TURNServers []TURNServerStatus `json:"turn_servers,omitempty"`
	// RefreshIntervalSecs is how often the reflexive address is refreshed
	// without a nat_tick.
	RefreshIntervalSecs int64 `json:"refresh_interval_secs,omitempty"`
}

// TURNServerStatus (extension) is one TURN server as the node sees it.
type TURNServerStatus struct {
	Address string `json:"address"`
	// State is "allocated" (the node's relay is on it), "standby" (not in
	// use) or "failed" (the last attempt failed; retried after a backoff).
	State     string `json:"state"`
	Relayed   string `json:"relayed,omitempty"`
	LastError string `json:"last_error,omitempty"`
	Failures  int    `json:"failures,omitempty"`
	// RetryUnix is when a failed server is tried again.
	RetryUnix int64 `json:"retry_unix_secs,omitempty"`
}

// FirewallStatus (extension) describes our nftables table.
type FirewallStatus struct {
	Table      string `json:"table"`
	Rules      int    `json:"rules"`
	LastError  string `json:"last_error,omitempty"`
	Masquerade bool   `json:"masquerade"`
}

// DNSRecords (extension) answers list_dns: the zone and every name in it
// (fully qualified, sorted) with its addresses.
type DNSRecords struct {
	Zone    string      `json:"zone"`
	Records []DNSRecord `json:"records"`
}

// DNSRecord is one name of the cluster zone.
type DNSRecord struct {
	Name string       `json:"name"`
	IPs  []netip.Addr `json:"ips"`
}

// BackupDone (extension) answers backup: where the copy was written and
// how many bytes it has.
type BackupDone struct {
	Path  string `json:"path"`
	Bytes int64  `json:"bytes"`
}

func (OK) Result() string             { return "ok" }
func (IP) Result() string             { return "ip" }
func (Attached) Result() string       { return "attached" }
func (GuestConfig) Result() string    { return "guest_config" }
func (BridgeName) Result() string     { return "bridge_name" }
func (StatusResult) Result() string   { return "status" }
func (ServiceOverlay) Result() string { return "service_overlay" }
func (Err) Result() string            { return "err" }
func (HelloResult) Result() string    { return "hello" }
func (DNSRecords) Result() string     { return "dns_records" }
func (BackupDone) Result() string     { return "backup" }

var responseTypes = map[string]func() Response{
	"ok":              func() Response { return &OK{} },
	"ip":              func() Response { return &IP{} },
	"attached":        func() Response { return &Attached{} },
	"guest_config":    func() Response { return &GuestConfig{} },
	"bridge_name":     func() Response { return &BridgeName{} },
	"status":          func() Response { return &StatusResult{} },
	"service_overlay": func() Response { return &ServiceOverlay{} },
	"err":             func() Response { return &Err{} },
	"hello":           func() Response { return &HelloResult{} },
	"dns_records":     func() Response { return &DNSRecords{} },
	"backup":          func() Response { return &BackupDone{} },
}

// Event is an unsolicited notification from overlayd (tag "event").
type Event interface {
	// Name is the variant's wire tag.
	Name() string
}

// PeerHealthChanged reports that a peer's handshake was seen or lost.
type PeerHealthChanged struct {
	Pubkey  string `json:"pubkey"`
	Healthy bool   `json:"healthy"`
}

// NATEndpointChanged reports a peer's new endpoint (learned by WireGuard or
// chosen among candidates).
type NATEndpointChanged struct {
	Pubkey   string `json:"pubkey"`
	Endpoint string `json:"endpoint"`

	// Extensions, omitted when empty (the reference's decoder ignores
	// them). For a peer: Path is how the node now reaches it (PathDirect
	// or PathRelay) and Relay the TURN server of a relayed path. For this
	// node itself (Pubkey is its own key): Candidate says which of its own
	// addresses changed, "relay" (a new TURN allocation) or "reflexive"
	// (STUN found a new public address); pass it on to the other nodes.
	Path      string `json:"path,omitempty"`
	Relay     string `json:"relay,omitempty"`
	Candidate string `json:"candidate,omitempty"`
}

func (PeerHealthChanged) Name() string  { return "peer_health_changed" }
func (NATEndpointChanged) Name() string { return "nat_endpoint_changed" }

var eventTypes = map[string]func() Event{
	"peer_health_changed":  func() Event { return &PeerHealthChanged{} },
	"nat_endpoint_changed": func() Event { return &NATEndpointChanged{} },
}
