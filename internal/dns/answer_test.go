package dns

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestZoneAnswersAAndAAAA(t *testing.T) {
	s := newTestServer(t, Config{})
	mustRegister(t, s, "web", "10.1.0.5", "fd00::5")

	a := ask(t, s, "web.prod.local.", dns.TypeA)
	if a.Rcode != dns.RcodeSuccess || !a.Authoritative {
		t.Fatalf("A: rcode %s aa=%v, want NOERROR with AA", dns.RcodeToString[a.Rcode], a.Authoritative)
	}
	if got := answerAddrs(a); !slices.Equal(got, []string{"10.1.0.5"}) {
		t.Fatalf("A answer = %v", got)
	}
	if ttl := a.Answer[0].Header().Ttl; ttl != DefaultTTL {
		t.Fatalf("TTL = %d, want the default %d", ttl, DefaultTTL)
	}
	aaaa := ask(t, s, "web.prod.local.", dns.TypeAAAA)
	if got := answerAddrs(aaaa); !slices.Equal(got, []string{"fd00::5"}) {
		t.Fatalf("AAAA answer = %v", got)
	}
	anyq := ask(t, s, "web.prod.local.", dns.TypeANY)
	if len(anyq.Answer) != 2 {
		t.Fatalf("ANY answer = %v, want the A and the AAAA", anyq.Answer)
	}
}

func TestNamesAreCaseInsensitiveAndQuestionEchoed(t *testing.T) {
	s := newTestServer(t, Config{Zone: "Prod.Local."})
	mustRegister(t, s, "Web.API", "10.1.0.5")
	m := ask(t, s, "wEb.aPi.PROD.local.", dns.TypeA)
	if got := answerAddrs(m); !slices.Equal(got, []string{"10.1.0.5"}) {
		t.Fatalf("mixed-case query answered %v", got)
	}
	if m.Question[0].Name != "wEb.aPi.PROD.local." {
		t.Fatalf("question echoed as %q; resolvers using 0x20 need their spelling back", m.Question[0].Name)
	}
	if s.Zone() != "prod.local." {
		t.Fatalf("Zone() = %q", s.Zone())
	}
	if got := s.Records(); !slices.Equal(got["web.api"], []netip.Addr{netip.MustParseAddr("10.1.0.5")}) {
		t.Fatalf("Records() = %v, want the lower-case relative name", got)
	}
}

func TestNXDomainAndNoDataCarrySOA(t *testing.T) {
	s := newTestServer(t, Config{TTL: 7})
	mustRegister(t, s, "v6only", "fd00::1")
	mustRegister(t, s, "db.backend", "10.1.0.9")

	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode int
	}{
		{"v6only.prod.local.", dns.TypeA, dns.RcodeSuccess},    // NODATA
		{"v6only.prod.local.", dns.TypeTXT, dns.RcodeSuccess},  // NODATA
		{"backend.prod.local.", dns.TypeA, dns.RcodeSuccess},   // empty non-terminal: NODATA (RFC 8020)
		{"missing.prod.local.", dns.TypeA, dns.RcodeNameError}, // NXDOMAIN
		{"x.db.backend.prod.local.", dns.TypeA, dns.RcodeNameError},
		{"prod.local.", dns.TypeA, dns.RcodeSuccess}, // apex has no A
	} {
		m := ask(t, s, tc.name, tc.qtype)
		if m.Rcode != tc.rcode || len(m.Answer) != 0 || !m.Authoritative {
			t.Errorf("%s %s: rcode %s, %d answers, aa=%v; want %s, none, aa", tc.name, dns.TypeToString[tc.qtype],
				dns.RcodeToString[m.Rcode], len(m.Answer), m.Authoritative, dns.RcodeToString[tc.rcode])
			continue
		}
		soa := soaOf(m)
		if soa == nil || soa.Hdr.Name != "prod.local." {
			t.Errorf("%s: authority %v, want the zone SOA", tc.name, m.Ns)
			continue
		}
		if soa.Minttl != 7 || soa.Hdr.Ttl != 7 {
			t.Errorf("%s: SOA minimum %d ttl %d, want the record TTL 7 for negative caching", tc.name, soa.Minttl, soa.Hdr.Ttl)
		}
	}
}

func TestApexSOAAndNSWithGlue(t *testing.T) {
	s := newTestServer(t, Config{})
	soaMsg := ask(t, s, "prod.local.", dns.TypeSOA)
	if len(soaMsg.Answer) != 1 {
		t.Fatalf("SOA query answered %v", soaMsg.Answer)
	}
	soa := soaMsg.Answer[0].(*dns.SOA)
	if soa.Ns != "ns.prod.local." || soa.Mbox != "hostmaster.prod.local." {
		t.Fatalf("SOA = %v", soa)
	}
	if err := s.SetListeners([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}); err != nil {
		t.Fatal(err)
	}
	ns := ask(t, s, "prod.local.", dns.TypeNS)
	if len(ns.Answer) != 1 || ns.Answer[0].(*dns.NS).Ns != "ns.prod.local." {
		t.Fatalf("NS answer = %v", ns.Answer)
	}
	if len(ns.Extra) != 1 || ns.Extra[0].(*dns.A).A.String() != "127.0.0.1" {
		t.Fatalf("NS glue = %v, want the listener address 127.0.0.1", ns.Extra)
	}
	if got := answerAddrs(ask(t, s, "ns.prod.local.", dns.TypeA)); !slices.Equal(got, []string{"127.0.0.1"}) {
		t.Fatalf("ns.prod.local A = %v", got)
	}
	if later := ask(t, s, "prod.local.", dns.TypeSOA).Answer[0].(*dns.SOA).Serial; later <= soa.Serial {
		t.Fatalf("serial %d after the glue changed, was %d", later, soa.Serial)
	}
}

func TestSerialIncrementsOnEveryChange(t *testing.T) {
	s := newTestServer(t, Config{})
	serial := func() uint32 { return ask(t, s, "prod.local.", dns.TypeSOA).Answer[0].(*dns.SOA).Serial }
	last := serial()
	step := func(what string, change func() error) {
		t.Helper()
		if err := change(); err != nil {
			t.Fatal(err)
		}
		if now := serial(); now != last+1 {
			t.Fatalf("after %s serial is %d, want %d", what, now, last+1)
		} else {
			last = now
		}
	}
	a := netip.MustParseAddr("10.1.0.1")
	step("Register", func() error { return s.Register("a", a) })
	step("Register of a second address", func() error { return s.Register("a", netip.MustParseAddr("10.1.0.2")) })
	step("Unregister", func() error { return s.Unregister("a") })
	step("SetTTL", func() error { s.SetTTL(30); return nil })
	step("Replace", func() error { return s.Replace(map[string][]netip.Addr{"b": {a}}) })
	// No-op changes do not bump the serial.
	if err := s.Register("b", a); err != nil {
		t.Fatal(err)
	}
	if err := s.Unregister("absent"); err != nil {
		t.Fatal(err)
	}
	if now := serial(); now != last {
		t.Fatalf("no-op changes moved the serial from %d to %d", last, now)
	}
}

func TestRoundRobin(t *testing.T) {
	s := newTestServer(t, Config{})
	want := []string{"10.1.0.1", "10.1.0.2", "10.1.0.3"}
	mustRegister(t, s, "web", want...)
	firsts := map[string]bool{}
	for range len(want) {
		got := answerAddrs(ask(t, s, "web.prod.local.", dns.TypeA))
		sorted := slices.Sorted(slices.Values(got))
		if !slices.Equal(sorted, want) {
			t.Fatalf("answer %v does not hold every address %v", got, want)
		}
		firsts[got[0]] = true
	}
	if len(firsts) != len(want) {
		t.Fatalf("%d consecutive answers started with only %d distinct addresses; want rotation", len(want), len(firsts))
	}
}

func TestUnregisterAndReRegister(t *testing.T) {
	s := newTestServer(t, Config{})
	mustRegister(t, s, "web", "10.1.0.5")
	if err := s.Unregister("web"); err != nil {
		t.Fatal(err)
	}
	m := ask(t, s, "web.prod.local.", dns.TypeA)
	if m.Rcode != dns.RcodeNameError || soaOf(m) == nil {
		t.Fatalf("after Unregister: rcode %s authority %v, want NXDOMAIN with SOA", dns.RcodeToString[m.Rcode], m.Ns)
	}
	if ptr := ask(t, s, "5.0.1.10.in-addr.arpa.", dns.TypePTR); len(ptr.Answer) != 0 {
		t.Fatalf("PTR still answered after Unregister: %v", ptr.Answer)
	}
	mustRegister(t, s, "web", "10.1.0.6")
	if got := answerAddrs(ask(t, s, "web.prod.local.", dns.TypeA)); !slices.Equal(got, []string{"10.1.0.6"}) {
		t.Fatalf("re-registered name answers %v, want only the new address", got)
	}
	// Set moves a name in one step.
	if err := s.Set("web", netip.MustParseAddr("10.1.0.7")); err != nil {
		t.Fatal(err)
	}
	if got := answerAddrs(ask(t, s, "web.prod.local.", dns.TypeA)); !slices.Equal(got, []string{"10.1.0.7"}) {
		t.Fatalf("after Set the name answers %v", got)
	}
	if err := s.Set("web"); err != nil {
		t.Fatal(err)
	}
	if m := ask(t, s, "web.prod.local.", dns.TypeA); m.Rcode != dns.RcodeNameError {
		t.Fatalf("Set with no address left rcode %s, want NXDOMAIN", dns.RcodeToString[m.Rcode])
	}
}

func TestPTR(t *testing.T) {
	s := newTestServer(t, Config{
		ReversePrefixes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/20"), netip.MustParsePrefix("fd00:1::/64")},
		AllowRecursion:  func(netip.Addr) bool { return false },
	})
	mustRegister(t, s, "web", "10.1.0.5", "fd00:1::5")
	mustRegister(t, s, "api", "10.1.0.5")
	mustRegister(t, s, "other", "192.168.7.9")

	m := ask(t, s, "5.0.1.10.in-addr.arpa.", dns.TypePTR)
	var targets []string
	for _, rr := range m.Answer {
		targets = append(targets, rr.(*dns.PTR).Ptr)
	}
	slices.Sort(targets)
	if !m.Authoritative || !slices.Equal(targets, []string{"api.prod.local.", "web.prod.local."}) {
		t.Fatalf("PTR of a shared address = %v (aa=%v)", targets, m.Authoritative)
	}
	ptr6, _ := dns.ReverseAddr("fd00:1::5")
	unknown6, _ := dns.ReverseAddr("fd00:1::6")
	apex6 := "0.0.0.0.0.0.0.0.1.0.0.0.0.0.d.f.ip6.arpa."
	v6 := ask(t, s, ptr6, dns.TypePTR)
	if len(v6.Answer) != 1 || v6.Answer[0].(*dns.PTR).Ptr != "web.prod.local." {
		t.Fatalf("IPv6 PTR = %v", v6.Answer)
	}
	// Held address outside any declared prefix: still ours.
	if o := ask(t, s, "9.7.168.192.in-addr.arpa.", dns.TypePTR); len(o.Answer) != 1 {
		t.Fatalf("PTR of a held address outside the declared prefixes = %v", o.Answer)
	}

	// Unknown names in declared reverse zones: NXDOMAIN with that zone's SOA.
	for name, apex := range map[string]string{
		"6.0.1.10.in-addr.arpa.":  "0.1.10.in-addr.arpa.",
		"1.15.1.10.in-addr.arpa.": "15.1.10.in-addr.arpa.", // last /24 of the /20
		unknown6:                  apex6,
	} {
		n := ask(t, s, name, dns.TypePTR)
		if n.Rcode != dns.RcodeNameError || soaOf(n) == nil || soaOf(n).Hdr.Name != apex {
			t.Errorf("%s: rcode %s authority %v; want NXDOMAIN with the SOA of %s", name, dns.RcodeToString[n.Rcode], n.Ns, apex)
		}
	}
	// Names between a reverse apex and a PTR exist (empty non-terminals).
	ent, _ := parentName(ptr6)
	if n := ask(t, s, ent, dns.TypePTR); n.Rcode != dns.RcodeSuccess || len(n.Answer) != 0 || soaOf(n) == nil || soaOf(n).Hdr.Name != apex6 {
		t.Errorf("%s: rcode %s answer %v authority %v; want NODATA with the SOA of %s", ent, dns.RcodeToString[n.Rcode], n.Answer, n.Ns, apex6)
	}
	// Outside the declared prefixes reverse names are not ours: forwarded,
	// and this client may not recurse.
	for _, name := range []string{"1.16.1.10.in-addr.arpa.", "6.7.168.192.in-addr.arpa."} {
		if n := ask(t, s, name, dns.TypePTR); n.Rcode != dns.RcodeRefused {
			t.Errorf("%s: rcode %s, want REFUSED (forwarded name, recursion not allowed)", name, dns.RcodeToString[n.Rcode])
		}
	}
	// SOA at a declared reverse apex.
	if a := ask(t, s, "0.1.10.in-addr.arpa.", dns.TypeSOA); len(a.Answer) != 1 {
		t.Errorf("SOA of a reverse zone apex = %v", a.Answer)
	}
}

func TestReversePrefixesCanChange(t *testing.T) {
	s := newTestServer(t, Config{AllowRecursion: func(netip.Addr) bool { return false }})
	if m := ask(t, s, "9.0.2.10.in-addr.arpa.", dns.TypePTR); m.Rcode != dns.RcodeRefused {
		t.Fatalf("undeclared reverse name: %s, want REFUSED", dns.RcodeToString[m.Rcode])
	}
	if err := s.SetReversePrefixes([]netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	if m := ask(t, s, "9.0.2.10.in-addr.arpa.", dns.TypePTR); m.Rcode != dns.RcodeNameError {
		t.Fatalf("declared reverse name: %s, want NXDOMAIN", dns.RcodeToString[m.Rcode])
	}
	if err := s.SetReversePrefixes([]netip.Prefix{{}}); err == nil {
		t.Fatal("SetReversePrefixes accepted an invalid prefix")
	}
}

func TestSetZoneKeepsRecords(t *testing.T) {
	s := newTestServer(t, Config{AllowRecursion: func(netip.Addr) bool { return false }})
	mustRegister(t, s, "web", "10.1.0.5")
	if err := s.SetZone("staging.local"); err != nil {
		t.Fatal(err)
	}
	if got := answerAddrs(ask(t, s, "web.staging.local.", dns.TypeA)); !slices.Equal(got, []string{"10.1.0.5"}) {
		t.Fatalf("after SetZone web.staging.local = %v", got)
	}
	if m := ask(t, s, "web.prod.local.", dns.TypeA); m.Rcode != dns.RcodeRefused {
		t.Fatalf("old zone still answered: %s", dns.RcodeToString[m.Rcode])
	}
	if ptr := ask(t, s, "5.0.1.10.in-addr.arpa.", dns.TypePTR); len(ptr.Answer) != 1 || ptr.Answer[0].(*dns.PTR).Ptr != "web.staging.local." {
		t.Fatalf("PTR after SetZone = %v", ptr.Answer)
	}
	if name, err := s.CanonicalName("Web"); err != nil || name != "web.staging.local." {
		t.Fatalf("CanonicalName = %q, %v", name, err)
	}
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 40)
	if err := s.Register(long, netip.MustParseAddr("10.1.0.8")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetZone("a-much-longer-zone-name.local"); err == nil || !strings.Contains(err.Error(), "253") {
		t.Fatalf("moving a long name past 253 characters: err = %v", err)
	}
	if s.Zone() != "staging.local." {
		t.Fatalf("a failed SetZone changed the zone to %s", s.Zone())
	}
}

func TestTTLIsConfigurable(t *testing.T) {
	s := newTestServer(t, Config{TTL: 60})
	mustRegister(t, s, "web", "10.1.0.5")
	if ttl := ask(t, s, "web.prod.local.", dns.TypeA).Answer[0].Header().Ttl; ttl != 60 {
		t.Fatalf("TTL = %d, want 60", ttl)
	}
	s.SetTTL(9)
	if ttl := ask(t, s, "web.prod.local.", dns.TypeA).Answer[0].Header().Ttl; ttl != 9 {
		t.Fatalf("TTL after SetTTL = %d, want 9", ttl)
	}
}

func TestMalformedAndUnsupportedQueries(t *testing.T) {
	s := newTestServer(t, Config{})
	mustRegister(t, s, "web", "10.1.0.5")

	two := newQuery("web.prod.local.", dns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	none := newQuery("web.prod.local.", dns.TypeA)
	none.Question = nil
	update := newQuery("prod.local.", dns.TypeSOA)
	update.Opcode = dns.OpcodeUpdate
	badVers := newQuery("web.prod.local.", dns.TypeA)
	badVers.SetEdns0(1232, false)
	badVers.Extra[0].(*dns.OPT).SetVersion(1)
	twoOPT := newQuery("web.prod.local.", dns.TypeA)
	twoOPT.SetEdns0(1232, false)
	twoOPT.Extra = append(twoOPT.Extra, twoOPT.Extra[0])
	axfr := newQuery("prod.local.", dns.TypeAXFR)
	chaos := newQuery("web.prod.local.", dns.TypeA)
	chaos.Question[0].Qclass = dns.ClassCHAOS

	for name, tc := range map[string]struct {
		req   *dns.Msg
		rcode int
	}{
		"two questions": {two, dns.RcodeFormatError},
		"no question":   {none, dns.RcodeFormatError},
		"update":        {update, dns.RcodeNotImplemented},
		"EDNS version":  {badVers, dns.RcodeBadVers},
		"two OPT":       {twoOPT, dns.RcodeFormatError},
		"AXFR":          {axfr, dns.RcodeRefused},
		"CHAOS class":   {chaos, dns.RcodeRefused},
	} {
		m := exchange(t, s, client4, tc.req)
		if m.Rcode != tc.rcode {
			t.Errorf("%s: rcode %s, want %s", name, dns.RcodeToString[m.Rcode], dns.RcodeToString[tc.rcode])
		}
	}

	// A response is never answered (loop protection).
	resp := newQuery("web.prod.local.", dns.TypeA)
	resp.Response = true
	w := &fakeWriter{remote: client4}
	s.ServeDNS(w, resp)
	if n := len(w.replies(t)); n != 0 {
		t.Fatalf("answered a response message with %d replies", n)
	}
}

func TestEDNSInZoneAnswers(t *testing.T) {
	s := newTestServer(t, Config{})
	mustRegister(t, s, "web", "10.1.0.5")
	req := newQuery("web.prod.local.", dns.TypeA)
	req.SetEdns0(4096, true)
	m := exchange(t, s, client4, req)
	opt := m.IsEdns0()
	if opt == nil || !opt.Do() || opt.UDPSize() != advertisedUDPSize {
		t.Fatalf("OPT in reply = %v; want one with the DO bit copied and size %d", opt, advertisedUDPSize)
	}
	if plain := ask(t, s, "web.prod.local.", dns.TypeA); plain.IsEdns0() != nil {
		t.Fatal("reply to a query without EDNS carries an OPT record")
	}
}

func TestLargeAnswersTruncateOverUDPOnly(t *testing.T) {
	s := newTestServer(t, Config{})
	var addrs []netip.Addr
	for i := range 100 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{10, 1, 1, byte(i + 1)}))
	}
	if err := s.Set("big", addrs...); err != nil {
		t.Fatal(err)
	}
	w := &fakeWriter{remote: client4}
	s.ServeDNS(w, newQuery("big.prod.local.", dns.TypeA))
	udp := w.replies(t)[0]
	if !udp.Truncated || len(udp.Answer) >= 100 {
		t.Fatalf("UDP answer: tc=%v with %d records; want TC and fewer than 100", udp.Truncated, len(udp.Answer))
	}
	if n := len(w.wire[0]); n > dns.MinMsgSize {
		t.Fatalf("UDP answer is %d bytes, over the 512 a client without EDNS accepts", n)
	}
	tcp := exchange(t, s, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}, newQuery("big.prod.local.", dns.TypeA))
	if tcp.Truncated || len(tcp.Answer) != 100 {
		t.Fatalf("TCP answer: tc=%v with %d records; want all 100", tcp.Truncated, len(tcp.Answer))
	}
	// Whatever buffer a client claims, a UDP answer stays within 1,232
	// bytes: the source of a datagram is not proof of who sent it.
	for _, size := range []uint16{1232, 4096, 65000} {
		edns := newQuery("big.prod.local.", dns.TypeA)
		edns.SetEdns0(size, false)
		w := &fakeWriter{remote: client4}
		s.ServeDNS(w, edns)
		m := w.replies(t)[0]
		if n := len(w.wire[0]); n > 1232 || !m.Truncated || len(m.Answer) >= 100 {
			t.Fatalf("EDNS %d UDP answer: %d bytes, tc=%v with %d records; want at most 1232 bytes, TC and fewer than 100", size, n, m.Truncated, len(m.Answer))
		}
	}
}

func TestRegisterValidation(t *testing.T) {
	s := newTestServer(t, Config{})
	ip := netip.MustParseAddr("10.1.0.5")
	for name, wantErr := range map[string]string{
		"":                              "empty",
		"web..api":                      "empty label",
		".web":                          "empty label",
		"web.":                          "outside zone",
		"web.other.local.":              "outside zone",
		"prod.local.":                   "zone apex",
		"we b":                          `contains " "`,
		"web/1":                         `contains "/"`,
		strings.Repeat("a", 64):         "64 characters",
		strings.Repeat("a.", 125) + "a": "characters long",
	} {
		err := s.Register(name, ip)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("Register(%q): err = %v, want one mentioning %q", name, err, wantErr)
		}
	}
	for _, name := range []string{"web", "web-1.api", "_http._tcp.web", "WEB.prod.local."} {
		if err := s.Register(name, ip); err != nil {
			t.Errorf("Register(%q): %v", name, err)
		}
	}
	if err := s.Register("web", netip.Addr{}); err == nil {
		t.Error("Register accepted an unset address")
	}
	if err := s.Register("web", netip.IPv4Unspecified()); err == nil {
		t.Error("Register accepted 0.0.0.0")
	}
	// An IPv4-mapped IPv6 address is stored as IPv4 (an A record).
	if err := s.Register("mapped", netip.MustParseAddr("::ffff:10.1.0.9")); err != nil {
		t.Fatal(err)
	}
	if got := answerAddrs(ask(t, s, "mapped.prod.local.", dns.TypeA)); !slices.Equal(got, []string{"10.1.0.9"}) {
		t.Errorf("mapped address answers %v", got)
	}
	for _, zone := range []string{"", ".", "a..b", "1.10.in-addr.arpa"} {
		if _, err := New(Config{Zone: zone}); err == nil {
			t.Errorf("New accepted zone %q", zone)
		}
	}
}

func TestReplaceAndRecords(t *testing.T) {
	s := newTestServer(t, Config{})
	mustRegister(t, s, "old", "10.1.0.1")
	a, b := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("fd00::2")
	if err := s.Replace(map[string][]netip.Addr{"web": {a, b, a}, "api.prod.local.": {a}}); err != nil {
		t.Fatal(err)
	}
	got := s.Records()
	if len(got) != 2 || !slices.Equal(got["web"], []netip.Addr{a, b}) || !slices.Equal(got["api"], []netip.Addr{a}) {
		t.Fatalf("Records after Replace = %v", got)
	}
	if m := ask(t, s, "old.prod.local.", dns.TypeA); m.Rcode != dns.RcodeNameError {
		t.Fatal("Replace kept a name that was not in the new set")
	}
	if err := s.Replace(map[string][]netip.Addr{"ok": {a}, "bad name": {a}}); err == nil {
		t.Fatal("Replace accepted an invalid name")
	}
	if got := s.Records(); len(got) != 2 {
		t.Fatalf("a failed Replace changed the records: %v", got)
	}
	st := s.Stats()
	if st.Names != 2 || st.Addresses != 3 {
		t.Fatalf("Stats names=%d addresses=%d, want 2 and 3", st.Names, st.Addresses)
	}
}

func TestEmptyNonTerminalsFollowTheirChildren(t *testing.T) {
	s := newTestServer(t, Config{})
	mustRegister(t, s, "db.backend", "10.1.0.9")
	mustRegister(t, s, "cache.backend", "10.1.0.10")
	if err := s.Unregister("db.backend"); err != nil {
		t.Fatal(err)
	}
	if m := ask(t, s, "backend.prod.local.", dns.TypeA); m.Rcode != dns.RcodeSuccess {
		t.Fatalf("backend with one child left: %s, want NODATA", dns.RcodeToString[m.Rcode])
	}
	if err := s.Unregister("cache.backend"); err != nil {
		t.Fatal(err)
	}
	if m := ask(t, s, "backend.prod.local.", dns.TypeA); m.Rcode != dns.RcodeNameError {
		t.Fatalf("backend with no child left: %s, want NXDOMAIN", dns.RcodeToString[m.Rcode])
	}
}

func TestRegisteredNSOverridesListenerGlue(t *testing.T) {
	s := newTestServer(t, Config{})
	if err := s.SetListeners([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")}); err != nil {
		t.Fatal(err)
	}
	mustRegister(t, s, "ns", "10.1.0.53")
	if got := answerAddrs(ask(t, s, "ns.prod.local.", dns.TypeA)); !slices.Equal(got, []string{"10.1.0.53"}) {
		t.Fatalf("ns.prod.local = %v, want the registered address", got)
	}
	if err := s.Unregister("ns"); err != nil {
		t.Fatal(err)
	}
	if got := answerAddrs(ask(t, s, "ns.prod.local.", dns.TypeA)); !slices.Equal(got, []string{"127.0.0.1"}) {
		t.Fatalf("ns.prod.local after Unregister = %v, want the listener glue back", got)
	}
}

// Readers never lock; under -race this proves the snapshot handover is
// sound, and every answer is one of the states a writer published.
func TestConcurrentQueriesAndChanges(t *testing.T) {
	s := newTestServer(t, Config{})
	a, b := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			switch i % 3 {
			case 0:
				s.Set("flip", a)
			case 1:
				s.Set("flip", b)
			case 2:
				s.Unregister("flip")
			}
		}
	}()
	for range 2000 {
		m := ask(t, s, "flip.prod.local.", dns.TypeA)
		got := answerAddrs(m)
		ok := m.Rcode == dns.RcodeNameError && len(got) == 0 ||
			m.Rcode == dns.RcodeSuccess && len(got) == 1 && (got[0] == a.String() || got[0] == b.String())
		if !ok {
			t.Fatalf("inconsistent answer: %s %v", dns.RcodeToString[m.Rcode], got)
		}
	}
	close(stop)
	<-done
}
