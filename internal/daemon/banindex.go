package daemon

import (
	"net/netip"

	"github.com/ctguard/ctguard/internal/store"
)

// banIndex answers the policy's questions about active bans.
type banIndex struct {
	all   map[netip.Prefix]bool
	nets  []netip.Prefix
	hosts map[netip.Prefix]int // grouping prefix -> automatic single-address bans inside
	// autoNets are the prefix bans the policy made: an operator's bans are
	// decisions about those targets only, never evidence against their
	// neighbours, so they do not count toward prefix bans.
	autoNets []netip.Prefix

	v4Bits, v6Bits int
}

// newBanIndex indexes the active bans; v4Bits and v6Bits are the lengths
// the snapshot groups sources by.
func newBanIndex(active []store.Active, v4Bits, v6Bits int) *banIndex {
	b := &banIndex{all: make(map[netip.Prefix]bool, len(active)), hosts: map[netip.Prefix]int{}, v4Bits: v4Bits, v6Bits: v6Bits}
	for _, a := range active {
		b.all[a.Prefix] = true
		if !a.Prefix.IsSingleIP() {
			b.nets = append(b.nets, a.Prefix)
			if !a.Manual {
				b.autoNets = append(b.autoNets, a.Prefix)
			}
			continue
		}
		if a.Manual {
			continue
		}
		bits := v4Bits
		if a.Prefix.Addr().Is6() {
			bits = v6Bits
		}
		if k, err := a.Prefix.Addr().Prefix(bits); err == nil {
			b.hosts[k]++
		}
	}
	return b
}

// covered reports whether an active ban is p or contains it.
func (b *banIndex) covered(p netip.Prefix) bool {
	if b.all[p] {
		return true
	}
	for _, n := range b.nets {
		if n.Bits() <= p.Bits() && n.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// hostsIn counts the active single-address bans inside p (a grouping
// prefix of the snapshot).
func (b *banIndex) hostsIn(p netip.Prefix) int { return b.hosts[p] }

// groupsIn lists the grouping prefixes inside a wider prefix w that hold
// an active ban: of an address, of the grouping prefix itself, or of a
// prefix between the two (which counts as one).
func (b *banIndex) groupsIn(w netip.Prefix) []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	for g := range b.hosts {
		if w.Contains(g.Addr()) {
			seen[g] = true
		}
	}
	for _, n := range b.autoNets {
		if n.Bits() <= w.Bits() || !w.Contains(n.Addr()) {
			continue
		}
		bits := b.v4Bits
		if n.Addr().Is6() {
			bits = b.v6Bits
		}
		if n.Bits() >= bits {
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
