// Package doctor diagnoses a node's overlay the way an operator would at
// 3 a.m.: is the daemon up and restored, does the kernel have what the
// overlay needs, is forwarding on, does a firewall outside our table drop
// our bridges' traffic, do MTUs fit, does DNS answer on each bridge, do
// peers handshake. Each check is a function returning a Result (status,
// what was found, what to do), so tests call them one by one with a fake
// Host; Run runs them all for `overlayctl doctor`.
//
// Every check only reads: sysctls, links, routes, netfilter dumps, and
// one DNS query per bridge gateway. Nothing is ever changed.
package doctor

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Status is a check's verdict.
type Status string

const (
	// OK: nothing wrong.
	OK Status = "ok"
	// Warn: works, but something is worth knowing or will break later.
	Warn Status = "warn"
	// Fail: something is broken now; the doctor exits non-zero.
	Fail Status = "fail"
	// Skip: the check could not run here (another platform, no daemon, a
	// subsystem that is off).
	Skip Status = "skip"
)

// Result is one check's finding.
type Result struct {
	Check   string `json:"check"`
	Status  Status `json:"status"`
	Message string `json:"message"`
	// Fix says what to do, for Warn and Fail.
	Fix string `json:"fix,omitempty"`
}

// Report is every check's result, in the order they ran.
type Report struct {
	Results []Result `json:"results"`
}

// Failed reports whether any check failed.
func (r Report) Failed() bool {
	for _, x := range r.Results {
		if x.Status == Fail {
			return true
		}
	}
	return false
}

// ErrUnsupported is what a Host answers for what its platform cannot
// tell; the checks that need it are skipped.
var ErrUnsupported = errors.New("not supported on this platform")

// Host is what the checks read from the node besides the daemon. NewHost
// reads the real one (Linux); tests supply fakes.
type Host interface {
	// Sysctl reads a sysctl by its /proc/sys path, e.g.
	// "net/ipv4/ip_forward".
	Sysctl(name string) (string, error)
	// Module reports whether a kernel module is loaded (or built in), and
	// whether it could be loaded.
	Module(name string) (loaded, available bool, err error)
	// DeviceNode reports whether a device node such as /dev/net/tun exists.
	DeviceNode(path string) bool
	// LinkMTU is the MTU of a network interface; an error when it does not
	// exist.
	LinkMTU(name string) (int, error)
	// RouteTo is the interface and MTU (the route's, else the link's) that
	// packets to dst leave through.
	RouteTo(dst netip.Addr) (dev string, mtu int, err error)
	// DefaultRouteDevice is the interface of the IPv4 (v6: IPv6) default
	// route, "" when there is none.
	DefaultRouteDevice(v6 bool) (string, error)
	// NFTables lists every chain of every nftables table (read-only).
	NFTables() ([]Chain, error)
	// LegacyIPTables lists the chains of the x_tables (iptables-legacy)
	// filter table, which nftables dumps cannot see; none when that table
	// is not loaded.
	LegacyIPTables(v6 bool) ([]Chain, error)
	// QueryDNS asks server for the SOA of zone and returns the rcode.
	QueryDNS(ctx context.Context, server netip.AddrPort, zone string) (string, error)
}

// Inputs are what Run diagnoses: the daemon's status (or why it could not
// be read) and the host.
type Inputs struct {
	Status    protocol.StatusSnapshot
	StatusErr error
	// Socket is where the daemon was looked for, for messages.
	Socket string
	Host   Host
	Now    time.Time
}

// Run runs every check.
func Run(ctx context.Context, in Inputs) Report {
	if in.Now.IsZero() {
		in.Now = time.Now()
	}
	var r Report
	add := func(res ...Result) { r.Results = append(r.Results, res...) }
	add(Daemon(in.Status, in.StatusErr, in.Socket, in.Now))
	up := in.StatusErr == nil
	s := in.Status
	add(WireGuard(in.Host, s, up))
	add(Bridges(in.Host, s, up))
	if !up {
		for _, name := range []string{"nftables", "forwarding", "rp_filter", "firewall", "mtu", "dns", "peers"} {
			add(Result{Check: name, Status: Skip, Message: "needs the daemon's status"})
		}
		return r
	}
	add(NFTables(in.Host, s))
	add(Forwarding(in.Host, s))
	add(RPFilter(in.Host, s))
	add(ForwardFirewall(in.Host, s))
	add(MTU(in.Host, s))
	add(DNS(ctx, in.Host, s))
	add(Peers(s, in.Now))
	return r
}
