package main

import (
	"log/slog"

	"github.com/zlayer/zlayer-overlayd/internal/darwinnet"
	"github.com/zlayer/zlayer-overlayd/internal/engine"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
)

// platformNetwork wires the macOS network stack into the engine config:
// the overlay devices are wireguard-go on utun interfaces, configured by
// darwinnet, which finds the utunN of each device through wg.SystemName.
// There are no bridges or container namespaces: shared services only
// record their subnet, linux_pid attaches are refused, and the VM's
// guest_managed attaches are WireGuard peers of the global device.
func platformNetwork(cfg *engine.Config, o options, log *slog.Logger) ([]func(), error) {
	var closers []func()
	n, err := darwinnet.New(wg.SystemName)
	if err != nil {
		return closers, err
	}
	closers = append(closers, n.Close)
	cfg.Net = n
	cfg.EnableForwarding = darwinnet.EnableForwarding
	cfg.Caps = engine.Capabilities{NoBridges: true, Platform: "darwin"}
	backend, err := wg.NewBackend(o.wireguard, log)
	if err != nil {
		return closers, err
	}
	cfg.WG = backend
	if o.firewall {
		log.Debug("--firewall manages nftables, which macOS does not have; no firewall rules are kept")
	}
	return closers, nil
}
