package conntrack

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/testutil"
)

// synthetic returns n ESTABLISHED+ASSURED TCP entries from src to dst:443.
func synthetic(src, dst netip.Addr, n int, basePort uint16, timeout uint32) []Entry {
	es := make([]Entry, n)
	for i := range es {
		sp := basePort + uint16(i)
		es[i] = Entry{
			Proto:       ProtoTCP,
			Orig:        Tuple{Src: src, Dst: dst, SrcPort: sp, DstPort: 443},
			Reply:       Tuple{Src: dst, Dst: src, SrcPort: 443, DstPort: sp},
			Status:      StatusConfirmed | StatusSeenReply | StatusAssured,
			Timeout:     timeout,
			TCPState:    TCPEstablished,
			HasTCPState: true,
		}
	}
	return es
}

func openIn(t *testing.T, ns *testutil.NS) *Conn {
	t.Helper()
	var c *Conn
	var err error
	ns.Do(t, func() { c, err = Open() })
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// conntrackL counts `conntrack -L` lines per original source in the namespace.
func conntrackL(t *testing.T, ns *testutil.NS, family string) map[string]int {
	t.Helper()
	out, err := ns.Output("conntrack", "-L", "-f", family)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "src="); ok {
				a := netip.MustParseAddr(v)
				m[a.String()]++
				break
			}
		}
	}
	return m
}

func TestRootCreateDumpStatsPurge(t *testing.T) {
	testutil.RequireRoot(t, "conntrack")
	ns := testutil.NewNS(t)
	c := openIn(t, ns)
	ctx := context.Background()
	dst4 := netip.MustParseAddr("192.0.2.10")
	dst6 := netip.MustParseAddr("2001:db8::10")
	var all []Entry
	want := map[string]int{}
	for i := range 5 {
		src := netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i)})
		n := 10 * (i + 1)
		all = append(all, synthetic(src, dst4, n, 10000, 431000)...)
		want[src.String()] = n
		src6 := netip.MustParseAddr(fmt.Sprintf("2001:db8:1::%d", i+1))
		all = append(all, synthetic(src6, dst6, n, 20000, 1000)...)
		want[src6.String()] = n
	}
	created, err := c.Create(ctx, all)
	if err != nil || created != len(all) {
		t.Fatalf("create: %d of %d: %v", created, len(all), err)
	}
	// Creating the same entries again must fail per entry (EEXIST), not silently.
	if n, err := c.Create(ctx, all[:3]); err == nil || n != 0 {
		t.Fatalf("duplicate create: n=%d err=%v, want 0 and an error", n, err)
	}

	got := map[string]int{}
	total := 0
	err = c.Dump(ctx, DumpOptions{}, func(e *Entry) error {
		total++
		got[e.Orig.Src.String()]++
		if e.Proto != ProtoTCP || !e.HasTCPState || e.TCPState != TCPEstablished || !e.Status.Has(StatusAssured) {
			return fmt.Errorf("unexpected entry %v", e)
		}
		if e.Orig.Dst != dst4 && e.Orig.Dst != dst6 || e.Orig.DstPort != 443 || e.Reply.SrcPort != 443 {
			return fmt.Errorf("bad tuple %v reply %+v", e, e.Reply)
		}
		if e.Timeout == 0 || e.Timeout > 431000 {
			return fmt.Errorf("bad timeout %v", e)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if total != len(all) {
		t.Fatalf("dump saw %d entries, want %d", total, len(all))
	}
	ref := conntrackL(t, ns, "ipv4")
	for k, v := range conntrackL(t, ns, "ipv6") {
		ref[k] = v
	}
	for k, v := range want {
		if got[k] != v || ref[k] != v {
			t.Errorf("source %s: reader %d, conntrack -L %d, want %d", k, got[k], ref[k], v)
		}
	}

	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if int(st.Count) != len(all) || st.Max == 0 || st.CPUs == 0 {
		t.Fatalf("stats = %+v, want count %d, max > 0, cpus > 0", st, len(all))
	}
	if b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max"); err == nil && strings.TrimSpace(string(b)) != fmt.Sprint(st.Max) {
		t.Errorf("stats max %d, sysctl %s", st.Max, b)
	}

	// Kernel-side filters: one IPv4 source, status, mark.
	n := 0
	src3 := netip.MustParseAddr("198.51.100.3")
	if err := c.Dump(ctx, DumpOptions{Source: src3}, func(e *Entry) error { n++; return nil }); err != nil || n != 30 {
		t.Fatalf("filtered dump of %s: %d entries, err %v; want 30", src3, n, err)
	}
	n = 0
	if err := c.Dump(ctx, DumpOptions{Status: StatusAssured, StatusMask: StatusAssured, Family: FamilyIPv6}, func(e *Entry) error { n++; return nil }); err != nil || n != 150 {
		t.Fatalf("status-filtered v6 dump: %d, err %v; want 150", n, err)
	}

	// An IPv6 purge must delete only that source's entries (the kernel's
	// IPv6 filter is inverted: this catches a regression either way).
	src6 := netip.MustParseAddr("2001:db8:1::2")
	del, err := c.PurgeSource(ctx, netip.PrefixFrom(src6, 128))
	if err != nil || del != 20 {
		t.Fatalf("purge %s: %d, %v; want 20", src6, del, err)
	}
	if cnt, _ := c.CountSource(ctx, netip.MustParsePrefix("2001:db8:1::/64")); cnt != 150-20 {
		t.Fatalf("after v6 purge the /64 holds %d, want 130", cnt)
	}
	// A single IPv4 source (filtered flush where supported), then a prefix.
	del, err = c.PurgeSource(ctx, netip.PrefixFrom(src3, 32))
	if err != nil || del != 30 {
		t.Fatalf("purge %s: %d, %v; want 30", src3, del, err)
	}
	sup, known := c.FilteredFlushSupported()
	t.Logf("filtered flush supported=%v known=%v", sup, known)
	if cnt, _ := c.CountSource(ctx, netip.PrefixFrom(src3, 32)); cnt != 0 {
		t.Fatalf("after purge %s still holds %d", src3, cnt)
	}
	if cnt, _ := c.CountSource(ctx, netip.MustParsePrefix("198.51.100.0/24")); cnt != 150-30 {
		t.Fatalf("other IPv4 sources hold %d, want 120", cnt)
	}
	del, err = c.PurgeSource(ctx, netip.MustParsePrefix("198.51.100.0/30"))
	if err != nil || del != 10+20 {
		t.Fatalf("purge /30: %d, %v; want 30 (.1 and .2)", del, err)
	}
	ref = conntrackL(t, ns, "ipv4")
	if ref["198.51.100.4"] != 40 || ref["198.51.100.5"] != 50 || len(ref) != 2 {
		t.Fatalf("conntrack -L after purges: %v", ref)
	}
}

func TestRootPurgeManyAndDelete(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNS(t)
	c := openIn(t, ns)
	ctx := context.Background()
	dst4, dst6 := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")
	var all []Entry
	for i := range 12 {
		all = append(all, synthetic(netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i)}), dst4, 5, 1000, 1000)...)
		all = append(all, synthetic(netip.MustParseAddr(fmt.Sprintf("2001:db8:%x::1", i)), dst6, 3, 1000, 1000)...)
	}
	if n, err := c.Create(ctx, all); err != nil || n != len(all) {
		t.Fatalf("create %d: %v", n, err)
	}
	targets := []netip.Prefix{
		netip.MustParsePrefix("198.51.100.1/32"),
		netip.MustParsePrefix("198.51.100.8/30"), // .8 .9 .10 .11
		netip.MustParsePrefix("2001:db8:3::/48"),
		netip.MustParsePrefix("2001:db8:4::1/128"),
		netip.MustParsePrefix("203.0.113.0/24"), // holds nothing
	}
	before, err := c.CountSources(ctx, targets)
	if err != nil || fmt.Sprint(before) != "[5 20 3 3 0]" {
		t.Fatalf("count before: %v %v", before, err)
	}
	got, err := c.PurgeSources(ctx, targets)
	if err != nil || fmt.Sprint(got) != "[5 20 3 3 0]" {
		t.Fatalf("purge: %v %v", got, err)
	}
	after, err := c.CountSources(ctx, targets)
	if err != nil || fmt.Sprint(after) != "[0 0 0 0 0]" {
		t.Fatalf("count after: %v %v", after, err)
	}
	st, _ := c.Stats(ctx)
	if int(st.Count) != len(all)-31 {
		t.Fatalf("%d entries left, want %d: others must stay", st.Count, len(all)-31)
	}
	// Delete two specific entries, one of them twice (gone = done, not deleted).
	var victims []Entry
	c.Dump(ctx, DumpOptions{Source: netip.MustParseAddr("198.51.100.2")}, func(e *Entry) error {
		if len(victims) < 2 {
			victims = append(victims, *e)
		}
		return nil
	})
	if n, err := c.DeleteEntries(ctx, victims); err != nil || n != 2 {
		t.Fatalf("delete: %d %v", n, err)
	}
	if n, err := c.DeleteEntries(ctx, victims[:1]); err != nil || n != 0 {
		t.Fatalf("delete again: %d %v", n, err)
	}
	if n, _ := c.CountSource(ctx, netip.MustParsePrefix("198.51.100.2/32")); n != 3 {
		t.Fatalf("198.51.100.2 holds %d, want 3", n)
	}
}

func TestRootEvents(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNS(t)
	c := openIn(t, ns)
	var l *Listener
	var err error
	ns.Do(t, func() { l, err = Listen(EventNew, EventDestroy) })
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	src := netip.MustParseAddr("198.51.100.9")
	es := synthetic(src, netip.MustParseAddr("192.0.2.10"), 50, 1000, 1000)
	if n, err := c.Create(ctx, es); err != nil || n != 50 {
		t.Fatalf("create: %d %v", n, err)
	}
	if n, err := c.PurgeSource(ctx, netip.PrefixFrom(src, 32)); err != nil || n != 50 {
		t.Fatalf("purge: %d %v", n, err)
	}
	news, destroys := 0, 0
	err = l.Run(ctx, func(k EventKind, e *Entry) error {
		if e != nil && e.Orig.Src == src {
			switch k {
			case EventNew:
				news++
			case EventDestroy:
				destroys++
			}
		}
		if news == 50 && destroys == 50 {
			return errStop
		}
		return nil
	})
	if err != errStop {
		t.Fatalf("events: %d new, %d destroy (want 50 each); %v; lost %d", news, destroys, err, l.Lost)
	}
}

var errStop = fmt.Errorf("stop")

func TestRootMarkFilter(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNS(t)
	c := openIn(t, ns)
	ctx := context.Background()
	es := synthetic(netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("192.0.2.10"), 20, 1000, 1000)
	for i := range es {
		es[i].Mark = uint32(i % 4) // marks 0..3, five entries each
	}
	if n, err := c.Create(ctx, es); err != nil || n != 20 {
		t.Fatalf("create: %d %v", n, err)
	}
	count := func(o DumpOptions) int {
		n := 0
		if err := c.Dump(ctx, o, func(e *Entry) error {
			if e.Mark&o.MarkMask != o.Mark {
				return fmt.Errorf("entry with mark %d passed the filter %d/%d", e.Mark, o.Mark, o.MarkMask)
			}
			n++
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(DumpOptions{Mark: 2, MarkMask: 0xffffffff}); n != 5 {
		t.Errorf("mark 2: %d entries, want 5", n)
	}
	if n := count(DumpOptions{Mark: 1, MarkMask: 1}); n != 10 {
		t.Errorf("mark&1 == 1: %d entries, want 10 (marks 1 and 3)", n)
	}
}

// TestRootPurgeKeeping: a scoped purge deletes a source's entries but its
// TCP entries to the kept ports (the SSH session), for IPv4 and IPv6.
func TestRootPurgeKeeping(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNS(t)
	c := openIn(t, ns)
	ctx := context.Background()
	dst4, dst6 := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")
	src4, src6 := netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("2001:db8:7::1")
	var all []Entry
	for _, p := range []struct {
		src, dst netip.Addr
	}{{src4, dst4}, {src6, dst6}} {
		web := synthetic(p.src, p.dst, 20, 1000, 1000)
		ssh := synthetic(p.src, p.dst, 2, 3000, 1000)
		for i := range ssh {
			ssh[i].Orig.DstPort, ssh[i].Reply.SrcPort = 22, 22
		}
		all = append(append(all, web...), ssh...)
	}
	if n, err := c.Create(ctx, all); err != nil || n != len(all) {
		t.Fatalf("create %d: %v", n, err)
	}
	targets := []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.PrefixFrom(src6, 128)}
	keep := []uint16{22, 2222}
	if got, err := c.CountSourcesKeeping(ctx, targets, keep); err != nil || fmt.Sprint(got) != "[20 20]" {
		t.Fatalf("count keeping: %v %v", got, err)
	}
	if got, err := c.PurgeSourcesKeeping(ctx, targets, keep); err != nil || fmt.Sprint(got) != "[20 20]" {
		t.Fatalf("purge keeping: %v %v", got, err)
	}
	if got, err := c.CountSources(ctx, targets); err != nil || fmt.Sprint(got) != "[2 2]" {
		t.Fatalf("left %v %v, want the two SSH entries of each", got, err)
	}
}
