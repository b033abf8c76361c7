//go:build linux || darwin || windows || freebsd || openbsd

package wg

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

type userspaceBackend struct{}

func newUserspaceBackend() (Backend, error) { return userspaceBackend{}, nil }

func (userspaceBackend) Kind() string { return KindUserspace }

// Open creates a TUN device named name and runs wireguard-go on it. A
// userspace device cannot outlive the process that created it (its TUN goes
// away with the file descriptor), so after a restart there is nothing to
// adopt: Open creates it again. A link of that name that already exists
// belongs to someone else and is never touched.
func (userspaceBackend) Open(name string, opts Options) (Device, error) {
	return openUserspace(name, opts, nil)
}

// openUserspace is Open. A data plane process, whose TUN outlives the
// daemon that asked for it, passes detached: its TUN gets the owner's
// label before anything can reach the device, and then detached says
// whether the device may be served at all (RunDataplane: not once the
// daemon that started it is gone). nil for a device inside the daemon.
func openUserspace(name string, opts Options, detached func() error) (Device, error) {
	if err := validateName(name); err != nil {
		return nil, err
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	log := opts.Logger.With("device", name, "backend", KindUserspace)
	tdev, systemName, err := takeTUN(name, opts, detached, log)
	if err != nil {
		return nil, err
	}
	bind := opts.Bind
	if bind == nil {
		bind = conn.NewDefaultBind()
	}
	d, err := startUserspace(name, tdev, bind, log)
	if err != nil {
		return nil, err
	}
	ln, errSources, err := listenUAPI(name)
	if err != nil {
		d.Close()
		return nil, err
	}
	d.serveUAPI(ln, errSources)
	unpublish, err := publishSystemName(name, systemName)
	if err != nil {
		d.Close()
		return nil, err
	}
	d.unpublish = unpublish
	// A batch size above 1 means wireguard-go negotiated the TUN's
	// virtio-net header, i.e. TSO/GSO and GRO offloads are on.
	log.Info("wireguard device created", "name", name, "interface", systemName, "mtu", opts.MTU, "tun_batch_size", tdev.BatchSize())
	return d, nil
}

// takeTUN creates the TUN of name once nothing else owns the name, and,
// for a data plane process (detached), labels it and asks detached
// whether to go on. On error nothing of it is left.
func takeTUN(name string, opts Options, detached func() error, log *slog.Logger) (tun.Device, string, error) {
	// Both checks come before the TUN exists: a live socket means another
	// process owns the name (possibly in another network namespace, since
	// UAPI sockets live in the filesystem), and TUNSETIFF on an existing
	// persistent TUN would silently attach to it.
	if err := freeUAPI(name, log); err != nil {
		return nil, "", err
	}
	if err := checkLinkFree(name); err != nil {
		return nil, "", err
	}
	tdev, err := createTUN(name, opts.MTU)
	if err != nil {
		return nil, "", fmt.Errorf("create TUN device %q for wireguard: %w (%s)", name, err, tunHint)
	}
	// The device keeps the caller's name on every platform; where the
	// kernel picks the interface name itself (darwin's utunN), the
	// mapping is published for the network package to follow.
	systemName, err := tdev.Name()
	if err != nil {
		tdev.Close()
		return nil, "", fmt.Errorf("read the name of TUN device %q: %w", name, err)
	}
	if detached == nil {
		return tdev, systemName, nil
	}
	if opts.Owner != "" {
		if err := setLinkLabel(systemName, label(name, opts.Owner)); err != nil {
			tdev.Close()
			return nil, "", fmt.Errorf("label TUN device %q as ours: %w", name, err)
		}
	}
	if err := detached(); err != nil {
		tdev.Close()
		return nil, "", err
	}
	return tdev, systemName, nil
}

// userspaceDevice is wireguard-go on a TUN, configured in-process.
type userspaceDevice struct {
	name string
	dev  *device.Device
	log  *slog.Logger

	// configMu makes read-plan-apply in Configure one step with respect to
	// other Configure calls. wg(8) can still interleave; that is its right.
	configMu sync.Mutex
	closed   atomic.Bool
	close    sync.Once

	closeListener func() error // nil when no UAPI listener is published
	unpublish     func()       // forgets the name the OS gave the interface; nil until published
	uapiDone      chan struct{}
	connsMu       sync.Mutex
	conns         map[net.Conn]struct{}
	connsWG       sync.WaitGroup
	// requests counts the UAPI connections served: the data plane trims
	// its heap once they stop (heapTrim).
	requests atomic.Uint64
}

// startUserspace runs wireguard-go on tdev and brings the device up. On
// failure tdev is closed.
func startUserspace(name string, tdev tun.Device, bind conn.Bind, log *slog.Logger) (*userspaceDevice, error) {
	dev := device.NewDevice(tdev, bind, wireguardLogger(log))
	// wireguard-go then follows the link's state: it goes down while the
	// link is down and comes back up with it, so the caller's "link up" is
	// what finally starts the packet flow.
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("start wireguard device %q: %w", name, err)
	}
	return &userspaceDevice{name: name, dev: dev, log: log, conns: make(map[net.Conn]struct{})}, nil
}

func (d *userspaceDevice) Name() string { return d.name }
func (d *userspaceDevice) Kind() string { return KindUserspace }

func (d *userspaceDevice) Configure(cfg wgtypes.Config) error {
	if d.closed.Load() {
		return fmt.Errorf("configure wireguard device %q: %w", d.name, net.ErrClosed)
	}
	d.configMu.Lock()
	defer d.configMu.Unlock()
	if needsCurrent(cfg) {
		cur, err := d.get()
		if err != nil {
			return fmt.Errorf("configure wireguard device %q: %w", d.name, err)
		}
		cfg = planConfig(cfg, cur)
	}
	body, err := encodeUAPISet(cfg)
	if err != nil {
		return fmt.Errorf("configure wireguard device %q: %w", d.name, err)
	}
	if err := d.dev.IpcSetOperation(bytes.NewReader(body)); err != nil {
		return fmt.Errorf("configure wireguard device %q: %w", d.name, err)
	}
	return nil
}

func (d *userspaceDevice) Snapshot() (*wgtypes.Device, error) {
	if d.closed.Load() {
		return nil, fmt.Errorf("read wireguard device %q: %w", d.name, net.ErrClosed)
	}
	dev, err := d.get()
	if err != nil {
		return nil, fmt.Errorf("read wireguard device %q: %w", d.name, err)
	}
	sortPeers(dev.Peers)
	return dev, nil
}

var getBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (d *userspaceDevice) get() (*wgtypes.Device, error) {
	buf := getBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	defer getBuffers.Put(buf)
	if err := d.dev.IpcGetOperation(buf); err != nil {
		return nil, err
	}
	dev, err := parseUAPIGet(buf.Bytes())
	if err != nil {
		return nil, err
	}
	dev.Name = d.name
	dev.Type = wgtypes.Userspace
	return dev, nil
}

// serveUAPI answers wg(8) on ln. errSources is how many of ln's internal
// goroutines report a terminal error through Accept (see listenUAPI): the
// loop receives every one of them, so that none is left blocked forever on
// a full channel after Close.
func (d *userspaceDevice) serveUAPI(ln net.Listener, errSources int) {
	d.closeListener = sync.OnceValue(ln.Close)
	d.uapiDone = make(chan struct{})
	go func() {
		defer close(d.uapiDone)
		for seen := 0; seen < errSources; {
			c, err := ln.Accept()
			if err != nil {
				seen++
				if !d.closed.Load() && seen == 1 {
					d.log.Warn("UAPI socket stopped; wg(8) can no longer reach this device until it is recreated", "err", err)
				}
				// Closing stops the other goroutines, so their errors
				// arrive and the loop can end.
				d.closeListener()
				continue
			}
			d.requests.Add(1)
			d.connsMu.Lock()
			d.conns[c] = struct{}{}
			d.connsWG.Add(1)
			d.connsMu.Unlock()
			go func() {
				defer func() {
					d.connsMu.Lock()
					delete(d.conns, c)
					d.connsMu.Unlock()
					d.connsWG.Done()
				}()
				d.dev.IpcHandle(c)
			}()
		}
	}()
}

// serving is how many UAPI connections are open: requests still being
// answered.
func (d *userspaceDevice) serving() int {
	d.connsMu.Lock()
	defer d.connsMu.Unlock()
	return len(d.conns)
}

// Close tears the device down. The UAPI socket goes first so that wg(8)
// never talks to a half-closed device; closing wireguard-go closes the TUN,
// which removes the link, and waits for its goroutines.
func (d *userspaceDevice) Close() error {
	d.close.Do(func() {
		d.closed.Store(true)
		if d.closeListener != nil {
			// ipc's listener can report a harmless race between its own
			// deletion watcher and Close; the socket is closed either way.
			if err := d.closeListener(); err != nil {
				d.log.Debug("closing the UAPI socket reported an error", "err", err)
			}
			<-d.uapiDone
			d.connsMu.Lock()
			for c := range d.conns {
				c.Close()
			}
			d.connsMu.Unlock()
			d.connsWG.Wait()
		}
		d.dev.Close()
		if d.unpublish != nil {
			d.unpublish()
		}
		d.log.Info("wireguard device closed")
	})
	return nil
}

// wireguardLogger routes wireguard-go's log into slog. Its "errors" are
// mostly about unreachable peers and dropped packets, which are warnings
// for a daemon; its verbose log is only formatted when debug is on.
func wireguardLogger(log *slog.Logger) *device.Logger {
	l := &device.Logger{
		Verbosef: device.DiscardLogf,
		Errorf: func(format string, args ...any) {
			log.Warn("wireguard-go", "detail", fmt.Sprintf(format, args...))
		},
	}
	if log.Enabled(context.Background(), slog.LevelDebug) {
		l.Verbosef = func(format string, args ...any) {
			log.Debug("wireguard-go", "detail", fmt.Sprintf(format, args...))
		}
	}
	return l
}
