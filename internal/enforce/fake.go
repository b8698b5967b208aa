package enforce

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/sockets"
)

// Fake is an in-memory Firewall for tests and dry runs. It models what the
// engine relies on: per-element expiry, interval sets refusing overlapping
// prefixes, deletes of expired elements, and a table that can vanish.
type Fake struct {
	mu     sync.Mutex
	now    func() time.Time
	elems  map[netip.Prefix]time.Time // prefix -> expiry
	scoped map[netip.Prefix]bool      // prefix -> in a scoped set (SSH ports open)
	id     TableID
	seq    TableID
	ok     bool
	// Calls counts Setup and Apply calls, to show what the engine did.
	Setups, Applies int
	// FailApply, when set, is returned by the next Apply (and cleared).
	FailApply error
	// DropCounters is what Counters returns (tests set it; the fake drops
	// nothing).
	DropCounters Counters
}

// NewFake returns a fake whose table does not exist yet. now may be nil.
func NewFake(now func() time.Time) *Fake {
	if now == nil {
		now = time.Now
	}
	return &Fake{now: now, elems: map[netip.Prefix]time.Time{}, scoped: map[netip.Prefix]bool{}}
}

func (f *Fake) expire() {
	now := f.now()
	for p, exp := range f.elems {
		if !exp.After(now) {
			delete(f.elems, p)
			delete(f.scoped, p)
		}
	}
}

func (f *Fake) add(e Element) error {
	if e.TTL <= 0 {
		return fmt.Errorf("add %s: no timeout", e.Prefix)
	}
	if _, ok := f.elems[e.Prefix]; ok && f.scoped[e.Prefix] != e.Scoped {
		// The kernel would hold it in both sets; the engine never asks.
		return fmt.Errorf("add %s (scoped %v): already in the other set", e.Prefix, e.Scoped)
	}
	if !isHost(e.Prefix) {
		for q := range f.elems {
			if !isHost(q) && q != e.Prefix && q.Overlaps(e.Prefix) && f.scoped[q] == e.Scoped {
				return fmt.Errorf("add %s: interval overlaps with %s", e.Prefix, q)
			}
		}
	}
	f.elems[e.Prefix] = f.now().Add(e.TTL)
	f.scoped[e.Prefix] = e.Scoped
	return nil
}

// Setup implements Firewall.
func (f *Fake) Setup(ctx context.Context, elems []Element) (TableID, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Setups++
	old, oldScoped := f.elems, f.scoped
	f.elems, f.scoped = map[netip.Prefix]time.Time{}, map[netip.Prefix]bool{}
	for _, e := range elems {
		if err := f.add(e); err != nil {
			f.elems, f.scoped = old, oldScoped // atomic: all or nothing
			return 0, fmt.Errorf("setup: %w", err)
		}
	}
	f.seq++
	f.id, f.ok = f.seq, true
	return f.id, nil
}

// Check implements Firewall.
func (f *Fake) Check(ctx context.Context, want TableID) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case !f.ok:
		return "table inet " + TableName + " is missing", nil
	case want != 0 && want != f.id:
		return "table inet " + TableName + " was replaced", nil
	}
	return "", nil
}

// Apply implements Firewall.
func (f *Fake) Apply(ctx context.Context, c Change) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Applies++
	if err := f.FailApply; err != nil {
		f.FailApply = nil
		return err
	}
	if !f.ok {
		return errors.New("apply: table inet ctguard does not exist")
	}
	f.expire()
	old, oldScoped := maps.Clone(f.elems), maps.Clone(f.scoped)
	for _, d := range c.Delete {
		// An element that already expired is not an error; one in the
		// other set is not touched (the kernel looks in the named set only).
		if _, ok := f.elems[d.Prefix]; ok && f.scoped[d.Prefix] == d.Scoped {
			delete(f.elems, d.Prefix)
			delete(f.scoped, d.Prefix)
		}
	}
	for _, e := range c.Add {
		if err := f.add(e); err != nil {
			f.elems, f.scoped = old, oldScoped
			return fmt.Errorf("apply: %w", err)
		}
	}
	return nil
}

// Counters implements Firewall: DropCounters, zero unless a test set it (the
// fake drops nothing).
func (f *Fake) Counters(ctx context.Context) (Counters, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.DropCounters, nil
}

// Elements implements Firewall.
func (f *Fake) Elements(ctx context.Context) ([]Element, error) {
	f.mu.Lock()
	ok := f.ok
	f.mu.Unlock()
	if !ok {
		return nil, nil
	}
	return f.Snapshot(), nil
}

// Flush simulates `nft flush ruleset`: the table and all elements vanish.
func (f *Fake) Flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ok = false
	f.elems = map[netip.Prefix]time.Time{}
	f.scoped = map[netip.Prefix]bool{}
}

// Snapshot returns the unexpired elements and their remaining time, sorted.
func (f *Fake) Snapshot() []Element {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expire()
	out := make([]Element, 0, len(f.elems))
	for p, exp := range f.elems {
		out = append(out, Element{Prefix: p, TTL: exp.Sub(f.now()), Scoped: f.scoped[p]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Prefix.String() < out[j].Prefix.String() })
	return out
}

// Drops reports whether a packet from a to a port other than SSH would be
// dropped.
func (f *Fake) Drops(a netip.Addr) bool { return f.drops(a, false) }

// DropsSSH reports whether a TCP packet from a to an SSH port would be
// dropped (only full bans drop it).
func (f *Fake) DropsSSH(a netip.Addr) bool { return f.drops(a, true) }

func (f *Fake) drops(a netip.Addr, ssh bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expire()
	for p := range f.elems {
		if p.Contains(a) && (!ssh || !f.scoped[p]) {
			return true
		}
	}
	return false
}

var _ Firewall = (*Fake)(nil)

// FakePurger is an in-memory conntrack table: a count of entries per source
// address, and separately of its TCP entries to the SSH ports.
type FakePurger struct {
	mu      sync.Mutex
	Entries map[netip.Addr]int
	SSH     map[netip.Addr]int
	// Refill, when set, is how many entries a source regains right after a
	// purge (a source the ban did not stop), to exercise the re-count.
	Refill int
	Err    error
	// Passes counts calls, to show whether the batch path ran.
	Passes int
}

// PurgeSource implements Purger.
func (p *FakePurger) PurgeSource(ctx context.Context, pfx netip.Prefix) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.Passes++
	if p.Err != nil {
		return 0, p.Err
	}
	n := 0
	for a, c := range p.Entries {
		if pfx.Contains(a) {
			n += c
			p.Entries[a] = p.Refill
		}
	}
	for a, c := range p.SSH {
		if pfx.Contains(a) {
			n += c
			p.SSH[a] = 0
		}
	}
	return n, nil
}

// CountSource implements Purger.
func (p *FakePurger) CountSource(ctx context.Context, pfx netip.Prefix) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.Passes++
	if p.Err != nil {
		return 0, p.Err
	}
	n := 0
	for _, m := range []map[netip.Addr]int{p.Entries, p.SSH} {
		for a, c := range m {
			if pfx.Contains(a) {
				n += c
			}
		}
	}
	return n, nil
}

// FakeBatchPurger adds the one-pass methods of BatchPurger.
type FakeBatchPurger struct{ FakePurger }

// PurgeSources implements BatchPurger in one pass.
func (p *FakeBatchPurger) PurgeSources(ctx context.Context, ps []netip.Prefix) ([]int, error) {
	return p.many(ps, true, false)
}

// CountSources implements BatchPurger in one pass.
func (p *FakeBatchPurger) CountSources(ctx context.Context, ps []netip.Prefix) ([]int, error) {
	return p.many(ps, false, false)
}

// PurgeSourcesKeeping implements KeepingPurger: SSH entries stay.
func (p *FakePurger) PurgeSourcesKeeping(ctx context.Context, ps []netip.Prefix, _ []uint16) ([]int, error) {
	return p.many(ps, true, true)
}

// CountSourcesKeeping implements KeepingPurger.
func (p *FakePurger) CountSourcesKeeping(ctx context.Context, ps []netip.Prefix, _ []uint16) ([]int, error) {
	return p.many(ps, false, true)
}

func (p *FakePurger) many(ps []netip.Prefix, purge, keepSSH bool) ([]int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.Passes++
	out := make([]int, len(ps))
	if p.Err != nil {
		return out, p.Err
	}
	tables := []map[netip.Addr]int{p.Entries}
	if !keepSSH {
		tables = append(tables, p.SSH)
	}
	for ti, m := range tables {
		for a, c := range m {
			for i, pfx := range ps {
				if pfx.Contains(a) {
					out[i] += c
					if purge {
						m[a] = 0
						if ti == 0 {
							m[a] = p.Refill
						}
					}
					break
				}
			}
		}
	}
	return out, nil
}

var (
	_ BatchPurger   = (*FakeBatchPurger)(nil)
	_ KeepingPurger = (*FakePurger)(nil)
)

// FakeTable is a FakeBatchPurger that also holds whole entries, for the
// valve (EntryPurger). Entries and the per-source counts are independent.
type FakeTable struct {
	FakeBatchPurger
	Table []conntrack.Entry
}

// Dump implements EntryPurger (options are ignored).
func (p *FakeTable) Dump(ctx context.Context, o conntrack.DumpOptions, fn func(*conntrack.Entry) error) error {
	p.mu.Lock()
	es := slices.Clone(p.Table)
	p.mu.Unlock()
	for i := range es {
		if err := fn(&es[i]); err != nil {
			return err
		}
	}
	return nil
}

// DeleteEntries implements EntryPurger: it deletes by original tuple.
func (p *FakeTable) DeleteEntries(ctx context.Context, es []conntrack.Entry) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, e := range es {
		if i := slices.IndexFunc(p.Table, func(x conntrack.Entry) bool { return x.Orig == e.Orig && x.Proto == e.Proto }); i >= 0 {
			p.Table = slices.Delete(p.Table, i, i+1)
			n++
		}
	}
	return n, nil
}

var _ EntryPurger = (*FakeTable)(nil)

// FakeCloser records the socket closes a ban asks for and answers with
// Counts per target (0 when short), or Err.
type FakeCloser struct {
	mu      sync.Mutex
	Calls   [][]sockets.Target
	Counts  []int
	Err     error
	Spared  []netip.Addr // peers the spare function was asked about and spared
	AskOver []netip.Addr // peers to ask the spare function about
}

// CloseSockets implements SocketCloser.
func (c *FakeCloser) CloseSockets(ctx context.Context, ts []sockets.Target, spare func(netip.Addr) bool) ([]int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.Calls = append(c.Calls, slices.Clone(ts))
	for _, a := range c.AskOver {
		if spare != nil && spare(a) {
			c.Spared = append(c.Spared, a)
		}
	}
	out := make([]int, len(ts))
	copy(out, c.Counts)
	return out, c.Err
}

var _ SocketCloser = (*FakeCloser)(nil)
