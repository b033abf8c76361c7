//go:build linux

package lab

import (
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Container is a process in a network namespace of its own, like a
// container runtime's init: the namespace lives exactly as long as the
// process, so killing it destroys the namespace and the container end of
// every veth in it.
type Container struct {
	lab  *Lab
	Name string
	PID  int
	cmd  *exec.Cmd
	done chan struct{}
}

// AddContainer starts a "container" process. It runs in its own network
// namespace but in the root mount and PID namespaces, so the daemons find
// it at /proc/<PID>/ns/net.
func (l *Lab) AddContainer(name string) *Container {
	l.t.Helper()
	cmd := exec.Command("unshare", "--net", "--", "sleep", "infinity")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("lab: start container %s: %v", name, err)
	}
	c := &Container{lab: l, Name: name, PID: cmd.Process.Pid, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(c.done) }()
	l.mu.Lock()
	l.containers = append(l.containers, c)
	l.mu.Unlock()
	// unshare has switched namespaces once the process's netns differs
	// from ours; only then is it a container.
	self, _ := os.Readlink("/proc/self/ns/net")
	deadline := time.Now().Add(10 * time.Second)
	for {
		ns, err := os.Readlink("/proc/" + strconv.Itoa(c.PID) + "/ns/net")
		if err == nil && ns != self {
			break
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("lab: container %s never entered its own network namespace", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return c
}

// Handle is the attach handle of the container.
func (c *Container) Handle() protocol.AttachHandle { return protocol.LinuxPID(uint32(c.PID)) }

// Exec runs a command inside the container's network namespace.
func (c *Container) Exec(args ...string) (string, error) {
	return run(append([]string{"nsenter", "-t", strconv.Itoa(c.PID), "-n", "--"}, args...)...)
}

// Ping sends count pings to addr from the container.
func (c *Container) Ping(addr netip.Addr, count int) error { return ping(c.Exec, addr, count) }

// Addr returns the first global address of ifname inside the container.
func (c *Container) Addr(ifname string) (netip.Addr, error) {
	out, err := c.Exec("ip", "-o", "addr", "show", "dev", ifname, "scope", "global")
	if err != nil {
		return netip.Addr{}, err
	}
	for _, f := range strings.Fields(out) {
		if p, err := netip.ParsePrefix(f); err == nil {
			return p.Addr(), nil
		}
	}
	return netip.Addr{}, os.ErrNotExist
}

// Kill ends the container process (and with it its network namespace).
func (c *Container) Kill() {
	if c.cmd.Process != nil {
		syscall.Kill(-c.PID, syscall.SIGKILL)
		c.cmd.Process.Kill()
	}
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
	}
}

// Alive reports whether the process still runs.
func (c *Container) Alive() bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}
