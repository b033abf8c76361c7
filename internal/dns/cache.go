package dns

import (
	"container/list"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/miekg/dns"
)

const (
	// Caps on how long an upstream answer is kept, whatever its TTLs say
	// (the same limits CoreDNS's cache uses by default).
	maxPositiveTTL = 3600
	maxNegativeTTL = 1800
)

// entry is an upstream answer kept in wire form: serving it is a copy plus
// a few patched bytes (ID, question case, aged TTLs) instead of a message
// copy and a fresh pack.
type entry struct {
	key     string
	wire    []byte   // packed answer, ID 0
	ttls    []uint16 // offsets of the TTL fields to age (OPT excluded)
	qlen    int      // wire length of the question name at offset 12
	stored  time.Time
	expires time.Time
	cache   bool // the answer may be cached (TTL > 0, not truncated, …)
}

// newEntry packs an upstream answer and finds what must be patched per client.
func newEntry(key string, m *dns.Msg, now time.Time) (*entry, error) {
	m.Id = 0
	m.Compress = true
	wire, err := m.Pack()
	if err != nil {
		return nil, fmt.Errorf("cannot re-encode the answer: %w", err)
	}
	// Records an upstream sent with empty or odd RDATA can unpack fine yet
	// pack into bytes that no longer parse; never hand those to a client.
	if err := new(dns.Msg).Unpack(wire); err != nil {
		return nil, fmt.Errorf("the answer does not survive re-encoding: %w", err)
	}
	ttls, qlen, err := scanTTLs(wire)
	if err != nil {
		return nil, err
	}
	e := &entry{key: key, wire: wire, ttls: ttls, qlen: qlen, stored: now}
	if ttl, ok := cacheTTL(m); ok {
		e.cache = true
		e.expires = now.Add(time.Duration(ttl) * time.Second)
	}
	return e, nil
}

// cacheTTL is how long an answer may be cached: the smallest TTL of the
// answer (and authority) records, or for negative answers the SOA minimum
// bounded by the SOA's own TTL (RFC 2308 §5).
func cacheTTL(m *dns.Msg) (uint32, bool) {
	if m.Truncated {
		return 0, false
	}
	switch {
	case m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0:
		ttl := uint32(maxPositiveTTL)
		for _, rrs := range [][]dns.RR{m.Answer, m.Ns} {
			for _, rr := range rrs {
				ttl = min(ttl, rr.Header().Ttl)
			}
		}
		return ttl, ttl > 0
	case m.Rcode == dns.RcodeSuccess || m.Rcode == dns.RcodeNameError:
		for _, rr := range m.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				ttl := min(soa.Hdr.Ttl, soa.Minttl, maxNegativeTTL)
				return ttl, ttl > 0
			}
		}
	}
	return 0, false
}

var errBadWire = errors.New("dns: malformed message while indexing TTLs")

// scanTTLs walks a packed message and returns the offsets of every TTL
// field except the OPT pseudo-record's (whose "TTL" carries flags), and
// the length of the first question name.
func scanTTLs(wire []byte) ([]uint16, int, error) {
	if len(wire) < 12 {
		return nil, 0, errBadWire
	}
	qd := int(binary.BigEndian.Uint16(wire[4:]))
	rrs := int(binary.BigEndian.Uint16(wire[6:])) + int(binary.BigEndian.Uint16(wire[8:])) + int(binary.BigEndian.Uint16(wire[10:]))
	off, qlen := 12, 0
	for i := range qd {
		end, err := skipName(wire, off)
		if err != nil {
			return nil, 0, err
		}
		if i == 0 {
			qlen = end - off
		}
		off = end + 4
	}
	ttls := make([]uint16, 0, rrs)
	for range rrs {
		end, err := skipName(wire, off)
		if err != nil || end+10 > len(wire) {
			return nil, 0, errBadWire
		}
		if binary.BigEndian.Uint16(wire[end:]) != dns.TypeOPT {
			ttls = append(ttls, uint16(end+4))
		}
		off = end + 10 + int(binary.BigEndian.Uint16(wire[end+8:]))
	}
	if off > len(wire) {
		return nil, 0, errBadWire
	}
	return ttls, qlen, nil
}

// skipName returns the offset just past the (possibly compressed) name at off.
func skipName(wire []byte, off int) (int, error) {
	for off < len(wire) {
		l := int(wire[off])
		switch {
		case l == 0:
			return off + 1, nil
		case l&0xC0 == 0xC0:
			return off + 2, nil
		case l&0xC0 != 0:
			return 0, errBadWire
		}
		off += 1 + l
	}
	return 0, errBadWire
}

// cache is a bounded LRU of upstream answers keyed by question and the
// EDNS flags that change an answer.
type cache struct {
	mu    sync.Mutex
	max   int
	items map[string]*list.Element
	lru   list.List // front = most recently used
}

func newCache(size int) *cache {
	return &cache{max: size, items: make(map[string]*list.Element, min(size, 1024))}
}

func (c *cache) get(key []byte, now time.Time) *entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[string(key)]
	if !ok {
		return nil
	}
	e := el.Value.(*entry)
	if !now.Before(e.expires) {
		c.lru.Remove(el)
		delete(c.items, e.key)
		return nil
	}
	c.lru.MoveToFront(el)
	return e
}

func (c *cache) put(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[e.key]; ok {
		el.Value = e
		c.lru.MoveToFront(el)
		return
	}
	c.items[e.key] = c.lru.PushFront(e)
	for c.lru.Len() > c.max {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.items, old.Value.(*entry).key)
	}
}

func (c *cache) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.items)
	c.lru.Init()
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
