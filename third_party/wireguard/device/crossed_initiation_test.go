/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package device

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// When both ends send their first packet at the same moment, both
// initiate, and each may answer the other's initiation before the answer to
// its own arrives. Then each holds only a session it may not send with
// until the peer confirms it, and neither does. Without a tie-break the two
// waited for the 5 s retransmission of an initiation; with it, the end
// whose key sorts higher starts a new handshake at once. The test counts
// retransmissions rather than time: a crossing shows as one, and about one
// round in five crosses on loopback.
func TestCrossedInitiationsCompleteWithoutRetransmission(t *testing.T) {
	const rounds = 40
	var retransmitted atomic.Int32
	for round := 0; round < rounds; round++ {
		pair := genTestPairLogged(t, true, func(i int) *Logger {
			return retransmissionCounter(&retransmitted, fmt.Sprintf("dev%d: ", i))
		})
		var wg sync.WaitGroup
		for _, dir := range []SendDirection{Ping, Pong} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := sendAndWait(&pair, dir, 30*time.Second); err != nil {
					t.Errorf("round %d: %v", round, err)
				}
			}()
		}
		wg.Wait()
		pair[0].dev.Close()
		pair[1].dev.Close()
		if n := retransmitted.Load(); n > 0 || t.Failed() {
			t.Fatalf("round %d: the first packets both ways waited for a handshake retransmission (%d logged)", round, n)
		}
	}
}

// retransmissionCounter logs like the other test devices and counts the
// handshake retransmissions it is told of.
func retransmissionCounter(n *atomic.Int32, prefix string) *Logger {
	l := NewLogger(LogLevelVerbose, prefix)
	verbosef := l.Verbosef
	l.Verbosef = func(format string, args ...any) {
		if strings.HasPrefix(format, "%s - Handshake did not complete after") {
			n.Add(1)
		}
		verbosef(format, args...)
	}
	return l
}

// sendAndWait sends one ping in direction dir and waits up to d for it.
func sendAndWait(pair *testPair, dir SendDirection, d time.Duration) error {
	p0, p1 := pair[0], pair[1]
	if !dir {
		p0, p1 = p1, p0
	}
	msg := tuntest.Ping(p0.ip, p1.ip)
	p1.tun.Outbound <- msg
	select {
	case got := <-p0.tun.Inbound:
		if !bytes.Equal(msg, got) {
			return fmt.Errorf("%s did not transit correctly", dir)
		}
		return nil
	case <-time.After(d):
		return fmt.Errorf("%s did not transit", dir)
	}
}
