package dns

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
)

const (
	// DefaultResolvConf is the host's resolver configuration.
	DefaultResolvConf = "/etc/resolv.conf"
	// DefaultResolvedConf is where systemd-resolved writes the real
	// upstream servers when /etc/resolv.conf points at its stub.
	DefaultResolvedConf = "/run/systemd/resolve/resolv.conf"
)

// ErrNoUpstreams is returned (wrapped) when the resolver configuration
// names no server we can forward to.
var ErrNoUpstreams = errors.New("no usable nameserver")

// systemd-resolved's stub listeners.
var resolvedStubs = []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 53}), netip.AddrFrom4([4]byte{127, 0, 0, 54})}

// UpstreamsFromResolvConf returns the host's real upstream resolvers (port
// 53) from the nameserver lines of path. Loopback servers are skipped: a
// local stub would send our queries back to us or to a resolver that
// itself depends on the host's configuration. When path is
// systemd-resolved's stub configuration, the servers come from
// resolvedPath instead. Empty paths mean DefaultResolvConf and
// DefaultResolvedConf.
func UpstreamsFromResolvConf(path, resolvedPath string) ([]netip.AddrPort, error) {
	if path == "" {
		path = DefaultResolvConf
	}
	if resolvedPath == "" {
		resolvedPath = DefaultResolvedConf
	}
	servers, err := readNameservers(path)
	if err != nil {
		return nil, err
	}
	if slices.ContainsFunc(servers, func(a netip.Addr) bool { return slices.Contains(resolvedStubs, a) }) {
		real, err := readNameservers(resolvedPath)
		if err != nil {
			return nil, fmt.Errorf("dns: %s points at the systemd-resolved stub, and its upstream list is unreadable: %w", path, err)
		}
		ups := usable(real)
		if len(ups) == 0 {
			return nil, fmt.Errorf("dns: %s points at the systemd-resolved stub, and %s lists no nameserver other than loopback: %w", path, resolvedPath, ErrNoUpstreams)
		}
		return ups, nil
	}
	ups := usable(servers)
	if len(ups) == 0 {
		return nil, fmt.Errorf("dns: %s lists no nameserver other than loopback; pass upstreams explicitly: %w", path, ErrNoUpstreams)
	}
	return ups, nil
}

// usable keeps non-loopback, specified servers once each, in order.
func usable(servers []netip.Addr) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range servers {
		ap := netip.AddrPortFrom(a, 53)
		if a.IsLoopback() || a.IsUnspecified() || slices.Contains(out, ap) {
			continue
		}
		out = append(out, ap)
	}
	return out
}

// readNameservers parses the nameserver lines of a resolv.conf(5) file.
// Lines that do not parse are skipped, as the C library does.
func readNameservers(path string) ([]netip.Addr, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("dns: reading resolver configuration: %w", err)
	}
	var out []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(fields[1])
		if err != nil {
			continue
		}
		out = append(out, a.Unmap())
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("dns: reading %s: %w", path, err)
	}
	return out, nil
}
