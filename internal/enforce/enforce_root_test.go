package enforce

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/testutil"
)

func TestRootBanDropsBeforeConntrackAndPurges(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be labBackend) {
		l := newLabOn(t, be)
		l.listen(8080)
		l.requireTracking("192.0.2.2", 8080)

		// An existing flow from the source to be banned.
		held := l.dial("192.0.2.3", 8080, 2)
		if len(held) != 2 || l.count("192.0.2.3") < 2 {
			t.Fatalf("setup: %d conns, %d entries from 192.0.2.3", len(held), l.count("192.0.2.3"))
		}
		before := l.counters().Ban4.Packets

		r := l.ban("192.0.2.3", time.Hour)
		if r.Ban.Purged < 2 || r.Ban.Remaining != 0 || r.Ban.PurgeErr != "" {
			t.Fatalf("ban outcome: purged %d remaining %d err %q", r.Ban.Purged, r.Ban.Remaining, r.Ban.PurgeErr)
		}
		if n := l.count("192.0.2.3"); n != 0 {
			t.Fatalf("existing flow's entries survived the purge: %d", n)
		}
		// The held connections keep sending: they must not recreate entries.
		for _, c := range held {
			c.Write([]byte("still here"))
		}
		if c := l.dial("192.0.2.3", 8080, 5); len(c) != 0 {
			t.Fatalf("banned source connected %d times", len(c))
		}
		if n := l.count("192.0.2.3"); n != 0 {
			t.Fatalf("banned source created %d entries", n)
		}
		if d := l.counters().Ban4.Packets - before; d < 5 {
			t.Fatalf("drop counter rose by %d, want >= 5 (one SYN per attempt at least)", d)
		}
		// Others are untouched.
		l.requireTracking("192.0.2.2", 8080)

		// An accept elsewhere, even earlier in prerouting (firewalld-style
		// "ct state established accept" or a blanket accept), ends only its own
		// base chain: the ban still drops.
		l.vic.Script(t, `nft add table inet other
nft add chain inet other pre '{ type filter hook prerouting priority -350; }'
nft add rule inet other pre accept`)
		if c := l.dial("192.0.2.3", 8080, 2); len(c) != 0 || l.count("192.0.2.3") != 0 {
			t.Fatal("an earlier accept in another table bypassed the ban")
		}

		// Unban: the source gets through again.
		if _, err := l.eng.Unban(context.Background(), pfx("192.0.2.3")); err != nil {
			t.Fatal(err)
		}
		l.requireTracking("192.0.2.3", 8080)
	})
}

func TestRootPrefixBan(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be labBackend) {
		l := newLabOn(t, be)
		l.listen(8080)
		l.requireTracking("192.0.2.66", 8080)
		r := l.ban("192.0.2.64/26", time.Hour)
		if r.Ban.Purged < 3 || r.Ban.Remaining != 0 {
			t.Fatalf("prefix purge: %+v", r.Ban)
		}
		if c := l.dial("192.0.2.66", 8080, 3); len(c) != 0 || l.count("192.0.2.66") != 0 {
			t.Fatalf("member of banned prefix: %d conns, %d entries", len(c), l.count("192.0.2.66"))
		}
		if l.counters().Net4.Packets < 3 {
			t.Fatalf("net4 counter %d", l.counters().Net4.Packets)
		}
		l.requireTracking("192.0.2.2", 8080) // outside the prefix
		l.requireTracking("192.0.2.130", 8080)

		// Nested prefixes: an inner one is covered, an outer one replaces.
		in := l.ban("192.0.2.64/28", time.Hour)
		if in.CoveredBy != pfx("192.0.2.64/26") {
			t.Fatalf("inner prefix: %+v", in)
		}
		// 192.0.2.0/25 would cover the victim's own address: refused.
		if _, err := l.eng.Ban(context.Background(), BanRequest{Prefix: pfx("192.0.2.0/25"), TTL: time.Hour}); !errors.Is(err, allow.ErrAllowlisted) {
			t.Fatalf("ban covering the local address: %v", err)
		}
		l.ban("192.0.2.128/27", time.Hour)
		out := l.ban("192.0.2.128/25", 2*time.Hour)
		if len(out.Replaced) != 1 || out.Replaced[0] != pfx("192.0.2.128/27") {
			t.Fatalf("outer prefix did not replace the inner: %+v", out)
		}
		if c := l.dial("192.0.2.130", 8080, 2); len(c) != 0 {
			t.Fatal("member of the replacing prefix got through")
		}
		if es := l.elements(); !hasElem(es, "192.0.2.128/25") || hasElem(es, "192.0.2.128/27") {
			t.Fatalf("prefix sets after the replacement:\n%s", l.listing())
		}
		if b, _ := l.st.GetBan(pfx("192.0.2.128/27")); b.Active(time.Now()) || !strings.Contains(b.EndReason, "replaced by 192.0.2.128/25") {
			t.Fatalf("inner record: %+v", b)
		}
	})
}

func TestRootIPv6(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be labBackend) {
		l := newLabOn(t, be)
		l.listen(8080)
		l.requireTracking("2001:db8::2", 8080)
		held3 := l.dial("2001:db8::3", 8080, 2)
		held4 := l.dial("2001:db8::4", 8080, 3)
		if len(held3) != 2 || len(held4) != 3 {
			t.Fatal("setup connections failed")
		}
		r := l.ban("2001:db8::3", time.Hour)
		if r.Ban.Purged != 2 || r.Ban.Remaining != 0 {
			t.Fatalf("v6 purge: %+v", r.Ban)
		}
		if n := l.count("2001:db8::3"); n != 0 {
			t.Fatalf("banned v6 source kept %d entries", n)
		}
		// The kernel's IPv6 filter is inverted: a regression would wipe these.
		if n := l.count("2001:db8::4"); n < 3 {
			t.Fatalf("other v6 source lost entries: %d left", n)
		}
		if n := l.count("2001:db8::2"); n < 3 {
			t.Fatalf("unbanned v6 source lost entries: %d left", n)
		}
		if c := l.dial("2001:db8::3", 8080, 3); len(c) != 0 || l.count("2001:db8::3") != 0 {
			t.Fatal("banned v6 source got through")
		}
		if l.counters().Ban6.Packets < 3 {
			t.Fatalf("ban6 counter %d", l.counters().Ban6.Packets)
		}
		// v6 prefix: catches ::8000:5, spares ::2.
		l.ban("2001:db8::8000:0/112", time.Hour)
		if c := l.dial("2001:db8::8000:5", 8080, 3); len(c) != 0 || l.count("2001:db8::8000:5") != 0 {
			t.Fatal("member of banned v6 prefix got through")
		}
		if l.counters().Net6.Packets < 3 {
			t.Fatalf("net6 counter %d", l.counters().Net6.Packets)
		}
		l.requireTracking("2001:db8::2", 8080)
	})
}

func TestRootTTLExpiry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be labBackend) {
		l := newLabOn(t, be)
		l.listen(8080)
		l.requireTracking("192.0.2.3", 8080)
		l.ban("192.0.2.3", 2*time.Second)
		l.ban("192.0.2.64/26", 2*time.Second)
		l.ban("2001:db8::3", 2*time.Second)
		for _, src := range []string{"192.0.2.3", "192.0.2.66", "2001:db8::3"} {
			if c := l.dial(src, 8080, 1); len(c) != 0 {
				t.Fatalf("%s got through during its ban", src)
			}
		}
		time.Sleep(2500 * time.Millisecond)
		for _, src := range []string{"192.0.2.3", "192.0.2.66", "2001:db8::3"} {
			l.requireTracking(src, 8080)
		}
		if act, _ := l.eng.List(false); len(act) != 0 {
			t.Fatalf("store still lists %d active bans", len(act))
		}
	})
}

func TestRootReconcileAfterFlushRuleset(t *testing.T) {
	l := newLab(t)
	l.listen(8080)
	l.ban("192.0.2.3", time.Hour)
	l.ban("192.0.2.4", 2*time.Second) // will have expired
	l.ban("192.0.2.64/26", time.Hour)
	l.ban("2001:db8::3", time.Hour)
	l.ban("2001:db8::8000:0/112", 2*time.Second) // will have expired
	ctx := context.Background()
	if r, err := l.eng.Reconcile(ctx); err != nil || r.Rebuilt {
		t.Fatalf("healthy table rebuilt: %+v %v", r, err)
	}
	time.Sleep(2200 * time.Millisecond)

	l.vic.MustRun(t, "nft", "flush", "ruleset")
	l.loadStateful()
	l.requireTracking("192.0.2.3", 8080) // the ban is really gone

	// Someone else's tables, before ctguard rebuilds its own.
	l.vic.Script(t, `nft add table ip other
nft add chain ip other c '{ type filter hook prerouting priority -400; }'
nft add rule ip other c ip saddr 203.0.113.0/24 counter accept`)
	others := func() string {
		return l.vic.MustRun(t, "nft", "list", "table", "inet", "t") + l.vic.MustRun(t, "nft", "list", "table", "ip", "other")
	}
	before := others()
	r, err := l.eng.Reconcile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Rebuilt || r.Restored != 3 || !strings.Contains(r.Problem, "missing") {
		t.Fatalf("reconcile: %+v", r)
	}
	if after := others(); after != before {
		t.Fatalf("reconcile touched other tables:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	for _, src := range []string{"192.0.2.3", "192.0.2.66", "2001:db8::3"} {
		if c := l.dial(src, 8080, 2); len(c) != 0 {
			t.Fatalf("%s not banned again after reconcile", src)
		}
	}
	for _, src := range []string{"192.0.2.4", "2001:db8::8000:5"} {
		l.requireTracking(src, 8080) // expired: not re-applied
	}

	// A table deleted and recreated from outside (a ruleset reload) has a
	// new handle; a rule removed from the chain changes the rule count.
	l.vic.Script(t, "nft delete table inet ctguard; nft add table inet ctguard")
	if r, err := l.eng.Reconcile(ctx); err != nil || !r.Rebuilt || r.Restored != 3 {
		t.Fatalf("reconcile after replace: %+v %v", r, err)
	}
	h := l.vic.MustRun(t, "sh", "-c", "nft -a list chain inet ctguard prerouting | awk '/@ban6 / {print $NF}'")
	l.vic.MustRun(t, "nft", "delete", "rule", "inet", "ctguard", "prerouting", "handle", strings.TrimSpace(h))
	if r, err := l.eng.Reconcile(ctx); err != nil || !r.Rebuilt || !strings.Contains(r.Problem, "8 rules") {
		t.Fatalf("reconcile after rule delete: %+v %v", r, err)
	}
	if c := l.dial("2001:db8::3", 8080, 1); len(c) != 0 {
		t.Fatal("v6 ban not restored")
	}
	// A drop policy on ctguard's chain would cut the host off: healed.
	l.vic.MustRun(t, "nft", "add chain inet ctguard prerouting { type filter hook prerouting priority -300; policy drop; }")
	if r, err := l.eng.Reconcile(ctx); err != nil || !r.Rebuilt || !strings.Contains(r.Problem, "policy drop") {
		t.Fatalf("reconcile after the policy flip: %+v %v", r, err)
	}
	if out := l.vic.MustRun(t, "nft", "list", "chain", "inet", "ctguard", "prerouting"); strings.Contains(out, "policy drop") {
		t.Fatalf("policy drop survived the rebuild:\n%s", out)
	}
	// A fresh engine on the same store (a new CLI process) checks against
	// the stored handle too.
	e2 := New(Config{Store: l.st, Firewall: l.fw, Purger: l.ct, Allow: l.eng.allowC})
	if r, err := e2.Reconcile(ctx); err != nil || r.Rebuilt {
		t.Fatalf("fresh engine rebuilt a healthy table: %+v %v", r, err)
	}
}

// TestRootSSHPeerBanKeepsSession: a source that holds an SSH session is not
// exempt from bans (anyone can connect to :22 without logging in), but its
// ban and the purge leave the SSH port alone, so the operator's session
// survives a ban of its own address or prefix.
func TestRootSSHPeerBanKeepsSession(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be labBackend) {
		l := newLabOn(t, be, 2222)
		l.listen(8080)
		var ln net.Listener
		l.vic.Do(t, func() {
			var err error
			if ln, err = net.Listen("tcp", net.JoinHostPort(vic4, "2222")); err != nil {
				t.Fatal(err)
			}
		})
		t.Cleanup(func() { ln.Close() })
		go func() { // stands in for sshd: echoes
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); io.Copy(c, c) }()
			}
		}()
		roundTrip := func(c net.Conn, msg string) error {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Write([]byte(msg)); err != nil {
				return err
			}
			buf := make([]byte, len(msg))
			if _, err := io.ReadFull(c, buf); err != nil {
				return err
			}
			if string(buf) != msg {
				return fmt.Errorf("echo %q, want %q", buf, msg)
			}
			return nil
		}
		ssh := l.dial("192.0.2.5", 2222, 1)
		web := l.dial("192.0.2.5", 8080, 3)
		if len(ssh) != 1 || len(web) != 3 || roundTrip(ssh[0], "hello") != nil {
			t.Fatal("setup: session or web connections not established")
		}
		before := l.counters().Scoped.Ban4.Packets

		r := l.ban("192.0.2.5", time.Hour)
		if !r.Scoped || r.Session.Source != allow.SSH || !r.Ban.Scoped || r.Ban.Purged < 3 || r.Ban.Remaining != 0 {
			t.Fatalf("ban of a session's peer: scoped %v session %v, %+v", r.Scoped, r.Session, r.Ban)
		}
		if n := l.count("192.0.2.5"); n != 1 {
			t.Fatalf("%d entries left from 192.0.2.5, want the SSH session's one", n)
		}
		if err := roundTrip(ssh[0], "after the ban"); err != nil {
			t.Fatalf("the session died with the ban: %v", err)
		}
		if c := l.dial("192.0.2.5", 8080, 3); len(c) != 0 {
			t.Fatalf("scoped-banned source reached :8080 %d times", len(c))
		}
		if d := l.counters().Scoped.Ban4.Packets - before; d < 3 {
			t.Fatalf("scoped drop counter rose by %d", d)
		}
		if c := l.dialTimeout("192.0.2.5", 2222, 1, 2*time.Second); len(c) != 1 {
			t.Fatal("scoped ban dropped a new connection to the SSH port")
		}
		// A prefix over the session is scoped too; the ordinary source inside
		// it loses everything but SSH.
		l.dial("192.0.2.4", 8080, 2)
		r = l.ban("192.0.2.4/30", time.Hour)
		if !r.Scoped || r.Ban.Purged < 2 || l.count("192.0.2.4") != 0 {
			t.Fatalf("prefix over a session: %+v, %d entries left from .4", r, l.count("192.0.2.4"))
		}
		if err := roundTrip(ssh[0], "after the prefix ban"); err != nil {
			t.Fatalf("the session died with the prefix ban: %v", err)
		}
		if c := l.dial("192.0.2.4", 8080, 2); len(c) != 0 {
			t.Fatal("member of a scoped prefix ban reached :8080")
		}
		es := l.elements()
		if e := es[pfx("192.0.2.5")]; !e.Scoped || e.TTL < 59*time.Minute {
			t.Fatalf("scoped address read back as %+v", e)
		}
		if e := es[pfx("192.0.2.4/30")]; !e.Scoped {
			t.Fatalf("scoped prefix read back as %+v", e)
		}
		out := l.listing()
		wants := []string{"set ban4_but_ssh", "192.0.2.5", "set net4_but_ssh", "192.0.2.4/30", "set ssh_ports", "2222"}
		if be.backend == BackendIPSet {
			wants = []string{"Name: ctguard-ban4-but-ssh", "192.0.2.5", "Name: ctguard-net4-but-ssh", "192.0.2.4/30", "--dports 2222"}
		}
		for _, want := range wants {
			if !strings.Contains(out, want) {
				t.Fatalf("the listing lacks %q:\n%s", want, out)
			}
		}
		// Unban lifts it from the scoped set; the own address stays refused.
		if _, err := l.eng.Unban(context.Background(), pfx("192.0.2.4/30")); err != nil {
			t.Fatal(err)
		}
		if _, err := l.eng.Ban(context.Background(), BanRequest{Prefix: pfx(vic4), TTL: time.Hour}); !errors.Is(err, allow.ErrAllowlisted) {
			t.Fatalf("ban of own address: %v", err)
		}
		// A source without a session gets a full ban, SSH port included.
		r = l.ban("192.0.2.2", time.Hour)
		if r.Scoped {
			t.Fatal("ordinary source got a scoped ban")
		}
		if c := l.dial("192.0.2.2", 2222, 2); len(c) != 0 {
			t.Fatal("fully banned source reached the SSH port")
		}
	})
}

func TestRoot10kIPv6BansInOneChange(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be labBackend) {
		l := newLabOn(t, be)
		l.listen(8080)
		ctx := context.Background()
		var elems []Element
		for i := range 10000 {
			a := netip.MustParseAddr(fmt.Sprintf("2001:db8:1::%x:%x", i>>16, i&0xffff))
			elems = append(elems, Element{Prefix: netip.PrefixFrom(a, 128), TTL: time.Hour})
		}
		// The lab's attacker address is the last one, so a truncated batch shows.
		elems = append(elems, Element{Prefix: pfx("2001:db8::4"), TTL: time.Hour})
		// Also 1,000 v6 prefixes (start + end elements each).
		for i := range 1000 {
			p := netip.MustParsePrefix(fmt.Sprintf("2001:db8:2:%x::/64", i))
			elems = append(elems, Element{Prefix: p, TTL: time.Hour})
		}
		if err := l.fw.Apply(ctx, Change{Add: elems}); err != nil {
			t.Fatalf("apply 11,001 v6 elements: %v", err)
		}
		var addrs, nets int
		for p := range l.elements() {
			switch {
			case p.Bits() == 128 && strings.HasPrefix(p.String(), "2001:db8:1::"):
				addrs++
			case p.Bits() == 64:
				nets++
			}
		}
		if addrs != 10000 || nets != 1000 {
			t.Fatalf("the sets hold %d of 10000 addresses and %d of 1000 prefixes", addrs, nets)
		}
		if c := l.dial("2001:db8::4", 8080, 2); len(c) != 0 {
			t.Fatal("last element of the batch does not drop")
		}
		l.requireTracking("2001:db8::2", 8080)
		// Re-ban of all of them: delete+add of 11,001 in one batch.
		if err := l.fw.Apply(ctx, Change{Delete: elems, Add: elems}); err != nil {
			t.Fatalf("refresh: %v", err)
		}
	})
}

func TestRootUnbanOfExpiredElement(t *testing.T) {
	l := newLab(t)
	ctx := context.Background()
	// In the kernel with a 1 s timeout, then gone.
	short := []Element{{Prefix: pfx("198.51.100.1"), TTL: time.Second}, {Prefix: pfx("198.51.100.64/26"), TTL: time.Second}}
	long := []Element{{Prefix: pfx("198.51.100.2"), TTL: time.Hour}}
	if err := l.fw.Apply(ctx, Change{Add: append(short, long...)}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	// Deleting expired elements together with a live one: not an error, and
	// the live one is really deleted. The log shows that the kernel did
	// refuse the batch and the splitting path ran.
	var logs bytes.Buffer
	l.nft.log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	err := l.fw.Apply(ctx, Change{Delete: []Element{{Prefix: pfx("198.51.100.1")}, {Prefix: pfx("198.51.100.64/26")}, {Prefix: pfx("198.51.100.2")}},
		Add: []Element{{Prefix: pfx("198.51.100.3"), TTL: time.Hour}}})
	if err != nil {
		t.Fatalf("delete of expired elements: %v", err)
	}
	if !strings.Contains(logs.String(), "total=3 already_expired=2") {
		t.Fatalf("fallback path not taken as expected; log:\n%s", logs.String())
	}

	// Many live elements around a few expired ones: still correct, and the
	// live ones are all gone.
	var live, dead []Element
	for i := range 2000 {
		live = append(live, Element{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32), TTL: time.Hour})
	}
	for i := range 3 {
		dead = append(dead, Element{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, 0, byte(i)}), 32), TTL: time.Second})
	}
	if err := l.fw.Apply(ctx, Change{Add: append(live, dead...)}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1200 * time.Millisecond)
	var all []Element
	for i, e := range live {
		all = append(all, e)
		if i%700 == 0 {
			all = append(all, dead[i/700])
		}
	}
	logs.Reset()
	if err := l.fw.Apply(ctx, Change{Delete: all}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "total=2003 already_expired=3") {
		t.Fatalf("log:\n%s", logs.String())
	}
	if out := l.vic.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4"); strings.Contains(out, "198.18.") {
		t.Fatalf("live elements survived:\n%s", out)
	}
	out := l.vic.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4")
	if strings.Contains(out, "198.51.100.2") || !strings.Contains(out, "198.51.100.3") {
		t.Fatalf("after delete+add:\n%s", out)
	}
	// Re-ban refreshes the timeout.
	if err := l.fw.Apply(ctx, Change{Add: []Element{{Prefix: pfx("198.51.100.9"), TTL: 5 * time.Second}}}); err != nil {
		t.Fatal(err)
	}
	if err := l.fw.Apply(ctx, Change{Delete: []Element{{Prefix: pfx("198.51.100.9")}}, Add: []Element{{Prefix: pfx("198.51.100.9"), TTL: 2 * time.Hour}}}); err != nil {
		t.Fatal(err)
	}
	out = l.vic.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4")
	if !strings.Contains(out, "198.51.100.9 timeout 2h expires 1h59m") {
		t.Fatalf("timeout not refreshed:\n%s", out)
	}
}

// TestRootRebanAfterKernelExpiry: an interval element the kernel expired
// (but may not have garbage-collected yet) must not block a new ban of the
// same prefix or of one that overlaps it.
func TestRootRebanAfterKernelExpiry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be labBackend) {
		l := newLabOn(t, be)
		l.listen(8080)
		l.ban("192.0.2.64/26", time.Second)
		l.ban("2001:db8::8000:0/112", time.Second)
		l.ban("192.0.2.3", time.Second)
		time.Sleep(1200 * time.Millisecond)
		l.ban("192.0.2.64/26", time.Hour)        // same prefix
		l.ban("192.0.2.3", time.Hour)            // same address
		l.ban("2001:db8::8000:0/104", time.Hour) // encloses the expired one
		for _, src := range []string{"192.0.2.66", "192.0.2.3", "2001:db8::8000:5"} {
			if c := l.dial(src, 8080, 1); len(c) != 0 {
				t.Fatalf("%s got through the new ban", src)
			}
		}
	})
}

// TestRootBanCoversForwardedTraffic: a port the host DNATs to a backend
// namespace (a Docker-published port) goes through forward, not input;
// the prerouting ban still drops it before conntrack.
func TestRootBanCoversForwardedTraffic(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be labBackend) {
		l := newLabOn(t, be)
		back := testutil.NewNS(t)
		testutil.Veth(t, l.vic, "br0", "198.51.100.1/24", back, "eth0", "198.51.100.2/24")
		back.MustRun(t, "ip", "route", "add", "default", "via", "198.51.100.1")
		l.vic.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		if be.backend == BackendIPSet { // the host's NAT is iptables too
			l.iptables(false, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9090", "-j", "DNAT", "--to-destination", "198.51.100.2:8080")
		} else {
			l.vic.Script(t, `nft add table ip nat
nft add chain ip nat pre '{ type nat hook prerouting priority dstnat; }'
nft add rule ip nat pre tcp dport 9090 dnat to 198.51.100.2:8080`)
		}
		var ln net.Listener
		back.Do(t, func() {
			var err error
			if ln, err = net.Listen("tcp", "198.51.100.2:8080"); err != nil {
				t.Fatal(err)
			}
		})
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				t.Cleanup(func() { c.Close() })
			}
		}()
		if c := l.dialTimeout("192.0.2.3", 9090, 2, 2*time.Second); len(c) != 2 || l.count("192.0.2.3") < 2 {
			t.Fatalf("forwarded path: %d conns, %d entries on the host", len(c), l.count("192.0.2.3"))
		}
		r := l.ban("192.0.2.3", time.Hour)
		if r.Ban.Purged < 2 || l.count("192.0.2.3") != 0 {
			t.Fatalf("forwarded entries not purged: %+v, %d left", r.Ban, l.count("192.0.2.3"))
		}
		before := l.counters().Ban4.Packets
		if c := l.dial("192.0.2.3", 9090, 3); len(c) != 0 || l.count("192.0.2.3") != 0 {
			t.Fatal("banned source reached the DNAT'ed backend")
		}
		if d := l.counters().Ban4.Packets - before; d < 3 {
			t.Fatalf("drop counter rose by %d", d)
		}
		if c := l.dialTimeout("192.0.2.2", 9090, 1, 2*time.Second); len(c) != 1 {
			t.Fatal("unbanned source cannot reach the backend")
		}
	})
}

// TestRootBanManyPurgesEachSource: several sources in one BanMany go
// through the one-dump PurgeSources/CountSources, and each gets its
// own count while an unbanned source keeps its entries.
func TestRootBanManyPurgesEachSource(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be labBackend) {
		l := newLabOn(t, be)
		l.listen(8080)
		held := map[string]int{"192.0.2.3": 2, "192.0.2.66": 3, "2001:db8::3": 4, "192.0.2.2": 2}
		for src, n := range held {
			if c := l.dialTimeout(src, 8080, n, 2*time.Second); len(c) != n {
				t.Fatalf("setup %s: %d of %d", src, len(c), n)
			}
		}
		rs, err := l.eng.BanMany(context.Background(), []BanRequest{
			{Prefix: pfx("192.0.2.3"), TTL: time.Hour},
			{Prefix: pfx("192.0.2.64/26"), TTL: time.Hour},
			{Prefix: pfx("2001:db8::3"), TTL: time.Hour},
		})
		if err != nil {
			t.Fatal(err)
		}
		for i, src := range []string{"192.0.2.3", "192.0.2.66", "2001:db8::3"} {
			if b := rs[i].Ban; rs[i].Err != nil || b.Purged != held[src] || b.Remaining != 0 || b.PurgeErr != "" {
				t.Errorf("%s: %+v %v, want %d purged", src, b, rs[i].Err, held[src])
			}
			if n := l.count(src); n != 0 {
				t.Errorf("%s kept %d entries", src, n)
			}
		}
		if n := l.count("192.0.2.2"); n < 2 {
			t.Errorf("unbanned source lost entries: %d left", n)
		}
	})
}

var _ BatchPurger = (*conntrack.Conn)(nil)

// hasElem reports whether the sets read back hold exactly the prefix p.
func hasElem(es map[netip.Prefix]Element, p string) bool {
	_, ok := es[pfx(p)]
	return ok
}
