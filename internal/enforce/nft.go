package enforce

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"
)

// Names of everything ctguard owns in the kernel. Nothing else is touched.
const (
	TableName = "ctguard"
	ChainName = "prerouting"
	SetBan4   = "ban4"
	SetBan6   = "ban6"
	SetNet4   = "net4"
	SetNet6   = "net6"
	// Scoped twins: bans that leave the SSH ports open, for targets that
	// cover the peer of an open SSH session.
	SetBan4Scoped = "ban4_but_ssh"
	SetBan6Scoped = "ban6_but_ssh"
	SetNet4Scoped = "net4_but_ssh"
	SetNet6Scoped = "net6_but_ssh"
	// SetSSHPorts holds the TCP ports the scoped bans leave open.
	SetSSHPorts = "ssh_ports"
	// chainPriority is "raw": before conntrack (-200), so banned packets
	// neither create nor refresh entries.
	chainPriority = -300
)

// Message limits: the element list of one
// NEWSETELEM is a netlink attribute with a 16-bit length, so one message
// must stay under 64 KiB; the whole batch must fit the socket send buffer.
const (
	maxElemListBytes = 56 << 10
	sendBufferBytes  = 32 << 20
	recvBufferBytes  = 8 << 20
)

// NFT is the nftables Firewall. The zero value is not usable; use NewNFT.
type NFT struct {
	log   *slog.Logger
	netns int // fd of the target network namespace, 0 for the caller's
	mu    sync.Mutex

	testDial nltest.Func // tests: record messages instead of talking to the kernel

	table                  *nftables.Table
	ban4, ban6, net4, net6 *nftables.Set
	// The scoped twins, and the SSH ports they leave open.
	sban4, sban6, snet4, snet6 *nftables.Set
	sshPorts                   *nftables.Set
	ports                      []uint16
	chain                      *nftables.Chain
}

// sets lists the ban sets in the order of their rules.
func (n *NFT) sets() []*nftables.Set {
	return []*nftables.Set{n.ban4, n.net4, n.ban6, n.net6, n.sban4, n.snet4, n.sban6, n.snet6}
}

// NFTOptions configures NewNFT.
type NFTOptions struct {
	// NetNSFd, when non-zero, is an open network namespace fd; the table is
	// managed there instead of in the caller's namespace (tests).
	NetNSFd int
	// SSHPorts are the TCP ports that scoped bans leave open (default 22).
	SSHPorts []uint16
}

// setIDs are batch-local set IDs. Fixed values (instead of the library's
// global counter, which is not goroutine-safe) are fine: they only link a
// rule to a set created in the same batch.
const (
	idBan4 = 0x6374_0001 + iota
	idBan6
	idNet4
	idNet6
	idBan4Scoped
	idBan6Scoped
	idNet4Scoped
	idNet6Scoped
	idSSHPorts
)

// NewNFT returns the nftables backend.
func NewNFT(log *slog.Logger, opt NFTOptions) *NFT {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	mk := func(name string, id uint32, key nftables.SetDatatype, interval bool) *nftables.Set {
		return &nftables.Set{
			Table: t, Name: name, ID: id, KeyType: key,
			HasTimeout: true, Interval: interval,
			// A default timeout means that even an element added without
			// one (a bug) can never become a permanent ban.
			Timeout: DefaultTTL,
		}
	}
	ports := slices.Clone(opt.SSHPorts)
	if len(ports) == 0 {
		ports = []uint16{22}
	}
	slices.Sort(ports)
	ports = slices.Compact(ports)
	return &NFT{
		log:      log,
		netns:    opt.NetNSFd,
		table:    t,
		ban4:     mk(SetBan4, idBan4, nftables.TypeIPAddr, false),
		ban6:     mk(SetBan6, idBan6, nftables.TypeIP6Addr, false),
		net4:     mk(SetNet4, idNet4, nftables.TypeIPAddr, true),
		net6:     mk(SetNet6, idNet6, nftables.TypeIP6Addr, true),
		sban4:    mk(SetBan4Scoped, idBan4Scoped, nftables.TypeIPAddr, false),
		sban6:    mk(SetBan6Scoped, idBan6Scoped, nftables.TypeIP6Addr, false),
		snet4:    mk(SetNet4Scoped, idNet4Scoped, nftables.TypeIPAddr, true),
		snet6:    mk(SetNet6Scoped, idNet6Scoped, nftables.TypeIP6Addr, true),
		sshPorts: &nftables.Set{Table: t, Name: SetSSHPorts, ID: idSSHPorts, KeyType: nftables.TypeInetService},
		ports:    ports,
		chain: &nftables.Chain{
			Name: ChainName, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(chainPriority),
		},
	}
}

func (n *NFT) conn() (*nftables.Conn, error) {
	if n.testDial != nil {
		return nftables.New(nftables.WithTestDial(n.testDial))
	}
	opts := []nftables.ConnOption{nftables.WithSockOptions(func(c *netlink.Conn) error {
		if err := c.SetWriteBuffer(sendBufferBytes); err != nil {
			return fmt.Errorf("raise netlink send buffer: %w", err)
		}
		// Errors echo the failed message; leave room for several.
		return c.SetReadBuffer(recvBufferBytes)
	})}
	if n.netns != 0 {
		opts = append(opts, nftables.WithNetNSFd(n.netns))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

// ErrNoNFTables means the kernel has no nf_tables (or no netfilter netlink).
var ErrNoNFTables = errors.New("the kernel has no nftables support (nf_tables module not loaded?)")

// ErrPermission means the caller lacks CAP_NET_ADMIN.
var ErrPermission = errors.New("changing the firewall needs root (CAP_NET_ADMIN): run with sudo")

// explain turns the errnos a user can act on into sentences, keeping the
// original error for the details.
func explain(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return fmt.Errorf("%w (%v)", ErrPermission, err)
	case errors.Is(err, syscall.EPROTONOSUPPORT), errors.Is(err, syscall.EAFNOSUPPORT):
		return fmt.Errorf("%w (%v)", ErrNoNFTables, err)
	}
	return err
}

// setFor picks the set an element belongs to.
func (n *NFT) setFor(e Element) *nftables.Set {
	p := e.Prefix
	i := 0
	switch {
	case p.Addr().Is4() && isHost(p):
		i = 0
	case p.Addr().Is4():
		i = 1
	case isHost(p):
		i = 2
	default:
		i = 3
	}
	if e.Scoped {
		i += 4
	}
	return n.sets()[i]
}

// encode returns the set elements for p: one key for an address, a start
// and an interval end (first address after the prefix) for a prefix. A
// prefix that runs to the top of the address space has no end element.
func encode(p netip.Prefix, ttl time.Duration) []nftables.SetElement {
	if ttl > 0 && ttl < time.Millisecond {
		ttl = time.Millisecond // the kernel counts milliseconds; 0 would mean "no timeout"
	}
	start := p.Masked().Addr()
	out := []nftables.SetElement{{Key: start.AsSlice(), Timeout: ttl}}
	if isHost(p) {
		return out
	}
	// The kernel refuses a timeout on an interval end (EINVAL): the start
	// element's timeout governs the whole interval.
	if end := lastAddr(p).Next(); end.IsValid() {
		out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
	}
	return out
}

// elemBytes is the encoded size of one element in a NEWSETELEM list
// (nested attr + key + optional flags + optional timeout), as
// nftables.Set.makeElemList marshals it.
func elemBytes(e nftables.SetElement) int {
	n := 4 + 4 + 4 + align4(len(e.Key))
	if e.IntervalEnd {
		n += 8
	}
	if e.Timeout != 0 {
		n += 12
	}
	return n
}

func align4(n int) int { return (n + 3) &^ 3 }

// lastAddr is the highest address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

type setOp int

const (
	opAdd setOp = iota
	opDel
)

// queue appends the elements to the batch, one message per set and chunk,
// each under maxElemListBytes. Returns the number of messages queued.
func (n *NFT) queue(c *nftables.Conn, op setOp, elems []Element, withTTL bool) (int, error) {
	bySet := map[*nftables.Set][]nftables.SetElement{}
	order := n.sets()
	for _, e := range elems {
		ttl := e.TTL
		if !withTTL {
			ttl = 0
		}
		s := n.setFor(e)
		bySet[s] = append(bySet[s], encode(e.Prefix, ttl)...)
	}
	msgs := 0
	for _, s := range order {
		all := bySet[s]
		for len(all) > 0 {
			size, i := 0, 0
			for i < len(all) {
				sz := elemBytes(all[i])
				// Keep a start and its interval end in the same message.
				pair := s.Interval && i+1 < len(all) && all[i+1].IntervalEnd
				if pair {
					sz += elemBytes(all[i+1])
				}
				if size+sz > maxElemListBytes && i > 0 {
					break
				}
				size += sz
				i++
				if pair {
					i++
				}
			}
			chunk := all[:i]
			all = all[i:]
			var err error
			if op == opAdd {
				err = c.SetAddElements(s, chunk)
			} else {
				err = c.SetDeleteElements(s, chunk)
			}
			if err != nil {
				return msgs, err
			}
			msgs++
		}
	}
	return msgs, nil
}

func (n *NFT) rules() []*nftables.Rule {
	mk := func(proto byte, off, l uint32, s *nftables.Set) *nftables.Rule {
		return &nftables.Rule{Table: n.table, Chain: n.chain, Exprs: []expr.Any{
			// In an inet table the network header may be either family:
			// check it before reading the address out of it.
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: l},
			&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}}
	}
	// The SSH ports leave this chain before the scoped bans: an accept ends
	// only this base chain, and every full ban has already dropped.
	sshAccept := &nftables.Rule{Table: n.table, Chain: n.chain, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: n.sshPorts.Name, SetID: n.sshPorts.ID},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}}
	first := mk(unix.NFPROTO_IPV4, 12, 4, n.ban4)
	first.UserData = userdata.AppendString(nil, userdata.TypeComment, OwnerMark)
	return []*nftables.Rule{
		first,
		mk(unix.NFPROTO_IPV4, 12, 4, n.net4),
		mk(unix.NFPROTO_IPV6, 8, 16, n.ban6),
		mk(unix.NFPROTO_IPV6, 8, 16, n.net6),
		sshAccept,
		mk(unix.NFPROTO_IPV4, 12, 4, n.sban4),
		mk(unix.NFPROTO_IPV4, 12, 4, n.snet4),
		mk(unix.NFPROTO_IPV6, 8, 16, n.sban6),
		mk(unix.NFPROTO_IPV6, 8, 16, n.snet6),
	}
}

// portElements encodes the SSH ports as set keys (network byte order).
func (n *NFT) portElements() []nftables.SetElement {
	out := make([]nftables.SetElement, len(n.ports))
	for i, p := range n.ports {
		out[i] = nftables.SetElement{Key: binary.BigEndian.AppendUint16(nil, p)}
	}
	return out
}

// OwnerMark is the comment on the first rule of ctguard's chain: it tells
// ctguard's own table from another tool's of the same name, even to a
// ctguard whose store is new.
const OwnerMark = "managed by ctguard: changes here are undone"

// ErrForeignTable means a table named inet ctguard exists that ctguard did
// not create.
var ErrForeignTable = errors.New("table inet " + TableName + " exists and was not created by ctguard")

// foreign says why an existing table of ctguard's name is another tool's,
// or "" when it is ctguard's (its mark, or the ban sets of a ctguard from
// before the mark), empty, or missing.
func (n *NFT) foreign(c *nftables.Conn) (string, error) {
	_, exists, err := n.tableInfo()
	if err != nil || !exists {
		return "", err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return "", err
	}
	var names []string
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		names = append(names, ch.Name)
		rules, err := c.GetRules(n.table, ch)
		if err != nil {
			return "", err
		}
		for _, r := range rules {
			if m, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok && m == OwnerMark {
				return "", nil
			}
		}
	}
	sets, err := c.GetSets(n.table)
	if err != nil {
		return "", err
	}
	var setNames []string
	ours := 0
	for _, s := range sets {
		setNames = append(setNames, s.Name)
		switch s.Name {
		case SetBan4, SetBan6, SetNet4, SetNet6:
			ours++
		}
	}
	if ours == 4 || len(names)+len(setNames) == 0 {
		return "", nil
	}
	return fmt.Sprintf("it holds chains %v and sets %v without ctguard's mark", names, setNames), nil
}

// Setup implements Firewall: in one batch, create the table if missing (so
// that the delete cannot fail), delete it with everything in it, and build
// it again with elems.
func (n *NFT) Setup(ctx context.Context, elems []Element) (TableID, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, err := n.conn()
	if err != nil {
		return 0, err
	}
	if why, err := n.foreign(c); err != nil {
		return 0, fmt.Errorf("setup: inspect the existing table: %w", explain(err))
	} else if why != "" {
		return 0, fmt.Errorf("%w: %s; rename or delete it (ctguard never destroys another tool's table)", ErrForeignTable, why)
	}
	c.AddTable(n.table)
	c.DelTable(n.table)
	c.AddTable(n.table)
	for _, s := range n.sets() {
		if err := c.AddSet(s, nil); err != nil {
			return 0, fmt.Errorf("setup: set %s: %w", s.Name, err)
		}
	}
	if err := c.AddSet(n.sshPorts, n.portElements()); err != nil {
		return 0, fmt.Errorf("setup: set %s: %w", n.sshPorts.Name, err)
	}
	c.AddChain(n.chain)
	for _, r := range n.rules() {
		c.AddRule(r)
	}
	t0 := time.Now()
	msgs, err := n.queue(c, opAdd, elems, true)
	if err != nil {
		return 0, fmt.Errorf("setup: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	t1 := time.Now()
	if err := c.Flush(); err != nil {
		return 0, fmt.Errorf("setup table inet %s with %d bans (%d element messages): %w", TableName, len(elems), msgs, explain(err))
	}
	id, _, err := n.tableInfo()
	if err != nil {
		return 0, fmt.Errorf("setup: read back table: %w", err)
	}
	n.log.Info("nftables table ready", "table", "inet "+TableName, "bans", len(elems), "messages", msgs,
		"encode", t1.Sub(t0), "kernel", time.Since(t1))
	return id, nil
}

// Apply implements Firewall.
func (n *NFT) Apply(ctx context.Context, ch Change) error {
	if len(ch.Delete) == 0 && len(ch.Add) == 0 {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	c, err := n.conn()
	if err != nil {
		return err
	}
	dels := ch.Delete
	if _, err := n.queue(c, opDel, dels, false); err != nil {
		return err
	}
	if _, err := n.queue(c, opAdd, ch.Add, true); err != nil {
		return err
	}
	err = c.Flush()
	if err == nil || len(dels) == 0 || !errors.Is(err, syscall.ENOENT) {
		if err != nil {
			return fmt.Errorf("apply %d deletes, %d adds: %w", len(dels), len(ch.Add), explain(err))
		}
		return nil
	}
	// Some element to delete had already expired and the kernel refused the
	// whole batch: delete in halves, down to single elements, treating
	// ENOENT on a single element as done (k expired among n cost about
	// k*log2(n) small batches, not n), then add everything in one batch.
	gone, err := n.deleteTolerant(ctx, dels)
	if err != nil {
		return err
	}
	n.log.Debug("deleted elements around expired ones", "total", len(dels), "already_expired", gone)
	if len(ch.Add) == 0 {
		return nil
	}
	c, err = n.conn()
	if err != nil {
		return err
	}
	if _, err := n.queue(c, opAdd, ch.Add, true); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("apply %d adds: %w", len(ch.Add), err)
	}
	return nil
}

// deleteTolerant deletes dels, splitting a batch the kernel refuses with
// ENOENT until the missing elements are isolated. It returns how many were
// already gone.
func (n *NFT) deleteTolerant(ctx context.Context, dels []Element) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	c, err := n.conn()
	if err != nil {
		return 0, err
	}
	if _, err := n.queue(c, opDel, dels, false); err != nil {
		return 0, err
	}
	err = c.Flush()
	switch {
	case err == nil:
		return 0, nil
	case !errors.Is(err, syscall.ENOENT):
		return 0, fmt.Errorf("delete %d elements: %w", len(dels), err)
	case len(dels) == 1:
		return 1, nil
	}
	half := len(dels) / 2
	a, err := n.deleteTolerant(ctx, dels[:half])
	if err != nil {
		return a, err
	}
	b, err := n.deleteTolerant(ctx, dels[half:])
	return a + b, err
}

// Check implements Firewall. It reads the table, its sets, the chain and
// its four rules: a handful of small messages however many bans there are.
// It cannot see elements deleted one by one from outside (listing 100k
// elements takes seconds); the table handle catches a table that was
// deleted and recreated, e.g. by a ruleset reload.
func (n *NFT) Check(ctx context.Context, want TableID) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	id, exists, err := n.tableInfo()
	if err != nil {
		return "", fmt.Errorf("check table: %w", explain(err))
	}
	if !exists {
		return "table inet " + TableName + " is missing", nil
	}
	if want != 0 && id != want {
		return fmt.Sprintf("table inet %s was replaced (handle %d, expected %d)", TableName, id, want), nil
	}
	c, err := n.conn()
	if err != nil {
		return "", err
	}
	sets, err := c.GetSets(n.table)
	if err != nil {
		return "", fmt.Errorf("check sets: %w", err)
	}
	found := map[string]*nftables.Set{}
	for _, s := range sets {
		found[s.Name] = s
	}
	for _, w := range append(n.sets(), n.sshPorts) {
		s, ok := found[w.Name]
		switch {
		case !ok:
			return "set " + w.Name + " is missing", nil
		case s.KeyType.Name != w.KeyType.Name || s.Interval != w.Interval || s.HasTimeout != w.HasTimeout:
			return fmt.Sprintf("set %s has type %s interval=%v timeout=%v", w.Name, s.KeyType.Name, s.Interval, s.HasTimeout), nil
		}
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return "", fmt.Errorf("check chain: %w", err)
	}
	var ch *nftables.Chain
	for _, x := range chains {
		if x.Table.Name == TableName && x.Name == ChainName {
			ch = x
		}
	}
	if ch == nil {
		return "chain " + ChainName + " is missing", nil
	}
	if ch.Hooknum == nil || *ch.Hooknum != *nftables.ChainHookPrerouting || ch.Priority == nil ||
		*ch.Priority != chainPriority || ch.Type != nftables.ChainTypeFilter {
		return "chain " + ChainName + " has the wrong hook, priority or type", nil
	}
	if ch.Policy != nil && *ch.Policy != nftables.ChainPolicyAccept {
		// A drop policy would cut the host off from everyone.
		return "chain " + ChainName + " has policy drop", nil
	}
	rules, err := c.GetRules(n.table, n.chain)
	if err != nil {
		return "", fmt.Errorf("check rules: %w", err)
	}
	wantRules := n.rules()
	if len(rules) != len(wantRules) {
		return fmt.Sprintf("chain %s has %d rules, want %d", ChainName, len(rules), len(wantRules)), nil
	}
	for i, r := range rules {
		if p := ruleProblem(r, wantRules[i]); p != "" {
			return fmt.Sprintf("rule %d: %s", i+1, p), nil
		}
	}
	return "", ctx.Err()
}

// ruleProblem compares a rule read back with the one Setup wrote.
func ruleProblem(got, want *nftables.Rule) string {
	if len(got.Exprs) != len(want.Exprs) {
		return fmt.Sprintf("%d expressions, want %d", len(got.Exprs), len(want.Exprs))
	}
	for i, w := range want.Exprs {
		g := got.Exprs[i]
		switch w := w.(type) {
		case *expr.Lookup:
			if g, ok := g.(*expr.Lookup); !ok || g.SetName != w.SetName || g.Invert {
				return "lookup is not @" + w.SetName
			}
		case *expr.Verdict:
			if g, ok := g.(*expr.Verdict); !ok || g.Kind != w.Kind {
				return "verdict changed"
			}
		case *expr.Cmp:
			if g, ok := g.(*expr.Cmp); !ok || string(g.Data) != string(w.Data) || g.Op != w.Op {
				return "protocol match changed"
			}
		case *expr.Payload:
			if g, ok := g.(*expr.Payload); !ok || g.Offset != w.Offset || g.Len != w.Len || g.Base != w.Base {
				return "header match changed"
			}
		default:
			if fmt.Sprintf("%T", g) != fmt.Sprintf("%T", w) {
				return fmt.Sprintf("expression %d is %T, want %T", i, g, w)
			}
		}
	}
	return ""
}

// Counters implements Firewall.
func (n *NFT) Counters(ctx context.Context) (Counters, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, err := n.conn()
	if err != nil {
		return Counters{}, err
	}
	rules, err := c.GetRules(n.table, n.chain)
	if err != nil {
		return Counters{}, fmt.Errorf("read counters: %w", err)
	}
	var out Counters
	for _, r := range rules {
		var set string
		var cnt Counter
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Lookup:
				set = e.SetName
			case *expr.Counter:
				cnt = Counter{Packets: e.Packets, Bytes: e.Bytes}
			}
		}
		switch set {
		case SetBan4:
			out.Ban4 = cnt
		case SetBan6:
			out.Ban6 = cnt
		case SetNet4:
			out.Net4 = cnt
		case SetNet6:
			out.Net6 = cnt
		case SetBan4Scoped:
			out.Scoped.Ban4 = cnt
		case SetBan6Scoped:
			out.Scoped.Ban6 = cnt
		case SetNet4Scoped:
			out.Scoped.Net4 = cnt
		case SetNet6Scoped:
			out.Scoped.Net6 = cnt
		}
	}
	return out, ctx.Err()
}

// tableInfo reads the own table's kernel handle with one GETTABLE request
// (the library's Table type does not carry the handle).
func (n *NFT) tableInfo() (TableID, bool, error) {
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: n.netns})
	if err != nil {
		return 0, false, fmt.Errorf("netlink: %w", err)
	}
	defer nl.Close()
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: []byte(TableName + "\x00")}})
	if err != nil {
		return 0, false, err
	}
	msgs, err := nl.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETTABLE),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if errors.Is(err, syscall.ENOENT) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, false, err
		}
		for ad.Next() {
			if ad.Type() == nftaTableHandle && len(ad.Bytes()) == 8 {
				return TableID(binary.BigEndian.Uint64(ad.Bytes())), true, nil
			}
		}
	}
	return 0, true, nil
}

// Elements implements Firewall: it dumps the eight ban sets.
func (n *NFT) Elements(ctx context.Context) ([]Element, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, exists, err := n.tableInfo()
	if err != nil {
		return nil, fmt.Errorf("read ban sets: %w", explain(err))
	}
	if !exists {
		return nil, nil
	}
	c, err := n.conn()
	if err != nil {
		return nil, err
	}
	var out []Element
	for i, s := range n.sets() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		raw, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("read set %s: %w", s.Name, explain(err))
		}
		els, bad := decodeElements(raw, s.Interval, i >= 4)
		if bad > 0 {
			n.log.Warn("set elements that are not an address or a CIDR prefix were ignored", "set", s.Name, "elements", bad)
		}
		out = append(out, els...)
	}
	return out, nil
}

// decodeElements turns a set dump into elements with the time the kernel
// still keeps each (its Expires). An interval set lists each prefix as a
// start and an interval end (the first address after it; none for a
// prefix that runs to the top of the address space), in any order. bad
// counts what is not an address or a CIDR prefix.
func decodeElements(raw []nftables.SetElement, interval, scoped bool) (out []Element, bad int) {
	type key struct {
		a   netip.Addr
		end bool
		ttl time.Duration
	}
	keys := make([]key, 0, len(raw))
	for _, r := range raw {
		a, ok := netip.AddrFromSlice(r.Key)
		if !ok {
			bad++
			continue
		}
		keys = append(keys, key{a, r.IntervalEnd, r.Expires})
	}
	if !interval {
		for _, k := range keys {
			out = append(out, Element{Prefix: netip.PrefixFrom(k.a, k.a.BitLen()), TTL: k.ttl, Scoped: scoped})
		}
		return out, bad
	}
	slices.SortFunc(keys, func(x, y key) int {
		if c := x.a.Compare(y.a); c != 0 {
			return c
		}
		// An end and the next start at one address: the end closes the
		// earlier interval first.
		switch {
		case x.end && !y.end:
			return -1
		case !x.end && y.end:
			return 1
		}
		return 0
	})
	for i := 0; i < len(keys); i++ {
		k := keys[i]
		if k.end {
			continue // an end with no start (nft's own 0.0.0.0 marker, or garbage)
		}
		var last netip.Addr
		if i+1 < len(keys) && keys[i+1].end {
			last = keys[i+1].a.Prev()
			i++
		} else {
			last = lastAddr(netip.PrefixFrom(k.a, 0)) // runs to the top
		}
		p, ok := rangePrefix(k.a, last)
		if !ok {
			bad++
			continue
		}
		out = append(out, Element{Prefix: p, TTL: k.ttl, Scoped: scoped})
	}
	return out, bad
}

// rangePrefix returns the CIDR prefix spanning exactly first..last.
func rangePrefix(first, last netip.Addr) (netip.Prefix, bool) {
	if !first.IsValid() || !last.IsValid() || first.BitLen() != last.BitLen() || last.Less(first) {
		return netip.Prefix{}, false
	}
	for bits := 0; bits <= first.BitLen(); bits++ {
		p := netip.PrefixFrom(first, bits)
		if p.Masked().Addr() == first && lastAddr(p) == last {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

var _ Firewall = (*NFT)(nil)

// nftaTableHandle is NFTA_TABLE_HANDLE (linux/netfilter/nf_tables.h), which
// x/sys/unix does not define.
const nftaTableHandle = 4
