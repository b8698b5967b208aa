package prefixset

import (
	"cmp"
	"net/netip"
	"slices"
	"testing"
)

// FuzzSet runs a sequence of adds, deletes and queries on a Set and on a
// brute-force reference (a list of entries searched linearly) and compares
// every answer. Seeds: testdata/fuzz/FuzzSet. Run it with
//
//	go test ./internal/prefixset -run '^$' -fuzz FuzzSet -fuzztime 60s
//
// The input is read 4 bytes at a time: an op byte, a length byte and two
// address bytes. The op's low 2 bits say what to do (0, 1: add, 2: delete,
// 3: query); the next 2 which kind of prefix, all drawn from small ranges
// so that they overlap a lot: 198.51.x.y, x.y.x.y, 2001:db8:x::y, or
// ::ffff:198.51.x.y (any length, so also mapped prefixes wider than /96).
func FuzzSet(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		var s Set[int]
		var ref reference
		for i := 0; len(data) >= 4; i, data = i+1, data[4:] {
			p := fuzzPrefix(data)
			switch data[0] & 3 {
			case 0, 1:
				if got, want := s.Add(p, i), ref.add(p, i); got != want {
					t.Fatalf("op %d: Add(%s) = %v, want %v", i, p, got, want)
				}
			case 2:
				if got, want := s.Delete(p), ref.del(p); got != want {
					t.Fatalf("op %d: Delete(%s) = %v, want %v", i, p, got, want)
				}
			case 3:
				checkQueries(t, &s, &ref, p)
			}
			if s.Len() != len(ref.entries) {
				t.Fatalf("op %d: Len = %d, want %d", i, s.Len(), len(ref.entries))
			}
		}
		all := map[netip.Prefix]int{}
		for p, v := range s.All() {
			all[p] = v
		}
		for _, e := range ref.entries {
			if v, ok := all[e.p]; !ok || v != e.v {
				t.Fatalf("All: %s = %d %v, want %d", e.p, v, ok, e.v)
			}
		}
		if len(all) != len(ref.entries) {
			t.Fatalf("All yielded %d entries, want %d", len(all), len(ref.entries))
		}
	})
}

func fuzzPrefix(b []byte) netip.Prefix {
	x, y := b[2], b[3]
	switch b[0] >> 2 & 3 {
	case 0:
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, x, y}), int(b[1])%33)
	case 1:
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{x, y, x, y}), int(b[1])%33)
	case 2:
		return netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, x, 15: y}), int(b[1])%129)
	default:
		return netip.PrefixFrom(netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: 198, 13: 51, 14: x, 15: y}), int(b[1])%129)
	}
}

func checkQueries(t *testing.T, s *Set[int], ref *reference, p netip.Prefix) {
	t.Helper()
	if v, ok := s.Get(p); ok != (ref.find(p) >= 0) || ok && v != ref.entries[ref.find(p)].v {
		t.Fatalf("Get(%s) = %d %v", p, v, ok)
	}
	for _, a := range []netip.Addr{p.Addr(), lastAddr(p), p.Addr().WithZone("z")} {
		gp, gv, ok := s.Lookup(a)
		wp, wv, wok := ref.lookup(a)
		if gp != wp || gv != wv || ok != wok {
			t.Fatalf("Lookup(%s) = %s %d %v, want %s %d %v", a, gp, gv, ok, wp, wv, wok)
		}
	}
	gp, gv, ok := s.Covering(p)
	wp, wv, wok := ref.covering(p)
	if gp != wp || gv != wv || ok != wok {
		t.Fatalf("Covering(%s) = %s %d %v, want %s %d %v", p, gp, gv, ok, wp, wv, wok)
	}
	if got, want := s.Inside(p), ref.inside(p); !slices.Equal(got, want) {
		t.Fatalf("Inside(%s) = %v, want %v", p, got, want)
	}
	if got, want := s.Overlaps(p), ref.overlaps(p); got != want {
		t.Fatalf("Overlaps(%s) = %v, want %v", p, got, want)
	}
}

// lastAddr is the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b) // a mapped prefix's stays mapped: 16 bytes
	return a
}

// reference is a Set the slow way: a list of entries, every question a
// linear search with netip's own Contains and Overlaps.
type reference struct {
	entries []refEntry
	order   [2][]int // per family, the lengths present in the order they came
}

type refEntry struct {
	p netip.Prefix
	v int
}

// refCanon is Canonical written out: a mapped prefix of /96 or longer is
// IPv4, then the host bits are cleared by hand.
func refCanon(p netip.Prefix) netip.Prefix {
	if !p.IsValid() {
		return netip.Prefix{}
	}
	a, bits := p.Addr(), p.Bits()
	if a.Is4In6() && bits >= 96 {
		a, bits = netip.AddrFrom4(a.As4()), bits-96
	}
	b := a.AsSlice()
	for i := bits; i < len(b)*8; i++ {
		b[i/8] &^= 0x80 >> (i % 8)
	}
	a, _ = netip.AddrFromSlice(b)
	return netip.PrefixFrom(a, bits)
}

func refFamily(p netip.Prefix) int {
	if p.Addr().BitLen() == 32 {
		return 0
	}
	return 1
}

func (r *reference) find(p netip.Prefix) int {
	p = refCanon(p)
	return slices.IndexFunc(r.entries, func(e refEntry) bool { return e.p == p })
}

func (r *reference) count(fam, bits int) int {
	n := 0
	for _, e := range r.entries {
		if refFamily(e.p) == fam && e.p.Bits() == bits {
			n++
		}
	}
	return n
}

func (r *reference) add(p netip.Prefix, v int) bool {
	if !p.IsValid() {
		return false
	}
	if i := r.find(p); i >= 0 {
		r.entries[i].v = v
		return false
	}
	p = refCanon(p)
	f := refFamily(p)
	if r.count(f, p.Bits()) == 0 {
		r.order[f] = append(r.order[f], p.Bits())
	}
	r.entries = append(r.entries, refEntry{p, v})
	return true
}

func (r *reference) del(p netip.Prefix) bool {
	i := r.find(p)
	if i < 0 {
		return false
	}
	p = r.entries[i].p
	r.entries = slices.Delete(r.entries, i, i+1)
	f := refFamily(p)
	if r.count(f, p.Bits()) == 0 {
		r.order[f] = slices.DeleteFunc(r.order[f], func(b int) bool { return b == p.Bits() })
	}
	return true
}

// lookup: of the entries holding a, the one whose length came first.
func (r *reference) lookup(a netip.Addr) (netip.Prefix, int, bool) {
	a = a.WithZone("")
	if a.Is4In6() {
		a = netip.AddrFrom4(a.As4())
	}
	f := refFamily(netip.PrefixFrom(a, 0))
	best, rank := -1, 0
	for i, e := range r.entries {
		if !e.p.Contains(a) {
			continue
		}
		if k := slices.Index(r.order[f], e.p.Bits()); best < 0 || k < rank {
			best, rank = i, k
		}
	}
	if best < 0 {
		return netip.Prefix{}, 0, false
	}
	return r.entries[best].p, r.entries[best].v, true
}

// covering: the shortest entry holding p's first address, shorter than p.
func (r *reference) covering(p netip.Prefix) (netip.Prefix, int, bool) {
	p = refCanon(p)
	best := -1
	for i, e := range r.entries {
		if e.p.Bits() < p.Bits() && e.p.Contains(p.Addr()) && (best < 0 || e.p.Bits() < r.entries[best].p.Bits()) {
			best = i
		}
	}
	if best < 0 {
		return netip.Prefix{}, 0, false
	}
	return r.entries[best].p, r.entries[best].v, true
}

func (r *reference) inside(p netip.Prefix) []netip.Prefix {
	p = refCanon(p)
	var out []netip.Prefix
	for _, e := range r.entries {
		if e.p.Bits() > p.Bits() && p.Contains(e.p.Addr()) {
			out = append(out, e.p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), a.Bits()-b.Bits())
	})
	return out
}

func (r *reference) overlaps(p netip.Prefix) bool {
	p = refCanon(p)
	return slices.ContainsFunc(r.entries, func(e refEntry) bool { return e.p.Overlaps(p) })
}
