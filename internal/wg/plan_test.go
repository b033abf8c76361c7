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

func TestPeerChanges(t *testing.T) {
	ka, ka2 := 25*time.Second, 10*time.Second
	ep := &net.UDPAddr{IP: net.ParseIP("192.0.2.1"), Port: 51820}
	learned := &net.UDPAddr{IP: net.ParseIP("198.51.100.7"), Port: 4000}
	cur := []wgtypes.Peer{
		{PublicKey: keyN(1), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.1.0/24")}, PersistentKeepaliveInterval: ka, Endpoint: learned},
		{PublicKey: keyN(2), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.2.0/24")}, PersistentKeepaliveInterval: ka},
		{PublicKey: keyN(3), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.3.0/24"), mustCIDR(t, "10.9.0.0/16")}},
		{PublicKey: keyN(5)},
		{PublicKey: keyN(6), PersistentKeepaliveInterval: ka},
	}
	want := []wgtypes.PeerConfig{
		// Same as the device (host bits set in the request): nothing.
		{PublicKey: keyN(1), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.1.7/24")}, PersistentKeepaliveInterval: &ka, Endpoint: ep, ReplaceAllowedIPs: true},
		// One more prefix: appended, no replace.
		{PublicKey: keyN(2), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.2.0/24"), mustCIDR(t, "10.0.22.0/24")}, PersistentKeepaliveInterval: &ka},
		// One prefix fewer: replaced.
		{PublicKey: keyN(3), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.3.0/24")}},
		// New: added whole, with its endpoint.
		{PublicKey: keyN(4), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.4.0/24")}, Endpoint: ep, PersistentKeepaliveInterval: &ka},
		// Keepalive only.
		{PublicKey: keyN(6), PersistentKeepaliveInterval: &ka2},
	}
	got := PeerChanges(want, cur)
	byKey := map[wgtypes.Key]wgtypes.PeerConfig{}
	for i, pc := range got {
		byKey[pc.PublicKey] = pc
		if pc.Remove && i > 0 && !got[i-1].Remove {
			t.Errorf("removal of %s after an upsert", pc.PublicKey)
		}
	}
	if _, ok := byKey[keyN(1)]; ok {
		t.Errorf("a peer that matches was written: %+v", byKey[keyN(1)])
	}
	if p := byKey[keyN(2)]; !p.UpdateOnly || p.ReplaceAllowedIPs || len(p.AllowedIPs) != 1 || p.AllowedIPs[0].String() != "10.0.22.0/24" || p.Endpoint != nil {
		t.Errorf("peer 2 should get 10.0.22.0/24 appended only: %+v", p)
	}
	if p := byKey[keyN(3)]; !p.ReplaceAllowedIPs || len(p.AllowedIPs) != 1 || p.Endpoint != nil {
		t.Errorf("peer 3 should have its set replaced: %+v", p)
	}
	if p := byKey[keyN(4)]; p.UpdateOnly || p.Endpoint != ep || !p.ReplaceAllowedIPs {
		t.Errorf("peer 4 should be added with its endpoint: %+v", p)
	}
	if p := byKey[keyN(5)]; !p.Remove {
		t.Errorf("peer 5 should be removed: %+v", p)
	}
	if p := byKey[keyN(6)]; p.PersistentKeepaliveInterval == nil || *p.PersistentKeepaliveInterval != ka2 || p.AllowedIPs != nil || p.ReplaceAllowedIPs {
		t.Errorf("peer 6 should get only its keepalive: %+v", p)
	}
	if len(got) != 5 {
		t.Errorf("%d changes, want 5: %+v", len(got), got)
	}
	if again := PeerChanges(want[:1], cur[:1]); len(again) != 0 {
		t.Errorf("a device that matches got %+v", again)
	}
}
