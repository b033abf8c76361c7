package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/zlayer/zlayer-overlayd/internal/engine"
	"github.com/zlayer/zlayer-overlayd/internal/hcn"
	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"github.com/zlayer/zlayer-overlayd/internal/winnet"
	"golang.org/x/sys/windows"
)

// platformNetwork wires the Windows network stack into the engine config:
// the overlay devices are wireguard-go on Wintun adapters configured by
// winnet through the IP Helper API, and Windows containers attach through
// HCN. There are no bridges: shared services only record their subnet and
// linux_pid attaches are refused.
func platformNetwork(cfg *engine.Config, o options, log *slog.Logger) ([]func(), error) {
	var closers []func()
	if err := restrictToAdministrators(filepath.Join(o.dataDir, store.FileName)); err != nil {
		return closers, err
	}
	n, err := winnet.New()
	if err != nil {
		return closers, err
	}
	closers = append(closers, n.Close)
	cfg.Net = n
	cfg.Caps = engine.Capabilities{NoBridges: true, Platform: "windows"}
	backend, err := wg.NewBackend(o.wireguard, log)
	if err != nil {
		return closers, err
	}
	cfg.WG = backend
	h, err := hcn.New(log.With("component", "hcn"))
	if err != nil {
		// The overlay itself still works (guest_managed peers, DNS);
		// windows_container attaches answer why they cannot.
		log.Warn("Windows containers cannot be attached", "err", err)
		cfg.HCN = hcnUnavailable{err}
	} else {
		cfg.HCN = h
	}
	if o.firewall {
		log.Debug("--firewall manages nftables, which Windows does not have; no firewall rules are kept")
	}
	return closers, nil
}

// stateFileSDDL gives the state file to SYSTEM and Administrators alone,
// with nothing inherited: it holds the node's private keys, and a file
// under %ProgramData% otherwise inherits read access for every local user
// (Windows ignores the 0600 the store asks for).
const stateFileSDDL = "D:P(A;;FA;;;SY)(A;;FA;;;BA)"

func restrictToAdministrators(path string) error {
	sd, err := windows.SecurityDescriptorFromString(stateFileSDDL)
	if err != nil {
		return err
	}
	dacl, _, err := sd.DACL()
	if err != nil {
		return err
	}
	err = windows.SetNamedSecurityInfo(path, windows.SE_FILE_OBJECT,
		windows.DACL_SECURITY_INFORMATION|windows.PROTECTED_DACL_SECURITY_INFORMATION, nil, nil, dacl, nil)
	if err != nil {
		return fmt.Errorf("restrict %s, which holds private keys, to SYSTEM and Administrators: %w", path, err)
	}
	return nil
}

// hcnUnavailable answers every HCN call with the reason HNS could not be
// used, so that a windows_container attach says what is wrong.
type hcnUnavailable struct{ err error }

func (u hcnUnavailable) fail() error {
	return fmt.Errorf("windows containers cannot be attached on this node: %w", u.err)
}

func (u hcnUnavailable) EnsureNetwork(context.Context, engine.HCNNetwork) error { return u.fail() }
func (u hcnUnavailable) Attach(context.Context, engine.HCNAttach) (string, error) {
	return "", u.fail()
}
func (u hcnUnavailable) Detach(context.Context, string) error        { return u.fail() }
func (u hcnUnavailable) DeleteNetwork(context.Context, string) error { return u.fail() }
