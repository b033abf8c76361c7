package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
)

// bbolt trusts its file: a database cut short (a failed copy, a full disk during a restore)
// makes bbolt.Open panic on a garbage freelist page or die of SIGBUS when it touches a page
// past the end of the mapping. Neither can be turned into an error afterwards, so before
// handing a file to bbolt we read its two meta pages ourselves and check that the file is
// as long as the newest valid meta page says. The layout below is bbolt's file format
// version 2, unchanged since boltdb 1.0.
const (
	boltMagic         = 0xED0CDAED
	boltFormat        = 2
	pageHeaderSize    = 16 // id u64, flags u16, count u16, overflow u32
	metaSize          = 64 // magic, version, page_size, flags u32; root, sequence, freelist, pgid, txid, checksum u64
	metaChecksumStart = 56
	minPageSize       = 1024
	maxPageSize       = 1024 << 14
)

type boltMeta struct {
	pageSize uint32
	pgid     uint64
	txid     uint64
}

// errNotBolt, errBoltFormat and errTruncated classify a file that must be refused.
var (
	errNotBolt    = errors.New("it is not a bbolt database (no valid meta page)")
	errBoltFormat = errors.New("it is a bbolt database of a file format this binary cannot read")
)

// checkBoltHeader returns nil when f looks like a complete bbolt file: at least one valid
// meta page, and at least as many bytes as the newest valid meta page's high-water mark.
func checkBoltHeader(f *os.File, size int64) error {
	if size == 0 {
		return errors.New("it is empty (0 bytes)")
	}
	var metas []boltMeta
	sawFormat := false
	if m, ok, wrongFormat := readMeta(f, 0); ok {
		metas = append(metas, m)
	} else if wrongFormat {
		sawFormat = true
	}
	// The second meta page sits one page in. Its page size is known if the first meta page
	// is valid; otherwise try every size bbolt can write, as bbolt itself does.
	offsets := []int64{}
	if len(metas) == 1 {
		offsets = append(offsets, int64(metas[0].pageSize))
	} else {
		for ps := int64(minPageSize); ps <= maxPageSize; ps <<= 1 {
			offsets = append(offsets, ps)
		}
	}
	for _, off := range offsets {
		if off+pageHeaderSize+metaSize > size {
			break
		}
		if m, ok, wrongFormat := readMeta(f, off); ok && int64(m.pageSize) == off {
			metas = append(metas, m)
			break
		} else if wrongFormat {
			sawFormat = true
		}
	}
	if len(metas) == 0 {
		if sawFormat {
			return errBoltFormat
		}
		return errNotBolt
	}
	newest := metas[0]
	for _, m := range metas[1:] {
		if m.txid > newest.txid {
			newest = m
		}
	}
	if need := int64(newest.pgid) * int64(newest.pageSize); size < need {
		return fmt.Errorf("it is truncated: it has %d bytes but its header says the data runs to byte %d", size, need)
	}
	return nil
}

// readMeta decodes the meta page at off. ok reports a valid meta page; wrongFormat reports
// a page with bbolt's magic number but another file-format version.
func readMeta(f *os.File, off int64) (m boltMeta, ok, wrongFormat bool) {
	var buf [pageHeaderSize + metaSize]byte
	if _, err := f.ReadAt(buf[:], off); err != nil {
		return m, false, false
	}
	meta := buf[pageHeaderSize:]
	// bbolt writes its structs in native byte order.
	ne := binary.NativeEndian
	if ne.Uint32(meta[0:]) != boltMagic {
		return m, false, false
	}
	if ne.Uint32(meta[4:]) != boltFormat {
		return m, false, true
	}
	h := fnv.New64a()
	h.Write(meta[:metaChecksumStart])
	if h.Sum64() != ne.Uint64(meta[metaChecksumStart:]) {
		return m, false, false
	}
	m = boltMeta{
		pageSize: ne.Uint32(meta[8:]),
		pgid:     ne.Uint64(meta[40:]),
		txid:     ne.Uint64(meta[48:]),
	}
	if m.pageSize < minPageSize || m.pageSize > maxPageSize || m.pageSize&(m.pageSize-1) != 0 {
		return boltMeta{}, false, false
	}
	return m, true, false
}
