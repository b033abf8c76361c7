package dns

import (
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// The fast path must take the queries resolvers send most, or the
// differential fuzz targets would prove nothing about it; and it must
// leave alone what only the full path answers right.
func TestFastPathTakesCommonQueries(t *testing.T) {
	s := newTestServer(t, Config{ReversePrefixes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}})
	mustRegister(t, s, "web", "10.1.0.5", "10.1.0.6")
	mustRegister(t, s, "v6", "fd00::5")
	mustRegister(t, s, "db.backend", "10.1.0.9")
	var many []netip.Addr // 30 A records: about 950 bytes
	for i := range 30 {
		many = append(many, netip.AddrFrom4([4]byte{10, 1, 3, byte(i + 1)}))
	}
	if err := s.Set("big", many...); err != nil {
		t.Fatal(err)
	}
	withEDNS := func(opts ...dns.EDNS0) func(*dns.Msg) {
		return func(m *dns.Msg) {
			m.SetEdns0(1232, true)
			m.IsEdns0().Option = opts
		}
	}
	cookie := &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}
	subnet := &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(192, 0, 2, 0).To4()}

	for _, tc := range []struct {
		what  string
		name  string
		qtype uint16
		edit  func(*dns.Msg)
		fast  bool
		rcode int
	}{
		{"A of a name", "web.prod.local.", dns.TypeA, nil, true, dns.RcodeSuccess},
		{"A, mixed case", "WEB.Prod.LOCAL.", dns.TypeA, nil, true, dns.RcodeSuccess},
		{"AAAA of a name with only A (NODATA)", "web.prod.local.", dns.TypeAAAA, nil, true, dns.RcodeSuccess},
		{"AAAA", "v6.prod.local.", dns.TypeAAAA, nil, true, dns.RcodeSuccess},
		{"HTTPS (NODATA)", "web.prod.local.", dns.TypeHTTPS, nil, true, dns.RcodeSuccess},
		{"empty non-terminal (NODATA)", "backend.prod.local.", dns.TypeA, nil, true, dns.RcodeSuccess},
		{"PTR", "5.0.1.10.in-addr.arpa.", dns.TypePTR, nil, true, dns.RcodeSuccess},
		{"NXDOMAIN in the zone", "missing.prod.local.", dns.TypeA, nil, true, dns.RcodeNameError},
		{"NXDOMAIN in a reverse zone", "7.7.1.10.in-addr.arpa.", dns.TypePTR, nil, true, dns.RcodeNameError},
		{"EDNS with DO", "web.prod.local.", dns.TypeA, withEDNS(), true, dns.RcodeSuccess},
		{"EDNS with a cookie", "web.prod.local.", dns.TypeA, withEDNS(cookie), true, dns.RcodeSuccess},
		{"big answer, client takes 1232 bytes", "big.prod.local.", dns.TypeA, withEDNS(), true, dns.RcodeSuccess},

		{"big answer that must be truncated", "big.prod.local.", dns.TypeA, nil, false, 0},
		{"apex SOA", "prod.local.", dns.TypeSOA, nil, false, 0},
		{"apex NS (glue)", "prod.local.", dns.TypeNS, nil, false, 0},
		{"ANY", "web.prod.local.", dns.TypeANY, nil, false, 0},
		{"a name to forward", "www.example.org.", dns.TypeA, nil, false, 0},
		{"a reverse name outside our zones", "1.2.0.192.in-addr.arpa.", dns.TypePTR, nil, false, 0},
		{"CHAOS class", "web.prod.local.", dns.TypeA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }, false, 0},
		{"client subnet option", "web.prod.local.", dns.TypeA, withEDNS(subnet), false, 0},
		{"escaped dot in a label", `a\.b.prod.local.`, dns.TypeA, nil, false, 0},
		{"a response", "web.prod.local.", dns.TypeA, func(m *dns.Msg) { m.Response = true }, false, 0},
		{"NOTIFY", "web.prod.local.", dns.TypeA, func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }, false, 0},
	} {
		req := newQuery(tc.name, tc.qtype)
		if tc.edit != nil {
			tc.edit(req)
		}
		pkt, err := req.Pack()
		if err != nil {
			t.Fatal(err)
		}
		out, ok := s.fastAnswer(pkt, loopback4, make([]byte, 0, udpOutSize))
		if ok != tc.fast {
			t.Errorf("%s: fast path took it = %v, want %v", tc.what, ok, tc.fast)
			continue
		}
		if !ok {
			continue
		}
		m := new(dns.Msg)
		if err := m.Unpack(out); err != nil {
			t.Fatalf("%s: fast answer does not parse: %v", tc.what, err)
		}
		if m.Id != req.Id || m.Rcode != tc.rcode || !m.Authoritative || !m.RecursionAvailable {
			t.Errorf("%s: id %d rcode %s aa=%v ra=%v; want id %d, %s, aa, ra (loopback may recurse)", tc.what,
				m.Id, dns.RcodeToString[m.Rcode], m.Authoritative, m.RecursionAvailable, req.Id, dns.RcodeToString[tc.rcode])
		}
	}
}

// A pointer in the question (legal only in answers) and a name that
// would be 255 octets or more go to the full path, which refuses them.
func TestFastPathLeavesMalformedNames(t *testing.T) {
	s := newTestServer(t, Config{})
	pointer := []byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1}
	long := []byte{0, 2, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	for range 4 {
		long = append(long, 63)
		for range 63 {
			long = append(long, 'a')
		}
	}
	long = append(long, 0, 0, 1, 0, 1)
	for what, pkt := range map[string][]byte{"pointer": pointer, "256-octet name": long} {
		if _, ok := s.fastAnswer(pkt, loopback4, make([]byte, 0, udpOutSize)); ok {
			t.Errorf("%s: the fast path answered", what)
		}
	}
}

// Queries answered on the fast path count like any other.
func TestFastPathCounts(t *testing.T) {
	s := newTestServer(t, Config{})
	mustRegister(t, s, "web", "10.1.0.5")
	for _, name := range []string{"web.prod.local.", "web.prod.local.", "missing.prod.local."} {
		pkt, _ := newQuery(name, dns.TypeA).Pack()
		if _, ok := s.fastAnswer(pkt, loopback4, make([]byte, 0, udpOutSize)); !ok {
			t.Fatalf("%s: not answered on the fast path", name)
		}
	}
	st := s.Stats()
	if st.Queries != 3 || st.ZoneAnswers != 3 || st.Responses["NOERROR"] != 2 || st.Responses["NXDOMAIN"] != 1 {
		t.Fatalf("Stats = %+v; want 3 queries, 3 zone answers, 2 NOERROR, 1 NXDOMAIN", st)
	}
}
