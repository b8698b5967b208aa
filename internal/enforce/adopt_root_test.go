package enforce

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/store"
)

// The kernel's sets read back as the elements ctguard wrote, with their
// remaining time; a start with a new store adopts them instead of dropping
// them (the damaged-store case: the daemon moves the file aside and starts
// a new one).
func TestRootElementsAndAdoption(t *testing.T) {
	forEachBackend(t, testElementsAndAdoption)
}

func testElementsAndAdoption(t *testing.T, be labBackend) {
	l := newLabOn(t, be)
	ctx := context.Background()
	want := []Element{
		{Prefix: pfx("198.51.100.7/32"), TTL: time.Hour},
		{Prefix: pfx("198.51.100.128/25"), TTL: 2 * time.Hour},
		{Prefix: pfx("203.0.113.0/24"), TTL: time.Hour, Scoped: true},
		{Prefix: pfx("2001:db8:5::1/128"), TTL: 30 * time.Minute},
		{Prefix: pfx("2001:db8:6::/48"), TTL: time.Hour},
		{Prefix: pfx("2001:db8:7::/64"), TTL: time.Hour, Scoped: true},
	}
	if err := l.fw.Apply(ctx, Change{Add: want}); err != nil {
		t.Fatal(err)
	}
	got, err := l.fw.Elements(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("read back %v, want %v", got, want)
	}
	for _, w := range want {
		i := slices.IndexFunc(got, func(e Element) bool { return e.Prefix == w.Prefix && e.Scoped == w.Scoped })
		if i < 0 {
			t.Fatalf("%v not read back: %v", w, got)
		}
		if g := got[i].TTL; g > w.TTL || g < w.TTL-time.Minute {
			t.Errorf("%s: %s left, set %s", w.Prefix, g, w.TTL)
		}
	}

	fresh, err := store.Open(t.TempDir(), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	e2 := New(Config{Store: fresh, Firewall: l.fw, Purger: l.ct, Allow: l.eng.allowC})
	r, err := e2.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.Adopted != len(want) || r.Restored != len(want) {
		t.Fatalf("start on a new store: %+v, want %d adopted and restored", r, len(want))
	}
	after, err := l.fw.Elements(ctx)
	if err != nil || len(after) != len(want) {
		t.Fatalf("kernel after the start: %v %v", after, err)
	}
	b, err := fresh.GetBan(netip.MustParsePrefix("2001:db8:7::/64"))
	if err != nil || b.Reason != AdoptedReason || !b.Scoped || time.Until(b.Expires) < 58*time.Minute {
		t.Fatalf("adopted record: %+v %v", b, err)
	}
}
