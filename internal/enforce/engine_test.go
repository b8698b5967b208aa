package enforce

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/sockets"
	"github.com/ctguard/ctguard/internal/store"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	clk *clock
	fw  *Fake
	ct  *FakePurger
	st  *store.Store
	eng *Engine
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{clk: &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}}
	f.fw = NewFake(f.clk.now)
	f.ct = &FakePurger{Entries: map[netip.Addr]int{
		netip.MustParseAddr("198.51.100.7"):   300,
		netip.MustParseAddr("198.51.100.8"):   5,
		netip.MustParseAddr("203.0.113.9"):    40,
		netip.MustParseAddr("2001:db8:5::1"):  12,
		netip.MustParseAddr("2001:db8:5::2"):  3,
		netip.MustParseAddr("2001:db8:99::1"): 7,
	}}
	var err error
	f.st, err = store.Open(t.TempDir(), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.st.Close() })
	f.eng = New(Config{
		Store: f.st, Firewall: f.fw, Purger: f.ct, Now: f.clk.now,
		Allow: allow.Config{
			ProcRoot: "../allow/testdata/proc", ResolvConf: "../allow/testdata/resolv.conf",
			InterfaceAddrs: func() ([]netip.Prefix, error) {
				return []netip.Prefix{netip.MustParsePrefix("192.0.2.1/24")}, nil
			},
		},
	})
	if _, err := f.eng.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) ban(t *testing.T, p string, ttl time.Duration) BanResult {
	t.Helper()
	r, err := f.eng.Ban(context.Background(), BanRequest{Prefix: pfx(p), TTL: ttl, Reason: "unit"})
	if err != nil {
		t.Fatalf("ban %s: %v", p, err)
	}
	return r
}

func elemList(f *Fake) string {
	var s []string
	for _, e := range f.Snapshot() {
		s = append(s, e.Prefix.String())
	}
	return strings.Join(s, " ")
}

func TestBanPipeline(t *testing.T) {
	f := newFixture(t)
	r := f.ban(t, "198.51.100.7", time.Hour)
	if r.Ban.Purged != 300 || r.Ban.Remaining != 0 || r.Ban.Count != 1 || r.Refreshed {
		t.Fatalf("result %+v", r)
	}
	if !f.fw.Drops(netip.MustParseAddr("198.51.100.7")) || f.fw.Drops(netip.MustParseAddr("198.51.100.8")) {
		t.Fatal("kernel state wrong")
	}
	// Re-ban: refreshed, counted, new expiry.
	f.clk.add(30 * time.Minute)
	r = f.ban(t, "198.51.100.7", 2*time.Hour)
	if !r.Refreshed || r.Ban.Count != 2 || !r.Ban.Expires.Equal(f.clk.now().Add(2*time.Hour)) {
		t.Fatalf("re-ban %+v", r)
	}
	if els := f.fw.Snapshot(); len(els) != 1 || els[0].TTL != 2*time.Hour {
		t.Fatalf("kernel timeout not refreshed: %+v", els)
	}
	// A source that comes back despite the ban shows in Remaining.
	f.ct.Refill = 4
	r = f.ban(t, "203.0.113.9", time.Hour)
	if r.Ban.Purged != 40 || r.Ban.Remaining != 4 {
		t.Fatalf("re-count not recorded: %+v", r.Ban)
	}
	// A purge failure does not undo the ban; it is recorded.
	f.ct.Err = errors.New("ctnetlink down")
	r = f.ban(t, "198.51.100.8", time.Hour)
	if !strings.Contains(r.Ban.PurgeErr, "ctnetlink down") || !f.fw.Drops(netip.MustParseAddr("198.51.100.8")) {
		t.Fatalf("purge failure: %+v", r.Ban)
	}
}

func TestBanRefusesAllowlisted(t *testing.T) {
	f := newFixture(t)
	for _, c := range []struct{ p, want string }{
		{"192.0.2.1", "local address"},
		{"192.0.2.254", "default gateway"},
		{"203.0.113.53", "resolver"},
		{"127.0.0.1", "loopback"},
	} {
		_, err := f.eng.Ban(context.Background(), BanRequest{Prefix: pfx(c.p), TTL: time.Hour})
		if !errors.Is(err, allow.ErrAllowlisted) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ban %s: %v, want refusal naming %q", c.p, err, c.want)
		}
	}
	if n := len(f.fw.Snapshot()); n != 0 {
		t.Fatalf("%d elements after refusals", n)
	}
	if bans, _ := f.st.Bans(); len(bans) != 0 {
		t.Fatalf("refused bans recorded: %v", bans)
	}
	// Runtime allow: lifts an overlapping ban (keeping the rest of the
	// prefix banned) and blocks future ones.
	f.ban(t, "2001:db8:5::/64", time.Hour)
	res, err := f.eng.Allow(context.Background(), pfx("2001:db8:5::2"), time.Hour, "customer")
	if err != nil || len(res.Lifted) != 1 || len(res.Kept) != 64 {
		t.Fatalf("allow: %d lifted, %d kept, %v", len(res.Lifted), len(res.Kept), err)
	}
	if f.fw.Drops(netip.MustParseAddr("2001:db8:5::2")) {
		t.Fatal("ban covering a newly allowed address still in the kernel")
	}
	if !f.fw.Drops(netip.MustParseAddr("2001:db8:5::1")) || !f.fw.Drops(netip.MustParseAddr("2001:db8:5::3")) {
		t.Fatal("the rest of the /64 was unbanned with the allowed address")
	}
	if _, err := f.eng.Ban(context.Background(), BanRequest{Prefix: pfx("2001:db8:5::/64"), TTL: time.Hour}); !errors.Is(err, allow.ErrAllowlisted) ||
		!strings.Contains(err.Error(), "runtime allow: customer") {
		t.Fatalf("ban over runtime allow: %v", err)
	}
	f.clk.add(2 * time.Hour) // the allow entry expired
	f.ban(t, "2001:db8:5::/64", time.Hour)
}

func TestNestedPrefixes(t *testing.T) {
	f := newFixture(t)
	f.ban(t, "203.0.113.128/26", time.Hour)
	f.ban(t, "203.0.113.200", time.Hour)
	// Inner prefix and an address under an active prefix: covered, skipped.
	for _, p := range []string{"203.0.113.128/28", "203.0.113.130"} {
		r := f.ban(t, p, time.Hour)
		if r.CoveredBy != pfx("203.0.113.128/26") {
			t.Fatalf("%s: %+v", p, r)
		}
	}
	// Outer prefix replaces the inner prefix; the address ban stays.
	r := f.ban(t, "203.0.113.128/25", time.Hour)
	if len(r.Replaced) != 1 || r.Replaced[0] != pfx("203.0.113.128/26") {
		t.Fatalf("outer: %+v", r)
	}
	if got, want := elemList(f.fw), "203.0.113.128/25 203.0.113.200/32"; got != want {
		t.Fatalf("kernel %q, want %q", got, want)
	}
	b, _ := f.st.GetBan(pfx("203.0.113.128/26"))
	if b.Active(f.clk.now()) || b.EndReason != "replaced by 203.0.113.128/25" {
		t.Fatalf("inner record %+v", b)
	}
	// Same in one batch, given inner first: outer wins, inner is covered.
	rs, err := f.eng.BanMany(context.Background(), []BanRequest{
		{Prefix: pfx("2001:db8:99:1::/64"), TTL: time.Hour},
		{Prefix: pfx("2001:db8:99::/48"), TTL: time.Hour},
	})
	if err != nil || rs[0].CoveredBy != pfx("2001:db8:99::/48") || rs[1].Err != nil {
		t.Fatalf("batch: %+v %v", rs, err)
	}
	if rs[1].Ban.Purged != 7 {
		t.Fatalf("prefix purge counted %d, want 7", rs[1].Ban.Purged)
	}
}

func TestReconcileRestoresOnlyUnexpired(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.ban(t, "198.51.100.7", time.Hour)
	f.ban(t, "198.51.100.8", time.Minute)
	f.ban(t, "2001:db8:99::/48", time.Hour)
	f.ban(t, "203.0.113.0/28", 10*time.Second)
	f.ban(t, "203.0.113.96/28", time.Hour)
	if _, err := f.eng.Unban(ctx, pfx("203.0.113.96/28")); err != nil {
		t.Fatal(err)
	}
	if r, err := f.eng.Reconcile(ctx); err != nil || r.Rebuilt {
		t.Fatalf("healthy: %+v %v", r, err)
	}
	f.clk.add(2 * time.Minute)
	f.fw.Flush()
	r, err := f.eng.Reconcile(ctx)
	if err != nil || !r.Rebuilt || r.Restored != 2 {
		t.Fatalf("reconcile: %+v %v", r, err)
	}
	if got, want := elemList(f.fw), "198.51.100.7/32 2001:db8:99::/48"; got != want {
		t.Fatalf("restored %q, want %q", got, want)
	}
	for _, e := range f.fw.Snapshot() {
		if e.TTL != 58*time.Minute {
			t.Errorf("%s restored with %v, want the remaining 58m", e.Prefix, e.TTL)
		}
	}
	// Replaced table (same name, new identity) is caught by a fresh engine
	// reading the stored identity.
	if _, err := f.fw.Setup(ctx, nil); err != nil {
		t.Fatal(err)
	}
	e2 := New(Config{Store: f.st, Firewall: f.fw, Now: f.clk.now, Allow: f.eng.allowC})
	if r, err := e2.Reconcile(ctx); err != nil || !r.Rebuilt || r.Restored != 2 {
		t.Fatalf("replaced table: %+v %v", r, err)
	}
}

func TestUnban(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.ban(t, "198.51.100.0/28", time.Hour)
	if _, err := f.eng.Unban(ctx, pfx("198.51.100.7")); !errors.Is(err, ErrNotBanned) || !strings.Contains(err.Error(), "covered by the ban of 198.51.100.0/28") {
		t.Fatalf("unban of a covered address: %v", err)
	}
	if _, err := f.eng.Unban(ctx, pfx("203.0.113.1")); !errors.Is(err, ErrNotBanned) {
		t.Fatalf("unban of unknown: %v", err)
	}
	// Expired in the kernel already: still fine.
	f.ban(t, "203.0.113.9", time.Second)
	f.clk.add(500 * time.Millisecond)
	f.fw.Flush()
	f.eng.Reconcile(ctx)
	f.clk.add(time.Second) // kernel expired it, the store record is past expiry too
	if _, err := f.eng.Unban(ctx, pfx("203.0.113.9")); !errors.Is(err, ErrNotBanned) {
		t.Fatalf("unban after expiry: %v", err)
	}
	b, err := f.eng.Unban(ctx, pfx("198.51.100.0/28"))
	if err != nil || b.EndReason != "unban" || len(f.fw.Snapshot()) != 0 {
		t.Fatalf("unban: %+v %v", b, err)
	}
	if act, _ := f.eng.List(false); len(act) != 0 {
		t.Fatalf("still listed: %v", act)
	}
	if all, _ := f.eng.List(true); len(all) != 2 {
		t.Fatalf("history: %v", all)
	}
}

func TestKernelFailureChangesNothing(t *testing.T) {
	f := newFixture(t)
	f.fw.FailApply = errors.New("EMSGSIZE")
	_, err := f.eng.Ban(context.Background(), BanRequest{Prefix: pfx("198.51.100.7"), TTL: time.Hour})
	if err == nil {
		t.Fatal("no error")
	}
	if bans, _ := f.st.Bans(); len(bans) != 0 {
		t.Fatalf("failed ban recorded: %v", bans)
	}
	if f.ct.Entries[netip.MustParseAddr("198.51.100.7")] != 300 {
		t.Fatal("entries purged although the ban failed")
	}
}

// TestBanScopedForSession: a target that covers the peer of an open SSH
// session is banned on every port but SSH, its SSH entries survive the
// purge, and a refresh once the session is gone makes it a full ban.
func TestBanScopedForSession(t *testing.T) {
	f := newFixture(t)
	peer := pfx("198.51.100.23").Addr() // ssh peer in ../allow/testdata/proc/net/tcp
	f.ct.Entries[peer] = 250
	f.ct.SSH = map[netip.Addr]int{peer: 1}
	neighbour := pfx("198.51.100.99").Addr()
	f.ct.Entries[neighbour] = 30

	r := f.ban(t, "198.51.100.23", time.Hour)
	if !r.Scoped || r.Session.Source != allow.SSH || r.Ban.Purged != 250 || r.Ban.Remaining != 0 || !r.Ban.Scoped || f.ct.SSH[peer] != 1 {
		t.Fatalf("scoped ban %+v", r)
	}
	if !f.fw.Drops(peer) || f.fw.DropsSSH(peer) {
		t.Fatal("scoped ban must drop everything but SSH")
	}
	// A /24 over the session's peer replaces nothing scoped wrongly and is
	// scoped itself; the address ban inside stays as it is.
	r = f.ban(t, "198.51.100.0/24", time.Hour)
	if !r.Scoped || r.Ban.Purged != 335 || f.fw.DropsSSH(neighbour) || !f.fw.Drops(neighbour) {
		t.Fatalf("scoped /24 %+v", r)
	}
	if f.ct.SSH[peer] != 1 {
		t.Fatal("the operator's SSH entry was purged")
	}
	// Restored after a restart: still scoped.
	if _, err := f.eng.rebuild(context.Background(), "test"); err != nil {
		t.Fatal(err)
	}
	for _, e := range f.fw.Snapshot() {
		if !e.Scoped {
			t.Fatalf("restored %s unscoped", e.Prefix)
		}
	}
	// Unban finds it in the scoped set.
	if _, err := f.eng.Unban(context.Background(), pfx("198.51.100.0/24")); err != nil {
		t.Fatal(err)
	}
	if f.fw.Drops(neighbour) {
		t.Fatal("unban left the scoped element")
	}
	// The session ends; a refresh of the address ban makes it a full ban.
	f.eng.SetAllowConfig(allow.Config{ProcRoot: t.TempDir(), ResolvConf: "../allow/testdata/resolv.conf",
		InterfaceAddrs: func() ([]netip.Prefix, error) { return []netip.Prefix{pfx("192.0.2.1/24")}, nil }})
	r = f.ban(t, "198.51.100.23", time.Hour)
	if r.Scoped || !r.Refreshed || !f.fw.DropsSSH(peer) {
		t.Fatalf("refresh without a session: %+v, drops ssh %v", r, f.fw.DropsSSH(peer))
	}
	if els := f.fw.Snapshot(); len(els) != 1 || els[0].Scoped {
		t.Fatalf("elements after re-scope: %+v", els)
	}
}

func TestPurge(t *testing.T) {
	f := newFixture(t)
	r, err := f.eng.Purge(context.Background(), pfx("2001:db8:5::/64"))
	if err != nil || r.Purged != 15 || r.Remaining != 0 {
		t.Fatalf("purge: %+v %v", r, err)
	}
	// A session's peer is purged, but its SSH entries stay.
	f.ct.Entries[pfx("198.51.100.23").Addr()] = 50
	f.ct.SSH = map[netip.Addr]int{pfx("198.51.100.23").Addr(): 1}
	if r, err := f.eng.Purge(context.Background(), pfx("198.51.100.23")); err != nil || r.Purged != 50 || r.Remaining != 0 || !r.KeptSSH || f.ct.SSH[pfx("198.51.100.23").Addr()] != 1 {
		t.Fatalf("purge of ssh peer: %+v %v", r, err)
	}
	e := New(Config{Store: f.st, Firewall: f.fw, Allow: f.eng.allowC})
	if _, err := e.Purge(context.Background(), pfx("203.0.113.9")); !errors.Is(err, ErrNoPurger) {
		t.Fatalf("no purger: %v", err)
	}
}

func TestBadRequests(t *testing.T) {
	f := newFixture(t)
	for _, r := range []BanRequest{
		{Prefix: netip.MustParsePrefix("198.51.100.7/24"), TTL: time.Hour}, // not masked
		{Prefix: pfx("198.51.100.7"), TTL: 0},
		{Prefix: pfx("198.51.100.7"), TTL: -time.Second},
		{Prefix: pfx("198.51.100.7"), TTL: MaxTTL + time.Second},
		{Prefix: pfx("::ffff:198.51.100.7"), TTL: time.Hour},
		{TTL: time.Hour},
	} {
		if _, err := f.eng.Ban(context.Background(), r); err == nil {
			t.Errorf("ban %+v accepted", r)
		}
	}
	if n := len(f.fw.Snapshot()); n != 0 || f.fw.Applies != 0 {
		t.Fatalf("bad requests reached the kernel: %d elements, %d applies", n, f.fw.Applies)
	}
}

func TestParseTarget(t *testing.T) {
	for _, c := range []struct {
		in, want, note, err string
	}{
		{in: "192.0.2.1", want: "192.0.2.1/32"},
		{in: " 192.0.2.0/24 ", want: "192.0.2.0/24"},
		{in: "2001:db8::1", want: "2001:db8::1/128"},
		{in: "2001:db8::/32", want: "2001:db8::/32"},
		{in: "::ffff:192.0.2.1", want: "192.0.2.1/32", note: "IPv4-mapped"},
		{in: "::ffff:192.0.2.0/120", want: "192.0.2.0/24", note: "IPv4-mapped"},
		{in: "192.0.2.1/24", err: "host bits set; the network is 192.0.2.0/24"},
		{in: "192.0.2.256", err: "not an IP address"},
		{in: "192.0.2.0/33", err: "not a CIDR"},
		{in: "example.com", err: "not an IP address"},
		{in: "", err: "empty"},
		{in: "fe80::1%eth0", err: "zone"},
		{in: "10.0.0.0/7", err: "too broad"},
		{in: "2000::/3", err: "too broad"},
		{in: "::ffff:0:0/96", err: "too broad"},
		{in: "0.0.0.0", err: "the unspecified address"},
		{in: "::", err: "the unspecified address"},
		{in: "255.255.255.255", err: "the broadcast address"},
		{in: "224.0.0.1", err: "a multicast address"},
		{in: "ff02::1", err: "a multicast address"},
		{in: "239.0.0.0/8", err: "a multicast address"},
		{in: "::ffff:224.0.0.1", err: "a multicast address"},
	} {
		p, note, err := ParseTarget(c.in)
		switch {
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, ErrBadTarget) {
				t.Errorf("ParseTarget(%q) err = %v, want %q", c.in, err, c.err)
			}
		case err != nil || p.String() != c.want || !strings.Contains(note, c.note):
			t.Errorf("ParseTarget(%q) = %v %q %v, want %s", c.in, p, note, err, c.want)
		}
	}
}

func TestParseTTL(t *testing.T) {
	for _, c := range []struct {
		in   string
		want time.Duration
		err  string
	}{
		{in: "90s", want: 90 * time.Second},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "7d", want: 7 * 24 * time.Hour},
		{in: "30d", want: MaxTTL},
		{in: "31d", err: "exceeds"},
		{in: "99999999999d", err: "exceeds"},
		{in: "0", err: "positive"},
		{in: "0s", err: "positive"},
		{in: "-5m", err: "positive"},
		{in: "500ms", err: "minimum"},
		{in: "forever", err: "not a duration"},
		{in: "d", err: "not a duration"},
		{in: "1.5d", err: "not a duration"},
		{in: "", err: "not a duration"},
	} {
		d, err := ParseTTL(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || !strings.Contains(err.Error(), "\""+c.in+"\"") {
				t.Errorf("ParseTTL(%q) = %v, %v; want error %q naming the input", c.in, d, err, c.err)
			}
			continue
		}
		if err != nil || d != c.want {
			t.Errorf("ParseTTL(%q) = %v, %v; want %v", c.in, d, err, c.want)
		}
	}
}

func TestKernelElements(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mk := func(p string, exp time.Duration) store.Active {
		return store.Active{Prefix: pfx(p), Expires: now.Add(exp)}
	}
	got := KernelElements([]store.Active{
		mk("198.51.100.0/24", time.Hour),
		mk("198.51.100.128/25", time.Hour), // overlapping (stored before the rule existed): left out
		mk("198.51.100.7", time.Minute),    // address under a prefix: kept, separate set
		mk("203.0.113.1", -time.Second),    // expired
	}, now)
	var s []string
	for _, e := range got {
		s = append(s, e.Prefix.String()+"="+e.TTL.String())
	}
	if strings.Join(s, " ") != "198.51.100.0/24=1h0m0s 198.51.100.7/32=1m0s" {
		t.Fatalf("got %v", s)
	}
}

func TestBanManyPurgesInOnePass(t *testing.T) {
	f := newFixture(t)
	bp := &FakeBatchPurger{FakePurger: FakePurger{Entries: f.ct.Entries}}
	e := New(Config{Store: f.st, Firewall: f.fw, Purger: bp, Now: f.clk.now, Allow: f.eng.allowC})
	reqs := []BanRequest{
		{Prefix: pfx("198.51.100.7"), TTL: time.Hour},
		{Prefix: pfx("2001:db8:5::/64"), TTL: time.Hour},
		{Prefix: pfx("203.0.113.9"), TTL: time.Hour},
		{Prefix: pfx("2001:db8:5::1"), TTL: time.Hour}, // covered by the /64 in the same batch
	}
	rs, err := e.BanMany(context.Background(), reqs)
	if err != nil {
		t.Fatal(err)
	}
	if bp.Passes != 2 {
		t.Fatalf("%d passes over the table for 3 sources, want 2 (one purge, one count)", bp.Passes)
	}
	for i, want := range []int{300, 15, 40} {
		if rs[i].Err != nil || rs[i].Ban.Purged != want || rs[i].Ban.Remaining != 0 {
			t.Errorf("%s: %+v, want %d purged", reqs[i].Prefix, rs[i].Ban, want)
		}
	}
	if rs[3].CoveredBy != pfx("2001:db8:5::/64") {
		t.Errorf("inner address: %+v", rs[3])
	}
	// A single ban keeps the cheaper per-source path (filtered flush).
	bp.Passes = 0
	if _, err := e.Ban(context.Background(), BanRequest{Prefix: pfx("198.51.100.8"), TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if bp.Passes != 2 {
		t.Fatalf("single ban: %d calls", bp.Passes)
	}
}

// TestBanResultJSON: results cross the daemon's control socket as JSON; an
// error value must not make them undecodable.
func TestBanResultJSON(t *testing.T) {
	in := BanResult{Prefix: pfx("192.0.2.7"), Err: errors.New("refused"), CoveredBy: pfx("192.0.2.0/24"),
		Replaced: []netip.Prefix{pfx("192.0.2.0/28")}, Ban: store.Ban{Prefix: pfx("192.0.2.7"), Count: 2, Purged: 9}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out BanResult
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	if out.Prefix != in.Prefix || out.CoveredBy != in.CoveredBy || out.Ban.Purged != 9 || len(out.Replaced) != 1 || out.Err != nil {
		t.Fatalf("round trip: %+v", out)
	}
}

func TestStartPrunesOldHistory(t *testing.T) {
	f := newFixture(t)
	f.ban(t, "198.51.100.7", time.Hour)
	f.clk.add(2 * time.Hour)
	f.ban(t, "203.0.113.9", time.Hour)
	f.clk.add(HistoryRetention)
	if all, _ := f.eng.List(true); len(all) != 2 {
		t.Fatalf("setup: %d records", len(all))
	}
	if _, err := f.eng.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	all, _ := f.eng.List(true)
	if len(all) != 1 || all[0].Prefix != pfx("203.0.113.9") {
		t.Fatalf("after prune: %+v", all)
	}
}

func TestBanManyDuplicates(t *testing.T) {
	f := newFixture(t)
	rs, err := f.eng.BanMany(context.Background(), []BanRequest{
		{Prefix: pfx("198.51.100.7"), TTL: time.Hour},
		{Prefix: pfx("198.51.100.7"), TTL: 2 * time.Hour},
		{Prefix: pfx("203.0.113.0/28"), TTL: time.Hour},
		{Prefix: pfx("203.0.113.0/28"), TTL: time.Hour},
	})
	if err != nil {
		t.Fatal(err)
	}
	if rs[0].Err != nil || rs[0].Ban.Count != 1 || rs[1].CoveredBy != pfx("198.51.100.7") || rs[3].CoveredBy != pfx("203.0.113.0/28") {
		t.Fatalf("duplicates: %+v", rs)
	}
	if b, _ := f.st.GetBan(pfx("198.51.100.7")); b.Count != 1 {
		t.Fatalf("counted %d times", b.Count)
	}
	if got := elemList(f.fw); got != "198.51.100.7/32 203.0.113.0/28" {
		t.Fatalf("kernel %q", got)
	}
}

// FuzzParseTarget: any input either fails with ErrBadTarget or yields a
// prefix the kernel sets can hold as is.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"192.0.2.1", "192.0.2.0/24", "2001:db8::/32", "::ffff:192.0.2.1", "::ffff:192.0.2.0/120",
		"fe80::1%eth0", "1.2.3.4/0", "::/0", "192.0.2.1/24", "", "/", "::ffff:0:0/96", "0.0.0.0/8"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, _, err := ParseTarget(s)
		if err != nil {
			if !errors.Is(err, ErrBadTarget) {
				t.Fatalf("%q: error %v is not ErrBadTarget", s, err)
			}
			return
		}
		a := p.Addr()
		if !p.IsValid() || p.Masked() != p || a.Is4In6() || a.Zone() != "" ||
			a.Is4() && p.Bits() < MinBits4 || a.Is6() && p.Bits() < MinBits6 {
			t.Fatalf("%q -> %v: not a usable ban target", s, p)
		}
	})
}

func TestExplainErrors(t *testing.T) {
	if err := explain(fmt.Errorf("netlink: %w", syscall.EPERM)); !errors.Is(err, ErrPermission) || !errors.Is(err, syscall.EPERM) && !strings.Contains(err.Error(), "operation not permitted") {
		t.Errorf("EPERM: %v", err)
	}
	if err := explain(syscall.EPROTONOSUPPORT); !errors.Is(err, ErrNoNFTables) {
		t.Errorf("EPROTONOSUPPORT: %v", err)
	}
	other := errors.New("boom")
	if explain(other) != other {
		t.Error("other errors must pass through")
	}
}

func TestAllowlistWarnsOnce(t *testing.T) {
	f := newFixture(t)
	var logs strings.Builder
	var mu sync.Mutex
	cfg := f.eng.allowC
	cfg.ResolvConf = "/nonexistent/resolv.conf"
	e := New(Config{Store: f.st, Firewall: f.fw, Allow: cfg,
		Log: slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))})
	for range 3 {
		if _, err := e.Allowlist(); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(logs.String(), "/nonexistent/resolv.conf"); n != 1 {
		t.Fatalf("warned %d times:\n%s", n, logs.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *strings.Builder
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestBanClosesSockets: every ban (new or refreshed) asks the closer to end
// its peers' sockets; a scoped ban keeps the SSH ports; allowlisted peers
// are spared; the counts are stored; a kernel that cannot close turns it off.
func TestBanClosesSockets(t *testing.T) {
	f := newFixture(t)
	fc := &FakeCloser{Counts: []int{7}, AskOver: []netip.Addr{pfx("192.0.2.254").Addr(), pfx("198.51.100.99").Addr()}}
	f.eng.closer = fc
	r := f.ban(t, "198.51.100.7", time.Hour)
	if r.Ban.SocketsClosed != 7 || len(fc.Calls) != 1 || fc.Calls[0][0].Prefix != pfx("198.51.100.7") || fc.Calls[0][0].KeepTCPPorts != nil {
		t.Fatalf("ban: %+v, calls %+v", r.Ban, fc.Calls)
	}
	if len(fc.Spared) != 1 || fc.Spared[0] != pfx("192.0.2.254").Addr() {
		t.Fatalf("spare asked for the gateway and a stranger, spared %v", fc.Spared)
	}
	r = f.ban(t, "198.51.100.7", 2*time.Hour) // refreshed: closes again
	if !r.Refreshed || len(fc.Calls) != 2 {
		t.Fatalf("refresh did not close: %+v %d calls", r, len(fc.Calls))
	}
	// The SSH session's peer: scoped, its SSH ports kept.
	r = f.ban(t, "198.51.100.23", time.Hour)
	if last := fc.Calls[len(fc.Calls)-1]; !r.Scoped || fmt.Sprint(last[0].KeepTCPPorts) != "[22]" {
		t.Fatalf("scoped ban closes %+v", last)
	}
	if got, _ := f.st.GetBan(pfx("198.51.100.23")); got.SocketsClosed != 7 {
		t.Fatalf("stored %+v", got)
	}
	// A kernel without CONFIG_INET_DIAG_DESTROY: recorded, then off.
	fc.Err = sockets.ErrDestroyUnsupported
	r = f.ban(t, "203.0.113.9", time.Hour)
	if !strings.Contains(r.Ban.CloseErr, "CONFIG_INET_DIAG_DESTROY") || f.eng.ClosesSockets() {
		t.Fatalf("unsupported: %+v, still closing %v", r.Ban, f.eng.ClosesSockets())
	}
	n := len(fc.Calls)
	f.ban(t, "198.51.100.8", time.Hour)
	if len(fc.Calls) != n {
		t.Fatal("closer called after it was turned off")
	}
}

// TestMaxTTLAgreesWithPolicy: the policy's config check uses the same
// longest ban the enforcer takes.
func TestMaxTTLAgreesWithPolicy(t *testing.T) {
	if MaxTTL != policy.MaxTTL {
		t.Fatalf("enforce.MaxTTL %v, policy.MaxTTL %v", MaxTTL, policy.MaxTTL)
	}
}

// A ban right after `nft flush ruleset` heals the table first instead of
// failing until the next check.
func TestBanAfterFlushHealsFirst(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.ban(t, "198.51.100.7", time.Hour)
	f.fw.Flush()
	f.ban(t, "203.0.113.9", time.Hour)
	if got, want := elemList(f.fw), "198.51.100.7/32 203.0.113.9/32"; got != want {
		t.Fatalf("after the ban: %q, want %q", got, want)
	}
	f.fw.Flush()
	if _, err := f.eng.Unban(ctx, pfx("203.0.113.9")); err != nil {
		t.Fatalf("unban after a flush: %v", err)
	}
	if got, want := elemList(f.fw), "198.51.100.7/32"; got != want {
		t.Fatalf("after the unban: %q, want %q", got, want)
	}
}

// A repeat ban never shortens an active one unless the timeout is asked for
// explicitly, and the record keeps what every ban purged.
func TestRepeatBanKeepsTheLongerTimeout(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	first := f.ban(t, "198.51.100.7", 2*time.Hour)
	if first.Ban.Purged != 300 || first.Ban.PurgedTotal != 300 {
		t.Fatalf("first ban: %+v", first.Ban)
	}
	f.ct.Entries[netip.MustParseAddr("198.51.100.7")] = 20 // came back through another path
	f.clk.add(10 * time.Minute)
	r, err := f.eng.Ban(ctx, BanRequest{Prefix: pfx("198.51.100.7"), TTL: time.Hour, Reason: "again"})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Refreshed || r.TTL != 110*time.Minute || !r.Ban.Expires.Equal(first.Ban.Expires) {
		t.Fatalf("repeat ban with a shorter timeout: ttl %v, expires %v (was %v)", r.TTL, r.Ban.Expires, first.Ban.Expires)
	}
	if r.Ban.Count != 2 || r.Ban.Purged != 20 || r.Ban.PurgedTotal != 320 {
		t.Fatalf("history: count %d, purged %d, total %d", r.Ban.Count, r.Ban.Purged, r.Ban.PurgedTotal)
	}
	if els := f.fw.Snapshot(); len(els) != 1 || els[0].TTL != 110*time.Minute {
		t.Fatalf("kernel: %v", els)
	}
	r, err = f.eng.Ban(ctx, BanRequest{Prefix: pfx("198.51.100.7"), TTL: 30 * time.Minute, ExactTTL: true})
	if err != nil || r.TTL != 30*time.Minute {
		t.Fatalf("explicit shorter timeout: %v %v", r.TTL, err)
	}
	if els := f.fw.Snapshot(); els[0].TTL != 30*time.Minute {
		t.Fatalf("kernel after the explicit timeout: %v", els)
	}
}

// Allowing an address inside a banned prefix lifts only that address: the
// rest of the prefix stays banned for its remaining time.
func TestAllowInsideABannedPrefixKeepsTheRest(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.ban(t, "198.51.100.0/24", 2*time.Hour)
	f.clk.add(30 * time.Minute)
	r, err := f.eng.Allow(ctx, pfx("198.51.100.0/25"), 0, "customer")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Lifted) != 1 || len(r.Kept) != 1 || r.Kept[0] != pfx("198.51.100.128/25") {
		t.Fatalf("allow of a /25: %+v", r)
	}
	if got, want := elemList(f.fw), "198.51.100.128/25"; got != want {
		t.Fatalf("kernel: %q, want %q", got, want)
	}
	if els := f.fw.Snapshot(); els[0].TTL != 90*time.Minute {
		t.Fatalf("the rest's timeout: %v, want the remaining 1h30m", els[0].TTL)
	}
	r, err = f.eng.Allow(ctx, pfx("198.51.100.200"), 0, "one host")
	if err != nil {
		t.Fatal(err)
	}
	want := "198.51.100.128/26 198.51.100.201/32 198.51.100.202/31 198.51.100.204/30 198.51.100.208/28 198.51.100.192/29 198.51.100.224/27"
	var got []string
	for _, e := range f.fw.Snapshot() {
		got = append(got, e.Prefix.String())
	}
	if len(got) != 7 || !f.fw.Drops(netip.MustParseAddr("198.51.100.201")) || f.fw.Drops(netip.MustParseAddr("198.51.100.200")) ||
		!f.fw.Drops(netip.MustParseAddr("198.51.100.255")) || f.fw.Drops(netip.MustParseAddr("198.51.100.1")) {
		t.Fatalf("after allowing one host of the /25: %v (want the 7 prefixes %s)", got, want)
	}
	if b, _ := f.st.GetBan(pfx("198.51.100.224/27")); !strings.Contains(b.Evidence, "the rest of the ban of 198.51.100.128/25") {
		t.Fatalf("record of a remainder: %+v", b)
	}
}

func TestSplitAround(t *testing.T) {
	got := splitAround(pfx("2001:db8::/32"), pfx("2001:db8:8000::/34"))
	if len(got) != 2 || got[0] != pfx("2001:db8::/33") || got[1] != pfx("2001:db8:c000::/34") {
		t.Fatalf("split: %v", got)
	}
}
