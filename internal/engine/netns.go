package engine

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// netns attachments are containers as CNI runtimes (containerd, Podman,
// nerdctl, Kubernetes) hand them to a plugin: a network namespace file, a
// container id and an interface name, no process. They are linux_pid
// attachments in every other respect — the same bridge, veth, addresses,
// routes, DNS and store records — with three differences:
//
//   - Identity is (container id, ifname): one container may have several
//     interfaces, in several services. The key is
//     "netns:<container id>/<ifname>".
//   - Liveness is the namespace file: the attachment lives while the file
//     at its path still names the namespace it was made in (same inode).
//     A path that is gone, unmounted, or taken by a new namespace means the
//     runtime deleted the container's namespace, and reconcile forgets the
//     attachment as it forgets a linux_pid one whose process died.
//   - Names: the container side is the ifname the runtime chose (and
//     <ifname>g for join_global); the host ends are "zl-vn" + 10 hex digits
//     of a hash of (container id, ifname, which end), which fits in 15
//     bytes, cannot be a linux_pid name (zl-v<pid>-e<n> has a digit after
//     zl-v) and, by its "zl-v" prefix, is a container link to the firewall
//     and the DNS server like a linux_pid one.

// maxContainerID bounds a CNI container id: it is part of the store key and
// of the link label (IFLA_IFALIAS holds 255 bytes).
const maxContainerID = 128

// maxNetnsPath bounds a namespace path.
const maxNetnsPath = 1024

// netnsVethPrefix starts the host ends of netns attachments.
const netnsVethPrefix = "zl-vn"

func netnsKey(containerID, ifName string) string {
	return protocol.PlatformNetns + ":" + containerID + "/" + ifName
}

// validNetnsHandle checks a netns handle. An attach needs the path; a
// detach may leave it out (CNI_NETNS can be empty on DEL).
func validNetnsHandle(h protocol.AttachHandle, attach bool) error {
	id := h.ContainerID
	switch {
	case id == "":
		return errors.New("netns handle: container_id is empty")
	case len(id) > maxContainerID:
		return fmt.Errorf("netns handle: container_id %q is %d bytes; at most %d are allowed", truncate(id), len(id), maxContainerID)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '.' && c != '-') {
			return fmt.Errorf("netns handle: container_id %q is not a CNI container id (a letter or digit, then letters, digits, '_', '.' and '-')", truncate(id))
		}
	}
	if len(h.IfName) > maxIfName || !validIfName(h.IfName) {
		return fmt.Errorf("netns handle: ifname %q is not a Linux interface name (1-%d bytes, no '/', ':' or whitespace)", truncate(h.IfName), maxIfName)
	}
	if h.IfName == "lo" {
		return errors.New(`netns handle: ifname "lo" is the namespace's loopback`)
	}
	if !attach {
		return nil
	}
	p := h.Path
	switch {
	case p == "":
		return errors.New("netns handle: path is empty; an attach needs the network namespace file (CNI_NETNS)")
	case len(p) > maxNetnsPath:
		return fmt.Errorf("netns handle: path is %d bytes; at most %d are allowed", len(p), maxNetnsPath)
	case strings.IndexByte(p, 0) >= 0:
		return errors.New("netns handle: path contains a NUL byte")
	case !filepath.IsAbs(p) || filepath.Clean(p) != p:
		return fmt.Errorf("netns handle: path %q must be absolute and clean, e.g. /var/run/netns/cni-1234", truncate(p))
	}
	return nil
}

// globalIfName is the container-side name of a netns attachment's
// join_global interface.
func globalIfName(ifName string) string { return ifName + "g" }

// containerIfName is the name inside the container of an attachment's
// interface: 0 is the service's, 1 the global overlay's.
func containerIfName(a *store.Attachment, which int) string {
	if a.Platform == protocol.PlatformNetns {
		if which == 1 {
			return globalIfName(a.IfName)
		}
		return a.IfName
	}
	return "eth" + strconv.Itoa(which)
}

// pinnedInode is the namespace inode an attach must find at the
// attachment's path (0: none, the namespace is the PID's).
func pinnedInode(a *store.Attachment) uint64 {
	if a.Platform == protocol.PlatformNetns {
		return a.NetnsInode
	}
	return 0
}

// netnsVethName is a host end of a netns attachment: "zl-vn" and 10 hex
// digits of FNV-1a over (container id, ifname, which end, salt). salt is
// 0 unless another attachment already has that name.
func netnsVethName(containerID, ifName string, which, salt int) string {
	h := fnv.New64a()
	for _, p := range []string{containerID, ifName, strconv.Itoa(which), strconv.Itoa(salt)} {
		h.Write([]byte(p))
		h.Write([]byte{0xff})
	}
	return fmt.Sprintf("%s%010x", netnsVethPrefix, h.Sum64()>>24)
}

// isNetnsVethName reports whether name has the shape of netnsVethName.
func isNetnsVethName(name string) bool {
	rest, ok := strings.CutPrefix(name, netnsVethPrefix)
	if !ok || len(rest) != 10 {
		return false
	}
	for i := 0; i < len(rest); i++ {
		if c := rest[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// pickNetnsLinks names the host ends of a new netns attachment, skipping
// names another attachment has (a hash collision, about one in a trillion
// pairs): the name is kept in the store, so it need not be recomputable.
// Attaches of other handles in other services run beside this one with no
// lock in common, so the names are reserved until unreserve (after the
// commit, or the rollback): an attach that only looked at the committed
// attachments would find a name this one is building free, and build its
// own pair over it.
func (e *Engine) pickNetnsLinks(key, containerID, ifName string, global bool) (eth, glob string, unreserve func(), err error) {
	pick := func(which int, taken map[string]bool) (string, error) {
		for salt := range 16 {
			if n := netnsVethName(containerID, ifName, which, salt); !taken[n] {
				taken[n] = true
				return n, nil
			}
		}
		return "", fmt.Errorf("no free host link name for %s", key)
	}
	e.locked(func() {
		taken := map[string]bool{}
		for k, a := range e.st.attach {
			if k != key {
				taken[a.HostLink], taken[a.HostLinkGlobal] = true, true
			}
		}
		for l := range e.st.pendingLinks {
			taken[l] = true
		}
		if eth, err = pick(0, taken); err != nil {
			return
		}
		if global {
			if glob, err = pick(1, taken); err != nil {
				return
			}
			e.st.pendingLinks[glob] = key
		}
		e.st.pendingLinks[eth] = key
	})
	if err != nil {
		return "", "", nil, err
	}
	return eth, glob, func() {
		e.locked(func() {
			delete(e.st.pendingLinks, eth)
			if glob != "" {
				delete(e.st.pendingLinks, glob)
			}
		})
	}, nil
}

// netnsFiles is what judges namespace files; the host's Processes and the
// tests' process table implement it.
type netnsFiles interface {
	// NetnsFileInode is the inode of the network namespace the file at
	// path names; an error wrapping fs.ErrNotExist or linuxnet.ErrNotNetns
	// means there is none (any more).
	NetnsFileInode(path string) (uint64, error)
}

func (procfs) NetnsFileInode(path string) (uint64, error) { return linuxnet.NetnsFileInode(path) }

func (e *Engine) netnsFileInode(path string) (uint64, error) {
	f, ok := e.cfg.Procs.(netnsFiles)
	if !ok {
		return 0, errors.New("this daemon cannot inspect network namespace files (its process table has no NetnsFileInode)")
	}
	return f.NetnsFileInode(path)
}

// netnsGone reports whether err says the namespace file names no
// namespace (any more), as opposed to not being readable right now.
func netnsGone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, linuxnet.ErrNotNetns)
}

// identifyNetns is the inode of the namespace an attach is asked for, with
// the error words for a runtime.
func (e *Engine) identifyNetns(path string) (uint64, error) {
	ino, err := e.netnsFileInode(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return 0, fmt.Errorf("network namespace %s does not exist (was the container deleted? is it in another mount namespace than zlayer-overlayd?)", truncate(path))
	case err != nil:
		return 0, err
	}
	return ino, nil
}

// attachNetns wires a CNI container's namespace into a service, like
// attachLinux does a process's: validate, lock, identify the namespace,
// settle an earlier attachment of the same (container id, ifname), take
// addresses, build the links, commit, answer. Every step is undone if a
// later one fails.
func (e *Engine) attachNetns(ctx context.Context, r protocol.AttachContainer) (protocol.Response, error) {
	h := r.Handle
	if err := validNetnsHandle(h, true); err != nil {
		return nil, err
	}
	if r.JoinGlobal && len(globalIfName(h.IfName)) > maxIfName {
		return nil, fmt.Errorf("netns handle: with join_global the namespace also gets %q, longer than %d bytes; use an ifname of at most %d bytes", globalIfName(h.IfName), maxIfName, maxIfName-1)
	}
	if e.cfg.Caps.NoBridges {
		return nil, fmt.Errorf("netns attaches need Linux network namespaces; this daemon runs on %s", e.cfg.Caps.Platform)
	}
	if e.cfg.Net == nil {
		return nil, errNoBackend
	}
	key := handleKey(h)
	release, existing, err := e.holdHandle(ctx, r.Service, key)
	if err != nil {
		return nil, err
	}
	defer release()

	ino, err := e.identifyNetns(h.Path)
	if err != nil {
		return nil, err
	}
	var svc *serviceState
	e.locked(func() { svc = e.st.services[r.Service] })
	if svc == nil {
		return nil, fmt.Errorf("service %s has no overlay on this node; call setup_service_overlay first", r.Service)
	}
	if existing != nil {
		switch {
		case existing.NetnsPath != h.Path || existing.NetnsInode != ino:
			// The runtime gave the container a new namespace without a DEL
			// in between: the old one's links and addresses go.
			e.log.Info("replacing the attachment of a network namespace that is gone", "handle", key, "old", existing.NetnsPath, "new", h.Path)
			if _, err := e.forgetAttachment(existing); err != nil {
				return nil, err
			}
		case existing.Service != r.Service:
			return nil, fmt.Errorf("%s is attached to service %s; detach it first", key, existing.Service)
		case (existing.GlobalIP != "") != (r.JoinGlobal && e.globalUp()):
			return nil, fmt.Errorf("%s is already attached to %s with join_global=%t; detach it to change that", key, r.Service, existing.GlobalIP != "")
		default:
			if err := e.repairContainer(ctx, existing, svc); err != nil {
				return nil, err
			}
			return e.netnsAnswer(existing, r, svc), nil
		}
	}

	rec, err := e.allocateAttach(key, procIdentity{netns: ino}, r, svc)
	if err != nil {
		return nil, err
	}
	// allocateAttach names a linux_pid attachment's links; these are ours.
	rec.NetnsPath, rec.ContainerID, rec.IfName = h.Path, h.ContainerID, h.IfName
	var unreserve func()
	if rec.HostLink, rec.HostLinkGlobal, unreserve, err = e.pickNetnsLinks(key, h.ContainerID, h.IfName, rec.GlobalIP != ""); err != nil {
		e.releaseAttach(rec, svc)
		return nil, err
	}
	// Once committed the record holds the names; rolled back, the links
	// are deleted first. Either way the reservation ends on return.
	defer unreserve()
	if err := e.wireContainer(ctx, rec, svc); err != nil {
		e.releaseAttach(rec, svc)
		return nil, err
	}
	e.at("netns.wired")
	// The runtime may have deleted the namespace while we worked: then
	// what we built went with it.
	if now, err := e.netnsFileInode(h.Path); err != nil || now != ino {
		e.unwireContainer(rec)
		e.releaseAttach(rec, svc)
		return nil, fmt.Errorf("network namespace %s was deleted during the attach; nothing was kept", truncate(h.Path))
	}
	if err := e.commitAttach(rec); err != nil {
		e.unwireContainer(rec)
		e.releaseAttach(rec, svc)
		return nil, err
	}
	e.log.Debug("attached", "handle", key, "netns", h.Path, "service", r.Service, "ip", rec.IP, "global_ip", rec.GlobalIP)
	return e.netnsAnswer(rec, r, svc), nil
}

// netnsAnswer is the attached answer of a netns attach: attachedAnswer's,
// plus the interfaces built (what wireContainer and wireGlobal make), which
// a CNI result reports.
func (e *Engine) netnsAnswer(a *store.Attachment, r protocol.AttachContainer, svc *serviceState) protocol.Attached {
	ans := e.attachedAnswer(a, r)
	ip, ip2 := parseAddrOrZero(a.IP), parseAddrOrZero(a.IP2)
	var rng, rng2 svcRange
	var ok, ok2 bool
	var g *globalState
	var cluster netip.Prefix
	var fam2 *family
	e.locked(func() {
		rng, ok = svc.rangeOf(ip)
		rng2, ok2 = svc.rangeOf(ip2)
		g, cluster, fam2 = e.st.global, e.st.cluster, e.st.fam2
	})
	eth := protocol.AttachedInterface{IfName: a.IfName, HostLink: a.HostLink}
	onBridge := func(a netip.Addr, r svcRange, ok bool) {
		if !ok {
			eth.Addresses = append(eth.Addresses, protocol.AttachedAddress{Address: netip.PrefixFrom(a, a.BitLen())})
			return
		}
		eth.Addresses = append(eth.Addresses, protocol.AttachedAddress{Address: netip.PrefixFrom(a, r.subnet.Bits()), Gateway: r.gateway})
		eth.Routes = append(eth.Routes, protocol.AttachedRoute{Dst: netip.PrefixFrom(unspecifiedLike(a), 0), Via: r.gateway})
	}
	onBridge(ip, rng, ok)
	if ip2.IsValid() {
		onBridge(ip2, rng2, ok2)
	}
	ans.Interfaces = []protocol.AttachedInterface{eth}
	if a.GlobalIP == "" {
		return ans
	}
	gip, gip2 := parseAddrOrZero(a.GlobalIP), parseAddrOrZero(a.GlobalIP2)
	glob := protocol.AttachedInterface{IfName: globalIfName(a.IfName), HostLink: a.HostLinkGlobal}
	glob.Addresses = append(glob.Addresses, protocol.AttachedAddress{Address: netip.PrefixFrom(gip, gip.BitLen())})
	if g != nil {
		glob.Routes = append(glob.Routes, protocol.AttachedRoute{Dst: cluster, Via: g.nodeIP, OnLink: true})
	}
	// As wireGlobal: the second family only where it builds it.
	if gip2.IsValid() && fam2 != nil && g != nil && g.nodeIP2.IsValid() {
		glob.Addresses = append(glob.Addresses, protocol.AttachedAddress{Address: netip.PrefixFrom(gip2, gip2.BitLen())})
		glob.Routes = append(glob.Routes, protocol.AttachedRoute{Dst: fam2.cluster, Via: g.nodeIP2, OnLink: true})
	}
	ans.Interfaces = append(ans.Interfaces, glob)
	return ans
}

func parseAddrOrZero(s string) netip.Addr {
	a, _ := netip.ParseAddr(s)
	return a
}

func unspecifiedLike(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

// reconcileNetnsAttachment is reconcileAttachment for a netns attachment:
// forgotten when its namespace file is gone or names another namespace,
// its links re-created when they went missing.
func (e *Engine) reconcileNetnsAttachment(ctx context.Context, a *store.Attachment, present map[string]bool, changes *int) error {
	unlock, err := e.locks.lock(ctx, serviceLock(a.Service), handleLock(a.Key))
	if err != nil {
		return err
	}
	defer unlock()
	var cur *store.Attachment
	var svc *serviceState
	e.locked(func() { cur, svc = e.st.attach[a.Key], e.st.services[a.Service] })
	if cur != a {
		return nil // changed by a request meanwhile
	}
	ino, err := e.netnsFileInode(a.NetnsPath)
	if err != nil && !netnsGone(err) {
		return err // unreadable is not gone: keep it, retry next pass
	}
	if err != nil || ino != a.NetnsInode || svc == nil {
		e.log.Info("network namespace gone; releasing its attachment", "handle", a.Key, "netns", a.NetnsPath, "service", a.Service, "ip", a.IP)
		*changes++
		_, err := e.forgetAttachment(a)
		return err
	}
	if present[a.HostLink] && (a.HostLinkGlobal == "" || present[a.HostLinkGlobal]) {
		return e.ensureHostRoute(a, changes)
	}
	e.log.Info("container lost its links; re-creating them", "handle", a.Key, "netns", a.NetnsPath)
	*changes++
	return e.repairContainer(ctx, a, svc)
}

// netnsStatus is a netns attachment as status lists it.
func netnsStatus(a *store.Attachment) protocol.AttachStatus {
	st := protocol.AttachStatus{
		Handle:  protocol.Netns(a.NetnsPath, a.ContainerID, a.IfName),
		Service: a.Service, IP: parseAddrOrZero(a.IP), GlobalIP: parseAddrOrZero(a.GlobalIP), HostLink: a.HostLink,
	}
	if a.IP2 != "" {
		st.IPs = []netip.Addr{st.IP, parseAddrOrZero(a.IP2)}
	}
	if a.GlobalIP2 != "" {
		st.GlobalIPs = []netip.Addr{st.GlobalIP, parseAddrOrZero(a.GlobalIP2)}
	}
	return st
}
