package doctor

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Chain is one netfilter chain as the doctor reads it, from nftables or
// from iptables-legacy.
type Chain struct {
	// View is where it was read: "nftables" (which includes iptables-nft)
	// or "iptables-legacy".
	View   string
	Family string // ip, ip6, inet, bridge, netdev, arp
	Table  string
	Name   string
	// Hook is "forward" for a base chain on the forward hook, another hook
	// name for other base chains, "" for a regular chain.
	Hook string
	// Policy of a base chain: "accept" or "drop".
	Policy string
	Rules  []Rule
}

// Rule is what the analysis needs of a rule: its interface matches and its
// verdict. Any other match (addresses, ports, conntrack state, a negated
// interface) makes it Conditional: it may or may not apply, so it is taken
// neither as an accept nor as a drop of our traffic.
type Rule struct {
	// In and Out match an interface name exactly, or every name starting
	// with the text before a trailing "+"; "" matches any.
	In, Out     string
	Conditional bool
	// Verdict: "accept", "drop", "reject", "jump", "goto", "return", or ""
	// (counter, log: evaluation goes on).
	Verdict string
	// Target is the chain of a jump or goto.
	Target string
	// Text shows the rule in messages.
	Text string
}

// Flow is one kind of packet our overlay forwards.
type Flow struct {
	In, Out string
	What    string // "containers to other nodes"
}

// Drop is where a flow dies.
type Drop struct {
	Flow  Flow
	Chain Chain // the base chain whose evaluation dropped it
	// By is the rule that dropped it, or "policy drop".
	By string
}

func ifaceMatch(pattern, name string) bool {
	if pattern == "" {
		return true
	}
	if p, ok := strings.CutSuffix(pattern, "+"); ok {
		return strings.HasPrefix(name, p)
	}
	return pattern == name
}

// decide walks chain for flow: "accept", "drop" (with the rule), or ""
// when it returns without a verdict.
func decide(chains map[string]*Chain, c *Chain, f Flow, depth int) (verdict, by string) {
	if depth > 32 {
		return "", ""
	}
	for _, r := range c.Rules {
		if r.Conditional || !ifaceMatch(r.In, f.In) || !ifaceMatch(r.Out, f.Out) {
			continue
		}
		switch r.Verdict {
		case "accept":
			return "accept", ""
		case "drop", "reject":
			return "drop", r.Text
		case "return":
			return "", ""
		case "jump", "goto":
			sub := chains[r.Target]
			if sub == nil {
				continue
			}
			v, b := decide(chains, sub, f, depth+1)
			if v != "" || r.Verdict == "goto" {
				return v, b
			}
		}
	}
	return "", ""
}

// Drops finds the flows that a forward base chain outside our own table
// drops. Every table's forward chains see every forwarded packet, and a
// drop in any of them is final whatever our table accepts.
func Drops(chains []Chain, flows []Flow, ourTable string, v4, v6 bool) []Drop {
	byTable := map[string]map[string]*Chain{}
	for i := range chains {
		c := &chains[i]
		key := c.View + "|" + c.Family + "|" + c.Table
		if byTable[key] == nil {
			byTable[key] = map[string]*Chain{}
		}
		byTable[key][c.Name] = c
	}
	var out []Drop
	for i := range chains {
		c := &chains[i]
		if c.Hook != "forward" || (c.Family == "inet" && c.Table == ourTable) {
			continue
		}
		switch c.Family {
		case "ip":
			if !v4 {
				continue
			}
		case "ip6":
			if !v6 {
				continue
			}
		case "inet":
		default:
			continue // bridge and netdev chains see bridged frames, not routed packets
		}
		for _, f := range flows {
			v, by := decide(byTable[c.View+"|"+c.Family+"|"+c.Table], c, f, 0)
			if v == "" && c.Policy == "drop" {
				v, by = "drop", "policy drop"
			}
			if v == "drop" {
				out = append(out, Drop{Flow: f, Chain: *c, By: by})
			}
		}
	}
	return out
}

// Flows are the kinds of packet the overlay forwards, for new
// connections: containers to other nodes, other nodes to containers, and
// containers to the outside through the default route's interface.
func Flows(s protocol.StatusSnapshot, underlay string) []Flow {
	var out []Flow
	for _, svc := range s.Services {
		if svc.Bridge == "" {
			continue
		}
		if s.Interface != "" {
			out = append(out,
				Flow{In: svc.Bridge, Out: s.Interface, What: "containers of " + svc.Service + " to other nodes"},
				Flow{In: s.Interface, Out: svc.Bridge, What: "other nodes to containers of " + svc.Service})
		}
		if underlay != "" {
			out = append(out, Flow{In: svc.Bridge, Out: underlay, What: "containers of " + svc.Service + " to the outside"})
		}
	}
	return out
}

// ForwardFirewall: no forward chain outside our table — a FORWARD policy
// of DROP as Docker sets it, or a rule — drops what our bridges forward.
// Both views are read: nftables (native tables and iptables-nft) and
// iptables-legacy, which nftables cannot see. Read-only: the fix is the
// operator's to apply.
func ForwardFirewall(h Host, s protocol.StatusSnapshot) Result {
	r := Result{Check: "firewall"}
	v4, v6 := families(s)
	var underlay string
	if dev, err := h.DefaultRouteDevice(v6 && !v4); err == nil {
		underlay = dev
	}
	flows := Flows(s, underlay)
	if len(flows) == 0 {
		r.Status, r.Message = OK, "no service bridges yet: nothing of ours is forwarded"
		return r
	}
	chains, views, unread := readChains(h, v4, v6)
	if unread != nil {
		return *unread
	}
	table := "zlayer_overlay"
	if s.Firewall != nil && s.Firewall.Table != "" {
		table = s.Firewall.Table
	}
	drops := Drops(chains, flows, table, v4, v6)
	if len(drops) == 0 {
		r.Status = OK
		r.Message = fmt.Sprintf("no forward chain outside table inet %s drops our traffic (%s read)", table, strings.Join(dedupe(views), ", "))
		return r
	}
	var policy bool
	r.Status = Fail
	r.Message, policy = describeDrops(drops)
	r.Fix = fixForDrops(chains, drops, policy)
	return r
}

// readChains reads every base chain the kernel evaluates: nftables (which
// shows iptables-nft too) and, per family in use, iptables-legacy. views
// names what was read; unread is the check's result when something could
// not be.
func readChains(h Host, v4, v6 bool) (chains []Chain, views []string, unread *Result) {
	r := Result{Check: "firewall"}
	chains, err := h.NFTables()
	if errors.Is(err, ErrUnsupported) {
		r.Status, r.Message = Skip, "cannot read netfilter on this platform"
		return nil, nil, &r
	}
	if err != nil {
		r.Status, r.Message = Fail, "cannot read nftables: "+err.Error()
		r.Fix = "run overlayctl doctor as root"
		return nil, nil, &r
	}
	views = []string{"nftables"}
	for _, fam := range []struct {
		need, v6 bool
	}{{v4, false}, {v6, true}} {
		if !fam.need {
			continue
		}
		legacy, err := h.LegacyIPTables(fam.v6)
		if err != nil {
			r.Status, r.Message = Warn, "cannot read iptables-legacy rules: "+err.Error()
			r.Fix = "install iptables (iptables-legacy-save) so the doctor can read them, or check `iptables-legacy -S FORWARD` by hand"
			return nil, nil, &r
		}
		if len(legacy) > 0 {
			chains = append(chains, legacy...)
			views = append(views, "iptables-legacy")
		}
	}
	return chains, views, nil
}

// describeDrops says where each flow is dropped, once per distinct message,
// and whether a chain's policy (rather than a rule) is among the droppers.
func describeDrops(drops []Drop) (msg string, policy bool) {
	var msgs []string
	seen := map[string]bool{}
	for _, d := range drops {
		where := fmt.Sprintf("%s table %s %s chain %s", d.Chain.View, d.Chain.Family, d.Chain.Table, d.Chain.Name)
		how := "by its policy DROP"
		if d.By != "policy drop" {
			how = "by rule `" + d.By + "`"
		} else {
			policy = true
		}
		m := fmt.Sprintf("%s drops %s (%s → %s) %s", where, d.Flow.What, d.Flow.In, d.Flow.Out, how)
		if !seen[m] {
			seen[m] = true
			msgs = append(msgs, m)
		}
	}
	return strings.Join(msgs, "; "), policy
}

// fixForDrops is the command that lets our traffic through the first
// dropping chain, in the tool that owns it; with Docker present, in the
// chain Docker leaves to the user.
func fixForDrops(chains []Chain, drops []Drop, policy bool) string {
	first := drops[0].Chain
	if first.View == "nftables" && first.Name != "FORWARD" {
		return fmt.Sprintf("add accept rules for iifname \"zl-*\" to %s %s chain %s before the drop (zlayer-overlayd never edits tables it does not own)", first.Family, first.Table, first.Name)
	}
	docker := slices.ContainsFunc(chains, func(c Chain) bool { return strings.HasPrefix(c.Name, "DOCKER") })
	cmd := "iptables"
	if first.View == "iptables-legacy" {
		cmd = "iptables-legacy"
	}
	chain := first.Name
	if docker {
		chain = "DOCKER-USER"
	}
	fix := fmt.Sprintf("allow our interfaces in that chain (zlayer-overlayd never edits tables it does not own): %s -I %s -i zl-+ -j ACCEPT && %s -I %s -o zl-+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", cmd, chain, cmd, chain)
	if docker {
		fix += " (Docker sets FORWARD's policy to DROP and leaves DOCKER-USER to you)"
	} else if policy {
		fix += "; or, if nothing needs it, " + cmd + " -P " + first.Name + " ACCEPT"
	}
	return fix
}
