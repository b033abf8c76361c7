package protocol

import (
	"bufio"
	"errors"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
)

func readVectors(t *testing.T, name string) []string {
	t.Helper()
	f, err := os.Open("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// TestGoldenRoundTrip decodes every frame the reference emits (and every
// extension frame we document) and re-encodes it byte for byte.
func TestGoldenRoundTrip(t *testing.T) {
	for _, file := range []string{"reference.jsonl", "extensions.jsonl"} {
		for i, line := range readVectors(t, file) {
			f, err := UnmarshalFrame([]byte(line))
			if err != nil {
				t.Fatalf("%s:%d: decode: %v\n%s", file, i+1, err, line)
			}
			out, err := MarshalFrame(f)
			if err != nil {
				t.Fatalf("%s:%d: encode: %v", file, i+1, err)
			}
			if string(out) != line {
				t.Errorf("%s:%d: round trip differs\n got: %s\nwant: %s", file, i+1, out, line)
			}
		}
	}
}

// TestGoldenCoverage makes sure the golden files exercise every op, result,
// event, handle platform and peer scope, so a new variant cannot ship
// without a vector.
func TestGoldenCoverage(t *testing.T) {
	seen := map[string]bool{}
	for _, file := range []string{"reference.jsonl", "extensions.jsonl"} {
		for _, line := range readVectors(t, file) {
			f, err := UnmarshalFrame([]byte(line))
			if err != nil {
				t.Fatal(err)
			}
			switch f.Kind {
			case KindRequest:
				seen["op:"+f.Request.Op()] = true
				switch r := f.Request.(type) {
				case AttachContainer:
					seen["platform:"+r.Handle.Platform] = true
				case DetachContainer:
					seen["platform:"+r.Handle.Platform] = true
				case AddPeer:
					seen["scope:"+r.Scope.String()[:min(7, len(r.Scope.String()))]] = true
				case RemovePeer:
					seen["scope:"+r.Scope.String()[:min(7, len(r.Scope.String()))]] = true
				}
			case KindResponse:
				seen["result:"+f.Response.Result()] = true
			case KindEvent:
				seen["event:"+f.Event.Name()] = true
			}
		}
	}
	var want []string
	for op := range requestTypes {
		want = append(want, "op:"+op)
	}
	for r := range responseTypes {
		want = append(want, "result:"+r)
	}
	for e := range eventTypes {
		want = append(want, "event:"+e)
	}
	want = append(want, "platform:linux_pid", "platform:windows_container", "platform:guest_managed", "platform:netns",
		"scope:global", "scope:service")
	for _, w := range want {
		if !seen[w] {
			t.Errorf("no golden vector for %s", w)
		}
	}
}

// The reference's hand-written case: add_peer without scope is global and
// carries the flattened peer fields.
func TestAddPeerWithoutScopeDefaultsToGlobal(t *testing.T) {
	in := `{"frame":"request","id":11,"request":{"op":"add_peer","public_key":"k","endpoint":"1.2.3.4:51820","allowed_ips":"10.200.0.2/32","persistent_keepalive_secs":25}}`
	f, err := UnmarshalFrame([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := AddPeer{PeerSpec: PeerSpec{PublicKey: "k", Endpoint: "1.2.3.4:51820", AllowedIPs: "10.200.0.2/32", PersistentKeepaliveSecs: 25}}
	if f.ID != 11 || !reflect.DeepEqual(f.Request, want) {
		t.Fatalf("got id %d %#v", f.ID, f.Request)
	}
	if !f.Request.(AddPeer).Scope.IsGlobal() {
		t.Fatal("scope should default to global")
	}
	// The reference always emits scope; so do we.
	out, _ := MarshalFrame(f)
	if !strings.HasSuffix(string(out), `"persistent_keepalive_secs":25,"scope":{"scope":"global"}}}`) {
		t.Fatalf("scope not emitted: %s", out)
	}
}

// Typed round trips mirroring the reference's unit tests.
func TestTypedRoundTrips(t *testing.T) {
	frames := []Frame{
		RequestFrame(1, SetupGlobalOverlay{Deployment: "prod", InstanceID: "42", ClusterCIDR: "10.200.0.0/16", SliceCIDR: "10.200.0.0/28", WGPort: 51820, NATEnabled: true}),
		RequestFrame(2, AttachContainer{Handle: WindowsContainer("ctr-abc", netip.MustParseAddr("10.200.0.5")), Service: "web", DNSServer: netip.MustParseAddr("10.200.0.1"), DNSDomain: "overlay"}),
		RequestFrame(3, AttachContainer{Handle: LinuxPID(4242), Service: "web", JoinGlobal: true}),
		ResponseFrame(2, Attached{IP: netip.MustParseAddr("10.200.0.5"), NamespaceGUID: "aabbccdd-eeff-0011-2233-445566778899"}),
		ResponseFrame(9, Err{Message: "no slice assigned"}),
		EventFrame(PeerHealthChanged{Pubkey: "base64key", Healthy: false}),
		ResponseFrame(7, StatusResult{StatusSnapshot{Interface: "zl-overlay0", NodeIP: netip.MustParseAddr("10.200.0.1"), PeerCount: 2, ServiceCount: 1,
			Peers: []PeerStatus{{PublicKey: "k", Endpoint: "1.2.3.4:51820", AllowedIPs: "10.200.0.2/32"}}}}),
		ResponseFrame(8, ServiceOverlay{Name: "zl-x-b", Mode: ModeShared}),
		ResponseFrame(8, ServiceOverlay{Name: "zl-x-d", Mode: ModeDedicated, WGPublicKey: "k", WGPort: 51421, OverlayIP: netip.MustParseAddr("10.200.46.225"), Subnet: "10.200.46.224/28"}),
		ResponseFrame(8, StatusResult{StatusSnapshot{DedicatedServices: []DedicatedServiceStatus{{Service: "db", Interface: "zl-db-d", PublicKey: "k", ListenPort: 51421, OverlayIP: netip.MustParseAddr("10.0.0.1"), Subnet: "10.0.0.0/28", PeerCount: 1}}}}),
	}
	for _, scope := range []PeerScope{GlobalScope(), ServiceScope("web")} {
		frames = append(frames,
			RequestFrame(20, AddPeer{PeerSpec: PeerSpec{PublicKey: "k", Endpoint: "e:1", AllowedIPs: "10.0.0.0/24"}, Scope: scope}),
			RequestFrame(21, RemovePeer{Pubkey: "k", Scope: scope}),
			RequestFrame(22, AddAllowedIP{Pubkey: "k", CIDR: "10.0.0.0/24", Scope: scope}),
			RequestFrame(23, RemoveAllowedIP{Pubkey: "k", CIDR: "10.0.0.0/24", Scope: scope}),
		)
	}
	for _, f := range frames {
		b, err := MarshalFrame(f)
		if err != nil {
			t.Fatal(err)
		}
		back, err := UnmarshalFrame(b)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if !reflect.DeepEqual(normalizeScope(f), normalizeScope(back)) {
			t.Errorf("round trip changed frame:\n in: %#v\nout: %#v\njson: %s", f, back, b)
		}
	}
}

func normalizeScope(f Frame) Frame {
	if ap, ok := f.Request.(AddPeer); ok && ap.Scope.IsGlobal() {
		ap.Scope = GlobalScope()
		f.Request = ap
	}
	return f
}

func TestEmptyStatusIsMinimal(t *testing.T) {
	b, err := MarshalResponse(StatusResult{})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"result":"status","peer_count":0,"service_count":0}` {
		t.Fatalf("got %s", b)
	}
}

func TestNullAcceptedForOptionalFields(t *testing.T) {
	in := `{"frame":"request","id":3,"request":{"op":"setup_global_overlay","deployment":"d","instance_id":"i","cluster_cidr":"10.0.0.0/16","slice_cidr":null,"wg_port":1,"nat_enabled":false,"unknown_field":{"x":[1,2]}}}`
	f, err := UnmarshalFrame([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if r := f.Request.(SetupGlobalOverlay); r.SliceCIDR != "" || r.WGPort != 1 {
		t.Fatalf("%#v", r)
	}
	in = `{"frame":"request","id":4,"request":{"op":"remove_peer","pubkey":"k","scope":null}}`
	if f, err = UnmarshalFrame([]byte(in)); err != nil || !f.Request.(RemovePeer).Scope.IsGlobal() {
		t.Fatalf("%v %#v", err, f)
	}
}

func TestBadRequestsKeepTheirID(t *testing.T) {
	cases := map[string]string{
		`{"frame":"request","id":5,"request":{"op":"no_such_op"}}`:                                                                                                      `unknown op "no_such_op"`,
		`{"frame":"request","id":5,"request":{"op":"setup_service_overlay","service":"web"}}`:                                                                           "missing field `mode`",
		`{"frame":"request","id":5,"request":{"op":"set_local_node_id","node_id":"7"}}`:                                                                                 "node_id",
		`{"frame":"request","id":5,"request":{"op":"set_local_node_id","node_id":-1}}`:                                                                                  "node_id",
		`{"frame":"request","id":5,"request":{"op":"set_local_node_id","node_id":1.5}}`:                                                                                 "node_id",
		`{"frame":"request","id":5,"request":{"op":"set_local_node_id","node_id":null}}`:                                                                                "must not be null",
		`{"frame":"request","id":5,"request":{"op":"remove_peer","pubkey":"k","scope":"global"}}`:                                                                       "",
		`{"frame":"request","id":5,"request":{"op":"attach_container","handle":{"platform":"bsd_jail","pid":1},"service":"s","join_global":false}}`:                     "bsd_jail",
		`{"frame":"request","id":5,"request":{"op":"attach_container","handle":{"platform":"linux_pid"},"service":"s","join_global":false}}`:                            "pid",
		`{"frame":"request","id":5,"request":{"op":"attach_container","handle":{"platform":"netns","path":"/x","ifname":"eth0"},"service":"s","join_global":false}}`:    "container_id",
		`{"frame":"request","id":5,"request":{"op":"attach_container","handle":{"platform":"netns","path":"/x","container_id":"c"},"service":"s","join_global":false}}`: "ifname",
		`{"frame":"request","id":5,"request":{"op":"release_ip","ip":"10.0.0.300"}}`:                                                                                    "",
		`{"frame":"request","id":5,"request":{"op":"status"},"frame":"bogus"}`:                                                                                          "bogus",
		`{"frame":"request","id":5}`:              "missing field `request`",
		`{"frame":"request","id":5,"request":{}}`: "missing field `op`",
		`{"frame":"request","id":5,"request":{"op":"add_peer","public_key":"k","endpoint":"e","allowed_ips":"a","persistent_keepalive_secs":25,"scope":{"scope":"service"}}}`: "service",
	}
	for in, want := range cases {
		_, err := UnmarshalFrame([]byte(in))
		var bad *BadRequestError
		if !errors.As(err, &bad) {
			t.Errorf("%s: want BadRequestError, got %v", in, err)
			continue
		}
		if bad.ID != 5 || !strings.Contains(bad.Error(), want) {
			t.Errorf("%s: id %d err %q, want it to mention %q", in, bad.ID, bad.Error(), want)
		}
	}
}

func TestGarbageIsMalformed(t *testing.T) {
	for _, in := range []string{``, `{`, `[]`, `"x"`, `{"frame":"request","id":-1,"request":{"op":"status"}}`,
		`{"frame":"request","id":"1","request":{"op":"status"}}`, `{"frame":"event","event":"nope"}`, strings.Repeat("[", 20000)} {
		_, err := UnmarshalFrame([]byte(in))
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: want ErrMalformed, got %v", in[:min(len(in), 40)], err)
		}
	}
}

func TestSerdeStringEscapes(t *testing.T) {
	b, err := MarshalResponse(Err{Message: "<a&b>\u2028\\u2028\x01\t\"é"})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"result":"err","message":"<a&b>` + "\u2028" + `\\u2028\u0001\t\"é"}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
}

func TestEveryOpListed(t *testing.T) {
	if len(Ops()) != len(requestTypes) {
		t.Fatalf("Ops() has %d entries, requestTypes %d", len(Ops()), len(requestTypes))
	}
	for _, op := range Ops() {
		mk, ok := requestTypes[op]
		if !ok || mk().Op() != op {
			t.Errorf("op %q not registered consistently", op)
		}
	}
}
