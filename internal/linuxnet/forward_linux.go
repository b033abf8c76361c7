package linuxnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	knobIPv4Forward = "net/ipv4/ip_forward"
	knobIPv6Forward = "net/ipv6/conf/all/forwarding"
)

// Forwarding turns IP forwarding on for the address families the overlay
// uses, and puts back what it changed once no overlay is left.
//
// IPv6 forwarding has a cost on hosts that configure their uplink from
// router advertisements: with forwarding on, the kernel ignores RAs on
// interfaces with accept_ra=1, and the host loses its IPv6 default route
// when the current one expires. Before turning IPv6 forwarding on,
// Forwarding sets accept_ra=2 (take RAs even when forwarding) on the
// interfaces that have accept_ra=1 and are using RAs (hold a route learned
// from one). Interfaces that are not using RAs keep accept_ra=1, which
// with forwarding on ignores them: a container bridge must never start
// taking a default route from whatever a container advertises.
//
// Every value it replaces is written to a state file before the change,
// so a daemon restarted in between still restores it. A value someone
// else has changed since is left alone.
type Forwarding struct {
	path string

	mu     sync.Mutex
	loaded bool
	saved  map[string]savedSysctl // by slash-separated name below /proc/sys
}

// savedSysctl is one sysctl we changed: what it was and what we set.
type savedSysctl struct {
	Was string `json:"was"`
	Set string `json:"set"`
}

// NewForwarding records what it changes in stateFile (created 0600 when
// needed, removed once everything is restored).
func NewForwarding(stateFile string) *Forwarding {
	return &Forwarding{path: stateFile}
}

// Sync makes forwarding what the overlay needs now: need reports which
// families the node's overlays use (it is called with Sync's lock held, so
// concurrent callers act in turn on the latest answer). Forwarding is
// turned on for those families, and what was changed for the others is
// put back: when need reports none, everything. It works in the calling
// thread's network namespace and returns the sysctls it changed and
// restored (dotted names).
func (f *Forwarding) Sync(need func() (v4, v6 bool)) (enabled, restored []string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.load(); err != nil {
		return nil, nil, err
	}
	v4, v6 := need()
	var errs []error
	if !v4 || !v6 {
		restored, err = f.restore(func(knob string) bool {
			if knob == knobIPv4Forward {
				return !v4
			}
			return !v6
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	if v4 || v6 {
		enabled, err = f.enable(v4, v6)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return enabled, restored, errors.Join(errs...)
}

// enable turns forwarding on for the families asked for. A kernel without
// IPv6 is not an error. Forwarding already on is left as it is, and is
// not restored later: it was not ours.
func (f *Forwarding) enable(v4, v6 bool) (changed []string, err error) {
	var plan []string // knobs to set, in order
	want := map[string]string{}
	add := func(knob, was, set string) {
		if _, ok := f.saved[knob]; !ok {
			f.saved[knob] = savedSysctl{Was: was, Set: set}
		}
		plan = append(plan, knob)
		want[knob] = set
	}
	if v4 {
		cur, err := readKnob(knobIPv4Forward)
		if err != nil {
			return nil, fmt.Errorf("enable forwarding: %w", err)
		}
		if cur != "1" {
			add(knobIPv4Forward, cur, "1")
		}
	}
	if v6 {
		cur, err := readKnob(knobIPv6Forward)
		switch {
		case errors.Is(err, os.ErrNotExist):
			// No IPv6 in this kernel: nothing to forward.
		case err != nil:
			return nil, fmt.Errorf("enable forwarding: %w", err)
		case cur != "1":
			ifaces, err := raInterfaces()
			if err != nil {
				return nil, fmt.Errorf("enable forwarding: finding the interfaces configured by router advertisements: %w", err)
			}
			// accept_ra=2 goes first, so no RA arrives in between to be
			// ignored.
			for _, name := range ifaces {
				add("net/ipv6/conf/"+name+"/accept_ra", "1", "2")
			}
			add(knobIPv6Forward, cur, "1")
		}
	}
	if len(plan) == 0 {
		return nil, nil
	}
	if err := f.store(); err != nil {
		return nil, err
	}
	for _, knob := range plan {
		if err := writeKnob(knob, want[knob]); err != nil {
			return changed, fmt.Errorf("enable forwarding: %w", err)
		}
		changed = append(changed, dotted(knob))
	}
	return changed, nil
}

// restore puts back the sysctls picked that Enable changed (also in an
// earlier run of the daemon) and that still have the value it set, and
// forgets them.
func (f *Forwarding) restore(pick func(knob string) bool) (restored []string, err error) {
	var knobs []string
	for k := range f.saved {
		if pick(k) {
			knobs = append(knobs, k)
		}
	}
	if len(knobs) == 0 {
		return nil, nil
	}
	// Forwarding off before accept_ra goes back to 1, the reverse of
	// enable; otherwise in name order, so runs are reproducible.
	slices.SortFunc(knobs, func(a, b string) int {
		ra, rb := strings.HasSuffix(a, "/accept_ra"), strings.HasSuffix(b, "/accept_ra")
		switch {
		case ra != rb && ra:
			return 1
		case ra != rb:
			return -1
		}
		return strings.Compare(a, b)
	})
	var errs []error
	for _, knob := range knobs {
		s := f.saved[knob]
		cur, err := readKnob(knob)
		switch {
		case errors.Is(err, os.ErrNotExist):
			// The interface is gone; nothing to put back.
		case err != nil:
			errs = append(errs, err)
			continue
		case cur != s.Set:
			// Someone else changed it since; theirs wins.
		default:
			if err := writeKnob(knob, s.Was); err != nil {
				errs = append(errs, err)
				continue
			}
			restored = append(restored, dotted(knob))
		}
		delete(f.saved, knob)
	}
	if err := f.store(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return restored, fmt.Errorf("restore forwarding sysctls: %w", errors.Join(errs...))
	}
	return restored, nil
}

// load reads the state file once.
func (f *Forwarding) load() error {
	if f.loaded {
		return nil
	}
	f.saved = map[string]savedSysctl{}
	if f.path != "" {
		b, err := os.ReadFile(f.path)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return fmt.Errorf("reading the forwarding sysctls to restore: %w", err)
		default:
			if err := json.Unmarshal(b, &f.saved); err != nil {
				return fmt.Errorf("%s is not what zlayer-overlayd wrote (%v); move it aside, and check net.ipv4.ip_forward, net.ipv6.conf.all.forwarding and accept_ra by hand", f.path, err)
			}
			for k := range f.saved {
				if _, err := sysctlPath(k); err != nil {
					return fmt.Errorf("%s names %q: %w", f.path, k, err)
				}
			}
		}
	}
	f.loaded = true
	return nil
}

// store writes the state file, or removes it when nothing is left to
// restore. The write is atomic (rename), so a crash leaves the old or the
// new record, never half of one.
func (f *Forwarding) store() error {
	if f.path == "" {
		return nil
	}
	if len(f.saved) == 0 {
		if err := os.Remove(f.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing %s: %w", f.path, err)
		}
		return nil
	}
	b, err := json.MarshalIndent(f.saved, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(f.path), filepath.Base(f.path)+".*")
	if err != nil {
		return fmt.Errorf("recording the forwarding sysctls to restore: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("recording the forwarding sysctls to restore: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("recording the forwarding sysctls to restore: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return fmt.Errorf("recording the forwarding sysctls to restore: %w", err)
	}
	return nil
}

// raInterfaces lists the interfaces with accept_ra=1 that hold a route
// learned from a router advertisement, except ours.
func raInterfaces() ([]string, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	filter := &netlink.Route{Protocol: unix.RTPROT_RA, Table: unix.RT_TABLE_UNSPEC}
	routes, err := retryDump("list IPv6 routes learned from router advertisements", func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V6, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, err
	}
	var names []string
	for _, r := range routes {
		link, err := h.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue // gone meanwhile
		}
		name := link.Attrs().Name
		if strings.HasPrefix(name, "zl-") || slices.Contains(names, name) {
			continue
		}
		if v, err := readKnob("net/ipv6/conf/" + name + "/accept_ra"); err == nil && v == "1" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names, nil
}

func readKnob(knob string) (string, error) {
	p, err := sysctlPath(knob)
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", dotted(knob), err)
	}
	return string(bytes.TrimSpace(b)), nil
}

func writeKnob(knob, value string) error {
	p, err := sysctlPath(knob)
	if err != nil {
		return err
	}
	if err := os.WriteFile(p, []byte(value), 0); err != nil {
		return fmt.Errorf("set %s=%s: %w", dotted(knob), value, err)
	}
	return nil
}
