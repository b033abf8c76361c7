package main

import (
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"testing"
)

// The echo server must speak the protocol's framing and answer each
// request with a response frame carrying the request's id and the
// configured response object.
func TestEchoAnswersWithTheRequestIDAndTheGivenResponse(t *testing.T) {
	srv, cli := net.Pipe()
	defer cli.Close()
	go serve(srv, json.RawMessage(`{"result":"status","peer_count":0,"service_count":0}`))
	for _, id := range []uint64{1, 18446744073709551615} {
		body, _ := json.Marshal(map[string]any{"frame": "request", "id": id, "request": map[string]string{"op": "status"}})
		if _, err := cli.Write(append(binary.LittleEndian.AppendUint32(nil, uint32(len(body))), body...)); err != nil {
			t.Fatal(err)
		}
		var hdr [4]byte
		if _, err := io.ReadFull(cli, hdr[:]); err != nil {
			t.Fatal(err)
		}
		resp := make([]byte, binary.LittleEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(cli, resp); err != nil {
			t.Fatal(err)
		}
		var f struct {
			Frame    string          `json:"frame"`
			ID       uint64          `json:"id"`
			Response json.RawMessage `json:"response"`
		}
		if err := json.Unmarshal(resp, &f); err != nil {
			t.Fatal(err)
		}
		if f.Frame != "response" || f.ID != id || string(f.Response) != `{"result":"status","peer_count":0,"service_count":0}` {
			t.Fatalf("got %s", resp)
		}
	}
}

// A frame that is not a request ends the connection, as the daemon does
// with garbage.
func TestEchoClosesOnGarbage(t *testing.T) {
	srv, cli := net.Pipe()
	defer cli.Close()
	done := make(chan struct{})
	go func() { serve(srv, json.RawMessage(`{"result":"ok"}`)); close(done) }()
	body := []byte(`{not json`)
	cli.Write(append(binary.LittleEndian.AppendUint32(nil, uint32(len(body))), body...))
	<-done
}
