// Package prefixset is a set of IP prefixes, each carrying a value, that
// answers the questions bans raise: which entry holds this address, which
// entry contains this prefix, which entries lie inside it. A lookup costs
// one map probe per distinct prefix length in the address's family,
// however many entries there are. It is pure: no I/O, no locking (callers
// that share a Set guard it themselves).
//
// Entries are keyed by their canonical form (see Canonical), so
// 192.0.2.9/24, 192.0.2.0/24 and ::ffff:192.0.2.0/120 are one entry, and
// an IPv4 /24 never meets an IPv6 /24. The IPv4-mapped range is IPv4's:
// ::ffff:192.0.2.1 is looked up as 192.0.2.1, and no IPv6 entry (not even
// ::/0) holds it.
//
// When several entries hold an address, Lookup returns the one whose
// length came into the set first; Covering returns the widest.
package prefixset

import (
	"cmp"
	"encoding/binary"
	"iter"
	"net/netip"
	"slices"
)

// Canonical returns the form a Set keys p by: without a zone, masked, and
// an IPv4-mapped IPv6 prefix of at least /96 as the IPv4 prefix it maps
// (::ffff:192.0.2.1/128 is 192.0.2.1/32, ::ffff:192.0.2.0/120 is
// 192.0.2.0/24, ::ffff:0:0/96 is 0.0.0.0/0). A prefix wider than /96 also
// holds addresses outside the mapped range and stays IPv6 (::ffff:0:0/80
// is ::/80). The invalid Prefix stays invalid.
//
// This is conntrack's canonical form for addresses (::ffff:a.b.c.d is
// a.b.c.d), carried over to mapped prefixes shorter than /128 the way
// enforce.ParseTarget and the allowlist read them: conntrack's older
// helper clamped the length to 32 instead, which made ::ffff:192.0.2.0/120
// the single address 192.0.2.0.
func Canonical(p netip.Prefix) netip.Prefix {
	if !p.IsValid() {
		return netip.Prefix{}
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96).Masked()
	}
	return p.Masked() // Masked drops the zone
}

// Set is a set of canonical prefixes, each with a value of type V. The
// zero Set is empty and ready to use; a Set must not be copied after its
// first Add.
//
// Each family keeps one map per prefix length present, keyed by the masked
// address as a number (uint32, or two uint64 for IPv6): a probe hashes 4
// or 16 bytes, and a table of 100,000 bans stays small enough to keep
// conntrack's batch purge fast.
type Set[V any] struct {
	v4 family[uint32, V]
	v6 family[key6, V]
	n  int
}

// key6 is an IPv6 address as a number.
type key6 struct{ hi, lo uint64 }

// family holds the entries of one address family.
type family[K comparable, V any] struct {
	byLen  []map[K]V // by prefix length; nil until one is added
	order  []uint8   // the lengths present, in the order each came into the set: Lookup's order
	sorted []uint8   // the same lengths, shortest first: Covering's order
}

func key4(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

func keyOf6(a netip.Addr) key6 {
	b := a.As16()
	return key6{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// mask4 keeps the first bits of k (0 to 32).
func mask4(k uint32, bits uint8) uint32 { return k &^ (^uint32(0) >> bits) }

// mask6 keeps the first bits of k (0 to 128).
func mask6(k key6, bits uint8) key6 {
	if bits <= 64 {
		return key6{k.hi &^ (^uint64(0) >> bits), 0}
	}
	return key6{k.hi, k.lo &^ (^uint64(0) >> (bits - 64))}
}

func prefix4(k uint32, bits uint8) netip.Prefix {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], k)
	return netip.PrefixFrom(netip.AddrFrom4(b), int(bits))
}

func prefix6(k key6, bits uint8) netip.Prefix {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], k.hi)
	binary.BigEndian.PutUint64(b[8:], k.lo)
	return netip.PrefixFrom(netip.AddrFrom16(b), int(bits))
}

func (f *family[K, V]) get(bits uint8, k K) (V, bool) {
	if int(bits) >= len(f.byLen) {
		var zero V
		return zero, false
	}
	v, ok := f.byLen[bits][k]
	return v, ok
}

func (f *family[K, V]) add(bits uint8, k K, v V, maxBits int) bool {
	if f.byLen == nil {
		f.byLen = make([]map[K]V, maxBits+1)
	}
	m := f.byLen[bits]
	if m == nil {
		m = map[K]V{}
		f.byLen[bits] = m
		f.order = append(f.order, bits)
		i, _ := slices.BinarySearch(f.sorted, bits)
		f.sorted = slices.Insert(f.sorted, i, bits)
	}
	_, had := m[k]
	m[k] = v
	return !had
}

func (f *family[K, V]) del(bits uint8, k K) bool {
	if int(bits) >= len(f.byLen) {
		return false
	}
	m := f.byLen[bits]
	if _, ok := m[k]; !ok {
		return false
	}
	delete(m, k)
	if len(m) == 0 {
		f.byLen[bits] = nil
		f.order = slices.DeleteFunc(f.order, func(x uint8) bool { return x == bits })
		i, _ := slices.BinarySearch(f.sorted, bits)
		f.sorted = slices.Delete(f.sorted, i, i+1)
	}
	return true
}

// Len returns the number of entries.
func (s *Set[V]) Len() int { return s.n }

// Add stores v for p (in its canonical form), replacing the value of an
// existing entry, and reports whether p is a new entry. An invalid p is
// ignored (false).
func (s *Set[V]) Add(p netip.Prefix, v V) bool {
	p = Canonical(p)
	var added bool
	switch bits := uint8(p.Bits()); {
	case !p.IsValid():
		return false
	case p.Addr().Is4():
		added = s.v4.add(bits, key4(p.Addr()), v, 32)
	default:
		added = s.v6.add(bits, keyOf6(p.Addr()), v, 128)
	}
	if added {
		s.n++
	}
	return added
}

// Delete removes p's entry and reports whether there was one. A length
// whose last entry goes leaves Lookup's order; when it comes back, it
// comes last.
func (s *Set[V]) Delete(p netip.Prefix) bool {
	p = Canonical(p)
	var gone bool
	switch bits := uint8(p.Bits()); {
	case !p.IsValid():
		return false
	case p.Addr().Is4():
		gone = s.v4.del(bits, key4(p.Addr()))
	default:
		gone = s.v6.del(bits, keyOf6(p.Addr()))
	}
	if gone {
		s.n--
	}
	return gone
}

// Get returns the value of p's entry (p itself, in its canonical form).
func (s *Set[V]) Get(p netip.Prefix) (V, bool) {
	p = Canonical(p)
	switch bits := uint8(p.Bits()); {
	case !p.IsValid():
		var zero V
		return zero, false
	case p.Addr().Is4():
		return s.v4.get(bits, key4(p.Addr()))
	default:
		return s.v6.get(bits, keyOf6(p.Addr()))
	}
}

// Lookup returns an entry that holds a, with its value. When several do
// (a /24 and an address in it), the winner is the entry at the length
// that came into the set first: lengths are probed in the order they were
// first added, per family, so a Set built by adding a list in order
// resolves to the first length listed (conntrack's batch purge relies on
// this; the order is Add's, not the lengths'). A length whose last entry
// is deleted drops out and, added again, comes last.
//
// An IPv4-mapped address is looked up as the IPv4 address it maps; a
// zone is ignored. It allocates nothing.
func (s *Set[V]) Lookup(a netip.Addr) (netip.Prefix, V, bool) {
	var zero V
	switch {
	case s.n == 0 || !a.IsValid():
	case a.Is4() || a.Is4In6():
		k := key4(a.Unmap())
		for _, bits := range s.v4.order {
			if v, ok := s.v4.byLen[bits][mask4(k, bits)]; ok {
				return prefix4(mask4(k, bits), bits), v, true
			}
		}
	default:
		k := keyOf6(a)
		for _, bits := range s.v6.order {
			if v, ok := s.v6.byLen[bits][mask6(k, bits)]; ok {
				return prefix6(mask6(k, bits), bits), v, true
			}
		}
	}
	return netip.Prefix{}, zero, false
}

// Covering returns the widest entry that strictly contains p: a shorter
// prefix holding p's addresses; p's own entry does not count (Get asks for
// that). It probes each shorter length present once.
func (s *Set[V]) Covering(p netip.Prefix) (netip.Prefix, V, bool) {
	var zero V
	p = Canonical(p)
	switch {
	case s.n == 0 || !p.IsValid():
	case p.Addr().Is4():
		k := key4(p.Addr())
		for _, bits := range s.v4.sorted {
			if int(bits) >= p.Bits() {
				break
			}
			if v, ok := s.v4.byLen[bits][mask4(k, bits)]; ok {
				return prefix4(mask4(k, bits), bits), v, true
			}
		}
	default:
		k := keyOf6(p.Addr())
		for _, bits := range s.v6.sorted {
			if int(bits) >= p.Bits() {
				break
			}
			if v, ok := s.v6.byLen[bits][mask6(k, bits)]; ok {
				return prefix6(mask6(k, bits), bits), v, true
			}
		}
	}
	return netip.Prefix{}, zero, false
}

// Inside returns the entries strictly inside p (longer prefixes within
// it; p's own entry does not count), sorted by address, then length. It
// walks the entries longer than p: its cost grows with them, not with
// the answer.
func (s *Set[V]) Inside(p netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for q := range s.inside(p) {
		out = append(out, q)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	return out
}

// inside yields the entries strictly inside p, in no particular order.
func (s *Set[V]) inside(p netip.Prefix) iter.Seq[netip.Prefix] {
	return func(yield func(netip.Prefix) bool) {
		p = Canonical(p)
		switch w := uint8(p.Bits()); {
		case !p.IsValid():
		case p.Addr().Is4():
			pk := key4(p.Addr())
			for _, bits := range s.v4.sorted {
				if bits <= w {
					continue
				}
				for k := range s.v4.byLen[bits] {
					if mask4(k, w) == pk && !yield(prefix4(k, bits)) {
						return
					}
				}
			}
		default:
			pk := keyOf6(p.Addr())
			for _, bits := range s.v6.sorted {
				if bits <= w {
					continue
				}
				for k := range s.v6.byLen[bits] {
					if mask6(k, w) == pk && !yield(prefix6(k, bits)) {
						return
					}
				}
			}
		}
	}
}

// Overlaps reports whether an entry shares an address with p: p's own
// entry, one containing p or one inside it.
func (s *Set[V]) Overlaps(p netip.Prefix) bool {
	if _, ok := s.Get(p); ok {
		return true
	}
	if _, _, ok := s.Covering(p); ok {
		return true
	}
	for range s.inside(p) {
		return true
	}
	return false
}

// All yields every entry with its value, in no particular order. The Set
// must not change during the iteration, except by deleting the entry just
// yielded.
func (s *Set[V]) All() iter.Seq2[netip.Prefix, V] {
	return func(yield func(netip.Prefix, V) bool) {
		for _, bits := range slices.Clone(s.v4.sorted) {
			for k, v := range s.v4.byLen[bits] {
				if !yield(prefix4(k, bits), v) {
					return
				}
			}
		}
		for _, bits := range slices.Clone(s.v6.sorted) {
			for k, v := range s.v6.byLen[bits] {
				if !yield(prefix6(k, bits), v) {
					return
				}
			}
		}
	}
}
