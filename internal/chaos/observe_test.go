//go:build linux

package chaos

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// The observers below read the kernel with the standard tools, run inside a
// namespace by exec (lab.Node.Exec or lab.Container.Exec). They are the
// independent witnesses the invariants are judged by: nothing here asks the
// daemon.

type execFunc func(args ...string) (string, error)

var errStill = errors.New("still there")

// vethOf is the daemon's name for the host end of a container's eth<n>.
func vethOf(pid, n int) string { return fmt.Sprintf("zl-v%d-e%d", pid, n) }

// kLink is one link as `ip -j -d link` shows it.
type kLink struct {
	Name    string `json:"ifname"`
	Alias   string `json:"ifalias"`
	Master  string `json:"master"`
	Address string `json:"address"`
	Flags   []string
	Info    struct {
		Kind string `json:"info_kind"`
	} `json:"linkinfo"`
}

func links(exec execFunc) ([]kLink, error) {
	out, err := exec("ip", "-j", "-d", "link", "show")
	if err != nil {
		return nil, fmt.Errorf("ip link: %v: %s", err, out)
	}
	var ls []kLink
	if err := json.Unmarshal([]byte(out), &ls); err != nil {
		return nil, fmt.Errorf("ip -j link: %v", err)
	}
	return ls, nil
}

// kRoute is one route of the main table.
type kRoute struct {
	Dst      string `json:"dst"`
	Dev      string `json:"dev"`
	Protocol string `json:"protocol"`
}

func routes(exec execFunc) ([]kRoute, error) {
	out, err := exec("ip", "-j", "route", "show", "table", "main")
	if err != nil {
		return nil, fmt.Errorf("ip route: %v: %s", err, out)
	}
	var rs []kRoute
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		return nil, fmt.Errorf("ip -j route: %v", err)
	}
	return rs, nil
}

// addrs maps each interface to its global-scope prefixes.
func addrs(exec execFunc) (map[string][]netip.Prefix, error) {
	out, err := exec("ip", "-j", "addr", "show")
	if err != nil {
		return nil, fmt.Errorf("ip addr: %v: %s", err, out)
	}
	var ifs []struct {
		Name  string `json:"ifname"`
		Addrs []struct {
			Local  string `json:"local"`
			Prefix int    `json:"prefixlen"`
			Scope  string `json:"scope"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &ifs); err != nil {
		return nil, fmt.Errorf("ip -j addr: %v", err)
	}
	m := map[string][]netip.Prefix{}
	for _, i := range ifs {
		for _, a := range i.Addrs {
			if a.Scope != "global" {
				continue
			}
			ip, err := netip.ParseAddr(a.Local)
			if err != nil {
				return nil, err
			}
			m[i.Name] = append(m[i.Name], netip.PrefixFrom(ip, a.Prefix))
		}
	}
	return m, nil
}

// nftIfnameSets returns the ifname-typed sets of an nftables table, or nil
// when the table does not exist.
func nftIfnameSets(exec execFunc, family, table string) (map[string][]string, error) {
	out, err := exec("nft", "-j", "list", "table", family, table)
	if err != nil {
		if strings.Contains(out, "No such file or directory") {
			return nil, nil
		}
		return nil, fmt.Errorf("nft list table: %v: %s", err, out)
	}
	var doc struct {
		Nftables []struct {
			Set *struct {
				Name string `json:"name"`
				// A string, or an array for a concatenation.
				Type json.RawMessage   `json:"type"`
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return nil, fmt.Errorf("nft -j: %v", err)
	}
	sets := map[string][]string{}
	for _, o := range doc.Nftables {
		if o.Set == nil || string(o.Set.Type) != `"ifname"` {
			continue
		}
		names := []string{}
		for _, e := range o.Set.Elem {
			var s string
			if json.Unmarshal(e, &s) == nil {
				names = append(names, s)
			}
		}
		sort.Strings(names)
		sets[o.Set.Name] = names
	}
	return sets, nil
}

// wgDevice is `wg show <dev> dump`.
type wgDevice struct {
	PublicKey  string
	ListenPort int
	Peers      map[string]wgPeer
}

type wgPeer struct {
	Endpoint   string
	AllowedIPs []string // sorted
}

func wgDump(exec execFunc, dev string) (*wgDevice, error) {
	out, err := exec("wg", "show", dev, "dump")
	if err != nil {
		return nil, fmt.Errorf("wg show %s dump: %v: %s", dev, err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	head := strings.Split(lines[0], "\t")
	if len(head) < 3 {
		return nil, fmt.Errorf("wg show %s dump: odd first line %q", dev, lines[0])
	}
	d := &wgDevice{PublicKey: head[1], Peers: map[string]wgPeer{}}
	d.ListenPort, _ = strconv.Atoi(head[2])
	for _, l := range lines[1:] {
		f := strings.Split(l, "\t")
		if len(f) < 4 {
			return nil, fmt.Errorf("wg show %s dump: odd peer line %q", dev, l)
		}
		var allowed []string
		if f[3] != "(none)" {
			allowed = strings.Split(f[3], ",")
			sort.Strings(allowed)
		}
		d.Peers[f[0]] = wgPeer{Endpoint: f[2], AllowedIPs: allowed}
	}
	return d, nil
}

// digA asks a DNS server for the A records of name; nxdomain reports an
// authoritative "no such name".
func digA(exec execFunc, server string, port int, name string) (addrs []string, nxdomain bool, err error) {
	out, err := exec("dig", "+tries=2", "+time=2", "+noall", "+comments", "+answer",
		"@"+server, "-p", strconv.Itoa(port), name, "A")
	if err != nil {
		return nil, false, fmt.Errorf("dig %s: %v: %s", name, err, out)
	}
	if strings.Contains(out, "status: NXDOMAIN") {
		return nil, true, nil
	}
	if !strings.Contains(out, "status: NOERROR") {
		return nil, false, fmt.Errorf("dig %s: unexpected answer:\n%s", name, out)
	}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) == 5 && f[3] == "A" && !strings.HasPrefix(l, ";") {
			addrs = append(addrs, f[4])
		}
	}
	sort.Strings(addrs)
	return addrs, false, nil
}
