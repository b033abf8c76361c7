package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Taking over a node from ZLayer's Rust overlayd. It keeps no state but a
// marker file of dedicated services (<data-dir>/agent_network.json) and
// leaves kernel objects behind that carry no label: its bridges
// (zl-…-b, with gateway addresses), the host ends of its container veths
// (veth-<pid>-s for eth0, veth-<pid>-g for eth1, and vc-<pid>-<tag> when an
// attach broke half way), and the eth0/eth1 they lead to inside containers.
// Its WireGuard devices died with it (boringtun in the process).
//
// Decided per object, only on a node whose data directory holds the
// marker (the evidence that the Rust daemon ran here with this data):
//   - dedicated services: adopted — a setup_service_overlay of a service the
//     marker lists keeps its WireGuard key, port and subnet, so the other
//     nodes' peers, which know that key, keep working;
//   - veths of containers that are gone: removed at start;
//   - veths of live containers: left working until the main daemon attaches
//     that container again, then replaced by ours (rebuilt);
//   - bridges: removed once no port is left on them; until then their
//     containers keep talking on them.

// ReferenceMarkerFile is the Rust overlayd's state file.
const ReferenceMarkerFile = "agent_network.json"

// legacyDedicated is a dedicated service as the Rust overlayd recorded it.
type legacyDedicated struct {
	key    wgtypes.Key
	port   uint16
	subnet netip.Prefix
}

// loadReferenceMarker reads the Rust overlayd's marker: its dedicated
// services by name. No file is no takeover (nil, nil).
func loadReferenceMarker(path string) (map[string]legacyDedicated, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var doc struct {
		Networks []struct {
			Owner      string `json:"owner"`
			Kind       string `json:"kind"`
			Subnet     string `json:"subnet"`
			WGPort     uint16 `json:"wg_port"`
			PrivateKey string `json:"wg_private_key"`
		} `json:"networks"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		// The reference itself ignores a corrupt marker; so do we, loudly.
		return map[string]legacyDedicated{}, fmt.Errorf("%s is not the Rust overlayd's marker (%v); its dedicated services are not adopted", path, err)
	}
	out := map[string]legacyDedicated{}
	for _, n := range doc.Networks {
		name, ok := strings.CutPrefix(n.Owner, "service:")
		if !ok || n.Kind != "wg-dedicated" || n.PrivateKey == "" {
			continue
		}
		key, err := wg.ParseKey(n.PrivateKey)
		if err != nil {
			continue
		}
		subnet, _ := netip.ParsePrefix(n.Subnet)
		out[name] = legacyDedicated{key: key, port: n.WGPort, subnet: subnet.Masked()}
	}
	return out, nil
}

// enableTakeover loads the marker, if there is one; the engine then
// recognises the Rust daemon's leftovers.
func (e *Engine) enableTakeover(path string) {
	legacy, err := loadReferenceMarker(path)
	if err != nil {
		e.log.Warn("Rust overlayd marker", "err", err)
	}
	if legacy == nil {
		return
	}
	e.legacy = legacy
	e.log.Info("this node ran ZLayer's Rust overlayd: taking over its leftovers", "marker", path, "dedicated_services", len(legacy))
}

// legacyDedicatedFor is the Rust daemon's record of a dedicated service.
func (e *Engine) legacyDedicatedFor(service string) (legacyDedicated, bool) {
	l, ok := e.legacy[service]
	return l, ok
}

// legacyVeth parses the Rust daemon's veth names: veth-<pid>-<s|g> (host
// ends) and vc-<pid>-<s|g> (a container end never moved).
func legacyVeth(name string) (pid int, ok bool) {
	rest, found := strings.CutPrefix(name, "veth-")
	if !found {
		if rest, found = strings.CutPrefix(name, "vc-"); !found {
			return 0, false
		}
	}
	p, tag, found := strings.Cut(rest, "-")
	if !found || (tag != "s" && tag != "g") {
		return 0, false
	}
	n, err := strconv.Atoi(p)
	return n, err == nil && n > 0
}

// legacyBridge reports a bridge the Rust daemon made: named zl-…-b and
// carrying no label (ours always carry one).
func legacyBridge(l linuxnet.LinkInfo) bool {
	return l.Kind == "bridge" && l.Alias == "" && strings.HasPrefix(l.Name, "zl-") && strings.HasSuffix(l.Name, "-b")
}

// removeLegacyLinks deletes the Rust daemon's veths whose container is
// gone and its bridges with no port left. Unlabelled links of any other
// shape are never touched.
func (e *Engine) removeLegacyLinks(changes *int) error {
	if e.legacy == nil || e.cfg.Net == nil {
		return nil
	}
	e.at("reconcile.legacy")
	e.bridgeLabel.Lock() // see ensureBridge
	defer e.bridgeLabel.Unlock()
	links, err := e.cfg.Net.Links("")
	if err != nil {
		return err
	}
	var errs []error
	ports := map[string]int{}
	for _, l := range links {
		if l.Master != "" {
			ports[l.Master]++
		}
	}
	for _, l := range links {
		pid, ok := legacyVeth(l.Name)
		if !ok || l.Kind != "veth" || l.Alias != "" {
			continue
		}
		if _, err := e.cfg.Procs.StartTime(pid); !errors.Is(err, fs.ErrNotExist) {
			continue // the container runs: left until it is attached again
		}
		e.log.Info("removing a veth the Rust overlayd left for a container that is gone", "link", l.Name)
		if err := e.cfg.Net.Detach(l.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		if l.Master != "" {
			ports[l.Master]--
		}
		*changes++
	}
	var want map[string]bool
	e.locked(func() { want = e.st.wantedLinks() })
	for _, l := range links {
		if !legacyBridge(l) || ports[l.Name] > 0 || want[l.Name] {
			continue
		}
		e.log.Info("removing a bridge the Rust overlayd left, now without ports", "bridge", l.Name)
		if err := e.cfg.Net.DeleteLink(l.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		*changes++
	}
	return errors.Join(errs...)
}

// replaceLegacyVeths removes the Rust daemon's veths of a container the
// main daemon is attaching now: they hold its eth0 and eth1, which ours
// replace.
func (e *Engine) replaceLegacyVeths(pid uint32) error {
	if e.legacy == nil {
		return nil
	}
	for _, tag := range []string{"s", "g"} {
		name := "veth-" + strconv.FormatUint(uint64(pid), 10) + "-" + tag
		exists, err := e.cfg.Net.LinkExists(name)
		if err != nil || !exists {
			continue
		}
		e.log.Info("replacing the Rust overlayd's link of a container attached again", "link", name)
		if err := e.cfg.Net.Detach(name); err != nil {
			return fmt.Errorf("remove the Rust overlayd's %s: %w", name, err)
		}
	}
	return nil
}
