// Package ipc carries protocol frames over a stream: the length-prefixed
// framing, the listener (Unix socket or named pipe) with its caller checks,
// and the server's per-connection loop.
package ipc

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// ErrClosed is a clean end of stream at a frame boundary: the peer hung up
// between frames, which is how every connection normally ends.
var ErrClosed = errors.New("connection closed by peer")

// FrameTooLargeError is a length prefix above protocol.MaxFrameBytes. It is
// detected from the prefix alone, before anything is allocated.
type FrameTooLargeError struct{ Size uint64 }

func (e *FrameTooLargeError) Error() string {
	return fmt.Sprintf("frame too large: %d bytes (max %d)", e.Size, protocol.MaxFrameBytes)
}

// FrameReader reads frames from a stream, reusing one buffer: the slice a
// Read returns is valid until the next Read.
type FrameReader struct {
	r   *bufio.Reader
	buf []byte
	max int
	hdr [4]byte // a field, not a local: a local escapes through io.ReadFull
}

// NewFrameReader reads frames of at most protocol.MaxFrameBytes from r.
func NewFrameReader(r io.Reader) *FrameReader {
	return &FrameReader{r: bufio.NewReaderSize(r, 64<<10), max: protocol.MaxFrameBytes}
}

// Read returns the next frame body. EOF before the first byte of the length
// prefix is ErrClosed; EOF anywhere later is io.ErrUnexpectedEOF.
func (fr *FrameReader) Read() ([]byte, error) {
	hdr := fr.hdr[:]
	n, err := io.ReadFull(fr.r, hdr)
	if err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return nil, ErrClosed
		}
		if errors.Is(err, io.EOF) {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	size := binary.LittleEndian.Uint32(hdr)
	if uint64(size) > uint64(fr.max) {
		return nil, &FrameTooLargeError{Size: uint64(size)}
	}
	body, err := fr.readBody(int(size))
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	// Do not keep a multi-megabyte buffer alive for a connection that sent
	// one big frame and then only small ones.
	if cap(fr.buf) > 1<<20 && size < 64<<10 {
		fr.buf = nil
	}
	return body, nil
}

// readBody reads a body of size bytes into fr.buf. A body larger than the
// buffer grows it as its bytes arrive rather than all at once: otherwise a
// caller that sends only a length prefix of 8 MiB on each of many
// connections pins 8 MiB of memory per connection for nothing.
func (fr *FrameReader) readBody(size int) ([]byte, error) {
	if cap(fr.buf) >= size || size <= 64<<10 {
		if cap(fr.buf) < size {
			fr.buf = make([]byte, size)
		}
		body := fr.buf[:size]
		_, err := io.ReadFull(fr.r, body)
		return body, err
	}
	body := fr.buf[:0]
	for len(body) < size {
		if len(body) == cap(body) {
			grown := make([]byte, len(body), min(size, max(2*cap(body), 64<<10)))
			copy(grown, body)
			body = grown
			fr.buf = grown
		}
		n, err := fr.r.Read(body[len(body):cap(body)])
		body = body[:len(body)+n]
		if err != nil && len(body) < size {
			return nil, err
		}
	}
	return body, nil
}

// AppendFrame appends the length prefix and body of f to dst.
func AppendFrame(dst []byte, f protocol.Frame) ([]byte, error) {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst, err := protocol.AppendFrame(dst, f)
	if err != nil {
		return nil, err
	}
	size := len(dst) - start - 4
	if size > protocol.MaxFrameBytes {
		return nil, &FrameTooLargeError{Size: uint64(size)}
	}
	binary.LittleEndian.PutUint32(dst[start:], uint32(size))
	return dst, nil
}

// WriteFrame encodes f and writes it with one Write call, so frames from
// different goroutines never interleave as long as each Write is atomic
// with respect to the others (callers serialise writers).
func WriteFrame(w io.Writer, f protocol.Frame) error {
	buf, err := AppendFrame(make([]byte, 0, 256), f)
	if err != nil {
		return err
	}
	_, err = w.Write(buf)
	return err
}
