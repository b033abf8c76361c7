package enginetest

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
)

// Link is one network link of a Net.
type Link struct {
	Kind   string // "bridge", "veth", "tun" or "wireguard"
	Alias  string
	Master string
	Up     bool
	MTU    int
	Addrs  []netip.Prefix
	// Spec is what created a veth; nil for other links.
	Spec *linuxnet.AttachSpec
}

func (l *Link) clone() Link {
	c := *l
	c.Addrs = slices.Clone(l.Addrs)
	if l.Spec != nil {
		spec := *l.Spec
		c.Spec = &spec
	}
	return c
}

// Net is the host's network stack in memory: links with their addresses
// and routes. It implements the engine's Network.
type Net struct {
	mu     sync.Mutex
	links  map[string]*Link
	routes map[string][]linuxnet.Route
	// failAttach, when set, makes Attach fail for the specs it returns
	// an error for.
	failAttach func(linuxnet.AttachSpec) error
	attaches   int
	// onDetach, when set, runs before a veth is deleted, without the
	// network locked.
	onDetach func(name string)
	// onBridgeCreated, when set, runs between a new bridge's creation and
	// its labelling, without the network locked.
	onBridgeCreated func(name string)
}

// NewNet returns a network without links.
func NewNet() *Net {
	return &Net{links: map[string]*Link{}, routes: map[string][]linuxnet.Route{}}
}

func (n *Net) link(name string) (*Link, error) {
	l := n.links[name]
	if l == nil {
		return nil, fmt.Errorf("no link named %s exists", name)
	}
	return l, nil
}

// EnsureBridge creates a bridge unlabelled and labels it in a second step,
// as the kernel makes linuxnet do; OnBridgeCreated runs in between.
func (n *Net) EnsureBridge(s linuxnet.BridgeSpec) error {
	n.mu.Lock()
	l := n.links[s.Name]
	if l == nil {
		l = &Link{Kind: "bridge"}
		n.links[s.Name] = l
		if hook := n.onBridgeCreated; hook != nil {
			n.mu.Unlock()
			hook(s.Name)
			n.mu.Lock()
			if l = n.links[s.Name]; l == nil {
				n.mu.Unlock()
				return fmt.Errorf("ensure bridge %s: label: no link named %s exists", s.Name, s.Name)
			}
		}
	} else if l.Kind != "bridge" {
		n.mu.Unlock()
		return fmt.Errorf("%s is a %s", s.Name, l.Kind)
	}
	defer n.mu.Unlock()
	l.Addrs, l.MTU, l.Up = append([]netip.Prefix{s.Gateway}, s.Extra...), s.MTU, true
	if s.Alias != "" {
		l.Alias = s.Alias
	}
	return nil
}

func (n *Net) DeleteLink(name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.deleteLocked(name)
	return nil
}

func (n *Net) deleteLocked(name string) {
	delete(n.links, name)
	delete(n.routes, name)
	for _, l := range n.links {
		if l.Master == name {
			l.Master = ""
		}
	}
}

func (n *Net) LinkExists(name string) (bool, error) { return n.Has(name), nil }

// change runs f on the link called name, with the network locked.
func (n *Net) change(name string, f func(*Link)) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	l, err := n.link(name)
	if err == nil {
		f(l)
	}
	return err
}

func (n *Net) SetUp(name string) error {
	return n.change(name, func(l *Link) { l.Up = true })
}

func (n *Net) SetMTU(name string, mtu int) error {
	return n.change(name, func(l *Link) { l.MTU = mtu })
}

func (n *Net) SetAlias(name, alias string) error {
	return n.change(name, func(l *Link) { l.Alias = alias })
}

func (n *Net) EnsureAddrs(name string, want []netip.Prefix) error {
	want = slices.Clone(want)
	return n.change(name, func(l *Link) { l.Addrs = want })
}

func (n *Net) EnsureRoute(r linuxnet.Route) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, err := n.link(r.Dev); err != nil {
		return err
	}
	if !slices.ContainsFunc(n.routes[r.Dev], func(x linuxnet.Route) bool { return x.Dst == r.Dst }) {
		n.routes[r.Dev] = append(n.routes[r.Dev], r)
	}
	return nil
}

func (n *Net) DeleteRoute(r linuxnet.Route) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.routes[r.Dev] = slices.DeleteFunc(n.routes[r.Dev], func(x linuxnet.Route) bool { return x.Dst == r.Dst })
	return nil
}

func (n *Net) Routes(dev string) ([]linuxnet.Route, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.routes[dev]), nil
}

func (n *Net) Links(prefix string) ([]linuxnet.LinkInfo, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []linuxnet.LinkInfo
	for name, l := range n.links {
		if strings.HasPrefix(name, prefix) {
			out = append(out, linuxnet.LinkInfo{Name: name, Kind: l.Kind, Master: l.Master, Up: l.Up, MTU: l.MTU, Alias: l.Alias})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Attach creates the host end of a container's veth pair. Attaching the
// same address to the same process again changes nothing, like the real
// one, so a test can tell a repair from a no-op by Attaches.
func (n *Net) Attach(s linuxnet.AttachSpec) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.attaches++
	if n.failAttach != nil {
		if err := n.failAttach(s); err != nil {
			return err
		}
	}
	if s.Bridge != "" {
		if _, err := n.link(s.Bridge); err != nil {
			return fmt.Errorf("bridge: %w", err)
		}
	}
	if l := n.links[s.HostName]; l != nil {
		if l.Kind != "veth" {
			return fmt.Errorf("%s is a %s", s.HostName, l.Kind)
		}
		if l.Spec != nil && l.Spec.Addr == s.Addr && l.Spec.PID == s.PID && l.Spec.NetnsPath == s.NetnsPath && l.Spec.NetnsInode == s.NetnsInode {
			return nil
		}
	}
	spec := s
	n.links[s.HostName] = &Link{Kind: "veth", Alias: s.HostAlias, Master: s.Bridge, Up: true, MTU: s.MTU, Spec: &spec}
	if s.HostRoute {
		n.routes[s.HostName] = []linuxnet.Route{{Dst: netip.PrefixFrom(s.Addr.Addr(), s.Addr.Addr().BitLen()), Dev: s.HostName, Src: s.HostRouteSrc}}
	}
	return nil
}

func (n *Net) Detach(name string) error {
	n.mu.Lock()
	hook := n.onDetach
	n.mu.Unlock()
	if hook != nil {
		hook(name)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if l := n.links[name]; l != nil && l.Kind != "veth" {
		return fmt.Errorf("%s is not a veth", name)
	}
	n.deleteLocked(name)
	return nil
}

// Link returns a copy of the link called name.
func (n *Net) Link(name string) (Link, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	l := n.links[name]
	if l == nil {
		return Link{}, false
	}
	return l.clone(), true
}

// Has says whether a link called name exists.
func (n *Net) Has(name string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.links[name] != nil
}

// AddLink puts a link into the network behind the engine's back, the way
// another program or an interrupted attach would leave one.
func (n *Net) AddLink(name string, l Link) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := l.clone()
	n.links[name] = &c
}

// Veths returns the names of all veth links, sorted.
func (n *Net) Veths() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for name, l := range n.links {
		if l.Kind == "veth" {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// KillContainer simulates a container's death: its veths vanish with its
// namespace.
func (n *Net) KillContainer(pid int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, l := range n.links {
		if l.Kind == "veth" && l.Spec != nil && l.Spec.PID == pid {
			n.deleteLocked(name)
		}
	}
}

// DeleteNetns simulates a runtime deleting a network namespace given by
// its file: the veths attached through that path vanish with it. (The file
// itself is Procs' business: see Procs.DeleteNetns.)
func (n *Net) DeleteNetns(path string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, l := range n.links {
		if l.Kind == "veth" && l.Spec != nil && l.Spec.NetnsPath == path {
			n.deleteLocked(name)
		}
	}
}

// Attaches counts Attach calls, failed ones included.
func (n *Net) Attaches() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.attaches
}

// FailAttach makes Attach return the error fail returns for a spec (nil
// lets it through); a nil fail ends the injection. fail runs with the
// network locked, so it must not call back into it.
func (n *Net) FailAttach(fail func(linuxnet.AttachSpec) error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.failAttach = fail
}

// OnDetach makes every Detach run hook first (nil ends it), so a test can
// hold a veth alive, the way the kernel takes its time deleting one.
func (n *Net) OnDetach(hook func(name string)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.onDetach = hook
}

// OnBridgeCreated makes every bridge creation run hook after the bridge
// exists and before it is labelled (nil ends it): the moment a crash or a
// concurrent pass sees an unlabelled bridge of ours.
func (n *Net) OnBridgeCreated(hook func(name string)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.onBridgeCreated = hook
}

// Holding reports which links carry address a: the bridges and devices
// with it among their addresses, and the veths whose container end has it.
func (n *Net) Holding(a netip.Addr) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for name, l := range n.links {
		held := slices.ContainsFunc(l.Addrs, func(p netip.Prefix) bool { return p.Addr() == a })
		if l.Spec != nil && l.Spec.Addr.Addr() == a {
			held = true
		}
		if held {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}
