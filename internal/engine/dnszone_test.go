package engine

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Store keys of DNS records are relative to the zone, so a name given
// fully qualified in the current zone is stored as its relative part and
// moves with the zone.
func TestRegisterDNSFullyQualifiedNameIsStoredRelative(t *testing.T) {
	h := newDNSHarness(t, NodeListenersOff)
	h.e.noteDNSDomain("prod.local")
	ip := netip.MustParseAddr("10.200.3.7")
	h.ok(protocol.RegisterDNS{Name: "Web.Prod.Local.", IP: ip})
	h.checkDNSNames("prod.local", map[string]netip.Addr{"web": ip})

	h.e.noteDNSDomain("staging.local")
	h.checkDNSNames("staging.local", map[string]netip.Addr{"web": ip})
	h.fails(protocol.UnregisterDNS{Name: "web.prod.local."}, "outside zone")
	h.ok(protocol.UnregisterDNS{Name: "WEB.staging.local."})
	h.checkDNSNames("staging.local", nil)
}

// The main daemon's dns_domain can move the zone while register_dns and
// unregister_dns run: every name still lands under its relative key, in
// the store and in the server, and is found in whatever zone is current.
// prod.zlayer.local and zlayer.local are picked because a name made in one
// and trimmed against the other was the silent failure: "web" stored as
// "web.prod".
func TestRegisterDNSWhileTheZoneMovesStoresRelativeNames(t *testing.T) {
	h := newDNSHarness(t, NodeListenersOff)
	zones := []string{"prod.zlayer.local", "zlayer.local", "other.local"}
	h.e.noteDNSDomain(zones[0])
	const workers, perWorker = 4, 25
	want := map[string]netip.Addr{}
	for w := range workers {
		for i := range perWorker {
			want[fmt.Sprintf("web-%d-%d", w, i)] = netip.AddrFrom4([4]byte{10, 200, byte(w), byte(i + 1)})
		}
	}

	// each runs op on every name from workers goroutines while another
	// goroutine keeps moving the zone.
	each := func(op func(name string, ip netip.Addr) protocol.Request) {
		stop := make(chan struct{})
		var flipper sync.WaitGroup
		flipper.Add(1)
		go func() {
			defer flipper.Done()
			for i := 1; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				h.e.noteDNSDomain(zones[i%len(zones)])
			}
		}()
		errs := make(chan string, len(want))
		var ops sync.WaitGroup
		for w := range workers {
			ops.Add(1)
			go func() {
				defer ops.Done()
				for i := range perWorker {
					name := fmt.Sprintf("web-%d-%d", w, i)
					req := op(name, want[name])
					if e, bad := h.do(req).(protocol.Err); bad {
						errs <- fmt.Sprintf("%s %s: %s", req.Op(), name, e.Message)
					}
				}
			}()
		}
		ops.Wait()
		close(stop)
		flipper.Wait()
		close(errs)
		for msg := range errs {
			t.Error(msg)
		}
	}

	each(func(name string, ip netip.Addr) protocol.Request { return protocol.RegisterDNS{Name: name, IP: ip} })
	if t.Failed() {
		t.FailNow()
	}
	h.e.noteDNSDomain("final.local")
	h.checkDNSNames("final.local", want)
	// Restored from the store, the names are still relative.
	h.crash()
	h.e.noteDNSDomain("final.local")
	h.checkDNSNames("final.local", want)

	each(func(name string, _ netip.Addr) protocol.Request { return protocol.UnregisterDNS{Name: name} })
	h.checkDNSNames(h.status().DNS.Zone, nil)
}

// checkDNSNames checks that the records are exactly want (relative names)
// in the store, the engine's state and the server, and that status,
// list_dns and a DNS query see them in zone.
func (h *harness) checkDNSNames(zone string, want map[string]netip.Addr) {
	t := h.t
	t.Helper()
	zone = mdns.Fqdn(zone)
	wantNames := slices.Sorted(maps.Keys(want))
	st, err := h.st.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(maps.Keys(st.DNS)); !slices.Equal(got, wantNames) {
		t.Fatalf("stored names %q, want %q", got, wantNames)
	}
	var mem []string
	h.e.locked(func() { mem = slices.Sorted(maps.Keys(h.e.st.dns)) })
	if !slices.Equal(mem, wantNames) {
		t.Fatalf("engine state names %q, want %q", mem, wantNames)
	}
	srv := h.e.dns.cfg.Server
	if got := slices.Sorted(maps.Keys(srv.Records())); !slices.Equal(got, wantNames) {
		t.Fatalf("server names %q, want %q", got, wantNames)
	}
	if s := h.status(); s.DNS == nil || s.DNS.Zone != zone || s.DNS.Records != len(want) {
		t.Fatalf("status dns %+v, want zone %s with %d records", s.DNS, zone, len(want))
	}
	list := h.ok(protocol.ListDNS{}).(protocol.DNSRecords)
	var listed []string
	for _, r := range list.Records {
		listed = append(listed, r.Name)
	}
	var wantListed []string
	for _, n := range wantNames {
		wantListed = append(wantListed, n+"."+list.Zone)
	}
	if mdns.Fqdn(list.Zone) != zone || !slices.Equal(listed, wantListed) {
		t.Fatalf("list_dns zone %q names %q, want zone %s names %q", list.Zone, listed, zone, wantListed)
	}
	for name, ip := range want {
		q := new(mdns.Msg)
		q.SetQuestion(name+"."+zone, mdns.TypeA)
		w := &dnsReplyWriter{}
		srv.ServeDNS(w, q)
		if w.reply == nil || w.reply.Rcode != mdns.RcodeSuccess || len(w.reply.Answer) != 1 {
			t.Fatalf("query %s: %v", name+"."+zone, w.reply)
		}
		if a, ok := w.reply.Answer[0].(*mdns.A); !ok || a.A.String() != ip.String() {
			t.Fatalf("query %s: answer %v, want %s", name+"."+zone, w.reply.Answer[0], ip)
		}
	}
}

// dnsReplyWriter is a dns.ResponseWriter for a query from loopback (always
// answered) that keeps the reply.
type dnsReplyWriter struct{ reply *mdns.Msg }

func (w *dnsReplyWriter) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}
func (w *dnsReplyWriter) RemoteAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (w *dnsReplyWriter) WriteMsg(m *mdns.Msg) error { w.reply = m.Copy(); return nil }
func (w *dnsReplyWriter) Write(b []byte) (int, error) {
	m := new(mdns.Msg)
	if err := m.Unpack(b); err != nil {
		return 0, err
	}
	w.reply = m
	return len(b), nil
}
func (w *dnsReplyWriter) Close() error        { return nil }
func (w *dnsReplyWriter) TsigStatus() error   { return nil }
func (w *dnsReplyWriter) TsigTimersOnly(bool) {}
func (w *dnsReplyWriter) Hijack()             {}

// The store key of a name is made under one view of the zone. This asks
// for it many times while the zone keeps moving, to catch a return to
// canonicalising in one zone and trimming against another, which a zone
// change landing between the two steps turns into "web.prod" or an
// "outside zone" refusal.
func TestRelativeDNSNameWhileTheZoneMoves(t *testing.T) {
	e := newDNSEngine(t)
	srv := e.dns.cfg.Server
	zones := []string{"prod.zlayer.local", "zlayer.local", "other.local"}
	stop := make(chan struct{})
	var flipper sync.WaitGroup
	flipper.Add(1)
	go func() {
		defer flipper.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := srv.SetZone(zones[i%len(zones)]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	defer func() { close(stop); flipper.Wait() }()
	for range 20000 {
		if rel, err := e.relativeDNSName("Web"); err != nil || rel != "web" {
			t.Fatalf("relativeDNSName(Web) = %q, %v; want \"web\" in every zone", rel, err)
		}
	}
}

// A topology change derives the zone, an attach's new dns_domain is stored
// and applied, then the topology change applies what it derived: the
// main daemon's dns_domain must still be the zone when both are done, as
// the next attaches, sending the same dns_domain, change nothing.
func TestDNSZoneFromAnAttachIsNotUndoneByAnOlderDerivation(t *testing.T) {
	h := newDNSHarness(t, NodeListenersOff)
	h.e.noteDNSDomain("old.local")
	reached, release := make(chan struct{}), make(chan struct{})
	var hits atomic.Int32
	h.e.testHook = func(p string) {
		if p == "dns.zone" && hits.Add(1) == 1 {
			close(reached)
			<-release
		}
	}
	topology := make(chan struct{})
	go func() { defer close(topology); h.e.updateDNS() }()
	<-reached // it has derived old.local
	h.e.noteDNSDomain("new.local")
	close(release)
	<-topology
	h.e.testHook = nil
	if z := h.e.dns.cfg.Server.Zone(); z != "new.local." {
		t.Fatalf("zone %s; the main daemon's dns_domain is new.local", z)
	}
	h.e.noteDNSDomain("new.local")
	if z := h.status().DNS.Zone; z != "new.local." {
		t.Fatalf("status zone %s after the next attach; want new.local.", z)
	}
}

// list_dns answers one moment of the zone and its names: the zone moving
// and a name registered in the new zone while it lists must not show that
// name in the old zone, where it never was.
func TestListDNSIsOneMomentOfTheZone(t *testing.T) {
	h := newDNSHarness(t, NodeListenersOff)
	h.e.noteDNSDomain("old.local")
	ip := netip.MustParseAddr("10.200.3.7")
	h.ok(protocol.RegisterDNS{Name: "web.old.local.", IP: ip})
	var once sync.Once
	h.e.testHook = func(p string) {
		if p != "dns.list" {
			return
		}
		once.Do(func() {
			h.e.noteDNSDomain("new.local")
			h.ok(protocol.RegisterDNS{Name: "api.new.local.", IP: ip})
		})
	}
	resp := h.ok(protocol.ListDNS{})
	h.e.testHook = nil
	list := resp.(protocol.DNSRecords)
	var names []string
	for _, r := range list.Records {
		names = append(names, r.Name)
	}
	// Both names were in new.local when the listing read them;
	// api.new.local was never in old.local.
	want := []string{"api.new.local", "web.new.local"}
	if list.Zone != "new.local" || !slices.Equal(names, want) {
		t.Fatalf("list_dns: zone %s, names %v; want zone new.local, names %v", list.Zone, names, want)
	}
}
