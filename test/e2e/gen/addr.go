// Package gen holds the lab's traffic generators: silent established bots,
// spoofed SYN and UDP floods, distributed low-and-slow bots, a benign crowd,
// NAT gateways and the legit probes. Each runs inside one namespace, is
// bounded in count and in time, and reports on a wire.Writer.
package gen

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
)

// Layout says how the i-th source address is taken from a prefix.
type Layout string

const (
	// Seq numbers hosts in order (IPv4 skips .0 and .255).
	Seq Layout = "seq"
	// Per64 puts source i in its own /64 (IPv6 only): host ::1 of the i-th /64.
	Per64 Layout = "per64"
	// Spread24 deals sources round-robin over the /24s of the prefix: source
	// i is host i/K+1 of /24 number i%K, where K is Sources.Nets.
	Spread24 Layout = "spread24"
)

// Sources describes a set of source addresses.
type Sources struct {
	Prefix netip.Prefix
	Layout Layout
	Nets   int // for Spread24: how many /24s
	// A shard's view (see Shard): source i is source i*stride+offset.
	stride, offset int
}

// Addr returns the i-th source address.
func (s Sources) Addr(i int) (netip.Addr, error) {
	if i < 0 {
		return netip.Addr{}, fmt.Errorf("source %d: negative index", i)
	}
	if s.stride > 1 {
		i = i*s.stride + s.offset
	}
	switch s.Layout {
	case Per64:
		if !s.Prefix.Addr().Is6() || s.Prefix.Bits() > 64 {
			return netip.Addr{}, fmt.Errorf("per64 needs an IPv6 prefix of /64 or shorter, have %s", s.Prefix)
		}
		if n := 64 - s.Prefix.Bits(); n < 31 && i >= 1<<n {
			return netip.Addr{}, fmt.Errorf("source %d: %s has only %d /64s", i, s.Prefix, 1<<n)
		}
		b := s.Prefix.Masked().Addr().As16()
		hi := uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
			uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
		hi += uint64(i)
		for k := 0; k < 8; k++ {
			b[k] = byte(hi >> (56 - 8*k))
		}
		for k := 8; k < 15; k++ {
			b[k] = 0
		}
		b[15] = 1
		return netip.AddrFrom16(b), nil
	case Spread24:
		if !s.Prefix.Addr().Is4() || s.Prefix.Bits() > 24 || s.Nets < 1 {
			return netip.Addr{}, fmt.Errorf("spread24 needs an IPv4 prefix of /24 or shorter and Nets >= 1")
		}
		if s.Nets > 1<<(24-s.Prefix.Bits()) {
			return netip.Addr{}, fmt.Errorf("spread24: %s has fewer than %d /24s", s.Prefix, s.Nets)
		}
		net24, host := i%s.Nets, i/s.Nets+1
		if host > 254 {
			return netip.Addr{}, fmt.Errorf("source %d: more than 254 hosts per /24", i)
		}
		return addV4(s.Prefix.Masked().Addr(), uint32(net24)<<8|uint32(host)), nil
	case Seq, "":
		base := s.Prefix.Masked().Addr()
		if base.Is4() {
			// 254 usable hosts per /24: skip .0 and .255.
			off := uint32(i/254)<<8 | uint32(i%254+1)
			if hostBits := 32 - s.Prefix.Bits(); hostBits < 32 && uint64(off) >= 1<<hostBits {
				return netip.Addr{}, fmt.Errorf("source %d: outside %s", i, s.Prefix)
			}
			return addV4(base, off), nil
		}
		b := base.As16()
		v := uint64(b[8])<<56 | uint64(b[9])<<48 | uint64(b[10])<<40 | uint64(b[11])<<32 |
			uint64(b[12])<<24 | uint64(b[13])<<16 | uint64(b[14])<<8 | uint64(b[15])
		v += uint64(i) + 1
		for k := 0; k < 8; k++ {
			b[8+k] = byte(v >> (56 - 8*k))
		}
		a := netip.AddrFrom16(b)
		if !s.Prefix.Contains(a) {
			return netip.Addr{}, fmt.Errorf("source %d: outside %s", i, s.Prefix)
		}
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("unknown layout %q", s.Layout)
}

// Random returns a random host address of an IPv4 prefix (never .0 or .255).
func Random(p netip.Prefix, r *rand.Rand) netip.Addr {
	hostBits := 32 - p.Bits()
	for {
		off := uint32(0)
		if hostBits > 0 {
			off = uint32(r.Uint64() & (1<<hostBits - 1))
		}
		if last := off & 0xff; hostBits >= 8 && (last == 0 || last == 255) {
			continue
		}
		return addV4(p.Masked().Addr(), off)
	}
}

func addV4(a netip.Addr, off uint32) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += off
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
