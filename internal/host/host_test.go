package host

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Fixture trees of the packages host serves: allow's (routes, sockets,
// resolv.conf) and tune's (sysctls, meminfo, slabinfo, fib_trie). They are
// /proc text written on little-endian machines.
const (
	allowProc = "../allow/testdata/proc"
	tuneTree  = "../tune/testdata/"
)

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// swapWords turns an address as a machine of one byte order prints it into
// what a machine of the other order prints: the bytes of each 8-digit word
// reversed ("0100007F" <-> "7F000001"). Other strings are returned as is.
func swapWords(h string) string {
	if len(h) != 8 && len(h) != 32 {
		return h
	}
	b := []byte(h)
	for w := 0; w < len(b); w += 8 {
		for i, j := w, w+6; i < j; i, j = i+2, j-2 {
			b[i], b[i+1], b[j], b[j+1] = b[j], b[j+1], b[i], b[i+1]
		}
	}
	return string(b)
}

// bigEndianText rewrites little-endian /proc text as a big-endian machine
// prints it: the address words of the given fields (ADDR or ADDR:PORT)
// swapped. Fields are joined by single spaces, which the parsers do not
// mind.
func bigEndianText(data []byte, fields ...int) []byte {
	var out bytes.Buffer
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		for _, i := range fields {
			if i < len(f) {
				addr, port, hasPort := strings.Cut(f[i], ":")
				f[i] = swapWords(addr)
				if hasPort {
					f[i] += ":" + port
				}
			}
		}
		out.WriteString(strings.Join(f, " ") + "\n")
	}
	return out.Bytes()
}

func sockets(t *testing.T, data []byte, order binary.ByteOrder) []Socket {
	t.Helper()
	var out []Socket
	if err := parseNetTCP(bytes.NewReader(data), "test", order, func(s Socket) { out = append(out, s) }); err != nil {
		t.Fatal(err)
	}
	return out
}

func sock(local, remote string, st uint8) Socket {
	return Socket{Local: netip.MustParseAddrPort(local), Remote: netip.MustParseAddrPort(remote), State: st}
}

// TestNetTCPBothByteOrders decodes real /proc/net/tcp and tcp6 lines as a
// little-endian machine printed them (the fixtures) and as a big-endian one
// prints the same sockets: both give the same addresses, and reading one
// in the other's order does not.
func TestNetTCPBothByteOrders(t *testing.T) {
	for _, c := range []struct {
		file string
		want []Socket
	}{
		{allowProc + "/net/tcp", []Socket{
			sock("0.0.0.0:22", "0.0.0.0:0", TCPListen),
			sock("192.0.2.1:22", "198.51.100.23:51234", TCPEstablished),
			sock("192.0.2.1:2222", "198.51.100.24:40000", TCPEstablished),
			sock("192.0.2.1:443", "198.51.100.99:40001", TCPEstablished),
			sock("192.0.2.1:22", "198.51.100.50:40002", 0x06), // TIME_WAIT
		}},
		{allowProc + "/net/tcp6", []Socket{
			sock("[2001:db8::1]:22", "[2001:db8:f::9]:50000", TCPEstablished),
			sock("[::ffff:192.0.2.1]:22", "[::ffff:203.0.113.77]:50001", TCPEstablished),
			sock("[2001:db8::1]:80", "[2001:db8:f::10]:50002", TCPEstablished),
		}},
		{tuneTree + "incident-4.9/proc/net/tcp", []Socket{
			sock("0.0.0.0:22", "0.0.0.0:0", TCPListen),
			sock("0.0.0.0:443", "0.0.0.0:0", TCPListen),
			sock("127.0.0.1:3306", "0.0.0.0:0", TCPListen),
			sock("172.31.19.247:443", "78.39.13.110:15897", TCPEstablished),
		}},
	} {
		le := read(t, c.file)
		be := bigEndianText(le, 1, 2)
		if bytes.Equal(le, be) {
			t.Fatalf("%s: big-endian text equals the little-endian one", c.file)
		}
		if got := sockets(t, le, binary.LittleEndian); !slices.Equal(got, c.want) {
			t.Errorf("%s little endian:\n got %v\nwant %v", c.file, got, c.want)
		}
		if got := sockets(t, be, binary.BigEndian); !slices.Equal(got, c.want) {
			t.Errorf("%s big endian:\n got %v\nwant %v", c.file, got, c.want)
		}
		if got := sockets(t, le, binary.BigEndian); slices.Equal(got, c.want) {
			t.Errorf("%s: little-endian text read as big endian gave the right addresses", c.file)
		}
		// This machine reads what its own kernel prints.
		native := le
		if binary.NativeEndian.Uint16([]byte{0, 1}) == 1 {
			native = be
		}
		if got := sockets(t, native, nativeOrder); !slices.Equal(got, c.want) {
			t.Errorf("%s native order:\n got %v\nwant %v", c.file, got, c.want)
		}
	}
}

func TestParseAddrPort(t *testing.T) {
	for _, c := range []struct {
		le, be string // as each machine prints the same socket end
		want   string // "" = rejected
	}{
		{"0100007F:0016", "7F000001:0016", "127.0.0.1:22"},
		{"FE0200C0:01BB", "C00002FE:01BB", "192.0.2.254:443"},
		{"B80D0120000000000000000001000000:01BB", "20010DB8000000000000000000000001:01BB", "[2001:db8::1]:443"},
		{"0000000000000000FFFF00000100007F:0050", "00000000000000000000FFFF7F000001:0050", "[::ffff:127.0.0.1]:80"},
		{"0100007f:0016", "7f000001:0016", "127.0.0.1:22"}, // lower case
		{"zz:0016", "zz:0016", ""},
		{"0100007F", "7F000001", ""},
		{"0100007F:FFFFF", "7F000001:FFFFF", ""},
		{"01007F:0016", "7F0001:0016", ""},
		{"+100007F:0016", "7F00001+:0016", ""},
		{"0100007F:+016", "7F000001:+016", ""},
		{"0100007F:", "7F000001:", ""},
		{"", "", ""},
	} {
		for _, v := range []struct {
			in    string
			order binary.ByteOrder
		}{{c.le, binary.LittleEndian}, {c.be, binary.BigEndian}} {
			got, ok := parseAddrPort(v.in, v.order)
			if ok != (c.want != "") || (ok && got.String() != c.want) {
				t.Errorf("parseAddrPort(%q, %v) = %v %v, want %q", v.in, v.order, got, ok, c.want)
			}
		}
		if h, _, _ := strings.Cut(c.le, ":"); swapWords(h) != strings.Split(c.be, ":")[0] && c.want != "" {
			t.Errorf("swapWords(%q) = %q, want the big-endian %q", h, swapWords(h), c.be)
		}
	}
}

func TestTCPSockets(t *testing.T) {
	var got []Socket
	if err := (FS{ProcRoot: allowProc}).TCPSockets(func(s Socket) { got = append(got, s) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 8 || got[0].State != TCPListen || got[5].Local.Addr() != netip.MustParseAddr("2001:db8::1") {
		t.Errorf("sockets %v", got)
	}
	err := (FS{ProcRoot: t.TempDir()}).TCPSockets(func(Socket) { t.Error("socket from nowhere") })
	var pe *fs.PathError
	if !errors.Is(err, fs.ErrNotExist) || !errors.As(err, &pe) || !strings.Contains(err.Error(), "tcp6") {
		t.Errorf("missing files: %v", err)
	}
	dir := t.TempDir()
	write(t, dir+"/net/tcp", "   0: 0100007F:0016 00000000:0000 0A "+strings.Repeat("x", maxLine)+"\n")
	write(t, dir+"/net/tcp6", "")
	if err := (FS{ProcRoot: dir}).TCPSockets(func(Socket) {}); err == nil || !strings.Contains(err.Error(), "read "+dir+"/net/tcp:") {
		t.Errorf("overlong line: %v", err)
	}
}

func TestDefaultGateways(t *testing.T) {
	gws, err := FS{ProcRoot: allowProc}.DefaultGateways()
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("192.0.2.254"), netip.MustParseAddr("2001:db8::fe")}
	if !slices.Equal(gws, want) {
		t.Errorf("gateways %v, want %v", gws, want)
	}
	// net/route prints addresses as words in host order too.
	le := read(t, allowProc+"/net/route")
	be := bigEndianText(le, 1, 2, 7)
	for _, v := range []struct {
		text  []byte
		order binary.ByteOrder
	}{{le, binary.LittleEndian}, {be, binary.BigEndian}} {
		var got []netip.Addr
		if err := parseRoute(bytes.NewReader(v.text), "route", v.order, func(a netip.Addr) { got = append(got, a) }); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want[:1]) {
			t.Errorf("%v: gateways %v, want %v", v.order, got, want[:1])
		}
	}
	_, err = FS{ProcRoot: t.TempDir()}.DefaultGateways()
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "ipv6_route") {
		t.Errorf("missing files: %v", err)
	}
}

func TestNameservers(t *testing.T) {
	ns, err := Nameservers("../allow/testdata/resolv.conf")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("203.0.113.53"), netip.MustParseAddr("2001:db8::53")}
	if !slices.Equal(ns, want) {
		t.Errorf("nameservers %v, want %v", ns, want)
	}
	p := filepath.Join(t.TempDir(), "resolv.conf")
	write(t, p, "nameserver ::ffff:192.0.2.53#x\nnameserver 192.0.2.53\n;nameserver 192.0.2.1\nnameserver\n")
	if ns, err := Nameservers(p); err != nil || !slices.Equal(ns, []netip.Addr{netip.MustParseAddr("192.0.2.53")}) {
		t.Errorf("nameservers %v %v", ns, err)
	}
	if _, err := Nameservers("/nonexistent/resolv.conf"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestLocalAddrsFixture(t *testing.T) {
	root := tuneTree + "incident-4.9/proc"
	got, err := FS{ProcRoot: root}.LocalAddrs()
	want := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("172.31.19.247/32")}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("LocalAddrs = %v %v, want %v", got, err, want)
	}
	dir := t.TempDir()
	if _, err := (FS{ProcRoot: dir}).LocalAddrs(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("no fib_trie: %v", err)
	}
	write(t, dir+"/net/if_inet6", "fe80000000000000020c29fffe8e1a3b 02 40 20 80     eth0\n"+
		"00000000000000000000000000000001 01 80 10 80       lo\n"+
		"20010db8000000000000000000000001 03 zz 00 00     eth1\n"+
		"2001:db8::1 03 40 00 00 bad\n")
	got, err = FS{ProcRoot: dir}.LocalAddrs()
	want = []netip.Prefix{netip.MustParsePrefix("fe80::20c:29ff:fe8e:1a3b/64"), netip.MustParsePrefix("::1/128"),
		netip.MustParsePrefix("2001:db8::1/128")}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("IPv6 only: %v %v, want %v", got, err, want)
	}
}

// TestLocalAddrsLive asks the kernel: loopback is always there.
func TestLocalAddrsLive(t *testing.T) {
	for _, fs := range []FS{{}, {ProcRoot: "/proc/"}} {
		as, err := fs.LocalAddrs()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(as, func(p netip.Prefix) bool { return p.Addr().IsLoopback() && p.Addr().Is4() }) {
			t.Errorf("no IPv4 loopback address among %v", as)
		}
	}
}

func TestPaths(t *testing.T) {
	var live FS
	if p := live.Proc("sys", "kernel", "osrelease"); p != "/proc/sys/kernel/osrelease" {
		t.Errorf("Proc = %s", p)
	}
	if p := live.Sys("module"); p != "/sys/module" {
		t.Errorf("Sys = %s", p)
	}
	if p := live.ModuleParamPath("nf_conntrack", "hashsize"); p != "/sys/module/nf_conntrack/parameters/hashsize" {
		t.Errorf("ModuleParamPath = %s", p)
	}
	if p := live.SysctlPath("net.ipv4.tcp_keepalive_time"); p != "/proc/sys/net/ipv4/tcp_keepalive_time" {
		t.Errorf("SysctlPath = %s", p)
	}
	if p := live.Net("tcp"); p != "/proc/thread-self/net/tcp" && p != "/proc/net/tcp" {
		t.Errorf("Net = %s", p)
	}
	if _, err := os.Stat("/proc/thread-self/net"); err == nil && live.Net("tcp") != "/proc/thread-self/net/tcp" {
		t.Errorf("Net = %s, want the calling thread's", live.Net("tcp"))
	}
	tree := FS{ProcRoot: "/x/proc", SysRoot: "/x/sys"}
	if p := tree.Net("tcp"); p != "/x/proc/net/tcp" {
		t.Errorf("fixture Net = %s", p)
	}
	if p := tree.ConntrackSysctlPath("nf_conntrack_max"); p != "/x/proc/sys/net/netfilter/nf_conntrack_max" {
		t.Errorf("ConntrackSysctlPath = %s", p)
	}
	if p := (FS{ProcRoot: "/proc/42"}).Net("route"); p != "/proc/42/net/route" {
		t.Errorf("another process's Net = %s", p)
	}
}

func TestSysctls(t *testing.T) {
	fs := FS{ProcRoot: tuneTree + "kube/proc", SysRoot: tuneTree + "kube/sys"}
	if v, err := fs.ConntrackSysctl("nf_conntrack_max"); err != nil || v <= 0 {
		t.Errorf("max %d %v", v, err)
	}
	if v, err := fs.Sysctl("net.ipv4.tcp_keepalive_probes"); err != nil || v != 9 {
		t.Errorf("keepalive probes %d %v", v, err)
	}
	if v, err := fs.ModuleParam("nf_conntrack", "hashsize"); err != nil || v <= 0 {
		t.Errorf("hashsize %d %v", v, err)
	}
	names, err := fs.ConntrackSysctlNames()
	if err != nil || len(names) != 13 || !slices.Contains(names, "nf_conntrack_tcp_timeout_established") || !slices.IsSorted(names) {
		t.Errorf("names %v %v", names, err)
	}
	if _, err := fs.ConntrackSysctl("nf_conntrack_nonexistent"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
	dir := t.TempDir()
	write(t, dir+"/sys/net/netfilter/nf_conntrack_max", "lots\n")
	if _, err := (FS{ProcRoot: dir}).ConntrackSysctl("nf_conntrack_max"); err == nil ||
		!strings.Contains(err.Error(), dir+"/sys/net/netfilter/nf_conntrack_max: not an integer") {
		t.Errorf("bad value: %v", err)
	}
	write(t, dir+"/big", strings.Repeat("1", maxSmall+1))
	if _, err := ReadInt(dir + "/big"); err == nil || !strings.Contains(err.Error(), "larger than 1 MiB") {
		t.Errorf("huge file: %v", err)
	}
}

func TestKernel(t *testing.T) {
	for _, c := range []struct {
		in           string
		major, minor int
		ok           bool
	}{
		{"4.9.0-19-amd64\n", 4, 9, true},
		{"5.15.0", 5, 15, true},
		{"6.18rc1-foo", 6, 18, true},
		{"6.1", 6, 1, true},
		{"x.y.z", 0, 0, false},
		{"6", 0, 0, false},
		{"0.1", 0, 0, false},
		{"6.x", 6, 0, false},
		{"", 0, 0, false},
	} {
		k, err := parseKernel([]byte(c.in))
		if (err == nil) != c.ok || (c.ok && (k.Major != c.major || k.Minor != c.minor)) || k.Release != strings.TrimSpace(c.in) {
			t.Errorf("parseKernel(%q) = %+v %v", c.in, k, err)
		}
	}
	if !(Kernel{Major: 5, Minor: 15}).AtLeast(5, 15) || (Kernel{Major: 4, Minor: 19}).AtLeast(5, 0) || !(Kernel{Major: 6}).AtLeast(5, 15) {
		t.Error("AtLeast")
	}
	k, err := FS{ProcRoot: tuneTree + "incident-4.9/proc"}.Kernel()
	if err != nil || k.Major != 4 || k.Minor != 9 {
		t.Errorf("fixture kernel %+v %v", k, err)
	}
	dir := t.TempDir()
	write(t, dir+"/sys/kernel/osrelease", "custom\n")
	if k, err := (FS{ProcRoot: dir}).Kernel(); err == nil || k.Release != "custom" {
		t.Errorf("unparsable release: %+v %v", k, err)
	}
}

func TestMemAndSlab(t *testing.T) {
	fs := FS{ProcRoot: tuneTree + "kube/proc"}
	if n, err := fs.MemTotal(); err != nil || n%1024 != 0 || n < 1<<20 {
		t.Errorf("MemTotal %d %v", n, err)
	}
	s, err := fs.ConntrackSlab()
	if err != nil || s.Name != "nf_conntrack" || s.ObjSize != 256 || s.ObjPerSlab != 16 || s.PagesPerSlab != 1 || s.ObjCost(4096) != 256 {
		t.Errorf("slab %+v %v", s, err)
	}
	_, err = FS{ProcRoot: tuneTree + "incident-4.9/proc"}.ConntrackSlab()
	var pe *os.PathError
	if !errors.As(err, &pe) {
		t.Errorf("no slabinfo: want a *fs.PathError, got %v", err)
	}
	for _, c := range []struct {
		in   string
		want uint64 // 0: error
	}{
		{"MemTotal:       4010000 kB\n", 4010000 * 1024},
		{"MemFree: 1 kB\nMemTotal: 2048\n", 2048},
		{"MemTotal: 12 MB\n", 0},
		{"MemTotal: 0 kB\n", 0},
		{"MemTotal: 18446744073709551615 kB\n", 0},
		{"MemTotal: -1 kB\n", 0},
		{"\n\nMemTotal:\n", 0},
		{"", 0},
	} {
		n, err := parseMeminfo([]byte(c.in))
		if n != c.want || (err == nil) != (c.want != 0) {
			t.Errorf("parseMeminfo(%q) = %d %v, want %d", c.in, n, err, c.want)
		}
	}
	for _, c := range []struct {
		in   string
		name string // "": error
	}{
		{"slabinfo - version: 2.1\nnf_conntrack_ffffffff81a8c840 10 20 312 13 1 : tunables 0 0 0 : slabdata 1 1 0\n", "nf_conntrack_ffffffff81a8c840"},
		{"nf_conntrack_expect 0 0 208 19 1\n", ""},
		{"nf_conntrack 1 1 32 1 1\n", ""},     // smaller than a tuple hash
		{"nf_conntrack 1 1 300 1 2000\n", ""}, // absurd pages per slab
		{"nf_conntrack 1 1 300 1\n", ""},      // short line
		{"nf_conntrack -1 1 300 1 1\n", ""},   // negative
		{"nf_conntrack 1 1 320 0 0\n", "nf_conntrack"},
	} {
		s, err := parseSlabinfo([]byte(c.in))
		if s.Name != c.name || (err == nil) != (c.name != "") {
			t.Errorf("parseSlabinfo(%q) = %+v %v, want %q", c.in, s, err, c.name)
		}
	}
	if (Slab{ObjSize: 320}).ObjCost(4096) != 320 || (Slab{ObjSize: 320, ObjPerSlab: 12, PagesPerSlab: 1}).ObjCost(4096) != 341 {
		t.Error("ObjCost")
	}
}
