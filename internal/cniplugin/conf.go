// Package cniplugin is the CNI plugin front-end of zlayer-overlayd
// (cmd/zlayer-cni): containerd, Podman, nerdctl, Kubernetes and cnitool
// hand it a network namespace, and it asks the node's daemon to wire that
// namespace into a service overlay — the same bridge, addresses, routes,
// DNS and encrypted mesh as ZLayer's own containers, with one state and
// one IPAM. The plugin keeps no state of its own: every command is one
// short conversation with the daemon over its socket (package client), with
// a netns handle (container id, ifname, namespace path).
//
// It implements CNI spec 1.1.0 (ADD, DEL, CHECK, STATUS, GC, VERSION) with
// the reference library (pkg/skel, pkg/types/100, pkg/version), and answers
// the older result versions 0.3.0 to 1.0.0 as well. See docs/operations.md
// ("CNI") for installation and a network configuration.
package cniplugin

import (
	"encoding/json"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/zlayer/zlayer-overlayd/client"
)

// NetConf is the plugin's network configuration: CNI's own keys (cniVersion,
// name, type, and prevResult, cni.dev/valid-attachments where the runtime
// injects them) and ours.
type NetConf struct {
	types.PluginConf
	// Socket is the daemon's socket; default: the daemon's own default
	// (/var/run/zlayer-overlayd.sock for a root daemon with the default data
	// directory; $ZLAYER_DATA_DIR is honoured).
	Socket string `json:"socket,omitempty"`
	// Service is the service overlay containers of this network join;
	// default: the network's name. The plugin sets the service up (shared)
	// when the node does not have it yet.
	Service string `json:"service,omitempty"`
	// JoinGlobal also gives each container an address on the node slice
	// on a second interface (<ifname>g) routed over the global overlay.
	JoinGlobal bool `json:"join_global,omitempty"`
}

// ParseConf reads a network configuration from a command's stdin, fills
// in the defaults, checks the service name and, when parsePrev is set,
// parses prevResult.
func ParseConf(data []byte, parsePrev bool) (*NetConf, error) {
	conf, err := parseConf(data)
	if err != nil {
		return nil, err
	}
	if err := checkService(conf.Service); err != nil {
		if conf.Service == conf.Name {
			return nil, fmt.Errorf(`network name %q cannot name a service (%v): set "service" in the configuration`, conf.Name, err)
		}
		return nil, fmt.Errorf(`"service": %v`, err)
	}
	if parsePrev {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, fmt.Errorf("prevResult: %w", err)
		}
	}
	return conf, nil
}

// parseConf reads a configuration and fills in the defaults, nothing more.
func parseConf(data []byte) (*NetConf, error) {
	var conf NetConf
	if err := json.Unmarshal(data, &conf); err != nil {
		return nil, fmt.Errorf("the network configuration is not valid JSON for zlayer-cni: %w", err)
	}
	if conf.Name == "" && conf.Service == "" {
		return nil, fmt.Errorf(`the network configuration has no "name" (nor a "service" to join)`)
	}
	if conf.Service == "" {
		conf.Service = conf.Name
	}
	if conf.Socket == "" {
		conf.Socket = client.DefaultSocket()
	}
	return &conf, nil
}

// checkService applies the daemon's rule for service names, so a bad one
// is refused with the configuration key to change.
func checkService(s string) error {
	switch {
	case len(s) > 63:
		return fmt.Errorf("%d bytes; at most 63 are allowed", len(s))
	case s == "." || s == "..", s[0] == '-' || s[0] == '.':
		return fmt.Errorf("%q must start with a letter, digit or '_'", s)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("%q contains %q; use letters, digits, '-', '_' and '.'", s, r)
		}
	}
	return nil
}
