package enforce

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Bans exported to the host's own set (the incident's blacklist1: a plain
// hash:ip, no timeouts, dropped by the host's iptables rule): addresses go
// in and the host's rule drops them; prefixes, IPv6 and scoped bans are
// skipped and said so; Remove takes them out again; the set and the rule
// are otherwise untouched.
func TestRootExportSetWithoutTimeouts(t *testing.T) {
	l := newLabOn(t, labIPSetLegacy)
	l.listen(8080)
	ctx := context.Background()
	l.vic.MustRun(t, "ipset", "create", "blacklist1", "hash:ip")
	l.vic.MustRun(t, "ipset", "add", "blacklist1", "203.0.113.50") // the host's own entry
	l.iptables(false, "-I", "INPUT", "1", "-m", "set", "--match-set", "blacklist1", "src", "-j", "DROP")
	x, err := OpenExportSet(ctx, "blacklist1", ExportOptions{NetNSFd: l.ips.netns})
	if err != nil {
		t.Fatal(err)
	}
	if i := x.Info(); i.Timeouts || i.Prefixes || i.Type != "hash:ip" || i.Family != "inet" || i.Elements != 1 {
		t.Fatalf("info: %+v", i)
	}
	l.requireTracking("192.0.2.3", 8080)
	r, err := x.Add(ctx, []Element{
		{Prefix: pfx("192.0.2.3"), TTL: time.Hour},
		{Prefix: pfx("192.0.2.64/26"), TTL: time.Hour},
		{Prefix: pfx("192.0.2.5"), TTL: time.Hour, Scoped: true},
		{Prefix: pfx("2001:db8::3"), TTL: time.Hour},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Added) != 1 || r.Added[0].TTL != 0 || len(r.Skipped) != 3 {
		t.Fatalf("add: %+v", r)
	}
	if c := l.dial("192.0.2.3", 8080, 2); len(c) != 0 {
		t.Fatal("the host's rule does not drop the exported ban")
	}
	es, err := x.Elements(ctx)
	if err != nil || len(es) != 2 {
		t.Fatalf("elements: %v %v", es, err)
	}
	// Re-adding is harmless; removing what is not there is not an error.
	if _, err := x.Add(ctx, []Element{{Prefix: pfx("192.0.2.3"), TTL: time.Hour}}); err != nil {
		t.Fatal(err)
	}
	if err := x.Remove(ctx, []netip.Prefix{pfx("192.0.2.3"), pfx("192.0.2.4"), pfx("192.0.2.64/26"), pfx("2001:db8::3")}); err != nil {
		t.Fatal(err)
	}
	out := l.vic.MustRun(t, "ipset", "list", "blacklist1")
	if !strings.Contains(out, "203.0.113.50") || strings.Contains(out, "192.0.2.3") {
		t.Fatalf("after Remove:\n%s", out)
	}
	l.requireTracking("192.0.2.3", 8080)
	if out := l.iptables(false, "-S", "INPUT"); !strings.Contains(out, "--match-set blacklist1 src -j DROP") {
		t.Fatalf("the host's rule changed:\n%s", out)
	}
}

// A hash:net with timeouts and comments gets prefixes with their time and
// the comment "ctguard", and drops them by itself.
func TestRootExportSetWithTimeouts(t *testing.T) {
	l := newLabOn(t, labIPSetNFT)
	ctx := context.Background()
	l.vic.MustRun(t, "ipset", "create", "blacklist6", "hash:net", "family", "inet6", "timeout", "600", "comment")
	x, err := OpenExportSet(ctx, "blacklist6", ExportOptions{NetNSFd: l.ips.netns})
	if err != nil {
		t.Fatal(err)
	}
	if i := x.Info(); !i.Timeouts || !i.Prefixes || !i.Comments || i.Family != "inet6" {
		t.Fatalf("info: %+v", i)
	}
	r, err := x.Add(ctx, []Element{
		{Prefix: pfx("2001:db8::3"), TTL: 2 * time.Second},
		{Prefix: pfx("2001:db8:5::/48"), TTL: time.Hour},
		{Prefix: pfx("192.0.2.3"), TTL: time.Hour},
	})
	if err != nil || len(r.Added) != 2 || len(r.Skipped) != 1 || !strings.Contains(r.Skipped[0].Reason, "inet6 set") {
		t.Fatalf("add: %+v %v", r, err)
	}
	es, err := x.Elements(ctx)
	if err != nil || len(es) != 2 {
		t.Fatalf("elements: %v %v", es, err)
	}
	for _, e := range es {
		if e.Comment != "ctguard" || e.TTL <= 0 || e.TTL > time.Hour {
			t.Fatalf("element %+v", e)
		}
	}
	time.Sleep(2500 * time.Millisecond)
	if es, _ := x.Elements(ctx); len(es) != 1 || es[0].Prefix != pfx("2001:db8:5::/48") {
		t.Fatalf("after the short one expired: %v", es)
	}
}

func TestRootExportSetRefused(t *testing.T) {
	l := newLabOn(t, labIPSetLegacy)
	ctx := context.Background()
	l.vic.MustRun(t, "ipset", "create", "ports", "hash:ip,port")
	l.vic.MustRun(t, "ipset", "create", "nets24", "hash:ip", "netmask", "24")
	for name, want := range map[string]string{
		"missing": "does not exist",
		"ports":   "hash:ip and hash:net sets only",
		"nets24":  "whole /24",
		"":        "1 to 31 characters",
	} {
		if _, err := OpenExportSet(ctx, name, ExportOptions{NetNSFd: l.ips.netns}); !errors.Is(err, ErrExportSet) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", name, err, want)
		}
	}
}
