//go:build linux

package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/client"
	"github.com/zlayer/zlayer-overlayd/internal/lab"
	"github.com/zlayer/zlayer-overlayd/internal/testbin"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// A world is a two-node lab plus a model of what the daemons were told and
// acknowledged. The model holds only facts the daemons confirmed with an
// answer; an operation whose answer was lost to a SIGKILL marks the keys it
// touches unsure, and after the restart they are read back from the daemon
// (and then must be either the old or the new value, atomically).

const (
	deployment  = "zltr"
	clusterCIDR = "10.77.0.0/16"
	wgPort      = 51820
	dnsPort     = 15354 // the daemons' loopback DNS listener (inside their node namespace)
	zone        = deployment + ".local"
	globalIface = "zl-" + deployment + "-g"
	aliasPrefix = "zlayer-overlayd:"
	// maxPerService keeps well below the 13 container addresses of a /28.
	maxPerService = 6
	maxContainers = 10
)

var (
	serviceNames = []string{"web", "api", "db", "q-1"}
	dnsNames     = []string{"svc0", "svc1", "svc2", "svc3", "svc4", "svc5"}
	cluster      = netip.MustParsePrefix(clusterCIDR)
)

type world struct {
	t     *testing.T
	rng   *rand.Rand
	lab   *lab.Lab
	nodes []*node
	// history is the last operations, printed when an invariant fails.
	history []string
	seq     int
	peerNet int // next /24 for fake peers' routed allowed IPs
	// counts of operation kinds, for the summary
	counts map[string]int
}

type node struct {
	w      *world
	n      *lab.Node
	name   string
	slice  netip.Prefix
	nodeIP netip.Addr
	pub    string

	services map[string]*service
	ctrs     map[int]*ctr
	peers    map[string][]string // pubkey -> sorted allowed IPs (the other node's real peer included)
	realPeer string
	// guests are guest_managed attachments: id -> address and key (their
	// keys are peers of the global device, in peers too).
	guests map[string]guest
	// down is true while the global overlay is torn down.
	down   bool
	dns    map[string][]string   // relative name -> sorted addresses
	api    map[netip.Addr]string // addresses handed out by allocate_ip -> pool ("slice" or "service:x")
	unsure map[string]bool       // keys an interrupted operation may have changed
}

type service struct {
	name, mode string
	subnet     netip.Prefix
	gateway    netip.Addr
	iface      string // the bridge, or the dedicated device for dedicated services
}

type guest struct {
	ip      netip.Addr
	pub     string
	service string // a teardown of the service detaches its guests too
}

type ctr struct {
	c       *lab.Container
	service string // "" when not attached
	join    bool
	ip, gip netip.Addr
	dead    bool
	// deadAttached marks a container that died while attached: its
	// attachment may linger until the daemon's next reconcile.
	deadAttached bool
}

func newWorld(t *testing.T) *world {
	t.Helper()
	if err := lab.Check(); err != nil {
		t.Skip("crash-consistency suite: " + err.Error())
	}
	rng, _ := newRand(t)
	w := &world{t: t, rng: rng, peerNet: 1, counts: map[string]int{}}
	w.lab = lab.New(t, lab.Options{Daemon: testbin.Build(t, "zlayer-overlayd")})
	for i, name := range []string{"a", "b"} {
		nd := &node{
			w: w, name: name,
			n:        w.lab.AddNode(name, "--dns-port", strconv.Itoa(dnsPort)),
			slice:    netip.MustParsePrefix(fmt.Sprintf("10.77.%d.0/24", i+1)),
			services: map[string]*service{},
			ctrs:     map[int]*ctr{},
			peers:    map[string][]string{},
			dns:      map[string][]string{},
			api:      map[netip.Addr]string{},
			guests:   map[string]guest{},
			unsure:   map[string]bool{},
		}
		nd.nodeIP = nd.slice.Addr().Next()
		w.nodes = append(w.nodes, nd)
	}
	for i, nd := range w.nodes {
		nd.must(protocol.SetLocalNodeID{NodeID: uint64(i + 1)})
		resp := nd.must(protocol.SetupGlobalOverlay{
			Deployment: deployment, InstanceID: "1", ClusterCIDR: clusterCIDR,
			SliceCIDR: nd.slice.String(), WGPort: wgPort,
		})
		if got := resp.(protocol.BridgeName).Name; got != globalIface {
			t.Fatalf("node %s: global device %q, want %q", nd.name, got, globalIface)
		}
		nd.pub = nd.n.Status().PublicKey
	}
	a, b := w.nodes[0], w.nodes[1]
	for _, pair := range [][2]*node{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		from.must(protocol.AddPeer{PeerSpec: protocol.PeerSpec{
			PublicKey: to.pub, Endpoint: netip.AddrPortFrom(to.n.Underlay, wgPort).String(),
			AllowedIPs: to.slice.String(), PersistentKeepaliveSecs: 5,
		}})
		from.peers[to.pub] = []string{to.slice.String()}
		from.realPeer = to.pub
	}
	return w
}

func (w *world) logf(format string, args ...any) {
	w.seq++
	if f := strings.Fields(fmt.Sprintf(format, args...)); len(f) > 2 {
		kind := strings.TrimSuffix(f[2], ",")
		if strings.Contains(format+fmt.Sprint(args...), "claimed from") {
			kind += " (claim)"
		}
		w.counts[kind]++
	}
	line := fmt.Sprintf("#%d ", w.seq) + fmt.Sprintf(format, args...)
	w.history = append(w.history, line)
	if len(w.history) > 40 {
		w.history = w.history[len(w.history)-40:]
	}
}

func (w *world) fatalf(format string, args ...any) {
	w.t.Helper()
	w.t.Fatalf("%s\nlast operations:\n  %s", fmt.Sprintf(format, args...), strings.Join(w.history, "\n  "))
}

func (nd *node) must(req protocol.Request) protocol.Response {
	nd.w.t.Helper()
	resp, err := nd.do(req)
	if err != nil {
		nd.w.fatalf("node %s: %s: %v", nd.name, req.Op(), err)
	}
	if e, ok := resp.(protocol.Err); ok {
		nd.w.fatalf("node %s: %s answered err: %s", nd.name, req.Op(), e.Message)
	}
	return resp
}

func (nd *node) do(req protocol.Request) (protocol.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return nd.n.Client().Do(ctx, req)
}

func (nd *node) status() (protocol.StatusSnapshot, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return nd.n.Client().Status(ctx)
}

func (nd *node) liveContainers() int {
	n := 0
	for _, c := range nd.ctrs {
		if !c.dead {
			n++
		}
	}
	return n
}

func (nd *node) members(svc string) []*ctr {
	var out []*ctr
	for _, c := range nd.ctrs {
		if c.service == svc {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].c.PID < out[j].c.PID })
	return out
}

// An op is one request of the workload: what to send, the keys of the model
// it may change, and how to judge and record a definite answer.
type op struct {
	nd    *node
	desc  string
	req   protocol.Request
	keys  []string
	apply func(protocol.Response) error
	// noMidKill excludes the op from being interrupted by a kill: the
	// effect of an interrupted allocate_ip or release_ip is not observable
	// (the address is not named anywhere but in the lost answer).
	noMidKill bool
}

func errAnswer(resp protocol.Response) error {
	if e, ok := resp.(protocol.Err); ok {
		return fmt.Errorf("answered err: %s", e.Message)
	}
	return nil
}

func keyFor(pub string) (string, error) {
	k, err := wg.GenerateKey()
	if err != nil {
		return "", err
	}
	return k.PublicKey().String(), nil
}

func pick[T any](rng *rand.Rand, xs []T) T { return xs[rng.IntN(len(xs))] }

// nextOp chooses the next operation from what the model says exists, so
// that almost every request is one the daemon must accept; the few that it
// must refuse are marked as such.
func (w *world) nextOp() *op {
	nd := pick(w.rng, w.nodes)
	if nd.down && w.rng.IntN(3) == 0 || !nd.down && w.rng.IntN(60) == 0 {
		return nd.opGlobal()
	}
	for {
		switch r := w.rng.IntN(100); {
		case r < 10:
			if o := nd.opSetupService(); o != nil {
				return o
			}
		case r < 14:
			if o := nd.opTeardownService(); o != nil {
				return o
			}
		case r < 36:
			if o := nd.opAttach(); o != nil {
				return o
			}
		case r < 46:
			if o := nd.opDetach(); o != nil {
				return o
			}
		case r < 52:
			if o := nd.opKillContainer(); o != nil {
				return o
			}
		case r < 62:
			if o := nd.opAddPeer(); o != nil {
				return o
			}
		case r < 67:
			if o := nd.opRemovePeer(); o != nil {
				return o
			}
		case r < 73:
			if o := nd.opAllowedIP(); o != nil {
				return o
			}
		case r < 83:
			if o := nd.opDNS(); o != nil {
				return o
			}
		case r < 91:
			if o := nd.opAPI(); o != nil {
				return o
			}
		case r < 94:
			if o := nd.opRefusedRelease(); o != nil {
				return o
			}
		case r < 97:
			if o := nd.opGuest(); o != nil {
				return o
			}
		default:
			return &op{nd: nd, desc: "status", req: protocol.Status{}, apply: func(resp protocol.Response) error {
				if _, ok := resp.(protocol.StatusResult); !ok {
					return fmt.Errorf("status answered %s", resp.Result())
				}
				return nil
			}}
		}
	}
}

// opGlobal tears the global overlay down, or sets it up again as it was.
// The node keeps its key, slice and peers across; its containers keep
// their links.
func (nd *node) opGlobal() *op {
	if !nd.down {
		return &op{
			nd: nd, desc: "teardown_global_overlay", req: protocol.TeardownGlobalOverlay{}, keys: []string{"global"},
			apply: func(resp protocol.Response) error {
				if err := errAnswer(resp); err != nil {
					return err
				}
				nd.down = true
				return nil
			},
		}
	}
	return &op{
		nd: nd, desc: "setup_global_overlay (again)", keys: []string{"global"},
		req: protocol.SetupGlobalOverlay{Deployment: deployment, InstanceID: "2", ClusterCIDR: clusterCIDR, SliceCIDR: nd.slice.String(), WGPort: wgPort},
		apply: func(resp protocol.Response) error {
			if err := errAnswer(resp); err != nil {
				return err
			}
			if got := resp.(protocol.BridgeName).Name; got != globalIface {
				return fmt.Errorf("global device %q, want %q", got, globalIface)
			}
			nd.down = false
			return nil
		},
	}
}

func (nd *node) opSetupService() *op {
	if nd.down {
		return nil
	}
	name := pick(nd.w.rng, serviceNames)
	mode := protocol.ModeShared
	if nd.w.rng.IntN(5) == 0 {
		mode = protocol.ModeDedicated
	}
	if s := nd.services[name]; s != nil {
		mode = s.mode // an idempotent repeat
	}
	return &op{
		nd: nd, desc: fmt.Sprintf("setup_service_overlay %s %s", name, mode),
		req:  protocol.SetupServiceOverlay{Service: name, Mode: mode},
		keys: []string{"svc:" + name},
		apply: func(resp protocol.Response) error {
			if err := errAnswer(resp); err != nil {
				return err
			}
			a := resp.(protocol.ServiceOverlay)
			sub, err := netip.ParsePrefix(a.Subnet)
			if err != nil {
				return fmt.Errorf("subnet %q: %v", a.Subnet, err)
			}
			gw := a.Gateway
			if mode == protocol.ModeDedicated {
				gw = a.OverlayIP
			}
			if !nd.slice.Contains(sub.Addr()) || !sub.Contains(gw) {
				return fmt.Errorf("service %s got subnet %s gateway %s outside slice %s", name, sub, gw, nd.slice)
			}
			s := &service{name: name, mode: mode, subnet: sub, gateway: gw, iface: a.Name}
			if old := nd.services[name]; old != nil && (old.subnet != s.subnet || old.gateway != s.gateway || old.iface != s.iface) {
				return fmt.Errorf("idempotent setup of %s moved it: %+v -> %+v", name, *old, *s)
			}
			nd.services[name] = s
			return nil
		},
	}
}

func (nd *node) opTeardownService() *op {
	var names []string
	for n := range nd.services {
		names = append(names, n)
	}
	if len(names) == 0 {
		return nil
	}
	sort.Strings(names)
	name := pick(nd.w.rng, names)
	keys := []string{"svc:" + name, "api:service:" + name}
	for _, c := range nd.members(name) {
		keys = append(keys, "att:"+strconv.Itoa(c.c.PID))
	}
	for id, g := range nd.guests {
		if g.service == name {
			keys = append(keys, "guest:"+id)
		}
	}
	return &op{
		nd: nd, desc: "teardown_service_overlay " + name,
		req: protocol.TeardownServiceOverlay{Service: name}, keys: keys,
		apply: func(resp protocol.Response) error {
			if err := errAnswer(resp); err != nil {
				return err
			}
			nd.forgetService(name)
			return nil
		},
	}
}

func (nd *node) forgetService(name string) {
	delete(nd.services, name)
	for _, c := range nd.members(name) {
		c.service, c.ip, c.gip, c.join = "", netip.Addr{}, netip.Addr{}, false
	}
	for a, pool := range nd.api {
		if pool == "service:"+name {
			delete(nd.api, a)
		}
	}
	for id, g := range nd.guests {
		if g.service == name {
			delete(nd.peers, g.pub)
			delete(nd.guests, id)
		}
	}
}

func (nd *node) opAttach() *op {
	var svcs []string
	for n := range nd.services {
		if len(nd.members(n)) < maxPerService {
			svcs = append(svcs, n)
		}
	}
	if len(svcs) == 0 {
		return nil
	}
	sort.Strings(svcs)
	name := pick(nd.w.rng, svcs)
	// Mostly new containers; sometimes the idempotent repeat of an attach,
	// sometimes a detached container that comes back.
	var c *ctr
	var candidates []*ctr
	for _, x := range nd.ctrs {
		// While the global overlay is down, a container attached with
		// join_global cannot be attached the same way again.
		if !x.dead && (x.service == "" || x.service == name && !(nd.down && x.join)) {
			candidates = append(candidates, x)
		}
	}
	sort.Slice(candidates, func(i, j int) bool { return candidates[i].c.PID < candidates[j].c.PID })
	if len(candidates) > 0 && (nd.w.rng.IntN(4) == 0 || nd.liveContainers() >= maxContainers) {
		c = pick(nd.w.rng, candidates)
	} else if nd.liveContainers() < maxContainers {
		c = &ctr{c: nd.w.lab.AddContainer(fmt.Sprintf("%s-c%d", nd.name, nd.w.seq))}
		nd.ctrs[c.c.PID] = c
	} else {
		return nil
	}
	join := nd.w.rng.IntN(2) == 0
	if c.service != "" {
		join = c.join // a repeat must not change join_global
	}
	gotGlobal := join && !nd.down // join_global without a global overlay gets no eth1
	return &op{
		nd: nd, desc: fmt.Sprintf("attach_container pid %d to %s join_global=%t", c.c.PID, name, join),
		req:  protocol.AttachContainer{Handle: c.c.Handle(), Service: name, JoinGlobal: join},
		keys: []string{"att:" + strconv.Itoa(c.c.PID)},
		apply: func(resp protocol.Response) error {
			if err := errAnswer(resp); err != nil {
				return err
			}
			a := resp.(protocol.Attached)
			s := nd.services[name]
			if !s.subnet.Contains(a.IP) || a.IP == s.gateway {
				return fmt.Errorf("address %s is not a container address of %s", a.IP, s.subnet)
			}
			if gotGlobal != a.GlobalIP.IsValid() || (gotGlobal && !nd.slice.Contains(a.GlobalIP)) {
				return fmt.Errorf("join_global=%t (global overlay down: %t) but global_ip %v", join, nd.down, a.GlobalIP)
			}
			if c.service != "" && (c.ip != a.IP || c.gip != a.GlobalIP) {
				return fmt.Errorf("repeated attach changed the addresses: %v/%v -> %v/%v", c.ip, c.gip, a.IP, a.GlobalIP)
			}
			c.service, c.join, c.ip, c.gip = name, gotGlobal, a.IP, a.GlobalIP
			return nil
		},
	}
}

func (nd *node) opDetach() *op {
	var att []*ctr
	for _, c := range nd.ctrs {
		if c.service != "" && !c.dead {
			att = append(att, c)
		}
	}
	if len(att) == 0 {
		return nil
	}
	sort.Slice(att, func(i, j int) bool { return att[i].c.PID < att[j].c.PID })
	c := pick(nd.w.rng, att)
	return &op{
		nd: nd, desc: fmt.Sprintf("detach_container pid %d from %s", c.c.PID, c.service),
		req:  protocol.DetachContainer{Handle: c.c.Handle()},
		keys: []string{"att:" + strconv.Itoa(c.c.PID)},
		apply: func(resp protocol.Response) error {
			if err := errAnswer(resp); err != nil {
				return err
			}
			c.service, c.ip, c.gip, c.join = "", netip.Addr{}, netip.Addr{}, false
			return nil
		},
	}
}

// opKillContainer is a container death: the process exits without a
// detach, as when a container crashes and the main daemon is down.
func (nd *node) opKillContainer() *op {
	var live []*ctr
	for _, c := range nd.ctrs {
		if !c.dead {
			live = append(live, c)
		}
	}
	if len(live) == 0 {
		return nil
	}
	sort.Slice(live, func(i, j int) bool { return live[i].c.PID < live[j].c.PID })
	c := pick(nd.w.rng, live)
	c.c.Kill()
	c.dead = true
	c.deadAttached = c.service != ""
	return &op{nd: nd, desc: fmt.Sprintf("container %d died (attached to %q)", c.c.PID, c.service)}
}

func (w *world) fakePeerIPs() []string {
	// Half the peers route something outside the cluster (a route through
	// the device); every peer gets ranges no other peer has, because
	// WireGuard gives an allowed IP to one peer only.
	w.peerNet++
	ips := []string{fmt.Sprintf("10.77.%d.0/24", 100+w.peerNet%150)}
	if w.rng.IntN(2) == 0 {
		ips = append(ips, fmt.Sprintf("10.99.%d.0/24", w.peerNet%250))
	}
	sort.Strings(ips)
	return ips
}

func (nd *node) isGuest(pub string) bool {
	for _, g := range nd.guests {
		if g.pub == pub {
			return true
		}
	}
	return false
}

func (nd *node) fakePeers() []string {
	var out []string
	for p := range nd.peers {
		if p != nd.realPeer && !nd.isGuest(p) {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

func (nd *node) opAddPeer() *op {
	if nd.down || len(nd.fakePeers()) >= 8 {
		return nil
	}
	pub, err := keyFor("")
	if err != nil {
		nd.w.t.Fatal(err)
	}
	ips := nd.w.fakePeerIPs()
	ep := fmt.Sprintf("172.31.0.%d:%d", 100+nd.w.rng.IntN(150), 51820+nd.w.rng.IntN(10)) // on the underlay, where nobody answers
	return &op{
		nd: nd, desc: fmt.Sprintf("add_peer %s…%v", pub[:8], ips),
		req: protocol.AddPeer{PeerSpec: protocol.PeerSpec{
			PublicKey: pub, Endpoint: ep, AllowedIPs: strings.Join(ips, ","), PersistentKeepaliveSecs: uint64(nd.w.rng.IntN(30)),
		}},
		keys: []string{"peer:" + pub},
		apply: func(resp protocol.Response) error {
			if err := errAnswer(resp); err != nil {
				return err
			}
			nd.peers[pub] = ips
			return nil
		},
	}
}

func (nd *node) opRemovePeer() *op {
	fakes := nd.fakePeers()
	if nd.down || len(fakes) == 0 {
		return nil
	}
	pub := pick(nd.w.rng, fakes)
	return &op{
		nd: nd, desc: "remove_peer " + pub[:8] + "…",
		req:  protocol.RemovePeer{Pubkey: pub, Scope: protocol.GlobalScope()},
		keys: []string{"peer:" + pub},
		apply: func(resp protocol.Response) error {
			if err := errAnswer(resp); err != nil {
				return err
			}
			delete(nd.peers, pub)
			return nil
		},
	}
}

func (nd *node) opAllowedIP() *op {
	fakes := nd.fakePeers()
	if nd.down || len(fakes) == 0 {
		return nil
	}
	pub := pick(nd.w.rng, fakes)
	cur := nd.peers[pub]
	if len(cur) > 1 && nd.w.rng.IntN(2) == 0 {
		cidr := pick(nd.w.rng, cur)
		return &op{
			nd: nd, desc: "remove_allowed_ip " + pub[:8] + "… " + cidr,
			req:  protocol.RemoveAllowedIP{Pubkey: pub, CIDR: cidr, Scope: protocol.GlobalScope()},
			keys: []string{"peer:" + pub},
			apply: func(resp protocol.Response) error {
				if err := errAnswer(resp); err != nil {
					return err
				}
				nd.peers[pub] = slices.DeleteFunc(slices.Clone(cur), func(s string) bool { return s == cidr })
				return nil
			},
		}
	}
	nd.w.peerNet++
	cidr := fmt.Sprintf("10.98.%d.0/24", nd.w.peerNet%250)
	keys := []string{"peer:" + pub}
	// Sometimes claim a prefix another peer holds: WireGuard moves it to
	// this peer, and so must the daemon's record of both.
	var from string
	if others := slices.DeleteFunc(slices.Clone(fakes), func(p string) bool { return p == pub || len(nd.peers[p]) == 0 }); len(others) > 0 && nd.w.rng.IntN(3) == 0 {
		from = pick(nd.w.rng, others)
		cidr = pick(nd.w.rng, nd.peers[from])
		keys = append(keys, "peer:"+from)
	}
	return &op{
		nd: nd, desc: "add_allowed_ip " + pub[:8] + "… " + cidr + map[bool]string{true: " (claimed from " + from + ")"}[from != ""],
		req:  protocol.AddAllowedIP{Pubkey: pub, CIDR: cidr, Scope: protocol.GlobalScope()},
		keys: keys,
		apply: func(resp protocol.Response) error {
			if err := errAnswer(resp); err != nil {
				return err
			}
			next := append(slices.Clone(cur), cidr)
			sort.Strings(next)
			nd.peers[pub] = slices.Compact(next)
			if from != "" {
				nd.peers[from] = slices.DeleteFunc(slices.Clone(nd.peers[from]), func(c string) bool { return c == cidr })
			}
			return nil
		},
	}
}

func (nd *node) opDNS() *op {
	name := pick(nd.w.rng, dnsNames)
	cur := nd.dns[name]
	if len(cur) > 0 && nd.w.rng.IntN(3) == 0 {
		return &op{
			nd: nd, desc: "unregister_dns " + name,
			req: protocol.UnregisterDNS{Name: name}, keys: []string{"dns:" + name},
			apply: func(resp protocol.Response) error {
				if err := errAnswer(resp); err != nil {
					return err
				}
				delete(nd.dns, name)
				return nil
			},
		}
	}
	ip := netip.AddrFrom4([4]byte{10, 77, byte(1 + nd.w.rng.IntN(2)), byte(2 + nd.w.rng.IntN(200))})
	qualified := name
	if nd.w.rng.IntN(2) == 0 {
		// Without --dns-zone the zone is <deployment>.local only while the
		// global overlay is up (it falls back to zlayer.local); records are
		// kept relative, so they follow.
		qualified = name + "." + zone + "."
		if nd.down {
			qualified = name + ".zlayer.local."
		}
	}
	return &op{
		nd: nd, desc: "register_dns " + qualified + " " + ip.String(),
		req: protocol.RegisterDNS{Name: qualified, IP: ip}, keys: []string{"dns:" + name},
		apply: func(resp protocol.Response) error {
			if err := errAnswer(resp); err != nil {
				return err
			}
			next := append(slices.Clone(cur), ip.String())
			sort.Strings(next)
			nd.dns[name] = slices.Compact(next)
			return nil
		},
	}
}

func (nd *node) opAPI() *op {
	if len(nd.api) > 0 && nd.w.rng.IntN(2) == 0 {
		var held []netip.Addr
		for a := range nd.api {
			held = append(held, a)
		}
		slices.SortFunc(held, netip.Addr.Compare)
		a := pick(nd.w.rng, held)
		return &op{
			nd: nd, desc: "release_ip " + a.String(), noMidKill: true,
			req: protocol.ReleaseIP{IP: a},
			apply: func(resp protocol.Response) error {
				if err := errAnswer(resp); err != nil {
					return err
				}
				delete(nd.api, a)
				return nil
			},
		}
	}
	if len(nd.api) >= 4 {
		return nil
	}
	// A service of this node allocates from its subnet (unless it is full);
	// any other name from the node slice.
	name := pick(nd.w.rng, serviceNames)
	pool := "slice"
	if s := nd.services[name]; s != nil {
		if len(nd.members(name))+nd.apiIn("service:"+name) >= maxPerService {
			return nil
		}
		pool = "service:" + name
	}
	return &op{
		nd: nd, desc: "allocate_ip " + name, noMidKill: true,
		req: protocol.AllocateIP{Service: name},
		apply: func(resp protocol.Response) error {
			if err := errAnswer(resp); err != nil {
				return err
			}
			a := resp.(protocol.IP).IP
			within := nd.slice
			if s := nd.services[name]; s != nil {
				within = s.subnet
			}
			if !within.Contains(a) {
				return fmt.Errorf("allocate_ip %s gave %s, outside %s", name, a, within)
			}
			if _, dup := nd.api[a]; dup {
				return fmt.Errorf("allocate_ip handed out %s twice", a)
			}
			nd.api[a] = pool
			return nil
		},
	}
}

func (nd *node) apiIn(pool string) int {
	n := 0
	for _, p := range nd.api {
		if p == pool {
			n++
		}
	}
	return n
}

// opGuest attaches a VM guest that runs its own WireGuard (a new one, or
// again, which rotates its key and keeps its address) or detaches one.
func (nd *node) opGuest() *op {
	var ids []string
	for id := range nd.guests {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	if len(ids) > 0 && nd.w.rng.IntN(2) == 0 {
		id := pick(nd.w.rng, ids)
		return &op{
			nd: nd, desc: "detach_container guest " + id, keys: []string{"guest:" + id},
			req: protocol.DetachContainer{Handle: protocol.GuestManaged(id)},
			apply: func(resp protocol.Response) error {
				if err := errAnswer(resp); err != nil {
					return err
				}
				delete(nd.peers, nd.guests[id].pub)
				delete(nd.guests, id)
				return nil
			},
		}
	}
	if nd.down || len(ids) >= 4 {
		return nil
	}
	id := fmt.Sprintf("vm-%d", nd.w.seq)
	if len(ids) > 0 && nd.w.rng.IntN(3) == 0 {
		id = pick(nd.w.rng, ids)
	}
	old, again := nd.guests[id]
	svc := pick(nd.w.rng, serviceNames)
	if again {
		svc = old.service
	}
	return &op{
		nd: nd, desc: "attach_container guest " + id + " to " + svc, keys: []string{"guest:" + id},
		req: protocol.AttachContainer{Handle: protocol.GuestManaged(id), Service: svc, JoinGlobal: true},
		apply: func(resp protocol.Response) error {
			if err := errAnswer(resp); err != nil {
				return err
			}
			gc := resp.(protocol.GuestConfig)
			switch {
			case !nd.slice.Contains(gc.OverlayIP) || gc.OverlayIP == nd.nodeIP:
				return fmt.Errorf("guest address %s is not a guest address of slice %s", gc.OverlayIP, nd.slice)
			case len(gc.Peers) != 1 || gc.Peers[0].PublicKey != nd.pub:
				return fmt.Errorf("guest config peers %+v, want the node (%s)", gc.Peers, nd.pub)
			case again && gc.OverlayIP != old.ip:
				return fmt.Errorf("attaching guest %s again moved it from %s to %s", id, old.ip, gc.OverlayIP)
			case again && gc.PublicKey == old.pub:
				return fmt.Errorf("attaching guest %s again kept its key", id)
			}
			if again {
				delete(nd.peers, old.pub)
			}
			nd.guests[id] = guest{ip: gc.OverlayIP, pub: gc.PublicKey, service: svc}
			nd.peers[gc.PublicKey] = []string{netip.PrefixFrom(gc.OverlayIP, 32).String()}
			return nil
		},
	}
}

// opRefusedRelease tries to release an address that is not the caller's:
// a container's, a gateway or the node IP. It must be refused.
func (nd *node) opRefusedRelease() *op {
	targets := []netip.Addr{nd.nodeIP}
	for _, s := range nd.services {
		targets = append(targets, s.gateway)
	}
	for _, c := range nd.ctrs {
		if c.service != "" && !c.dead {
			targets = append(targets, c.ip)
		}
	}
	for _, g := range nd.guests {
		targets = append(targets, g.ip)
	}
	slices.SortFunc(targets, netip.Addr.Compare)
	a := pick(nd.w.rng, targets)
	return &op{
		nd: nd, desc: "release_ip " + a.String() + " (not ours: must be refused)", noMidKill: true,
		req: protocol.ReleaseIP{IP: a},
		apply: func(resp protocol.Response) error {
			if _, ok := resp.(protocol.Err); !ok {
				return fmt.Errorf("release_ip of %s, which the caller never allocated, answered %s", a, resp.Result())
			}
			return nil
		},
	}
}

// run executes o to its definite answer.
func (w *world) run(o *op) {
	w.t.Helper()
	w.logf("node %s: %s", o.nd.name, o.desc)
	resp, err := o.nd.do(o.req)
	if err != nil {
		w.fatalf("node %s: %s: %v", o.nd.name, o.desc, err)
	}
	if err := o.apply(resp); err != nil {
		w.fatalf("node %s: %s: %v", o.nd.name, o.desc, err)
	}
}

// runKilled sends o and SIGKILLs the node's daemon after delay, restarts
// it, and settles the model: a definite answer is applied, a lost one makes
// o's keys unsure.
func (w *world) runKilled(o *op, delay time.Duration) {
	w.t.Helper()
	w.logf("node %s: %s, SIGKILL after %v", o.nd.name, o.desc, delay)
	type result struct {
		resp protocol.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := o.nd.do(o.req)
		done <- result{resp, err}
	}()
	time.Sleep(delay)
	o.nd.n.Kill()
	o.nd.n.Start()
	r := <-done
	var lost *client.ConnectionLostError
	switch {
	case r.err == nil:
		w.logf("node %s: %s answered %s despite the kill", o.nd.name, o.desc, r.resp.Result())
		if err := o.apply(r.resp); err != nil {
			w.fatalf("node %s: %s: %v", o.nd.name, o.desc, err)
		}
	case errors.As(r.err, &lost):
		w.logf("node %s: %s: answer lost; %v unsure", o.nd.name, o.desc, o.keys)
		for _, k := range o.keys {
			o.nd.unsure[k] = true
		}
	default:
		w.fatalf("node %s: %s: %v", o.nd.name, o.desc, r.err)
	}
}

// killBetween SIGKILLs a node's daemon between two operations.
func (w *world) killBetween(nd *node) {
	w.logf("node %s: SIGKILL between operations", nd.name)
	nd.n.Kill()
	nd.n.Start()
}
