package topo

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestCleanupIgnoresForeignNames(t *testing.T) {
	dir := t.TempDir()
	rec := filepath.Join(dir, "999999999-1.ns")
	// Neither name exists; the foreign one must never even be considered.
	if err := os.WriteFile(rec, []byte("ctgt-123-1\n"+NamePrefix+"999999999-1-victim\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	live := filepath.Join(dir, "1-1.ns") // pid 1 is alive: its run owns its namespaces
	if err := os.WriteFile(live, []byte(NamePrefix+"1-1-victim\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	removed, err := Cleanup(dir, false)
	if err != nil || len(removed) != 0 {
		t.Fatalf("removed %v, err %v", removed, err)
	}
	if _, err := os.Stat(rec); !os.IsNotExist(err) {
		t.Fatal("dead run's record kept")
	}
	if _, err := os.Stat(live); err != nil {
		t.Fatal("live run's record removed")
	}
	if err := deleteNS("ctgt-123-1"); err == nil {
		t.Fatal("deleteNS accepted a name without the lab prefix")
	}
}

func TestNames(t *testing.T) {
	a, b := New(t.TempDir(), nil, Options{}), New(t.TempDir(), nil, Options{Container: true})
	for _, r := range []string{Victim, Router, Attacker, Legit} {
		if a.NS[r] == b.NS[r] || len(a.NS[r]) == 0 || a.NS[r][:len(NamePrefix)] != NamePrefix {
			t.Fatalf("names %q / %q", a.NS[r], b.NS[r])
		}
	}
	if _, ok := a.NS[Container]; ok || b.NS[Container] == "" || a.ServerRole() != Victim || b.ServerRole() != Container {
		t.Fatalf("container namespace: without the option %q, with it %q", a.NS[Container], b.NS[Container])
	}
	// The container's link, victim B's and the LAPI's address are neither a
	// client range nor the prefilled forwarded entries' range, nor another
	// link.
	for _, r := range append(append([]netip.Prefix{FwdV4}, AttackRanges...), LegitRanges...) {
		if r.Contains(ContainerV4) || r.Contains(ContainerGWV4) || r.Contains(ContainerV6) || r.Contains(ContainerGWV6) {
			t.Fatalf("the container's link overlaps %s", r)
		}
		if r.Contains(VictimBV4) || r.Contains(VictimBV6) || r.Contains(LAPIV4) {
			t.Fatalf("victim B or the LAPI overlaps %s", r)
		}
	}
	links := []netip.Prefix{netip.MustParsePrefix("198.51.100.0/30"), netip.MustParsePrefix("198.51.100.4/30"),
		netip.MustParsePrefix("198.51.100.8/30"), netip.MustParsePrefix("198.51.100.16/30")}
	for _, l := range links {
		if l.Contains(VictimBV4) || l.Contains(LAPIV4) {
			t.Fatalf("victim B (%s) or the LAPI (%s) is on the link %s", VictimBV4, LAPIV4, l)
		}
	}
	f := New(t.TempDir(), nil, Options{Fleet: true})
	if f.NS[VictimB] == "" || a.NS[VictimB] != "" || f.ServerRole() != Victim {
		t.Fatalf("victim B's namespace: with the fleet option %q, without it %q", f.NS[VictimB], a.NS[VictimB])
	}
	for _, p := range AttackRanges {
		for _, l := range LegitRanges {
			if p.Overlaps(l) {
				t.Fatalf("attack range %s overlaps legit range %s", p, l)
			}
		}
	}
}
