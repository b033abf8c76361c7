package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Rules and sets are read back in their netlink encoding with our own
// dumps rather than through github.com/google/nftables v0.3.0, whose
// readers fall short for this job: rule decoding cannot parse some
// expressions we install (rt, byteorder) and silently drops expressions it
// does not know, and set and element listings read a single netlink
// receive, truncating large sets (about 360 ranges) without an error.

// attrTypeMask strips the nested and byte-order flags from an attribute
// type (NLA_TYPE_MASK in linux/netlink.h).
const attrTypeMask = 0x3fff

// exprImage is one expression as netlink carries it.
type exprImage struct {
	name string
	data []byte // NFTA_EXPR_DATA payload
}

// ruleImage is one rule as netlink carries it.
type ruleImage struct {
	userdata []byte
	exprs    []exprImage
}

// setImage is one named set and its elements as netlink carries them.
type setImage struct {
	name              string
	flags             uint32
	keyType, keyLen   uint32
	dataType, dataLen uint32
	elems             []elemImage
}

type elemImage struct {
	key   []byte
	flags uint32
	data  []byte
}

// imageOfRule encodes a rule we are about to install the way the kernel
// will report it back.
func imageOfRule(fam nftables.TableFamily, r *nftables.Rule) (ruleImage, error) {
	img := ruleImage{userdata: r.UserData}
	for _, e := range r.Exprs {
		b, err := expr.Marshal(byte(fam), e)
		if err != nil {
			return ruleImage{}, fmt.Errorf("firewall: encoding a %T expression: %w", e, err)
		}
		ei, err := parseExpr(b)
		if err != nil {
			return ruleImage{}, err
		}
		img.exprs = append(img.exprs, ei)
	}
	return img, nil
}

// imageOfSet describes a set we are about to install the way the kernel
// will report it back.
func imageOfSet(s *nftables.Set, elems []nftables.SetElement) setImage {
	img := setImage{name: s.Name, keyType: s.KeyType.GetNFTMagic(), keyLen: s.KeyType.Bytes}
	if s.Interval {
		img.flags |= unix.NFT_SET_INTERVAL
	}
	for _, e := range elems {
		ei := elemImage{key: e.Key, data: e.Val}
		if e.IntervalEnd {
			ei.flags |= unix.NFT_SET_ELEM_INTERVAL_END
		}
		img.elems = append(img.elems, ei)
	}
	return img
}

func parseExpr(b []byte) (exprImage, error) {
	attrs, err := netlink.UnmarshalAttributes(b)
	if err != nil {
		return exprImage{}, fmt.Errorf("firewall: malformed nftables expression: %w", err)
	}
	var e exprImage
	for _, a := range attrs {
		switch a.Type & attrTypeMask {
		case unix.NFTA_EXPR_NAME:
			e.name = cString(a.Data)
		case unix.NFTA_EXPR_DATA:
			e.data = a.Data
		}
	}
	return e, nil
}

func cString(b []byte) string { return strings.TrimRight(string(b), "\x00") }

// dumper reads nf_tables objects over its own netlink socket.
type dumper struct {
	nl *netlink.Conn
}

func (f *Firewall) dumper() (*dumper, error) {
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: f.netnsFD})
	if err != nil {
		return nil, describe("opening a netlink socket to read nftables", err)
	}
	return &dumper{nl: nl}, nil
}

func (d *dumper) Close() error { return d.nl.Close() }

// errGone marks an object that disappeared while we were reading it.
var errGone = errors.New("object vanished during the dump")

// dump runs one dump request for the inet family and returns all its
// messages. A dump that races with a ruleset change is flagged as
// interrupted and may mix old and new objects, so it is read again.
func (d *dumper) dump(msgType uint16, attrs []netlink.Attribute, what string) ([]netlink.Message, error) {
	body, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msgType),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, body...),
	}
	const attempts = 5
	for range attempts {
		msgs, err := d.nl.Execute(req)
		if errors.Is(err, unix.ENOENT) {
			return nil, errGone
		}
		if err != nil {
			return nil, describe("listing "+what, err)
		}
		if !slices.ContainsFunc(msgs, func(m netlink.Message) bool { return m.Header.Flags&netlink.DumpInterrupted != 0 }) {
			return msgs, nil
		}
	}
	return nil, fmt.Errorf("firewall: %s changed during %d consecutive reads; something else is rewriting the ruleset continuously", what, attempts)
}

// rules lists the rules of every chain of table, in chain order, keyed by
// chain name.
func (d *dumper) rules(table string) (map[string][]ruleImage, error) {
	msgs, err := d.dump(unix.NFT_MSG_GETRULE,
		[]netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(table + "\x00")}},
		"the rules of table inet "+table)
	if err != nil {
		return nil, err
	}
	out := map[string][]ruleImage{}
	for _, m := range msgs {
		attrs, err := unmarshalBody(m.Data)
		if err != nil {
			return nil, err
		}
		var chain string
		var img ruleImage
		for _, a := range attrs {
			switch a.Type & attrTypeMask {
			case unix.NFTA_RULE_CHAIN:
				chain = cString(a.Data)
			case unix.NFTA_RULE_USERDATA:
				img.userdata = a.Data
			case unix.NFTA_RULE_EXPRESSIONS:
				list, err := netlink.UnmarshalAttributes(a.Data)
				if err != nil {
					return nil, fmt.Errorf("firewall: malformed nftables expression list: %w", err)
				}
				for _, elem := range list {
					e, err := parseExpr(elem.Data)
					if err != nil {
						return nil, err
					}
					img.exprs = append(img.exprs, e)
				}
			}
		}
		out[chain] = append(out[chain], img)
	}
	return out, nil
}

// sets lists the named sets of table with their elements.
func (d *dumper) sets(table string) ([]setImage, error) {
	msgs, err := d.dump(unix.NFT_MSG_GETSET,
		[]netlink.Attribute{{Type: unix.NFTA_SET_TABLE, Data: []byte(table + "\x00")}},
		"the sets of table inet "+table)
	if err != nil {
		return nil, err
	}
	var out []setImage
	for _, m := range msgs {
		attrs, err := unmarshalBody(m.Data)
		if err != nil {
			return nil, err
		}
		var s setImage
		for _, a := range attrs {
			switch a.Type & attrTypeMask {
			case unix.NFTA_SET_NAME:
				s.name = cString(a.Data)
			case unix.NFTA_SET_FLAGS:
				s.flags = be32(a.Data)
			case unix.NFTA_SET_KEY_TYPE:
				s.keyType = be32(a.Data)
			case unix.NFTA_SET_KEY_LEN:
				s.keyLen = be32(a.Data)
			case unix.NFTA_SET_DATA_TYPE:
				s.dataType = be32(a.Data)
			case unix.NFTA_SET_DATA_LEN:
				s.dataLen = be32(a.Data)
			}
		}
		if s.flags&unix.NFT_SET_ANONYMOUS != 0 {
			continue // part of a rule, rendered with it
		}
		s.elems, err = d.elements(table, s.name)
		if errors.Is(err, errGone) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func (d *dumper) elements(table, set string) ([]elemImage, error) {
	msgs, err := d.dump(unix.NFT_MSG_GETSETELEM, []netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(table + "\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(set + "\x00")},
	}, fmt.Sprintf("the elements of set %s in table inet %s", set, table))
	if err != nil {
		return nil, err
	}
	var out []elemImage
	for _, m := range msgs {
		attrs, err := unmarshalBody(m.Data)
		if err != nil {
			return nil, err
		}
		for _, a := range attrs {
			if a.Type&attrTypeMask != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				continue
			}
			list, err := netlink.UnmarshalAttributes(a.Data)
			if err != nil {
				return nil, fmt.Errorf("firewall: malformed set element list: %w", err)
			}
			for _, item := range list {
				fields, err := netlink.UnmarshalAttributes(item.Data)
				if err != nil {
					return nil, fmt.Errorf("firewall: malformed set element: %w", err)
				}
				var e elemImage
				for _, f := range fields {
					switch f.Type & attrTypeMask {
					case unix.NFTA_SET_ELEM_KEY:
						e.key = dataValue(f.Data)
					case unix.NFTA_SET_ELEM_DATA:
						e.data = dataValue(f.Data)
					case unix.NFTA_SET_ELEM_FLAGS:
						e.flags = be32(f.Data)
					}
				}
				out = append(out, e)
			}
		}
	}
	return out, nil
}

// unmarshalBody skips the nfgenmsg header of an nf_tables message.
func unmarshalBody(data []byte) ([]netlink.Attribute, error) {
	if len(data) < 4 {
		return nil, errors.New("firewall: short nf_tables message")
	}
	attrs, err := netlink.UnmarshalAttributes(data[4:])
	if err != nil {
		return nil, fmt.Errorf("firewall: malformed nf_tables message: %w", err)
	}
	return attrs, nil
}

// dataValue unwraps struct nft_data's NFTA_DATA_VALUE.
func dataValue(b []byte) []byte {
	attrs, err := netlink.UnmarshalAttributes(b)
	if err != nil {
		return b
	}
	for _, a := range attrs {
		if a.Type&attrTypeMask == unix.NFTA_DATA_VALUE {
			return a.Data
		}
	}
	return b
}

func be32(b []byte) uint32 {
	if len(b) < 4 {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

// comment is the rule's comment, as `nft list` shows it.
func (r ruleImage) comment() string {
	c, _ := userdata.GetString(r.userdata, userdata.TypeComment)
	return c
}

// counter returns the packets and bytes of the rule's first counter.
func (r ruleImage) counter() (packets, bytes uint64) {
	for _, e := range r.exprs {
		if e.name != "counter" {
			continue
		}
		var c expr.Counter
		if expr.Unmarshal(byte(nftables.TableFamilyINet), e.data, &c) == nil {
			return c.Packets, c.Bytes
		}
	}
	return 0, 0
}

// canonical renders an expression so that our encoding and the kernel's
// report of the same expression compare equal: attribute types without
// flag bits, sorted, absent and all-zero attributes treated alike (the
// kernel dumps some zero defaults we do not send, such as lookup flags),
// and nothing that changes without anyone editing the rule (counter
// values) or that only lives inside one batch (lookup set IDs).
func (e exprImage) canonical() string {
	if e.name == "counter" {
		return "counter"
	}
	return e.name + "{" + canonicalAttrs(e.name, e.data, 0) + "}"
}

// nestedAttrs lists, per expression, the attributes whose payload is
// itself attributes (struct nft_data): cmp data, bitwise mask/xor,
// immediate data, range bounds.
var nestedAttrs = map[string][]uint16{
	"cmp":       {unix.NFTA_CMP_DATA},
	"bitwise":   {unix.NFTA_BITWISE_MASK, unix.NFTA_BITWISE_XOR},
	"immediate": {unix.NFTA_IMMEDIATE_DATA},
	"range":     {unix.NFTA_RANGE_FROM_DATA, unix.NFTA_RANGE_TO_DATA},
}

func canonicalAttrs(name string, b []byte, depth int) string {
	attrs, err := netlink.UnmarshalAttributes(b)
	if err != nil {
		return fmt.Sprintf("raw=%x", b)
	}
	var parts []string
	for _, a := range attrs {
		typ := a.Type & attrTypeMask
		if depth == 0 && name == "lookup" && typ == unix.NFTA_LOOKUP_SET_ID {
			continue
		}
		if !slices.ContainsFunc(a.Data, func(c byte) bool { return c != 0 }) {
			continue
		}
		nested := a.Type&unix.NLA_F_NESTED != 0 ||
			depth == 0 && slices.Contains(nestedAttrs[name], typ) ||
			depth > 0 && typ == unix.NFTA_DATA_VERDICT
		if nested {
			parts = append(parts, fmt.Sprintf("%d{%s}", typ, canonicalAttrs(name, a.Data, depth+1)))
		} else {
			parts = append(parts, fmt.Sprintf("%d=%x", typ, a.Data))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}
