package nat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// DefaultPort is the STUN port (RFC 5389 §9), used when a server is given
// without one.
const DefaultPort = 3478

// resolver is the part of *net.Resolver ResolveServers needs; tests replace
// it.
type resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

var serverResolver resolver = net.DefaultResolver

// ResolveServers turns STUN server names into addresses. Each entry is
// "host:port", "host" (port 3478), an IP literal, or "[IPv6]:port"; a name
// that resolves to both families gives its IPv4 address, because IPv4 is
// where NATs are. Names resolve in parallel. The error joins one error per
// entry that failed (each names its entry); the addresses that did resolve
// are returned with it, in input order and without duplicates.
func ResolveServers(ctx context.Context, servers []string) ([]netip.AddrPort, error) {
	if len(servers) == 0 {
		return nil, errors.New("no STUN servers given")
	}
	addrs := make([]netip.AddrPort, len(servers))
	errs := make([]error, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		wg.Go(func() { addrs[i], errs[i] = resolveServer(ctx, "STUN", s) })
	}
	wg.Wait()
	var out []netip.AddrPort
	for i, a := range addrs {
		if errs[i] == nil && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out, errors.Join(errs...)
}

// resolveServer resolves one server entry; kind ("STUN", "TURN") names it
// in errors.
func resolveServer(ctx context.Context, kind, s string) (netip.AddrPort, error) {
	host, port, err := splitServer(strings.TrimSpace(s))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%s server %q: %w", kind, s, err)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return netip.AddrPort{}, fmt.Errorf("%s server %q: a zoned (link-local) address cannot be a %s server", kind, s, kind)
		}
		return netip.AddrPortFrom(ip.Unmap(), port), nil
	}
	ips, err := serverResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%s server %q: resolve %s: %w", kind, s, host, err)
	}
	if i := slices.IndexFunc(ips, func(a netip.Addr) bool { return a.Unmap().Is4() }); i >= 0 {
		return netip.AddrPortFrom(ips[i].Unmap(), port), nil
	}
	if len(ips) == 0 {
		return netip.AddrPort{}, fmt.Errorf("%s server %q: %s has no addresses", kind, s, host)
	}
	return netip.AddrPortFrom(ips[0], port), nil
}

// splitServer splits "host:port", "host", "[v6]:port", "[v6]" and bare
// IPv6 literals.
func splitServer(s string) (string, uint16, error) {
	if s == "" {
		return "", 0, errors.New("empty server name")
	}
	if ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err == nil {
		return ip.String(), DefaultPort, nil // bare or bracketed IP, no port
	}
	if !strings.Contains(s, ":") {
		return s, DefaultPort, nil
	}
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, fmt.Errorf("not host:port (%v)", err)
	}
	if host == "" {
		return "", 0, errors.New("missing host before the port")
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("port %q is not a number from 1 to 65535", p)
	}
	return host, uint16(port), nil
}
