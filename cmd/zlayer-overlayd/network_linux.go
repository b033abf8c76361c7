package main

import (
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/zlayer/zlayer-overlayd/internal/engine"
	"github.com/zlayer/zlayer-overlayd/internal/firewall"
	"github.com/zlayer/zlayer-overlayd/internal/linuxnet"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
)

// platformNetwork wires the Linux network stack into the engine config and
// returns what must be closed at exit.
func platformNetwork(cfg *engine.Config, o options, log *slog.Logger) ([]func(), error) {
	var closers []func()
	n, err := linuxnet.New()
	if err != nil {
		return closers, err
	}
	closers = append(closers, n.Close)
	cfg.Net = n
	cfg.EnableForwarding = linuxnet.NewForwarding(filepath.Join(o.dataDir, "forwarding-restore.json")).Sync
	// STUN and TURN servers mean NAT traversal from the WireGuard port,
	// which only the userspace backend can share (docs/operations.md).
	ownBind := len(o.stun) > 0 || len(o.turn) > 0
	backend, err := wg.NewBackendFor(o.wireguard, wg.Needs{OwnBind: ownBind}, log)
	if err != nil {
		if ownBind {
			err = fmt.Errorf("%w (NAT traversal is on because --stun-server or --turn-server is given)", err)
		}
		return closers, err
	}
	if backend.Kind() == wg.KindUserspace && o.dataplane == "process" {
		// Each device in a process of its own that outlives the daemon:
		// restarts lose no packet. It runs with the Ps the data path wants.
		n := dataplaneMaxProcs(o.maxProcs)
		if backend, err = wg.NewDataplaneBackend(wg.DataplaneConfig{
			StatePath: filepath.Join(o.dataDir, store.FileName),
			LogDir:    o.dataDir,
			MaxProcs:  n,
			Logger:    log,
		}); err != nil {
			return closers, err
		}
	}
	cfg.WG = backend
	if o.firewall {
		fw := &firewall.Firewall{}
		cfg.Firewall = &engine.FirewallConfig{Firewall: fw, Masquerade: o.masquerade, Isolate: o.isolate}
		if foreign, err := fw.DetectForeign(); err == nil && foreign.Any() {
			for _, h := range foreign.Hints() {
				log.Warn("other firewall rules may affect overlay traffic", "hint", h)
			}
		}
	}
	return closers, nil
}
