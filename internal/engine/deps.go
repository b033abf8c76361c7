package engine

import (
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

func (e *Engine) aliasPrefix() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	id := e.st.node.Identity
	if len(id) > 12 {
		id = id[:12]
	}
	return linkAliasPrefix + id + ":"
}

func (e *Engine) linkAlias(kind, key string) string { return e.aliasPrefix() + kind + ":" + key }
