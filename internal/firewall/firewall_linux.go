package firewall

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// elementsPerMessage keeps one message's element list well under the
// 64 KiB attribute limit: an IPv6 interval element encodes in about 40
// bytes.
const elementsPerMessage = 1024

// batchBufferBytes is the send buffer forced on Apply's socket. The whole
// batch goes out in one sendmsg, which the kernel refuses with EMSGSIZE when
// it exceeds the buffer; the default (net.core.wmem_default, 208 KiB) fits
// about 2000 services (bridge plus subnet each), 32 MiB well over 30000.
// The buffer only bounds memory; it is not preallocated.
const batchBufferBytes = 32 << 20

// conn opens a netlink connection for one call. A lasting socket saves the
// per-dump socket setup of the library's default mode; it is closed when
// the call returns, so a Firewall holds no resources between calls.
func (f *Firewall) conn() (*nftables.Conn, func(), error) {
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(forceSendBuffer)}
	if f.netnsFD != 0 {
		opts = append(opts, nftables.WithNetNSFd(f.netnsFD))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, nil, describe("opening an nftables netlink socket", err)
	}
	return c, func() { _ = c.CloseLasting() }, nil
}

// forceSendBuffer raises the socket's send buffer past net.core.wmem_max,
// which SO_SNDBUFFORCE allows with CAP_NET_ADMIN (needed for nftables
// anyway). Without the capability the default buffer stays and only very
// large batches fail, with an error that says so.
func forceSendBuffer(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, batchBufferBytes)
	})
	return nil
}

// Apply atomically replaces our table with the content described by spec.
func (f *Firewall) Apply(spec Spec) error {
	d, err := spec.normalize()
	if err != nil {
		return err
	}
	rs, err := build(d)
	if err != nil {
		return err
	}
	c, done, err := f.conn()
	if err != nil {
		return err
	}
	defer done()

	// Adding first makes the delete valid whether or not the table exists;
	// all of it is one transaction, so nobody observes the gap.
	c.AddTable(rs.table)
	c.DelTable(rs.table)
	c.AddTable(rs.table)
	for _, s := range rs.nftSets {
		// A netlink attribute holds at most 64 KiB and the library does
		// not check: an oversized element list wraps its length and the
		// kernel silently keeps a prefix of it (an interval set then ends
		// in an open range). Element lists therefore go in chunks, each
		// its own message within the same batch.
		elems := rs.nftElems[s.Name]
		first := elems[:min(len(elems), elementsPerMessage)]
		if err := c.AddSet(s, first); err != nil {
			return fmt.Errorf("firewall: encoding set %s of table inet %s: %w", s.Name, d.table, err)
		}
		for rest := elems[len(first):]; len(rest) > 0; {
			n := min(len(rest), elementsPerMessage)
			if err := c.SetAddElements(s, rest[:n]); err != nil {
				return fmt.Errorf("firewall: encoding set %s of table inet %s: %w", s.Name, d.table, err)
			}
			rest = rest[n:]
		}
	}
	for _, ch := range rs.chains {
		c.AddChain(ch)
	}
	for _, r := range rs.nftRules {
		c.AddRule(r)
	}
	if err := c.Flush(); err != nil {
		return describe(fmt.Sprintf("replacing table inet %s (the previous table, if any, is unchanged)", d.table), err)
	}
	return nil
}

// Delete removes the named table if it exists.
func (f *Firewall) Delete(table string) error {
	if table == "" {
		table = DefaultTable
	}
	if err := validTableName(table); err != nil {
		return err
	}
	c, done, err := f.conn()
	if err != nil {
		return err
	}
	defer done()
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	// Add-then-delete in one batch: deleting a missing table is not an
	// error, and no race with another deleter can make it one.
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return describe(fmt.Sprintf("deleting table inet %s", table), err)
	}
	return nil
}

// Inspect reports what the named table holds.
func (f *Firewall) Inspect(table string) (State, error) {
	if table == "" {
		table = DefaultTable
	}
	if err := validTableName(table); err != nil {
		return State{}, err
	}
	c, done, err := f.conn()
	if err != nil {
		return State{}, err
	}
	defer done()
	rs, err := f.readTable(c, table)
	if err != nil {
		return State{}, err
	}
	st := State{Table: table, Present: rs.present}
	for _, ch := range sortedChains(rs.chains) {
		cs := ChainState{Name: ch.Name, Type: string(ch.Type)}
		if ch.Hooknum != nil {
			cs.Hook = hookName(*ch.Hooknum)
		}
		if ch.Priority != nil {
			cs.Priority = int32(*ch.Priority)
		}
		if ch.Policy != nil {
			cs.Policy = policyName(*ch.Policy)
		}
		for _, r := range rs.rules[ch.Name] {
			rst := RuleState{Comment: r.comment()}
			rst.Packets, rst.Bytes = r.counter()
			cs.Rules = append(cs.Rules, rst)
		}
		st.Rules += len(cs.Rules)
		st.Chains = append(st.Chains, cs)
	}
	for _, s := range rs.sets {
		st.Sets = append(st.Sets, SetState{Name: s.name, Type: datatypeName(s.keyType), Elements: s.ranges()})
	}
	slices.SortFunc(st.Sets, func(a, b SetState) int { return strings.Compare(a.Name, b.Name) })
	return st, nil
}

// Drifted reports whether the kernel's table differs from build(spec).
func (f *Firewall) Drifted(spec Spec) (bool, error) {
	d, err := spec.normalize()
	if err != nil {
		return false, err
	}
	c, done, err := f.conn()
	if err != nil {
		return false, err
	}
	defer done()
	have, err := f.readTable(c, d.table)
	if err != nil {
		return false, err
	}
	want, err := build(d)
	if err != nil {
		return false, err
	}
	return !slices.Equal(canonical(have), canonical(want)), nil
}

// DetectForeign reads the namespace's netfilter state and reports other
// owners' rules that affect our traffic. It sends only dump requests.
func (f *Firewall) DetectForeign() (Foreign, error) {
	c, done, err := f.conn()
	if err != nil {
		return Foreign{}, err
	}
	defer done()
	var fr Foreign
	tables, err := c.ListTables()
	if err != nil {
		return Foreign{}, describe("listing nftables tables", err)
	}
	for _, t := range tables {
		name := familyName(t.Family) + " " + t.Name
		switch {
		case t.Name == "firewalld":
			fr.FirewalldTables = append(fr.FirewalldTables, name)
		case strings.HasPrefix(t.Name, "docker"):
			fr.DockerTables = append(fr.DockerTables, name)
		}
	}
	chains, err := c.ListChains()
	if err != nil {
		return Foreign{}, describe("listing nftables chains", err)
	}
	for _, ch := range chains {
		if ch.Table == nil {
			continue
		}
		name := familyName(ch.Table.Family) + " " + ch.Table.Name + " " + ch.Name
		if strings.HasPrefix(ch.Name, "DOCKER") {
			fr.DockerChains = append(fr.DockerChains, name)
		}
		// Our own chains always have policy accept, so any dropping
		// forward chain belongs to someone else. Bridge-family chains see
		// bridged frames, not routed ones, and are not our concern.
		routedForward := ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookForward &&
			ch.Table.Family != nftables.TableFamilyNetdev && ch.Table.Family != nftables.TableFamilyBridge
		if routedForward && ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop {
			fr.DropForwardChains = append(fr.DropForwardChains, name)
		}
	}
	fr.LegacyIPTables, err = f.legacyTables()
	if err != nil {
		return Foreign{}, err
	}
	for _, l := range [][]string{fr.DockerChains, fr.DockerTables, fr.FirewalldTables, fr.DropForwardChains, fr.LegacyIPTables} {
		slices.Sort(l)
	}
	return fr, nil
}

// legacyTables lists x_tables (iptables-legacy) tables, which nf_tables
// dumps cannot see. The kernel publishes them per namespace in
// /proc/<thread>/net, so the file is read from a thread inside the target
// namespace.
func (f *Firewall) legacyTables() ([]string, error) {
	read := func() ([]string, error) {
		var out []string
		for _, src := range []struct{ file, family string }{{"ip_tables_names", "ip"}, {"ip6_tables_names", "ip6"}} {
			b, err := os.ReadFile("/proc/thread-self/net/" + src.file)
			if errors.Is(err, os.ErrNotExist) {
				continue // kernel built without legacy iptables for this family
			}
			if err != nil {
				return nil, fmt.Errorf("firewall: reading legacy iptables tables: %w", err)
			}
			for _, name := range strings.Fields(string(b)) {
				out = append(out, src.family+" "+name)
			}
		}
		return out, nil
	}
	if f.netnsFD == 0 {
		// The caller's own thread: that is the namespace the other calls
		// of this Firewall use.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		return read()
	}
	type result struct {
		tables []string
		err    error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread stays locked when this goroutine ends, so the
		// runtime retires it instead of reusing a thread that sits in
		// another namespace.
		runtime.LockOSThread()
		if err := unix.Setns(f.netnsFD, unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("firewall: entering the network namespace to read legacy iptables tables: %w", err)}
			return
		}
		tables, err := read()
		ch <- result{tables, err}
	}()
	r := <-ch
	return r.tables, r.err
}

// readTable reads our table's chains, rules, sets and elements. A missing
// table gives a ruleset with present == false.
func (f *Firewall) readTable(c *nftables.Conn, name string) (ruleset, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return ruleset{}, describe("listing inet tables", err)
	}
	i := slices.IndexFunc(tables, func(t *nftables.Table) bool { return t.Name == name })
	if i < 0 {
		return ruleset{}, nil
	}
	rs := ruleset{present: true, table: tables[i]}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return ruleset{}, describe("listing the chains of table inet "+name, err)
	}
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == name {
			rs.chains = append(rs.chains, ch)
		}
	}
	d, err := f.dumper()
	if err != nil {
		return ruleset{}, err
	}
	defer d.Close()
	if rs.rules, err = d.rules(name); err == nil {
		rs.sets, err = d.sets(name)
	}
	if errors.Is(err, errGone) {
		return ruleset{}, nil // deleted while we were reading it
	}
	if err != nil {
		return ruleset{}, err
	}
	return rs, nil
}

// describe wraps a netlink error with what we were doing and, for the
// common causes, what to do about it.
func describe(action string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, os.ErrPermission):
		return fmt.Errorf("firewall: %s: permission denied; zlayer-overlayd needs CAP_NET_ADMIN (run it as root or grant the capability): %w", action, err)
	case errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EAFNOSUPPORT):
		return fmt.Errorf("firewall: %s: the kernel has no nf_tables support (CONFIG_NF_TABLES, CONFIG_NF_TABLES_INET): %w", action, err)
	case errors.Is(err, unix.EMSGSIZE), errors.Is(err, unix.ENOBUFS):
		return fmt.Errorf("firewall: %s: the netlink batch is larger than the socket send buffer allows; reduce the number of bridges and prefixes (or aggregate subnets into fewer prefixes): %w", action, err)
	}
	return fmt.Errorf("firewall: %s: %w", action, err)
}

func sortedChains(chains []*nftables.Chain) []*nftables.Chain {
	out := slices.Clone(chains)
	slices.SortFunc(out, func(a, b *nftables.Chain) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// datatypeName names the set key types we use the way nft does.
func datatypeName(magic uint32) string {
	for _, t := range []nftables.SetDatatype{nftables.TypeIFName, nftables.TypeIPAddr, nftables.TypeIP6Addr} {
		if t.GetNFTMagic() == magic {
			return t.Name
		}
	}
	return fmt.Sprintf("type%d", magic)
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyARP:
		return "arp"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyNetdev:
		return "netdev"
	}
	return fmt.Sprintf("family%d", f)
}

func hookName(h nftables.ChainHook) string {
	switch h {
	case *nftables.ChainHookPrerouting:
		return "prerouting"
	case *nftables.ChainHookInput:
		return "input"
	case *nftables.ChainHookForward:
		return "forward"
	case *nftables.ChainHookOutput:
		return "output"
	case *nftables.ChainHookPostrouting:
		return "postrouting"
	}
	return fmt.Sprintf("hook%d", h)
}

func policyName(p nftables.ChainPolicy) string {
	if p == nftables.ChainPolicyDrop {
		return "drop"
	}
	return "accept"
}
