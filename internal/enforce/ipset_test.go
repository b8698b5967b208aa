package enforce

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestIPSetNames(t *testing.T) {
	seen := map[string]bool{}
	for i, d := range ipsetDefs {
		for _, n := range []string{d.name, d.name + ipsetTmpSuffix} {
			if len(n) > 31 || seen[n] {
				t.Errorf("set name %q: %d chars (max 31) or duplicate", n, len(n))
			}
			seen[n] = true
		}
		// The element that ipsetIndex sends to set i is of its kind.
		a := netip.MustParseAddr("192.0.2.1")
		if d.family == unix.NFPROTO_IPV6 {
			a = netip.MustParseAddr("2001:db8::1")
		}
		bits := a.BitLen()
		if d.typ == "hash:net" {
			bits -= 8
		}
		if got := ipsetIndex(Element{Prefix: netip.PrefixFrom(a, bits), Scoped: d.scoped}); got != i {
			t.Errorf("%s: index %d, want %d", d.name, got, i)
		}
	}
	// The same order as the nftables backend's sets (Counters relies on it).
	want := []string{"ban4", "net4", "ban6", "net6", "ban4-but-ssh", "net4-but-ssh", "ban6-but-ssh", "net6-but-ssh"}
	for i, d := range ipsetDefs {
		if d.name != IPSetPrefix+want[i] {
			t.Errorf("set %d is %s, want %s", i, d.name, IPSetPrefix+want[i])
		}
	}
}

func TestIPSetSeconds(t *testing.T) {
	for _, c := range []struct {
		d       time.Duration
		want    uint32
		clamped bool
	}{
		{0, 0, false},
		{-time.Second, 0, false},
		{time.Millisecond, 1, false}, // never 0: that would be a permanent element
		{time.Second, 1, false},
		{1500 * time.Millisecond, 2, false},
		{time.Hour, 3600, false},
		{MaxTTL, ipsetMaxTimeout, true},
		{ipsetMaxTimeout * time.Second, ipsetMaxTimeout, false},
	} {
		got, cl := ipsetSeconds(c.d)
		if got != c.want || cl != c.clamped {
			t.Errorf("ipsetSeconds(%v) = %d %v, want %d %v", c.d, got, cl, c.want, c.clamped)
		}
	}
}

// decodeADT reads back what adtMessages encoded: the set name and its
// elements per message.
func decodeADT(t *testing.T, data []byte) (set string, entries []ipsetEntry, lineno bool) {
	t.Helper()
	walkAttrs(data, func(typ uint16, v []byte) {
		switch typ {
		case ipsetAttrSetName:
			set = cstring(v)
		case ipsetAttrLineNo:
			lineno = true
		case ipsetAttrADT:
			walkNested(v, func(typ uint16, d []byte) {
				if typ != ipsetAttrData {
					t.Fatalf("ADT holds attribute %d", typ)
				}
				e, ok := parseIPSetEntry(d)
				if !ok {
					t.Fatal("element does not decode")
				}
				entries = append(entries, e)
			})
		}
	})
	return set, entries, lineno
}

func TestADTMessagesChunkAndRoundTrip(t *testing.T) {
	for _, c := range []struct {
		name  string
		n     int
		mk    func(i int) netip.Prefix
		limit int // elements per message at least
	}{
		{"v4 addresses", 100_000, func(i int) netip.Prefix {
			return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32)
		}, 2000},
		{"v6 prefixes", 20_000, func(i int) netip.Prefix {
			return netip.MustParsePrefix(fmt.Sprintf("2001:db8:%x:%x::/64", i>>16, i&0xffff))
		}, 1200},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := make([]ipsetEntry, c.n)
			for i := range in {
				in[i] = ipsetEntry{Prefix: c.mk(i), Timeout: uint32(i%7200 + 1)}
			}
			msgs, what := adtMessages(ipsetCmdAdd, "ctguard-x", in)
			if len(msgs) != len(what) || len(msgs) > c.n/c.limit+1 {
				t.Fatalf("%d messages (%d descriptions) for %d elements", len(msgs), len(what), c.n)
			}
			var out []ipsetEntry
			for _, m := range msgs {
				if m.Header.Type != unix.NFNL_SUBSYS_IPSET<<8|ipsetCmdAdd || m.Header.Flags&0x200 != 0 {
					t.Fatalf("header %+v: want ADD without NLM_F_EXCL", m.Header)
				}
				if m.Data[4] != 4+1 || m.Data[6] != ipsetAttrProtocol || m.Data[8] != ipsetProtocol {
					t.Fatalf("the protocol version does not come first: % x", m.Data[:12])
				}
				// The ADT container's 16-bit length must not wrap.
				walkAttrs(m.Data, func(typ uint16, v []byte) {
					if typ == ipsetAttrADT && len(v)+4 > 0xffff {
						t.Fatalf("ADT of %d bytes", len(v))
					}
				})
				set, es, lineno := decodeADT(t, m.Data)
				if set != "ctguard-x" || !lineno {
					t.Fatalf("set %q, lineno %v", set, lineno)
				}
				out = append(out, es...)
			}
			if !slices.Equal(in, out) {
				t.Fatalf("round trip: %d in, %d out", len(in), len(out))
			}
		})
	}
}

func TestADTEncodesCIDROnlyForNetworks(t *testing.T) {
	for _, c := range []struct {
		p    string
		cidr bool
	}{{"192.0.2.1/32", false}, {"2001:db8::1/128", false}, {"198.51.100.0/24", true}, {"2001:db8::/48", true}} {
		msgs, _ := adtMessages(ipsetCmdDel, "s", []ipsetEntry{{Prefix: netip.MustParsePrefix(c.p)}})
		cidr, timeout := false, false
		walkAttrs(msgs[0].Data, func(typ uint16, v []byte) {
			if typ != ipsetAttrADT {
				return
			}
			walkNested(v, func(_ uint16, d []byte) {
				walkNested(d, func(typ uint16, _ []byte) {
					cidr = cidr || typ == ipsetAttrCIDR
					timeout = timeout || typ == ipsetAttrTimeout
				})
			})
		})
		if cidr != c.cidr || timeout {
			t.Errorf("%s: cidr %v timeout %v, want cidr %v and no timeout on a delete", c.p, cidr, timeout, c.cidr)
		}
	}
}

// A header reply as the kernel sends it, with attributes ctguard does not
// read (bucketsize, memsize) in between.
func TestParseIPSetHeader(t *testing.T) {
	b := nlattrs(nil).u8(ipsetAttrProtocol, 7).str(ipsetAttrSetName, "blacklist1").str(ipsetAttrTypeName, "hash:net").
		u8(ipsetAttrRevision, 7).u8(ipsetAttrFamily, unix.NFPROTO_IPV6)
	b, d := b.begin(ipsetAttrData)
	b = b.be32(ipsetAttrHashSize, 1024).be32(ipsetAttrMaxElem, 65536).be32(ipsetAttrTimeout, 600).
		u8(ipsetAttrBucketSize, 12).be32(ipsetAttrInitVal, 0xdeadbeef).be32(ipsetAttrReferences, 2).
		be32(ipsetAttrElements, 3).be32(ipsetAttrMemSize, 999).be32(ipsetAttrCadtFlags, ipsetFlagWithComment)
	b = b.end(d)
	var h ipsetHeader
	parseIPSetMessage(append([]byte{2, 0, 0, 0}, b...), &h, nil)
	want := ipsetHeader{Name: "blacklist1", Type: "hash:net", Revision: 7, Family: unix.NFPROTO_IPV6, Timeout: 600, HasTimeout: true,
		MaxElem: 65536, HashSize: 1024, Elements: 3, References: 2, InitVal: 0xdeadbeef, CadtFlags: ipsetFlagWithComment}
	if h != want {
		t.Fatalf("header\n got %+v\nwant %+v", h, want)
	}
}

// Garbage from the kernel (or a bug) must never panic the parser.
func TestParseIPSetGarbage(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	valid, _ := adtMessages(ipsetCmdAdd, "s", []ipsetEntry{{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Timeout: 9}})
	for range 20000 {
		b := slices.Clone(valid[0].Data)
		for range 1 + r.IntN(4) {
			b[r.IntN(len(b))] = byte(r.Uint32())
		}
		b = b[:r.IntN(len(b)+1)]
		var h ipsetHeader
		var es []ipsetEntry
		parseIPSetMessage(b, &h, &es)
	}
	if _, ok := parseIPSetEntry([]byte{8, 0, 1 | 0x80, 0, 4, 0, 1, 0}); ok {
		t.Fatal("an element without an address decoded")
	}
	// A prefix length beyond the address is read as the address.
	b := nlattrs(nil)
	b, ip := b.begin(ipsetAttrIP)
	b = b.attr(ipsetAttrIPAddrIPv4|nlaFNetByteOrder, []byte{192, 0, 2, 9})
	b = b.end(ip).u8(ipsetAttrCIDR, 99)
	if e, ok := parseIPSetEntry(b); !ok || e.Prefix != netip.MustParsePrefix("192.0.2.9/32") {
		t.Fatalf("%v %v", e, ok)
	}
}

func TestIPSetErrno(t *testing.T) {
	if s := errIPSetHashFull.Error(); !strings.Contains(s, "full") {
		t.Fatal(s)
	}
	if s := ipsetErrno(4999).Error(); !strings.Contains(s, "4999") {
		t.Fatal(s)
	}
	if ipsetError(nil) != nil {
		t.Fatal("nil error mapped")
	}
}

// iptables-save output of both flavours, as v1.8.9 prints it (with -c).
const saveLegacy = `# Generated by iptables-save v1.8.9 on Thu Dec  3 15:46:36 2026
*raw
:PREROUTING ACCEPT [10:600]
:OUTPUT ACCEPT [0:0]
:CTGUARD - [0:0]
[0:0] -A PREROUTING -m comment --comment ctguard -j CTGUARD
[3:180] -A PREROUTING -s 203.0.113.0/24 -j CT --notrack
[5:300] -A CTGUARD -m set --match-set ctguard-ban4 src -m comment --comment "managed by ctguard: changes here are undone id=00000000000000ff" -j DROP
[7:420] -A CTGUARD -m set --match-set ctguard-net4 src -m comment --comment ctguard -j DROP
[0:0] -A CTGUARD -p tcp -m multiport --dports 22,2222 -m comment --comment ctguard -j RETURN
[2:120] -A CTGUARD -m set --match-set ctguard-ban4-but-ssh src -m comment --comment ctguard -j DROP
[1:60] -A CTGUARD -m set --match-set ctguard-net4-but-ssh src -m comment --comment ctguard -j DROP
COMMIT
# Completed on Thu Dec  3 15:46:36 2026
# Generated by iptables-save v1.8.9 on Thu Dec  3 15:46:36 2026
*filter
:INPUT ACCEPT [0:0]
-A INPUT -m set --match-set blacklist1 src -j DROP
COMMIT
`

func TestParseSave(t *testing.T) {
	tab, err := parseSave(saveLegacy, "raw")
	if err != nil {
		t.Fatal(err)
	}
	if len(tab.Rules) != 7 || tab.Chains["PREROUTING"] != "ACCEPT" || tab.Chains[IPTablesChain] != "-" {
		t.Fatalf("%+v", tab)
	}
	r := tab.chainRules(IPTablesChain)[0]
	if r.Packets != 5 || r.Bytes != 300 || r.arg("--match-set") != "ctguard-ban4" || r.target() != "DROP" {
		t.Fatalf("%+v", r)
	}
	if tok, ok := parseOwnerComment(r.arg("--comment")); !ok || tok != 0xff {
		t.Fatalf("owner comment %q: %x %v", r.arg("--comment"), tok, ok)
	}
	if p, tok := chainProblem(tab, false, []uint16{22, 2222}); p != "" || tok != 0xff {
		t.Fatalf("problem %q token %x", p, tok)
	}
	// Another table's rules are not read.
	if slices.ContainsFunc(tab.Rules, func(r iptRule) bool { return r.Chain == "INPUT" }) {
		t.Fatal("read the filter table")
	}
	for _, bad := range []string{"*raw\n-A\nCOMMIT\n", "*raw\n[1:2 -A X -j DROP\n", "*raw\n-A X --comment \"open\n", "*raw\n:X\n", "*raw\n-I X 1\n"} {
		if _, err := parseSave(bad, "raw"); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
}

func TestSplitWordsAndQuote(t *testing.T) {
	for _, words := range [][]string{
		{"-m", "comment", "--comment", "managed by ctguard: x"},
		{"--comment", `a "quoted" \ word`},
		{"-j", "DROP"},
	} {
		got, err := splitWords(joinWords(words))
		if err != nil || !slices.Equal(got, words) {
			t.Errorf("round trip of %q: %q %v", words, got, err)
		}
	}
}

func TestChainProblem(t *testing.T) {
	ports := []uint16{22, 2222}
	base, _ := parseSave(saveLegacy, "raw")
	edit := func(f func(t *iptTable)) iptTable {
		c := iptTable{Chains: map[string]string{}, Rules: slices.Clone(base.Rules)}
		for k, v := range base.Chains {
			c.Chains[k] = v
		}
		f(&c)
		return c
	}
	for _, c := range []struct {
		name string
		tab  iptTable
		want string
	}{
		{"no chain", edit(func(t *iptTable) { delete(t.Chains, IPTablesChain) }), "is missing"},
		{"flushed chain", edit(func(t *iptTable) {
			t.Rules = slices.DeleteFunc(t.Rules, func(r iptRule) bool { return r.Chain == IPTablesChain })
		}), "has 0 rules, want 5"},
		{"changed target", edit(func(t *iptTable) {
			t.Rules[3].Args = slices.Clone(t.Rules[3].Args)
			t.Rules[3].Args[len(t.Rules[3].Args)-1] = "ACCEPT"
		}), "rule 2"},
		{"no jump", edit(func(t *iptTable) { t.Rules = t.Rules[1:] }), "0 jumps"},
		{"accept before the jump", edit(func(t *iptTable) {
			t.Rules = append([]iptRule{{Chain: "PREROUTING", Args: []string{"-j", "ACCEPT"}}}, t.Rules...)
		}), "accepts before the jump"},
		{"two jumps", edit(func(t *iptTable) { t.Rules = append(t.Rules, t.Rules[0]) }), "2 jumps"},
		{"other ports", base, "rule 3"},
	} {
		p := ""
		if c.name == "other ports" {
			p, _ = chainProblem(c.tab, false, []uint16{22})
		} else {
			p, _ = chainProblem(c.tab, false, ports)
		}
		if !strings.Contains(p, c.want) {
			t.Errorf("%s: problem %q, want %q", c.name, p, c.want)
		}
	}
	// A mark that is not ctguard's: the first rule differs.
	noMark := edit(func(t *iptTable) {
		t.Rules[2].Args = slices.Clone(t.Rules[2].Args)
		t.Rules[2].Args[8] = "something else"
	})
	if p, tok := chainProblem(noMark, false, ports); !strings.Contains(p, "rule 1") || tok != 0 {
		t.Errorf("no mark: %q %x", p, tok)
	}
	if why := foreignChain(noMark, false); !strings.Contains(why, "without ctguard's mark") {
		t.Errorf("foreign: %q", why)
	}
	if why := foreignChain(base, false); why != "" {
		t.Errorf("own chain called foreign: %q", why)
	}
}

func TestRestoreScript(t *testing.T) {
	cur, _ := parseSave(saveLegacy, "raw")
	s := restoreScript(cur, chainRules(true, []uint16{22}, 0xabc))
	for _, want := range []string{
		"*raw\n:CTGUARD - [0:0]\n",
		`-A CTGUARD -m set --match-set ctguard-ban6 src -m comment --comment "managed by ctguard: changes here are undone id=0000000000000abc" -j DROP`,
		"-A CTGUARD -p tcp -m multiport --dports 22 -m comment --comment ctguard -j RETURN\n",
		"-A CTGUARD -m set --match-set ctguard-net6-but-ssh src -m comment --comment ctguard -j DROP\n",
		"-D PREROUTING -m comment --comment ctguard -j CTGUARD\n-I PREROUTING 1 -m comment --comment ctguard -j CTGUARD\nCOMMIT\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("restore script lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "notrack") {
		t.Errorf("the script touches another rule:\n%s", s)
	}
	// More than 15 ports: one multiport match per 15.
	many := make([]uint16, 20)
	for i := range many {
		many[i] = uint16(2000 + i)
	}
	if rs := chainRules(false, many, 1); len(rs) != 6 {
		t.Errorf("%d rules for 20 ports", len(rs))
	}
	rm := removeScript(cur)
	if !strings.Contains(rm, "-D PREROUTING -m comment --comment ctguard -j CTGUARD\n-F CTGUARD\n-X CTGUARD\n") || strings.Contains(rm, "notrack") {
		t.Errorf("remove script:\n%s", rm)
	}
}

func TestIPSetForeignAndIdentity(t *testing.T) {
	s := NewIPSet(nil, IPSetOptions{})
	ok := func(d ipsetDef) *ipsetHeader {
		return &ipsetHeader{Name: d.name, Type: d.typ, Family: d.family, HasTimeout: true, Timeout: 3600, InitVal: 7}
	}
	st := ipsetState{live: make([]*ipsetHeader, len(ipsetDefs)), tmp: make([]*ipsetHeader, len(ipsetDefs))}
	for i, d := range ipsetDefs {
		st.live[i] = ok(d)
	}
	if why := s.foreign(st); why != "" {
		t.Fatalf("own sets called foreign: %s", why)
	}
	st.live[0] = &ipsetHeader{Name: "ctguard-ban4", Type: "hash:ip", Family: unix.NFPROTO_IPV4} // no timeout
	st.live[3] = &ipsetHeader{Name: "ctguard-net6", Type: "hash:ip", Family: unix.NFPROTO_IPV6, HasTimeout: true}
	tmp := ok(ipsetDefs[1])
	tmp.References = 1
	st.tmp[1] = tmp
	why := s.foreign(st)
	for _, want := range []string{"ctguard-ban4 has no timeout", "ctguard-net6 is hash:ip inet6, want hash:net inet6", "ctguard-net4-new is referenced"} {
		if !strings.Contains(why, want) {
			t.Errorf("foreign: %q lacks %q", why, want)
		}
	}
	live := []*ipsetHeader{ok(ipsetDefs[0]), nil}
	a, b := identity(1, live), identity(2, live)
	live2 := []*ipsetHeader{ok(ipsetDefs[0]), nil}
	live2[0].InitVal = 8
	if a == b || a == identity(1, live2) || a != identity(1, []*ipsetHeader{ok(ipsetDefs[0]), nil}) || a == 0 || int64(a) < 0 {
		t.Fatalf("identity: %d %d %d", a, b, identity(1, live2))
	}
}

func TestIPSetClampedRenewal(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	s := NewIPSet(nil, IPSetOptions{})
	s.now = func() time.Time { return now }
	long := Element{Prefix: netip.MustParsePrefix("198.51.100.7/32"), TTL: 30 * 24 * time.Hour}
	s.noteClamped(nil, []Element{long, {Prefix: netip.MustParsePrefix("198.51.100.8/32"), TTL: time.Hour}})
	if len(s.clamped) != 1 {
		t.Fatalf("clamped %v", s.clamped)
	}
	if at := s.clamped[long.Prefix]; at != now.Add(ipsetMaxTimeout*time.Second) {
		t.Fatalf("kernel expiry %v", at)
	}
	// A re-ban with a short TTL, or an unban, forgets it.
	s.noteClamped(nil, []Element{{Prefix: long.Prefix, TTL: time.Hour}})
	if len(s.clamped) != 0 {
		t.Fatal("re-ban kept the clamp")
	}
	s.noteClamped(nil, []Element{long})
	s.noteClamped([]Element{{Prefix: long.Prefix}}, nil)
	if len(s.clamped) != 0 {
		t.Fatal("unban kept the clamp")
	}
}

func TestIPTablesFlavourTools(t *testing.T) {
	for _, c := range []struct {
		f    IPTablesFlavour
		v6   bool
		what string
		want string
	}{
		{IPTablesDefault, false, "restore", "iptables-restore"},
		{IPTablesDefault, true, "save", "ip6tables-save"},
		{IPTablesLegacy, false, "save", "iptables-legacy-save"},
		{IPTablesNFT, true, "restore", "ip6tables-nft-restore"},
		{IPTablesLegacy, false, "", "iptables-legacy"},
	} {
		if got := c.f.tool(c.v6, c.what); got != c.want {
			t.Errorf("%q.tool(%v, %q) = %q, want %q", c.f, c.v6, c.what, got, c.want)
		}
	}
}
