// Package wg owns WireGuard devices: it creates (or adopts) one device by
// name, configures its keys and peers with wgctrl semantics, and reports what
// WireGuard itself sees. Two backends implement one interface: the Linux
// kernel module driven through netlink and wgctrl, and embedded wireguard-go
// on a TUN device for kernels without WireGuard (and for darwin and windows).
//
// The package never assigns addresses or routes and never sets a link up: the
// caller does that through its own network package, after Open. A userspace
// device is already running when Open returns (its UDP socket is open and
// peers handshake as soon as they are configured); tunnel packets flow once
// the caller has set the link up, because the kernel routes nothing through
// a link that is down.
//
// Userspace devices publish the standard UAPI socket
// (/var/run/wireguard/NAME.sock, or a named pipe on windows) so that wg(8)
// can show and change them, exactly like a kernel device.
package wg

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"unicode"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Backend kinds, as reported by Backend.Kind and Device.Kind.
const (
	KindKernel    = "kernel"
	KindUserspace = "userspace"
)

// DefaultMTU leaves room for the WireGuard, UDP and outer IPv6 headers on a
// 1500-byte underlay.
const DefaultMTU = 1420

// MTU bounds accepted by Open: the IPv4 minimum reassembly size up to the
// largest packet a TUN or WireGuard message can carry.
const (
	minMTU = 576
	maxMTU = 65535
)

// maxNameLen is IFNAMSIZ minus the terminating NUL on Linux. We apply it on
// every platform so that a name that works somewhere works everywhere.
const maxNameLen = 15

// Backend creates or adopts devices.
type Backend interface {
	// Kind is KindKernel or KindUserspace.
	Kind() string
	// Open creates the device, or adopts an existing device of ours with
	// that name; it never touches a link that is not ours. The caller must
	// assign addresses and set the link up. The device keeps name on
	// every platform (Device.Name, the UAPI socket); on darwin, where the
	// kernel numbers utun interfaces itself, SystemName(name) tells which
	// utunN it is.
	Open(name string, opts Options) (Device, error)
}

// Options tune Open.
type Options struct {
	// MTU of the link; 0 means DefaultMTU.
	MTU int
	// Bind carries WireGuard's UDP traffic (userspace only); nil means
	// conn.NewDefaultBind(). The NAT package passes a Bind that separates
	// STUN replies from WireGuard packets on the listen port.
	Bind conn.Bind
	// Logger receives lifecycle messages and wireguard-go's own log (its
	// verbose log at debug level); nil means slog.Default().
	Logger *slog.Logger
	// Owner is the label prefix of the daemon identity the device
	// belongs to, "zlayer-overlayd:<identity>:" (the engine's link
	// labels). A kernel device outlives the process, so the kernel
	// backend labels a link it creates Owner+"wireguard:"+name and adopts
	// an existing link only when its label starts with Owner: a device of
	// another identity (another state file, a second daemon) is refused
	// and left untouched. Empty means any zlayer-overlayd label is ours,
	// for callers without an identity. The in-process userspace backend
	// ignores it: its TUN dies with the process, so there is nothing to
	// adopt. A detached data plane's TUN outlives the daemon and is
	// labelled like a kernel device.
	Owner string
}

// label is what a link this package creates is labelled: the owner's
// label for a wireguard device named name, or the bare mark without one.
func label(name, owner string) string {
	if owner == "" {
		return ownerAlias
	}
	return owner + "wireguard:" + name
}

// ownerAlias starts the label (IFLA_IFALIAS, shown by "ip link") of every
// link this package creates. A link without it is never adopted or
// deleted, so a link someone else made is never touched.
const ownerAlias = "zlayer-overlayd"

// Device is one WireGuard interface.
type Device interface {
	Name() string
	Kind() string
	// Configure applies cfg with wgctrl semantics. Changing an existing
	// peer's endpoint, keepalive or allowed IPs keeps its session.
	// ReplacePeers leaves exactly the listed peers, each with exactly the
	// listed allowed IPs, keepalive and preshared key, but unlike a plain
	// wgctrl replace it keeps the sessions of peers that stay; an endpoint
	// that is not given is kept, because WireGuard cannot clear one.
	// A ListenPort equal to the current one does not rebind the socket.
	// The whole cfg is validated first: an invalid one changes nothing.
	Configure(cfg wgtypes.Config) error
	// Snapshot returns the device and its peers as WireGuard reports them
	// now: the endpoint in use (learned by roaming), last handshake as an
	// absolute time (zero if never), byte counters. Peers are sorted by
	// public key. The result contains the private key: never log it whole.
	Snapshot() (*wgtypes.Device, error)
	// Close tears the device down: the link, the UAPI socket and every
	// goroutine of the device are gone when it returns. It is idempotent.
	// A kernel device that should survive a restart is simply not closed.
	Close() error
}

// Needs are what a caller will ask of the devices a backend opens, so
// that NewBackendFor picks a backend that can do it.
type Needs struct {
	// OwnBind: devices get an Options.Bind that carries the caller's own
	// packets on the WireGuard port (STUN, for NAT traversal). The kernel
	// owns a kernel device's UDP socket, so only userspace can.
	OwnBind bool
}

// ErrOwnBind says why the kernel backend cannot meet Needs.OwnBind, nor
// carry NAT traversal configured later.
var ErrOwnBind = errors.New("NAT traversal sends STUN and TURN from the WireGuard port, and kernel WireGuard keeps that UDP socket to itself (only embedded wireguard-go can share it)")

// NewBackend picks a backend. mode is "kernel", "userspace" or "auto"
// (kernel when the running kernel can create a wireguard link, else
// userspace). The choice and its reason are logged.
func NewBackend(mode string, log *slog.Logger) (Backend, error) {
	return NewBackendFor(mode, Needs{}, log)
}

// NewBackendFor is NewBackend for a caller with needs: "auto" picks
// userspace when the kernel backend cannot meet them (and logs why), and
// "kernel" is refused with the reason.
func NewBackendFor(mode string, needs Needs, log *slog.Logger) (Backend, error) {
	if log == nil {
		log = slog.Default()
	}
	switch mode {
	case KindUserspace:
		b, err := newUserspaceBackend()
		if err != nil {
			return nil, err
		}
		log.Info("wireguard backend selected", "backend", KindUserspace, "reason", "requested")
		return b, nil
	case KindKernel:
		if needs.OwnBind {
			return nil, fmt.Errorf("wireguard backend %q requested, but %w; use %q or %q instead", KindKernel, ErrOwnBind, KindUserspace, "auto")
		}
		b, err := probeKernel()
		if err != nil {
			return nil, fmt.Errorf("wireguard backend %q requested, but %w; use %q or %q instead", KindKernel, err, KindUserspace, "auto")
		}
		log.Info("wireguard backend selected", "backend", KindKernel, "reason", "requested, and the kernel can create wireguard links")
		return b, nil
	case "auto", "":
		kb, probeErr := probeKernel()
		if probeErr == nil && !needs.OwnBind {
			log.Info("wireguard backend selected", "backend", KindKernel, "reason", "auto: the kernel can create wireguard links")
			return kb, nil
		}
		reason := "auto: kernel WireGuard is unavailable (" + errString(probeErr) + "); using embedded wireguard-go"
		if probeErr == nil {
			reason = "auto: the kernel can create wireguard links, but " + ErrOwnBind.Error() + "; using embedded wireguard-go"
		}
		b, err := newUserspaceBackend()
		if err != nil {
			return nil, fmt.Errorf("no wireguard backend is usable: %s, and %w", strings.TrimPrefix(reason, "auto: "), err)
		}
		log.Info("wireguard backend selected", "backend", KindUserspace, "reason", reason)
		return b, nil
	default:
		return nil, fmt.Errorf("unknown wireguard backend %q: use %q, %q or %q", mode, KindKernel, KindUserspace, "auto")
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// GenerateKey returns a new, clamped Curve25519 private key.
func GenerateKey() (wgtypes.Key, error) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("generate wireguard private key: %w", err)
	}
	return k, nil
}

// ParseKey parses a standard (padded) base64 WireGuard key, private or public.
func ParseKey(b64 string) (wgtypes.Key, error) {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("wireguard key %s is not valid base64 (%v); a key is 44 characters of standard base64, such as wg genkey prints", quoteTruncated(b64), err)
	}
	if len(raw) != wgtypes.KeyLen {
		if _, err := hex.DecodeString(b64); err == nil && len(b64) == 2*wgtypes.KeyLen {
			return wgtypes.Key{}, fmt.Errorf("wireguard key %s is hex, as the UAPI socket writes keys; keys here are standard base64 (44 characters)", quoteTruncated(b64))
		}
		return wgtypes.Key{}, fmt.Errorf("wireguard key %s decodes to %d bytes; a key is exactly %d bytes (44 base64 characters)", quoteTruncated(b64), len(raw), wgtypes.KeyLen)
	}
	return wgtypes.Key(raw), nil
}

// quoteTruncated quotes user input for an error message, cut short so that a
// pasted blob (or most of a private key) does not end up in logs.
func quoteTruncated(s string) string {
	const keep = 12
	if len(s) <= keep {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q… (%d bytes)", s[:keep], len(s))
}

// validateName rejects names the kernel would refuse and names that would
// escape the UAPI socket directory.
func validateName(name string) error {
	switch {
	case name == "":
		return errors.New("wireguard device name is empty")
	case len(name) > maxNameLen:
		return fmt.Errorf("wireguard device name %q is %d bytes long; interface names are at most %d bytes", name, len(name), maxNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("wireguard device name %q is not a valid interface name", name)
	}
	for _, r := range name {
		if r == '/' || r == '\\' || r == ':' || r == 0 || unicode.IsSpace(r) || r > unicode.MaxASCII {
			return fmt.Errorf("wireguard device name %q contains %q; use ASCII letters, digits, '-', '_' and '.'", name, r)
		}
	}
	return nil
}

func (o Options) withDefaults() (Options, error) {
	if o.MTU == 0 {
		o.MTU = DefaultMTU
	}
	if o.MTU < minMTU || o.MTU > maxMTU {
		return o, fmt.Errorf("wireguard MTU %d is out of range; use %d to %d (default %d)", o.MTU, minMTU, maxMTU, DefaultMTU)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Owner != "" && (!strings.HasPrefix(o.Owner, ownerAlias+":") || !strings.HasSuffix(o.Owner, ":") || len(o.Owner) <= len(ownerAlias)+1) {
		return o, fmt.Errorf("wireguard device owner %q is not a label prefix of the form %q", o.Owner, ownerAlias+":<identity>:")
	}
	return o, nil
}

// Survives reports whether a device outlives the process that opened it:
// a kernel device, or a userspace one whose data plane runs in a process
// of its own. Such a device is left running when the daemon stops, and
// adopted by the next one.
func Survives(d Device) bool {
	if d.Kind() == KindKernel {
		return true
	}
	s, ok := d.(interface{ Survives() bool })
	return ok && s.Survives()
}
