package enginetest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// WG is a WireGuard backend whose devices live in memory, each with a link
// in a Net. It implements wg.Backend.
type WG struct {
	net  *Net
	kind string
	mu   sync.Mutex
	devs map[string]*Device
}

// NewWG returns a backend whose devices get their links in n. kind is
// wg.KindKernel or wg.KindUserspace and matters: the engine closes
// userspace devices when it stops (they die with the process), kernel ones
// outlive it.
func NewWG(n *Net, kind string) *WG {
	return &WG{net: n, kind: kind, devs: map[string]*Device{}}
}

func (b *WG) Kind() string { return b.kind }

// Open creates a device and its link. A name that is already open is
// refused, as the kernel refuses a second TUN or wireguard link of a name.
func (b *WG) Open(name string, opts wg.Options) (wg.Device, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.devs[name] != nil {
		return nil, fmt.Errorf("device %s is already open", name)
	}
	if b.kind == wg.KindKernel && opts.Bind != nil {
		// As the real kernel backend: the kernel owns the UDP socket.
		return nil, fmt.Errorf("kernel wireguard device %q cannot use a custom Bind: %w", name, wg.ErrOwnBind)
	}
	d := &Device{backend: b, name: name, peers: map[wgtypes.Key]*wgtypes.Peer{}, owner: map[string]wgtypes.Key{}}
	b.devs[name] = d
	kind := "wireguard"
	if b.kind == wg.KindUserspace {
		kind = "tun"
	}
	b.net.AddLink(name, Link{Kind: kind, MTU: opts.MTU})
	return d, nil
}

// Device returns the open device called name, or nil.
func (b *WG) Device(name string) *Device {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.devs[name]
}

// Devices returns the open devices, sorted by name.
func (b *WG) Devices() []*Device {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]*Device, 0, len(b.devs))
	for _, d := range b.devs {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// Device is one WireGuard device of a WG. It implements wg.Device.
type Device struct {
	backend *WG
	name    string
	mu      sync.Mutex
	key     wgtypes.Key
	port    int
	peers   map[wgtypes.Key]*wgtypes.Peer
	// owner is the allowed-IPs table: prefix -> the one peer holding it.
	owner  map[string]wgtypes.Key
	closed bool
	// writes counts the peer entries Configure was given: what a real
	// device would act on (an existing peer listed again has its allowed
	// IPs removed and re-inserted when ReplaceAllowedIPs is set, or when
	// the peer is listed through ReplacePeers).
	writes int
}

func (d *Device) Name() string { return d.name }
func (d *Device) Kind() string { return d.backend.kind }

// Configure applies c with the semantics of wgctrl: peers are upserted in
// place, so a peer that stays keeps its record (and its handshake and
// counters).
func (d *Device) Configure(c wgtypes.Config) error {
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
	d.writes += len(c.Peers)
	keep := map[wgtypes.Key]bool{}
	for _, pc := range c.Peers {
		keep[pc.PublicKey] = true
		if pc.Remove {
			if p := d.peers[pc.PublicKey]; p != nil {
				d.release(p)
			}
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
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if pc.ReplaceAllowedIPs {
			d.release(p)
			p.AllowedIPs = nil
		}
		for _, n := range pc.AllowedIPs {
			d.claim(p, n)
		}
	}
	if c.ReplacePeers {
		for k, p := range d.peers {
			if !keep[k] {
				d.release(p)
				delete(d.peers, k)
			}
		}
	}
	return nil
}

// claim gives prefix n to peer p, as WireGuard's allowed-IPs table does:
// a prefix belongs to one peer, the last that was given it, so any other
// peer holding it loses it. Called with d.mu held.
func (d *Device) claim(p *wgtypes.Peer, n net.IPNet) {
	key := n.String()
	if was, ok := d.owner[key]; ok {
		if o := d.peers[was]; o != nil {
			o.AllowedIPs = slices.DeleteFunc(o.AllowedIPs, func(x net.IPNet) bool { return x.String() == key })
		}
	}
	d.owner[key] = p.PublicKey
	p.AllowedIPs = append(p.AllowedIPs, n)
}

// release forgets the prefixes of a peer that is removed or replaces its
// set. Called with d.mu held.
func (d *Device) release(p *wgtypes.Peer) {
	for _, n := range p.AllowedIPs {
		if d.owner[n.String()] == p.PublicKey {
			delete(d.owner, n.String())
		}
	}
}

func (d *Device) Snapshot() (*wgtypes.Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dev := &wgtypes.Device{Name: d.name, PrivateKey: d.key, PublicKey: d.key.PublicKey(), ListenPort: d.port}
	for _, p := range d.peers {
		c := *p
		c.AllowedIPs = slices.Clone(p.AllowedIPs) // the device's own slice changes under later calls
		dev.Peers = append(dev.Peers, c)
	}
	sort.Slice(dev.Peers, func(i, j int) bool { return dev.Peers[i].PublicKey.String() < dev.Peers[j].PublicKey.String() })
	return dev, nil
}

// Close removes the device and its link; closing twice is harmless.
func (d *Device) Close() error {
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
	return d.backend.net.DeleteLink(d.name)
}

// ListenPort is the device's UDP port.
func (d *Device) ListenPort() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.port
}

// PublicKey is the public half of the device's private key.
func (d *Device) PublicKey() wgtypes.Key {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.key.PublicKey()
}

// PeerCount is the number of peers on the device.
func (d *Device) PeerCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.peers)
}

// Peer returns the device's own record of a peer (nil if it has none), so
// a test can tell an update in place from a remove and re-add by identity.
// Later Configure calls change it: read it only while nothing else uses
// the device.
func (d *Device) Peer(pub wgtypes.Key) *wgtypes.Peer {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.peers[pub]
}

// Handshake pretends the peer completed a handshake at t, from endpoint
// ("address:port") unless endpoint is empty.
func (d *Device) Handshake(pub wgtypes.Key, t time.Time, endpoint string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p := d.peers[pub]; p != nil {
		p.LastHandshakeTime = t
		if endpoint != "" {
			p.Endpoint = net.UDPAddrFromAddrPort(netip.MustParseAddrPort(endpoint))
		}
	}
}

// Receive pretends n bytes arrived from the peer (a keepalive is 32).
func (d *Device) Receive(pub wgtypes.Key, n int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p := d.peers[pub]; p != nil {
		p.ReceiveBytes += n
	}
}

// PeerWrites is how many peer entries Configure has been given so far.
func (d *Device) PeerWrites() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.writes
}

// PeerNow is a copy of the device's record of a peer, taken under its
// lock: safe while the engine keeps using the device.
func (d *Device) PeerNow(pub wgtypes.Key) (wgtypes.Peer, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.peers[pub]
	if p == nil {
		return wgtypes.Peer{}, false
	}
	c := *p
	c.AllowedIPs = slices.Clone(p.AllowedIPs)
	return c, true
}
