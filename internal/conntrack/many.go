package conntrack

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/ctguard/ctguard/internal/prefixset"
)

// flushBatchMax is where per-address filtered flushes stop paying off: each
// costs a table walk (~90 ms at 262k entries), one dump plus per-entry
// deletes costs about a second plus 10 µs per entry.
const flushBatchMax = 8

// prefixMatcher finds which of a set of prefixes holds an address, with one
// map lookup per distinct prefix length (a prefixset.Set of their indexes).
type prefixMatcher struct {
	set prefixset.Set[int]
}

func newPrefixMatcher(ps []netip.Prefix) *prefixMatcher {
	m := &prefixMatcher{}
	for i, p := range ps {
		if _, dup := m.set.Get(p); !dup {
			m.set.Add(p, i) // the first of duplicates gets their entries
		}
	}
	return m
}

// match returns the index of a prefix that holds a, or -1. Overlapping
// prefixes (a /24 and an address in it) resolve to the first length listed.
// An IPv4-mapped source is an IPv6 flow's: IPv4 prefixes never hold it.
func (m *prefixMatcher) match(a netip.Addr) int {
	if a.Is4In6() {
		return -1
	}
	if _, i, ok := m.set.Lookup(a); ok {
		return i
	}
	return -1
}

// PurgeSources deletes the entries of many sources at once and returns how
// many it deleted for each. Up to a handful of single IPv4 addresses go as
// filtered flushes; otherwise it is one dump, matched here, and batched
// per-entry deletes, whatever the number of prefixes.
func (c *Conn) PurgeSources(ctx context.Context, ps []netip.Prefix) ([]int, error) {
	out := make([]int, len(ps))
	if len(ps) == 0 {
		return out, nil
	}
	flushable := len(ps) <= flushBatchMax
	for _, p := range ps {
		if p = prefixset.Canonical(p); !p.Addr().Is4() || !p.IsSingleIP() {
			flushable = false
		}
	}
	if flushable {
		if sup, known := c.FilteredFlushSupported(); sup || !known {
			for i, p := range ps {
				n, err := c.PurgeSource(ctx, p)
				if err != nil {
					return out, err
				}
				out[i] = n
			}
			return out, nil
		}
	}
	return c.dumpAndDelete(ctx, ps, nil)
}

// PurgeSourcesKeeping is PurgeSources that leaves the sources' TCP entries
// to the given local ports alone (the SSH sessions of a scoped ban). It
// always dumps: kernel-side filters cannot exclude ports.
func (c *Conn) PurgeSourcesKeeping(ctx context.Context, ps []netip.Prefix, keepTCPPorts []uint16) ([]int, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	return c.dumpAndDelete(ctx, ps, keepTCPPorts)
}

// CountSourcesKeeping counts what PurgeSourcesKeeping would delete.
func (c *Conn) CountSourcesKeeping(ctx context.Context, ps []netip.Prefix, keepTCPPorts []uint16) ([]int, error) {
	out := make([]int, len(ps))
	if len(ps) == 0 {
		return out, nil
	}
	m := newPrefixMatcher(ps)
	err := c.Dump(ctx, DumpOptions{}, func(e *Entry) error {
		if i := m.match(e.Orig.Src); i >= 0 && !kept(e, keepTCPPorts) {
			out[i]++
		}
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("count %d sources: %w", len(ps), err)
	}
	return out, nil
}

// kept reports whether e is a TCP entry to one of the local ports.
func kept(e *Entry, tcpPorts []uint16) bool {
	return e.Proto == ProtoTCP && slices.Contains(tcpPorts, e.Orig.DstPort)
}

// dumpAndDelete dumps the table once, matches every entry against ps here
// and deletes the matches in batches, except TCP entries to the keep ports;
// it returns the deletions per prefix.
func (c *Conn) dumpAndDelete(ctx context.Context, ps []netip.Prefix, keep []uint16) ([]int, error) {
	out := make([]int, len(ps))
	m := newPrefixMatcher(ps)
	o := DumpOptions{}
	if len(ps) == 1 {
		p := prefixset.Canonical(ps[0])
		o.Family = familyOf(p.Addr())
		if p.IsSingleIP() && p.Addr().Is4() {
			o.Source = p.Addr() // filtered in the kernel: a walk, no copies
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.prepare(); err != nil {
		return out, err
	}
	var vs []victim
	var owner []int
	seq := c.nextSeq()
	c.buildDump(seq, &o)
	e := &c.entry
	err := c.dump(ctx, "dump for purge", seq, func(typ uint16, b []byte) error {
		if typ&0xff != ctMsgNew {
			return nil
		}
		if err := ParseMessage(b, e); err != nil {
			return err
		}
		if i := m.match(e.Orig.Src); i >= 0 && !kept(e, keep) {
			vs = append(vs, victim{orig: e.Orig, proto: e.Proto, zone: e.Zone, id: e.ID})
			owner = append(owner, i)
		}
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("purge %d sources: %w", len(ps), err)
	}
	if _, err := c.deleteEntries(ctx, vs); err != nil {
		return out, fmt.Errorf("purge %d sources: %w", len(ps), err)
	}
	for _, i := range owner {
		out[i]++
	}
	return out, nil
}

// CountSources counts the entries of many sources in one dump.
func (c *Conn) CountSources(ctx context.Context, ps []netip.Prefix) ([]int, error) {
	out := make([]int, len(ps))
	if len(ps) == 0 {
		return out, nil
	}
	if len(ps) == 1 {
		n, err := c.CountSource(ctx, ps[0])
		out[0] = n
		return out, err
	}
	m := newPrefixMatcher(ps)
	err := c.Dump(ctx, DumpOptions{}, func(e *Entry) error {
		if i := m.match(e.Orig.Src); i >= 0 {
			out[i]++
		}
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("count %d sources: %w", len(ps), err)
	}
	return out, nil
}

// DeleteEntries deletes the given entries (by original tuple, zone and ID)
// and returns how many it deleted; entries already gone count as done, not
// deleted. The emergency valve uses it.
func (c *Conn) DeleteEntries(ctx context.Context, es []Entry) (int, error) {
	vs := make([]victim, len(es))
	for i := range es {
		vs[i] = victim{orig: es[i].Orig, proto: es[i].Proto, zone: es[i].Zone, id: es[i].ID}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.prepare(); err != nil {
		return 0, err
	}
	return c.deleteEntries(ctx, vs)
}
