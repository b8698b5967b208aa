package enforce

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/ctguard/ctguard/internal/store"
)

func TestDecodeElements(t *testing.T) {
	k := func(s string) []byte { return netip.MustParseAddr(s).AsSlice() }
	// Interval set: starts and ends in the kernel's (descending) order, a
	// prefix that runs to the top with no end, and a range that is no CIDR.
	raw := []nftables.SetElement{
		{Key: k("255.255.255.0"), Expires: time.Minute},
		{Key: k("198.51.101.0"), IntervalEnd: true},
		{Key: k("198.51.100.0"), Expires: time.Hour},
		{Key: k("203.0.113.7"), IntervalEnd: true},
		{Key: k("203.0.113.0"), Expires: time.Hour},
		{Key: k("0.0.0.0"), IntervalEnd: true},
	}
	got, bad := decodeElements(raw, true, true)
	want := []Element{
		{Prefix: netip.MustParsePrefix("198.51.100.0/24"), TTL: time.Hour, Scoped: true},
		{Prefix: netip.MustParsePrefix("255.255.255.0/24"), TTL: time.Minute, Scoped: true},
	}
	if !slices.Equal(got, want) || bad != 1 {
		t.Fatalf("interval set: got %v (bad %d), want %v (bad 1)", got, bad, want)
	}
	got, bad = decodeElements([]nftables.SetElement{
		{Key: k("2001:db8::1"), Expires: 3 * time.Second},
		{Key: []byte{1, 2, 3}},
	}, false, false)
	if len(got) != 1 || got[0] != (Element{Prefix: netip.MustParsePrefix("2001:db8::1/128"), TTL: 3 * time.Second}) || bad != 1 {
		t.Fatalf("address set: %v bad %d", got, bad)
	}
	// What encode writes, decode reads back.
	for _, s := range []string{"192.0.2.0/24", "2001:db8:5::/64", "198.18.0.0/15", "0.0.0.0/8"} {
		p := netip.MustParsePrefix(s)
		enc := encode(p, time.Hour)
		enc[0].Expires = time.Hour
		if got, bad := decodeElements(enc, true, false); len(got) != 1 || got[0].Prefix != p || bad != 0 {
			t.Errorf("round trip %s: %v bad %d", s, got, bad)
		}
	}
}

// A new (or damaged and replaced) store must not make a start drop the bans
// still in the kernel: they are adopted with their remaining time. A ban the
// store knows as lifted is not revived.
func TestStartAdoptsKernelBansTheStoreLacks(t *testing.T) {
	f := newFixture(t)
	f.ban(t, "198.51.100.7", 2*time.Hour)
	f.ban(t, "2001:db8:5::/64", time.Hour)
	f.ban(t, "203.0.113.9", time.Hour)
	if _, err := f.eng.Unban(context.Background(), pfx("203.0.113.9")); err != nil {
		t.Fatal(err)
	}
	// The unban's kernel delete "failed": the element is still there.
	if err := f.fw.Apply(context.Background(), Change{Add: []Element{{Prefix: pfx("203.0.113.9/32"), TTL: time.Hour}}}); err != nil {
		t.Fatal(err)
	}
	f.clk.add(10 * time.Minute)

	// Start again on the same kernel with a new, empty store.
	fresh, err := store.Open(t.TempDir(), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	e2 := New(Config{Store: fresh, Firewall: f.fw, Purger: f.ct, Now: f.clk.now, Allow: f.eng.allowC})
	r, err := e2.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if r.Adopted != 3 || r.Restored != 3 {
		t.Fatalf("start: %+v, want 3 adopted and restored", r)
	}
	b, err := fresh.GetBan(pfx("198.51.100.7/32"))
	if err != nil || b.Reason != AdoptedReason || !b.Expires.Equal(f.clk.now().Add(110*time.Minute)) {
		t.Fatalf("adopted record: %+v %v", b, err)
	}
	if els := f.fw.Snapshot(); len(els) != 3 {
		t.Fatalf("kernel after start: %v", els)
	}

	// The first store still knows 203.0.113.9 as lifted: no revival.
	e1 := New(Config{Store: f.st, Firewall: f.fw, Purger: f.ct, Now: f.clk.now, Allow: f.eng.allowC})
	r, err = e1.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if r.Adopted != 0 || slices.ContainsFunc(f.fw.Snapshot(), func(e Element) bool { return e.Prefix == pfx("203.0.113.9/32") }) {
		t.Fatalf("a lifted ban came back: %+v %v", r, f.fw.Snapshot())
	}
}
