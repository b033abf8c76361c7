package conn

import (
	"encoding/binary"
	"fmt"
	"net"
	"strconv"
	"testing"

	"golang.org/x/net/ipv6"
)

func TestStdNetBindReceiveFuncAfterClose(t *testing.T) {
	bind := NewStdNetBind().(*StdNetBind)
	fns, _, err := bind.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	bind.Close()
	bufs := make([][]byte, 1)
	bufs[0] = make([]byte, 1)
	sizes := make([]int, 1)
	eps := make([]Endpoint, 1)
	for _, fn := range fns {
		// The ReceiveFuncs must not access conn-related fields on StdNetBind
		// unguarded. Close() nils the conn-related fields resulting in a panic
		// if they violate the mutex.
		fn(bufs, sizes, eps)
	}
}

func mockSetGSOSize(control *[]byte, gsoSize uint16) {
	*control = (*control)[:cap(*control)]
	binary.LittleEndian.PutUint16(*control, gsoSize)
}

func Test_coalesceMessages(t *testing.T) {
	cases := []struct {
		name     string
		buffs    [][]byte
		wantLens []int
		wantGSO  []int
	}{
		{
			name: "one message no coalesce",
			buffs: [][]byte{
				make([]byte, 1, 1),
			},
			wantLens: []int{1},
			wantGSO:  []int{0},
		},
		{
			name: "two messages equal len coalesce",
			buffs: [][]byte{
				make([]byte, 1, 2),
				make([]byte, 1, 1),
			},
			wantLens: []int{2},
			wantGSO:  []int{1},
		},
		{
			name: "two messages unequal len coalesce",
			buffs: [][]byte{
				make([]byte, 2, 3),
				make([]byte, 1, 1),
			},
			wantLens: []int{3},
			wantGSO:  []int{2},
		},
		{
			name: "three messages second unequal len coalesce",
			buffs: [][]byte{
				make([]byte, 2, 3),
				make([]byte, 1, 1),
				make([]byte, 2, 2),
			},
			wantLens: []int{3, 2},
			wantGSO:  []int{2, 0},
		},
		{
			// Gathered, not appended: the first buffer's capacity
			// does not limit the batch.
			name: "three messages first with no spare cap coalesce",
			buffs: [][]byte{
				make([]byte, 2, 2),
				make([]byte, 2, 2),
				make([]byte, 2, 2),
			},
			wantLens: []int{6},
			wantGSO:  []int{2},
		},
	}

	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			addr := &net.UDPAddr{
				IP:   net.ParseIP("127.0.0.1").To4(),
				Port: 1,
			}
			msgs := make([]ipv6.Message, len(tt.buffs))
			for i := range msgs {
				msgs[i].Buffers = make([][]byte, 1)
				msgs[i].OOB = make([]byte, 0, 2)
			}
			got := coalesceMessages(addr, &StdNetEndpoint{AddrPort: addr.AddrPort()}, tt.buffs, msgs, mockSetGSOSize)
			if got != len(tt.wantLens) {
				t.Fatalf("got len %d want: %d", got, len(tt.wantLens))
			}
			next := 0 // the next of tt.buffs each message must gather
			for i := 0; i < got; i++ {
				if msgs[i].Addr != addr {
					t.Errorf("msgs[%d].Addr != passed addr", i)
				}
				gotLen := 0
				for j, b := range msgs[i].Buffers {
					if &b[0] != &tt.buffs[next][0] || len(b) != len(tt.buffs[next]) {
						t.Errorf("msgs[%d].Buffers[%d] is not buffs[%d] itself", i, j, next)
					}
					next++
					gotLen += len(b)
				}
				if gotLen != tt.wantLens[i] {
					t.Errorf("len(msgs[%d].Buffers) %d != %d", i, gotLen, tt.wantLens[i])
				}
				gotGSO, err := mockGetGSOSize(msgs[i].OOB)
				if err != nil {
					t.Fatalf("msgs[%d] getGSOSize err: %v", i, err)
				}
				if gotGSO != tt.wantGSO[i] {
					t.Errorf("msgs[%d] gsoSize %d != %d", i, gotGSO, tt.wantGSO[i])
				}
			}
		})
	}
}

func mockGetGSOSize(control []byte) (int, error) {
	if len(control) < 2 {
		return 0, nil
	}
	return int(binary.LittleEndian.Uint16(control)), nil
}

func Test_splitCoalescedMessages(t *testing.T) {
	newMsg := func(n, gso int) ipv6.Message {
		msg := ipv6.Message{
			Buffers: [][]byte{make([]byte, 1<<16-1)},
			N:       n,
			OOB:     make([]byte, 2),
		}
		binary.LittleEndian.PutUint16(msg.OOB, uint16(gso))
		if gso > 0 {
			msg.NN = 2
		}
		return msg
	}

	cases := []struct {
		name        string
		msgs        []ipv6.Message
		firstMsgAt  int
		wantNumEval int
		wantMsgLens []int
		wantErr     bool
	}{
		{
			name: "second last split last empty",
			msgs: []ipv6.Message{
				newMsg(0, 0),
				newMsg(0, 0),
				newMsg(3, 1),
				newMsg(0, 0),
			},
			firstMsgAt:  2,
			wantNumEval: 3,
			wantMsgLens: []int{1, 1, 1, 0},
			wantErr:     false,
		},
		{
			name: "second last no split last empty",
			msgs: []ipv6.Message{
				newMsg(0, 0),
				newMsg(0, 0),
				newMsg(1, 0),
				newMsg(0, 0),
			},
			firstMsgAt:  2,
			wantNumEval: 1,
			wantMsgLens: []int{1, 0, 0, 0},
			wantErr:     false,
		},
		{
			name: "second last no split last no split",
			msgs: []ipv6.Message{
				newMsg(0, 0),
				newMsg(0, 0),
				newMsg(1, 0),
				newMsg(1, 0),
			},
			firstMsgAt:  2,
			wantNumEval: 2,
			wantMsgLens: []int{1, 1, 0, 0},
			wantErr:     false,
		},
		{
			name: "second last no split last split",
			msgs: []ipv6.Message{
				newMsg(0, 0),
				newMsg(0, 0),
				newMsg(1, 0),
				newMsg(3, 1),
			},
			firstMsgAt:  2,
			wantNumEval: 4,
			wantMsgLens: []int{1, 1, 1, 1},
			wantErr:     false,
		},
		{
			name: "second last split last split",
			msgs: []ipv6.Message{
				newMsg(0, 0),
				newMsg(0, 0),
				newMsg(2, 1),
				newMsg(2, 1),
			},
			firstMsgAt:  2,
			wantNumEval: 4,
			wantMsgLens: []int{1, 1, 1, 1},
			wantErr:     false,
		},
		{
			name: "second last no split last split overflow",
			msgs: []ipv6.Message{
				newMsg(0, 0),
				newMsg(0, 0),
				newMsg(1, 0),
				newMsg(4, 1),
			},
			firstMsgAt:  2,
			wantNumEval: 4,
			wantMsgLens: []int{1, 1, 1, 1},
			wantErr:     true,
		},
	}

	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			got, err := splitCoalescedMessages(tt.msgs, 2, mockGetGSOSize)
			if err != nil && !tt.wantErr {
				t.Fatalf("err: %v", err)
			}
			if got != tt.wantNumEval {
				t.Fatalf("got to eval: %d want: %d", got, tt.wantNumEval)
			}
			for i, msg := range tt.msgs {
				if msg.N != tt.wantMsgLens[i] {
					t.Fatalf("msg[%d].N: %d want: %d", i, msg.N, tt.wantMsgLens[i])
				}
			}
		})
	}
}

// TestStdNetBindRoundTripsLeaveNoStaleMessages sends batches of different
// shapes over loopback and checks each receive returns exactly what was
// sent, and that the messages went back to the pool clean: they are reset
// only where they were used, and a message left with a send's extra
// buffers would scatter a later read or send over stale memory.
func TestStdNetBindRoundTripsLeaveNoStaleMessages(t *testing.T) {
	bind := NewStdNetBind().(*StdNetBind)
	fns, port, err := bind.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer bind.Close()
	ep, err := bind.ParseEndpoint(net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		t.Fatal(err)
	}
	recvBufs := make([][]byte, bind.BatchSize())
	for i := range recvBufs {
		recvBufs[i] = make([]byte, 1<<16)
	}
	sizes := make([]int, len(recvBufs))
	eps := make([]Endpoint, len(recvBufs))
	for round, sent := range [][]int{
		{1000, 1000, 1000, 1000, 200}, // one GSO batch with a short tail
		{300},
		{1200, 1200, 1200, 1200, 1200, 1200, 1200, 1200, 1200, 1200},
		{50, 60, 70}, // growing sizes: no coalescing
		{1000, 1000, 1000, 1000, 200},
	} {
		bufs := make([][]byte, len(sent))
		for i, n := range sent {
			bufs[i] = make([]byte, n)
			bufs[i][0] = byte(round)
		}
		if err := bind.Send(bufs, ep); err != nil {
			t.Fatal(err)
		}
		var got []int
		for len(got) < len(sent) {
			n, err := fns[0](recvBufs, sizes, eps)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < n; i++ {
				if sizes[i] == 0 {
					continue
				}
				if recvBufs[i][0] != byte(round) {
					t.Fatalf("round %d: a datagram of round %d came back", round, recvBufs[i][0])
				}
				got = append(got, sizes[i])
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(sent) {
			t.Errorf("round %d: sent datagrams of %v bytes, received %v", round, sent, got)
		}
		// The pool hands back the messages this goroutine put last
		// (unless the race detector's pool drops them): all clean.
		msgs := bind.getMessages()
		for i, m := range *msgs {
			if len(m.Buffers) != 1 || len(m.OOB) != 0 || m.N != 0 || m.NN != 0 || m.Flags != 0 || m.Addr != nil {
				t.Fatalf("round %d: message %d came back from the pool used: %d buffers, %d bytes of OOB, N %d, NN %d, addr %v", round, i, len(m.Buffers), len(m.OOB), m.N, m.NN, m.Addr)
			}
		}
		bind.putMessages(msgs, 0, len(*msgs))
	}
}
