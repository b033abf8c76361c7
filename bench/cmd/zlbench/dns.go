//go:build linux

package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/zlayer/zlayer-overlayd/bench/internal/benchlib"
	"github.com/zlayer/zlayer-overlayd/client"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

const (
	dnsZone  = "bench.local"
	dnsNames = 1000
	// dnsLatencyQPS is the offered load at which latency is compared:
	// well below every server's capacity, so it measures answering, not
	// queueing.
	dnsLatencyQPS = 5000
)

// benchDNS compares authoritative answers for a zone of 1,000 names
// (queries: 90 % existing names, 10 % NXDOMAIN) between our embedded DNS
// server, CoreDNS (file plugin, the zone as a zone file) and dnsmasq (the
// names as a hosts file, --local for the zone), all on loopback of one
// namespace, measured by dnsperf: throughput at saturation, then latency
// percentiles at a fixed offered load.
func benchDNS() error {
	coredns, err := tool("coredns")
	if err != nil {
		return err
	}
	for _, bin := range []string{"dnsperf", "dnsmasq"} {
		if _, err := lookPath(bin); err != nil {
			return fmt.Errorf("%s is not installed; run bench/install.sh (make bench does)", bin)
		}
	}
	dir := benchlib.TempDir()
	ns := benchlib.NetNS("dns")

	names := make([]string, dnsNames)
	addrs := make([]netip.Addr, dnsNames)
	base := netip.MustParseAddr("10.250.0.0")
	for i := range names {
		names[i] = fmt.Sprintf("svc-%04d", i)
		b := base.As4()
		b[2], b[3] = byte((i+1)/250), byte((i+1)%250+1)
		addrs[i] = netip.AddrFrom4(b)
	}
	// Queries: every existing name 9 times for each missing one.
	var q strings.Builder
	for i := range dnsNames * 9 / 10 {
		fmt.Fprintf(&q, "%s.%s A\n", names[i], dnsZone)
	}
	for i := range dnsNames / 10 {
		fmt.Fprintf(&q, "missing-%04d.%s A\n", i, dnsZone)
	}
	queries := filepath.Join(dir, "queries.txt")
	os.WriteFile(queries, []byte(q.String()), 0o644)

	// Ours.
	// The defaults users get, but for where the zone is served.
	args := []string{"--wireguard", "userspace", "--dns-port", "5300", "--dns-zone", dnsZone}
	if *profile != "" {
		args = append(args, "--pprof-listen", "127.0.0.1:16060")
	}
	ours := newDaemon(ns, filepath.Join(dir, "ours"), args...)
	if err := ours.start(); err != nil {
		return fmt.Errorf("%v\n%s", err, ours.log())
	}
	ctx := context.Background()
	c, err := client.Dial(ctx, ours.sock)
	if err != nil {
		return err
	}
	defer c.Close()
	for i, n := range names {
		if _, err := c.Call(ctx, protocol.RegisterDNS{Name: n, IP: addrs[i]}); err != nil {
			return fmt.Errorf("register_dns %s: %v", n, err)
		}
	}

	// CoreDNS.
	var zf strings.Builder
	fmt.Fprintf(&zf, "$ORIGIN %s.\n$TTL 5\n@ IN SOA ns.%s. hostmaster.%s. 1 7200 1800 86400 5\n@ IN NS ns.%s.\nns IN A 127.0.0.1\n", dnsZone, dnsZone, dnsZone, dnsZone)
	for i, n := range names {
		fmt.Fprintf(&zf, "%s IN A %s\n", n, addrs[i])
	}
	zoneFile := filepath.Join(dir, "db."+dnsZone)
	os.WriteFile(zoneFile, []byte(zf.String()), 0o644)
	corefile := filepath.Join(dir, "Corefile")
	os.WriteFile(corefile, []byte(fmt.Sprintf("%s:5301 {\n    bind 127.0.0.1\n    file %s\n}\n", dnsZone, zoneFile)), 0o644)
	cd := benchlib.Start(filepath.Join(dir, "coredns.log"), "ip", "netns", "exec", ns, coredns, "-conf", corefile)

	// dnsmasq.
	var hosts strings.Builder
	for i, n := range names {
		fmt.Fprintf(&hosts, "%s %s.%s\n", addrs[i], n, dnsZone)
	}
	hostsFile := filepath.Join(dir, "hosts")
	os.WriteFile(hostsFile, []byte(hosts.String()), 0o644)
	dm := benchlib.Start(filepath.Join(dir, "dnsmasq.log"), "ip", "netns", "exec", ns, "dnsmasq", "--keep-in-foreground",
		"--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--addn-hosts="+hostsFile, "--local=/"+dnsZone+"/",
		"--listen-address=127.0.0.1", "--bind-interfaces", "--port=5302", "--pid-file=", "--user=root", "--log-facility=-")

	servers := []struct {
		name string
		port int
		proc *benchlib.Proc
	}{{"zlayer-overlayd", 5300, ours.proc}, {"coredns", 5301, cd}, {"dnsmasq", 5302, dm}}
	for _, s := range servers {
		port := s.port
		err := s.proc.WaitFor(s.name, 30*time.Second, func() bool {
			var ok bool
			inNetns(ns, func() {
				ok = answers(port, names[0]+"."+dnsZone, dns.RcodeSuccess) && answers(port, "missing-0000."+dnsZone, dns.RcodeNameError)
			})
			return ok
		})
		if err != nil {
			return err
		}
	}

	dur := measure(5*time.Second, 2*time.Second)
	var cs []benchlib.Contender
	for _, s := range servers {
		port, name := s.port, s.name
		cs = append(cs, benchlib.Contender{Name: s.name, Run: func(round int) (map[string]float64, error) {
			var stopProf func() error
			if *profile != "" && round == 0 && name == "zlayer-overlayd" {
				stopProf = startProfile(ns, dur, profilePath("dns"))
			}
			qps, err := dnsperfQPS(ns, port, queries, dur)
			if stopProf != nil {
				if perr := stopProf(); perr != nil {
					fmt.Fprintln(os.Stderr, "dns: profile:", perr)
				}
			}
			if err != nil {
				return nil, err
			}
			lat, err := dnsperfLatencies(ns, port, queries, dur)
			if err != nil {
				return nil, err
			}
			return map[string]float64{
				"qps":       qps,
				"p50_5kqps": benchlib.Percentile(lat, 50),
				"p99_5kqps": benchlib.Percentile(lat, 99),
			}, nil
		}})
	}
	res, err := benchlib.Interleave(fmt.Sprintf("DNS: %d names, 90%% hits / 10%% NXDOMAIN, dnsperf", dnsNames), *rounds, []benchlib.Metric{
		{Name: "qps", Unit: "queries/s", Better: "higher", Goal: 1.0, GoalPeer: "dnsmasq"},
		{Name: "p50_5kqps", Unit: "µs", Better: "lower"},
		{Name: "p99_5kqps", Unit: "µs", Better: "lower", Goal: 1.0, GoalPeer: "coredns"},
	}, cs...)
	if res != nil {
		res.Print(os.Stdout)
	}
	return err
}

// answers asks the server on 127.0.0.1:port for name and checks the rcode
// (the caller is inside the namespace).
func answers(port int, name string, rcode int) bool {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	c := &dns.Client{Timeout: 500 * time.Millisecond}
	r, _, err := c.Exchange(m, "127.0.0.1:"+strconv.Itoa(port))
	return err == nil && r.Rcode == rcode && (rcode != dns.RcodeSuccess || len(r.Answer) == 1)
}

var qpsRE = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
var lostRE = regexp.MustCompile(`Queries lost:\s+(\d+)`)

// dnsperfQPS runs dnsperf at saturation (its default of 100 queries in
// flight) and returns the answered queries per second.
func dnsperfQPS(ns string, port int, queries string, dur time.Duration) (float64, error) {
	out, err := benchlib.Run("ip", "netns", "exec", ns, "dnsperf", "-s", "127.0.0.1", "-p", strconv.Itoa(port),
		"-d", queries, "-l", strconv.Itoa(int(dur.Seconds())), "-c", "4", "-T", "1", "-q", "100", "-t", "2")
	if err != nil {
		return 0, err
	}
	m := qpsRE.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("dnsperf printed no rate:\n%s", out)
	}
	return strconv.ParseFloat(m[1], 64)
}

// dnsperfLatencies runs dnsperf at a fixed rate in verbose mode, which
// prints every answer's latency, and returns them sorted, in µs.
func dnsperfLatencies(ns string, port int, queries string, dur time.Duration) ([]float64, error) {
	out, err := benchlib.Run("ip", "netns", "exec", ns, "dnsperf", "-s", "127.0.0.1", "-p", strconv.Itoa(port),
		"-d", queries, "-l", strconv.Itoa(int(dur.Seconds())), "-Q", strconv.Itoa(dnsLatencyQPS), "-t", "2", "-v")
	if err != nil {
		return nil, err
	}
	var lat []float64
	for _, line := range strings.Split(out, "\n") {
		// "> NOERROR svc-0001.bench.local A 0.000123"
		if !strings.HasPrefix(line, "> ") {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			lat = append(lat, v*1e6)
		}
	}
	if len(lat) == 0 {
		return nil, fmt.Errorf("dnsperf -v printed no latencies:\n%.2000s", out)
	}
	if m := lostRE.FindStringSubmatch(out); m != nil && m[1] != "0" {
		fmt.Fprintf(os.Stderr, "dns: port %d lost %s queries at %d qps\n", port, m[1], dnsLatencyQPS)
	}
	slices.Sort(lat)
	return lat, nil
}
