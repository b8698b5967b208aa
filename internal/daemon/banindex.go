package daemon

import (
	"net/netip"

	"github.com/ctguard/ctguard/internal/prefixset"
	"github.com/ctguard/ctguard/internal/store"
)

// banIndex answers the policy's questions about active bans.
type banIndex struct {
	// bans holds every active ban with its origin (a store.Origin*
	// string): an operator's bans are decisions about those targets only,
	// never evidence against their neighbours, so they do not count toward
	// prefix bans. The active index tells only an operator's bans from the
	// rest, so every other ban is recorded as store.OriginAuto: adopted
	// bans count as the policy's, as they always have.
	bans  prefixset.Set[string]
	hosts map[netip.Prefix]int // grouping prefix -> automatic single-address bans inside

	v4Bits, v6Bits int
}

// newBanIndex indexes the active bans; v4Bits and v6Bits are the lengths
// the snapshot groups sources by.
func newBanIndex(active []store.Active, v4Bits, v6Bits int) *banIndex {
	b := &banIndex{hosts: map[netip.Prefix]int{}, v4Bits: v4Bits, v6Bits: v6Bits}
	for _, a := range active {
		origin := store.OriginAuto
		if a.Manual {
			origin = store.OriginManual
		}
		b.bans.Add(a.Prefix, origin)
		if !a.Prefix.IsSingleIP() || a.Manual {
			continue
		}
		if k, err := a.Prefix.Addr().Prefix(b.groupBits(a.Prefix.Addr())); err == nil {
			b.hosts[k]++
		}
	}
	return b
}

// groupBits is the length the snapshot groups a's family by.
func (b *banIndex) groupBits(a netip.Addr) int {
	if a.Is6() {
		return b.v6Bits
	}
	return b.v4Bits
}

// covered reports whether an active ban is p or contains it.
func (b *banIndex) covered(p netip.Prefix) bool {
	if _, ok := b.bans.Get(p); ok {
		return true
	}
	_, _, ok := b.bans.Covering(p)
	return ok
}

// hostsIn counts the active single-address bans inside p (a grouping
// prefix of the snapshot).
func (b *banIndex) hostsIn(p netip.Prefix) int { return b.hosts[p] }

// groupsIn lists the grouping prefixes inside a wider prefix w that hold
// an active automatic ban: of an address, of the grouping prefix itself,
// or of a prefix between the two (which counts as one).
func (b *banIndex) groupsIn(w netip.Prefix) []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	for g := range b.hosts {
		if w.Contains(g.Addr()) {
			seen[g] = true
		}
	}
	for _, n := range b.bans.Inside(w) {
		if origin, _ := b.bans.Get(n); n.IsSingleIP() || origin == store.OriginManual {
			continue // counted in hosts if automatic
		}
		if bits := b.groupBits(n.Addr()); n.Bits() >= bits {
			n, _ = n.Addr().Prefix(bits)
		}
		seen[n] = true
	}
	out := make([]netip.Prefix, 0, len(seen))
	for g := range seen {
		out = append(out, g)
	}
	return out
}
