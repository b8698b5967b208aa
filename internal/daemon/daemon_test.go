package daemon

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/conntrack"
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

func TestOldestKeepsTheMostIdle(t *testing.T) {
	h := &oldest{}
	const keep = 3
	for _, idle := range []uint32{5, 900, 1, 700, 30, 800, 2} {
		h.keep(victim{conntrack.Entry{Timeout: idle}, idle}, keep)
	}
	got := map[uint32]bool{}
	for _, v := range *h {
		got[v.idle] = true
	}
	if len(got) != 3 || !got[900] || !got[800] || !got[700] {
		t.Errorf("kept %v, want the three most idle", got)
	}
}
