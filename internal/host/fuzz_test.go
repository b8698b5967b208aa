package host

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
)

// Fuzz targets for every parser of kernel text. Seeds: the fixture trees
// (added below) and testdata/fuzz/<target>/. Run one with e.g.
//   go test ./internal/host -run '^$' -fuzz FuzzParseProcNet -fuzztime 30s

var fixtureTrees = []string{
	tuneTree + "incident-4.9", tuneTree + "incident-5.15", tuneTree + "host-4g", tuneTree + "host-64g", tuneTree + "kube",
	"../allow/testdata",
}

func addFixtureSeeds(f *testing.F, rels ...string) {
	for _, tree := range fixtureTrees {
		for _, rel := range rels {
			if data, err := os.ReadFile(tree + "/" + rel); err == nil {
				f.Add(data)
			}
		}
	}
}

func FuzzParseKernel(f *testing.F) {
	addFixtureSeeds(f, "proc/sys/kernel/osrelease")
	f.Fuzz(func(t *testing.T, data []byte) {
		if k, err := parseKernel(data); err == nil && (k.Major <= 0 || k.Minor < 0) {
			t.Fatalf("bad kernel %+v", k)
		}
	})
}

func FuzzParseMeminfo(f *testing.F) {
	addFixtureSeeds(f, "proc/meminfo")
	f.Fuzz(func(t *testing.T, data []byte) {
		if n, err := parseMeminfo(data); err == nil && (n == 0 || n > 1<<62) {
			t.Fatalf("MemTotal %d accepted", n)
		}
	})
}

func FuzzParseSlabinfo(f *testing.F) {
	addFixtureSeeds(f, "proc/slabinfo")
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseSlabinfo(data)
		if err != nil {
			return
		}
		if !isConntrackSlab(s.Name) || s.ObjSize < 64 || s.ObjCost(4096) < s.ObjSize {
			t.Fatalf("bad slab %+v", s)
		}
	})
}

func FuzzParseInt(f *testing.F) {
	addFixtureSeeds(f, "proc/sys/net/netfilter/nf_conntrack_max", "proc/sys/net/ipv4/tcp_keepalive_time",
		"sys/module/nf_conntrack/parameters/hashsize")
	f.Add([]byte("-1\n"))
	f.Add([]byte(" 9223372036854775808"))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := parseInt(data)
		if err != nil {
			// The value is quoted, truncated to 40 bytes.
			if len(err.Error()) > 200 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
			return
		}
		if s := strings.TrimLeft(strings.TrimSpace(string(data)), "+"); strconv.FormatInt(n, 10) != s &&
			!strings.HasPrefix(strings.TrimLeft(s, "-"), "0") {
			t.Fatalf("%q read as %d", data, n)
		}
	})
}

// FuzzDecodeWords: an address as a little-endian machine prints it and the
// same address as a big-endian one prints it decode alike, or not at all.
func FuzzDecodeWords(f *testing.F) {
	for _, s := range []string{"0100007F", "FE0200C0", "00000000", "B80D0120000000000000000001000000",
		"0000000000000000FFFF00000100007F", "zz", "0100007", "0x00007F"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		le, okLE := decodeWords(h, binary.LittleEndian)
		be, okBE := decodeWords(swapWords(h), binary.BigEndian)
		if okLE != okBE || le != be {
			t.Fatalf("%q: little endian %v %v, big endian %v %v", h, le, okLE, be, okBE)
		}
		if okLE && (!le.IsValid() || le.BitLen() != len(h)*4) {
			t.Fatalf("%q: %v", h, le)
		}
	})
}

// FuzzParseProcNet covers the parsers of /proc/net text: tcp and tcp6 (in
// both byte orders), fib_trie and if_inet6.
func FuzzParseProcNet(f *testing.F) {
	addFixtureSeeds(f, "proc/net/tcp", "proc/net/tcp6", "proc/net/fib_trie")
	f.Add([]byte("fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var le, be []Socket
		parseNetTCP(bytes.NewReader(data), "tcp", binary.LittleEndian, func(s Socket) { le = append(le, s) })
		parseNetTCP(bytes.NewReader(data), "tcp", binary.BigEndian, func(s Socket) { be = append(be, s) })
		if len(le) != len(be) {
			t.Fatalf("%d sockets little endian, %d big endian", len(le), len(be))
		}
		for i, s := range le {
			if !s.Local.IsValid() || !s.Remote.IsValid() || s.Local.Addr().BitLen() != s.Remote.Addr().BitLen() {
				t.Fatalf("bad socket %+v", s)
			}
			if s.State != be[i].State || s.Local.Port() != be[i].Local.Port() || s.Remote.Port() != be[i].Remote.Port() {
				t.Fatalf("byte order changed more than addresses: %+v %+v", s, be[i])
			}
		}
		parseFibTrie(bytes.NewReader(data), "fib_trie", func(a netip.Addr) {
			if !a.Is4() {
				t.Fatalf("fib_trie gave %v", a)
			}
		})
		parseIfInet6(bytes.NewReader(data), "if_inet6", func(p netip.Prefix) {
			if !p.IsValid() || !p.Addr().Is6() {
				t.Fatalf("if_inet6 gave %v", p)
			}
		})
	})
}

// FuzzParseRoute covers net/route (in both byte orders) and net/ipv6_route.
func FuzzParseRoute(f *testing.F) {
	addFixtureSeeds(f, "proc/net/route", "proc/net/ipv6_route")
	f.Add([]byte("eth0\t00000000\t7F000001\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var le, be []netip.Addr
		parseRoute(bytes.NewReader(data), "route", binary.LittleEndian, func(a netip.Addr) { le = append(le, a) })
		parseRoute(bytes.NewReader(data), "route", binary.BigEndian, func(a netip.Addr) { be = append(be, a) })
		if len(le) != len(be) {
			t.Fatalf("%d gateways little endian, %d big endian", len(le), len(be))
		}
		for _, a := range le {
			if !a.Is4() || a.IsUnspecified() {
				t.Fatalf("gateway %v", a)
			}
		}
		parseIPv6Route(bytes.NewReader(data), "ipv6_route", func(a netip.Addr) {
			if !a.Is6() || a.IsUnspecified() {
				t.Fatalf("IPv6 gateway %v", a)
			}
		})
	})
}

func FuzzParseResolvConf(f *testing.F) {
	addFixtureSeeds(f, "resolv.conf")
	f.Add([]byte("nameserver fe80::1%eth0\nnameserver ::ffff:10.0.0.1;x\n#nameserver 10.0.0.2\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		parseResolvConf(bytes.NewReader(data), "resolv.conf", func(a netip.Addr) {
			if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
				t.Fatalf("nameserver %v", a)
			}
		})
	})
}
