package daemon

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/ctguard/ctguard/internal/config"
	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/enforce"
)

// tableDaemon is a daemon on the fakes whose purger holds the host's
// entries one by one (enforce.FakeTable), so the valve can delete them.
func tableDaemon(t *testing.T, h *fakeHost, mod func(*config.Config)) (*Daemon, *enforce.Fake, *enforce.FakeTable, *bytes.Buffer) {
	t.Helper()
	c := fakeConfig(t, h, mod)
	tbl := &enforce.FakeTable{}
	tbl.Entries = map[netip.Addr]int{}
	for _, l := range h.lines {
		f := map[string]string{}
		for _, kv := range strings.Fields(l) {
			if k, v, ok := strings.Cut(kv, "="); ok {
				if _, dup := f[k]; !dup { // the original direction comes first
					f[k] = v
				}
			}
		}
		src := netip.MustParseAddr(f["src"])
		sport, _ := strconv.Atoi(f["sport"])
		tbl.Entries[src]++
		tbl.Table = append(tbl.Table, conntrack.Entry{Proto: conntrack.ProtoTCP, TCPState: conntrack.TCPEstablished, Timeout: 431000,
			Status: conntrack.StatusAssured | conntrack.StatusSeenReply,
			Orig:   conntrack.Tuple{Src: src, Dst: netip.MustParseAddr("192.0.2.10"), SrcPort: uint16(sport), DstPort: 443}})
	}
	fw := enforce.NewFake(nil)
	log := new(bytes.Buffer)
	return startFake(t, c, fw, tbl, log), fw, tbl, log
}

// The blast-radius breaker on a whole cycle: twenty silent bots in twenty
// /24s, a cap of five bans per cycle: five are banned, the trip is counted
// and logged, and the next cycle bans the next five.
func TestCycleBreaker(t *testing.T) {
	h := newFakeHost(t, 65536)
	for i := range 20 {
		h.idle(fmt.Sprintf("198.18.%d.7", i), 300)
	}
	h.write(t)
	d, fw, _, log := tableDaemon(t, h, func(c *config.Config) { c.Policy.MaxBansPerCycle, c.Policy.BreakerFloor = 5, 0 })
	d.cycle(context.Background())
	if n := len(fw.Snapshot()); n != 5 {
		t.Fatalf("%d bans after one cycle, want the cap of 5\n%s", n, log)
	}
	if d.counters.BreakerTrips != 1 || !strings.Contains(log.String(), "breaker") {
		t.Errorf("breaker trips %d; log:\n%s", d.counters.BreakerTrips, log)
	}
	d.cycle(context.Background())
	if n := len(fw.Snapshot()); n != 10 {
		t.Errorf("%d bans after two cycles, want 10", n)
	}
}

// The emergency valve on a whole cycle: a table 96 % full of idle entries
// from sources each under the ban threshold (ten entries apiece, each in
// its own /24) gets no
// ban, so the valve deletes entries down to 90 %, through the purger, and
// counts the run.
func TestCycleValve(t *testing.T) {
	h := newFakeHost(t, 1000)
	for i := range 96 {
		h.idle(fmt.Sprintf("198.18.%d.7", i), 10)
	}
	h.write(t)
	d, fw, tbl, log := tableDaemon(t, h, func(c *config.Config) { c.Policy.MinEntries = 50 })
	d.cycle(context.Background())
	if n := len(fw.Snapshot()); n != 0 {
		t.Errorf("%d bans: want none (every source is under min_entries)", n)
	}
	if d.counters.ValveRuns != 1 || d.counters.ValveDeleted != 60 {
		t.Fatalf("valve runs %d deleted %d, want 1 run deleting 60 (960 -> 900)\n%s", d.counters.ValveRuns, d.counters.ValveDeleted, log)
	}
	if n := len(tbl.Table); n != 900 {
		t.Errorf("%d entries left in the table, want 900", n)
	}
}
