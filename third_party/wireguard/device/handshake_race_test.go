/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package device

import (
	"runtime"
	"sync"
	"testing"
)

// When both ends initiate at once, each end's handshake workers can
// consume the other's initiation and the response to its own initiation
// at the same moment. Whatever interleaving that gives, a keypair an end
// may send with must be one the other end can receive with: the same keys
// under the indices the two ends told each other. Before the response was
// re-checked under the write lock, answering the initiation could re-index
// the handshake between the response's read and its write, and the end
// then sent with a session whose index its peer never learned: one
// direction stayed dead until a handshake timer fired.
func TestCrossedHandshakeKeepsSendingKeypairReachable(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("the race needs two handshake workers running in parallel")
	}
	devA, devB := randDevice(t), randDevice(t)
	defer devA.Close()
	defer devB.Close()
	pubA := devA.staticIdentity.privateKey.publicKey()
	pubB := devB.staticIdentity.privateKey.publicKey()

	const rounds = 100
	for round := 0; round < rounds; round++ {
		// Fresh peers each round: the flood guard refuses a second
		// initiation from the same peer within 50 ms.
		bOnA, err := devA.NewPeer(pubB)
		if err != nil {
			t.Fatal(err)
		}
		aOnB, err := devB.NewPeer(pubA)
		if err != nil {
			t.Fatal(err)
		}
		bOnA.Start()
		aOnB.Start()

		initFromA, err := devA.CreateMessageInitiation(bOnA)
		assertNil(t, err)
		initFromB, err := devB.CreateMessageInitiation(aOnB)
		assertNil(t, err)

		// A answers B first, the way its handshake worker does.
		if devA.ConsumeMessageInitiation(initFromB) == nil {
			t.Fatal("A refused B's initiation")
		}
		responseFromA, err := devA.CreateMessageResponse(bOnA)
		assertNil(t, err)
		assertNil(t, bOnA.BeginSymmetricSession())

		// B's two workers: one takes A's response, the other A's
		// initiation, in the order RoutineHandshake takes them.
		var wg sync.WaitGroup
		var responseConsumed bool
		start := make(chan struct{})
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			if devB.ConsumeMessageResponse(responseFromA) != nil {
				responseConsumed = true
				_ = aOnB.BeginSymmetricSession()
			}
		}()
		go func() {
			defer wg.Done()
			<-start
			if devB.ConsumeMessageInitiation(initFromA) != nil {
				if _, err := devB.CreateMessageResponse(aOnB); err == nil {
					_ = aOnB.BeginSymmetricSession()
				}
			}
		}()
		close(start)
		wg.Wait()

		aOnB.keypairs.RLock()
		sending := aOnB.keypairs.current
		aOnB.keypairs.RUnlock()
		if responseConsumed && sending == nil {
			t.Fatalf("round %d: B consumed A's response but holds no keypair to send with", round)
		}
		if sending != nil {
			assertReachable(t, round, sending, bOnA)
		}

		devA.RemovePeer(pubB)
		devB.RemovePeer(pubA)
	}
}

// assertReachable fails unless peer holds a keypair that answers kp:
// indices crossed and kp's send key opening what the match receives.
func assertReachable(t *testing.T, round int, kp *Keypair, peer *Peer) {
	t.Helper()
	peer.keypairs.RLock()
	held := []*Keypair{peer.keypairs.current, peer.keypairs.next.Load(), peer.keypairs.previous}
	peer.keypairs.RUnlock()
	for _, match := range held {
		if match == nil || match.localIndex != kp.remoteIndex {
			continue
		}
		if match.remoteIndex != kp.localIndex {
			t.Fatalf("round %d: the sending keypair is registered under index %d, but the peer addresses it as %d", round, kp.localIndex, match.remoteIndex)
		}
		var nonce [12]byte
		sealed := kp.send.Seal(nil, nonce[:], []byte("crossed"), nil)
		if _, err := match.receive.Open(nil, nonce[:], sealed, nil); err != nil {
			t.Fatalf("round %d: the peer cannot open what the sending keypair seals: %v", round, err)
		}
		return
	}
	t.Fatalf("round %d: the peer holds no keypair for the sending keypair's remote index %d", round, kp.remoteIndex)
}

// An end that has consumed the response to its own initiation derives the
// session in a second step, under the lock taken again. If another
// handshake worker consumes the peer's crossing initiation between the two,
// the session is lost: the end logs "invalid state for keypair
// derivation", while the peer, which sent the response, holds its side of
// the session and waits for the end to send with it. Neither end then had
// a session it could send with until an initiation was retransmitted 5 s
// later. The crossing initiation is one the peer gave up when it answered
// ours, so the end refuses it and derives the session.
func TestConsumedResponseKeepsItsSessionFromACrossingInitiation(t *testing.T) {
	devA, devB := randDevice(t), randDevice(t)
	defer devA.Close()
	defer devB.Close()
	pubA := devA.staticIdentity.privateKey.publicKey()
	pubB := devB.staticIdentity.privateKey.publicKey()
	bOnA, err := devA.NewPeer(pubB)
	assertNil(t, err)
	aOnB, err := devB.NewPeer(pubA)
	assertNil(t, err)
	bOnA.Start()
	aOnB.Start()

	initFromA, err := devA.CreateMessageInitiation(bOnA)
	assertNil(t, err)
	initFromB, err := devB.CreateMessageInitiation(aOnB)
	assertNil(t, err)
	// A answers B's initiation, which replaces its own.
	if devA.ConsumeMessageInitiation(initFromB) == nil {
		t.Fatal("A refused B's initiation")
	}
	responseFromA, err := devA.CreateMessageResponse(bOnA)
	assertNil(t, err)
	assertNil(t, bOnA.BeginSymmetricSession())

	// B's first worker consumes A's response; its second takes A's
	// initiation before the first derives the session.
	if devB.ConsumeMessageResponse(responseFromA) == nil {
		t.Fatal("B refused A's response")
	}
	if devB.ConsumeMessageInitiation(initFromA) != nil {
		t.Error("B consumed an initiation A gave up when it answered B's, between B's consuming A's response and deriving its session")
	}
	if err := aOnB.BeginSymmetricSession(); err != nil {
		t.Fatalf("B lost the session of the response it consumed: %v", err)
	}
	aOnB.keypairs.RLock()
	sending := aOnB.keypairs.current
	aOnB.keypairs.RUnlock()
	if sending == nil {
		t.Fatal("B holds no keypair to send with")
	}
	assertReachable(t, 0, sending, bOnA)
}
