/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package device

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.zx2c4.com/wireguard/aeadbatch"
)

// The encryption and decryption workers seal and open a container's
// packets in batches, one per run of packets under the same keypair: a
// container can mix keypairs (a rekey between two packets of one read),
// and each packet must still be sealed and opened under its own.
func TestWorkersFollowEachPacketsKeypair(t *testing.T) {
	device := &Device{log: NewLogger(LogLevelSilent, "")}
	device.tun.mtu.Store(1420)
	device.queue.encryption = &outboundQueue{c: make(chan *QueueOutboundElementsContainer, 1)}
	device.queue.decryption = &inboundQueue{c: make(chan *QueueInboundElementsContainer, 1)}
	go device.RoutineEncryption(1)
	go device.RoutineDecryption(1)
	defer close(device.queue.encryption.c)
	defer close(device.queue.decryption.c)

	rng := rand.New(rand.NewSource(1))
	keypairs := make([]*Keypair, 3)
	raw := make([][]byte, len(keypairs))
	for i := range keypairs {
		raw[i] = make([]byte, chacha20poly1305.KeySize)
		rng.Read(raw[i])
		key, err := aeadbatch.NewKey(raw[i])
		if err != nil {
			t.Fatal(err)
		}
		keypairs[i] = &Keypair{send: key, receive: key, remoteIndex: uint32(100 + i)}
	}
	// Runs of each keypair: long ones that fill vector groups, and ones
	// too short for them.
	var pattern []int
	for _, run := range []struct{ keypair, n int }{{0, 20}, {1, 2}, {0, 1}, {2, 17}, {1, 5}, {0, 3}} {
		for j := 0; j < run.n; j++ {
			pattern = append(pattern, run.keypair)
		}
	}

	out := &QueueOutboundElementsContainer{}
	plain := make([][]byte, len(pattern))
	for i, kp := range pattern {
		elem := &QueueOutboundElement{buffer: new([MaxMessageSize]byte), nonce: uint64(1000 + i), keypair: keypairs[kp]}
		size := 1 + rng.Intn(1400)
		if i%7 == 0 {
			size = 1404 // a full segment at MTU 1420
		}
		elem.packet = elem.buffer[MessageTransportHeaderSize : MessageTransportHeaderSize+size]
		rng.Read(elem.packet)
		plain[i] = append([]byte{}, elem.packet...)
		out.elems = append(out.elems, elem)
	}
	out.Lock()
	device.queue.encryption.c <- out
	out.Lock() // the worker unlocks it when done

	in := &QueueInboundElementsContainer{}
	for i, elem := range out.elems {
		kp := keypairs[pattern[i]]
		msg := elem.packet
		if got := binary.LittleEndian.Uint32(msg[4:8]); got != kp.remoteIndex {
			t.Fatalf("packet %d: receiver index %d, want %d", i, got, kp.remoteIndex)
		}
		ref, _ := chacha20poly1305.New(raw[pattern[i]])
		var nonce [chacha20poly1305.NonceSize]byte
		binary.LittleEndian.PutUint64(nonce[4:], elem.nonce)
		opened, err := ref.Open(nil, nonce[:], msg[MessageTransportOffsetContent:], nil)
		if err != nil {
			t.Fatalf("packet %d (keypair %d): x/crypto cannot open it under its keypair: %v", i, pattern[i], err)
		}
		if !bytes.Equal(opened[:len(plain[i])], plain[i]) || len(opened) != len(plain[i])+calculatePaddingSize(len(plain[i]), 1420) {
			t.Fatalf("packet %d: sealed something else than its padded plaintext", i)
		}
		inElem := &QueueInboundElement{buffer: new([MaxMessageSize]byte), keypair: kp}
		copy(inElem.buffer[:], msg)
		inElem.packet = inElem.buffer[:len(msg)]
		in.elems = append(in.elems, inElem)
	}
	// One forged packet in the middle of a long run must fail alone.
	forged := 9
	in.elems[forged].packet[MessageTransportOffsetContent+3] ^= 0x40

	in.Lock()
	device.queue.decryption.c <- in
	in.Lock()
	for i, elem := range in.elems {
		switch {
		case i == forged && elem.packet != nil:
			t.Fatalf("packet %d was forged but opened", i)
		case i == forged:
		case elem.packet == nil:
			t.Fatalf("packet %d (keypair %d) did not open", i, pattern[i])
		case !bytes.Equal(elem.packet[:len(plain[i])], plain[i]):
			t.Fatalf("packet %d opened to something else", i)
		case elem.counter != uint64(1000+i):
			t.Fatalf("packet %d: counter %d, want %d", i, elem.counter, 1000+i)
		}
	}
}
