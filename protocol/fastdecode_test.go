package protocol

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// fastAgrees checks the one property the fast path must have: whenever it
// decodes a frame, the general decoder decodes the same frame to the same
// value without error.
func fastAgrees(t *testing.T, data []byte) bool {
	t.Helper()
	f, ok := fastFrame(data)
	if !ok {
		return false
	}
	g, err := unmarshalFrameGeneral(data)
	if err != nil {
		t.Fatalf("fast path decoded a frame the general decoder rejects (%v):\n%q", err, data)
	}
	if !reflect.DeepEqual(f, g) {
		t.Fatalf("fast and general decoders disagree on %q:\nfast    %#v\ngeneral %#v", data, f, g)
	}
	return true
}

func TestFastPathTakesEveryGoldenRequestAndResponse(t *testing.T) {
	for _, file := range []string{"reference.jsonl", "extensions.jsonl"} {
		for i, line := range readVectors(t, file) {
			if strings.HasPrefix(line, `{"frame":"event"`) {
				continue
			}
			if !fastAgrees(t, []byte(line)) {
				t.Errorf("%s:%d: a well-formed frame took the slow path: %s", file, i+1, line)
			}
		}
	}
}

// Frames whose meaning under encoding/json depends on its quirks (case
// folding, last duplicate wins, escapes in keys) or that are errors must
// be left to the general decoder, which owns every error message.
func TestFastPathDeclinesWhatItCannotBeSureOf(t *testing.T) {
	for _, body := range []string{
		`{"Frame":"request","id":1,"request":{"op":"status"}}`,
		`{"frame":"request","ID":1,"request":{"op":"status"}}`,
		`{"frame":"request","id":1,"requeſt":{"op":"status"}}`,
		`{"frame":"request","id":1,"request":{"OP":"status"}}`,
		`{"frame":"request","id":1,"id":2,"request":{"op":"status"}}`,
		`{"frame":"request","id":1,"request":{"op":"status"},"request":{"op":"shutdown"}}`,
		`{"frame":"request","id":1,"request":{"op":"release_ip","ip":"10.0.0.1","ip":"10.0.0.2"}}`,
		`{"fr\u0061me":"request","id":1,"request":{"op":"status"}}`,
		`{"frame":"request","id":1,"request":{"op":"st\u0061tus"}}`,
		`{"frame":"request","id":1,"request":{"o\u0070":"status"}}`,
		`{"frame":"request","id":1,"request":{"op":"nope"}}`,
		`{"frame":"request","id":1,"request":{"op":"release_ip"}}`,
		`{"frame":"request","id":1,"request":{"op":"release_ip","ip":null}}`,
		`{"frame":"request","id":1,"request":{"op":"release_ip","ip":"not an ip"}}`,
		`{"frame":"request","id":1,"request":{"op":"set_local_node_id","node_id":"7"}}`,
		`{"frame":"request","id":-1,"request":{"op":"status"}}`,
		`{"frame":"request","id":1.0,"request":{"op":"status"}}`,
		`{"frame":"request","request":{"op":"status"}}`,
		`{"frame":"request","id":1,"request":null}`,
		`{"frame":"request","id":1,"request":"status"}`,
		`{"frame":"request","id":1,"request":{"op":"status"}`,
		`{"frame":"request","id":1,"request":{"op":"status"}} x`,
		"{\"frame\":\"request\",\"id\":1,\"request\":{\"op\":\"register_dns\",\"name\":\"\xff\",\"ip\":\"10.0.0.1\"}}",
		`{"frame":"response","id":1,"response":{"result":"ip"}}`,
		`{"frame":"response","id":1,"response":{"Result":"ok"}}`,
		`{"frame":"response","id":1,"response":{"result":"ok"},"frame":"response"}`,
		`{"frame":"event","event":"shutdown_requested"}`,
	} {
		if fastAgrees(t, []byte(body)) {
			t.Errorf("fast path took %s", body)
		}
	}
}

// The fast path validates a frame in pieces: the envelope's syntax and
// members itself, the body by decoding it. Invalid JSON anywhere, the
// parts nothing decodes included, must still reach the general decoder.
func TestFastPathRefusesInvalidJSONOutsideTheDecodedBody(t *testing.T) {
	for _, body := range []string{
		`{"frame":"request","id":1,"request":{"op":"status"},"extra":[1,]}`,
		`{"frame":"request","id":1,"request":{"op":"status"},"extra":01}`,
		`{"frame":"request","id":1x,"request":{"op":"status"}}`,
		`{"frame":"request","id":1,"response":{"result":"ok",},"request":{"op":"status"}}`,
		"{\"frame\":\"request\",\"id\":1,\"ex\x01tra\":1,\"request\":{\"op\":\"status\"}}",
		`{"frame":"request","id":1,"request":{"op":"status","x":[}}`,
		`{"frame":"request","id":1,"request":{"op":"status","x":"\q"}}`,
		`{"frame":"response","id":1,"response":{"result":"ok","x":tru}}`,
		`{"frame":"request","id":1,"request":{"op":"release_ip","ip":"10.0.0.1","x":[1,]}}`,
		`{"frame":"request","id":1,"request":{"op":"status"}}}`,
		`{"frame":"request","id":1,"request":{"op":"status"}}{}`,
		`{"frame":"request","id":1,"request":{"op":"status"},"x":[}`,
		`{"frame":"request","id":1,"request":{"op":"status"},"x":"\`,
		`{"frame":"request","id":1,"request":{"op":"status","x":"\`,
	} {
		if fastAgrees(t, []byte(body)) {
			t.Errorf("fast path took %s", body)
		}
	}
}

func TestFastPathIgnoresUnknownMembersAndWhitespace(t *testing.T) {
	for _, body := range []string{
		` { "frame" : "request" , "id" : 7 , "request" : { "op" : "status" } , "extra" : [1,{"a":"}"}] } `,
		`{"extra":{"frame":"event"},"request":{"service":"web","op":"teardown_service_overlay","x":null},"id":3,"frame":"request"}`,
		`{"frame":"request","id":18446744073709551615,"request":{"op":"add_peer","public_key":"k","endpoint":"e:1","allowed_ips":"10.0.0.0/8","persistent_keepalive_secs":0}}`,
	} {
		if !fastAgrees(t, []byte(body)) {
			t.Errorf("fast path declined %s", body)
		}
	}
}

func FuzzFastPathAgreesWithGeneral(f *testing.F) {
	for _, file := range []string{"reference.jsonl", "extensions.jsonl"} {
		b, err := os.ReadFile("testdata/" + file)
		if err != nil {
			f.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			f.Add([]byte(line))
		}
	}
	f.Add([]byte(`{"frame":"request","id":1,"request":{"op":"status","Op":"shutdown"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fastAgrees(t, data)
	})
}
