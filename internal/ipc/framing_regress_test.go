package ipc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// A length prefix is a promise, not data: a peer that announces 8 MiB and
// then sends a few bytes must not make the reader hold 8 MiB.
func TestFramingGrowsWithTheData(t *testing.T) {
	stream := append(binary.LittleEndian.AppendUint32(nil, protocol.MaxFrameBytes), `{"frame"`...)
	fr := NewFrameReader(bytes.NewReader(stream))
	if _, err := fr.Read(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut frame: %v", err)
	}
	if cap(fr.buf) > 64<<10 {
		t.Fatalf("the reader holds %d bytes for a frame of which 8 arrived", cap(fr.buf))
	}
	// And a whole large frame still arrives intact.
	big := bytes.Repeat([]byte("x"), 3<<20+17)
	fr = NewFrameReader(iotest.HalfReader(bytes.NewReader(frameStream(string(big), "y"))))
	for _, want := range [][]byte{big, []byte("y")} {
		got, err := fr.Read()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("got %d bytes (%v), want %d", len(got), err, len(want))
		}
	}
}
