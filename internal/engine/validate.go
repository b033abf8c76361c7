package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/ipam"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// validName checks a deployment or service name. Names end up in interface
// names, store keys and log lines, so anything that could traverse paths,
// break a key, or hide in a log is refused with the reason.
func validName(field, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is empty", field)
	case len(s) > 63:
		return fmt.Errorf("%s %q is %d bytes; at most 63 are allowed", field, truncate(s), len(s))
	case s == "." || s == "..":
		return fmt.Errorf("%s %q is not a name", field, s)
	case s[0] == '-' || s[0] == '.':
		return fmt.Errorf("%s %q must start with a letter, digit or '_'", field, s)
	}
	for _, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("%s %q contains %q; use letters, digits, '-', '_' and '.'", field, truncate(s), r)
		}
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// reason is what a parser's error says is wrong, without the input: the
// errors of net and net/netip quote their whole input (and parts of it
// again), and a request field can be megabytes long. Our messages quote
// the input themselves, cut short, so a refusal stays a sentence in the
// log and in the err answer.
func reason(err error) string {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return truncate(ae.Err)
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, "): "); i >= 0 {
		msg = msg[i+3:]
	}
	return strings.ToValidUTF8(truncate(msg), "\uFFFD")
}

// parseCIDRField parses a CIDR field of a request; errors name the field.
func parseCIDRField(field, s string) (netip.Prefix, error) {
	p, err := ipam.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s: invalid CIDR %q: %s", field, truncate(s), reason(err))
	}
	return p, nil
}

// parseAllowedIPs splits the comma-separated allowed_ips of a peer into a
// set of canonical CIDRs (host bits cleared, as WireGuard stores them).
func parseAllowedIPs(s string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		p, err := netip.ParsePrefix(part)
		if err != nil {
			return nil, fmt.Errorf("allowed IP %q is not a CIDR such as 10.200.1.0/24: %s", truncate(part), reason(err))
		}
		if p.Addr().Zone() != "" {
			return nil, fmt.Errorf("allowed IP %q has a zone; zones are not routable", truncate(part))
		}
		c := p.Masked().String()
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out, nil
}

// parseCIDR parses one CIDR of add/remove_allowed_ip into canonical form.
func parseCIDR(s string) (string, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return "", fmt.Errorf("%q is not a CIDR such as 10.200.1.0/24: %s", truncate(s), reason(err))
	}
	return p.Masked().String(), nil
}

// splitEndpoint checks "host:port" (host an address or a DNS name, IPv6 in
// brackets) without resolving it.
func splitEndpoint(ep string) (host string, port uint16, err error) {
	h, p, err := net.SplitHostPort(ep)
	if err != nil {
		return "", 0, fmt.Errorf("endpoint %q is not host:port (IPv6 as [addr]:port): %s", truncate(ep), reason(err))
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("endpoint %q: port %q is not 1-65535", truncate(ep), truncate(p))
	}
	if h == "" {
		return "", 0, fmt.Errorf("endpoint %q has no host", truncate(ep))
	}
	if _, err := netip.ParseAddr(h); err != nil && !validHostname(h) {
		return "", 0, fmt.Errorf("endpoint %q: %q is neither an IP address nor a host name", truncate(ep), truncate(h))
	}
	return h, uint16(n), nil
}

func validHostname(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// Resolver looks host names up: net.DefaultResolver, or a fake in tests.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// resolveTimeout bounds one name's lookup: the system resolver's own
// default (resolv.conf's timeout 5, attempts 2, per server) can take
// longer than a request or a pass should wait for one peer.
const resolveTimeout = 5 * time.Second

// resolveEndpoint turns "host:port" into an address, resolving host names
// with r and a bounded wait. An address literal never touches r.
func resolveEndpoint(ctx context.Context, r Resolver, ep string) (netip.AddrPort, error) {
	host, port, err := splitEndpoint(ep)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(a.Unmap(), port), nil
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return netip.AddrPort{}, fmt.Errorf("endpoint %q: host %s does not resolve", truncate(ep), host)
		}
		return netip.AddrPort{}, fmt.Errorf("endpoint %q: cannot resolve %s: %v", truncate(ep), host, err)
	}
	if len(addrs) == 0 {
		return netip.AddrPort{}, fmt.Errorf("endpoint %q: host %s has no addresses", truncate(ep), host)
	}
	// Prefer IPv4: the underlay of most clusters is IPv4 and a node
	// without IPv6 connectivity would never complete a handshake.
	best := addrs[0]
	for _, a := range addrs {
		if a.Unmap().Is4() {
			best = a
			break
		}
	}
	return netip.AddrPortFrom(best.Unmap(), port), nil
}

// errUnprefixed is an error whose message must reach the client exactly,
// without the op prefix: the reference's tests pin some messages.
type errUnprefixed struct{ msg string }

func (e errUnprefixed) Error() string { return e.msg }

func errf(format string, args ...any) protocol.Err {
	return protocol.Err{Message: fmt.Sprintf(format, args...)}
}
