package wg

// Multi-node test harness. wireguard-go opens its UDP sockets in the network
// namespace of whichever thread brings the bind up, and its goroutines are
// not pinned to threads, so one process can only run devices of one
// namespace. Each simulated node is therefore this test binary re-executed
// under "ip netns exec", driven over its stdin/stdout with JSON lines.

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/zlayer/zlayer-overlayd/internal/lab/nstest"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

const helperEnv = "ZLTW_WG_NODE"

type nodeRequest struct {
	Op     string          `json:"op"`
	Name   string          `json:"name,omitempty"`
	MTU    int             `json:"mtu,omitempty"`
	CIDR   string          `json:"cidr,omitempty"`
	Config *wgtypes.Config `json:"config,omitempty"`
	// Dataplane opens the device with the detached data plane backend,
	// its process logging to LogDir.
	Dataplane bool   `json:"dataplane,omitempty"`
	LogDir    string `json:"log_dir,omitempty"`
	// DataplaneEnv is added to the data plane process's environment.
	DataplaneEnv []string `json:"dataplane_env,omitempty"`
	// Debug opens with a logger at debug, as a daemon run --log-level debug.
	Debug bool `json:"debug,omitempty"`
	// Addr, Bytes and Seed are for the bulk transfer ops, which run in
	// the background so both nodes can send at once: "sink" accepts one
	// TCP connection on Addr and hashes what arrives, "source" sends Bytes
	// from a ChaCha8 stream seeded with Seed to Addr; "sunk" and "sent"
	// wait for their results.
	Addr  string `json:"addr,omitempty"`
	Bytes int64  `json:"bytes,omitempty"`
	Seed  uint64 `json:"seed,omitempty"`
}

type nodeResponse struct {
	Err    string          `json:"err,omitempty"`
	Device *wgtypes.Device `json:"device,omitempty"`
	// SHA256 and Bytes say what a source sent or a sink received.
	SHA256 string `json:"sha256,omitempty"`
	Bytes  int64  `json:"bytes,omitempty"`
}

// transfer is what one side of a bulk TCP transfer saw.
type transfer struct {
	sum   string
	bytes int64
	err   error
}

// sink accepts one connection on addr and reports, once, the hash and
// length of everything it received.
func sink(addr string) (<-chan transfer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	done := make(chan transfer, 1)
	go func() {
		defer ln.Close()
		conn, err := ln.Accept()
		if err != nil {
			done <- transfer{err: err}
			return
		}
		defer conn.Close()
		h := sha256.New()
		n, err := io.Copy(h, conn)
		done <- transfer{sum: hex.EncodeToString(h.Sum(nil)), bytes: n, err: err}
	}()
	return done, nil
}

// source sends n bytes of a seeded ChaCha8 stream to addr in the
// background and reports, once, their hash.
func source(addr string, n int64, seed uint64) <-chan transfer {
	done := make(chan transfer, 1)
	go func() { done <- sendStream(addr, n, seed) }()
	return done
}

func sendStream(addr string, n int64, seed uint64) transfer {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return transfer{err: err}
	}
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	h := sha256.New()
	sent, err := io.CopyN(io.MultiWriter(conn, h), rand.NewChaCha8(key), n)
	if cerr := conn.Close(); err == nil {
		err = cerr
	}
	return transfer{sum: hex.EncodeToString(h.Sum(nil)), bytes: sent, err: err}
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

// transferHangs is when a background transfer counts as hung. It bounds
// a hang, not a speed: 16 MiB take 10 s in an emulated guest, and a
// slower host's guest, at 1 to 4 Mbit/s, failed a bound of 50 s.
const transferHangs = 5 * time.Minute

func runNode(in io.Reader, out io.Writer) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var dev Device
	defer func() {
		if dev != nil {
			dev.Close()
		}
	}()
	baseline := 0
	var sunk, sent <-chan transfer
	// await is the result of a background transfer, into resp.
	await := func(ch <-chan transfer, what string, resp *nodeResponse) error {
		if ch == nil {
			return errors.New("no " + what)
		}
		select {
		case r := <-ch:
			resp.SHA256, resp.Bytes = r.sum, r.bytes
			return r.err
		case <-time.After(transferHangs):
			return fmt.Errorf("the %s did not finish in %v", what, transferHangs)
		}
	}
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
				log := log
				if req.Debug {
					log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
				}
				var backend Backend = userspaceBackend{}
				if req.Dataplane {
					var err error
					if backend, err = testDataplaneBackend(req.LogDir, req.DataplaneEnv, log); err != nil {
						return err
					}
				}
				d, err := backend.Open(req.Name, Options{MTU: req.MTU, Logger: log, Owner: testOwner})
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
			case "sink":
				var err error
				sunk, err = sink(req.Addr)
				return err
			case "sunk":
				return await(sunk, "sink", &resp)
			case "source":
				sent = source(req.Addr, req.Bytes, req.Seed)
				return nil
			case "sent":
				return await(sent, "source", &resp)
			case "crash":
				// Gone without closing anything, as a SIGKILL leaves it.
				os.Exit(3)
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
	*nstest.Helper
	t   *testing.T
	ns  string
	dev string
}

func startNode(t *testing.T, ns string) *node {
	t.Helper()
	return &node{Helper: nstest.StartHelper(t, ns, helperEnv+"=1"), t: t, ns: ns}
}

// kill SIGKILLs the node process, as a daemon dies, and waits until it is
// gone. Call it only once the node has answered or done something: until
// then its pid may still be ip netns exec's (nstest.Helper.PID).
func (n *node) kill() {
	n.t.Helper()
	pid := n.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		n.t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			n.t.Fatal("the node outlived SIGKILL")
		}
	}
}

func (n *node) call(req nodeRequest) nodeResponse {
	var r nodeResponse
	timeout := 60 * time.Second
	if req.Op == "sent" || req.Op == "sunk" {
		timeout = transferHangs + time.Minute // the node answers by then
	}
	n.Call(req.Op, req, &r, timeout)
	return r
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

func requireRoot(t *testing.T, tools ...string) {
	t.Helper()
	nstest.RequireRoot(t, "network namespaces, veth pairs and TUN devices", append([]string{"ip"}, tools...)...)
}

var (
	run      = nstest.Run
	randHex  = nstest.RandHex
	newNetns = nstest.NewNetns
)

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

// ping reports whether ns reaches ip within 45 s; it tries again and again
// because the first packets may wait for the handshake or for the link to
// come up. 45 s is the e2e suite's allowance for a first contact, which a
// guest under emulation once needed more than 15 s for.
func ping(ns, ip string) error {
	var out []byte
	var err error
	for deadline := time.Now().Add(45 * time.Second); time.Now().Before(deadline); {
		out, err = exec.Command("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", ip).CombinedOutput()
		if err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond) // an unreachable route fails at once
	}
	return fmt.Errorf("ping %s from %s: %v\n%s", ip, ns, err, out)
}
