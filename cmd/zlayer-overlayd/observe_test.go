package main

import (
	"io"
	"strings"
	"testing"
)

func TestPprofListenRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:6060", ":6060", "192.0.2.1:6060", "[::]:6060", "example.com:6060", "6060", "unix:", "unix:relative.sock"} {
		if _, err := parseFlags([]string{"--pprof-listen", addr}, io.Discard); err == nil || !strings.Contains(err.Error(), "--pprof-listen") {
			t.Errorf("--pprof-listen %s accepted (err %v)", addr, err)
		}
	}
	var valid []string
	if pprofUnixSupported {
		valid = append(valid, "unix:/run/zlayer-overlayd-pprof.sock")
	}
	if tcpPeerUIDSupported {
		valid = append(valid, "127.0.0.1:6060", "[::1]:6060", "localhost:0", "127.0.0.2:0")
	}
	for _, addr := range valid {
		if _, err := parseFlags([]string{"--pprof-listen", addr}, io.Discard); err != nil {
			t.Errorf("--pprof-listen %s refused: %v", addr, err)
		}
	}
}
