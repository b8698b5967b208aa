package enforce

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestExportInfo(t *testing.T) {
	for _, c := range []struct {
		h        ipsetHeader
		err      string
		prefixes bool
	}{
		{h: ipsetHeader{Name: "blacklist1", Type: "hash:ip", Family: unix.NFPROTO_IPV4}},
		{h: ipsetHeader{Name: "b", Type: "hash:ip", Family: unix.NFPROTO_IPV4, Netmask: 32}},
		{h: ipsetHeader{Name: "b", Type: "hash:net", Family: unix.NFPROTO_IPV6, HasTimeout: true}, prefixes: true},
		{h: ipsetHeader{Name: "b", Type: "hash:ip", Family: unix.NFPROTO_IPV4, Netmask: 24}, err: "each address would ban its whole /24"},
		{h: ipsetHeader{Name: "b", Type: "hash:ip,port", Family: unix.NFPROTO_IPV4}, err: "hash:ip and hash:net sets only"},
		{h: ipsetHeader{Name: "b", Type: "list:set"}, err: "hash:ip and hash:net sets only"},
		{h: ipsetHeader{Name: "b", Type: "hash:net", Family: 7}, err: "family 7"},
	} {
		info, err := exportInfo(c.h)
		if c.err != "" {
			if !errors.Is(err, ErrExportSet) || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%+v: %v, want %q", c.h, err, c.err)
			}
			continue
		}
		if err != nil || info.Prefixes != c.prefixes || info.Timeouts != c.h.HasTimeout || info.Name != c.h.Name {
			t.Errorf("%+v: %+v %v", c.h, info, err)
		}
	}
}

func TestExportPlan(t *testing.T) {
	plain := ExportInfo{Name: "blacklist1", Type: "hash:ip", Family: "inet"}
	timed := ExportInfo{Name: "b6", Type: "hash:net", Family: "inet6", Timeouts: true, Prefixes: true, Comments: true}
	bans := []Element{
		{Prefix: netip.MustParsePrefix("198.51.100.7/32"), TTL: time.Hour},
		{Prefix: netip.MustParsePrefix("203.0.113.0/24"), TTL: time.Hour},
		{Prefix: netip.MustParsePrefix("192.0.2.9/32"), TTL: time.Hour, Scoped: true},
		{Prefix: netip.MustParsePrefix("2001:db8::7/128"), TTL: 90 * time.Second},
		{Prefix: netip.MustParsePrefix("2001:db8:1::/48"), TTL: MaxTTL},
		{Prefix: netip.MustParsePrefix("2001:db8:2::/64")}, // no TTL: never sent as 0 (permanent)
	}

	entries, r := plain.plan(bans)
	if len(entries) != 1 || entries[0].Prefix != bans[0].Prefix || entries[0].Timeout != 0 || entries[0].Comment != "" {
		t.Fatalf("plain hash:ip entries: %+v", entries)
	}
	if len(r.Added) != 1 || r.Added[0].TTL != 0 {
		t.Fatalf("added to an untimed set: %+v (TTL 0 tells the caller to remove it itself)", r.Added)
	}
	reasons := map[string]string{}
	for _, s := range r.Skipped {
		reasons[s.Prefix.String()] = s.Reason
	}
	for p, want := range map[string]string{
		"203.0.113.0/24":  "blacklist1 is hash:ip, which holds addresses only",
		"192.0.2.9/32":    "leaves the SSH ports open",
		"2001:db8::7/128": "blacklist1 is an inet set",
	} {
		if !strings.Contains(reasons[p], want) {
			t.Errorf("skip of %s: %q, want %q", p, reasons[p], want)
		}
	}

	entries, r = timed.plan(bans)
	if len(entries) != 3 || r.Clamped != 1 || len(r.Skipped) != 3 {
		t.Fatalf("timed hash:net: %+v %+v", entries, r)
	}
	for i, want := range []uint32{90, ipsetMaxTimeout, 3600} {
		if entries[i].Timeout != want || entries[i].Comment != "ctguard" {
			t.Errorf("entry %d: %+v, want timeout %d and the comment", i, entries[i], want)
		}
		if r.Added[i].TTL != time.Duration(want)*time.Second {
			t.Errorf("added %d: %v", i, r.Added[i])
		}
	}
}
