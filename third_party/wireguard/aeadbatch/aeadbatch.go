// Package aeadbatch seals and opens batches of ChaCha20-Poly1305 (RFC 8439)
// messages under one key, several messages per vector pass.
//
// x/crypto seals one message at a time. At WireGuard's packet size its
// per-message cost is a large share of the work and its Poly1305 is scalar.
// A wireguard-go batch seals up to 128 packets under one key, so here every
// lane of a vector holds a different message: ChaCha20 fills all 16 lanes of
// every pass with blocks of whichever messages need them, and Poly1305 runs
// one message per lane (eight at once), which needs no powers of the key.
//
// On CPUs without AVX-512 (and IFMA), and for batches too small to fill the
// Poly1305 lanes, it seals and opens with x/crypto, message by message.
package aeadbatch

import (
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"errors"

	"golang.org/x/crypto/chacha20poly1305"
)

const (
	// KeySize, NonceSize and TagSize are RFC 8439's.
	KeySize   = chacha20poly1305.KeySize
	NonceSize = chacha20poly1305.NonceSize
	TagSize   = chacha20poly1305.Overhead

	// lanes is how many messages one Poly1305 pass carries, and so the
	// size of the groups a batch is cut into.
	lanes = 16
	// minVectorGroup is the smallest group of messages sealed with the
	// vector kernels; smaller ones cost less one by one: a Poly1305 lane
	// takes as long alone as with others beside it.
	minVectorGroup = 3
	// maxMessageSize is what a 32-bit block counter reaches from 1, the
	// bound RFC 8439 sets; longer messages go to x/crypto, which refuses them.
	maxMessageSize uint64 = (1<<32 - 1) * 64
)

// ErrOpen is what Open reports for a message whose tag does not match.
var ErrOpen = errors.New("aeadbatch: message authentication failed")

// kernels are the two vector steps; a Batch uses the AVX-512 ones where the
// CPU has them. Tests swap in the generic ones to check the batch logic on
// any machine.
type kernels struct {
	chacha func(key *[8]uint32, ctr *[16]uint32, nonce *[3][16]uint32, src, dst *[16]*byte)
	poly   func(p *poly1305x16, msgs *[lanes]*byte, counts *[lanes]uint64)
	// poly8 is the 8-lane Poly1305, for groups that fit: the 16-lane
	// one takes nearly twice as long whether or not its lanes are used.
	poly8 func(p *poly1305x8, msgs *[8]*byte, counts *[8]uint64)
}

var (
	vectorKernels  = kernels{chacha20x16XORAVX512, poly1305x16BlocksAVX512, poly1305x8BlocksAVX512}
	genericKernels = kernels{chacha20x16XORGeneric, poly1305x16BlocksGeneric, poly1305x8BlocksGeneric}
	// hasVector says whether the vector kernels run on this CPU.
	hasVector = hasChaChaAVX512 && hasPolyAVX512
)

// Key is one ChaCha20-Poly1305 key. It is also x/crypto's cipher.AEAD for
// that key, which seals and opens one message at a time, and which the
// batch falls back on.
type Key struct {
	cipher.AEAD
	words [8]uint32
}

// NewKey returns the key for the 32 bytes in key.
func NewKey(key []byte) (*Key, error) {
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		return nil, err
	}
	k := &Key{AEAD: aead}
	for i := range k.words {
		k.words[i] = binary.LittleEndian.Uint32(key[4*i:])
	}
	return k, nil
}

// Message is one message of a batch, sealed or opened in place.
type Message struct {
	Nonce [NonceSize]byte
	// Data is the plaintext for Seal, which replaces it with the
	// ciphertext, and the ciphertext (without tag) for Open, which replaces
	// it with the plaintext if the tag matches. If it does not, Open never
	// decrypts Data: it leaves it as it was, or clears it where x/crypto
	// opens it in place (a group too small for the vector kernels, with Tag
	// right behind Data); either way the message is to be dropped.
	Data []byte
	// Tag is written by Seal and checked by Open; it must be TagSize long.
	Tag []byte
	// Err is set by Open: nil, or ErrOpen.
	Err error
}

// Batch holds the scratch space of a sealing or opening goroutine; it is
// not safe for concurrent use. The zero value is ready.
type Batch struct {
	k kernels
	// forceScalar makes every group take the one-by-one path (tests).
	forceScalar bool

	// The ChaCha20 pass being filled: one block per lane, read from src
	// and written to dst (in place for whole blocks of a message).
	ctr      [16]uint32
	nonce    [3][16]uint32
	src, dst [16]*byte
	filled   int

	zero     [64]byte        // the source of blocks wanted as keystream
	sink     [64]byte        // where lanes nobody wants write
	polyKeys [lanes][64]byte // block 0 of each message
	partial  [lanes][64]byte // the last block of a message, when not whole
	poly     poly1305x16
	msgs     [lanes]*byte
	counts   [lanes]uint64
	tails    [lanes][32]byte // Poly1305's padded last block and lengths
	tag      [TagSize]byte
	ok       [lanes]bool
	nonces   [lanes][3]uint32 // each message's nonce as ChaCha20 state words
	scratch  []byte           // x/crypto's output where it cannot work in place
}

// Seal encrypts and authenticates every message of msgs under key, in
// place, with no additional data.
func (b *Batch) Seal(key *Key, msgs []Message) {
	b.run(key, msgs, true)
}

// Open authenticates and decrypts every message of msgs under key, in
// place, with no additional data, and sets each message's Err.
func (b *Batch) Open(key *Key, msgs []Message) {
	b.run(key, msgs, false)
}

func (b *Batch) run(key *Key, msgs []Message, seal bool) {
	if b.k.chacha == nil {
		if !hasVector {
			b.forceScalar = true
		}
		b.k = vectorKernels
	}
	for len(msgs) > 0 {
		n := min(len(msgs), lanes)
		group := msgs[:n]
		msgs = msgs[n:]
		switch {
		case b.forceScalar || n < minVectorGroup || !fitsCounter(group):
			for i := range group {
				b.oneByOne(key.AEAD, &group[i], seal)
			}
		case seal:
			b.seal(key, group)
		default:
			b.open(key, group)
		}
	}
}

func fitsCounter(group []Message) bool {
	for i := range group {
		if uint64(len(group[i].Data)) > maxMessageSize {
			return false
		}
	}
	return true
}

// oneByOne seals or opens m with x/crypto. Where Tag sits right behind
// Data, as wireguard-go lays packets out, it works in place, as upstream
// does: no copy and no allocation on CPUs without the vector kernels.
func (b *Batch) oneByOne(aead cipher.AEAD, m *Message, seal bool) {
	n := len(m.Data)
	inPlace := tagFollows(m)
	if seal {
		if inPlace {
			aead.Seal(m.Data[:0], m.Nonce[:], m.Data, nil)
			return
		}
		b.scratch = aead.Seal(b.scratch[:0], m.Nonce[:], m.Data, nil)
		copy(m.Data, b.scratch)
		copy(m.Tag, b.scratch[n:])
		return
	}
	m.Err = nil
	if inPlace {
		// x/crypto clears Data if the tag does not match.
		if _, err := aead.Open(m.Data[:0], m.Nonce[:], m.Data[:n+TagSize], nil); err != nil {
			m.Err = ErrOpen
		}
		return
	}
	b.scratch = append(append(b.scratch[:0], m.Data...), m.Tag...)
	pt, err := aead.Open(b.scratch[:0], m.Nonce[:], b.scratch, nil)
	if err != nil {
		m.Err = ErrOpen
		return
	}
	copy(m.Data, pt)
}

// tagFollows reports whether m.Tag is the TagSize bytes right behind
// m.Data in one buffer.
func tagFollows(m *Message) bool {
	n := len(m.Data)
	return len(m.Tag) == TagSize && cap(m.Data)-n >= TagSize && &m.Data[:n+1][n] == &m.Tag[0]
}

// seal encrypts a group in passes that mix every message's blocks (its
// one-time Poly1305 key and its data) and then authenticates it, one
// message per Poly1305 lane.
func (b *Batch) seal(key *Key, group []Message) {
	b.readNonces(group)
	for i := range group {
		b.polyKeyBlock(key, group, i)
		b.dataBlocks(key, group, i)
	}
	b.flush(key)
	for i := range group {
		b.finishPartial(group, i)
		b.poly.setKey(i, (*[32]byte)(b.polyKeys[i][:32]))
	}
	b.authenticate(group)
	for i := range group {
		b.poly.sum(i, &b.tag)
		copy(group[i].Tag, b.tag[:])
	}
}

// open authenticates a group first and decrypts only what proved
// authentic: one pass for the one-time keys, then the data of the
// messages whose tags matched.
func (b *Batch) open(key *Key, group []Message) {
	b.readNonces(group)
	for i := range group {
		b.polyKeyBlock(key, group, i)
	}
	b.flush(key)
	for i := range group {
		b.poly.setKey(i, (*[32]byte)(b.polyKeys[i][:32]))
	}
	b.authenticate(group)
	for i := range group {
		b.poly.sum(i, &b.tag)
		b.ok[i] = subtle.ConstantTimeCompare(b.tag[:], group[i].Tag) == 1
		group[i].Err = nil
		if !b.ok[i] {
			group[i].Err = ErrOpen
			continue
		}
		b.dataBlocks(key, group, i)
	}
	b.flush(key)
	for i := range group {
		if b.ok[i] {
			b.finishPartial(group, i)
		}
	}
}

func (b *Batch) readNonces(group []Message) {
	for i := range group {
		n := &group[i].Nonce
		b.nonces[i] = [3]uint32{
			binary.LittleEndian.Uint32(n[0:]),
			binary.LittleEndian.Uint32(n[4:]),
			binary.LittleEndian.Uint32(n[8:]),
		}
	}
}

// polyKeyBlock queues block 0 of message i, whose keystream is its
// one-time Poly1305 key.
func (b *Batch) polyKeyBlock(key *Key, group []Message, i int) {
	b.queue(key, &b.nonces[i], 0, &b.zero[0], &b.polyKeys[i][0])
}

// dataBlocks queues the blocks that encrypt or decrypt message i's data:
// whole ones in place, the last through b.partial[i] when it is not whole
// (finishPartial copies it back).
//
// The whole blocks go into the pass a run of lanes at a time rather than
// through queue: a 1,424-byte packet has 22 of them, and with a call per
// block filling the lanes took a quarter as long as the ChaCha20 kernel
// itself; this loop takes half of that.
func (b *Batch) dataBlocks(key *Key, group []Message, i int) {
	d := group[i].Data
	whole := len(d) / 64
	n0, n1, n2 := b.nonces[i][0], b.nonces[i][1], b.nonces[i][2]
	for blk := 0; blk < whole; {
		l := b.filled
		run := min(whole-blk, 16-l)
		for j := l; j < l+run; j++ {
			b.ctr[j] = uint32(blk + 1)
			b.nonce[0][j], b.nonce[1][j], b.nonce[2][j] = n0, n1, n2
			p := &d[64*blk]
			b.src[j], b.dst[j] = p, p
			blk++
		}
		b.filled += run
		if b.filled == 16 {
			b.flush(key)
		}
	}
	if rest := d[64*whole:]; len(rest) > 0 {
		p := &b.partial[i]
		copy(p[:], rest)
		b.queue(key, &b.nonces[i], uint32(whole+1), &p[0], &p[0])
	}
}

func (b *Batch) finishPartial(group []Message, i int) {
	d := group[i].Data
	copy(d[len(d)&^63:], b.partial[i][:])
}

// queue adds one block to the pass being filled and runs the pass when it
// is full.
func (b *Batch) queue(key *Key, nonce *[3]uint32, ctr uint32, src, dst *byte) {
	l := b.filled & 15
	b.ctr[l] = ctr
	b.nonce[0][l], b.nonce[1][l], b.nonce[2][l] = nonce[0], nonce[1], nonce[2]
	b.src[l], b.dst[l] = src, dst
	b.filled++
	if b.filled == 16 {
		b.flush(key)
	}
}

// flush runs the pass being filled, if any; its empty lanes write to the
// sink.
func (b *Batch) flush(key *Key) {
	if b.filled == 0 {
		return
	}
	for l := b.filled; l < 16; l++ {
		b.src[l], b.dst[l] = &b.zero[0], &b.sink[0]
	}
	b.k.chacha(&key.words, &b.ctr, &b.nonce, &b.src, &b.dst)
	b.filled = 0
	b.src, b.dst = [16]*byte{}, [16]*byte{} // keep no buffer alive
}

// authenticate runs each message's Poly1305 over its ciphertext, padded
// to 16 bytes, and the lengths block (RFC 8439 section 2.8, no additional
// data): the whole blocks in place, then the rest from a padded copy.
func (b *Batch) authenticate(group []Message) {
	for i := range group {
		d := group[i].Data
		b.counts[i] = uint64(len(d) / 16)
		b.msgs[i] = nil
		if b.counts[i] > 0 {
			b.msgs[i] = &d[0]
		}
	}
	for i := len(group); i < lanes; i++ {
		b.msgs[i], b.counts[i] = nil, 0
	}
	b.polyBlocks(len(group))
	for i := range group {
		d := group[i].Data
		t := &b.tails[i]
		*t = [32]byte{}
		rest := d[len(d)&^15:]
		n := 0
		if len(rest) > 0 {
			copy(t[:16], rest)
			n = 16
		}
		binary.LittleEndian.PutUint64(t[n+8:], uint64(len(d)))
		b.msgs[i] = &t[0]
		b.counts[i] = uint64(n/16 + 1)
	}
	b.polyBlocks(len(group))
	b.msgs = [lanes]*byte{}
}

// polyBlocks runs the Poly1305 kernel that fits a group of n messages.
func (b *Batch) polyBlocks(n int) {
	if n <= 8 {
		b.k.poly8(&b.poly[0], (*[8]*byte)(b.msgs[:8]), (*[8]uint64)(b.counts[:8]))
		return
	}
	b.k.poly(&b.poly, &b.msgs, &b.counts)
}
