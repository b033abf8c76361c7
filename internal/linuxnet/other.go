//go:build !linux

package linuxnet

import (
	"fmt"
	"net/netip"
	"runtime"
)

var errPlatform = fmt.Errorf("linuxnet: bridges, veth pairs and network namespaces need Linux; this is %s/%s", runtime.GOOS, runtime.GOARCH)

// Net is unusable on this platform; New always fails.
type Net struct{}

func New() (*Net, error)                                       { return nil, errPlatform }
func (n *Net) Close()                                          {}
func (n *Net) EnsureBridge(BridgeSpec) error                   { return errPlatform }
func (n *Net) DeleteLink(string) error                         { return errPlatform }
func (n *Net) LinkExists(string) (bool, error)                 { return false, errPlatform }
func (n *Net) SetUp(string) error                              { return errPlatform }
func (n *Net) SetMTU(string, int) error                        { return errPlatform }
func (n *Net) SetAlias(string, string) error                   { return errPlatform }
func (n *Net) EnsureAddrs(string, []netip.Prefix) error        { return errPlatform }
func (n *Net) EnsureRoute(Route) error                         { return errPlatform }
func (n *Net) DeleteRoute(Route) error                         { return errPlatform }
func (n *Net) Routes(string) ([]Route, error)                  { return nil, errPlatform }
func (n *Net) Links(string) ([]LinkInfo, error)                { return nil, errPlatform }
func (n *Net) Attach(AttachSpec) error                         { return errPlatform }
func (n *Net) Detach(string) error                             { return errPlatform }
func ContainerHasLink(int, string, netip.Prefix) (bool, error) { return false, errPlatform }
func ProcessStartTime(int) (uint64, error)                     { return 0, errPlatform }
func NetnsInode(int) (uint64, error)                           { return 0, errPlatform }
func SetSysctl(string, string) error                           { return errPlatform }
func NetnsFileInode(string) (uint64, error)                    { return 0, errPlatform }
func InspectNetns(string, string) (NetnsLink, bool, error)     { return NetnsLink{}, false, errPlatform }

// Forwarding is unusable on this platform.
type Forwarding struct{}

func NewForwarding(string) *Forwarding { return &Forwarding{} }
func (*Forwarding) Sync(func() (bool, bool)) ([]string, []string, error) {
	return nil, nil, errPlatform
}
