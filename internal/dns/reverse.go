package dns

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// reverseZone is one reverse zone we are authoritative for. Reverse zones
// are cut at label boundaries (8 bits in in-addr.arpa, 4 bits in ip6.arpa),
// so a declared prefix that is not aligned becomes several zones that cover
// exactly the prefix: 10.1.0.0/20 is 0.1.10.in-addr.arpa … 15.1.10.in-addr.arpa.
type reverseZone struct {
	prefix netip.Prefix
	apex   string
}

// reverseZones expands the declared prefixes into label-aligned reverse
// zones, longest prefix first so lookups find the most specific zone.
func reverseZones(prefixes []netip.Prefix) ([]reverseZone, error) {
	var zones []reverseZone
	seen := map[netip.Prefix]bool{}
	for _, p := range prefixes {
		if !p.IsValid() {
			return nil, fmt.Errorf("dns: reverse prefix %v is not a valid prefix", p)
		}
		p = p.Masked()
		unit := 8
		if p.Addr().Is6() {
			unit = 4
		}
		aligned := (p.Bits() + unit - 1) / unit * unit
		count := 1 << (aligned - p.Bits()) // at most 128 (IPv4) or 8 (IPv6)
		sub := netip.PrefixFrom(p.Addr(), aligned)
		for range count {
			if !seen[sub] {
				seen[sub] = true
				zones = append(zones, reverseZone{prefix: sub, apex: reverseName(sub.Addr(), aligned)})
			}
			sub = nextPrefix(sub)
		}
	}
	slices.SortStableFunc(zones, func(a, b reverseZone) int { return b.prefix.Bits() - a.prefix.Bits() })
	return zones, nil
}

// nextPrefix returns the prefix of the same length that follows p.
func nextPrefix(p netip.Prefix) netip.Prefix {
	b := p.Addr().AsSlice()
	bit := p.Bits() - 1
	for bit >= 0 {
		mask := byte(1) << (7 - bit%8)
		b[bit/8] ^= mask
		if b[bit/8]&mask != 0 {
			break // no carry
		}
		bit--
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.PrefixFrom(a, p.Bits())
}

// zoneFor returns the most specific declared reverse zone holding addr.
func zoneFor(zones []reverseZone, addr netip.Addr) (reverseZone, bool) {
	for _, z := range zones {
		if z.prefix.Contains(addr) {
			return z, true
		}
	}
	return reverseZone{}, false
}

// reverseName is the in-addr.arpa / ip6.arpa name of the first bits of
// addr; bits must be a multiple of 8 (IPv4) or 4 (IPv6).
func reverseName(addr netip.Addr, bits int) string {
	const hex = "0123456789abcdef"
	var sb strings.Builder
	if addr.Is4() {
		a := addr.As4()
		for i := bits/8 - 1; i >= 0; i-- {
			fmt.Fprintf(&sb, "%d.", a[i])
		}
		sb.WriteString("in-addr.arpa.")
		return sb.String()
	}
	a := addr.As16()
	for i := bits/4 - 1; i >= 0; i-- {
		nib := a[i/2] >> 4
		if i%2 == 1 {
			nib = a[i/2] & 0x0f
		}
		sb.WriteByte(hex[nib])
		sb.WriteByte('.')
	}
	sb.WriteString("ip6.arpa.")
	return sb.String()
}

// ptrName is the full reverse name of addr.
func ptrName(addr netip.Addr) string {
	return reverseName(addr, addr.BitLen())
}

// isReverseName reports whether a lower-case FQDN is inside in-addr.arpa or ip6.arpa.
func isReverseName(name string) bool {
	return strings.HasSuffix(name, ".in-addr.arpa.") || strings.HasSuffix(name, ".ip6.arpa.") ||
		name == "in-addr.arpa." || name == "ip6.arpa."
}
