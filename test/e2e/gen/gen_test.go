package gen

import (
	"bufio"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestSourcesAddr(t *testing.T) {
	tests := []struct {
		name string
		s    Sources
		i    int
		want string
		err  bool
	}{
		{"seq first", Sources{Prefix: netip.MustParsePrefix("198.18.0.0/17")}, 0, "198.18.0.1", false},
		{"seq skips .255 and .0", Sources{Prefix: netip.MustParsePrefix("198.18.0.0/17")}, 254, "198.18.1.1", false},
		{"seq last of /24", Sources{Prefix: netip.MustParsePrefix("192.0.2.0/24")}, 253, "192.0.2.254", false},
		{"seq outside", Sources{Prefix: netip.MustParsePrefix("192.0.2.0/24")}, 254, "", true},
		{"seq v6", Sources{Prefix: netip.MustParsePrefix("2001:db8:1::/64")}, 9, "2001:db8:1::a", false},
		{"per64", Sources{Prefix: netip.MustParsePrefix("2001:db8:bad::/48"), Layout: Per64}, 5, "2001:db8:bad:5::1", false},
		{"per64 needs v6", Sources{Prefix: netip.MustParsePrefix("198.18.0.0/17"), Layout: Per64}, 0, "", true},
		{"spread24 first", Sources{Prefix: netip.MustParsePrefix("198.19.0.0/16"), Layout: Spread24, Nets: 40}, 0, "198.19.0.1", false},
		{"spread24 next net", Sources{Prefix: netip.MustParsePrefix("198.19.0.0/16"), Layout: Spread24, Nets: 40}, 1, "198.19.1.1", false},
		{"spread24 wraps", Sources{Prefix: netip.MustParsePrefix("198.19.0.0/16"), Layout: Spread24, Nets: 40}, 41, "198.19.1.2", false},
		{"spread24 too many hosts", Sources{Prefix: netip.MustParsePrefix("198.19.0.0/16"), Layout: Spread24, Nets: 1}, 254, "", true},
		{"negative", Sources{Prefix: netip.MustParsePrefix("192.0.2.0/24")}, -1, "", true},
		{"unknown layout", Sources{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Layout: "x"}, 0, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.s.Addr(tt.i)
			if tt.err {
				if err == nil {
					t.Fatalf("Addr(%d) = %s, want error", tt.i, got)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("Addr(%d) = %s, %v; want %s", tt.i, got, err, tt.want)
			}
			if !tt.s.Prefix.Contains(got) {
				t.Fatalf("%s not in %s", got, tt.s.Prefix)
			}
		})
	}
}

func TestSpread24StaysUnderThresholdPerSlash24(t *testing.T) {
	s := Sources{Prefix: netip.MustParsePrefix("198.19.0.0/16"), Layout: Spread24, Nets: 40}
	seen := map[netip.Addr]bool{}
	nets := map[netip.Prefix]int{}
	for i := 0; i < 9600; i++ {
		a, err := s.Addr(i)
		if err != nil {
			t.Fatal(err)
		}
		if seen[a] {
			t.Fatalf("source %d repeats %s", i, a)
		}
		seen[a] = true
		p, _ := a.Prefix(24)
		nets[p]++
	}
	if len(nets) != 40 {
		t.Fatalf("%d /24s, want 40", len(nets))
	}
}

func TestRandomInPrefix(t *testing.T) {
	p := netip.MustParsePrefix("198.18.128.0/17")
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 10000; i++ {
		a := Random(p, r)
		if !p.Contains(a) {
			t.Fatalf("%s outside %s", a, p)
		}
		if b := a.As4(); b[3] == 0 || b[3] == 255 {
			t.Fatalf("%s: network or broadcast-looking address", a)
		}
	}
}

func TestRotation(t *testing.T) {
	cfg := &BotConfig{Sources: Sources{Prefix: netip.MustParsePrefix("198.18.0.0/17")}, N: 10, PerSource: 7, Active: 3}
	r, err := newRotation(cfg)
	if err != nil {
		t.Fatal(err)
	}
	per := map[netip.Addr]int{}
	var order []netip.Addr
	for {
		a, ok := r.take()
		if !ok {
			break
		}
		per[a]++
		order = append(order, a)
		if len(order) > 1000 {
			t.Fatal("rotation does not end")
		}
	}
	if len(order) != 70 || len(per) != 10 {
		t.Fatalf("handed out %d connections over %d sources, want 70 over 10", len(order), len(per))
	}
	for a, n := range per {
		if n != 7 {
			t.Errorf("%s used %d times, want 7", a, n)
		}
	}
	// At most Active sources are in use in any window: between a source's
	// first and last use, fewer than Active+... other sources start.
	first, last := map[netip.Addr]int{}, map[netip.Addr]int{}
	for i, a := range order {
		if _, ok := first[a]; !ok {
			first[a] = i
		}
		last[a] = i
	}
	for i := range order {
		live := 0
		for a := range per {
			if first[a] <= i && i <= last[a] {
				live++
			}
		}
		if live > 3 {
			t.Fatalf("%d sources live at step %d, want <= 3", live, i)
		}
	}
}

func TestBotConfigValidate(t *testing.T) {
	ok := BotConfig{Sources: Sources{Prefix: netip.MustParsePrefix("198.18.0.0/17")}, N: 900, PerSource: 300, Active: 64,
		Rate: 1000, Duration: 1, Dst: netip.MustParseAddrPort("198.51.100.2:443")}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := ok
	bad.N = 40000 // more than a /17 holds
	if err := bad.Validate(); err == nil {
		t.Fatal("want error for more sources than the prefix holds")
	}
	bad = ok
	bad.PerSource, bad.N = 100000, 100
	if err := bad.Validate(); err == nil {
		t.Fatal("want error above the connection bound")
	}
}

// checksumOK verifies an Internet checksum over pseudo-header + segment.
func checksumOK(src, dst [4]byte, proto byte, seg []byte) bool {
	var sum uint32
	for _, b := range [][]byte{src[:], dst[:]} {
		sum += uint32(binary.BigEndian.Uint16(b[0:])) + uint32(binary.BigEndian.Uint16(b[2:]))
	}
	sum += uint32(proto) + uint32(len(seg))
	for i := 0; i+1 < len(seg); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(seg[i:]))
	}
	if len(seg)%2 == 1 {
		sum += uint32(seg[len(seg)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return sum == 0xffff
}

func TestBuildPacket(t *testing.T) {
	src, dst := [4]byte{198, 18, 200, 7}, [4]byte{198, 51, 100, 2}
	b := make([]byte, 64)
	for _, proto := range []string{"syn", "udp"} {
		n := buildPacket(b, proto, src, dst, 40000, 443, 0xdeadbeef)
		pkt := b[:n]
		if pkt[0] != 0x45 || int(binary.BigEndian.Uint16(pkt[2:])) != n {
			t.Fatalf("%s: bad IP header % x", proto, pkt[:20])
		}
		p := byte(unix.IPPROTO_TCP)
		if proto == "udp" {
			p = unix.IPPROTO_UDP
		}
		if pkt[9] != p || binary.BigEndian.Uint16(pkt[22:]) != 443 || binary.BigEndian.Uint16(pkt[20:]) != 40000 {
			t.Fatalf("%s: bad header % x", proto, pkt)
		}
		if proto == "syn" && pkt[33] != 0x02 {
			t.Fatalf("flags %#x, want SYN", pkt[33])
		}
		if !checksumOK(src, dst, p, pkt[20:]) {
			t.Fatalf("%s: bad checksum", proto)
		}
	}
}

func TestNATSchedule(t *testing.T) {
	cfg := NATConfig{Gateways: []netip.Addr{netip.MustParseAddr("203.0.113.12")}, Users: 1100, UsersStart: 400,
		Interval: 10 * time.Second, Duration: 100 * time.Second, Dst: netip.MustParseAddrPort("198.51.100.2:443")}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	// The ramp ends at 90% of the run; users join in order, steadily.
	var last time.Duration
	for u := 0; u < cfg.Users; u++ {
		delay, phase := natSchedule(&cfg, 0, u)
		if u < cfg.UsersStart {
			if delay != 0 || phase < 0 || phase >= cfg.Interval {
				t.Fatalf("starting user %d: delay %s phase %s", u, delay, phase)
			}
			continue
		}
		if phase != 0 || delay <= last || delay > 90*time.Second {
			t.Fatalf("user %d joins at %s (previous %s), phase %s", u, delay, last, phase)
		}
		last = delay
	}
	if last != 90*time.Second {
		t.Fatalf("last user joins at %s, want 90s", last)
	}
	// Without a ramp, every user starts within one interval, as before.
	flat := cfg
	flat.UsersStart = 0
	for u := 0; u < 200; u++ {
		if d, p := natSchedule(&flat, 1, u); d >= flat.Interval || p != 0 {
			t.Fatalf("flat user %d: delay %s phase %s", u, d, p)
		}
	}
	for _, bad := range []NATConfig{{Users: 10, UsersStart: 10}, {Users: 10, UsersStart: -1}, {Users: 10, UsersStart: 5, RampOver: 200 * time.Second}} {
		bad.Gateways, bad.Interval, bad.Duration = cfg.Gateways, cfg.Interval, cfg.Duration
		if err := bad.Validate(); err == nil {
			t.Errorf("no error for users %d, start %d, ramp %s", bad.Users, bad.UsersStart, bad.RampOver)
		}
	}
}

func TestKeepAliveShards(t *testing.T) {
	cfg := KeepAliveConfig{BotConfig: BotConfig{Sources: Sources{Prefix: netip.MustParsePrefix("198.18.0.0/17"), Layout: Seq},
		N: 1100, PerSource: 300, Active: 32, Rate: 5000, Duration: time.Minute, Dst: netip.MustParseAddrPort("198.51.100.2:443")}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	const k = 19
	seen := map[netip.Addr]bool{}
	n, rate := 0, 0.0
	for i := 0; i < k; i++ {
		s := cfg.Shard(i, k)
		if err := s.Validate(); err != nil {
			t.Fatalf("shard %d: %v", i, err)
		}
		n += s.N
		rate += s.Rate
		for j := 0; j < s.N; j++ {
			a, err := s.Sources.Addr(j)
			if err != nil {
				t.Fatal(err)
			}
			if seen[a] {
				t.Fatalf("shard %d reuses %s", i, a)
			}
			seen[a] = true
		}
	}
	// Together the shards use exactly the sources of the whole attack.
	if n != cfg.N || len(seen) != cfg.N || math.Abs(rate-cfg.Rate) > 1e-6 {
		t.Fatalf("shards: %d sources (%d distinct) at %g/s, want %d at %g/s", n, len(seen), rate, cfg.N, cfg.Rate)
	}
	for j := 0; j < cfg.N; j++ {
		a, _ := cfg.Sources.Addr(j)
		if !seen[a] {
			t.Fatalf("source %d (%s) in no shard", j, a)
		}
	}
	if ShardsFor(330000, 17569) != 19 || ShardsFor(10, 100) != 1 || ShardCount(10, 3, 4) != 2 {
		t.Fatal("shard arithmetic")
	}
}

// TestHTTPStatusOK: an Apache probe succeeds on a 200 status line only.
func TestHTTPStatusOK(t *testing.T) {
	for in, ok := range map[string]bool{
		"HTTP/1.1 200 OK\r\n":                  true,
		"HTTP/1.0 200 OK\r\n":                  true,
		"HTTP/1.1 503 Service Unavailable\r\n": false,
		"HTTP/1.1 404 Not Found\r\n":           false,
		"ok /probe\n":                          false,
		"HTTP/1.1 200 OK":                      false, // cut before the line ended
		"":                                     false,
	} {
		err := httpStatusOK(bufio.NewReader(strings.NewReader(in)))
		if (err == nil) != ok {
			t.Errorf("%q: err %v, want ok=%v", in, err, ok)
		}
	}
}
