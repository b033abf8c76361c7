package engine

import (
	"errors"
	"net/netip"
	"sort"
	"strings"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// listDNS answers list_dns: every name register_dns put in the zone, fully
// qualified and sorted, with its addresses in registration order. It reads
// the desired state (what the DNS server was given), like status.
func (e *Engine) listDNS() (protocol.Response, error) {
	if e.dns == nil {
		return nil, errors.New("the embedded DNS server is disabled (--dns=false); there are no names to list")
	}
	out := protocol.DNSRecords{Records: []protocol.DNSRecord{}}
	e.at("dns.list")
	// The zone is read in the same section as the names: the names change
	// only under e.mu, and each is in the server before it is in e.st.dns,
	// which keeps them relative to whatever zone is current. So every name
	// listed was served in this zone at this moment; a zone read before,
	// then moved and a name registered in the new one, listed that name in
	// a zone it was never in. Zone is an atomic load (memory only).
	e.locked(func() {
		zone := strings.TrimSuffix(e.dns.cfg.Server.Zone(), ".")
		out.Zone = zone
		for rel, r := range e.st.dns {
			rec := protocol.DNSRecord{Name: rel + "." + zone, IPs: make([]netip.Addr, 0, len(r.Addrs))}
			for _, a := range r.Addrs {
				if ip, err := netip.ParseAddr(a); err == nil {
					rec.IPs = append(rec.IPs, ip)
				}
			}
			out.Records = append(out.Records, rec)
		}
	})
	sort.Slice(out.Records, func(i, j int) bool { return out.Records[i].Name < out.Records[j].Name })
	return out, nil
}
