package protocol

import (
	"net/netip"
	"strconv"
	"testing"
)

// Frames as the main daemon sends them: the cheapest request (status), a
// typical mutating one with a nested handle, and add_peer with its
// flattened fields and nested scope.
var benchRequests = []struct {
	name string
	body string
}{
	{"status", `{"frame":"request","id":12345,"request":{"op":"status"}}`},
	{"attach_container", `{"frame":"request","id":12346,"request":{"op":"attach_container","handle":{"platform":"linux_pid","pid":4242},"service":"web","join_global":true,"dns_server":"10.200.3.1","dns_domain":"prod.local"}}`},
	{"add_peer", `{"frame":"request","id":12347,"request":{"op":"add_peer","public_key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","endpoint":"192.0.2.7:51820","allowed_ips":"10.200.7.0/24,10.200.8.0/24","persistent_keepalive_secs":25,"scope":{"scope":"global"}}}`},
}

func BenchmarkUnmarshalFrame(b *testing.B) {
	for _, bc := range benchRequests {
		data := []byte(bc.body)
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := UnmarshalFrame(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func benchStatus() StatusResult {
	return StatusResult{StatusSnapshot{
		Version: "0.1.0", NodeID: 7, Interface: "zl-prod-g0", NodeIP: netip.MustParseAddr("10.200.3.1"),
		PublicKey: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", Deployment: "prod", WGPort: 51820,
		OverlayCIDR: "10.200.0.0/16", SliceCIDR: "10.200.3.0/24", MTU: 1420, WGBackend: "userspace",
		Peers: []PeerStatus{{PublicKey: "BAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", Endpoint: "192.0.2.7:51820",
			AllowedIPs: "10.200.7.0/24", LastHandshakeUnixSecs: 1764000000, RxBytes: 1 << 20, TxBytes: 1 << 19}},
		PeerCount: 1,
	}}
}

func BenchmarkMarshalFrame(b *testing.B) {
	cases := []struct {
		name string
		f    Frame
	}{
		{"ok", ResponseFrame(1, OK{})},
		{"attached", ResponseFrame(2, Attached{IP: netip.MustParseAddr("10.200.3.17")})},
		{"status", ResponseFrame(3, benchStatus())},
		{"err", ResponseFrame(4, Err{Message: "attach_container: service \"web\" has no overlay on this node; send setup_service_overlay first"})},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 4096)
			for b.Loop() {
				var err error
				buf, err = AppendFrame(buf[:0], bc.f)
				if err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(int64(len(buf)))
		})
	}
}

// BenchmarkUnmarshalStatusResponse is the client's side of status on a
// node with 1,000 peers (about 200 kB of JSON).
func BenchmarkUnmarshalStatusResponse(b *testing.B) {
	s := benchStatus()
	p := s.Peers[0]
	s.Peers = nil
	for i := range 1000 {
		p.Endpoint = "192.0.2." + strconv.Itoa(i%250+1) + ":51820"
		s.Peers = append(s.Peers, p)
	}
	s.PeerCount = 1000
	data, err := MarshalFrame(ResponseFrame(9, s))
	if err != nil {
		b.Fatal(err)
	}
	// "general" is the decoder every frame took before the fast path.
	for name, decode := range map[string]func([]byte) (Frame, error){"fast": UnmarshalFrame, "general": unmarshalFrameGeneral} {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := decode(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMarshalStatusResponse is the server's side of the same answer.
func BenchmarkMarshalStatusResponse(b *testing.B) {
	s := benchStatus()
	p := s.Peers[0]
	s.Peers = nil
	for i := range 1000 {
		p.Endpoint = "192.0.2." + strconv.Itoa(i%250+1) + ":51820"
		s.Peers = append(s.Peers, p)
	}
	f := ResponseFrame(9, s)
	buf := make([]byte, 0, 256<<10)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = AppendFrame(buf[:0], f); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}
