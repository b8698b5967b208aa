package snapshot

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/sockets"
)

func fromProc(t testing.TB, name string, cfg Config) *Snapshot {
	t.Helper()
	b, err := os.ReadFile("../conntrack/testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	a := NewAggregator(cfg)
	var e conntrack.Entry
	for _, l := range bytes.SplitAfter(bytes.TrimSpace(b), []byte("\n")) {
		if err := conntrack.ParseProcLine(l, &e); err != nil {
			t.Fatal(err)
		}
		a.Add(&e)
	}
	return a.Snapshot()
}

func find(hs []Holder, key string) *Holder {
	for i := range hs {
		if hs[i].Key.String() == key || (hs[i].Key.IsSingleIP() && hs[i].Key.Addr().String() == key) {
			return &hs[i]
		}
	}
	return nil
}

func TestIncident(t *testing.T) {
	s := fromProc(t, "incident-nf_conntrack.txt", Config{Local: NewLocalSet(netip.MustParseAddr("172.31.19.247"))})
	if s.Total != 10 || s.Inbound != 10 || s.Outbound != 0 || s.States[conntrack.TCPEstablished] != 10 || s.Classes[Idle] != 10 {
		t.Fatalf("totals: %+v", s)
	}
	want := []struct {
		src          string
		n, maxIdle   uint32
		prefix       string
		prefixMember uint32
	}{
		{"78.39.13.110", 5, 2850, "78.39.13.0/24", 1},
		{"5.121.204.0", 3, 1942, "5.121.204.0/24", 1},
		{"5.211.167.102", 2, 2688, "5.211.167.0/24", 1},
	}
	for i, w := range want {
		h := s.Sources[i] // sorted by entries held
		if h.Key.Addr().String() != w.src || h.Entries != w.n || h.Idle != w.n || h.IdleAssured != w.n || h.MaxIdle != w.maxIdle || h.Active+h.Stalled+h.HalfOpen+h.Closing+h.Other != 0 {
			t.Errorf("source %d = %+v, want %s with %d idle assured, oldest idle %d", i, h, w.src, w.n, w.maxIdle)
		}
		p := find(s.Prefixes, w.prefix)
		if p == nil || p.Entries != w.n || p.Members != w.prefixMember {
			t.Errorf("prefix %s = %+v", w.prefix, p)
		}
	}
	// Idle times 195..2850 s: 2 in [60,300), 1 in [300,900), 7 in [900,3600).
	if s.IdleHist != [NumIdleBuckets]int{0, 2, 1, 7, 0, 0, 0} {
		t.Errorf("idle histogram %v", s.IdleHist)
	}
}

func TestMixedClasses(t *testing.T) {
	local := NewLocalSet(netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10"))
	s := fromProc(t, "mixed-nf_conntrack.txt", Config{Local: local})
	want := map[string]Class{
		"192.0.2.66": Idle, "2001:db8::66": Idle,
		"192.0.2.77": HalfOpen, "192.0.2.97": HalfOpen, "2001:db8::68": HalfOpen,
		"192.0.2.99": HalfOpen, "2001:db8::67": HalfOpen,
		"192.0.2.98": Other, "192.0.2.78": Closing,
	}
	if len(s.Sources) != len(want) {
		t.Errorf("%d sources, want %d: %+v", len(s.Sources), len(want), s.Sources)
	}
	for src, cl := range want {
		h := find(s.Sources, src)
		if h == nil || h.Entries != 1 || h.Class(cl) != 1 {
			t.Errorf("%s: %+v, want one %s entry", src, h, cl)
		}
	}
	if find(s.Sources, "198.51.100.5") != nil || s.Outbound != 1 {
		t.Errorf("the host's outbound flow was counted against its peer (outbound=%d)", s.Outbound)
	}
	if s.States[conntrack.TCPEstablished] != 3 || s.States[conntrack.TCPSynRecv] != 1 || s.States[conntrack.TCPTimeWait] != 1 {
		t.Errorf("states %v", s.States)
	}
	nonTCP := s.Total - s.Protos[conntrack.ProtoTCP]
	if nonTCP != 5 || s.Total != 10 {
		t.Errorf("total %d, non-TCP %d; want 10, 5", s.Total, nonTCP)
	}
	// 192.0.2.0/24 holds 6 inbound entries from 6 sources.
	if p := find(s.Prefixes, "192.0.2.0/24"); p == nil || p.Entries != 6 || p.Members != 6 {
		t.Errorf("prefix 192.0.2.0/24: %+v", p)
	}
	if p := find(s.Prefixes, "2001:db8::/64"); p == nil || p.Entries != 3 || p.Members != 3 {
		t.Errorf("prefix 2001:db8::/64: %+v", p)
	}
}

func TestClassify(t *testing.T) {
	cfg := Config{}.WithDefaults()
	est := func(timeout uint32, st conntrack.Status) *conntrack.Entry {
		return &conntrack.Entry{Proto: conntrack.ProtoTCP, TCPState: conntrack.TCPEstablished, HasTCPState: true, Timeout: timeout, Status: st}
	}
	rep := conntrack.StatusSeenReply | conntrack.StatusAssured
	cases := []struct {
		name string
		e    *conntrack.Entry
		cfg  Config
		want Class
		idle uint32
	}{
		{"fresh", est(431990, rep), cfg, Active, 10},
		{"exactly at threshold", est(432000-60, rep), cfg, Idle, 60},
		{"idle for days", est(1000, rep), cfg, Idle, 431000},
		{"unacked cap is stalled, not 5 days idle", est(299, rep), cfg, Stalled, 0},
		{"cap boundary", est(300, rep), cfg, Stalled, 0},
		{"just above the cap", est(301, rep), cfg, Idle, 432000 - 301},
		{"timeout above reference (sysctl lowered later)", est(500000, rep), cfg, Active, 0},
		{"short established timeout: no stall reading", est(100, rep), Config{EstablishedTimeout: 120}.WithDefaults(), Active, 20},
		{"never replied", est(431000, 0), cfg, HalfOpen, 0},
		{"syn_recv", &conntrack.Entry{Proto: conntrack.ProtoTCP, TCPState: conntrack.TCPSynRecv, Status: rep}, cfg, HalfOpen, 0},
		{"syn_sent2", &conntrack.Entry{Proto: conntrack.ProtoTCP, TCPState: conntrack.TCPSynSent2, Status: rep}, cfg, HalfOpen, 0},
		{"close_wait", &conntrack.Entry{Proto: conntrack.ProtoTCP, TCPState: conntrack.TCPCloseWait, Status: rep}, cfg, Closing, 0},
		{"tcp none replied", &conntrack.Entry{Proto: conntrack.ProtoTCP, TCPState: conntrack.TCPNone, Status: rep}, cfg, Other, 0},
		{"udp replied", &conntrack.Entry{Proto: conntrack.ProtoUDP, Status: rep}, cfg, Other, 0},
		{"gre unreplied", &conntrack.Entry{Proto: 47}, cfg, HalfOpen, 0},
	}
	for _, c := range cases {
		got, idle := Classify(c.e, &c.cfg)
		if got != c.want || idle != c.idle {
			t.Errorf("%s: %s idle %d, want %s idle %d", c.name, got, idle, c.want, c.idle)
		}
	}
}

func TestSortAndReset(t *testing.T) {
	a := NewAggregator(Config{V4Bits: 16})
	add := func(src string, st conntrack.TCPState, n int) {
		e := conntrack.Entry{Proto: conntrack.ProtoTCP, TCPState: st, HasTCPState: true, Status: conntrack.StatusSeenReply, Timeout: 1000,
			Orig: conntrack.Tuple{Src: netip.MustParseAddr(src)}}
		for range n {
			a.Add(&e)
		}
	}
	add("198.51.1.1", conntrack.TCPEstablished, 5)
	add("198.51.2.2", conntrack.TCPSynRecv, 7)
	add("203.0.113.1", conntrack.TCPEstablished, 6)
	s := a.Snapshot()
	if s.Sources[0].Key.Addr().String() != "198.51.2.2" {
		t.Errorf("by held: %v first", s.Sources[0].Key)
	}
	SortBy(s.Sources, ByIdle)
	if s.Sources[0].Key.Addr().String() != "203.0.113.1" {
		t.Errorf("by idle: %v first", s.Sources[0].Key)
	}
	if p := find(s.Prefixes, "198.51.0.0/16"); p == nil || p.Entries != 12 || p.Members != 2 {
		t.Errorf("/16 aggregation: %+v", p)
	}
	a.Reset()
	if s2 := a.Snapshot(); s2.Total != 0 || len(s2.Sources) != 0 {
		t.Errorf("after reset: %+v", s2)
	}
	if len(s.Sources) != 3 {
		t.Errorf("snapshot aliased the aggregator: %d sources after reset", len(s.Sources))
	}
}

func TestOrphans(t *testing.T) {
	local := netip.MustParseAddr("192.0.2.10")
	a := NewAggregator(Config{Local: NewLocalSet(local)})
	var socks sockets.Set
	mk := func(src string, sport uint16, timeout uint32) *conntrack.Entry {
		s := netip.MustParseAddr(src)
		return &conntrack.Entry{Proto: conntrack.ProtoTCP, TCPState: conntrack.TCPEstablished, HasTCPState: true,
			Status: conntrack.StatusSeenReply | conntrack.StatusAssured, Timeout: timeout,
			Orig:  conntrack.Tuple{Src: s, Dst: local, SrcPort: sport, DstPort: 443},
			Reply: conntrack.Tuple{Src: local, Dst: s, SrcPort: 443, DstPort: sport}}
	}
	// A NAT gateway: every entry has a socket. A bot: none do.
	for p := uint16(1); p <= 10; p++ {
		socks.Add(sockets.KeyOf(netip.MustParseAddr("198.51.100.1"), p, 443))
		a.Add(mk("198.51.100.1", p, 431995))
		a.Add(mk("203.0.113.9", p, 431995))
	}
	a.Add(mk("203.0.113.9", 99, 1000)) // idle and orphan
	dnat := mk("203.0.113.9", 100, 431995)
	dnat.Reply.Src = netip.MustParseAddr("198.18.0.2") // DNAT to a container: no verdict
	a.Add(dnat)
	a.SetSockets(&socks)
	a.Reset()
	for p := uint16(1); p <= 10; p++ {
		a.Add(mk("198.51.100.1", p, 431995))
		a.Add(mk("203.0.113.9", p, 431995))
	}
	a.Add(mk("203.0.113.9", 99, 1000))
	a.Add(dnat)
	a.Add(mk("203.0.113.9", 101, 431999)) // 1 s old: too young to judge
	s := a.Snapshot()
	nat, bot := find(s.Sources, "198.51.100.1"), find(s.Sources, "203.0.113.9")
	socks.Add(sockets.KeyOf(netip.MustParseAddr("198.51.100.1"), 99, 443))
	a.Reset()
	a.Add(mk("198.51.100.1", 99, 1000)) // idle, but an application holds it
	if h := a.Snapshot().Sources[0]; h.ServedIdle != 1 || h.Orphan != 0 || h.Idle != 1 {
		t.Errorf("served idle entry: %+v", h)
	}
	if nat.Orphan != 0 || bot.Orphan != 11 || bot.OrphanActive != 10 || bot.Entries != 13 || !s.Sockets || s.Orphans != 11 {
		t.Errorf("nat %+v\nbot %+v\nsnapshot orphans %d sockets %v", nat, bot, s.Orphans, s.Sockets)
	}
}

// TestOrphansDuringLongScan: a connection made after the sockets were
// listed has no socket in the list; while the scan runs, an entry quiet for
// less than the time since the listing is not judged an orphan.
func TestOrphansDuringLongScan(t *testing.T) {
	local := netip.MustParseAddr("192.0.2.10")
	a := NewAggregator(Config{Local: NewLocalSet(local)})
	t0 := time.Date(2026, 12, 3, 2, 0, 0, 0, time.UTC)
	now := t0
	a.Now = func() time.Time { return now }
	mk := func(sport uint16, idle uint32) *conntrack.Entry {
		s := netip.MustParseAddr("203.0.113.12")
		return &conntrack.Entry{Proto: conntrack.ProtoTCP, TCPState: conntrack.TCPEstablished, HasTCPState: true,
			Status: conntrack.StatusSeenReply | conntrack.StatusAssured, Timeout: DefaultEstablishedTimeout - idle,
			Orig:  conntrack.Tuple{Src: s, Dst: local, SrcPort: sport, DstPort: 443},
			Reply: conntrack.Tuple{Src: local, Dst: s, SrcPort: 443, DstPort: sport}}
	}
	a.SetSockets(&sockets.Set{})
	now = t0.Add(7 * time.Second) // a slow scan under load
	a.Add(mk(1, 5))               // quiet 5 s: may be younger than the listing
	a.Add(mk(2, 20))              // quiet 20 s: existed at the listing, no socket
	if h := a.Snapshot().Sources[0]; h.Orphan != 1 || h.Entries != 2 {
		t.Fatalf("orphans %d of %d, want only the one quiet longer than the scan", h.Orphan, h.Entries)
	}
}

// KeepMin lists the holders that matter and counts the rest: single-entry
// sources still add to their prefixes and the totals.
func TestKeepMin(t *testing.T) {
	a := NewAggregator(Config{KeepMin: 2, KeepTop: 3})
	add := func(src string, n int) {
		e := conntrack.Entry{Proto: conntrack.ProtoTCP, TCPState: conntrack.TCPEstablished, HasTCPState: true, Status: conntrack.StatusSeenReply, Timeout: 1000,
			Orig: conntrack.Tuple{Src: netip.MustParseAddr(src)}}
		for range n {
			a.Add(&e)
		}
	}
	add("198.51.100.7", 50)
	for i := range 10 {
		add(fmt.Sprintf("203.0.113.%d", i+1), 1)
	}
	s := a.Snapshot()
	if s.NumSources != 11 || len(s.Sources) != 3 || s.Sources[0].Key.Addr().String() != "198.51.100.7" {
		t.Fatalf("sources: %d listed of %d, first %v; want 3 of 11 (the holder and 2 single-entry ones)", len(s.Sources), s.NumSources, s.Sources[0].Key)
	}
	if p := find(s.Prefixes, "203.0.113.0/24"); p == nil || p.Entries != 10 || p.Members != 10 {
		t.Fatalf("the /24 of single-entry sources: %+v", p)
	}
	if s.Total != 60 || s.NumPrefixes != 2 {
		t.Fatalf("totals: %d entries, %d prefixes", s.Total, s.NumPrefixes)
	}
	// A second call gives the same members (no double counting).
	if p := find(a.Snapshot().Prefixes, "203.0.113.0/24"); p == nil || p.Members != 10 {
		t.Fatalf("second snapshot: %+v", p)
	}
}
