package engine

import (
	"context"
	"errors"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// privilegedCaller marks a request's context as coming from root or the
// daemon's own user (see WithPrivilegedCaller).
type privilegedCaller struct{}

// WithPrivilegedCaller marks ctx as a request from root or the daemon's
// own user. The daemon sets it per connection from the caller's kernel
// credentials; ops that hand out what holds private keys (backup) refuse
// every other caller, members of group zlayer included.
func WithPrivilegedCaller(ctx context.Context) context.Context {
	return context.WithValue(ctx, privilegedCaller{}, true)
}

func isPrivileged(ctx context.Context) bool {
	p, _ := ctx.Value(privilegedCaller{}).(bool)
	return p
}

// backup writes a consistent copy of the state file where the caller
// asks (Store.Backup checks the place). It takes no engine lock: the copy
// is one read transaction of the store, which is the committed truth, so
// requests and reconcile passes go on meanwhile.
func (e *Engine) backup(ctx context.Context, r protocol.Backup) (protocol.Response, error) {
	if !isPrivileged(ctx) {
		return nil, errors.New("only root or the daemon's own user may take a backup: the state file holds the node's private keys")
	}
	n, err := e.store.Backup(r.Path)
	if err != nil {
		return nil, err
	}
	e.log.Info("state file backed up", "path", r.Path, "bytes", n)
	return protocol.BackupDone{Path: r.Path, Bytes: n}, nil
}
