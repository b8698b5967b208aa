package prefixset

import (
	"maps"
	"net/netip"
	"slices"
	"testing"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

func TestCanonical(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.9/24":          "192.0.2.0/24",
		"192.0.2.9/32":          "192.0.2.9/32",
		"0.0.0.0/0":             "0.0.0.0/0",
		"10.1.2.3/0":            "0.0.0.0/0",
		"2001:db8::1/32":        "2001:db8::/32",
		"::/0":                  "::/0",
		"::ffff:192.0.2.1/128":  "192.0.2.1/32",
		"::ffff:192.0.2.77/120": "192.0.2.0/24",
		"::ffff:0:0/96":         "0.0.0.0/0",
		"::ffff:192.0.2.1/97":   "128.0.0.0/1",
		"::ffff:192.0.2.1/95":   "::fffe:0:0/95", // wider than the mapped range: IPv6
		"::ffff:0:0/80":         "::/80",
		"::1/128":               "::1/128",
	} {
		if got := Canonical(pfx(in)); got != pfx(want) {
			t.Errorf("Canonical(%s) = %s, want %s", in, got, want)
		}
	}
	zoned := netip.PrefixFrom(addr("fe80::1%eth0"), 64)
	if got := Canonical(zoned); got != pfx("fe80::/64") {
		t.Errorf("Canonical(%s) = %s", zoned, got)
	}
	if got := Canonical(netip.Prefix{}); got.IsValid() {
		t.Errorf("Canonical(invalid) = %s", got)
	}
}

func TestZeroSet(t *testing.T) {
	var s Set[int]
	if s.Len() != 0 {
		t.Fatal("zero Set not empty")
	}
	if _, _, ok := s.Lookup(addr("192.0.2.1")); ok {
		t.Error("Lookup in an empty Set")
	}
	if _, _, ok := s.Covering(pfx("192.0.2.1/32")); ok {
		t.Error("Covering in an empty Set")
	}
	if got := s.Inside(pfx("0.0.0.0/0")); got != nil {
		t.Errorf("Inside in an empty Set = %v", got)
	}
	if s.Overlaps(pfx("::/0")) || s.Delete(pfx("::/0")) {
		t.Error("empty Set overlaps or deletes")
	}
	if _, ok := s.Get(pfx("::/0")); ok {
		t.Error("Get in an empty Set")
	}
	for range s.All() {
		t.Error("All yields from an empty Set")
	}
}

func TestAddGetDelete(t *testing.T) {
	s := &Set[string]{}
	if !s.Add(pfx("198.51.100.7/24"), "a") {
		t.Fatal("first Add not new")
	}
	if s.Add(pfx("198.51.100.0/24"), "b") {
		t.Fatal("the same prefix, unmasked, added as new")
	}
	if s.Add(pfx("::ffff:198.51.100.0/120"), "c") {
		t.Fatal("the mapped form of a present prefix added as new")
	}
	if v, ok := s.Get(pfx("198.51.100.99/24")); !ok || v != "c" {
		t.Fatalf("Get = %q, %v; want the last value", v, ok)
	}
	if s.Len() != 1 {
		t.Fatalf("Len = %d after duplicates", s.Len())
	}
	s.Add(pfx("2001:db8::/32"), "v6")
	if s.Add(netip.Prefix{}, "bad") || s.Len() != 2 {
		t.Fatal("invalid prefix added")
	}
	// An IPv4 /24 and an IPv6 /24 are different lengths to the set.
	s.Add(pfx("2001:d00::/24"), "v6/24")
	if _, ok := s.Get(pfx("198.51.100.0/24")); !ok {
		t.Error("Get of the IPv4 /24")
	}
	if _, ok := s.Get(pfx("2001:db8::/48")); ok {
		t.Error("Get of an absent prefix")
	}
	if !s.Delete(pfx("::ffff:198.51.100.1/120")) || s.Len() != 2 {
		t.Fatal("Delete by the mapped form failed")
	}
	if s.Delete(pfx("198.51.100.0/24")) || s.Delete(netip.Prefix{}) {
		t.Fatal("Delete of an absent entry reported true")
	}
	if _, _, ok := s.Lookup(addr("198.51.100.1")); ok {
		t.Error("a deleted entry still holds its addresses")
	}
	if p, v, ok := s.Lookup(addr("2001:db8::1")); !ok || v != "v6" || p != pfx("2001:db8::/32") {
		t.Errorf("Lookup = %s %q %v, want the /32 (its length came first)", p, v, ok)
	}
	if p, v, ok := s.Lookup(addr("2001:d01::1")); !ok || v != "v6/24" || p != pfx("2001:d00::/24") {
		t.Errorf("Lookup = %s %q %v", p, v, ok)
	}
	got := maps.Collect(s.All())
	want := map[netip.Prefix]string{pfx("2001:db8::/32"): "v6", pfx("2001:d00::/24"): "v6/24"}
	if !maps.Equal(got, want) {
		t.Errorf("All = %v, want %v", got, want)
	}
	for p := range s.All() {
		s.Delete(p) // deleting the entry just yielded is allowed
	}
	if s.Len() != 0 || len(s.v4.order)+len(s.v6.order)+len(s.v4.sorted)+len(s.v6.sorted) != 0 ||
		slices.ContainsFunc(s.v6.byLen, func(m map[key6]string) bool { return m != nil }) {
		t.Fatalf("emptied Set: len %d, %+v %+v", s.Len(), s.v4, s.v6)
	}
	n := 0
	for range s.All() {
		n++
	}
	s.Add(pfx("10.0.0.0/8"), "again")
	for range s.All() {
		n++
		break // an early stop
	}
	if n != 1 {
		t.Errorf("All yielded %d", n)
	}
}

// TestLookupOrder: overlapping entries resolve to the length added first,
// per family, as conntrack's batch purge expects.
func TestLookupOrder(t *testing.T) {
	var s Set[int]
	for i, p := range []string{"203.0.113.7/32", "203.0.113.0/24", "2001:db8::/32", "2001:db8::1/128", "203.0.0.0/16"} {
		s.Add(pfx(p), i)
	}
	for a, want := range map[string]int{
		"203.0.113.7": 0, "203.0.113.8": 1, "203.0.9.9": 4, "2001:db8::1": 2, "2001:db8::2": 2,
		"::ffff:203.0.113.7": 0, // the mapped form is the IPv4 address
		"fe80::1%eth0":       -1, "203.1.0.1": -1, "2001:db9::1": -1,
	} {
		_, got, ok := s.Lookup(addr(a))
		if !ok {
			got = -1
		}
		if got != want {
			t.Errorf("Lookup(%s) = %d, want %d", a, got, want)
		}
	}
	// The /32 length leaves when its last entry goes and comes back last.
	s.Delete(pfx("203.0.113.7/32"))
	s.Add(pfx("203.0.113.7/32"), 9)
	if _, got, _ := s.Lookup(addr("203.0.113.7")); got != 1 {
		t.Errorf("after re-adding, Lookup = %d, want the /24's 1", got)
	}
	// A length with entries left keeps its place.
	s.Add(pfx("198.51.100.0/24"), 10)
	s.Delete(pfx("203.0.113.0/24"))
	s.Add(pfx("203.0.113.0/24"), 11)
	if _, got, _ := s.Lookup(addr("203.0.113.7")); got != 11 {
		t.Errorf("Lookup = %d, want the /24 (its length never left)", got)
	}
	if _, _, ok := s.Lookup(netip.Addr{}); ok {
		t.Error("Lookup of the zero Addr")
	}
}

func TestZeroLength(t *testing.T) {
	var s Set[string]
	s.Add(pfx("0.0.0.0/0"), "all4")
	s.Add(pfx("192.0.2.0/24"), "net")
	if p, v, ok := s.Lookup(addr("8.8.8.8")); !ok || v != "all4" || p != pfx("0.0.0.0/0") {
		t.Errorf("Lookup under /0 = %s %q %v", p, v, ok)
	}
	if _, _, ok := s.Lookup(addr("2001:db8::1")); ok {
		t.Error("an IPv4 /0 holds an IPv6 address")
	}
	if p, _, ok := s.Covering(pfx("192.0.2.0/24")); !ok || p != pfx("0.0.0.0/0") {
		t.Errorf("Covering /24 = %s %v, want the /0", p, ok)
	}
	if _, _, ok := s.Covering(pfx("0.0.0.0/0")); ok {
		t.Error("a /0 covered by itself")
	}
	if got := s.Inside(pfx("0.0.0.0/0")); !slices.Equal(got, []netip.Prefix{pfx("192.0.2.0/24")}) {
		t.Errorf("Inside /0 = %v", got)
	}
	if !s.Overlaps(pfx("0.0.0.0/0")) || !s.Overlaps(pfx("10.0.0.0/8")) || s.Overlaps(pfx("::/0")) {
		t.Error("Overlaps around the IPv4 /0")
	}
	s.Add(pfx("::/0"), "all6")
	// The mapped range is IPv4's: ::/0 does not hold ::ffff:8.8.8.8.
	if _, v, _ := s.Lookup(addr("::ffff:8.8.8.8")); v != "all4" {
		t.Errorf("Lookup of a mapped address = %q, want all4", v)
	}
	if _, v, _ := s.Lookup(addr("::1")); v != "all6" {
		t.Errorf("Lookup(::1) = %q", v)
	}
	// ::ffff:0:0/96 is the IPv4 /0.
	if v, ok := s.Get(pfx("::ffff:0:0/96")); !ok || v != "all4" {
		t.Errorf("Get(::ffff:0:0/96) = %q %v", v, ok)
	}
}

func TestCovering(t *testing.T) {
	var s Set[int]
	for i, p := range []string{"10.1.2.0/24", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "2001:db8::/32", "2001:db8:1::/48"} {
		s.Add(pfx(p), i)
	}
	for q, want := range map[string]string{
		"10.1.2.3/32":           "10.0.0.0/8", // the widest wins
		"10.1.2.0/24":           "10.0.0.0/8",
		"10.0.0.0/8":            "",
		"10.0.0.0/7":            "",
		"11.0.0.0/32":           "",
		"2001:db8:1:2::/64":     "2001:db8::/32",
		"2001:db8::/32":         "",
		"2001:db9::/48":         "",
		"::ffff:10.9.9.9/128":   "10.0.0.0/8",
		"10.200.0.0/16":         "10.0.0.0/8",
		"::ffff:10.200.0.0/112": "10.0.0.0/8",
	} {
		got, v, ok := s.Covering(pfx(q))
		if want == "" {
			if ok {
				t.Errorf("Covering(%s) = %s", q, got)
			}
			continue
		}
		if !ok || got != pfx(want) {
			t.Errorf("Covering(%s) = %s %v, want %s", q, got, ok, want)
		}
		if wv, _ := s.Get(got); wv != v {
			t.Errorf("Covering(%s) value %d, entry has %d", q, v, wv)
		}
	}
	if got, _, _ := s.Covering(netip.PrefixFrom(addr("2001:db8:1:2::5%e0"), 128)); got != pfx("2001:db8::/32") {
		t.Errorf("Covering of a zoned address = %s", got)
	}
	s.Delete(pfx("10.0.0.0/8"))
	if got, _, _ := s.Covering(pfx("10.1.2.3/32")); got != pfx("10.1.0.0/16") {
		t.Errorf("after deleting the /8, Covering = %s", got)
	}
	if _, _, ok := s.Covering(netip.Prefix{}); ok {
		t.Error("Covering of an invalid prefix")
	}
}

func TestInside(t *testing.T) {
	var s Set[struct{}]
	for _, p := range []string{"10.1.2.3/32", "10.1.0.0/16", "10.1.2.0/24", "10.1.0.0/24", "10.1.0.0/17", "10.2.0.0/16", "2001:db8::/48", "2001:db8::1/128"} {
		s.Add(pfx(p), struct{}{})
	}
	for q, want := range map[string][]string{
		"10.1.0.0/16":         {"10.1.0.0/17", "10.1.0.0/24", "10.1.2.0/24", "10.1.2.3/32"}, // by address, then length
		"10.0.0.0/8":          {"10.1.0.0/16", "10.1.0.0/17", "10.1.0.0/24", "10.1.2.0/24", "10.1.2.3/32", "10.2.0.0/16"},
		"10.1.2.3/32":         nil,
		"10.1.2.3/31":         {"10.1.2.3/32"},
		"::ffff:10.1.2.0/120": {"10.1.2.3/32"},
		"2001:db8::/32":       {"2001:db8::/48", "2001:db8::1/128"},
		"::/0":                {"2001:db8::/48", "2001:db8::1/128"},
		"2001:db8::1/128":     nil,
		"192.168.0.0/16":      nil,
	} {
		var w []netip.Prefix
		for _, p := range want {
			w = append(w, pfx(p))
		}
		if got := s.Inside(pfx(q)); !slices.Equal(got, w) {
			t.Errorf("Inside(%s) = %v, want %v", q, got, w)
		}
	}
	if got := s.Inside(netip.Prefix{}); got != nil {
		t.Errorf("Inside(invalid) = %v", got)
	}
}

func TestOverlaps(t *testing.T) {
	var s Set[bool]
	s.Add(pfx("192.0.2.0/24"), true)
	s.Add(pfx("2001:db8::5/128"), false)
	for q, want := range map[string]bool{
		"192.0.2.0/24": true, "192.0.2.9/32": true, "192.0.0.0/16": true, "192.0.3.0/24": false,
		"::ffff:192.0.2.9/128": true, "2001:db8::/64": true, "2001:db8::5/128": true, "2001:db8::6/128": false,
		"2001:db8:1::/48": false, "0.0.0.0/0": true, "::/0": true,
	} {
		if got := s.Overlaps(pfx(q)); got != want {
			t.Errorf("Overlaps(%s) = %v", q, got)
		}
	}
	if s.Overlaps(netip.Prefix{}) {
		t.Error("an invalid prefix overlaps")
	}
}

func TestLookupAllocs(t *testing.T) {
	s := &Set[int]{}
	s.Add(pfx("198.51.100.0/24"), 1)
	s.Add(pfx("2001:db8::/32"), 2)
	s.Add(pfx("203.0.113.7/32"), 3)
	a4, a6, miss := addr("198.51.100.9"), addr("2001:db8::1"), addr("192.0.2.1")
	if n := testing.AllocsPerRun(100, func() {
		s.Lookup(a4)
		s.Lookup(a6)
		s.Lookup(miss)
		s.Covering(pfx("198.51.100.9/32"))
	}); n != 0 {
		t.Errorf("Lookup and Covering allocate %v times", n)
	}
}
