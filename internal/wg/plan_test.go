package wg

import (
	"net"
	"reflect"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestPlanConfigListenPort(t *testing.T) {
	cur := &wgtypes.Device{ListenPort: 51820}
	tests := []struct {
		name string
		port *int
		want *int
	}{
		{"same port is not re-applied", new(51820), nil},
		{"new port is applied", new(51821), new(51821)},
		{"port 0 always asks for a fresh port", new(0), new(0)},
		{"no port stays no port", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := planConfig(wgtypes.Config{ListenPort: tt.port}, cur)
			if !reflect.DeepEqual(got.ListenPort, tt.want) {
				t.Errorf("ListenPort = %v, want %v", deref(got.ListenPort), deref(tt.want))
			}
		})
	}
}

func deref(p *int) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestPlanConfigReplacePeers(t *testing.T) {
	ka := 25 * time.Second
	psk := keyN(0x99)
	cur := &wgtypes.Device{Peers: []wgtypes.Peer{
		{PublicKey: keyN(1), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.0.1/32")}, PersistentKeepaliveInterval: ka},
		{PublicKey: keyN(2)},
		{PublicKey: keyN(3)},
	}}
	cfg := wgtypes.Config{
		ReplacePeers: true,
		Peers: []wgtypes.PeerConfig{
			{PublicKey: keyN(1), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.0.9/32")}},
			{PublicKey: keyN(3), PersistentKeepaliveInterval: &ka, PresharedKey: &psk},
			{PublicKey: keyN(4), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.0.4/32")}},
			{PublicKey: keyN(1), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.0.10/32")}},
		},
	}
	orig := cloneConfig(cfg)
	got := planConfig(cfg, cur)

	zero, zeroKey := time.Duration(0), wgtypes.Key{}
	want := wgtypes.Config{Peers: []wgtypes.PeerConfig{
		{PublicKey: keyN(2), Remove: true},
		{PublicKey: keyN(1), ReplaceAllowedIPs: true, PersistentKeepaliveInterval: &zero, PresharedKey: &zeroKey,
			AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.0.9/32")}},
		{PublicKey: keyN(3), ReplaceAllowedIPs: true, PersistentKeepaliveInterval: &ka, PresharedKey: &psk},
		{PublicKey: keyN(4), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.0.4/32")}},
		// A second mention adds on top of the first, as after a real replace.
		{PublicKey: keyN(1), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.0.10/32")}},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("planConfig:\n got  %+v\n want %+v", got, want)
	}
	if !reflect.DeepEqual(cfg, orig) {
		t.Errorf("planConfig modified its input")
	}
}

func TestPlanConfigReplacePeersWithEmptyListRemovesAll(t *testing.T) {
	cur := &wgtypes.Device{Peers: []wgtypes.Peer{{PublicKey: keyN(1)}, {PublicKey: keyN(2)}}}
	got := planConfig(wgtypes.Config{ReplacePeers: true}, cur)
	want := []wgtypes.PeerConfig{{PublicKey: keyN(1), Remove: true}, {PublicKey: keyN(2), Remove: true}}
	if got.ReplacePeers || !reflect.DeepEqual(got.Peers, want) {
		t.Errorf("got %+v", got)
	}
}

func TestPlanConfigWithoutReplaceLeavesPeersAlone(t *testing.T) {
	cfg := wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: keyN(1), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.0.1/32")}}}}
	got := planConfig(cfg, &wgtypes.Device{Peers: []wgtypes.Peer{{PublicKey: keyN(1)}, {PublicKey: keyN(2)}}})
	if !reflect.DeepEqual(got, cfg) {
		t.Errorf("got %+v, want the input unchanged", got)
	}
}

func cloneConfig(c wgtypes.Config) wgtypes.Config {
	c.Peers = append([]wgtypes.PeerConfig(nil), c.Peers...)
	return c
}
