package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// The service manager's readiness and liveness protocol (sd_notify): a
// systemd unit of Type=notify learns that the daemon is ready only once the
// state is restored and the socket serves it, and a daemon whose engine
// hangs stops sending WATCHDOG=1 and is restarted. Without NOTIFY_SOCKET
// every call is a no-op.

// notifier speaks sd_notify for one daemon run.
type notifier struct {
	log *slog.Logger
}

func (n notifier) send(state string) {
	if _, err := sd.SdNotify(false, state); err != nil {
		n.log.Warn("notifying the service manager", "state", state, "err", err)
	}
}

func (n notifier) status(format string, args ...any) {
	n.send("STATUS=" + fmt.Sprintf(format, args...))
}

// ready says the daemon serves, with what it restored.
func (n notifier) ready(s protocol.StatusSnapshot) {
	n.send(sd.SdNotifyReady + "\n" + "STATUS=" + summary(s))
}

func (n notifier) stopping(cause string) {
	n.send(sd.SdNotifyStopping + "\n" + "STATUS=" + "stopping: " + cause)
}

func summary(s protocol.StatusSnapshot) string {
	if s.Interface == "" {
		return fmt.Sprintf("serving; no global overlay; %d services, %d containers", s.ServiceCount, len(s.Attachments))
	}
	return fmt.Sprintf("serving %s (%s): %d peers, %d services, %d containers, %d guests",
		s.Interface, s.NodeIP, s.PeerCount, s.ServiceCount, len(s.Attachments), len(s.Guests))
}

// alive is what the watchdog asks: it answers only when the engine's
// locks can be taken, so an engine that hangs stops the pings.
type alive interface {
	Alive(ctx context.Context) error
}

// watchdog sends WATCHDOG=1 every half of WATCHDOG_USEC for as long as the
// engine answers its liveness probe within that time, until stop closes.
// Not a free-running timer: a wedged engine (a lock never released, the
// state lock held across a hang) makes the probe, and so the pings, stop,
// and the service manager restarts the daemon.
func (n notifier) watchdog(e alive, stop <-chan struct{}) {
	interval, err := sd.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		return
	}
	every := interval / 2
	n.log.Info("service manager watchdog", "timeout", interval, "ping_every", every)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), every)
		err := e.Alive(ctx)
		cancel()
		if err == nil {
			n.send(sd.SdNotifyWatchdog)
		} else {
			n.log.Error("the engine did not answer its liveness probe; no watchdog ping", "err", err)
		}
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}
