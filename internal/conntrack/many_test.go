package conntrack

import (
	"net/netip"
	"testing"
)

func TestPrefixMatcher(t *testing.T) {
	m := newPrefixMatcher([]netip.Prefix{
		netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("203.0.113.7/32"),
		netip.MustParsePrefix("2001:db8::/32"), // same length as no IPv4 prefix here
		netip.MustParsePrefix("::ffff:192.0.2.1/128"),
	})
	cases := map[string]int{
		"198.51.100.9": 0, "198.51.101.9": -1, "203.0.113.7": 1, "203.0.113.8": -1,
		"2001:db8:5::1": 2, "2001:db9::1": -1, "192.0.2.1": 3, "::ffff:198.51.100.9": -1,
	}
	for a, want := range cases {
		if got := m.match(netip.MustParseAddr(a)); got != want {
			t.Errorf("match(%s) = %d, want %d", a, got, want)
		}
	}
}
