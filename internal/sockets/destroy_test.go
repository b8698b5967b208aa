package sockets

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

var errConnReset = syscall.ECONNRESET

func TestMatch(t *testing.T) {
	ts := []Target{
		{Prefix: netip.MustParsePrefix("198.51.100.0/24"), KeepTCPPorts: []uint16{22}},
		{Prefix: netip.MustParsePrefix("2001:db8:bad::/48")},
		{Prefix: netip.MustParsePrefix("198.51.100.7/32")}, // inside the first: the first wins
	}
	for _, c := range []struct {
		addr  string
		lport uint16
		want  int
	}{
		{"198.51.100.7", 443, 0},
		{"198.51.100.7", 22, 2}, // kept by the scoped /24, closed by the full /32
		{"198.51.100.8", 22, -1},
		{"2001:db8:bad:1::9", 22, 1},
		{"2001:db8:bad::1", 443, 1},
		{"203.0.113.1", 443, -1},
	} {
		if got := match(ts, netip.MustParseAddr(c.addr), c.lport); got != c.want {
			t.Errorf("match(%s, %d) = %d, want %d", c.addr, c.lport, got, c.want)
		}
	}
}

// TestPeerOfMapped: a dual-stack listener ([::]:80, as Apache opens it)
// sees IPv4 clients as IPv4-mapped IPv6 peers; they match IPv4 targets.
func TestPeerOfMapped(t *testing.T) {
	var id [48]byte
	binary.BigEndian.PutUint16(id[0:], 80)
	binary.BigEndian.PutUint16(id[2:], 40000)
	mapped := netip.MustParseAddr("::ffff:198.51.100.7").As16()
	copy(id[20:], mapped[:])
	p := peerOf(unix.AF_INET6, &id)
	if p != netip.MustParseAddrPort("198.51.100.7:40000") {
		t.Fatalf("peerOf = %s, want the IPv4 peer", p)
	}
	ts := []Target{{Prefix: netip.MustParsePrefix("198.51.100.0/24")}}
	if match(ts, p.Addr(), 80) != 0 {
		t.Error("a mapped IPv4 peer escaped an IPv4 ban")
	}
}

// TestAppendDestroy checks the SOCK_DESTROY request byte by byte: a
// netlink header with ACK, then inet_diag_req_v2 carrying the dumped id.
func TestAppendDestroy(t *testing.T) {
	var id [48]byte
	for i := range id {
		id[i] = byte(i + 1)
	}
	b := appendDestroy(nil, unix.AF_INET6, &id, 7)
	ne := binary.NativeEndian
	if len(b) != 72 || ne.Uint32(b[0:]) != 72 || ne.Uint16(b[4:]) != 21 ||
		ne.Uint16(b[6:]) != unix.NLM_F_REQUEST|unix.NLM_F_ACK || ne.Uint32(b[8:]) != 7 {
		t.Fatalf("header % x", b[:16])
	}
	if b[16] != unix.AF_INET6 || b[17] != unix.IPPROTO_TCP || ne.Uint32(b[20:]) != 0 || string(b[24:]) != string(id[:]) {
		t.Fatalf("request % x", b[16:])
	}
	if p := peerOf(unix.AF_INET6, &id); p.Port() != 0x0304 {
		t.Fatalf("peer %s", p)
	}
}

func TestDestroySupport(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("config-6.1.0-yes", "CONFIG_INET_DIAG=y\nCONFIG_INET_DIAG_DESTROY=y\n")
	write("config-4.9-no", "CONFIG_INET_DIAG=m\n# CONFIG_INET_DIAG_DESTROY is not set\n")
	write("config-old", "CONFIG_INET_DIAG=m\n")
	for _, c := range []struct {
		release         string
		supported, know bool
	}{{"6.1.0-yes", true, true}, {"4.9-no", false, true}, {"old", false, true}, {"missing", false, false}} {
		s, k := DestroySupport(filepath.Join(dir, "noproc"), dir, c.release)
		if s != c.supported || k != c.know {
			t.Errorf("%s: supported %v known %v, want %v %v", c.release, s, k, c.supported, c.know)
		}
	}
	// /proc/config.gz wins over /boot.
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write([]byte("# CONFIG_INET_DIAG_DESTROY is not set\n"))
	zw.Close()
	write("config.gz", buf.String())
	if s, k := DestroySupport(dir, dir, "6.1.0-yes"); s || !k {
		t.Errorf("config.gz: %v %v", s, k)
	}
}

// FuzzDiagMessage feeds arbitrary inet_diag messages (as the kernel would
// send them in a dump) to the decoder: it must never panic.
func FuzzDiagMessage(f *testing.F) {
	msg := make([]byte, 72+8+136)
	msg[0], msg[1] = unix.AF_INET, tcpEstablished
	binary.NativeEndian.PutUint16(msg[72:], 8+136)
	binary.NativeEndian.PutUint16(msg[74:], inetDiagInfo)
	f.Add(msg)
	f.Add(msg[:72])
	f.Add(append(msg[:72:72], 4, 0, 2, 0))
	f.Fuzz(func(t *testing.T, p []byte) {
		if len(p) < 72 {
			return
		}
		d := Dumper{}
		d.set.m = map[Key]struct{}{}
		d.add(p)
		silent(p[72:])
		parseListener(p)
	})
}
