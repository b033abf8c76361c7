package engine

import (
	"context"
	"net/netip"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
)

// Network is what the engine needs from the host's network stack: links,
// addresses and routes in the daemon's namespace, and veth pairs into
// container namespaces. linuxnet.Net implements it; tests use a fake.
type Network interface {
	EnsureBridge(linuxnet.BridgeSpec) error
	DeleteLink(name string) error
	LinkExists(name string) (bool, error)
	SetUp(name string) error
	SetMTU(name string, mtu int) error
	SetAlias(name, alias string) error
	EnsureAddrs(name string, want []netip.Prefix) error
	EnsureRoute(linuxnet.Route) error
	DeleteRoute(linuxnet.Route) error
	Routes(dev string) ([]linuxnet.Route, error)
	Links(prefix string) ([]linuxnet.LinkInfo, error)
	Attach(linuxnet.AttachSpec) error
	Detach(hostName string) error
}

// Processes identifies container processes, so a recycled PID is never
// taken for the container that was attached.
type Processes interface {
	// StartTime is field 22 of /proc/<pid>/stat; an error wrapping
	// fs.ErrNotExist means the process is gone.
	StartTime(pid int) (uint64, error)
	// NetnsInode is the inode of the process's network namespace.
	NetnsInode(pid int) (uint64, error)
}

// procfs is Processes on a real /proc.
type procfs struct{}

func (procfs) StartTime(pid int) (uint64, error)  { return linuxnet.ProcessStartTime(pid) }
func (procfs) NetnsInode(pid int) (uint64, error) { return linuxnet.NetnsInode(pid) }

// HostProcesses is the Processes of the machine the daemon runs on.
func HostProcesses() Processes { return procfs{} }

// linkAliasPrefix starts the label (IFLA_IFALIAS) of every link we create,
// so reconcile can tell our bridges, veths and devices from everything else
// on the host: a link without our label is never touched. The label also
// carries the node identity of the data directory, so two daemons sharing
// a network namespace never remove each other's links.
const linkAliasPrefix = "zlayer-overlayd:"

// aliasPrefix is our label's prefix. The node identity never changes (the
// store refuses to), so it is read once, and takes no lock: labels are made
// while state is being read.
func (e *Engine) aliasPrefix() string { return e.alias }

func aliasFor(identity string) string {
	if len(identity) > 12 {
		identity = identity[:12]
	}
	return linkAliasPrefix + identity + ":"
}

func (e *Engine) linkAlias(kind, key string) string { return e.aliasPrefix() + kind + ":" + key }

// HCN attaches Windows containers through the Host Compute Network service:
// one Internal network on the node slice, an endpoint and a network
// namespace per container. Only the Windows daemon sets it.
type HCN interface {
	// EnsureNetwork creates or adopts the Internal network of the node
	// slice.
	EnsureNetwork(ctx context.Context, n HCNNetwork) error
	// Attach creates the container's endpoint and namespace and returns
	// the namespace GUID (bare, lower case) the runtime puts into the
	// compute-system document.
	Attach(ctx context.Context, a HCNAttach) (namespaceGUID string, err error)
	// Detach removes the endpoint and namespace; an unknown GUID is fine.
	Detach(ctx context.Context, namespaceGUID string) error
	// DeleteNetwork removes the Internal network (teardown).
	DeleteNetwork(ctx context.Context, name string) error
}

// HCNNetwork is the node's Internal network.
type HCNNetwork struct {
	Name    string       // e.g. "<deployment>-overlay"
	Subnet  netip.Prefix // the node slice
	Gateway netip.Addr   // the node IP
}

// HCNAttach is one Windows container to attach.
type HCNAttach struct {
	Network     string
	ContainerID string
	IP          netip.Addr
	PrefixLen   int
	Gateway     netip.Addr
	Cluster     netip.Prefix // routed via the gateway
	DNSServer   netip.Addr
	DNSDomain   string
}

// Capabilities say what the platform's network stack can do; the zero
// value is Linux (everything). On macOS and Windows there are no bridges
// or veth pairs: shared service overlays only record their subnet, and
// linux_pid attaches answer a clear error.
type Capabilities struct {
	NoBridges bool
	// Platform names the OS in error messages.
	Platform string
}

// goBackground runs f in a goroutine Close waits for, and returns true;
// once Close has begun it runs nothing and returns false. Every goroutine
// of the engine starts here: a request still in flight when the daemon
// closes the engine (the server stops waiting for it after 10 s) must not
// start work that outlives Close, nor go up on e.bg while Close waits on
// it (a sync.WaitGroup forbids that).
func (e *Engine) goBackground(f func()) bool {
	e.bgMu.Lock()
	defer e.bgMu.Unlock()
	select {
	case <-e.bgCtx.Done():
		return false
	default:
	}
	e.bg.Add(1)
	go func() {
		defer e.bg.Done()
		f()
	}()
	return true
}

// at runs the test hook of a point (no-op outside tests).
func (e *Engine) at(point string) {
	if e.testHook != nil {
		e.testHook(point)
	}
}
