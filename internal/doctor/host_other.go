//go:build !linux

package doctor

import (
	"context"
	"net/netip"
)

// NewHost on platforms the doctor cannot inspect: every host check is
// skipped and says so; the daemon and peer checks still run.
func NewHost() Host { return otherHost{} }

type otherHost struct{}

func (otherHost) Sysctl(string) (string, error)           { return "", ErrUnsupported }
func (otherHost) Module(string) (bool, bool, error)       { return false, false, ErrUnsupported }
func (otherHost) DeviceNode(string) bool                  { return false }
func (otherHost) LinkMTU(string) (int, error)             { return 0, ErrUnsupported }
func (otherHost) RouteTo(netip.Addr) (string, int, error) { return "", 0, ErrUnsupported }
func (otherHost) DefaultRouteDevice(bool) (string, error) { return "", ErrUnsupported }
func (otherHost) NFTables() ([]Chain, error)              { return nil, ErrUnsupported }
func (otherHost) LegacyIPTables(bool) ([]Chain, error)    { return nil, ErrUnsupported }
func (otherHost) QueryDNS(context.Context, netip.AddrPort, string) (string, error) {
	return "", ErrUnsupported
}
