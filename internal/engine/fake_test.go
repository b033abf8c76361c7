package engine

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// The fakes below stand in for the kernel so the engine's logic (state,
// allocation, persistence, rollback, reconcile) is tested without root.
// The real thing is tested end to end in internal/e2e.

type fakeLink struct {
	kind, alias, master string
	up                  bool
	mtu                 int
	addrs               []netip.Prefix
	spec                *linuxnet.AttachSpec // veths
}

type fakeNet struct {
	mu     sync.Mutex
	links  map[string]*fakeLink
	routes map[string][]linuxnet.Route
	// failAttach, when set, makes Attach fail for specs it returns an
	// error for (failure injection).
	failAttach func(linuxnet.AttachSpec) error
	attaches   int
}

func newFakeNet() *fakeNet {
	return &fakeNet{links: map[string]*fakeLink{}, routes: map[string][]linuxnet.Route{}}
}

func (n *fakeNet) link(name string) (*fakeLink, error) {
	l := n.links[name]
	if l == nil {
		return nil, fmt.Errorf("no link named %s exists", name)
	}
	return l, nil
}

func (n *fakeNet) EnsureBridge(s linuxnet.BridgeSpec) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	l := n.links[s.Name]
	if l == nil {
		l = &fakeLink{kind: "bridge"}
		n.links[s.Name] = l
	} else if l.kind != "bridge" {
		return fmt.Errorf("%s is a %s", s.Name, l.kind)
	}
	l.addrs, l.mtu, l.up = []netip.Prefix{s.Gateway}, s.MTU, true
	if s.Alias != "" {
		l.alias = s.Alias
	}
	return nil
}

func (n *fakeNet) DeleteLink(name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.deleteLocked(name)
	return nil
}

func (n *fakeNet) deleteLocked(name string) {
	delete(n.links, name)
	delete(n.routes, name)
	for _, l := range n.links {
		if l.master == name {
			l.master = ""
		}
	}
}

func (n *fakeNet) LinkExists(name string) (bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.links[name] != nil, nil
}

func (n *fakeNet) SetUp(name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	l, err := n.link(name)
	if err == nil {
		l.up = true
	}
	return err
}

func (n *fakeNet) SetMTU(name string, mtu int) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	l, err := n.link(name)
	if err == nil {
		l.mtu = mtu
	}
	return err
}

func (n *fakeNet) SetAlias(name, alias string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	l, err := n.link(name)
	if err == nil {
		l.alias = alias
	}
	return err
}

func (n *fakeNet) EnsureAddrs(name string, want []netip.Prefix) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	l, err := n.link(name)
	if err == nil {
		l.addrs = slices.Clone(want)
	}
	return err
}

func (n *fakeNet) EnsureRoute(r linuxnet.Route) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, err := n.link(r.Dev); err != nil {
		return err
	}
	rs := n.routes[r.Dev]
	for _, x := range rs {
		if x.Dst == r.Dst {
			return nil
		}
	}
	n.routes[r.Dev] = append(rs, r)
	return nil
}

func (n *fakeNet) DeleteRoute(r linuxnet.Route) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.routes[r.Dev] = slices.DeleteFunc(n.routes[r.Dev], func(x linuxnet.Route) bool { return x.Dst == r.Dst })
	return nil
}

func (n *fakeNet) Routes(dev string) ([]linuxnet.Route, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.routes[dev]), nil
}

func (n *fakeNet) Links(prefix string) ([]linuxnet.LinkInfo, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []linuxnet.LinkInfo
	for name, l := range n.links {
		if strings.HasPrefix(name, prefix) {
			out = append(out, linuxnet.LinkInfo{Name: name, Kind: l.kind, Master: l.master, Up: l.up, MTU: l.mtu, Alias: l.alias})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (n *fakeNet) Attach(s linuxnet.AttachSpec) error {
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
		if l.kind != "veth" {
			return fmt.Errorf("%s is a %s", s.HostName, l.kind)
		}
		if l.spec.Addr == s.Addr && l.spec.PID == s.PID {
			return nil
		}
	}
	spec := s
	n.links[s.HostName] = &fakeLink{kind: "veth", alias: s.HostAlias, master: s.Bridge, up: true, mtu: s.MTU, spec: &spec}
	if s.HostRoute {
		n.routes[s.HostName] = []linuxnet.Route{{Dst: netip.PrefixFrom(s.Addr.Addr(), s.Addr.Addr().BitLen()), Dev: s.HostName}}
	}
	return nil
}

func (n *fakeNet) Detach(name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if l := n.links[name]; l != nil && l.kind != "veth" {
		return fmt.Errorf("%s is not a veth", name)
	}
	n.deleteLocked(name)
	return nil
}

// veths returns the names of all veth links.
func (n *fakeNet) veths() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for name, l := range n.links {
		if l.kind == "veth" {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// killContainer simulates a container's death: its veths vanish with its
// namespace.
func (n *fakeNet) killContainer(pid int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, l := range n.links {
		if l.kind == "veth" && l.spec.PID == pid {
			n.deleteLocked(name)
		}
	}
}

// fakeWG is a WireGuard backend whose devices live in memory and register
// a link with the fake network.
type fakeWG struct {
	net  *fakeNet
	mu   sync.Mutex
	devs map[string]*fakeDevice
}

func newFakeWG(n *fakeNet) *fakeWG { return &fakeWG{net: n, devs: map[string]*fakeDevice{}} }

func (b *fakeWG) Kind() string { return "fake" }

func (b *fakeWG) Open(name string, opts wg.Options) (wg.Device, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.devs[name] != nil {
		return nil, fmt.Errorf("device %s is already open", name)
	}
	d := &fakeDevice{backend: b, name: name, peers: map[wgtypes.Key]*wgtypes.Peer{}}
	b.devs[name] = d
	b.net.mu.Lock()
	b.net.links[name] = &fakeLink{kind: "tun", mtu: opts.MTU}
	b.net.mu.Unlock()
	return d, nil
}

func (b *fakeWG) device(name string) *fakeDevice {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.devs[name]
}

type fakeDevice struct {
	backend *fakeWG
	name    string
	mu      sync.Mutex
	key     wgtypes.Key
	port    int
	peers   map[wgtypes.Key]*wgtypes.Peer
	closed  bool
	// configures counts Configure calls.
	configures int
}

func (d *fakeDevice) Name() string { return d.name }
func (d *fakeDevice) Kind() string { return "fake" }

func (d *fakeDevice) Configure(c wgtypes.Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("device closed")
	}
	d.configures++
	if c.PrivateKey != nil {
		d.key = *c.PrivateKey
	}
	if c.ListenPort != nil {
		d.port = *c.ListenPort
	}
	keep := map[wgtypes.Key]bool{}
	for _, pc := range c.Peers {
		keep[pc.PublicKey] = true
		p := d.peers[pc.PublicKey]
		if pc.Remove {
			delete(d.peers, pc.PublicKey)
			continue
		}
		if p == nil {
			if pc.UpdateOnly {
				continue
			}
			p = &wgtypes.Peer{PublicKey: pc.PublicKey}
			d.peers[pc.PublicKey] = p
		}
		if pc.Endpoint != nil {
			p.Endpoint = pc.Endpoint
		}
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if pc.ReplaceAllowedIPs {
			p.AllowedIPs = nil
		}
		p.AllowedIPs = append(p.AllowedIPs, pc.AllowedIPs...)
	}
	if c.ReplacePeers {
		for k := range d.peers {
			if !keep[k] {
				delete(d.peers, k)
			}
		}
	}
	return nil
}

func (d *fakeDevice) Snapshot() (*wgtypes.Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dev := &wgtypes.Device{Name: d.name, PrivateKey: d.key, PublicKey: d.key.PublicKey(), ListenPort: d.port}
	for _, p := range d.peers {
		dev.Peers = append(dev.Peers, *p)
	}
	sort.Slice(dev.Peers, func(i, j int) bool { return dev.Peers[i].PublicKey.String() < dev.Peers[j].PublicKey.String() })
	return dev, nil
}

// handshake pretends the peer completed a handshake at t from endpoint.
func (d *fakeDevice) handshake(pub wgtypes.Key, t time.Time, endpoint string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p := d.peers[pub]; p != nil {
		p.LastHandshakeTime = t
		if endpoint != "" {
			ap := netip.MustParseAddrPort(endpoint)
			p.Endpoint = udpAddrOf(ap)
		}
	}
}

func (d *fakeDevice) Close() error {
	d.mu.Lock()
	closed := d.closed
	d.closed = true
	d.mu.Unlock()
	if closed {
		return nil
	}
	d.backend.mu.Lock()
	delete(d.backend.devs, d.name)
	d.backend.mu.Unlock()
	d.backend.net.DeleteLink(d.name)
	return nil
}

// fakeProcs are container processes by PID.
type fakeProcs struct {
	mu    sync.Mutex
	procs map[int]procIdentity
	// onStart, when set, runs on every StartTime call (to make a process
	// exit in the middle of an attach).
	onStart func(pid int)
}

func newFakeProcs() *fakeProcs { return &fakeProcs{procs: map[int]procIdentity{}} }

func (p *fakeProcs) add(pid int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.procs[pid] = procIdentity{start: uint64(time.Now().UnixNano()), netns: uint64(4026530000 + pid)}
}

func (p *fakeProcs) kill(pid int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.procs, pid)
}

func (p *fakeProcs) StartTime(pid int) (uint64, error) {
	if p.onStart != nil {
		p.onStart(pid)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	id, ok := p.procs[pid]
	if !ok {
		return 0, fmt.Errorf("process %d: %w", pid, fs.ErrNotExist)
	}
	return id.start, nil
}

func (p *fakeProcs) NetnsInode(pid int) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id, ok := p.procs[pid]
	if !ok {
		return 0, fmt.Errorf("process %d: %w", pid, fs.ErrNotExist)
	}
	return id.netns, nil
}
