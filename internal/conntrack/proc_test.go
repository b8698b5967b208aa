package conntrack

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
)

func readLines(t testing.TB, name string) [][]byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(bytes.TrimSpace(b), []byte("\n"))
}

func TestParseProcIncident(t *testing.T) {
	perSource := map[string]int{}
	var timeouts []uint32
	var e Entry
	for _, l := range readLines(t, "incident-nf_conntrack.txt") {
		if err := ParseProcLine(l, &e); err != nil {
			t.Fatalf("%s: %v", l, err)
		}
		if e.Family != FamilyIPv4 || e.Proto != ProtoTCP || e.TCPState != TCPEstablished ||
			!e.Status.Has(StatusAssured|StatusSeenReply) || e.Orig.DstPort != 443 ||
			e.Orig.Dst != netip.MustParseAddr("172.31.19.247") || e.Reply.Src != e.Orig.Dst || e.Reply.SrcPort != 443 {
			t.Errorf("unexpected parse %+v", e)
		}
		perSource[e.Orig.Src.String()]++
		timeouts = append(timeouts, e.Timeout)
	}
	want := map[string]int{"78.39.13.110": 5, "5.121.204.0": 3, "5.211.167.102": 2}
	for k, v := range want {
		if perSource[k] != v {
			t.Errorf("%s: %d entries, want %d", k, perSource[k], v)
		}
	}
	// Idle times against the 432000 s default, as the fixture README gives them.
	idle := []uint32{662, 2772, 953, 195, 2688, 294, 1752, 1942, 2850, 2409}
	for i, to := range timeouts {
		if 432000-to != idle[i] {
			t.Errorf("line %d: idle %d, want %d", i+1, 432000-to, idle[i])
		}
	}
}

func TestParseProcMixed(t *testing.T) {
	lines := readLines(t, "mixed-nf_conntrack.txt")
	// The same entries as the netlink recording: both parsers must agree.
	byNetlink := map[string]Entry{}
	var e Entry
	for _, m := range recorded(t, "netlink-mixed.bin") {
		if err := ParseMessage(m, &e); err != nil {
			t.Fatal(err)
		}
		byNetlink[e.Orig.Src.String()] = e
	}
	for _, l := range lines {
		if err := ParseProcLine(l, &e); err != nil {
			t.Fatalf("%s: %v", l, err)
		}
		n, ok := byNetlink[e.Orig.Src.String()]
		if !ok {
			t.Fatalf("proc line for %s has no netlink twin", e.Orig.Src)
		}
		// Fields that differ by source: timeouts tick, IDs and counters are
		// netlink-only, and /proc has no CONFIRMED bit to print.
		n.Timeout, e.Timeout = 0, 0
		n.ID, n.HasCounters, n.OrigCount, n.ReplyCount = 0, false, Counters{}, Counters{}
		if n.Mark == 7 {
			n.Mark = 0 // the recording marked the outbound flow
		}
		if n != e {
			t.Errorf("proc and netlink disagree for %s:\n proc    %+v\n netlink %+v", e.Orig.Src, e, n)
		}
	}
}

func TestParseProcShapes(t *testing.T) {
	cases := []struct {
		name, line string
		check      func(e *Entry) bool
	}{
		{"acct counters", "ipv4     2 tcp      6 431999 ESTABLISHED src=192.0.2.1 dst=192.0.2.10 sport=1 dport=22 packets=3 bytes=180 src=192.0.2.10 dst=192.0.2.1 sport=22 dport=1 packets=2 bytes=120 [ASSURED] mark=0 zone=0 use=2",
			func(e *Entry) bool {
				return e.HasCounters && e.OrigCount == Counters{3, 180} && e.ReplyCount == Counters{2, 120}
			}},
		{"offloaded entries have no timeout column", "ipv4     2 tcp      6 ESTABLISHED src=192.0.2.1 dst=192.0.2.10 sport=1 dport=22 src=192.0.2.10 dst=192.0.2.1 sport=22 dport=1 [OFFLOAD] mark=0 zone=0 use=2",
			func(e *Entry) bool {
				return e.Timeout == 0 && e.TCPState == TCPEstablished && e.Status.Has(StatusOffload)
			}},
		{"gre", "ipv4     2 gre      47 178 src=192.0.2.1 dst=192.0.2.10 srckey=0x0 dstkey=0x0 src=192.0.2.10 dst=192.0.2.1 srckey=0x0 dstkey=0x0 [ASSURED] mark=0 zone=0 use=2",
			func(e *Entry) bool { return e.Proto == 47 && !e.HasTCPState && e.Timeout == 178 }},
		{"sctp state is not a tcp state", "ipv4     2 sctp     132 3 ESTABLISHED src=192.0.2.1 dst=192.0.2.10 sport=5 dport=6 src=192.0.2.10 dst=192.0.2.1 sport=6 dport=5 [ASSURED] mark=0 zone=0 use=2",
			func(e *Entry) bool { return e.Proto == 132 && !e.HasTCPState && e.Orig.SrcPort == 5 }},
		{"compressed ipv6", "ipv6     10 udp      17 20 src=2001:db8::1 dst=2001:db8::10 sport=1 dport=2 [UNREPLIED] src=2001:db8::10 dst=2001:db8::1 sport=2 dport=1 mark=0 zone=0 use=2",
			func(e *Entry) bool {
				return e.Orig.Src == netip.MustParseAddr("2001:db8::1") && !e.Status.Has(StatusSeenReply)
			}},
		{"secctx and zone-orig", "ipv4     2 tcp      6 10 CLOSE src=192.0.2.1 dst=192.0.2.10 sport=1 dport=2 zone-orig=4 src=192.0.2.10 dst=192.0.2.1 sport=2 dport=1 mark=5 secctx=system_u:object_r:x zone=4 use=1",
			func(e *Entry) bool { return e.TCPState == TCPClose && e.Mark == 5 && e.Zone == 4 }},
	}
	for _, c := range cases {
		var e Entry
		if err := ParseProcLine([]byte(c.line), &e); err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if !c.check(&e) {
			t.Errorf("%s: parsed %+v", c.name, e)
		}
	}
	bad := []string{
		"",
		"ipv4 2 tcp",
		"ipx 2 tcp 6 10 src=192.0.2.1 dst=192.0.2.2",
		"ipv4     2 tcp      6 10 ESTABLISHED src=192.0.2.300 dst=192.0.2.10 sport=1 dport=2",
		"ipv4     2 tcp      6 10 ESTABLISHED src=192.0.2.1 dst=192.0.2.10 sport=70000 dport=2",
		"ipv4     2 tcp      6 10 BOGUS src=192.0.2.1 dst=192.0.2.10 sport=1 dport=2",
		"ipv4     2 tcp      6 10 ESTABLISHED sport=1 dport=2",
		"ipv4     2 tcp      999 10 ESTABLISHED src=192.0.2.1 dst=192.0.2.10",
		"ipv4     2 tcp      6 10 ESTABLISHED src=1.2.3.4 dst=5.6.7.8 src=1.2.3.4 dst=1.1.1.1 src=9.9.9.9",
		"ipv6     10 udp      17 20 src=fe80::1%eth0 dst=2001:db8::10 sport=1 dport=2",
		"ipv4     2 tcp      6 10 ESTABLISHED src=01.2.3.4 dst=5.6.7.8",
	}
	for _, l := range bad {
		var e Entry
		if err := ParseProcLine([]byte(l), &e); err == nil {
			t.Errorf("accepted %q as %+v", l, e)
		}
	}
}

func TestProcReaderFiltersAndErrors(t *testing.T) {
	r := &ProcReader{Path: "testdata/incident-nf_conntrack.txt"}
	n := 0
	src := netip.MustParseAddr("78.39.13.110")
	if err := r.Dump(context.Background(), DumpOptions{Source: src}, func(e *Entry) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 5 {
		t.Errorf("source filter: %d entries, want 5", n)
	}
	stop := errors.New("stop")
	if err := r.Dump(context.Background(), DumpOptions{}, func(e *Entry) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("callback error not returned: %v", err)
	}
	missing := &ProcReader{Path: t.TempDir() + "/net/nf_conntrack"}
	err := missing.Dump(context.Background(), DumpOptions{}, func(*Entry) error { return nil })
	if !errors.Is(err, ErrNoProcFile) || !strings.Contains(err.Error(), "CONFIG_NF_CONNTRACK_PROCFS") {
		t.Errorf("missing file: %v", err)
	}
	bad := t.TempDir() + "/nf_conntrack"
	os.WriteFile(bad, []byte("ipv4 2 tcp 6 10 ESTABLISHED src=1.2.3.4 dst=5.6.7.8 sport=1 dport=2\nipv4 2 tcp 6 x\n"), 0o644)
	err = (&ProcReader{Path: bad}).Dump(context.Background(), DumpOptions{}, func(*Entry) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("bad line: %v", err)
	}
}

func FuzzParseProcLine(f *testing.F) {
	for _, name := range []string{"incident-nf_conntrack.txt", "mixed-nf_conntrack.txt"} {
		for _, l := range readLines(f, name) {
			f.Add(l)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Entry
		if err := ParseProcLine(b, &e); err != nil {
			return
		}
		if !e.Orig.Src.IsValid() || !e.Orig.Dst.IsValid() {
			t.Fatalf("accepted a line without an original tuple: %q", b)
		}
		_ = e.String()
	})
}

func BenchmarkParseProcLine(b *testing.B) {
	lines := readLines(b, "mixed-nf_conntrack.txt")
	var e Entry
	b.ReportAllocs()
	for b.Loop() {
		for _, l := range lines {
			if err := ParseProcLine(l, &e); err != nil {
				b.Fatal(err)
			}
		}
	}
}
