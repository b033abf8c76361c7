// Package protocol is the wire contract between the ZLayer main daemon and
// zlayer-overlayd: the frame, request, response and event types of
// PROTOCOL_VERSION 1 and their JSON codec.
//
// The JSON shapes are the ones the reference implementation (ZLayer's Rust
// crate, serde with internally tagged enums) reads and writes, byte for byte:
// tags "frame", "op", "result", "event", "platform" and "scope" sit beside the
// variant's fields, optional fields are omitted rather than null, null is
// accepted for an optional field on input, unknown fields are ignored, and
// add_peer carries the peer's fields at the request level. A frame encoded
// here has its keys in the order the reference emits them, so golden frames
// captured from it round-trip exactly (see testdata/).
//
// Extensions (ops, optional fields and result kinds the reference does not
// know) are additive only and listed in docs/protocol.md.
package protocol

// Version is the wire-protocol version this package speaks. The reference
// defines it but never sends it; we report it in the hello extension.
const Version = 1

// MaxFrameBytes is the largest JSON body a frame may carry (8 MiB), the same
// limit the reference enforces on both sides.
const MaxFrameBytes = 8 * 1024 * 1024
