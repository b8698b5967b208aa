package gen

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctguard/ctguard/test/e2e/wire"
)

// FloodConfig is a spoofed IPv4 flood from random sources in a prefix that
// the victim routes to the attacker (so replies vanish there).
type FloodConfig struct {
	Proto    string // "syn" or "udp"
	Src      netip.Prefix
	Dst      netip.AddrPort
	Rate     float64 // packets per second
	Count    int64   // hard bound on packets
	Duration time.Duration
	Seed     uint64
}

// Flood sends the packets through a raw IPv4 socket with our own headers.
func Flood(ctx context.Context, cfg FloodConfig, w *wire.Writer) error {
	if cfg.Proto != "syn" && cfg.Proto != "udp" {
		return fmt.Errorf("flood: proto %q, want syn or udp", cfg.Proto)
	}
	if !cfg.Src.Addr().Is4() || !cfg.Dst.Addr().Is4() {
		return fmt.Errorf("flood: IPv4 only (src %s, dst %s)", cfg.Src, cfg.Dst)
	}
	if cfg.Rate <= 0 || cfg.Count <= 0 || cfg.Duration <= 0 {
		return fmt.Errorf("flood: need rate, count and duration > 0")
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("flood: raw socket: %w", err)
	}
	defer unix.Close(fd)
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	c := &counters{name: cfg.Proto + "-flood"}
	done := make(chan struct{})
	go c.report(ctx, w, done)
	defer close(done)

	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5eed))
	dst := cfg.Dst.Addr().As4()
	to := &unix.SockaddrInet4{Addr: dst}
	pkt := make([]byte, 64)
	start := time.Now()
	var sent int64
	for sent < cfg.Count && ctx.Err() == nil {
		due := min(int64(cfg.Rate*time.Since(start).Seconds()), cfg.Count)
		if sent >= due {
			time.Sleep(time.Millisecond)
			continue
		}
		for ; sent < due && ctx.Err() == nil; sent++ {
			src := Random(cfg.Src, rng).As4()
			n := buildPacket(pkt, cfg.Proto, src, dst, uint16(1024+rng.IntN(64511)), cfg.Dst.Port(), rng.Uint32())
			if err := unix.Sendto(fd, pkt[:n], 0, to); err != nil {
				c.failed.Add(1)
				continue
			}
			c.sent.Add(1)
		}
	}
	return w.Write(wire.Record{Kind: "progress", Progress: c.snapshot(true)})
}

// buildPacket writes an IPv4 header and a TCP SYN or a UDP datagram with 16
// bytes of junk (which the victim's server ignores) into b; it returns the
// length. The kernel fills in the IP checksum and ID (IP_HDRINCL).
func buildPacket(b []byte, proto string, src, dst [4]byte, sport, dport uint16, seq uint32) int {
	clear(b)
	var l4 int
	var p byte
	if proto == "syn" {
		l4, p = 20, unix.IPPROTO_TCP
	} else {
		l4, p = 8+16, unix.IPPROTO_UDP
	}
	total := 20 + l4
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(total))
	b[8] = 64
	b[9] = p
	copy(b[12:16], src[:])
	copy(b[16:20], dst[:])
	h := b[20:total]
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	if p == unix.IPPROTO_TCP {
		binary.BigEndian.PutUint32(h[4:], seq)
		h[12] = 5 << 4 // data offset
		h[13] = 0x02   // SYN
		binary.BigEndian.PutUint16(h[14:], 64240)
		binary.BigEndian.PutUint16(h[16:], l4Checksum(src, dst, p, h))
	} else {
		binary.BigEndian.PutUint16(h[4:], uint16(l4))
		for i := 8; i < l4; i++ {
			h[i] = byte(seq >> (8 * (i % 4)))
		}
		binary.BigEndian.PutUint16(h[6:], l4Checksum(src, dst, p, h))
	}
	return total
}

// l4Checksum is the Internet checksum over the IPv4 pseudo-header and seg
// (whose checksum field must be zero).
func l4Checksum(src, dst [4]byte, proto byte, seg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src[:])
	add(dst[:])
	sum += uint32(proto) + uint32(len(seg))
	add(seg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	cs := ^uint16(sum)
	if cs == 0 && proto == unix.IPPROTO_UDP {
		cs = 0xffff
	}
	return cs
}
