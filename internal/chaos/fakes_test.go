//go:build linux

package chaos

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

// Minimal in-memory stand-ins for the kernel, so the in-process load suite
// drives the real engine through every op (devices, bridges, veths,
// routes) under the race detector without root. They keep just enough
// state for the engine's reads to see its own writes.

type memLink struct {
	kind, alias, master string
	pid                 int
}

type memNet struct {
	mu     sync.Mutex
	links  map[string]*memLink
	routes map[string][]linuxnet.Route
}

func newMemNet() *memNet {
	return &memNet{links: map[string]*memLink{}, routes: map[string][]linuxnet.Route{}}
}

func (n *memNet) EnsureBridge(s linuxnet.BridgeSpec) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if l := n.links[s.Name]; l != nil && l.kind != "bridge" {
		return fmt.Errorf("%s is a %s", s.Name, l.kind)
	}
	n.links[s.Name] = &memLink{kind: "bridge", alias: s.Alias}
	return nil
}

func (n *memNet) DeleteLink(name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.links, name)
	delete(n.routes, name)
	return nil
}

func (n *memNet) LinkExists(name string) (bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.links[name] != nil, nil
}

func (n *memNet) exists(name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.links[name] == nil {
		return fmt.Errorf("no link %s", name)
	}
	return nil
}

func (n *memNet) SetUp(name string) error                         { return n.exists(name) }
func (n *memNet) SetMTU(name string, _ int) error                 { return n.exists(name) }
func (n *memNet) EnsureAddrs(name string, _ []netip.Prefix) error { return n.exists(name) }

func (n *memNet) SetAlias(name, alias string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	l := n.links[name]
	if l == nil {
		return fmt.Errorf("no link %s", name)
	}
	l.alias = alias
	return nil
}

func (n *memNet) EnsureRoute(r linuxnet.Route) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.links[r.Dev] == nil {
		return fmt.Errorf("no link %s", r.Dev)
	}
	if !slices.ContainsFunc(n.routes[r.Dev], func(x linuxnet.Route) bool { return x.Dst == r.Dst }) {
		n.routes[r.Dev] = append(n.routes[r.Dev], r)
	}
	return nil
}

func (n *memNet) DeleteRoute(r linuxnet.Route) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.routes[r.Dev] = slices.DeleteFunc(n.routes[r.Dev], func(x linuxnet.Route) bool { return x.Dst == r.Dst })
	return nil
}

func (n *memNet) Routes(dev string) ([]linuxnet.Route, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.routes[dev]), nil
}

func (n *memNet) Links(prefix string) ([]linuxnet.LinkInfo, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []linuxnet.LinkInfo
	for name, l := range n.links {
		if strings.HasPrefix(name, prefix) {
			out = append(out, linuxnet.LinkInfo{Name: name, Kind: l.kind, Master: l.master, Up: true, Alias: l.alias})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (n *memNet) Attach(s linuxnet.AttachSpec) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s.Bridge != "" && n.links[s.Bridge] == nil {
		return fmt.Errorf("bridge %s does not exist", s.Bridge)
	}
	n.links[s.HostName] = &memLink{kind: "veth", alias: s.HostAlias, master: s.Bridge, pid: s.PID}
	if s.HostRoute {
		n.routes[s.HostName] = []linuxnet.Route{{Dst: netip.PrefixFrom(s.Addr.Addr(), s.Addr.Addr().BitLen()), Dev: s.HostName, Src: s.HostRouteSrc}}
	}
	return nil
}

func (n *memNet) Detach(name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if l := n.links[name]; l != nil && l.kind != "veth" {
		return fmt.Errorf("%s is not a veth", name)
	}
	delete(n.links, name)
	delete(n.routes, name)
	return nil
}

// memWG is a WireGuard backend whose devices are maps.
type memWG struct{ net *memNet }

func (b memWG) Kind() string { return "memory" }

func (b memWG) Open(name string, _ wg.Options) (wg.Device, error) {
	b.net.mu.Lock()
	b.net.links[name] = &memLink{kind: "wireguard"}
	b.net.mu.Unlock()
	return &memDevice{net: b.net, name: name, peers: map[wgtypes.Key]*wgtypes.Peer{}}, nil
}

type memDevice struct {
	net    *memNet
	name   string
	mu     sync.Mutex
	key    wgtypes.Key
	port   int
	peers  map[wgtypes.Key]*wgtypes.Peer
	closed bool
}

func (d *memDevice) Name() string { return d.name }
func (d *memDevice) Kind() string { return wg.KindUserspace }

func (d *memDevice) Configure(c wgtypes.Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("device closed")
	}
	if c.PrivateKey != nil {
		d.key = *c.PrivateKey
	}
	if c.ListenPort != nil {
		d.port = *c.ListenPort
	}
	keep := map[wgtypes.Key]bool{}
	for _, pc := range c.Peers {
		keep[pc.PublicKey] = true
		if pc.Remove {
			delete(d.peers, pc.PublicKey)
			continue
		}
		p := d.peers[pc.PublicKey]
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

func (d *memDevice) Snapshot() (*wgtypes.Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dev := &wgtypes.Device{Name: d.name, PrivateKey: d.key, PublicKey: d.key.PublicKey(), ListenPort: d.port}
	for _, p := range d.peers {
		dev.Peers = append(dev.Peers, *p)
	}
	sort.Slice(dev.Peers, func(i, j int) bool { return dev.Peers[i].PublicKey.String() < dev.Peers[j].PublicKey.String() })
	return dev, nil
}

func (d *memDevice) Close() error {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	return d.net.DeleteLink(d.name)
}

// memProcs are container processes: every PID in the live set exists.
type memProcs struct {
	mu   sync.Mutex
	live map[int]uint64
}

func newMemProcs() *memProcs { return &memProcs{live: map[int]uint64{}} }

func (p *memProcs) start(pid int) {
	p.mu.Lock()
	p.live[pid] = uint64(time.Now().UnixNano())
	p.mu.Unlock()
}

func (p *memProcs) StartTime(pid int) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st, ok := p.live[pid]; ok {
		return st, nil
	}
	return 0, fmt.Errorf("process %d: %w", pid, fs.ErrNotExist)
}

func (p *memProcs) NetnsInode(pid int) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.live[pid]; ok {
		return uint64(4026531000 + pid), nil
	}
	return 0, fmt.Errorf("process %d: %w", pid, fs.ErrNotExist)
}
