package wg

import (
	"bytes"
	"encoding/hex"
	"net"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// keyN returns a deterministic key whose bytes are all n, so that its hex
// form is easy to write in a test table.
func keyN(n byte) wgtypes.Key {
	var k wgtypes.Key
	for i := range k {
		k[i] = n
	}
	return k
}

func hexN(n byte) string { return strings.Repeat(hex.EncodeToString([]byte{n}), 32) }

func mustCIDR(t testing.TB, s string) net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	return *n
}

func udp(s string) *net.UDPAddr {
	ap := netip.MustParseAddrPort(s)
	return &net.UDPAddr{IP: ap.Addr().AsSlice(), Port: int(ap.Port()), Zone: ap.Addr().Zone()}
}

func TestEncodeUAPISet(t *testing.T) {
	port, mark, zeroMark := 51820, 7, 0
	ka25, ka0 := 25*time.Second, time.Duration(0)
	psk := keyN(0x22)
	tests := []struct {
		name string
		cfg  wgtypes.Config
		want string
	}{
		{name: "empty config sends nothing", cfg: wgtypes.Config{}, want: ""},
		{
			name: "device fields in protocol order",
			cfg:  wgtypes.Config{PrivateKey: new(keyN(0xab)), ListenPort: &port, FirewallMark: &mark, ReplacePeers: true},
			want: "private_key=" + hexN(0xab) + "\nlisten_port=51820\nfwmark=7\nreplace_peers=true\n",
		},
		{
			name: "fwmark 0 clears the mark",
			cfg:  wgtypes.Config{FirewallMark: &zeroMark},
			want: "fwmark=0\n",
		},
		{
			name: "full peer",
			cfg: wgtypes.Config{Peers: []wgtypes.PeerConfig{{
				PublicKey:                   keyN(0x01),
				PresharedKey:                &psk,
				Endpoint:                    udp("192.0.2.1:51820"),
				PersistentKeepaliveInterval: &ka25,
				ReplaceAllowedIPs:           true,
				AllowedIPs:                  []net.IPNet{mustCIDR(t, "10.0.0.2/32"), mustCIDR(t, "fd00::/64")},
			}}},
			want: "public_key=" + hexN(0x01) + "\npreshared_key=" + hexN(0x22) + "\nendpoint=192.0.2.1:51820\n" +
				"persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.0.0.2/32\nallowed_ip=fd00::/64\n",
		},
		{
			name: "update only comes right after the key",
			cfg: wgtypes.Config{Peers: []wgtypes.PeerConfig{{
				PublicKey: keyN(0x01), UpdateOnly: true, PersistentKeepaliveInterval: &ka0,
			}}},
			want: "public_key=" + hexN(0x01) + "\nupdate_only=true\npersistent_keepalive_interval=0\n",
		},
		{
			name: "remove sends nothing else for the peer",
			cfg: wgtypes.Config{Peers: []wgtypes.PeerConfig{
				{PublicKey: keyN(0x01), Remove: true, Endpoint: udp("192.0.2.1:1"), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.0.0/8")}},
				{PublicKey: keyN(0x02), AllowedIPs: []net.IPNet{mustCIDR(t, "10.0.0.3/32")}},
			}},
			want: "public_key=" + hexN(0x01) + "\nremove=true\npublic_key=" + hexN(0x02) + "\nallowed_ip=10.0.0.3/32\n",
		},
		{
			name: "IPv4 endpoint in 16-byte form is sent as IPv4",
			cfg: wgtypes.Config{Peers: []wgtypes.PeerConfig{{
				PublicKey: keyN(0x01), Endpoint: &net.UDPAddr{IP: net.ParseIP("198.51.100.7"), Port: 4500},
			}}},
			want: "public_key=" + hexN(0x01) + "\nendpoint=198.51.100.7:4500\n",
		},
		{
			name: "IPv6 endpoint with zone",
			cfg: wgtypes.Config{Peers: []wgtypes.PeerConfig{{
				PublicKey: keyN(0x01), Endpoint: &net.UDPAddr{IP: net.ParseIP("fe80::1"), Port: 51820, Zone: "eth0"},
			}}},
			want: "public_key=" + hexN(0x01) + "\nendpoint=[fe80::1%eth0]:51820\n",
		},
		{
			name: "allowed IP in 16-byte form with a 4-byte mask, not masked by us",
			cfg: wgtypes.Config{Peers: []wgtypes.PeerConfig{{
				PublicKey:  keyN(0x01),
				AllowedIPs: []net.IPNet{{IP: net.ParseIP("10.1.2.3"), Mask: net.CIDRMask(16, 32)}},
			}}},
			want: "public_key=" + hexN(0x01) + "\nallowed_ip=10.1.2.3/16\n",
		},
		{
			name: "replace allowed IPs with an empty set clears them",
			cfg: wgtypes.Config{Peers: []wgtypes.PeerConfig{{
				PublicKey: keyN(0x01), ReplaceAllowedIPs: true,
			}}},
			want: "public_key=" + hexN(0x01) + "\nreplace_allowed_ips=true\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := encodeUAPISet(tt.cfg)
			if err != nil {
				t.Fatalf("encodeUAPISet: %v", err)
			}
			if string(got) != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestEncodeUAPISetRejects(t *testing.T) {
	peer := func(p wgtypes.PeerConfig) wgtypes.Config {
		p.PublicKey = keyN(0x01)
		return wgtypes.Config{Peers: []wgtypes.PeerConfig{p}}
	}
	dur := func(d time.Duration) *time.Duration { return &d }
	tests := []struct {
		name    string
		cfg     wgtypes.Config
		wantErr string
	}{
		{"negative port", wgtypes.Config{ListenPort: new(-1)}, "listen port -1 is out of range"},
		{"port too big", wgtypes.Config{ListenPort: new(65536)}, "listen port 65536 is out of range"},
		{"negative fwmark", wgtypes.Config{FirewallMark: new(-1)}, "firewall mark -1 is out of range"},
		{"fractional keepalive", peer(wgtypes.PeerConfig{PersistentKeepaliveInterval: dur(1500 * time.Millisecond)}), "whole number of seconds"},
		{"negative keepalive", peer(wgtypes.PeerConfig{PersistentKeepaliveInterval: dur(-time.Second)}), "whole number of seconds"},
		{"keepalive too long", peer(wgtypes.PeerConfig{PersistentKeepaliveInterval: dur(65536 * time.Second)}), "whole number of seconds"},
		{"endpoint without IP", peer(wgtypes.PeerConfig{Endpoint: &net.UDPAddr{Port: 1}}), "no valid IP address"},
		{"endpoint port 0", peer(wgtypes.PeerConfig{Endpoint: udp("192.0.2.1:0")}), "has port 0"},
		{"unspecified endpoint", peer(wgtypes.PeerConfig{Endpoint: udp("0.0.0.0:51820")}), "unspecified address"},
		{"zone on IPv4 endpoint", peer(wgtypes.PeerConfig{Endpoint: &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1, Zone: "eth0"}}), "not an IPv6 address"},
		{"non-contiguous mask", peer(wgtypes.PeerConfig{AllowedIPs: []net.IPNet{{IP: net.IPv4(10, 0, 0, 0).To4(), Mask: net.IPv4Mask(255, 0, 255, 0)}}}), "not a valid IPv4 or IPv6 prefix"},
		{"IPv4 address with IPv6 mask", peer(wgtypes.PeerConfig{AllowedIPs: []net.IPNet{{IP: net.IPv4(10, 0, 0, 0).To4(), Mask: net.CIDRMask(64, 128)}}}), "not a valid IPv4 or IPv6 prefix"},
		{"empty allowed IP", peer(wgtypes.PeerConfig{AllowedIPs: []net.IPNet{{}}}), "not a valid IPv4 or IPv6 prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := encodeUAPISet(tt.cfg)
			if err == nil {
				t.Fatalf("encodeUAPISet accepted it and produced %q", got)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not mention %q", err, tt.wantErr)
			}
			if len(tt.cfg.Peers) > 0 && !strings.Contains(err.Error(), keyN(0x01).String()) {
				t.Errorf("error %q does not name the peer", err)
			}
		})
	}
}

// renderUAPIGet writes a device the way wireguard-go answers "get", so that
// the parser can be checked for round trips.
func renderUAPIGet(t testing.TB, d *wgtypes.Device) []byte {
	var b []byte
	if !isZeroKey(d.PrivateKey) {
		b = appendKeyLine(b, "private_key", d.PrivateKey)
	}
	if d.ListenPort != 0 {
		b = appendIntLine(b, "listen_port", int64(d.ListenPort))
	}
	if d.FirewallMark != 0 {
		b = appendIntLine(b, "fwmark", int64(d.FirewallMark))
	}
	for _, p := range d.Peers {
		b = appendKeyLine(b, "public_key", p.PublicKey)
		b = appendKeyLine(b, "preshared_key", p.PresharedKey)
		if p.ProtocolVersion != 0 {
			b = appendIntLine(b, "protocol_version", int64(p.ProtocolVersion))
		}
		if p.Endpoint != nil {
			ip, ok := netip.AddrFromSlice(p.Endpoint.IP)
			if !ok {
				t.Fatalf("parser produced an endpoint without IP: %#v", p.Endpoint)
			}
			if p.Endpoint.Zone != "" {
				ip = ip.WithZone(p.Endpoint.Zone)
			}
			b = append(b, "endpoint="+netip.AddrPortFrom(ip, uint16(p.Endpoint.Port)).String()+"\n"...)
		}
		var sec, nsec int64
		if !p.LastHandshakeTime.IsZero() {
			sec, nsec = p.LastHandshakeTime.Unix(), int64(p.LastHandshakeTime.Nanosecond())
		}
		b = appendIntLine(b, "last_handshake_time_sec", sec)
		b = appendIntLine(b, "last_handshake_time_nsec", nsec)
		b = appendIntLine(b, "tx_bytes", p.TransmitBytes)
		b = appendIntLine(b, "rx_bytes", p.ReceiveBytes)
		b = appendIntLine(b, "persistent_keepalive_interval", int64(p.PersistentKeepaliveInterval/time.Second))
		for _, n := range p.AllowedIPs {
			pfx, err := prefixFromIPNet(n)
			if err != nil {
				t.Fatalf("parser produced an allowed IP the encoder rejects: %v", err)
			}
			b = append(b, "allowed_ip="+pfx.String()+"\n"...)
		}
	}
	return b
}

// sampleGet is a get reply in the shape wireguard-go produces.
var sampleGet = "private_key=" + hexN(0x30) + "\nlisten_port=51820\nfwmark=9\n" +
	"public_key=" + hexN(0x01) + "\npreshared_key=" + hexN(0x00) + "\nprotocol_version=1\n" +
	"endpoint=192.0.2.1:51821\nlast_handshake_time_sec=1764000000\nlast_handshake_time_nsec=123456789\n" +
	"tx_bytes=1000\nrx_bytes=2000\npersistent_keepalive_interval=25\nallowed_ip=10.0.0.2/32\nallowed_ip=fd00::2/128\n" +
	"public_key=" + hexN(0x02) + "\npreshared_key=" + hexN(0x22) + "\nprotocol_version=1\n" +
	"endpoint=[fe80::1%eth0]:4500\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n" +
	"tx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\n"

func TestParseUAPIGet(t *testing.T) {
	priv := keyN(0x30)
	want := &wgtypes.Device{
		PrivateKey:   priv,
		PublicKey:    priv.PublicKey(),
		ListenPort:   51820,
		FirewallMark: 9,
		Peers: []wgtypes.Peer{
			{
				PublicKey:                   keyN(0x01),
				Endpoint:                    &net.UDPAddr{IP: net.IP{192, 0, 2, 1}, Port: 51821},
				LastHandshakeTime:           time.Unix(1764000000, 123456789),
				TransmitBytes:               1000,
				ReceiveBytes:                2000,
				PersistentKeepaliveInterval: 25 * time.Second,
				AllowedIPs:                  []net.IPNet{mustCIDR(t, "10.0.0.2/32"), mustCIDR(t, "fd00::2/128")},
				ProtocolVersion:             1,
			},
			{
				PublicKey:       keyN(0x02),
				PresharedKey:    keyN(0x22),
				Endpoint:        &net.UDPAddr{IP: net.ParseIP("fe80::1"), Port: 4500, Zone: "eth0"},
				ProtocolVersion: 1,
			},
		},
	}
	for _, variant := range []struct{ name, text string }{
		{"bare in-process body", sampleGet},
		{"socket reply with errno=0", sampleGet + "errno=0\n\n"},
		{"unknown keys are skipped", strings.Replace(sampleGet, "fwmark=9\n", "fwmark=9\nnew_device_key=x\n", 1) + "new_peer_key=y\n"},
		{"anything after the blank line is ignored", sampleGet + "\ngarbage without equals\n"},
	} {
		t.Run(variant.name, func(t *testing.T) {
			got, err := parseUAPIGet([]byte(variant.text))
			if err != nil {
				t.Fatalf("parseUAPIGet: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}

	t.Run("no handshake is the zero time, not the epoch", func(t *testing.T) {
		got, err := parseUAPIGet([]byte(sampleGet))
		if err != nil {
			t.Fatal(err)
		}
		if !got.Peers[1].LastHandshakeTime.IsZero() {
			t.Errorf("LastHandshakeTime = %v, want zero", got.Peers[1].LastHandshakeTime)
		}
	})
	t.Run("no private key, no public key", func(t *testing.T) {
		got, err := parseUAPIGet([]byte("listen_port=1\n"))
		if err != nil {
			t.Fatal(err)
		}
		if !isZeroKey(got.PublicKey) || got.ListenPort != 1 || got.Peers != nil {
			t.Errorf("got %+v", got)
		}
	})
}

func TestParseUAPIGetRejects(t *testing.T) {
	peer := "public_key=" + hexN(0x01) + "\n"
	tests := []struct{ name, text, wantErr string }{
		{"non-zero errno", "listen_port=1\nerrno=-22\n\n", "errno -22"},
		{"line without =", "listen_port\n", "has no '='"},
		{"short key", "private_key=abcd\n", "line 1 (private_key)"},
		{"non-hex key", "public_key=" + strings.Repeat("zz", 32) + "\n", "line 1 (public_key)"},
		{"port out of range", "listen_port=65536\n", "line 1 (listen_port)"},
		{"negative fwmark", "fwmark=-1\n", "line 1 (fwmark)"},
		{"bad endpoint", peer + "endpoint=example.com:1\n", "line 2 (endpoint)"},
		{"bad allowed ip", peer + "allowed_ip=10.0.0.1\n", "line 2 (allowed_ip)"},
		{"negative handshake", peer + "last_handshake_time_sec=-5\n", "line 2 (last_handshake_time_sec)"},
		{"nsec out of range", peer + "last_handshake_time_nsec=1000000000\n", "line 2 (last_handshake_time_nsec)"},
		{"negative rx", peer + "rx_bytes=-1\n", "line 2 (rx_bytes)"},
		{"tx too big", peer + "tx_bytes=9223372036854775808\n", "line 2 (tx_bytes)"},
		{"keepalive too big", peer + "persistent_keepalive_interval=65536\n", "line 2 (persistent_keepalive_interval)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseUAPIGet([]byte(tt.text))
			if err == nil {
				t.Fatalf("parseUAPIGet accepted it: %+v", got)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not mention %q", err, tt.wantErr)
			}
		})
	}
}

// The encoder and the parser agree: what a set asks for is what a get of a
// device in that state reads back.
func TestEncodeThenParseAgree(t *testing.T) {
	ka := 15 * time.Second
	cfg := wgtypes.Config{
		PrivateKey: new(keyN(0x40)),
		ListenPort: new(1234),
		Peers: []wgtypes.PeerConfig{{
			PublicKey:                   keyN(0x41),
			Endpoint:                    udp("[2001:db8::1]:7"),
			PersistentKeepaliveInterval: &ka,
			AllowedIPs:                  []net.IPNet{mustCIDR(t, "10.9.0.0/16")},
		}},
	}
	set, err := encodeUAPISet(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// A set body uses the same keys as a get reply for these fields.
	got, err := parseUAPIGet(set)
	if err != nil {
		t.Fatal(err)
	}
	p := got.Peers[0]
	if got.PrivateKey != *cfg.PrivateKey || got.ListenPort != 1234 || p.PublicKey != keyN(0x41) ||
		p.Endpoint.String() != "[2001:db8::1]:7" || p.PersistentKeepaliveInterval != ka ||
		len(p.AllowedIPs) != 1 || p.AllowedIPs[0].String() != "10.9.0.0/16" {
		t.Errorf("set %q read back as %+v", set, got)
	}
}

func FuzzParseUAPI(f *testing.F) {
	f.Add([]byte(sampleGet))
	f.Add([]byte(sampleGet + "errno=0\n\n"))
	f.Add([]byte("errno=-22\n\n"))
	f.Add([]byte("public_key=" + hexN(0x01) + "\nendpoint=[::ffff:1.2.3.4]:5\nallowed_ip=::ffff:10.0.0.0/104\n"))
	f.Add([]byte("public_key=" + hexN(0x01) + "\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dev, err := parseUAPIGet(data)
		if err != nil {
			return
		}
		// Whatever parses must survive a round trip unchanged: the parser
		// keeps nothing it could not have read.
		text := renderUAPIGet(t, dev)
		again, err := parseUAPIGet(text)
		if err != nil {
			t.Fatalf("re-parsing rendered output failed: %v\ninput %q\nrendered %q", err, data, text)
		}
		if !reflect.DeepEqual(dev, again) {
			t.Fatalf("round trip changed the device\ninput %q\nfirst  %+v\nsecond %+v", data, dev, again)
		}
	})
}

func BenchmarkParseUAPIGet1000Peers(b *testing.B) {
	var buf bytes.Buffer
	buf.WriteString("private_key=" + hexN(0x30) + "\nlisten_port=51820\n")
	for i := range 1000 {
		var k wgtypes.Key
		k[0], k[1] = byte(i>>8), byte(i)
		buf.Write(appendKeyLine(nil, "public_key", k))
		buf.WriteString("preshared_key=" + hexN(0) + "\nprotocol_version=1\nendpoint=10.1." + strconv.Itoa(i/250) + "." + strconv.Itoa(i%250) + ":51820\n")
		buf.WriteString("last_handshake_time_sec=1764000000\nlast_handshake_time_nsec=5\ntx_bytes=1\nrx_bytes=2\npersistent_keepalive_interval=25\nallowed_ip=10.2.0.1/32\n")
	}
	text := buf.Bytes()
	for b.Loop() {
		if _, err := parseUAPIGet(text); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeUAPISet1000Peers(b *testing.B) {
	ka := 25 * time.Second
	peers := make([]wgtypes.PeerConfig, 1000)
	for i := range peers {
		var k wgtypes.Key
		k[0], k[1] = byte(i>>8), byte(i)
		peers[i] = wgtypes.PeerConfig{
			PublicKey:                   k,
			Endpoint:                    &net.UDPAddr{IP: net.IPv4(192, 0, 2, byte(i)), Port: 51820},
			PersistentKeepaliveInterval: &ka,
			ReplaceAllowedIPs:           true,
			AllowedIPs:                  []net.IPNet{{IP: net.IPv4(10, 200, byte(i>>8), byte(i)).To4(), Mask: net.CIDRMask(32, 32)}},
		}
	}
	cfg := wgtypes.Config{Peers: peers}
	for b.Loop() {
		if _, err := encodeUAPISet(cfg); err != nil {
			b.Fatal(err)
		}
	}
}
