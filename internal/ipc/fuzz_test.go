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

// frameStream is a helper for seeds: each body with its length prefix.
func frameStream(bodies ...string) []byte {
	var out []byte
	for _, b := range bodies {
		out = binary.LittleEndian.AppendUint32(out, uint32(len(b)))
		out = append(out, b...)
	}
	return out
}

// splitStream is the framing the reader must implement, written the
// obvious way: the bodies of the whole frames at the start of stream, and
// what ends it (nil for a clean end at a frame boundary, io.ErrUnexpectedEOF
// for a cut, the size of an oversized prefix).
func splitStream(stream []byte) (bodies [][]byte, end error, tooLarge uint64) {
	for {
		switch {
		case len(stream) == 0:
			return bodies, nil, 0
		case len(stream) < 4:
			return bodies, io.ErrUnexpectedEOF, 0
		}
		size := uint64(binary.LittleEndian.Uint32(stream))
		if size > protocol.MaxFrameBytes {
			return bodies, nil, size
		}
		if uint64(len(stream)-4) < size {
			return bodies, io.ErrUnexpectedEOF, 0
		}
		bodies = append(bodies, stream[4:4+size])
		stream = stream[4+size:]
	}
}

// FuzzFrameReader reads arbitrary byte streams, whole and one byte at a
// time: the reader must return exactly the frames a plain reading of the
// format finds, then end the way the format says (clean close, cut, or an
// oversized prefix refused), and never panic.
func FuzzFrameReader(f *testing.F) {
	f.Add([]byte{})
	f.Add(frameStream(`{"frame":"request","id":1,"request":{"op":"status"}}`))
	f.Add(frameStream("", "x", "{}"))
	f.Add([]byte{5, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add(append(frameStream("a"), 0, 0, 0x80, 0))
	f.Fuzz(func(t *testing.T, stream []byte) {
		wantBodies, wantEnd, wantTooLarge := splitStream(stream)
		for _, r := range []io.Reader{bytes.NewReader(stream), iotest.OneByteReader(bytes.NewReader(stream)), iotest.DataErrReader(bytes.NewReader(stream))} {
			fr := NewFrameReader(r)
			for i := 0; ; i++ {
				body, err := fr.Read()
				if err == nil {
					if i >= len(wantBodies) || !bytes.Equal(body, wantBodies[i]) {
						t.Fatalf("frame %d is %q; the stream holds %d frames", i, body, len(wantBodies))
					}
					continue
				}
				if i != len(wantBodies) {
					t.Fatalf("stopped after %d frames with %v; the stream holds %d", i, err, len(wantBodies))
				}
				var tl *FrameTooLargeError
				switch {
				case wantTooLarge > 0:
					if !errors.As(err, &tl) || tl.Size != wantTooLarge {
						t.Fatalf("an oversized prefix (%d) ended the stream with %v", wantTooLarge, err)
					}
				case wantEnd == nil:
					if !errors.Is(err, ErrClosed) {
						t.Fatalf("a stream ending at a frame boundary ended with %v, want ErrClosed", err)
					}
				default:
					if !errors.Is(err, io.ErrUnexpectedEOF) {
						t.Fatalf("a cut stream ended with %v, want io.ErrUnexpectedEOF", err)
					}
				}
				break
			}
		}
	})
}
