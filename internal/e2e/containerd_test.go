//go:build linux

package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zlayer/zlayer-overlayd/internal/lab"
)

// TestCNIWithContainerd runs a container with Debian's containerd and
// `ctr run --cni`: ctr creates the container's namespace and calls
// zlayer-cni (ADD with /proc/<pid>/ns/net, DEL on exit) as any CNI runtime
// does. The container, on node 1, pings a namespace cnitool attached on
// node 2, across the overlay. The image is an OCI layout built here from
// busybox-static (no registry is reachable).
//
// ctr reads CNI configurations from /etc/cni/net.d and plugins from
// /opt/cni/bin only, so it runs in a private mount namespace in which the
// test's own directories are bound there; directories the test had to
// create as mount points are removed at the end.
func TestCNIWithContainerd(t *testing.T) {
	for _, bin := range []string{"containerd", "ctr", "runc", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s (apt-get install containerd runc busybox-static)", bin)
		}
	}
	busybox := staticBusybox(t)
	l := newLab(t)
	nodes := []*lab.Node{l.AddNode("n1"), l.AddNode("n2")}
	st := setupGlobal(t, nodes)
	meshPeers(t, nodes, st, nil)
	network := "zlcni" + l.ID

	// The peer: a namespace on node 2, attached with cnitool.
	peerNS, peerPath := l.AddNetns("peer")
	_, peer := newCNINode(t, l, nodes[1], network, "").add(peerNS, peerPath)

	// containerd 1.6's CNI library speaks spec versions up to 1.0.0.
	cn := newCNINode(t, l, nodes[0], network, "")
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[{"type":"zlayer-cni","socket":%q}]}`, network, nodes[0].Socket)
	if err := os.WriteFile(filepath.Join(cn.conf, "10-"+network+".conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	c := startContainerd(t, filepath.Join(l.Dir(), "containerd"))
	image := "docker.io/zlayer/busybox:" + l.ID
	archive := filepath.Join(l.Dir(), "image.tar")
	if err := os.WriteFile(archive, ociArchive(t, busybox, image), 0o644); err != nil {
		t.Fatal(err)
	}
	c.ctr(t, "image", "import", archive)

	for _, d := range []string{"/etc/cni/net.d", "/opt/cni/bin"} {
		mkdirOwned(t, d, false)
	}
	script := `mount --bind "$1" /etc/cni/net.d && mount --bind "$2" /opt/cni/bin && shift 2 && exec "$@"`
	args := []string{"unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", cn.conf, cn.bin,
		"ctr", "--address", c.socket, "-n", c.ns, "run", "--cni", "--rm", image, "zl" + l.ID,
		"sh", "-c", "ip -o -4 addr show dev eth0 && ping -c 3 -W 2 " + peer.Addr().String()}
	out, err := run(args...)
	if err != nil {
		t.Fatalf("ctr run --cni: %v\n%s\ncontainerd log:\n%s", err, out, c.log())
	}
	t.Logf("ctr run --cni:\n%s", out)
	var addr netip.Prefix
	for _, f := range strings.Fields(out) {
		if p, err := netip.ParsePrefix(f); err == nil && p.Addr().Is4() {
			addr = p
			break
		}
	}
	if !netip.MustParsePrefix(sliceOf(0)).Contains(addr.Addr()) || !strings.Contains(out, "3 packets received") {
		t.Fatalf("the container's eth0 is not on node 1's overlay, or its pings to %s failed:\n%s", peer.Addr(), out)
	}
	// ctr calls DEL once the container exits (and reconcile would notice
	// /proc/<pid>/ns/net gone if it did not); the attachment goes.
	t.Logf("attachments on node 1 right after ctr returned: %d", len(netnsAttachments(nodes[0])))
	lab.Eventually(t, 15*time.Second, "the container's attachment removed", func() error {
		if atts := netnsAttachments(nodes[0]); len(atts) != 0 {
			return fmt.Errorf("node 1 still holds %+v", atts)
		}
		return nil
	})
}

// staticBusybox is busybox-static's binary, or a skip.
func staticBusybox(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		static := true
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				static = false
			}
		}
		f.Close()
		if static {
			return p
		}
	}
	t.Skip("needs a static busybox for the image (apt-get install busybox-static)")
	return ""
}

// ociArchive is an OCI image layout, as a tar archive `ctr image import`
// reads: one uncompressed layer with busybox and the applets the test uses.
func ociArchive(t *testing.T, busybox, name string) []byte {
	t.Helper()
	bin, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(tw.WriteHeader(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}))
	must(tw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bin))}))
	_, err = tw.Write(bin)
	must(err)
	for _, applet := range []string{"sh", "ip", "ping", "sleep", "cat"} {
		must(tw.WriteHeader(&tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}))
	}
	must(tw.Close())

	blobs := map[string][]byte{}
	type descriptor struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
	}
	add := func(mediaType string, b []byte) descriptor {
		sum := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[d] = b
		return descriptor{MediaType: mediaType, Digest: d, Size: len(b)}
	}
	marshal := func(v any) []byte {
		b, err := json.Marshal(v)
		must(err)
		return b
	}
	layerDesc := add("application/vnd.oci.image.layer.v1.tar", layer.Bytes())
	config := add("application/vnd.oci.image.config.v1+json", marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDesc.Digest}},
		"config": map[string]any{"Cmd": []string{"sh"}},
	}))
	manifest := add("application/vnd.oci.image.manifest.v1+json", marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": config, "layers": []descriptor{layerDesc},
	}))
	manifest.Annotations = map[string]string{"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name[strings.LastIndex(name, ":")+1:]}

	var out bytes.Buffer
	aw := tar.NewWriter(&out)
	file := func(name string, b []byte) {
		must(aw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))}))
		_, err := aw.Write(b)
		must(err)
	}
	file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	file("index.json", marshal(map[string]any{"schemaVersion": 2, "manifests": []descriptor{manifest}}))
	for d, b := range blobs {
		file("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), b)
	}
	must(aw.Close())
	return out.Bytes()
}

// containerd is a containerd of the test's own: its root, state and socket
// in a scratch directory, the CRI plugin off.
type containerd struct {
	dir, socket, ns string
	cmd             *exec.Cmd
}

func startContainerd(t *testing.T, dir string) *containerd {
	t.Helper()
	c := &containerd{dir: dir, socket: filepath.Join(dir, "c.sock"), ns: "zltest"}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// The shims keep their sockets and runc its state under
	// /run/containerd whatever the configuration says.
	mkdirOwned(t, "/run/containerd", true)
	conf := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.socket, c.socket+".ttrpc")
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command("containerd", "--config", filepath.Join(dir, "config.toml"))
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Containers first (a failed test may leave one), then the daemon,
		// then whatever it left mounted in its directory.
		if out, err := run("ctr", "--address", c.socket, "-n", c.ns, "task", "ls", "-q"); err == nil {
			for _, id := range strings.Fields(out) {
				run("ctr", "--address", c.socket, "-n", c.ns, "task", "kill", "-s", "KILL", id)
				run("ctr", "--address", c.socket, "-n", c.ns, "task", "delete", "-f", id)
			}
		}
		c.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			c.cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if mounts, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
			for _, line := range strings.Split(string(mounts), "\n") {
				if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir) {
					syscall.Unmount(f[4], syscall.MNT_DETACH)
				}
			}
		}
	})
	lab.Eventually(t, 20*time.Second, "containerd answers", func() error {
		_, err := run("ctr", "--address", c.socket, "version")
		return err
	})
	return c
}

func (c *containerd) ctr(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(append([]string{"ctr", "--address", c.socket, "-n", c.ns}, args...)...)
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s\ncontainerd log:\n%s", strings.Join(args, " "), err, out, c.log())
	}
	return out
}

func (c *containerd) log() string {
	b, _ := os.ReadFile(filepath.Join(c.dir, "containerd.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// mkdirOwned makes dir (and missing parents) when it does not exist, and
// removes what it made when the test ends: only if empty then, or with
// everything in it when all is set (a directory only the test's programs
// use).
func mkdirOwned(t *testing.T, dir string, all bool) {
	t.Helper()
	var made []string
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		made = append(made, d)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, d := range made {
			if all {
				os.RemoveAll(d)
			} else {
				os.Remove(d)
			}
		}
	})
}
