package firewall

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lab is three namespaces in a row:
//
//	container (10.77.1.2, fd77:1::2)
//	  └ veth ─ bridge "…b" in node (10.77.1.1, fd77:1::1)
//	node: uplink "…u" (198.51.100.1, 2001:db8:77::1), forwarding on
//	  └ veth ─ internet "…i" (198.51.100.2, 2001:db8:77::2, plus the
//	    cluster addresses 10.77.200.9 and fd77:200::9)
//
// The internet namespace has no route back to the container subnet, so a
// reply reaches the container only if the node masqueraded the request.
// The node routes the cluster prefixes 10.77.200.0/24 and fd77:200::/64
// via the internet namespace, standing in for a cluster peer reached
// outside the overlay.
type lab struct {
	container, node, internet netNS
	bridge, uplink, far       string // interface names: node bridge, node uplink, internet side
	spec                      Spec
}

func newLab(t *testing.T) lab {
	t.Helper()
	id := runID(t)
	l := lab{
		container: newNetNS(t, "zltf-"+id+"-ctr"),
		node:      newNetNS(t, "zltf-"+id+"-node"),
		internet:  newNetNS(t, "zltf-"+id+"-inet"),
		bridge:    "zltf" + id + "b",
		uplink:    "zltf" + id + "u",
		far:       "zltf" + id + "i",
	}
	ctr, host := "zltf"+id+"c", "zltf"+id+"h"
	run(t, "ip", "link", "add", ctr, "netns", l.container.name, "type", "veth", "peer", "name", host, "netns", l.node.name)
	run(t, "ip", "link", "add", l.uplink, "netns", l.node.name, "type", "veth", "peer", "name", l.far, "netns", l.internet.name)

	c, n, i := l.container, l.node, l.internet
	c.exec(t, "ip", "link", "set", "lo", "up")
	c.exec(t, "ip", "link", "set", ctr, "up")
	c.exec(t, "ip", "addr", "add", "10.77.1.2/24", "dev", ctr)
	c.exec(t, "ip", "addr", "add", "fd77:1::2/64", "dev", ctr, "nodad")
	c.exec(t, "ip", "route", "add", "default", "via", "10.77.1.1")
	c.exec(t, "ip", "-6", "route", "add", "default", "via", "fd77:1::1")

	n.exec(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	n.exec(t, "ip", "link", "add", l.bridge, "type", "bridge")
	n.exec(t, "ip", "link", "set", host, "master", l.bridge)
	for _, dev := range []string{"lo", host, l.bridge, l.uplink} {
		n.exec(t, "ip", "link", "set", dev, "up")
	}
	n.exec(t, "ip", "addr", "add", "10.77.1.1/24", "dev", l.bridge)
	n.exec(t, "ip", "addr", "add", "fd77:1::1/64", "dev", l.bridge, "nodad")
	n.exec(t, "ip", "addr", "add", "198.51.100.1/24", "dev", l.uplink)
	n.exec(t, "ip", "addr", "add", "2001:db8:77::1/64", "dev", l.uplink, "nodad")
	n.exec(t, "ip", "route", "add", "10.77.200.0/24", "via", "198.51.100.2")
	n.exec(t, "ip", "-6", "route", "add", "fd77:200::/64", "via", "2001:db8:77::2")

	i.exec(t, "ip", "link", "set", "lo", "up")
	i.exec(t, "ip", "link", "set", l.far, "up")
	i.exec(t, "ip", "addr", "add", "198.51.100.2/24", "dev", l.far)
	i.exec(t, "ip", "addr", "add", "10.77.200.9/32", "dev", l.far)
	i.exec(t, "ip", "addr", "add", "2001:db8:77::2/64", "dev", l.far, "nodad")
	i.exec(t, "ip", "addr", "add", "fd77:200::9/128", "dev", l.far, "nodad")

	l.spec = Spec{
		OverlayIfaces: []string{"zltf" + id + "w"}, // a WireGuard device that is down: traffic never uses it
		Bridges:       []string{l.bridge},
		Sources:       []netip.Prefix{netip.MustParsePrefix("10.77.1.0/24"), netip.MustParsePrefix("fd77:1::/64")},
		Cluster:       []netip.Prefix{netip.MustParsePrefix("10.77.0.0/16"), netip.MustParsePrefix("fd77::/16")},
	}
	return l
}

func (l lab) apply(t *testing.T, spec Spec) {
	t.Helper()
	if err := l.node.fw().Apply(spec); err != nil {
		t.Fatalf("Apply in the node namespace: %v", err)
	}
}

var echoSource = regexp.MustCompile(`IP6? (\S+) > (\S+): ICMP6?,? echo request`)

// sourceSeenAtInternet pings dst from the container and returns the
// source address the internet namespace saw on the echo request, and
// whether the ping was answered.
func (l lab) sourceSeenAtInternet(t *testing.T, dst string) (string, bool) {
	t.Helper()
	filter := "icmp and icmp[icmptype] == icmp-echo"
	if netip.MustParseAddr(dst).Is6() {
		filter = "icmp6 and ip6[40] == 128"
	}
	capt := startCapture(t, l.internet, l.far, 1, false, filter)
	answered := pingOK(l.container, dst)
	out := capt.wait(t, 10*time.Second)
	m := echoSource.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no echo request to %s in the capture:\n%s", dst, out)
	}
	return m[1], answered
}

func TestMasqueradeEndToEnd(t *testing.T) {
	needRoot(t, "tcpdump", "ping")
	l := newLab(t)

	off := l.spec
	off.Masquerade = false
	l.apply(t, off)
	src, answered := l.sourceSeenAtInternet(t, "198.51.100.2")
	if src != "10.77.1.2" || answered {
		t.Fatalf("masquerade off: internet saw source %s, answered %v; want 10.77.1.2 unanswered", src, answered)
	}

	on := l.spec
	on.Masquerade = true
	l.apply(t, on)
	src, answered = l.sourceSeenAtInternet(t, "198.51.100.2")
	if src != "198.51.100.1" || !answered {
		t.Fatalf("masquerade on: internet saw source %s, answered %v; want the node's 198.51.100.1 and an answer", src, answered)
	}
	src, answered = l.sourceSeenAtInternet(t, "2001:db8:77::2")
	if src != "2001:db8:77::1" || !answered {
		t.Fatalf("masquerade on, IPv6: internet saw source %s, answered %v; want the node's 2001:db8:77::1 and an answer", src, answered)
	}

	// Cluster destinations keep the container's own address, even though
	// they leave through the same uplink.
	src, _ = l.sourceSeenAtInternet(t, "10.77.200.9")
	if src != "10.77.1.2" {
		t.Fatalf("cluster destination: internet saw source %s; want the container's 10.77.1.2", src)
	}
	src, _ = l.sourceSeenAtInternet(t, "fd77:200::9")
	if src != "fd77:1::2" {
		t.Fatalf("IPv6 cluster destination: internet saw source %s; want the container's fd77:1::2", src)
	}

	// The counters tell an operator where packets went, and traffic
	// moving them is not drift.
	st, err := l.node.fw().Inspect("")
	if err != nil {
		t.Fatal(err)
	}
	masqueraded := map[string]uint64{}
	for _, c := range st.Chains {
		for _, r := range c.Rules {
			masqueraded[r.Comment] = r.Packets
		}
	}
	if masqueraded["masquerade IPv4 container egress"] == 0 || masqueraded["masquerade IPv6 container egress"] == 0 {
		t.Errorf("masquerade counters did not move: %v", masqueraded)
	}
	if drift, err := l.node.fw().Drifted(on); err != nil || drift {
		t.Errorf("Drifted after traffic = %v, %v; want false", drift, err)
	}
}

var synMSS = regexp.MustCompile(`Flags \[S\].*options \[mss (\d+)`)

// TestMSSClamp lowers the node's uplink MTU to 1280 and hides the ICMP
// "fragmentation needed" errors the node would send (as many real paths
// do): without clamping, a container with a 1500-byte MTU then cannot push
// full-size segments through; with clamping, the SYN carries an MSS that
// fits the route and a 2 MB upload completes.
func TestMSSClamp(t *testing.T) {
	needRoot(t, "tcpdump")
	l := newLab(t)
	l.node.exec(t, "ip", "link", "set", l.uplink, "mtu", "1280")
	l.node.exec(t, "sh", "-c", `nft -f - <<'EOF'
table inet zltf_blackhole {
	chain out {
		type filter hook output priority 0; policy accept;
		icmp type destination-unreachable icmp code frag-needed drop
	}
}
EOF`)

	var ln net.Listener
	err := inNetNS(t, l.internet, func() (err error) {
		ln, err = net.Listen("tcp4", "198.51.100.2:0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go serveDigests(ln)
	port := ln.Addr().(*net.TCPAddr).Port

	payload := make([]byte, 2<<20)
	if _, err := rand.Read(payload); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		clamp     bool
		clientMSS int // TCP_MAXSEG set on the client before connecting; 0 = from its MTU
		wantMSS   int
		complete  bool
		limit     time.Duration
	}{
		{clamp: false, wantMSS: 1460, complete: false, limit: 5 * time.Second},
		{clamp: true, wantMSS: 1280 - 40, complete: true, limit: 60 * time.Second},
		// Clamping only ever lowers: a smaller MSS passes unchanged.
		{clamp: true, clientMSS: 1000, wantMSS: 1000, complete: true, limit: 60 * time.Second},
	} {
		spec := l.spec
		spec.Masquerade = true
		spec.ClampMSS = tc.clamp
		l.apply(t, spec)

		capt := startCapture(t, l.internet, l.far, 1, true,
			fmt.Sprintf("tcp dst port %d and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn", port))
		err := upload(t, l.container, fmt.Sprintf("198.51.100.2:%d", port), tc.clientMSS, payload, tc.limit)
		out := capt.wait(t, 10*time.Second)
		m := synMSS.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("clamp %v, client MSS %d: no SYN with an MSS option in the capture:\n%s", tc.clamp, tc.clientMSS, out)
		}
		if mss, _ := strconv.Atoi(m[1]); mss != tc.wantMSS {
			t.Errorf("clamp %v, client MSS %d: SYN reached the far side with MSS %d, want %d", tc.clamp, tc.clientMSS, mss, tc.wantMSS)
		}
		if tc.complete && err != nil {
			t.Errorf("clamp on, client MSS %d: 2 MB upload through the 1280-byte path failed: %v", tc.clientMSS, err)
		}
		if !tc.complete && err == nil {
			t.Errorf("clamp off: 2 MB upload completed although the path hides its MTU; the test no longer proves clamping matters")
		}
	}
}

// serveDigests answers each connection with the SHA-256 of everything the
// client sent before closing its write side.
func serveDigests(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			h := sha256.New()
			if _, err := io.Copy(h, c); err != nil {
				return
			}
			_, _ = c.Write(h.Sum(nil))
		}()
	}
}

// upload sends payload from a socket in ns (advertising mss when it is
// not zero) and checks the server's digest,
// giving up after limit.
func upload(t *testing.T, ns netNS, addr string, mss int, payload []byte, limit time.Duration) error {
	t.Helper()
	dialer := net.Dialer{Timeout: 5 * time.Second}
	if mss > 0 {
		dialer.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG, mss) }); err != nil {
				return err
			}
			return serr
		}
	}
	var conn net.Conn
	err := inNetNS(t, ns, func() (err error) {
		conn, err = dialer.Dial("tcp4", addr)
		return err
	})
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", addr, err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(limit)); err != nil {
		return err
	}
	if _, err := conn.Write(payload); err != nil {
		return fmt.Errorf("sending: %w", err)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	got, err := io.ReadAll(conn)
	if err != nil {
		return fmt.Errorf("waiting for the server's digest: %w", err)
	}
	if want := sha256.Sum256(payload); !bytes.Equal(got, want[:]) {
		return fmt.Errorf("server digest %x does not match the payload's %x", got, want)
	}
	return nil
}
