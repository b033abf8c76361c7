package wg

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// probeKernel creates and deletes a uniquely named wireguard link: the only
// reliable test, since the module may be built in, loadable or absent, and
// /sys/module tells nothing about permission.
func probeKernel() (Backend, error) {
	var suffix [4]byte
	rand.Read(suffix[:])
	la := netlink.NewLinkAttrs()
	la.Name = "zlprobe" + hex.EncodeToString(suffix[:])
	err := netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: la})
	switch {
	case errors.Is(err, unix.EOPNOTSUPP):
		return nil, errors.New("this kernel has no WireGuard support (creating a probe link of type wireguard failed: operation not supported)")
	case errors.Is(err, unix.EPERM):
		return nil, errors.New("creating a probe wireguard link was not permitted (kernel WireGuard needs CAP_NET_ADMIN)")
	case err != nil:
		return nil, fmt.Errorf("creating a probe wireguard link failed: %w", err)
	}
	if l, err := netlink.LinkByName(la.Name); err == nil {
		netlink.LinkDel(l)
	}
	return kernelBackend{}, nil
}

type kernelBackend struct{}

func (kernelBackend) Kind() string { return KindKernel }

// Open creates a kernel wireguard link, or adopts one this package created
// earlier for the same owner (a kernel device survives our restart, peers,
// sessions and all). An Options.Bind is refused: the kernel owns the UDP
// socket, so whatever the Bind was to carry besides WireGuard (STUN)
// would silently never flow.
func (kernelBackend) Open(name string, opts Options) (Device, error) {
	if err := validateName(name); err != nil {
		return nil, err
	}
	if opts.Bind != nil {
		return nil, fmt.Errorf("kernel wireguard device %q cannot use a custom Bind: %w; run zlayer-overlayd with --wireguard userspace (or auto without --stun-server and --turn-server) to use it", name, ErrOwnBind)
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	log := opts.Logger.With("device", name, "backend", KindKernel)

	created := false
	link, err := netlink.LinkByName(name)
	switch {
	case err == nil:
		if err := checkAdoptable(link, opts.Owner); err != nil {
			return nil, err
		}
		if err := claimBareLabel(link, opts.Owner); err != nil {
			return nil, err
		}
		if link.Attrs().MTU != opts.MTU {
			if err := netlink.LinkSetMTU(link, opts.MTU); err != nil {
				return nil, fmt.Errorf("set MTU %d on adopted wireguard link %q: %w", opts.MTU, name, err)
			}
		}
	case errors.As(err, &netlink.LinkNotFoundError{}):
		la := netlink.NewLinkAttrs()
		la.Name = name
		la.MTU = opts.MTU
		if err := netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: la}); err != nil {
			return nil, fmt.Errorf("create kernel wireguard link %q: %w", name, err)
		}
		created = true
		// The kernel ignores a label given with the link, so it takes a
		// second request; a crash in between leaves an unlabelled link,
		// which no one will adopt (see checkAdoptable).
		if link, err = netlink.LinkByName(name); err == nil {
			err = netlink.LinkSetAlias(link, label(name, opts.Owner))
		}
		if err != nil {
			netlink.LinkDel(&netlink.Wireguard{LinkAttrs: la})
			return nil, fmt.Errorf("mark kernel wireguard link %q as ours: %w", name, err)
		}
	default:
		return nil, fmt.Errorf("look up link %q: %w", name, err)
	}

	client, err := wgctrl.New()
	if err != nil {
		if created {
			netlink.LinkDel(link)
		}
		return nil, fmt.Errorf("open wgctrl for kernel wireguard link %q: %w", name, err)
	}
	if created {
		log.Info("wireguard device created", "mtu", opts.MTU)
	} else {
		log.Info("wireguard device adopted from a previous run", "mtu", opts.MTU)
	}
	return &kernelDevice{name: name, owner: opts.Owner, client: client, log: log}, nil
}

// checkAdoptable accepts an existing link only if it is a wireguard link
// that this package created for owner ("" accepts any zlayer-overlayd
// label). A link labelled with the bare mark is accepted too: an older
// version of the daemon labelled a new device in two steps, the bare mark
// here and its identity afterwards, and a crash between them leaves that;
// the mark says it was ours, and no identity claims it.
func checkAdoptable(link netlink.Link, owner string) error {
	name := link.Attrs().Name
	if link.Type() != "wireguard" {
		return fmt.Errorf("a %s link named %q already exists and is not a wireguard device; refusing to touch it (delete it or choose another name)", link.Type(), name)
	}
	alias := link.Attrs().Alias
	switch {
	case alias == ownerAlias:
		return nil
	case !strings.HasPrefix(alias, ownerAlias+":"):
		return fmt.Errorf("a wireguard link named %q already exists but was not created by zlayer-overlayd (its alias is %q, not %q); refusing to adopt it (delete it or choose another name)", name, alias, label(name, owner))
	case owner != "" && !strings.HasPrefix(alias, owner):
		return fmt.Errorf("a wireguard link named %q belongs to another zlayer-overlayd identity: its label is %q, ours is %q; refusing to adopt it and leaving it untouched (stop the daemon that owns it, or delete the link if that identity is gone)", name, alias, label(name, owner))
	}
	return nil
}

// claimBareLabel writes owner's label on an adopted link that carries only
// the bare mark, so that from now on it is recognisably this identity's.
func claimBareLabel(link netlink.Link, owner string) error {
	if owner == "" || link.Attrs().Alias != ownerAlias {
		return nil
	}
	name := link.Attrs().Name
	if err := netlink.LinkSetAlias(link, label(name, owner)); err != nil {
		return fmt.Errorf("label adopted wireguard link %q as ours: %w", name, err)
	}
	return nil
}

type kernelDevice struct {
	name   string
	owner  string
	log    *slog.Logger
	mu     sync.Mutex // serialises wgctrl use and read-plan-apply in Configure
	client *wgctrl.Client
	closed bool
}

func (d *kernelDevice) Name() string { return d.name }
func (d *kernelDevice) Kind() string { return KindKernel }

func (d *kernelDevice) Configure(cfg wgtypes.Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("configure wireguard device %q: %w", d.name, net.ErrClosed)
	}
	// Validate with the same rules as the userspace backend, so that both
	// reject the same configurations with the same messages.
	if _, err := encodeUAPISet(cfg); err != nil {
		return fmt.Errorf("configure wireguard device %q: %w", d.name, err)
	}
	if needsCurrent(cfg) {
		cur, err := d.client.Device(d.name)
		if err != nil {
			return fmt.Errorf("configure wireguard device %q: %w", d.name, err)
		}
		cfg = planConfig(cfg, cur)
	}
	if err := d.client.ConfigureDevice(d.name, cfg); err != nil {
		return fmt.Errorf("configure wireguard device %q: %w", d.name, err)
	}
	return nil
}

func (d *kernelDevice) Snapshot() (*wgtypes.Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("read wireguard device %q: %w", d.name, net.ErrClosed)
	}
	dev, err := d.client.Device(d.name)
	if err != nil {
		return nil, fmt.Errorf("read wireguard device %q: %w", d.name, err)
	}
	sortPeers(dev.Peers)
	return dev, nil
}

// Close deletes the link, but only while it is still the one we own.
func (d *kernelDevice) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	d.client.Close()
	link, err := netlink.LinkByName(d.name)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up wireguard link %q to delete it: %w", d.name, err)
	}
	if err := checkAdoptable(link, d.owner); err != nil {
		d.log.Warn("not deleting link: it is no longer ours", "err", err)
		return nil
	}
	if err := removeLink(link); err != nil {
		return fmt.Errorf("delete wireguard link %q: %w", d.name, err)
	}
	d.log.Info("wireguard device closed")
	return nil
}
