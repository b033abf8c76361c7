package cniplugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	cniversion "github.com/containernetworking/cni/pkg/version"
	"github.com/zlayer/zlayer-overlayd/client"
	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/version"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Error codes beyond the well-known ones (CNI reserves 1-99).
const (
	// ErrPluginNotAvailable is STATUS's "cannot serve ADD requests" (spec
	// 1.1.0).
	ErrPluginNotAvailable uint = 50
	// ErrRefused is a request zlayer-overlayd answered with an err; the
	// message is the daemon's.
	ErrRefused uint = 100
	// ErrCheckFailed is a CHECK that found the container's network not as
	// the ADD left it.
	ErrCheckFailed uint = 101
)

// Versions are the CNI spec versions the plugin speaks; GC and STATUS
// need 1.1.0.
var Versions = cniversion.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// Plugin runs CNI commands. The zero value is not usable; New returns the
// one cmd/zlayer-cni runs.
type Plugin struct {
	// Inspect looks at an interface inside a network namespace
	// (linuxnet.InspectNetns): its MAC and MTU for results, its addresses
	// and routes for CHECK.
	Inspect func(path, ifName string) (linuxnet.NetnsLink, bool, error)
	// HostLink is the MAC and MTU of a link in the plugin's own namespace
	// (the host ends); ok is false when there is none.
	HostLink func(name string) (mac string, mtu int, ok bool)
	// DialTimeout bounds reaching the daemon; CallTimeout one command's
	// whole conversation with it; StatusTimeout a STATUS.
	DialTimeout, CallTimeout, StatusTimeout time.Duration
	// Stdout receives ADD's result.
	Stdout io.Writer
}

// New is the plugin as the binary runs it.
func New() *Plugin {
	return &Plugin{
		Inspect:       linuxnet.InspectNetns,
		HostLink:      hostLink,
		DialTimeout:   10 * time.Second,
		CallTimeout:   90 * time.Second, // the daemon gives up on a busy resource after a minute
		StatusTimeout: 3 * time.Second,
		Stdout:        os.Stdout,
	}
}

// Main is cmd/zlayer-cni's main: it runs the command CNI_COMMAND names and
// exits.
func Main() {
	skel.PluginMainFuncs(New().Funcs(), Versions, "CNI plugin zlayer-cni "+version.Version+": attaches containers to zlayer-overlayd's service overlays")
}

// Funcs are the plugin's commands for skel.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

func hostLink(name string) (string, int, bool) {
	i, err := net.InterfaceByName(name)
	if err != nil {
		return "", 0, false
	}
	return i.HardwareAddr.String(), i.MTU, true
}

func confError(err error) error {
	return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
}

// session is one command's connection to the daemon.
type session struct {
	c      *client.Client
	socket string
}

func (p *Plugin) dial(ctx context.Context, socket string) (*session, error) {
	dctx, cancel := context.WithTimeout(ctx, p.DialTimeout)
	defer cancel()
	c, err := client.Dial(dctx, socket)
	if err != nil {
		return nil, types.NewError(types.ErrTryAgainLater, "zlayer-overlayd is not reachable at "+socket+" (is it running? is \"socket\" in the network configuration right?)", err.Error())
	}
	return &session{c: c, socket: socket}, nil
}

func (s *session) close() { s.c.Close() }

// call sends one request; an err answer is ErrRefused with the daemon's
// words, a broken or silent connection ErrTryAgainLater.
func (s *session) call(ctx context.Context, req protocol.Request) (protocol.Response, error) {
	resp, err := s.c.Call(ctx, req)
	var refused protocol.Err
	switch {
	case err == nil:
		return resp, nil
	case errors.As(err, &refused):
		return nil, types.NewError(ErrRefused, "zlayer-overlayd refused "+req.Op()+": "+refused.Message, "")
	}
	return nil, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("%s: no answer from zlayer-overlayd at %s", req.Op(), s.socket), err.Error())
}

func (s *session) status(ctx context.Context) (protocol.StatusSnapshot, error) {
	resp, err := s.call(ctx, protocol.Status{})
	if err != nil {
		return protocol.StatusSnapshot{}, err
	}
	st, ok := resp.(protocol.StatusResult)
	if !ok {
		return protocol.StatusSnapshot{}, fmt.Errorf("status: unexpected %q answer", resp.Result())
	}
	return st.StatusSnapshot, nil
}

// Add attaches the container's namespace to the network's service and
// prints the CNI result. Repeated for the same container and interface it
// changes nothing and prints the same result.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData, false)
	if err != nil {
		return confError(err)
	}
	if args.Netns == "" {
		return types.NewError(types.ErrInvalidNetNS, "CNI_NETNS is empty: ADD needs the container's network namespace", "")
	}
	if _, err := os.Stat(args.Netns); err != nil {
		return types.NewError(types.ErrInvalidNetNS, "network namespace "+args.Netns+" cannot be used", err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.CallTimeout)
	defer cancel()
	s, err := p.dial(ctx, conf.Socket)
	if err != nil {
		return err
	}
	defer s.close()
	req := protocol.AttachContainer{Handle: protocol.Netns(args.Netns, args.ContainerID, args.IfName), Service: conf.Service, JoinGlobal: conf.JoinGlobal}
	resp, err := s.call(ctx, req)
	if err != nil {
		// The first container of a network on this node: set its service
		// up, then attach. (Any other refusal stands.)
		created, serr := p.ensureService(ctx, s, conf.Service)
		if serr != nil {
			return serr
		}
		if !created {
			return err
		}
		if resp, err = s.call(ctx, req); err != nil {
			return err
		}
	}
	att, ok := resp.(protocol.Attached)
	if !ok {
		return fmt.Errorf("attach_container: unexpected %q answer", resp.Result())
	}
	result, err := p.result(args, att)
	if err != nil {
		return err
	}
	out, err := result.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "cannot express the result in CNI version "+conf.CNIVersion, err.Error())
	}
	return out.PrintTo(p.Stdout)
}

// ensureService sets the service up (shared) when the node does not have
// it; created reports whether it did.
func (p *Plugin) ensureService(ctx context.Context, s *session, service string) (created bool, err error) {
	st, err := s.status(ctx)
	if err != nil {
		return false, err
	}
	if slices.ContainsFunc(st.Services, func(x protocol.ServiceStatus) bool { return x.Service == service }) {
		return false, nil
	}
	if _, err := s.call(ctx, protocol.SetupServiceOverlay{Service: service, Mode: protocol.ModeAuto}); err != nil {
		return false, err
	}
	return true, nil
}

// result is the CNI result of an attach: per interface built, the host end
// and the container end (with its sandbox), its address with the gateway,
// its routes; the resolver the daemon named.
func (p *Plugin) result(args *skel.CmdArgs, att protocol.Attached) (*current.Result, error) {
	if len(att.Interfaces) == 0 {
		return nil, fmt.Errorf("zlayer-overlayd answered the attach without the interfaces it built (is it older than the netns handle? see docs/protocol.md)")
	}
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	for _, i := range att.Interfaces {
		host := &current.Interface{Name: i.HostLink}
		if mac, mtu, ok := p.HostLink(i.HostLink); ok {
			host.Mac, host.Mtu = mac, mtu
		}
		ctr := &current.Interface{Name: i.IfName, Sandbox: args.Netns}
		// The MAC is informative; the daemon has already checked the link.
		if l, found, err := p.Inspect(args.Netns, i.IfName); err == nil && found {
			ctr.Mac, ctr.Mtu = l.MAC.String(), l.MTU
		}
		res.Interfaces = append(res.Interfaces, host, ctr)
		for _, a := range i.Addresses {
			ipc := &current.IPConfig{Interface: current.Int(len(res.Interfaces) - 1), Address: ipNet(a.Address)}
			if a.Gateway.IsValid() {
				ipc.Gateway = net.IP(a.Gateway.AsSlice())
			}
			res.IPs = append(res.IPs, ipc)
		}
		for _, r := range i.Routes {
			rt := &types.Route{Dst: ipNet(r.Dst.Masked())}
			if r.Via.IsValid() {
				rt.GW = net.IP(r.Via.AsSlice())
			}
			res.Routes = append(res.Routes, rt)
		}
	}
	if att.DNSServer.IsValid() {
		res.DNS.Nameservers = []string{att.DNSServer.String()}
	}
	if att.DNSDomain != "" {
		res.DNS.Domain = att.DNSDomain
		res.DNS.Search = []string{att.DNSDomain}
	}
	return res, nil
}

func ipNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Del detaches the container's interface. It succeeds when the attachment
// or the namespace is already gone, and needs no namespace path.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData) // the service does not matter here
	if err != nil {
		return confError(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.CallTimeout)
	defer cancel()
	s, err := p.dial(ctx, conf.Socket)
	if err != nil {
		return err
	}
	defer s.close()
	_, err = s.call(ctx, protocol.DetachContainer{Handle: protocol.Netns(args.Netns, args.ContainerID, args.IfName)})
	return err
}

// Check verifies that the daemon still holds the attachment the ADD made
// and that the namespace still has its interfaces, addresses and routes as
// prevResult says.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData, true)
	if err != nil {
		return confError(err)
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult (the ADD's result) in the configuration", "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "prevResult cannot be read as a CNI 1.x result", err.Error())
	}
	if args.Netns == "" {
		return types.NewError(types.ErrInvalidNetNS, "CNI_NETNS is empty: CHECK needs the container's network namespace", "")
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.CallTimeout)
	defer cancel()
	s, err := p.dial(ctx, conf.Socket)
	if err != nil {
		return err
	}
	defer s.close()
	st, err := s.status(ctx)
	if err != nil {
		return err
	}
	var att *protocol.AttachStatus
	for i, a := range st.NetnsAttachments {
		if a.Handle.ContainerID == args.ContainerID && a.Handle.IfName == args.IfName {
			att = &st.NetnsAttachments[i]
		}
	}
	if att == nil {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("zlayer-overlayd has no attachment of container %s interface %s", args.ContainerID, args.IfName), "")
	}
	return checkAttachment(conf, args, prev, att, p.Inspect)
}

// checkAttachment compares the daemon's attachment, the ADD's result and
// the namespace.
func checkAttachment(conf *NetConf, args *skel.CmdArgs, prev *current.Result, att *protocol.AttachStatus, inspect func(string, string) (linuxnet.NetnsLink, bool, error)) error {
	if att.Service != conf.Service {
		return checkFailed("container %s interface %s is attached to service %s, not %s", args.ContainerID, args.IfName, att.Service, conf.Service)
	}
	if att.Handle.Path != args.Netns {
		return checkFailed("container %s interface %s is attached in network namespace %s, not %s", args.ContainerID, args.IfName, att.Handle.Path, args.Netns)
	}
	links, err := checkInterfaces(args, prev, inspect)
	if err != nil {
		return err
	}
	if err := checkAddresses(args, prev, att, links); err != nil {
		return err
	}
	return checkRoutes(args, prev, links)
}

func checkFailed(format string, a ...any) error {
	return types.NewError(ErrCheckFailed, fmt.Sprintf(format, a...), "")
}

// checkInterfaces finds the namespace's interfaces the ADD reported as it
// made them (up veths with the reported MAC) and returns them by their index
// in prevResult.
func checkInterfaces(args *skel.CmdArgs, prev *current.Result, inspect func(string, string) (linuxnet.NetnsLink, bool, error)) (map[int]linuxnet.NetnsLink, error) {
	links := map[int]linuxnet.NetnsLink{}
	for idx, i := range prev.Interfaces {
		if i.Sandbox != args.Netns {
			continue
		}
		l, found, err := inspect(args.Netns, i.Name)
		if err != nil {
			return nil, types.NewError(types.ErrInvalidNetNS, "cannot look into network namespace "+args.Netns, err.Error())
		}
		if !found {
			return nil, checkFailed("interface %s is missing from network namespace %s", i.Name, args.Netns)
		}
		if l.Kind != "veth" || !l.Up {
			return nil, checkFailed("interface %s in %s is a %s link that is %s; the ADD made an up veth", i.Name, args.Netns, l.Kind, upDown(l.Up))
		}
		if i.Mac != "" && l.MAC.String() != i.Mac {
			return nil, checkFailed("interface %s in %s has MAC %s, not %s as the ADD reported", i.Name, args.Netns, l.MAC, i.Mac)
		}
		links[idx] = l
	}
	if !slices.ContainsFunc(prev.Interfaces, func(i *current.Interface) bool { return i.Name == args.IfName && i.Sandbox == args.Netns }) {
		return nil, checkFailed("prevResult has no interface %s in %s", args.IfName, args.Netns)
	}
	return links, nil
}

// checkAddresses holds prevResult's addresses and the daemon's for the
// attachment to be the same set, each carried by its interface.
func checkAddresses(args *skel.CmdArgs, prev *current.Result, att *protocol.AttachStatus, links map[int]linuxnet.NetnsLink) error {
	held := append([]netip.Addr{att.IP}, att.IPs...)
	if att.GlobalIP.IsValid() {
		held = append(held, att.GlobalIP)
	}
	held = append(held, att.GlobalIPs...)
	slices.SortFunc(held, netip.Addr.Compare)
	held = slices.Compact(held)
	var reported []netip.Addr
	for _, ipc := range prev.IPs {
		if ipc.Interface == nil {
			continue
		}
		l, ours := links[*ipc.Interface]
		if !ours {
			continue
		}
		addr, err := prefixOf(ipc.Address)
		if err != nil {
			return checkFailed("prevResult address %s: %v", ipc.Address.String(), err)
		}
		if !slices.Contains(held, addr.Addr()) {
			return checkFailed("prevResult has %s, but zlayer-overlayd holds %v for this attachment", addr, held)
		}
		if !l.HasAddr(addr) {
			return checkFailed("interface %s in %s does not carry %s (it has %v)", l.Name, args.Netns, addr, l.Addrs)
		}
		reported = append(reported, addr.Addr())
	}
	for _, a := range held {
		if !slices.Contains(reported, a) {
			return checkFailed("zlayer-overlayd holds %s for this attachment, which prevResult does not report", a)
		}
	}
	return nil
}

// checkRoutes finds every route prevResult reports on one of the
// namespace's interfaces.
func checkRoutes(args *skel.CmdArgs, prev *current.Result, links map[int]linuxnet.NetnsLink) error {
	for _, r := range prev.Routes {
		dst, err := prefixOf(r.Dst)
		if err != nil {
			return checkFailed("prevResult route %s: %v", r.Dst.String(), err)
		}
		var via netip.Addr
		if r.GW != nil {
			if via, err = addrOf(r.GW); err != nil {
				return checkFailed("prevResult route %s via %s: %v", dst, r.GW, err)
			}
		}
		if !slices.ContainsFunc(mapValues(links), func(l linuxnet.NetnsLink) bool { return l.HasRoute(dst, via) }) {
			return checkFailed("network namespace %s has no route to %s via %s", args.Netns, dst, via)
		}
	}
	return nil
}

func upDown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}

func mapValues(m map[int]linuxnet.NetnsLink) []linuxnet.NetnsLink {
	out := make([]linuxnet.NetnsLink, 0, len(m))
	for _, l := range m {
		out = append(out, l)
	}
	return out
}

func addrOf(ip net.IP) (netip.Addr, error) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}, errors.New("not an IP address")
	}
	return a.Unmap(), nil
}

func prefixOf(n net.IPNet) (netip.Prefix, error) {
	a, err := addrOf(n.IP)
	if err != nil {
		return netip.Prefix{}, err
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, errors.New("no valid mask")
	}
	if bits == 128 && a.Is4() {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones), nil
}

// GC detaches the network's containers that are not among
// cni.dev/valid-attachments (all of them when the runtime sends no list, as
// cnitool does). The network's containers are the netns attachments of its
// service: networks sharing a service collect each other's.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData, false)
	if err != nil {
		return confError(err)
	}
	valid := map[types.GCAttachment]bool{}
	for _, a := range conf.ValidAttachments {
		valid[a] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.CallTimeout)
	defer cancel()
	s, err := p.dial(ctx, conf.Socket)
	if err != nil {
		return err
	}
	defer s.close()
	st, err := s.status(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range st.NetnsAttachments {
		if a.Service != conf.Service || valid[types.GCAttachment{ContainerID: a.Handle.ContainerID, IfName: a.Handle.IfName}] {
			continue
		}
		if _, err := s.call(ctx, protocol.DetachContainer{Handle: protocol.Netns("", a.Handle.ContainerID, a.Handle.IfName)}); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return types.NewError(ErrRefused, "GC could not detach every stale attachment", errors.Join(errs...).Error())
	}
	return nil
}

// Status succeeds when the daemon answers and its global overlay is up:
// only then can an ADD give a container the overlay.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData, false)
	if err != nil {
		return confError(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.StatusTimeout)
	defer cancel()
	c, err := client.Dial(ctx, conf.Socket)
	if err != nil {
		return types.NewError(ErrPluginNotAvailable, "zlayer-overlayd is not reachable at "+conf.Socket, err.Error())
	}
	defer c.Close()
	st, err := c.Status(ctx)
	if err != nil {
		return types.NewError(ErrPluginNotAvailable, "zlayer-overlayd at "+conf.Socket+" does not answer status", err.Error())
	}
	if st.Interface == "" {
		return types.NewError(ErrPluginNotAvailable, "zlayer-overlayd's global overlay is not set up on this node (the main daemon sends setup_global_overlay)", "")
	}
	return nil
}
