package engine

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/zlayer/zlayer-overlayd/internal/dns"
	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// A full disk under the state store: every request is either answered ok
// and kept (it is there after a restart), or answered with an err that
// names the disk, and then nothing of it is left, in the answer to status,
// in the links or in the WireGuard peers. The store is a real bbolt file on
// a real tmpfs filled to the last page, so which commits fail is the
// kernel's and bbolt's doing (a commit that rewrites pages the file already
// has succeeds on a full disk), and the test holds every request to the
// same rule whichever way it went.
func TestFullDiskRefusesRequestsWithoutATrace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs for the store needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0700"); err != nil {
		t.Skipf("mount a tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	srv, err := dns.New(dns.Config{Zone: "zlayer.local"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	h := newHarnessIn(t, dir, wg.KindKernel, func(c *Config) {
		c.DNS = &DNSConfig{Server: srv, OverlayPort: 53, MainPort: 15353, NodeListeners: NodeListenersOff}
	})

	h.ok(globalReq("10.200.3.0/24"))
	h.ok(protocol.SetupServiceOverlay{Service: "web", Mode: "shared"})

	// What the removals remove, made while the disk has room.
	var n nodeThings
	for kind := range kindDetach {
		for i := range 12 {
			req := n.next(t, h, kind, i)
			n.note(req, h.ok(req))
		}
	}

	filler := filepath.Join(dir, "filler")
	fill(t, filler)

	// Each kind of request in turn, repeated until the disk refuses one.
	// Additions grow the file, so the disk refuses each of them in the
	// end; a removal rewrites pages too, but usually lives on the pages
	// the commits before it freed, and may be answered ok every time.
	removalsRefused := 0
	for kind := range kindCount {
		refused, kept := 0, 0
		for i := 100; refused == 0 && i < 400; i++ {
			req := n.next(t, h, kind, i)
			if req == nil {
				break
			}
			before := h.world()
			resp := h.do(req)
			e, bad := resp.(protocol.Err)
			if !bad {
				kept++
				n.note(req, resp)
				continue
			}
			refused++
			if !strings.Contains(e.Message, "no space left on device") {
				t.Fatalf("%s on a full disk: the err does not name the problem: %s", req.Op(), e.Message)
			}
			h.e.bg.Wait()
			if after := h.world(); after != before {
				t.Fatalf("%s was refused (%s) but changed the node:\nbefore %s\nafter  %s", req.Op(), e.Message, before, after)
			}
		}
		t.Logf("%s on the full disk: %d answered ok, then %d refused", kindOps[kind], kept, refused)
		if refused == 0 && kind < kindDetach {
			t.Fatalf("%s was never refused: the disk never filled for it, and this test showed nothing", kindOps[kind])
		}
		if kind >= kindDetach {
			removalsRefused += refused
		}
	}
	if removalsRefused == 0 {
		t.Fatal("no removal was refused: this test showed nothing about them")
	}

	// Room again: the daemon serves as before, and a restart brings back
	// exactly what was answered ok.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	h.ok(protocol.SetupServiceOverlay{Service: "after", Mode: "shared"})
	h.e.bg.Wait()
	want := h.world()
	h.crash()
	if got := h.world(); got != want {
		t.Fatalf("after a restart the node is not what was answered ok:\nbefore %s\nafter  %s", want, got)
	}
}

const (
	kindAllocate = iota
	kindAttach
	kindAddPeer
	kindRegisterDNS
	kindSetupService
	kindDetach // the removals from here on
	kindRemovePeer
	kindReleaseIP
	kindUnregisterDNS
	kindTeardownService
	kindCount
)

var kindOps = [kindCount]string{"allocate_ip", "attach_container", "add_peer", "register_dns", "setup_service_overlay",
	"detach_container", "remove_peer", "release_ip", "unregister_dns", "teardown_service_overlay"}

// nodeThings is what the requests answered ok made, for the removals.
type nodeThings struct {
	pids     []uint32
	peers    []string
	ips      []netip.Addr
	names    []string
	services []string
}

// next is the i-th request of kind, nil when a removal has nothing left.
func (n *nodeThings) next(t *testing.T, h *harness, kind, i int) protocol.Request {
	switch kind {
	case kindAllocate:
		return protocol.AllocateIP{Service: "elsewhere"}
	case kindAttach:
		pid := 1000 + i
		h.procs.Add(pid)
		return protocol.AttachContainer{Handle: protocol.LinuxPID(uint32(pid)), Service: "web"}
	case kindAddPeer:
		return protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: newKey(t).String(), Endpoint: "192.0.2.1:51820", AllowedIPs: fmt.Sprintf("10.201.%d.%d/32", i/250, i%250)}}
	case kindRegisterDNS:
		return protocol.RegisterDNS{Name: fmt.Sprintf("n%d", i), IP: netip.AddrFrom4([4]byte{10, 200, byte(9 + i/250), byte(i % 250)})}
	case kindSetupService:
		return protocol.SetupServiceOverlay{Service: fmt.Sprintf("s%d", i), Mode: "shared", Subnet: fmt.Sprintf("10.202.%d.%d/28", i/16, i%16*16)}
	case kindDetach:
		if len(n.pids) == 0 {
			return nil
		}
		return protocol.DetachContainer{Handle: protocol.LinuxPID(n.pids[0])}
	case kindRemovePeer:
		if len(n.peers) == 0 {
			return nil
		}
		return protocol.RemovePeer{Pubkey: n.peers[0]}
	case kindReleaseIP:
		if len(n.ips) == 0 {
			return nil
		}
		return protocol.ReleaseIP{IP: n.ips[0]}
	case kindUnregisterDNS:
		if len(n.names) == 0 {
			return nil
		}
		return protocol.UnregisterDNS{Name: n.names[0]}
	case kindTeardownService:
		if len(n.services) == 0 {
			return nil
		}
		return protocol.TeardownServiceOverlay{Service: n.services[0]}
	}
	return nil
}

// note books what req, answered ok with resp, made or removed.
func (n *nodeThings) note(req protocol.Request, resp protocol.Response) {
	switch r := req.(type) {
	case protocol.AllocateIP:
		n.ips = append(n.ips, resp.(protocol.IP).IP)
	case protocol.AttachContainer:
		n.pids = append(n.pids, r.Handle.PID)
	case protocol.AddPeer:
		n.peers = append(n.peers, r.PublicKey)
	case protocol.RegisterDNS:
		n.names = append(n.names, r.Name)
	case protocol.SetupServiceOverlay:
		n.services = append(n.services, r.Service)
	case protocol.DetachContainer:
		n.pids = n.pids[1:]
	case protocol.RemovePeer:
		n.peers = n.peers[1:]
	case protocol.ReleaseIP:
		n.ips = n.ips[1:]
	case protocol.UnregisterDNS:
		n.names = n.names[1:]
	case protocol.TeardownServiceOverlay:
		n.services = n.services[1:]
	}
}

// fill writes path until the file system has no block left.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !strings.Contains(err.Error(), "no space left") {
				t.Fatalf("filling %s: %v", path, err)
			}
			return
		}
	}
}

// world is what a request can change on the node, as one comparable text:
// the answer to status (less its clocks and counters), every link with its
// addresses, and every WireGuard device's peers.
func (h *harness) world() string {
	h.t.Helper()
	st := h.status()
	st.PeersRead, st.LastReconcile, st.ReconcileChanges, st.EventsDropped = 0, 0, 0, 0
	b, err := json.Marshal(st)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	out = append(out, string(b))
	links, err := h.net.Links("")
	if err != nil {
		h.t.Fatal(err)
	}
	for _, l := range links {
		nl, _ := h.net.Link(l.Name)
		var spec linuxnet.AttachSpec
		if nl.Spec != nil {
			spec = *nl.Spec
		}
		nl.Spec = nil
		out = append(out, fmt.Sprintf("link %s %+v %+v", l.Name, nl, spec))
	}
	for _, d := range h.wg.Devices() {
		snap, err := d.Snapshot()
		if err != nil {
			h.t.Fatal(err)
		}
		for _, p := range snap.Peers {
			out = append(out, fmt.Sprintf("peer %s %s %v", d.Name(), p.PublicKey, p.AllowedIPs))
		}
	}
	slices.Sort(out[1:])
	return strings.Join(out, "\n")
}
