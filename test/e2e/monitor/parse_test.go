package monitor

import (
	"net/netip"
	"strings"
	"testing"
)

const procStat = `entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
0003fffc  00000000 00000000 00000000 00000010 00000000 00000000 00000000 00000000 00000002 0000000a 00000100 00000000  00000000 00000000 00000000 00000000
0003fffc  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 00000005 00000001 00000000  00000000 00000000 00000000 00000000
`

func TestParseProcStat(t *testing.T) {
	s, err := ParseProcStat(strings.NewReader(procStat))
	if err != nil {
		t.Fatal(err)
	}
	if s != (Stats{Drop: 15, EarlyDrop: 257, InsertFailed: 3}) {
		t.Fatalf("got %+v", s)
	}
	for _, bad := range []string{"", "entries drop\n1 2\n", procStat + "00 01\n"} {
		if _, err := ParseProcStat(strings.NewReader(bad)); err == nil {
			t.Errorf("no error for %q", bad)
		}
	}
}

func TestParseConntrackS(t *testing.T) {
	in := "cpu=0   \tfound=0 invalid=3 insert=0 insert_failed=1 drop=7 early_drop=100 error=0 search_restart=0\n" +
		"cpu=1   \tfound=0 invalid=0 insert=0 insert_failed=0 drop=2 early_drop=1 error=0 search_restart=0\n"
	s, err := ParseConntrackS(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if s != (Stats{Drop: 9, EarlyDrop: 101, InsertFailed: 1}) {
		t.Fatalf("got %+v", s)
	}
	if _, err := ParseConntrackS(strings.NewReader("")); err == nil {
		t.Fatal("no error for empty output")
	}
}

func TestCountStates(t *testing.T) {
	in := `ipv4     2 tcp      6 430999 ESTABLISHED src=192.0.2.66 dst=192.0.2.10 sport=20001 dport=443 src=192.0.2.10 dst=192.0.2.66 sport=443 dport=20001 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 59 SYN_RECV src=192.0.2.77 dst=192.0.2.10 sport=30001 dport=443 [UNREPLIED] src=192.0.2.10 dst=192.0.2.77 sport=443 dport=30001 mark=0 zone=0 use=2
ipv4     2 udp      17 29 src=192.0.2.99 dst=192.0.2.10 sport=5353 dport=443 [UNREPLIED] src=192.0.2.10 dst=192.0.2.99 sport=443 dport=5353 mark=0 zone=0 use=2
ipv4     2 udp      17 169 src=192.0.2.98 dst=192.0.2.10 sport=5354 dport=53 src=192.0.2.10 dst=192.0.2.98 sport=53 dport=5354 [ASSURED] mark=0 zone=0 use=2
ipv4     2 icmp     1 28 src=192.0.2.97 dst=192.0.2.10 type=8 code=0 id=77 [UNREPLIED] src=192.0.2.10 dst=192.0.2.97 type=0 code=0 id=77 mark=0 zone=0 use=2
tcp      6 117 TIME_WAIT src=192.0.2.5 dst=198.51.100.2 sport=1 dport=443 src=198.51.100.2 dst=192.0.2.5 sport=443 dport=1 [ASSURED] mark=0 use=1
ipv6     10 tcp      6 431999 ESTABLISHED src=2001:db8:bad:0:0:0:0:1 dst=2001:db8:ff:1:0:0:0:2 sport=40000 dport=443 src=2001:db8:ff:1:0:0:0:2 dst=2001:db8:bad:0:0:0:0:1 sport=443 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 431999 ESTABLISHED src=198.51.100.2 dst=192.0.2.70 sport=443 dport=1 src=192.0.2.70 dst=198.51.100.2 sport=1 dport=443 [ASSURED] mark=0 zone=0 use=2
`
	// The attack holds the lines whose first src= is in its ranges: .66,
	// .77 and the IPv6 bot; not the reply direction's src=.
	attack := []netip.Prefix{netip.MustParsePrefix("192.0.2.64/27"), netip.MustParsePrefix("2001:db8:bad::/48")}
	c, err := CountStates(strings.NewReader(in), attack)
	if err != nil {
		t.Fatal(err)
	}
	if c.AttackHeld != 3 {
		t.Errorf("AttackHeld = %d, want 3", c.AttackHeld)
	}
	got := c.States
	want := map[string]int64{"ESTABLISHED": 3, "SYN_RECV": 1, StateUDPUnreplied: 1, StateUDP: 1, StateOther: 1, "TIME_WAIT": 1}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
}

func TestParseIPSetSave(t *testing.T) {
	in := `create blacklist1 hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1
add blacklist1 203.0.113.10
add blacklist1 198.18.0.5
create blacklist1-v6 hash:ip family inet6 hashsize 1024 maxelem 65536
add blacklist1-v6 2001:db8:bad:1::1
create other hash:ip
add other 192.0.2.1
`
	got, err := ParseIPSetSave(strings.NewReader(in), "blacklist1", "blacklist1-v6")
	if err != nil {
		t.Fatal(err)
	}
	want := "198.18.0.5 2001:db8:bad:1::1 203.0.113.10"
	if strings.Join(got, " ") != want {
		t.Fatalf("got %v, want %s", got, want)
	}
	if _, err := ParseIPSetSave(strings.NewReader("add blacklist1 nonsense\n"), "blacklist1"); err == nil {
		t.Fatal("no error for a bad address")
	}
}

// ctguard's ipset backend: hash:ip and hash:net sets with timeouts, IPv4
// and IPv6, full and scoped; prefixes count as well as addresses.
func TestParseIPSetSaveCtguardSets(t *testing.T) {
	in := `create ctguard-ban4 hash:ip family inet hashsize 1024 maxelem 1048576 timeout 3600 bucketsize 12 initval 0x5e8c1a2b
add ctguard-ban4 198.18.0.7 timeout 3571
create ctguard-net4 hash:net family inet hashsize 1024 maxelem 1048576 timeout 3600 bucketsize 12 initval 0x1c2d3e4f
add ctguard-net4 198.18.0.0/24 timeout 3590
add ctguard-net4 198.19.5.9/24 timeout 3590
add ctguard-net4 198.18.9.1/32 timeout 3590
create ctguard-ban6 hash:ip family inet6 hashsize 1024 maxelem 1048576 timeout 3600
add ctguard-ban6 2001:db8:bad::1 timeout 100
create ctguard-net6 hash:net family inet6 hashsize 1024 maxelem 1048576 timeout 3600
add ctguard-net6 2001:db8:bad::/48 timeout 3599
create ctguard-net4-but-ssh hash:net family inet hashsize 1024 maxelem 1048576 timeout 3600
add ctguard-net4-but-ssh 198.18.7.0/24 timeout 899
create blacklist1 hash:ip family inet hashsize 1024 maxelem 65536
add blacklist1 203.0.113.10
`
	sets := []string{"ctguard-ban4", "ctguard-net4", "ctguard-ban6", "ctguard-net6", "ctguard-net4-but-ssh"}
	got, err := ParseIPSetSave(strings.NewReader(in), sets...)
	if err != nil {
		t.Fatal(err)
	}
	want := "198.18.0.0/24 198.18.0.7 198.18.7.0/24 198.18.9.1 198.19.5.0/24 2001:db8:bad::/48 2001:db8:bad::1"
	if strings.Join(got, " ") != want {
		t.Fatalf("got %v, want %s", got, want)
	}
	bySet, err := ParseIPSetSaveBySet(strings.NewReader(in), sets...)
	if err != nil {
		t.Fatal(err)
	}
	if len(bySet) != 5 || strings.Join(bySet["ctguard-net4-but-ssh"], " ") != "198.18.7.0/24" || bySet["blacklist1"] != nil {
		t.Fatalf("per set: %v", bySet)
	}
	if !scopedIPSet("ctguard-net4-but-ssh") || scopedIPSet("ctguard-net4") || scopedIPSet("blacklist1") {
		t.Fatal("scopedIPSet misclassifies ctguard's sets")
	}
	if _, err := ParseIPSetSave(strings.NewReader("add ctguard-net4 198.18.0.0/33\n"), "ctguard-net4"); err == nil {
		t.Fatal("no error for a bad prefix")
	}
}

func TestParseNFTSets(t *testing.T) {
	// Recorded from nft 1.0.6: plain, timeout-wrapped, prefix and wrapped prefix elements.
	in := `{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "ctguard", "handle": 1}}, {"set": {"family": "inet", "name": "v4", "table": "ctguard", "type": "ipv4_addr", "handle": 1, "flags": ["timeout"], "elem": [{"elem": {"val": "198.18.0.1", "timeout": 3600, "expires": 3599}}, "198.18.0.2"]}}, {"set": {"family": "inet", "name": "p4", "table": "ctguard", "type": "ipv4_addr", "handle": 2, "flags": ["interval", "timeout"], "elem": [{"elem": {"val": {"prefix": {"addr": "198.19.0.0", "len": 24}}, "timeout": 3600, "expires": 3599}}, {"prefix": {"addr": "198.19.5.0", "len": 24}}]}}, {"set": {"family": "inet", "name": "v6", "table": "ctguard", "type": "ipv6_addr", "handle": 3, "elem": ["2001:db8:bad::1"]}}, {"set": {"family": "inet", "name": "empty", "table": "ctguard", "type": "ipv4_addr", "handle": 4}}]}`
	got, err := ParseNFTSets(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := "198.18.0.1 198.18.0.2 198.19.0.0/24 198.19.5.0/24 2001:db8:bad::1"
	if strings.Join(got, " ") != want {
		t.Fatalf("got %v, want %s", got, want)
	}
	// ctguard's SSH ports set is not a ban list; its scoped sets are.
	scoped := `{"nftables": [{"set": {"family": "inet", "name": "ssh_ports", "table": "ctguard", "type": "inet_service", "elem": [22]}}, {"set": {"family": "inet", "name": "net4_but_ssh", "table": "ctguard", "type": "ipv4_addr", "flags": ["interval", "timeout"], "elem": [{"elem": {"val": {"prefix": {"addr": "198.18.7.0", "len": 24}}, "timeout": 900, "expires": 899}}]}}]}`
	bySet, err := ParseNFTSetElems(strings.NewReader(scoped))
	if err != nil {
		t.Fatal(err)
	}
	if len(bySet) != 1 || strings.Join(bySet["net4_but_ssh"], " ") != "198.18.7.0/24" {
		t.Fatalf("got %v, want only net4_but_ssh: 198.18.7.0/24", bySet)
	}
	for _, bad := range []string{`{`, `{"nftables":[{"set":{"name":"x","elem":["nonsense"]}}]}`, `{"nftables":[{"set":{"name":"x","elem":[{"foo":1}]}}]}`} {
		if _, err := ParseNFTSets(strings.NewReader(bad)); err == nil {
			t.Errorf("no error for %s", bad)
		}
	}
}

// The drop rules' counters of ctguard's table: rules that count and drop
// add up; a counter without a drop, or a drop without a counter, does not.
func TestParseNFTTableDrops(t *testing.T) {
	in := `{"nftables": [{"table": {"family": "inet", "name": "ctguard", "handle": 1}}, {"set": {"family": "inet", "name": "net4", "table": "ctguard", "type": "ipv4_addr", "flags": ["interval", "timeout"], "elem": [{"elem": {"val": {"prefix": {"addr": "198.18.0.0", "len": 24}}, "timeout": 3600, "expires": 3599}}]}},
{"rule": {"family": "inet", "table": "ctguard", "chain": "prerouting", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@ban4"}}, {"counter": {"packets": 7, "bytes": 420}}, {"drop": null}]}},
{"rule": {"family": "inet", "table": "ctguard", "chain": "prerouting", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@net4"}}, {"counter": {"packets": 1200, "bytes": 72000}}, {"drop": null}]}},
{"rule": {"family": "inet", "table": "ctguard", "chain": "prerouting", "handle": 7, "expr": [{"counter": {"packets": 99, "bytes": 1}}, {"accept": null}]}},
{"rule": {"family": "inet", "table": "ctguard", "chain": "prerouting", "handle": 8, "expr": [{"drop": null}]}}]}`
	bySet, drops, err := ParseNFTTable(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if drops != 1207 || strings.Join(bySet["net4"], " ") != "198.18.0.0/24" {
		t.Fatalf("drops %d, sets %v: want 1207 and net4 198.18.0.0/24", drops, bySet)
	}
}
