//go:build linux

package doctor

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NewHost reads the host the doctor runs on (its network namespace).
func NewHost() Host { return linuxHost{} }

type linuxHost struct{}

func (linuxHost) Sysctl(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", name))
	return strings.TrimSpace(string(b)), err
}

func (linuxHost) Module(name string) (loaded, available bool, err error) {
	if _, err := os.Stat("/sys/module/" + name); err == nil {
		return true, true, nil
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false, false, err
	}
	dir := filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
	for _, f := range []string{"modules.builtin", "modules.dep"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			path, _, _ := strings.Cut(sc.Text(), ":")
			base := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
			base = strings.TrimSuffix(base, ".ko")
			if base == name {
				return f == "modules.builtin", true, nil
			}
		}
	}
	return false, false, nil
}

func (linuxHost) DeviceNode(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func (linuxHost) LinkMTU(name string) (int, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, err
	}
	return l.Attrs().MTU, nil
}

func (linuxHost) RouteTo(dst netip.Addr) (string, int, error) {
	routes, err := netlink.RouteGet(dst.AsSlice())
	if err != nil {
		return "", 0, err
	}
	if len(routes) == 0 {
		return "", 0, fmt.Errorf("no route to %s", dst)
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return "", 0, err
	}
	mtu := l.Attrs().MTU
	if routes[0].MTU > 0 && routes[0].MTU < mtu {
		mtu = routes[0].MTU
	}
	return l.Attrs().Name, mtu, nil
}

func (linuxHost) DefaultRouteDevice(v6 bool) (string, error) {
	fam := netlink.FAMILY_V4
	if v6 {
		fam = netlink.FAMILY_V6
	}
	routes, err := netlink.RouteList(nil, fam)
	if err != nil {
		return "", err
	}
	for _, r := range routes {
		if r.Dst == nil || (r.Dst.IP.IsUnspecified() && func() bool { ones, _ := r.Dst.Mask.Size(); return ones == 0 }()) {
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				return l.Attrs().Name, nil
			}
		}
	}
	return "", nil
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyNetdev:
		return "netdev"
	case nftables.TableFamilyARP:
		return "arp"
	}
	return fmt.Sprint(f)
}

func hookName(h *nftables.ChainHook) string {
	if h == nil {
		return ""
	}
	switch *h {
	case *nftables.ChainHookPrerouting:
		return "prerouting"
	case *nftables.ChainHookInput:
		return "input"
	case *nftables.ChainHookForward:
		return "forward"
	case *nftables.ChainHookOutput:
		return "output"
	case *nftables.ChainHookPostrouting:
		return "postrouting"
	}
	return fmt.Sprint(*h)
}

// NFTables dumps every chain and its rules. Only dump requests are sent.
func (linuxHost) NFTables() ([]Chain, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	defer c.CloseLasting()
	chains, err := c.ListChains()
	if err != nil {
		return nil, err
	}
	var out []Chain
	for _, ch := range chains {
		if ch.Table == nil {
			continue
		}
		dc := Chain{View: "nftables", Family: familyName(ch.Table.Family), Table: ch.Table.Name, Name: ch.Name, Hook: hookName(ch.Hooknum)}
		if ch.Hooknum != nil {
			dc.Policy = "accept"
			if ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop {
				dc.Policy = "drop"
			}
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return nil, fmt.Errorf("reading chain %s %s %s: %w", dc.Family, dc.Table, dc.Name, err)
		}
		for _, r := range rules {
			dc.Rules = append(dc.Rules, ruleOf(r.Exprs))
		}
		out = append(out, dc)
	}
	return out, nil
}

// ruleOf reads the interface matches and verdict of an nftables rule (as
// nft or iptables-nft writes them); anything else makes it conditional.
func ruleOf(exprs []expr.Any) Rule {
	var r Rule
	var text []string
	regKey := map[uint32]expr.MetaKey{}
	for _, e := range exprs {
		switch x := e.(type) {
		case *expr.Meta:
			if !x.SourceRegister && (x.Key == expr.MetaKeyIIFNAME || x.Key == expr.MetaKeyOIFNAME) {
				regKey[x.Register] = x.Key
				continue
			}
			r.Conditional = true
			text = append(text, "meta")
		case *expr.Cmp:
			key, ok := regKey[x.Register]
			if !ok || x.Op != expr.CmpOpEq {
				r.Conditional = true
				text = append(text, "match")
				continue
			}
			name := string(bytes.TrimRight(x.Data, "\x00"))
			if !bytes.HasSuffix(x.Data, []byte{0}) {
				name += "+" // compared without the terminating NUL: a prefix
			}
			if key == expr.MetaKeyIIFNAME {
				r.In = name
				text = append(text, "-i "+name)
			} else {
				r.Out = name
				text = append(text, "-o "+name)
			}
		case *expr.Counter, *expr.Log:
		case *expr.Verdict:
			switch x.Kind {
			case expr.VerdictAccept:
				r.Verdict = "accept"
			case expr.VerdictDrop:
				r.Verdict = "drop"
			case expr.VerdictReturn:
				r.Verdict = "return"
			case expr.VerdictJump:
				r.Verdict, r.Target = "jump", x.Chain
			case expr.VerdictGoto:
				r.Verdict, r.Target = "goto", x.Chain
			}
		case *expr.Reject:
			r.Verdict = "reject"
		case *expr.Match:
			if x.Name != "comment" {
				r.Conditional = true
				text = append(text, "-m "+x.Name)
			}
		case *expr.Target:
			switch x.Name {
			case "ACCEPT":
				r.Verdict = "accept"
			case "DROP":
				r.Verdict = "drop"
			case "REJECT":
				r.Verdict = "reject"
			case "RETURN":
				r.Verdict = "return"
			}
		default:
			r.Conditional = true
			text = append(text, "match")
		}
	}
	switch r.Verdict {
	case "jump", "goto":
		text = append(text, "-j "+r.Target)
	case "":
	default:
		text = append(text, "-j "+strings.ToUpper(r.Verdict))
	}
	r.Text = strings.Join(text, " ")
	return r
}

// LegacyIPTables reads the x_tables filter table with iptables-legacy-save,
// only when the namespace has that table (so nothing gets loaded).
func (linuxHost) LegacyIPTables(v6 bool) ([]Chain, error) {
	names, bin, fam := "/proc/thread-self/net/ip_tables_names", "iptables-legacy-save", "ip"
	if v6 {
		names, bin, fam = "/proc/thread-self/net/ip6_tables_names", "ip6tables-legacy-save", "ip6"
	}
	b, err := os.ReadFile(names)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !strings.Contains(" "+strings.Join(strings.Fields(string(b)), " ")+" ", " filter ") {
		return nil, nil
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("the legacy %s filter table is loaded but %s is not installed", fam, bin)
	}
	out, err := exec.Command(path, "-t", "filter").Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	return ParseIPTablesSave(string(out), fam), nil
}

func (linuxHost) QueryDNS(ctx context.Context, server netip.AddrPort, zone string) (string, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(zone), dns.TypeSOA)
	c := &dns.Client{}
	resp, _, err := c.ExchangeContext(ctx, m, server.String())
	if err != nil {
		return "", err
	}
	return dns.RcodeToString[resp.Rcode], nil
}
