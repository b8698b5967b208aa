package daemon

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/snapshot"
	"github.com/ctguard/ctguard/internal/store"
)

func TestBanIndex(t *testing.T) {
	exp := time.Now().Add(time.Hour)
	idx := newBanIndex([]store.Active{
		{Prefix: netip.MustParsePrefix("203.0.113.5/32"), Expires: exp},
		{Prefix: netip.MustParsePrefix("203.0.113.6/32"), Expires: exp},
		{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Expires: exp},
		{Prefix: netip.MustParsePrefix("2001:db8:1::5/128"), Expires: exp},
		{Prefix: netip.MustParsePrefix("2001:db8:1::6/128"), Expires: exp},
		{Prefix: netip.MustParsePrefix("2001:db8:1:2::/64"), Expires: exp},
		{Prefix: netip.MustParsePrefix("2001:db8:1:100::/56"), Expires: exp},
		{Prefix: netip.MustParsePrefix("2001:db8:2::9/128"), Expires: exp},
	}, 24, 64)
	for p, want := range map[string]bool{
		"203.0.113.5/32": true, "203.0.113.7/32": false, "198.51.100.9/32": true, "198.51.100.0/24": true,
		"198.51.0.0/16": false, "2001:db8:1::5/128": true,
	} {
		if got := idx.covered(netip.MustParsePrefix(p)); got != want {
			t.Errorf("covered(%s) = %v", p, got)
		}
	}
	if n := idx.hostsIn(netip.MustParsePrefix("203.0.113.0/24")); n != 2 {
		t.Errorf("hostsIn /24 = %d, want 2", n)
	}
	if n := idx.hostsIn(netip.MustParsePrefix("2001:db8:1::/64")); n != 2 {
		t.Errorf("hostsIn /64 = %d, want 2", n)
	}
	// Two addresses of one /64, a /64 and a /56 inside 2001:db8:1::/48:
	// three groups; the address in another /48 is not one of them.
	if g := idx.groupsIn(netip.MustParsePrefix("2001:db8:1::/48")); len(g) != 3 {
		t.Errorf("groupsIn /48 = %v, want 3 groups", g)
	}
	if g := idx.groupsIn(netip.MustParsePrefix("2001:db8:1:2::/64")); len(g) != 0 {
		t.Errorf("groupsIn of a banned /64 itself = %v, want none", g)
	}
}

// TestGrowthCheckpoints: each scan is compared with the oldest checkpoint
// within the window; checkpoints are taken at most every quarter window and
// hold only keys with a handful of ESTABLISHED entries.
func TestGrowthCheckpoints(t *testing.T) {
	var g growth
	t0 := time.Date(2026, 12, 3, 2, 0, 0, 0, time.UTC)
	bot := netip.MustParsePrefix("198.18.0.1/32")
	snapAt := func(active uint32) *snapshot.Snapshot {
		return &snapshot.Snapshot{Sources: []snapshot.Holder{
			{Key: bot, Counts: snapshot.Counts{Active: active}},
			{Key: netip.MustParsePrefix("192.0.2.9/32"), Counts: snapshot.Counts{Active: 2}},
		}}
	}
	if e := g.observe(t0, snapAt(0), 12*time.Second); e != nil {
		t.Fatalf("first scan has an earlier one: %+v", e)
	}
	e := g.observe(t0.Add(time.Second), snapAt(60), 12*time.Second)
	if e == nil || e.Since != time.Second || e.Entries[bot] != 0 {
		t.Fatalf("second scan: %+v", e)
	}
	// Within a quarter window no new checkpoint: the 60 is not recorded.
	g.observe(t0.Add(2*time.Second), snapAt(120), 12*time.Second)
	e = g.observe(t0.Add(4*time.Second), snapAt(240), 12*time.Second)
	if e.Since != 4*time.Second || e.Entries[bot] != 0 {
		t.Fatalf("compared with %+v, want the first scan", e)
	}
	// Past the window the first checkpoint is dropped; the one at 4 s
	// (240 entries) is next. Tiny holders are never recorded.
	e = g.observe(t0.Add(13*time.Second), snapAt(300), 12*time.Second)
	if e.Since != 9*time.Second || e.Entries[bot] != 240 {
		t.Fatalf("after the window: %+v", e)
	}
	if _, ok := e.Entries[netip.MustParsePrefix("192.0.2.9/32")]; ok {
		t.Fatal("a 2-entry source was recorded")
	}
	if len(g.cps) > maxCheckpoints {
		t.Fatalf("%d checkpoints", len(g.cps))
	}
}

// TestGrowthSlowScans: when the scans come slower than the window (a host
// starved of CPU under attack), each scan is compared with the one before,
// up to maxSpan windows back, never with nothing.
func TestGrowthSlowScans(t *testing.T) {
	var g growth
	t0 := time.Date(2026, 12, 3, 2, 0, 0, 0, time.UTC)
	bot := netip.MustParsePrefix("198.18.0.1/32")
	snapAt := func(active uint32) *snapshot.Snapshot {
		return &snapshot.Snapshot{Sources: []snapshot.Holder{{Key: bot, Counts: snapshot.Counts{Active: active}}}}
	}
	window := 15 * time.Second
	g.observe(t0, snapAt(10), window)
	e := g.observe(t0.Add(18*time.Second), snapAt(200), window)
	if e == nil || e.Since != 18*time.Second || e.Entries[bot] != 10 {
		t.Fatalf("a scan 18 s after the last one (window 15 s) compared with %+v, want the one before", e)
	}
	e = g.observe(t0.Add(40*time.Second), snapAt(300), window)
	if e == nil || e.Since != 22*time.Second || e.Entries[bot] != 200 {
		t.Fatalf("next slow scan compared with %+v, want the one at 18 s", e)
	}
	// A gap over maxSpan windows: too old to say anything about growth.
	if e := g.observe(t0.Add(40*time.Second+maxSpan*window+time.Second), snapAt(300), window); e != nil {
		t.Fatalf("after a gap of more than %d windows compared with %+v, want nothing", maxSpan, e)
	}
}

// TestNoteLosing: a cycle under high pressure that bans nothing is counted,
// kept for status and logged as a WARN naming the top holders, at most
// every lostWarnEvery; a cycle that bans or runs calm clears it.
func TestNoteLosing(t *testing.T) {
	var buf bytes.Buffer
	d := &Daemon{log: slog.New(slog.NewTextHandler(&buf, nil))}
	t0 := time.Date(2026, 12, 3, 2, 0, 0, 0, time.UTC)
	cgnat := netip.MustParsePrefix("203.0.113.12/32")
	res := policy.Result{Pressure: policy.Critical, Threshold: 15, Spared: []policy.Spare{{Target: cgnat,
		Counts: snapshot.Counts{Entries: 1100, Active: 1100}, Why: "score 11.00 under threshold 15"}}}
	d.noteLosing(t0, res)
	d.noteLosing(t0.Add(time.Second), res)
	if d.counters.PressureNoBan != 2 || d.losing == nil || d.losing.Spared[0].Target != cgnat {
		t.Fatalf("counters %+v losing %+v", d.counters, d.losing)
	}
	if n := strings.Count(buf.String(), "level=WARN"); n != 1 || !strings.Contains(buf.String(), "203.0.113.12/32 (1100 entries, 1100 active") {
		t.Fatalf("%d WARN lines:\n%s", n, buf.String())
	}
	d.noteLosing(t0.Add(11*time.Second), res)
	if !strings.Contains(buf.String(), "similar_cycles_not_logged=1") {
		t.Fatalf("second WARN does not count the muted cycle:\n%s", buf.String())
	}
	d.noteLosing(t0.Add(12*time.Second), policy.Result{Pressure: policy.High, Bans: []policy.Decision{{Target: cgnat}}})
	if d.losing != nil {
		t.Fatal("a cycle that banned still shows as losing")
	}
}

// An operator's bans cover their targets but never count toward automatic
// prefix bans: three manual test bans in a /24 are not evidence against it.
func TestBanIndexIgnoresManualBansForAggregation(t *testing.T) {
	exp := time.Now().Add(time.Hour)
	var active []store.Active
	for _, a := range []string{"203.0.113.5/32", "203.0.113.6/32", "203.0.113.7/32"} {
		active = append(active, store.Active{Prefix: netip.MustParsePrefix(a), Expires: exp, Manual: true})
	}
	active = append(active,
		store.Active{Prefix: netip.MustParsePrefix("2001:db8:1:2::/64"), Expires: exp, Manual: true},
		store.Active{Prefix: netip.MustParsePrefix("2001:db8:1:3::/64"), Expires: exp})
	idx := newBanIndex(active, 24, 64)
	if !idx.covered(netip.MustParsePrefix("203.0.113.5/32")) || !idx.covered(netip.MustParsePrefix("2001:db8:1:2::1/128")) {
		t.Fatal("manual bans must still cover their targets")
	}
	if n := idx.hostsIn(netip.MustParsePrefix("203.0.113.0/24")); n != 0 {
		t.Fatalf("manual bans counted as %d banned members", n)
	}
	if g := idx.groupsIn(netip.MustParsePrefix("2001:db8:1::/48")); len(g) != 1 || g[0] != netip.MustParsePrefix("2001:db8:1:3::/64") {
		t.Fatalf("groups in the /48: %v, want only the automatic /64", g)
	}
}

// why always ends in a verdict: banned (by whom, for how long), or why not.
func TestWhyVerdict(t *testing.T) {
	now := time.Now()
	cfg := policy.Default()
	a := netip.MustParseAddr("198.51.100.7")
	src := func(entries uint32, score float64) *Holding {
		return &Holding{Key: netip.PrefixFrom(a, 32), Counts: snapshot.Counts{Entries: entries, Idle: entries}, Score: score}
	}
	base := WhyReply{Addr: a, Pressure: policy.Elevated, Threshold: 60, Policy: cfg, CycleAt: now}
	for _, tc := range []struct {
		name string
		mod  func(*WhyReply)
		want string
	}{
		{"manual ban", func(r *WhyReply) {
			r.Bans = []store.Ban{{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Origin: store.OriginManual, Reason: "test", Expires: now.Add(time.Hour)}}
		}, "BANNED: 198.51.100.0/24 by an operator (test), for 1h more"},
		{"dry run", func(r *WhyReply) {
			r.DryRun = true
			r.Bans = []store.Ban{{Prefix: netip.PrefixFrom(a, 32), Reason: "source-score", Expires: now.Add(time.Minute)}}
		}, "would be banned (dry run): 198.51.100.7/32 by the policy"},
		{"expired ban, allowlisted", func(r *WhyReply) {
			r.Bans = []store.Ban{{Prefix: netip.PrefixFrom(a, 32), Expires: now.Add(-time.Minute)}}
			r.Allowlisted = []allow.Entry{{Prefix: netip.PrefixFrom(a, 32), Source: allow.Configured, Detail: "allow.addresses"}}
		}, "never banned: allowlisted"},
		{"nothing held", func(r *WhyReply) {}, "not banned: it held no entries"},
		{"few entries", func(r *WhyReply) { r.Source = src(4, 4) }, "not banned: it holds 4 entries, under min_entries 10"},
		{"under threshold", func(r *WhyReply) {
			r.Source = src(40, 40)
			r.Prefix = &Holding{Key: netip.MustParsePrefix("198.51.100.0/24"), Members: 3, Score: 90}
		}, "not banned: score 40.0 under the threshold 60 at elevated pressure; its prefix 198.51.100.0/24 (3 sources, score 90.0) did not reach a prefix rule"},
		{"due", func(r *WhyReply) { r.Source = src(300, 300) }, "due to be banned: score 300.0 reaches the threshold 60"},
	} {
		r := base
		tc.mod(&r)
		if got := verdict(&r, now); !strings.Contains(got, tc.want) {
			t.Errorf("%s: verdict %q, want it to contain %q", tc.name, got, tc.want)
		}
	}
}
