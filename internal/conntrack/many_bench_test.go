package conntrack

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// BenchmarkPrefixMatcher is the batch purge's hot path: 100,000 ban
// prefixes, one op is one pass over a 262,144-entry table's sources. "new"
// is prefixMatcher (a prefixset.Set), "old" the map-and-lengths matcher it
// replaced, kept here only for this comparison:
//
//	go test ./internal/conntrack -run '^$' -bench PrefixMatcher -benchmem -count 6
func BenchmarkPrefixMatcher(b *testing.B) {
	ps, srcs := purgeWorkload(100_000, 262_144)
	run := func(b *testing.B, match func(netip.Addr) int) {
		b.ReportAllocs()
		hits := 0
		for b.Loop() {
			for _, a := range srcs {
				if match(a) >= 0 {
					hits++
				}
			}
		}
		benchSink = hits
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(srcs)), "ns/lookup")
	}
	b.Run("old", func(b *testing.B) { run(b, newOldPrefixMatcher(ps).match) })
	b.Run("new", func(b *testing.B) { run(b, newPrefixMatcher(ps).match) })
}

var benchSink int

// BenchmarkNewPrefixMatcher builds the matcher for 100,000 prefixes.
func BenchmarkNewPrefixMatcher(b *testing.B) {
	ps, _ := purgeWorkload(100_000, 0)
	b.Run("old", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			newOldPrefixMatcher(ps)
		}
	})
	b.Run("new", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			newPrefixMatcher(ps)
		}
	})
}

// TestPrefixMatcherSameAsOld: on the benchmark's workload the new matcher
// answers like the old one, entry for entry.
func TestPrefixMatcherSameAsOld(t *testing.T) {
	ps, srcs := purgeWorkload(20_000, 50_000)
	ps = append(ps, netip.MustParsePrefix("198.18.0.0/15"), netip.MustParsePrefix("198.18.3.4/32"), ps[7]) // overlaps, a duplicate
	srcs = append(srcs, netip.MustParseAddr("198.18.3.4"), netip.MustParseAddr("::ffff:198.18.3.4"))
	oldm, newm := newOldPrefixMatcher(ps), newPrefixMatcher(ps)
	hits := 0
	for _, a := range srcs {
		o, n := oldm.match(a), newm.match(a)
		if o != n {
			t.Fatalf("match(%s) = %d, the old matcher says %d", a, n, o)
		}
		if n >= 0 {
			hits++
		}
	}
	if hits < len(srcs)/4 {
		t.Fatalf("only %d of %d sources matched: the workload misses the point", hits, len(srcs))
	}
}

// purgeWorkload returns n ban prefixes (IPv4 addresses, /24s, IPv6
// addresses and /64s, the mix a flood leaves) and m conntrack sources,
// about half of them banned.
func purgeWorkload(n, m int) ([]netip.Prefix, []netip.Addr) {
	r := rand.New(rand.NewPCG(1, 2))
	v4 := func() netip.Addr {
		return netip.AddrFrom4([4]byte{byte(1 + r.IntN(222)), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
	}
	v6 := func() netip.Addr {
		var b [16]byte
		b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
		for i := 4; i < 16; i++ {
			b[i] = byte(r.Uint32())
		}
		return netip.AddrFrom16(b)
	}
	ps := make([]netip.Prefix, 0, n)
	for len(ps) < n {
		switch k := r.IntN(100); {
		case k < 70:
			ps = append(ps, netip.PrefixFrom(v4(), 32))
		case k < 85:
			p, _ := v4().Prefix(24)
			ps = append(ps, p)
		case k < 95:
			ps = append(ps, netip.PrefixFrom(v6(), 128))
		default:
			p, _ := v6().Prefix(64)
			ps = append(ps, p)
		}
	}
	srcs := make([]netip.Addr, 0, m)
	for len(srcs) < m {
		if r.IntN(2) == 0 {
			// a banned source: the prefix's address, or one inside it
			p := ps[r.IntN(len(ps))]
			b := p.Addr().AsSlice()
			for i := p.Bits(); i < len(b)*8; i++ {
				if r.IntN(2) == 0 {
					b[i/8] |= 0x80 >> (i % 8)
				}
			}
			a, _ := netip.AddrFromSlice(b)
			srcs = append(srcs, a)
			continue
		}
		if r.IntN(4) == 0 {
			srcs = append(srcs, v6())
		} else {
			srcs = append(srcs, v4())
		}
	}
	return ps, srcs
}

// oldPrefixMatcher is conntrack's matcher before prefixset (many.go at
// 7573d87), for the comparison only.
type oldPrefixMatcher struct {
	lens []int
	idx  map[netip.Prefix]int
}

func newOldPrefixMatcher(ps []netip.Prefix) *oldPrefixMatcher {
	m := &oldPrefixMatcher{idx: make(map[netip.Prefix]int, len(ps))}
	seen := map[int]bool{}
	for i, p := range ps {
		a := p.Addr().Unmap()
		p = netip.PrefixFrom(a, min(p.Bits(), a.BitLen())).Masked()
		if _, dup := m.idx[p]; !dup {
			m.idx[p] = i
		}
		l := p.Bits()
		if p.Addr().Is6() {
			l += 1000
		}
		if !seen[l] {
			seen[l] = true
			m.lens = append(m.lens, l)
		}
	}
	return m
}

func (m *oldPrefixMatcher) match(a netip.Addr) int {
	for _, l := range m.lens {
		bits := l
		if l >= 1000 {
			if !a.Is6() {
				continue
			}
			bits -= 1000
		} else if !a.Is4() {
			continue
		}
		p, err := a.Prefix(bits)
		if err != nil {
			continue
		}
		if i, ok := m.idx[p]; ok {
			return i
		}
	}
	return -1
}
