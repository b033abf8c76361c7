// Command echo is the IPC benchmark's peer: a bare Go server with the same
// framing (u32 little-endian length, then JSON) and the same JSON work per
// request as a minimal protocol server — decode the frame with
// encoding/json, encode a response frame with encoding/json — and nothing
// else. It answers every request with the response object given by
// --response (by default {"result":"ok"}), so it can be made to send
// exactly the bytes zlayer-overlayd sends.
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
)

const maxFrame = 8 << 20

type requestFrame struct {
	Frame   string          `json:"frame"`
	ID      uint64          `json:"id"`
	Request json.RawMessage `json:"request"`
}

type responseFrame struct {
	Frame    string          `json:"frame"`
	ID       uint64          `json:"id"`
	Response json.RawMessage `json:"response"`
}

func main() {
	socket := flag.String("socket", "", "Unix socket to listen on")
	respFile := flag.String("response", "", "file holding the JSON response object to answer with")
	flag.Parse()
	if *socket == "" {
		fmt.Fprintln(os.Stderr, "echo: --socket is required")
		os.Exit(2)
	}
	resp := json.RawMessage(`{"result":"ok"}`)
	if *respFile != "" {
		b, err := os.ReadFile(*respFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "echo:", err)
			os.Exit(1)
		}
		if !json.Valid(b) {
			fmt.Fprintf(os.Stderr, "echo: %s is not JSON\n", *respFile)
			os.Exit(1)
		}
		resp = b
	}
	os.Remove(*socket)
	ln, err := net.Listen("unix", *socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sigs; ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Remove(*socket)
			return
		}
		go serve(c, resp)
	}
}

func serve(c net.Conn, resp json.RawMessage) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 64<<10)
	var hdr [4]byte
	var body []byte
	out := make([]byte, 0, 4096)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := binary.LittleEndian.Uint32(hdr[:])
		if n > maxFrame {
			return
		}
		if cap(body) < int(n) {
			body = make([]byte, n)
		}
		body = body[:n]
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		var req requestFrame
		if err := json.Unmarshal(body, &req); err != nil || req.Frame != "request" {
			return
		}
		enc, err := json.Marshal(responseFrame{Frame: "response", ID: req.ID, Response: resp})
		if err != nil {
			panic(errors.New("echo: cannot encode a response"))
		}
		out = binary.LittleEndian.AppendUint32(out[:0], uint32(len(enc)))
		out = append(out, enc...)
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}
