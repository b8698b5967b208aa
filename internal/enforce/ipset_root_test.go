package enforce

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The ipset backend's own root tests: what differs from nftables (a host
// firewall reload wipes the raw table but not the sets, an ACCEPT before
// ctguard's jump, ipset's timeout limit) and ownership. The behaviours both
// backends share run on both in enforce_root_test.go (forEachBackend).

// policyCounters are the packet counts on iptables-save's chain lines,
// which neighbour discovery changes at any time.
var policyCounters = regexp.MustCompile(`\[\d+:\d+\]`)

var ipsetLabs = []labBackend{labIPSetLegacy, labIPSetNFT}

func forEachIPSetLab(t *testing.T, fn func(t *testing.T, be labBackend)) {
	for _, b := range ipsetLabs {
		t.Run(b.name, func(t *testing.T) { fn(t, b) })
	}
}

// A host firewall reload (iptables-restore of the host's rules, without
// --noflush) wipes the raw table; a flushed chain, a destroyed set, an
// ACCEPT put before ctguard's jump: each is found by the cheap check and
// rebuilt from the store, and the host's own rules stay as they were.
func TestRootIPSetReconcileAfterFirewallReload(t *testing.T) {
	forEachIPSetLab(t, func(t *testing.T, be labBackend) {
		l := newLabOn(t, be)
		l.listen(8080)
		ctx := context.Background()
		l.ban("192.0.2.3", time.Hour)
		l.ban("192.0.2.4", 2*time.Second) // will have expired
		l.ban("192.0.2.64/26", time.Hour)
		l.ban("2001:db8::3", time.Hour)
		l.ban("2001:db8::8000:0/112", 2*time.Second) // will have expired
		if r, err := l.eng.Reconcile(ctx); err != nil || r.Rebuilt {
			t.Fatalf("healthy sets rebuilt: %+v %v", r, err)
		}
		// The host's own rules: one in raw after ctguard's jump, one in filter.
		l.iptables(false, "-t", "raw", "-A", "PREROUTING", "-s", "203.0.113.0/24", "-j", "CT", "--notrack")
		l.iptables(false, "-A", "INPUT", "-s", "198.51.100.0/24", "-j", "DROP")
		time.Sleep(2200 * time.Millisecond)

		// 1. The chain flushed by hand.
		l.iptables(false, "-t", "raw", "-F", IPTablesChain)
		l.requireTracking("192.0.2.3", 8080) // the ban is really gone
		hostRules := func() string {
			out := l.vic.MustRun(t, be.flavour.tool(false, "save"))
			var keep []string
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(line, "-A") && !strings.Contains(line, IPTablesChain) {
					keep = append(keep, line)
				}
			}
			return strings.Join(keep, "\n")
		}
		before := hostRules()
		r, err := l.eng.Reconcile(ctx)
		if err != nil || !r.Rebuilt || r.Restored != 3 || !strings.Contains(r.Problem, "has 0 rules") {
			t.Fatalf("reconcile after a flush of the chain: %+v %v", r, err)
		}
		if after := hostRules(); after != before {
			t.Fatalf("reconcile touched the host's rules:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		for _, src := range []string{"192.0.2.3", "192.0.2.66", "2001:db8::3"} {
			if c := l.dial(src, 8080, 2); len(c) != 0 {
				t.Fatalf("%s not banned again after reconcile", src)
			}
		}
		for _, src := range []string{"192.0.2.4", "2001:db8::8000:5"} {
			l.requireTracking(src, 8080) // expired: not re-applied
		}

		// 2. A reload of the host's rules: the raw table is replaced, the
		// sets stay (and are no longer referenced), then a set is destroyed.
		for _, v6 := range []bool{false, true} {
			l.vic.MustRun(t, "sh", "-c", fmt.Sprintf("%s -t raw | grep -v %s | %s", be.flavour.tool(v6, "save"),
				IPTablesChain, be.flavour.tool(v6, "restore")))
		}
		if r, err := l.eng.Reconcile(ctx); err != nil || !r.Rebuilt || !strings.Contains(r.Problem, "chain raw CTGUARD is missing") {
			t.Fatalf("reconcile after a reload: %+v %v", r, err)
		}
		for _, v6 := range []bool{false, true} {
			l.vic.MustRun(t, "sh", "-c", fmt.Sprintf("%s -t raw | grep -v %s | %s", be.flavour.tool(v6, "save"),
				IPTablesChain, be.flavour.tool(v6, "restore")))
		}
		l.vic.MustRun(t, "ipset", "destroy", IPSetPrefix+"net6")
		if r, err := l.eng.Reconcile(ctx); err != nil || !r.Rebuilt || r.Problem != "ipset ctguard-net6 is missing" {
			t.Fatalf("reconcile after a destroyed set: %+v %v", r, err)
		}
		if c := l.dial("2001:db8::3", 8080, 1); len(c) != 0 {
			t.Fatal("v6 ban not restored")
		}
		if out := l.iptables(false, "-t", "raw", "-S", "PREROUTING"); !strings.Contains(out, "--notrack") {
			t.Fatalf("the host's raw rule is gone:\n%s", out)
		}

		// 3. An ACCEPT inserted before the jump ends raw PREROUTING: the
		// ban is bypassed until the check moves the jump back in front.
		l.iptables(false, "-t", "raw", "-I", "PREROUTING", "1", "-s", "192.0.2.0/24", "-j", "ACCEPT")
		if c := l.dialTimeout("192.0.2.3", 8080, 1, 2*time.Second); len(c) != 1 {
			t.Fatal("an ACCEPT before the jump did not bypass the ban: the test proves nothing")
		}
		r, err = l.eng.Reconcile(ctx)
		if err != nil || !r.Rebuilt || !strings.Contains(r.Problem, "accepts before the jump") {
			t.Fatalf("reconcile after an early ACCEPT: %+v %v", r, err)
		}
		if c := l.dial("192.0.2.3", 8080, 2); len(c) != 0 {
			t.Fatal("ban not effective after the jump moved back to the front")
		}
		out := l.iptables(false, "-t", "raw", "-S", "PREROUTING")
		if !strings.Contains(out, "-A PREROUTING -m comment --comment ctguard -j CTGUARD\n-A PREROUTING -s 192.0.2.0/24 -j ACCEPT") {
			t.Fatalf("raw PREROUTING after the rebuild:\n%s", out)
		}

		// 4. Healthy again: a fresh engine on the same store (a new CLI
		// process) checks against the stored identity and keeps the sets;
		// a set swapped with another, or sets recreated by another Setup,
		// have a new identity.
		e2 := New(Config{Store: l.st, Firewall: l.fw, Purger: l.ct, Allow: l.eng.allowC})
		if r, err := e2.Reconcile(ctx); err != nil || r.Rebuilt {
			t.Fatalf("fresh engine rebuilt healthy sets: %+v %v", r, err)
		}
		l.vic.MustRun(t, "ipset", "create", "other", "hash:ip", "timeout", "60")
		l.vic.MustRun(t, "ipset", "swap", "other", IPSetPrefix+"ban4")
		if r, err := e2.Reconcile(ctx); err != nil || !r.Rebuilt || !strings.Contains(r.Problem, "were replaced") {
			t.Fatalf("reconcile after a swap from outside: %+v %v", r, err)
		}
		if c := l.dial("192.0.2.3", 8080, 1); len(c) != 0 {
			t.Fatal("ban not restored after the swap")
		}
		other := NewIPSet(nil, IPSetOptions{NetNSFd: l.ips.netns, IPTables: be.flavour})
		if _, err := other.Setup(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if r, err := e2.Reconcile(ctx); err != nil || !r.Rebuilt || !strings.Contains(r.Problem, "were replaced") {
			t.Fatalf("reconcile after another setup: %+v %v", r, err)
		}
	})
}

// Another tool's set or chain of ctguard's name is refused and named,
// never destroyed or changed; an empty chain of the name is taken over.
func TestRootIPSetForeignObjectsAreNotDestroyed(t *testing.T) {
	forEachIPSetLab(t, func(t *testing.T, be labBackend) {
		l := newLabOn(t, be)
		ctx := context.Background()
		if out := l.iptables(false, "-t", "raw", "-S", IPTablesChain); !strings.Contains(out, `--comment "`+OwnerMark+" id=") {
			t.Fatalf("no ownership mark in ctguard's chain:\n%s", out)
		}
		if err := l.ips.Remove(ctx); err != nil {
			t.Fatal(err)
		}
		if out := l.vic.MustRun(t, "ipset", "list", "-n"); strings.Contains(out, IPSetPrefix) {
			t.Fatalf("Remove left sets:\n%s", out)
		}
		snapshot := func() string {
			out := l.vic.MustRun(t, "ipset", "save") + l.vic.MustRun(t, be.flavour.tool(false, "save")) +
				l.vic.MustRun(t, be.flavour.tool(true, "save"))
			var keep []string
			for _, line := range strings.Split(out, "\n") {
				if !strings.HasPrefix(line, "#") { // "# Generated by ... on TIME"
					keep = append(keep, policyCounters.ReplaceAllString(line, ""))
				}
			}
			return strings.Join(keep, "\n")
		}

		// A set of the name without timeouts, used by the host's own rule.
		l.vic.MustRun(t, "ipset", "create", IPSetPrefix+"ban4", "hash:ip")
		l.vic.MustRun(t, "ipset", "add", IPSetPrefix+"ban4", "203.0.113.9")
		l.iptables(false, "-A", "INPUT", "-m", "set", "--match-set", IPSetPrefix+"ban4", "src", "-j", "ACCEPT")
		before := snapshot()
		e2 := New(Config{Store: l.st, Firewall: l.fw, Purger: l.ct, Allow: l.eng.allowC})
		_, err := e2.Start(ctx)
		if !errors.Is(err, ErrForeignIPSet) || !errors.Is(err, ErrForeignTable) || !strings.Contains(err.Error(), "ctguard-ban4 has no timeout support") {
			t.Fatalf("start over a foreign set: %v", err)
		}
		if err := l.ips.Remove(ctx); !errors.Is(err, ErrForeignIPSet) {
			t.Fatalf("remove over a foreign set: %v", err)
		}
		if after := snapshot(); after != before {
			t.Fatalf("the foreign set changed:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		l.iptables(false, "-D", "INPUT", "-m", "set", "--match-set", IPSetPrefix+"ban4", "src", "-j", "ACCEPT")
		l.vic.MustRun(t, "ipset", "destroy", IPSetPrefix+"ban4")

		// A set of another type, and a chain CTGUARD of another tool.
		l.vic.MustRun(t, "ipset", "create", IPSetPrefix+"net6", "hash:ip", "family", "inet6", "timeout", "60")
		l.iptables(true, "-t", "raw", "-N", IPTablesChain)
		l.iptables(true, "-t", "raw", "-A", IPTablesChain, "-s", "2001:db8::/64", "-j", "ACCEPT")
		before = snapshot()
		_, err = e2.Start(ctx)
		for _, want := range []string{"ipset ctguard-net6 is hash:ip inet6, want hash:net inet6",
			"ip6tables chain raw CTGUARD holds 1 rules without ctguard's mark"} {
			if !errors.Is(err, ErrForeignIPSet) || !strings.Contains(err.Error(), want) {
				t.Fatalf("start over foreign objects: %v, want %q", err, want)
			}
		}
		if after := snapshot(); after != before {
			t.Fatalf("the foreign objects changed:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		l.vic.MustRun(t, "ipset", "destroy", IPSetPrefix+"net6")

		// An empty chain of the name (left by a reload) is taken over.
		l.iptables(true, "-t", "raw", "-F", IPTablesChain)
		if _, err := e2.Start(ctx); err != nil {
			t.Fatalf("start over an empty chain: %v", err)
		}
		if p, err := l.fw.Check(ctx, 0); p != "" || err != nil {
			t.Fatalf("after the take-over: %q %v", p, err)
		}
	})
}

// Deleting expired elements together with live ones is not an error, and
// a re-ban refreshes the timeout.
func TestRootIPSetUnbanOfExpiredAndRefresh(t *testing.T) {
	forEachIPSetLab(t, func(t *testing.T, be labBackend) {
		l := newLabOn(t, be)
		ctx := context.Background()
		short := []Element{{Prefix: pfx("198.51.100.1"), TTL: time.Second}, {Prefix: pfx("198.51.100.64/26"), TTL: time.Second},
			{Prefix: pfx("2001:db8:9::/48"), TTL: time.Second, Scoped: true}}
		long := []Element{{Prefix: pfx("198.51.100.2"), TTL: time.Hour}, {Prefix: pfx("2001:db8:8::/48"), TTL: time.Hour, Scoped: true}}
		if err := l.fw.Apply(ctx, Change{Add: append(short, long...)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond)
		if es := l.elements(); len(es) != 2 {
			t.Fatalf("after the short ones expired: %v", es)
		}
		var dels []Element
		for _, e := range append(short, long...) {
			dels = append(dels, Element{Prefix: e.Prefix, Scoped: e.Scoped})
		}
		if err := l.fw.Apply(ctx, Change{Delete: dels, Add: []Element{{Prefix: pfx("198.51.100.3"), TTL: time.Hour}}}); err != nil {
			t.Fatalf("delete of expired elements: %v", err)
		}
		if es := l.elements(); len(es) != 1 || !hasElem(es, "198.51.100.3") {
			t.Fatalf("after delete+add: %v", es)
		}
		// Re-ban refreshes the timeout, with or without the delete.
		for _, ch := range []Change{
			{Add: []Element{{Prefix: pfx("198.51.100.9"), TTL: 5 * time.Second}}},
			{Delete: []Element{{Prefix: pfx("198.51.100.9")}}, Add: []Element{{Prefix: pfx("198.51.100.9"), TTL: 2 * time.Hour}}},
			{Add: []Element{{Prefix: pfx("198.51.100.9"), TTL: 3 * time.Hour}}},
		} {
			if err := l.fw.Apply(ctx, ch); err != nil {
				t.Fatal(err)
			}
			want := ch.Add[0].TTL
			if e := l.elements()[pfx("198.51.100.9")]; e.TTL > want || e.TTL < want-5*time.Second {
				t.Fatalf("timeout after %+v: %v", ch, e.TTL)
			}
		}
		// A change to a set that is gone fails (the engine then rebuilds).
		for _, v6 := range []bool{false, true} {
			l.iptables(v6, "-t", "raw", "-F", IPTablesChain)
		}
		l.vic.MustRun(t, "ipset", "destroy", IPSetPrefix+"ban4")
		err := l.fw.Apply(ctx, Change{Add: []Element{{Prefix: pfx("198.51.100.10"), TTL: time.Hour}}})
		if err == nil || !strings.Contains(err.Error(), "ctguard-ban4") {
			t.Fatalf("apply to a destroyed set: %v", err)
		}
	})
}

// ipset keeps an element at most 24 days 20 h: a longer ban is cut to that
// in the kernel, and the check asks for the rebuild that renews it an hour
// before the kernel would drop it.
func TestRootIPSetLongBanRenewal(t *testing.T) {
	l := newLabOn(t, labIPSetLegacy)
	ctx := context.Background()
	r := l.ban("198.51.100.7", MaxTTL)
	if e := l.elements()[pfx("198.51.100.7")]; e.TTL < (ipsetMaxTimeout-5)*time.Second || e.TTL > ipsetMaxTimeout*time.Second {
		t.Fatalf("kernel timeout of a 30-day ban: %v", e.TTL)
	}
	if res, err := l.eng.Reconcile(ctx); err != nil || res.Rebuilt {
		t.Fatalf("renewed too early: %+v %v", res, err)
	}
	// 24 days 19 h 40 min later (the engine's clock too: the rebuild
	// re-adds the ban with what is left of its 30 days).
	later := time.Now().Add(ipsetMaxTimeout*time.Second - 50*time.Minute)
	l.ips.now = func() time.Time { return later }
	l.now = func() time.Time { return later }
	res, err := l.eng.Reconcile(ctx)
	if err != nil || !res.Rebuilt || res.Restored != 1 || !strings.Contains(res.Problem, "1 bans are longer than ipset's maximum timeout") {
		t.Fatalf("reconcile before the kernel drops the ban: %+v %v", res, err)
	}
	left := r.Ban.Expires.Sub(later)
	if e := l.elements()[pfx("198.51.100.7")]; e.TTL < left-5*time.Second || e.TTL > left+time.Second {
		t.Fatalf("renewed with %v, want what is left: %v", e.TTL, left)
	}
	if res, err := l.eng.Reconcile(ctx); err != nil || res.Rebuilt {
		t.Fatalf("renewed twice: %+v %v", res, err)
	}
}

// 100,000 bans go into the sets in one pipelined batch of netlink messages.
func TestRootIPSet100kBansBatched(t *testing.T) {
	forEachIPSetLab(t, func(t *testing.T, be labBackend) {
		l := newLabOn(t, be)
		l.listen(8080)
		ctx := context.Background()
		elems := make([]Element, 0, 100_001)
		a := netip.MustParseAddr("198.18.0.0")
		for range 90_000 {
			elems = append(elems, Element{Prefix: netip.PrefixFrom(a, 32), TTL: time.Hour})
			a = a.Next()
		}
		for i := range 10_000 {
			elems = append(elems, Element{Prefix: netip.MustParsePrefix(fmt.Sprintf("2001:db8:3:%x::/64", i)), TTL: time.Hour})
		}
		// The lab's attacker address last, so a truncated batch shows.
		elems = append(elems, Element{Prefix: pfx("192.0.2.3"), TTL: time.Hour})
		start := time.Now()
		if err := l.fw.Apply(ctx, Change{Add: elems}); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		t.Logf("Apply of 100,001 bans (90,001 IPv4 addresses, 10,000 IPv6 /64): %v", took.Round(time.Millisecond))
		if n := len(l.elements()); n != len(elems) {
			t.Fatalf("the sets hold %d of %d", n, len(elems))
		}
		if c := l.dial("192.0.2.3", 8080, 2); len(c) != 0 {
			t.Fatal("the last element of the batch does not drop")
		}
		l.requireTracking("192.0.2.2", 8080)
		start = time.Now()
		if _, err := l.fw.Setup(ctx, elems); err != nil {
			t.Fatal(err)
		}
		t.Logf("Setup with the same 100,001 bans (temporary sets, swap, chains): %v", time.Since(start).Round(time.Millisecond))
		if took > 5*time.Second {
			t.Errorf("Apply of 100,001 bans took %v: not batched?", took)
		}
	})
}
