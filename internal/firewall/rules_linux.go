package firewall

import (
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

// Rules are compared in their netlink encoding rather than through the
// library's decoded expressions: github.com/google/nftables v0.3.0 cannot
// decode some expressions we install (rt, byteorder) and silently drops
// expressions it does not know, so a decoded rule may look identical to
// ours while the kernel runs something else.

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

// imageOf encodes a rule we are about to install the way the kernel will
// report it back.
func imageOf(fam nftables.TableFamily, r *nftables.Rule) (ruleImage, error) {
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

func parseExpr(b []byte) (exprImage, error) {
	attrs, err := netlink.UnmarshalAttributes(b)
	if err != nil {
		return exprImage{}, fmt.Errorf("firewall: malformed nftables expression: %w", err)
	}
	var e exprImage
	for _, a := range attrs {
		switch a.Type & attrTypeMask {
		case unix.NFTA_EXPR_NAME:
			e.name = strings.TrimRight(string(a.Data), "\x00")
		case unix.NFTA_EXPR_DATA:
			e.data = a.Data
		}
	}
	return e, nil
}

// dumpRules lists the rules of every chain of table (inet family), in
// chain order, keyed by chain name.
func (f *Firewall) dumpRules(table string) (map[string][]ruleImage, error) {
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: f.netnsFD})
	if err != nil {
		return nil, describe("opening a netlink socket to list rules", err)
	}
	defer nl.Close()
	filter, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(table + "\x00")}})
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, filter...),
	}
	// A dump that races with a ruleset change is flagged as interrupted
	// and may mix old and new rules; read it again.
	const attempts = 5
	for range attempts {
		msgs, err := nl.Execute(req)
		if errors.Is(err, unix.ENOENT) {
			return map[string][]ruleImage{}, nil // table vanished meanwhile
		}
		if err != nil {
			return nil, describe("listing the rules of table inet "+table, err)
		}
		if slices.ContainsFunc(msgs, func(m netlink.Message) bool { return m.Header.Flags&netlink.DumpInterrupted != 0 }) {
			continue
		}
		out := map[string][]ruleImage{}
		for _, m := range msgs {
			chain, img, err := parseRuleMsg(m.Data)
			if err != nil {
				return nil, err
			}
			out[chain] = append(out[chain], img)
		}
		return out, nil
	}
	return nil, fmt.Errorf("firewall: the rules of table inet %s changed during %d consecutive reads; something else is rewriting it continuously", table, attempts)
}

func parseRuleMsg(data []byte) (chain string, img ruleImage, err error) {
	if len(data) < 4 {
		return "", ruleImage{}, errors.New("firewall: short nftables rule message")
	}
	attrs, err := netlink.UnmarshalAttributes(data[4:])
	if err != nil {
		return "", ruleImage{}, fmt.Errorf("firewall: malformed nftables rule message: %w", err)
	}
	for _, a := range attrs {
		switch a.Type & attrTypeMask {
		case unix.NFTA_RULE_CHAIN:
			chain = strings.TrimRight(string(a.Data), "\x00")
		case unix.NFTA_RULE_USERDATA:
			img.userdata = a.Data
		case unix.NFTA_RULE_EXPRESSIONS:
			list, err := netlink.UnmarshalAttributes(a.Data)
			if err != nil {
				return "", ruleImage{}, fmt.Errorf("firewall: malformed nftables expression list: %w", err)
			}
			for _, elem := range list {
				e, err := parseExpr(elem.Data)
				if err != nil {
					return "", ruleImage{}, err
				}
				img.exprs = append(img.exprs, e)
			}
		}
	}
	return chain, img, nil
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
// immediate data.
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
