package wg

// Multi-node test harness. wireguard-go opens its UDP sockets in the network
// namespace of whichever thread brings the bind up, and its goroutines are
// not pinned to threads, so one process can only run devices of one
// namespace. Each simulated node is therefore this test binary re-executed
// under "ip netns exec", driven over its stdin/stdout with JSON lines.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

const helperEnv = "ZLTW_WG_NODE"

type nodeRequest struct {
	Op     string          `json:"op"`
	Name   string          `json:"name,omitempty"`
	MTU    int             `json:"mtu,omitempty"`
	CIDR   string          `json:"cidr,omitempty"`
	Config *wgtypes.Config `json:"config,omitempty"`
}

type nodeResponse struct {
	Err    string          `json:"err,omitempty"`
	Device *wgtypes.Device `json:"device,omitempty"`
}

// TestHelperProcess is not a test: it is the node process the privileged
// tests start inside a network namespace.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("node process for the multi-namespace tests; runs only when they re-execute the test binary")
	}
	runNode(os.Stdin, os.Stdout)
	os.Exit(0)
}

func runNode(in io.Reader, out io.Writer) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var dev Device
	defer func() {
		if dev != nil {
			dev.Close()
		}
	}()
	baseline := 0
	dec, enc := json.NewDecoder(in), json.NewEncoder(out)
	for {
		var req nodeRequest
		if err := dec.Decode(&req); err != nil {
			return // the test closed our stdin, or died
		}
		var resp nodeResponse
		err := func() error {
			switch req.Op {
			case "open":
				if dev != nil {
					// A second Open in the same process must be refused
					// because our own UAPI socket is live.
					_, err := userspaceBackend{}.Open(req.Name, Options{MTU: req.MTU, Logger: log})
					return err
				}
				baseline = runtime.NumGoroutine()
				d, err := userspaceBackend{}.Open(req.Name, Options{MTU: req.MTU, Logger: log})
				if err != nil {
					return err
				}
				dev = d
				return nil
			case "addr":
				link, err := netlink.LinkByName(dev.Name())
				if err != nil {
					return err
				}
				addr, err := netlink.ParseAddr(req.CIDR)
				if err != nil {
					return err
				}
				if err := netlink.AddrAdd(link, addr); err != nil {
					return err
				}
				return netlink.LinkSetUp(link)
			case "configure":
				return dev.Configure(*req.Config)
			case "snapshot":
				d, err := dev.Snapshot()
				resp.Device = d
				return err
			case "close":
				err := dev.Close()
				dev = nil
				if err != nil {
					return err
				}
				if leaked := waitGoroutines(baseline); leaked != "" {
					return errors.New("goroutines left after Close: " + leaked)
				}
				return nil
			}
			return fmt.Errorf("unknown op %q", req.Op)
		}()
		if err != nil {
			resp.Err = err.Error()
		}
		if enc.Encode(resp) != nil {
			return
		}
	}
}

// node is the test's handle on one node process.
type node struct {
	t    *testing.T
	ns   string
	dev  string
	in   io.WriteCloser
	out  *json.Decoder
	resp chan nodeResponse
}

func startNode(t *testing.T, ns string) *node {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &logWriter{t: t, prefix: ns + ": "}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		in.Close()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return &node{t: t, ns: ns, in: in, out: json.NewDecoder(out)}
}

func (n *node) call(req nodeRequest) nodeResponse {
	n.t.Helper()
	if err := json.NewEncoder(n.in).Encode(req); err != nil {
		n.t.Fatalf("%s: send %s: %v", n.ns, req.Op, err)
	}
	ch := make(chan nodeResponse, 1)
	errc := make(chan error, 1)
	go func() {
		var r nodeResponse
		if err := n.out.Decode(&r); err != nil {
			errc <- err
			return
		}
		ch <- r
	}()
	select {
	case r := <-ch:
		return r
	case err := <-errc:
		n.t.Fatalf("%s: %s: node process died: %v", n.ns, req.Op, err)
	case <-time.After(60 * time.Second):
		n.t.Fatalf("%s: %s: node process did not answer", n.ns, req.Op)
	}
	return nodeResponse{}
}

func (n *node) must(req nodeRequest) nodeResponse {
	n.t.Helper()
	r := n.call(req)
	if r.Err != "" {
		n.t.Fatalf("%s: %s: %s", n.ns, req.Op, r.Err)
	}
	return r
}

func (n *node) open(name string) {
	n.t.Helper()
	n.must(nodeRequest{Op: "open", Name: name})
	n.dev = name
}

func (n *node) configure(cfg wgtypes.Config) {
	n.t.Helper()
	n.must(nodeRequest{Op: "configure", Config: &cfg})
}

func (n *node) snapshot() *wgtypes.Device {
	n.t.Helper()
	return n.must(nodeRequest{Op: "snapshot"}).Device
}

func (n *node) peer(pub wgtypes.Key) wgtypes.Peer {
	n.t.Helper()
	for _, p := range n.snapshot().Peers {
		if p.PublicKey == pub {
			return p
		}
	}
	n.t.Fatalf("%s: peer %s not in snapshot", n.ns, pub)
	return wgtypes.Peer{}
}

// logWriter forwards a node's log lines to the test log while the test runs.
type logWriter struct {
	t      *testing.T
	prefix string
	buf    []byte
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		func() {
			defer func() { recover() }() // the test may already have finished
			w.t.Log(w.prefix + line)
		}()
	}
}

func requireRoot(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veth pairs and TUN devices")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs the %s tool, which is not installed", tool)
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("needs /dev/net/tun: %v", err)
	}
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNetns creates a network namespace with loopback up, deleted when the
// test ends (after the node processes in it, which are cleaned up later-
// registered-first).
func newNetns(t *testing.T, name string) {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
}

// twoNodes is two namespaces joined by a veth pair (10.201.0.1/24 and
// .2/24), each with a node process that has opened a userspace device and
// peered it with the other over the veth: tunnel addresses 10.202.0.1 and
// 10.202.0.2.
type twoNodes struct {
	a, b         *node
	keyA, keyB   wgtypes.Key
	vethA, vethB string
}

const wgPort = 51820

func newTwoNodes(t *testing.T) *twoNodes {
	t.Helper()
	r := randHex(t, 6)
	nsA, nsB := "zltw-"+r+"-a", "zltw-"+r+"-b"
	newNetns(t, nsA)
	newNetns(t, nsB)
	tn := &twoNodes{vethA: "zltw" + r + "va", vethB: "zltw" + r + "vb"}
	run(t, "ip", "link", "add", tn.vethA, "netns", nsA, "type", "veth", "peer", "name", tn.vethB, "netns", nsB)
	run(t, "ip", "-n", nsA, "addr", "add", "10.201.0.1/24", "dev", tn.vethA)
	run(t, "ip", "-n", nsB, "addr", "add", "10.201.0.2/24", "dev", tn.vethB)
	run(t, "ip", "-n", nsA, "link", "set", tn.vethA, "up")
	run(t, "ip", "-n", nsB, "link", "set", tn.vethB, "up")

	var err error
	if tn.keyA, err = GenerateKey(); err != nil {
		t.Fatal(err)
	}
	if tn.keyB, err = GenerateKey(); err != nil {
		t.Fatal(err)
	}
	tn.a, tn.b = startNode(t, nsA), startNode(t, nsB)
	tn.a.open("zltw" + r + "a")
	tn.b.open("zltw" + r + "b")
	for _, side := range []struct {
		n        *node
		key      wgtypes.Key
		peer     wgtypes.Key
		endpoint string
		peerIP   string
		addr     string
	}{
		{tn.a, tn.keyA, tn.keyB.PublicKey(), "10.201.0.2", "10.202.0.2/32", "10.202.0.1/24"},
		{tn.b, tn.keyB, tn.keyA.PublicKey(), "10.201.0.1", "10.202.0.1/32", "10.202.0.2/24"},
	} {
		side.n.configure(wgtypes.Config{
			PrivateKey: &side.key,
			ListenPort: new(wgPort),
			Peers: []wgtypes.PeerConfig{{
				PublicKey:  side.peer,
				Endpoint:   &net.UDPAddr{IP: net.ParseIP(side.endpoint), Port: wgPort},
				AllowedIPs: []net.IPNet{mustCIDR(t, side.peerIP)},
			}},
		})
		side.n.must(nodeRequest{Op: "addr", CIDR: side.addr})
	}
	return tn
}

// ping reports whether ns reaches ip; it tries a few times because the first
// packets may wait for the handshake or for the link to come up.
func ping(ns, ip string) error {
	var out []byte
	var err error
	for range 5 {
		out, err = exec.Command("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", ip).CombinedOutput()
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("ping %s from %s: %v\n%s", ip, ns, err, out)
}
