package enforce

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// IPSet is the Firewall for hosts whose firewall is iptables with ipset
// (Debian 9-style hosts, or any host that keeps iptables): eight ipsets with
// per-element timeouts and one chain in the raw table of iptables and
// ip6tables, with the same guarantees as the nftables backend:
//
//   - The drop happens in raw PREROUTING, before conntrack (the raw table's
//     hook priority is -300, conntrack's -200): a banned source neither
//     creates nor refreshes entries, and forwarded traffic is covered.
//     ctguard's jump is the first rule of raw PREROUTING; an ACCEPT put
//     before it (which in iptables ends the whole table's PREROUTING) is
//     reported by Check and undone by Setup.
//   - Elements carry their own timeout and vanish even with ctguard
//     stopped. ipset keeps at most ipsetMaxTimeout (24 days 20 h); a longer
//     ban is added with that and Check asks for a rebuild (which re-adds it
//     with its remaining time) an hour before the kernel would drop it.
//   - Setup fills temporary sets and swaps each into place (ipset swap is
//     atomic per set, and rules keep matching on the name), then rewrites
//     the chain with one iptables-restore --noflush transaction per family.
//   - Nothing outside ctguard's objects is touched: the sets named
//     ctguard-*, the chain CTGUARD and the one jump to it (commented
//     "ctguard"). A set of ctguard's name with another type, or a chain
//     CTGUARD without ctguard's mark, is refused (ErrForeignIPSet), never
//     destroyed.
//
// Differences from the nftables backend: Apply is not atomic across
// messages (ipset has no transactions; each message of up to ~2,500
// elements is applied as a whole or up to its first failing element), and
// a delete of an expired element is simply ignored (ipset's "exist"
// semantics). Sets are spoken to over netlink (ipset_nl.go), the rules
// through the iptables tools of the chosen flavour.
//
// Tested with iptables v1.8.9 in both flavours, legacy (x_tables) and nft
// (nf_tables compatibility), and the kernel's ipset protocol 7 (spoken as 6),
// on Linux 6.18 (ipset_root_test.go).
type IPSet struct {
	log     *slog.Logger
	netns   int
	flavour IPTablesFlavour
	ports   []uint16
	maxElem uint32

	mu sync.Mutex
	// noWait: iptables-restore refused -w (before 1.6.2); sent without it.
	noWait bool
	// clamped holds the bans longer than ipset's maximum timeout and when
	// the kernel will drop them.
	clamped map[netip.Prefix]time.Time
	now     func() time.Time
}

// Names of ctguard's ipsets: IPSetPrefix + ban4, net4, ban6, net6 (full
// bans), and the same + IPSetScopedSuffix (bans that leave the SSH ports
// open). Setup builds into the names + ipsetTmpSuffix.
const (
	IPSetPrefix       = "ctguard-"
	IPSetScopedSuffix = "-but-ssh"
	ipsetTmpSuffix    = "-new"
	// DefaultIPSetMaxElem is each set's capacity.
	DefaultIPSetMaxElem = 1 << 20
)

// ErrForeignIPSet means an ipset or iptables chain of ctguard's name exists
// that ctguard did not create. errors.Is(err, ErrForeignTable) holds too,
// so one check covers both backends.
var ErrForeignIPSet error = foreignError("an ipset or iptables chain of ctguard's name exists and was not created by ctguard")

type foreignError string

func (e foreignError) Error() string        { return string(e) }
func (e foreignError) Is(target error) bool { return target == ErrForeignTable }

// ipsetDef is one of ctguard's sets.
type ipsetDef struct {
	name   string
	typ    string // hash:ip or hash:net
	family uint8
	scoped bool
}

// ipsetDefs lists the sets in the order of NFT.sets(): ban4, net4, ban6,
// net6, then the scoped twins.
var ipsetDefs = func() []ipsetDef {
	var out []ipsetDef
	for _, scoped := range []bool{false, true} {
		for _, fam := range []uint8{unix.NFPROTO_IPV4, unix.NFPROTO_IPV6} {
			for _, net := range []bool{false, true} {
				d := ipsetDef{typ: "hash:ip", family: fam, scoped: scoped}
				kind := "ban"
				if net {
					d.typ, kind = "hash:net", "net"
				}
				v := "4"
				if fam == unix.NFPROTO_IPV6 {
					v = "6"
				}
				d.name = IPSetPrefix + kind + v
				if scoped {
					d.name += IPSetScopedSuffix
				}
				out = append(out, d)
			}
		}
	}
	return out
}()

// ipsetIndex picks the set an element belongs to (an index into ipsetDefs).
func ipsetIndex(e Element) int {
	i := 0
	if !e.Prefix.Addr().Is4() {
		i += 2
	}
	if !isHost(e.Prefix) {
		i++
	}
	if e.Scoped {
		i += 4
	}
	return i
}

// ipsetRevisionCap is the newest revision of each type ctguard was tested
// with; a newer kernel's is not used.
var ipsetRevisionCap = map[string]uint8{"hash:ip": 6, "hash:net": 7}

// IPSetOptions configures NewIPSet.
type IPSetOptions struct {
	// NetNSFd, when non-zero, is an open network namespace fd; sets and
	// rules are managed there instead of in the caller's namespace (tests).
	NetNSFd int
	// SSHPorts are the TCP ports that scoped bans leave open (default 22).
	SSHPorts []uint16
	// IPTables selects the iptables tools (default: the host's `iptables`).
	IPTables IPTablesFlavour
	// MaxElem is each set's capacity (default DefaultIPSetMaxElem).
	MaxElem uint32
}

// NewIPSet returns the ipset + iptables backend.
func NewIPSet(log *slog.Logger, opt IPSetOptions) *IPSet {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ports := slices.Clone(opt.SSHPorts)
	if len(ports) == 0 {
		ports = []uint16{22}
	}
	slices.Sort(ports)
	ports = slices.Compact(ports)
	if opt.MaxElem == 0 {
		opt.MaxElem = DefaultIPSetMaxElem
	}
	return &IPSet{log: log, netns: opt.NetNSFd, flavour: opt.IPTables, ports: ports, maxElem: opt.MaxElem,
		clamped: map[netip.Prefix]time.Time{}, now: time.Now}
}

// ipsetSeconds converts a TTL to ipset's whole seconds, rounding up (0
// would mean "no timeout": a permanent element) and cutting at the kernel's
// maximum; clamped says it was cut.
func ipsetSeconds(d time.Duration) (secs uint32, clamped bool) {
	if d <= 0 {
		return 0, false // the set's default timeout applies
	}
	s := (d + time.Second - 1) / time.Second
	if s > ipsetMaxTimeout {
		return ipsetMaxTimeout, true
	}
	return uint32(s), false
}

// entriesBySet groups elements per set, with their timeouts.
func entriesBySet(elems []Element, withTTL bool) [][]ipsetEntry {
	out := make([][]ipsetEntry, len(ipsetDefs))
	for _, e := range elems {
		en := ipsetEntry{Prefix: e.Prefix.Masked()}
		if withTTL {
			en.Timeout, _ = ipsetSeconds(e.TTL)
		}
		i := ipsetIndex(e)
		out[i] = append(out[i], en)
	}
	return out
}

// renewMargin is how long before the kernel drops a clamped ban Check asks
// for the rebuild that renews it.
const renewMargin = time.Hour

// noteClamped records the adds whose TTL exceeds ipset's maximum and
// forgets the deletes. Callers hold s.mu.
func (s *IPSet) noteClamped(dels, adds []Element) {
	now := s.now()
	for _, e := range dels {
		delete(s.clamped, e.Prefix)
	}
	for _, e := range adds {
		if _, c := ipsetSeconds(e.TTL); c {
			s.clamped[e.Prefix] = now.Add(ipsetMaxTimeout * time.Second)
		} else {
			delete(s.clamped, e.Prefix)
		}
	}
}

// ipsetState is what Check and Setup read: the headers of the live and
// temporary sets and the raw tables of both families.
type ipsetState struct {
	live, tmp []*ipsetHeader // nil where no set has the name
	raw       [2]iptTable    // IPv4, IPv6
}

func (s *IPSet) readSets(x *ipsetConn, withTmp bool) (live, tmp []*ipsetHeader, err error) {
	live = make([]*ipsetHeader, len(ipsetDefs))
	tmp = make([]*ipsetHeader, len(ipsetDefs))
	for i, d := range ipsetDefs {
		h, ok, err := x.header(d.name)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			live[i] = &h
		}
		if !withTmp {
			continue
		}
		th, ok, err := x.header(d.name + ipsetTmpSuffix)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			tmp[i] = &th
		}
	}
	return live, tmp, nil
}

// readRaw reads the raw table of one family with iptables-save (-c for the
// counters).
func (s *IPSet) readRaw(ctx context.Context, v6, counters bool) (iptTable, error) {
	args := []string{"-t", "raw"}
	if counters {
		args = append(args, "-c")
	}
	tool := s.flavour.tool(v6, "save")
	out, err := runTool(ctx, s.netns, nil, tool, args...)
	if err != nil {
		return iptTable{}, err
	}
	t, err := parseSave(string(out), "raw")
	if err != nil {
		return iptTable{}, fmt.Errorf("read %s output: %w", tool, err)
	}
	return t, nil
}

// restore feeds script to iptables-restore --noflush of one family, waiting
// for the xtables lock where the tool can.
func (s *IPSet) restore(ctx context.Context, v6 bool, script string) error {
	tool := s.flavour.tool(v6, "restore")
	args := []string{"--noflush"}
	if !s.noWait {
		args = append(args, "-w", "10")
	}
	_, err := runTool(ctx, s.netns, []byte(script), tool, args...)
	if err != nil && !s.noWait && (strings.Contains(err.Error(), "unrecognized option") || strings.Contains(err.Error(), "invalid option")) {
		s.noWait = true // iptables before 1.6.2
		_, err = runTool(ctx, s.netns, []byte(script), tool, "--noflush")
	}
	if err != nil {
		return fmt.Errorf("write ctguard's chain: %w", err)
	}
	return nil
}

// setProblem says how an existing set differs from ctguard's definition,
// or "".
func setProblem(h *ipsetHeader, d ipsetDef) string {
	switch {
	case h.Type != d.typ || h.Family != d.family:
		return fmt.Sprintf("ipset %s is %s %s, want %s %s", d.name, h.Type, familyName(h.Family), d.typ, familyName(d.family))
	case !h.HasTimeout:
		return fmt.Sprintf("ipset %s has no timeout support", d.name)
	case h.Netmask != 0:
		return fmt.Sprintf("ipset %s has a netmask", d.name)
	}
	return ""
}

// foreign says why existing objects of ctguard's names are another
// tool's, or "": a set of another type, family or without timeouts, a
// temporary set that something references, a chain without the mark.
func (s *IPSet) foreign(st ipsetState) string {
	var why []string
	for i, d := range ipsetDefs {
		if h := st.live[i]; h != nil {
			if p := setProblem(h, d); p != "" {
				why = append(why, p)
			}
		}
		if h := st.tmp[i]; h != nil {
			tmp := d
			tmp.name += ipsetTmpSuffix
			if p := setProblem(h, tmp); p != "" {
				why = append(why, p)
			} else if h.References > 0 {
				why = append(why, fmt.Sprintf("ipset %s is referenced %d times", tmp.name, h.References))
			}
		}
	}
	for i, t := range st.raw {
		if p := foreignChain(t, i == 1); p != "" {
			why = append(why, p)
		}
	}
	return strings.Join(why, "; ")
}

// identity is the TableID of an incarnation: the random number in the
// chains' mark, mixed with each set's random hash seed (initval) where the
// kernel reports it, so that a set destroyed and created again, or chains
// rewritten by another ctguard, change it.
func identity(token uint64, live []*ipsetHeader) TableID {
	h := fnv.New64a()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], token)
	h.Write(b[:])
	for _, s := range live {
		var v uint32
		if s != nil {
			v = s.InitVal
		}
		binary.BigEndian.PutUint32(b[:4], v)
		h.Write(b[:4])
	}
	id := h.Sum64() >> 1 // stays a positive int64 wherever it is stored
	if id == 0 {
		id = 1
	}
	return TableID(id)
}

// problem checks st against what Setup builds and returns what is wrong
// (or "") and the identity it has.
func (s *IPSet) problem(st ipsetState) (string, TableID) {
	for i, d := range ipsetDefs {
		if st.live[i] == nil {
			return "ipset " + d.name + " is missing", 0
		}
		if p := setProblem(st.live[i], d); p != "" {
			return p, 0
		}
	}
	var tokens [2]uint64
	for i, t := range st.raw {
		p, token := chainProblem(t, i == 1, s.ports)
		if p != "" {
			return p, 0
		}
		tokens[i] = token
	}
	if tokens[0] != tokens[1] {
		return fmt.Sprintf("the iptables and ip6tables chains %s come from different setups", IPTablesChain), 0
	}
	return "", identity(tokens[0], st.live)
}

// Setup implements Firewall: it fills temporary sets with elems, swaps each
// into place (or renames it there), then writes the chains and jumps in
// one iptables-restore transaction per family, and reads everything back.
func (s *IPSet) Setup(ctx context.Context, elems []Element) (TableID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	x, err := dialIPSet(s.netns)
	if err != nil {
		return 0, err
	}
	defer x.Close()
	var st ipsetState
	if st.live, st.tmp, err = s.readSets(x, true); err != nil {
		return 0, fmt.Errorf("setup: %w", err)
	}
	for i := range st.raw {
		if st.raw[i], err = s.readRaw(ctx, i == 1, false); err != nil {
			return 0, fmt.Errorf("setup: %w", err)
		}
	}
	if why := s.foreign(st); why != "" {
		return 0, fmt.Errorf("%w: %s; rename or delete them (ctguard never destroys another tool's sets or chains)", ErrForeignIPSet, why)
	}

	t0 := time.Now()
	groups := entriesBySet(elems, true)
	var created []string
	cleanup := func() {
		for _, n := range created {
			if err := x.destroy(n); err != nil {
				s.log.Warn("could not remove a temporary ipset", "set", n, "err", err)
			}
		}
	}
	for i, d := range ipsetDefs {
		tmp := d.name + ipsetTmpSuffix
		if st.tmp[i] != nil { // left by a Setup that did not finish
			if err := x.destroy(tmp); err != nil {
				return 0, fmt.Errorf("setup: %w", err)
			}
		}
		spec, err := s.spec(x, d, len(groups[i]))
		if err != nil {
			cleanup()
			return 0, fmt.Errorf("setup: %w", err)
		}
		spec.Name = tmp
		if err := x.create(spec); err != nil {
			cleanup()
			return 0, fmt.Errorf("setup: %w", err)
		}
		created = append(created, tmp)
	}
	var msgs []netlink.Message
	var what []string
	for i, d := range ipsetDefs {
		m, w := adtMessages(ipsetCmdAdd, d.name+ipsetTmpSuffix, groups[i])
		msgs, what = append(msgs, m...), append(what, w...)
	}
	if err := ctx.Err(); err != nil {
		cleanup()
		return 0, err
	}
	t1 := time.Now()
	if err := x.batch(msgs, what); err != nil {
		cleanup()
		return 0, fmt.Errorf("setup ipsets with %d bans (%d messages): %w", len(elems), len(msgs), err)
	}
	t2 := time.Now()
	for i, d := range ipsetDefs {
		tmp := d.name + ipsetTmpSuffix
		if st.live[i] == nil {
			err = x.rename(tmp, d.name)
		} else if err = x.swap(d.name, tmp); err == nil {
			err = x.destroy(tmp) // the old content
		}
		if err != nil {
			cleanup()
			return 0, fmt.Errorf("setup: %w", err)
		}
		created = slices.DeleteFunc(created, func(n string) bool { return n == tmp })
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, fmt.Errorf("setup: %w", err)
	}
	token := binary.BigEndian.Uint64(b[:]) | 1
	for i, t := range st.raw {
		if err := s.restore(ctx, i == 1, restoreScript(t, chainRules(i == 1, s.ports, token))); err != nil {
			return 0, fmt.Errorf("setup: %w", err)
		}
	}
	// Read back what Check will read: a difference here (an iptables that
	// prints rules differently) would otherwise rebuild at every check.
	if st.live, _, err = s.readSets(x, false); err != nil {
		return 0, fmt.Errorf("setup: read back: %w", err)
	}
	for i := range st.raw {
		if st.raw[i], err = s.readRaw(ctx, i == 1, false); err != nil {
			return 0, fmt.Errorf("setup: read back: %w", err)
		}
	}
	p, id := s.problem(st)
	if p != "" {
		return 0, fmt.Errorf("setup: read back: %s", p)
	}
	clear(s.clamped)
	s.noteClamped(nil, elems)
	s.log.Info("ipset sets and iptables chains ready", "sets", IPSetPrefix+"*", "chain", "raw "+IPTablesChain,
		"iptables", s.flavour.tool(false, ""), "bans", len(elems), "messages", len(msgs),
		"encode", t1.Sub(t0), "kernel", t2.Sub(t1), "total", time.Since(t0))
	return id, nil
}

// spec is the create request of a set that will hold n elements: hashsize
// sized so that loading them needs no resizing.
func (s *IPSet) spec(x *ipsetConn, d ipsetDef, n int) (ipsetCreateSpec, error) {
	rev, err := x.typeRevision(d.typ, d.family)
	if err != nil {
		return ipsetCreateSpec{}, err
	}
	rev = min(rev, ipsetRevisionCap[d.typ])
	hs := uint32(1024)
	for int(hs)*4 < n && hs < 1<<20 {
		hs *= 2
	}
	return ipsetCreateSpec{Name: d.name, Type: d.typ, Family: d.family, Revision: rev,
		Timeout: uint32(DefaultTTL / time.Second), MaxElem: s.maxElem, HashSize: hs, BucketSize: 12}, nil
}

// Check implements Firewall: eight header-only set listings (no elements)
// and one iptables-save -t raw per family. It cannot see elements deleted
// one by one from outside, like the nftables backend.
func (s *IPSet) Check(ctx context.Context, want TableID) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	x, err := dialIPSet(s.netns)
	if err != nil {
		return "", fmt.Errorf("check: %w", err)
	}
	defer x.Close()
	var st ipsetState
	if st.live, _, err = s.readSets(x, false); err != nil {
		return "", fmt.Errorf("check: %w", err)
	}
	for i := range st.raw {
		if st.raw[i], err = s.readRaw(ctx, i == 1, false); err != nil {
			return "", fmt.Errorf("check: %w", err)
		}
	}
	p, id := s.problem(st)
	if p != "" {
		return p, nil
	}
	if want != 0 && id != want {
		return fmt.Sprintf("ctguard's ipsets or chains were replaced (identity %d, expected %d)", id, want), nil
	}
	now := s.now()
	due := 0
	for _, at := range s.clamped {
		if at.Sub(now) < renewMargin {
			due++
		}
	}
	if due > 0 {
		return fmt.Sprintf("%d bans are longer than ipset's maximum timeout (%s) and due for renewal", due,
			time.Duration(ipsetMaxTimeout)*time.Second), nil
	}
	return "", ctx.Err()
}

// Apply implements Firewall: the deletes, then the adds, pipelined on one
// socket. Deleting an element that expired is not an error; adding one
// that is there replaces its timeout.
func (s *IPSet) Apply(ctx context.Context, ch Change) error {
	if len(ch.Delete) == 0 && len(ch.Add) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	x, err := dialIPSet(s.netns)
	if err != nil {
		return err
	}
	defer x.Close()
	var msgs []netlink.Message
	var what []string
	dels := entriesBySet(ch.Delete, false)
	for i, d := range ipsetDefs {
		m, w := adtMessages(ipsetCmdDel, d.name, dels[i])
		msgs, what = append(msgs, m...), append(what, w...)
	}
	adds := entriesBySet(ch.Add, true)
	for i, d := range ipsetDefs {
		m, w := adtMessages(ipsetCmdAdd, d.name, adds[i])
		msgs, what = append(msgs, m...), append(what, w...)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err = x.batch(msgs, what)
	s.noteClamped(ch.Delete, ch.Add)
	if err != nil {
		return fmt.Errorf("apply %d deletes, %d adds: %w", len(ch.Delete), len(ch.Add), err)
	}
	return nil
}

// Counters implements Firewall: the drop rules' counters from
// iptables-save -c of both families.
func (s *IPSet) Counters(ctx context.Context) (Counters, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out Counters
	slots := []*Counter{&out.Ban4, &out.Net4, &out.Ban6, &out.Net6,
		&out.Scoped.Ban4, &out.Scoped.Net4, &out.Scoped.Ban6, &out.Scoped.Net6}
	for _, v6 := range []bool{false, true} {
		t, err := s.readRaw(ctx, v6, true)
		if err != nil {
			return Counters{}, fmt.Errorf("read counters: %w", err)
		}
		for _, r := range t.chainRules(IPTablesChain) {
			set := r.arg("--match-set")
			if i := slices.IndexFunc(ipsetDefs, func(d ipsetDef) bool { return d.name == set }); i >= 0 && r.target() == "DROP" {
				*slots[i] = Counter{Packets: r.Packets, Bytes: r.Bytes}
			}
		}
	}
	return out, ctx.Err()
}

// Elements implements Firewall: it dumps the eight sets, each element with
// the time the kernel still keeps it. nil when none of the sets exists.
func (s *IPSet) Elements(ctx context.Context) ([]Element, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	x, err := dialIPSet(s.netns)
	if err != nil {
		return nil, err
	}
	defer x.Close()
	var out []Element
	found := false
	for _, d := range ipsetDefs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, entries, ok, err := x.list(d.name)
		if err != nil {
			return nil, fmt.Errorf("read ban sets: %w", err)
		}
		if !ok {
			continue
		}
		if p := setProblem(&h, d); p != "" {
			return nil, fmt.Errorf("read ban sets: %w: %s", ErrForeignIPSet, p)
		}
		found = true
		for _, e := range entries {
			out = append(out, Element{Prefix: e.Prefix, TTL: time.Duration(e.Timeout) * time.Second, Scoped: d.scoped})
		}
	}
	if !found {
		return nil, nil
	}
	return out, nil
}

// Remove deletes everything Setup made: the jumps, the chains, the sets
// (those of ctguard's definition only; anything else of the names is left
// alone and named in the error). For switching backends and for tests.
func (s *IPSet) Remove(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	x, err := dialIPSet(s.netns)
	if err != nil {
		return err
	}
	defer x.Close()
	var st ipsetState
	if st.live, st.tmp, err = s.readSets(x, true); err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	for i := range st.raw {
		if st.raw[i], err = s.readRaw(ctx, i == 1, false); err != nil {
			return fmt.Errorf("remove: %w", err)
		}
	}
	if why := s.foreign(st); why != "" {
		return fmt.Errorf("remove: %w: %s", ErrForeignIPSet, why)
	}
	for i, t := range st.raw {
		if err := s.restore(ctx, i == 1, removeScript(t)); err != nil {
			return fmt.Errorf("remove: %w", err)
		}
	}
	var errs []error
	for i := range ipsetDefs {
		for _, h := range []*ipsetHeader{st.live[i], st.tmp[i]} {
			if h == nil {
				continue
			}
			if err := x.destroy(h.Name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	clear(s.clamped)
	return errors.Join(errs...)
}

var _ Firewall = (*IPSet)(nil)
