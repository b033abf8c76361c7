package wg

import (
	"fmt"
	"log/slog"
	"net"
	"time"

	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/ipc/namedpipe"
)

// uapiPipePath is the named pipe wireguard-go's ipc package serves and
// wg.exe connects to.
func uapiPipePath(name string) string {
	return `\\.\pipe\ProtectedPrefix\Administrators\WireGuard\` + name
}

// freeUAPI refuses a name whose pipe is being served by another process.
// Unlike a Unix socket file, a pipe cannot outlive its server, so there is
// never anything stale to remove.
func freeUAPI(name string, _ *slog.Logger) error {
	path := uapiPipePath(name)
	c, err := namedpipe.DialTimeout(path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("wireguard device %q already exists: another process serves its UAPI pipe %s; refusing to create a second one", name, path)
	}
	return nil
}

// listenUAPI publishes the device's UAPI pipe. The listener ipc returns
// reports exactly one terminal error through Accept, from its accept loop.
func listenUAPI(name string) (net.Listener, int, error) {
	ln, err := ipc.UAPIListen(name)
	if err != nil {
		return nil, 0, fmt.Errorf("publish UAPI pipe %s: %w", uapiPipePath(name), err)
	}
	return ln, 1, nil
}
