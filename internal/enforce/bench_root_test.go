package enforce

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/store"
	"github.com/ctguard/ctguard/internal/testutil"
	"github.com/vishvananda/netns"
)

// TestRootBenchEnforce is the enforcement benchmark (BENCHMARKS.md): 100,000
// bans in one change against shell loops of `nft add element` and `ipset
// add`, restore of 100,000 stored bans at start, and the purge of one
// source holding 20,000 entries against `conntrack -D -s`. Everything runs
// in scratch namespaces. It is opt-in (CTGUARD_BENCH=1, see
// scripts/bench-enforce.sh) because it takes a while, and it fails when a
// target is missed or a result is wrong.
func TestRootBenchEnforce(t *testing.T) {
	if os.Getenv("CTGUARD_BENCH") != "1" {
		t.Skip("benchmark: set CTGUARD_BENCH=1 (scripts/bench-enforce.sh)")
	}
	testutil.RequireRoot(t, "nft", "ipset", "conntrack", "ip")
	var report []string
	row := func(format string, a ...any) {
		s := fmt.Sprintf(format, a...)
		report = append(report, s)
		t.Log(s)
	}
	defer func() {
		if out := os.Getenv("CTGUARD_BENCH_OUT"); out != "" {
			os.WriteFile(out, []byte(strings.Join(report, "\n")+"\n"), 0o644)
		}
	}()
	ctx := context.Background()
	const n = 100_000

	// 1. 100,000 IPv4 bans in one change.
	ns := testutil.NewNS(t)
	fw := nftIn(t, ns)
	if _, err := fw.Setup(ctx, nil); err != nil {
		t.Fatal(err)
	}
	v4 := make([]Element, n)
	base := netip.MustParseAddr("198.18.0.0")
	a := base
	for i := range v4 {
		v4[i] = Element{Prefix: netip.PrefixFrom(a, 32), TTL: time.Hour}
		a = a.Next()
	}
	start := time.Now()
	if err := fw.Apply(ctx, Change{Add: v4}); err != nil {
		t.Fatal(err)
	}
	tApply := time.Since(start)
	if got := setSize(t, ns, SetBan4); got != n {
		t.Fatalf("ban4 holds %d of %d", got, n)
	}
	row("apply 100,000 IPv4 bans, one atomic batch (NFT.Apply): %v", tApply.Round(time.Millisecond))

	// The reconcile check must stay cheap however many bans the table holds.
	start = time.Now()
	const checks = 20
	for range checks {
		if p, err := fw.Check(ctx, 0); err != nil || p != "" {
			t.Fatalf("check: %q %v", p, err)
		}
	}
	row("reconcile check (table handle, sets, chain, rules) with 100,000 elements loaded: %v per check",
		(time.Since(start) / checks).Round(10*time.Microsecond))

	start = time.Now()
	if err := fw.Apply(ctx, Change{Delete: v4, Add: v4}); err != nil {
		t.Fatal(err)
	}
	row("re-ban (delete+add) of the same 100,000, one batch: %v", time.Since(start).Round(time.Millisecond))

	// Baselines: one process per element, on a 500-element sample.
	const sample = 500
	var nftScript, ipsetScript, nftFile strings.Builder
	ipsetScript.WriteString("ipset create bench hash:ip timeout 3600 maxelem 200000\n")
	nftFile.WriteString("add element inet ctguard ban4 { ")
	for i := range sample {
		addr := netip.AddrFrom4([4]byte{198, 19, 200 + byte(i/250), byte(i % 250)})
		fmt.Fprintf(&nftScript, "nft add element inet ctguard ban4 '{ %s timeout 1h }'\n", addr)
		fmt.Fprintf(&ipsetScript, "ipset add bench %s timeout 3600\n", addr)
	}
	for i, e := range v4 {
		if i > 0 {
			nftFile.WriteString(", ")
		}
		nftFile.WriteString(e.Prefix.Addr().String() + " timeout 1h")
	}
	nftFile.WriteString(" }\n")
	dir := t.TempDir()
	tNft := timeScript(t, ns, dir, "nft-loop.sh", nftScript.String())
	tIpset := timeScript(t, ns, dir, "ipset-loop.sh", ipsetScript.String())
	if err := os.WriteFile(filepath.Join(dir, "bulk.nft"), []byte(nftFile.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := fw.Setup(ctx, nil); err != nil { // empty again
		t.Fatal(err)
	}
	start = time.Now()
	ns.MustRun(t, "nft", "-f", filepath.Join(dir, "bulk.nft"))
	tNftFile := time.Since(start)
	if got := setSize(t, ns, SetBan4); got != n {
		t.Fatalf("nft -f loaded %d of %d", got, n)
	}
	perNft, perIpset := tNft/sample, tIpset/sample
	row("shell loop `nft add element`, %d elements: %v (%v each) -> 100,000 extrapolated %v = %.0fx NFT.Apply",
		sample, tNft.Round(time.Millisecond), perNft.Round(time.Microsecond), (perNft * n).Round(time.Second), float64(perNft*n)/float64(tApply))
	row("shell loop `ipset add`, %d elements: %v (%v each) -> 100,000 extrapolated %v = %.0fx NFT.Apply",
		sample, tIpset.Round(time.Millisecond), perIpset.Round(time.Microsecond), (perIpset * n).Round(time.Second), float64(perIpset*n)/float64(tApply))
	row("`nft -f` of one file with the 100,000 elements: %v = %.1fx NFT.Apply", tNftFile.Round(time.Millisecond), float64(tNftFile)/float64(tApply))

	// The same through the engine (allowlist check, overlap checks, store
	// records in one transaction; no purger, so no conntrack work), on a
	// fresh table and store.
	stE, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer stE.Close()
	engE := New(Config{Store: stE, Firewall: fw, Allow: benchAllow})
	if _, err := engE.Start(ctx); err != nil {
		t.Fatal(err)
	}
	reqs := make([]BanRequest, n)
	for i, e := range v4 {
		reqs[i] = BanRequest{Prefix: e.Prefix, TTL: time.Hour, Reason: "bench"}
	}
	start = time.Now()
	res, err := engE.BanMany(ctx, reqs)
	tEngine := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil || r.Ban.Count != 1 || !strings.Contains(r.Ban.PurgeErr, "no conntrack access") {
			t.Fatalf("engine ban: %+v", r)
		}
	}
	if got := setSize(t, ns, SetBan4); got != n {
		t.Fatalf("engine: ban4 holds %d of %d", got, n)
	}
	row("ban 100,000 IPv4 sources through Engine.BanMany (kernel batch + allowlist + store, no purge): %v", tEngine.Round(time.Millisecond))

	// 2. Restore of 100,000 stored bans at start (store read + one batch).
	bans := mixedBans(time.Now())
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.PutBans(bans); err != nil {
		t.Fatal(err)
	}
	ns2 := testutil.NewNS(t)
	fw2 := nftIn(t, ns2)
	fw2.log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	eng := New(Config{Store: st, Firewall: fw2, Allow: benchAllow})
	start = time.Now()
	r, err := eng.Start(ctx)
	tRestore := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if r.Restored != n {
		t.Fatalf("restored %d of %d", r.Restored, n)
	}
	sizes := [4]int{setSize(t, ns2, SetBan4), setSize(t, ns2, SetBan6), setSize(t, ns2, SetNet4), setSize(t, ns2, SetNet6)}
	if sizes != [4]int{80_000, 10_000, 5_000, 5_000} {
		t.Fatalf("restored set sizes %v", sizes)
	}
	start = time.Now()
	if _, err := st.ActiveIndex(time.Now()); err != nil {
		t.Fatal(err)
	}
	tIndex := time.Since(start)
	start = time.Now()
	if _, err := st.ActiveBans(time.Now()); err != nil {
		t.Fatal(err)
	}
	tRecords := time.Since(start)
	row("restore 100,000 stored bans at start (80k v4, 10k v6, 5k v4 /30, 5k v6 /64; Engine.Start): %v (of which index read %v; decoding the full records instead would cost %v)",
		tRestore.Round(time.Millisecond), tIndex.Round(time.Millisecond), tRecords.Round(time.Millisecond))

	// 3. Purge of one IPv4 source holding 20,000 entries, among 20,000 others.
	ns3 := testutil.NewNS(t)
	var ct *conntrack.Conn
	ns3.Do(t, func() { ct, err = conntrack.Open() })
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()
	bot, other := netip.MustParseAddr("192.0.2.50"), netip.MustParseAddr("192.0.2.51")
	dst := netip.MustParseAddr("192.0.2.1")
	fill := func(src netip.Addr) {
		t.Helper()
		es := entries(src, dst, 20_000)
		if c, err := ct.Create(ctx, es); err != nil || c != len(es) {
			t.Fatalf("create %d entries for %s: %d, %v", len(es), src, c, err)
		}
	}
	fill(bot)
	fill(other)
	start = time.Now()
	purged, err := ct.PurgeSource(ctx, netip.PrefixFrom(bot, 32))
	tPurge := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if left, _ := ct.CountSource(ctx, netip.PrefixFrom(bot, 32)); left != 0 || purged != 20_000 {
		t.Fatalf("purge: %d deleted, %d left", purged, left)
	}
	if kept, _ := ct.CountSource(ctx, netip.PrefixFrom(other, 32)); kept != 20_000 {
		t.Fatalf("purge touched another source: %d of 20000 left", kept)
	}
	flushed, known := ct.FilteredFlushSupported()
	fill(bot)
	start = time.Now()
	ns3.MustRun(t, "conntrack", "-D", "-s", bot.String())
	tCT := time.Since(start)
	if left, _ := ct.CountSource(ctx, netip.PrefixFrom(bot, 32)); left != 0 {
		t.Fatalf("conntrack -D left %d", left)
	}
	row("purge one IPv4 source with 20,000 entries (of 40,000; PurgeSource, filtered flush=%v known=%v): %v; `conntrack -D -s`: %v = %.1fx",
		flushed, known, tPurge.Round(time.Millisecond), tCT.Round(time.Millisecond), float64(tCT)/float64(tPurge))

	// The same for IPv6 (always dump + per-entry delete).
	bot6, other6, dst6 := netip.MustParseAddr("2001:db8::50"), netip.MustParseAddr("2001:db8::51"), netip.MustParseAddr("2001:db8::1")
	for _, src := range []netip.Addr{bot6, other6} {
		es := entries(src, dst6, 20_000)
		if c, err := ct.Create(ctx, es); err != nil || c != len(es) {
			t.Fatalf("create v6: %d, %v", c, err)
		}
	}
	start = time.Now()
	purged, err = ct.PurgeSource(ctx, netip.PrefixFrom(bot6, 128))
	tPurge6 := time.Since(start)
	if err != nil || purged != 20_000 {
		t.Fatalf("v6 purge: %d, %v", purged, err)
	}
	if kept, _ := ct.CountSource(ctx, netip.PrefixFrom(other6, 128)); kept != 20_000 {
		t.Fatalf("v6 purge touched another source: %d left", kept)
	}
	es := entries(bot6, dst6, 20_000)
	if c, err := ct.Create(ctx, es); err != nil || c != len(es) {
		t.Fatalf("re-create v6: %d, %v", c, err)
	}
	start = time.Now()
	ns3.MustRun(t, "conntrack", "-D", "-f", "ipv6", "-s", bot6.String())
	tCT6 := time.Since(start)
	row("purge one IPv6 source with 20,000 entries (of 60,000; dump+delete): %v; `conntrack -D -f ipv6 -s`: %v = %.1fx",
		tPurge6.Round(time.Millisecond), tCT6.Round(time.Millisecond), float64(tCT6)/float64(tPurge6))

	for _, c := range []struct {
		what      string
		got, want time.Duration
	}{
		{"100,000 bans applied", tApply, 500 * time.Millisecond},
		{"restore of 100,000 bans", tRestore, time.Second},
		{"purge of 20,000 IPv4 entries", tPurge, 200 * time.Millisecond},
	} {
		if c.got > c.want {
			t.Errorf("%s took %v, target %v", c.what, c.got, c.want)
		}
	}
}

// benchAllow keeps the allowlist off the host's files: the scratch
// namespaces have only loopback.
var benchAllow = allow.Config{
	ProcRoot: "/nonexistent", ResolvConf: "/nonexistent",
	InterfaceAddrs: func() ([]netip.Prefix, error) { return nil, nil },
}

func nftIn(t *testing.T, ns *testutil.NS) *NFT {
	t.Helper()
	h, err := netns.GetFromName(ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return NewNFT(nil, NFTOptions{NetNSFd: int(h)})
}

// setSize counts the elements of one of ctguard's sets via nft's JSON.
func setSize(t testing.TB, ns *testutil.NS, set string) int {
	t.Helper()
	out := ns.MustRun(t, "nft", "list", "set", "inet", TableName, set)
	body, _, _ := strings.Cut(out[strings.Index(out, "elements = {")+1:], "}")
	if !strings.Contains(out, "elements = {") {
		return 0
	}
	return strings.Count(body, ",") + 1
}

func timeScript(t *testing.T, ns *testutil.NS, dir, name, script string) time.Duration {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("set -e\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ns.MustRun(t, "sh", path)
	return time.Since(start)
}

// mixedBans is 100,000 active records: 80k IPv4 and 10k IPv6 addresses,
// 5k IPv4 /30 and 5k IPv6 /64 prefixes, none overlapping.
func mixedBans(now time.Time) []store.Ban {
	var out []store.Ban
	add := func(p netip.Prefix) {
		out = append(out, store.Ban{Prefix: p, Reason: "bench", First: now, Last: now, Count: 1, Expires: now.Add(time.Hour)})
	}
	a := netip.MustParseAddr("198.18.0.0")
	for range 80_000 {
		add(netip.PrefixFrom(a, 32))
		a = a.Next()
	}
	for i := range 5_000 {
		add(netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, 128 + byte(i/64), byte(i%64) * 4}), 30))
	}
	for i := range 10_000 {
		add(netip.PrefixFrom(netip.MustParseAddr(fmt.Sprintf("2001:db8:1::%x", i+1)), 128))
	}
	for i := range 5_000 {
		add(netip.MustParsePrefix(fmt.Sprintf("2001:db8:2:%x::/64", i)))
	}
	return out
}

// entries is n synthetic ESTABLISHED, ASSURED entries from src (the
// silent-bot class: long timeouts, never early-dropped).
func entries(src, dst netip.Addr, n int) []conntrack.Entry {
	es := make([]conntrack.Entry, n)
	for i := range es {
		sp := uint16(10000 + i)
		es[i] = conntrack.Entry{
			Proto:       conntrack.ProtoTCP,
			Orig:        conntrack.Tuple{Src: src, Dst: dst, SrcPort: sp, DstPort: 443},
			Reply:       conntrack.Tuple{Src: dst, Dst: src, SrcPort: 443, DstPort: sp},
			Status:      conntrack.StatusConfirmed | conntrack.StatusSeenReply | conntrack.StatusAssured,
			Timeout:     431000,
			TCPState:    conntrack.TCPEstablished,
			HasTCPState: true,
		}
	}
	return es
}
