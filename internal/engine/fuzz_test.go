package engine

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// Fuzz targets for the parsers that stand between a request's strings and
// the kernel (interface names, routes, WireGuard peers). Each checks that
// what is accepted is exactly what the documentation says is accepted and
// comes out canonical, and that every refusal is a readable sentence that
// names the offending field. Seed corpora are in testdata/fuzz.

func checkMessage(t *testing.T, err error, mention string) {
	t.Helper()
	msg := err.Error()
	if !utf8.ValidString(msg) {
		t.Fatalf("error message is not UTF-8: %q", msg)
	}
	if len(msg) > 512 { // two quoted values of 40 bytes, every byte escaped, and the sentence
		t.Fatalf("error message of %d bytes echoes the input: %.120q…", len(msg), msg)
	}
	if mention != "" && !strings.Contains(msg, mention) {
		t.Fatalf("error %q does not name %q", msg, mention)
	}
}

func FuzzValidName(f *testing.F) {
	for _, s := range []string{"web", "a", "my-svc_1.v2", "", ".", "..", "-x", ".x", "a/b", "../etc", "a b", "a\x00b", "tab\t", "ünïcode", strings.Repeat("a", 63), strings.Repeat("a", 64), strings.Repeat("é", 40)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := validName("service", s)
		if err != nil {
			checkMessage(t, err, "service")
			return
		}
		if len(s) == 0 || len(s) > 63 || s == "." || s == ".." || s[0] == '-' || s[0] == '.' {
			t.Fatalf("validName accepted %q", s)
		}
		for i := 0; i < len(s); i++ {
			c := s[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
				t.Fatalf("validName accepted %q with byte %q", s, c)
			}
		}
		// Every accepted name makes usable, distinct interface names.
		for _, suffix := range []string{"b", "d", "g"} {
			n := ifName(suffix, "zltr", s)
			if len(n) > maxIfName || !validIfName(n) || !strings.HasPrefix(n, "zl-") {
				t.Fatalf("service %q gives interface name %q", s, n)
			}
		}
	})
}

func FuzzParseCIDR(f *testing.F) {
	for _, s := range []string{"10.200.1.0/24", " 10.200.1.7/24 ", "fd00::/64", "10.0.0.0/33", "10.0.0.0", "1.2.3/8", "::ffff:10.0.0.0/104", "fe80::1%eth0/64", "0.0.0.0/0", "", "/", "10.0.0.0/-1", "10.0.0.0/08"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseCIDR(s)
		if err != nil {
			checkMessage(t, err, "CIDR")
			return
		}
		p, err := netip.ParsePrefix(c)
		if err != nil || p != p.Masked() || p.String() != c {
			t.Fatalf("parseCIDR(%q) = %q, which is not a canonical prefix (%v)", s, c, err)
		}
		if again, err := parseCIDR(c); err != nil || again != c {
			t.Fatalf("parseCIDR is not idempotent on %q: %q, %v", c, again, err)
		}
	})
}

func FuzzParseAllowedIPs(f *testing.F) {
	for _, s := range []string{"", "10.200.1.0/24", "10.200.1.0/24,10.201.0.16/28", " 10.0.0.1/32 , ,fd00::/64,", "10.0.0.0/24,10.0.0.7/24", "10.0.0.0/24;10.1.0.0/24", "10.0.0.0", "0.0.0.0/0,::/0", ",,,", "fe80::1%lo/64"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out, err := parseAllowedIPs(s)
		if err != nil {
			checkMessage(t, err, "allowed IP")
			return
		}
		seen := map[string]bool{}
		for _, c := range out {
			p, err := netip.ParsePrefix(c)
			if err != nil || p != p.Masked() || p.String() != c || p.Addr().Zone() != "" {
				t.Fatalf("parseAllowedIPs(%q) gave %q, which is not a canonical prefix", s, c)
			}
			if seen[c] {
				t.Fatalf("parseAllowedIPs(%q) gave %q twice", s, c)
			}
			seen[c] = true
		}
		again, err := parseAllowedIPs(strings.Join(out, ","))
		if err != nil || !slices.Equal(again, out) {
			t.Fatalf("parseAllowedIPs is not idempotent on %q: %v then %v (%v)", s, out, again, err)
		}
	})
}

func FuzzSplitEndpoint(f *testing.F) {
	for _, s := range []string{"192.0.2.10:51820", "[fd00::1]:51820", "node-1.example.com:51820", "host:0", "host:65536", "host:-1", "host", ":51820", "[::1]", "a b:1", "exa_mple.com:1", "1.2.3.4:51820:1", "[fe80::1%eth0]:1", "-bad.example:1", strings.Repeat("a", 64) + ".com:1", "host:0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ep string) {
		host, port, err := splitEndpoint(ep)
		if err != nil {
			checkMessage(t, err, "endpoint")
			return
		}
		if host == "" || port == 0 {
			t.Fatalf("splitEndpoint(%q) = %q, %d", ep, host, port)
		}
		_, addrErr := netip.ParseAddr(host)
		if addrErr != nil && !validHostname(host) {
			t.Fatalf("splitEndpoint(%q) accepted host %q, neither an address nor a host name", ep, host)
		}
		joined := net.JoinHostPort(host, strconv.Itoa(int(port)))
		h2, p2, err := splitEndpoint(joined)
		if err != nil || h2 != host || p2 != port {
			t.Fatalf("splitEndpoint is not stable: %q -> %q:%d -> %q -> %q:%d (%v)", ep, host, port, joined, h2, p2, err)
		}
		if addrErr == nil {
			// An address literal never touches the resolver: with a dead
			// context, resolving it must still succeed.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			ap, err := resolveEndpoint(ctx, nil, ep)
			if err != nil || ap.Port() != port {
				t.Fatalf("resolveEndpoint(%q) of an address literal: %v, %v", ep, ap, err)
			}
		}
	})
}
