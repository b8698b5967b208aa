package lab

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/test/e2e/topo"
	"github.com/ctguard/ctguard/test/e2e/wire"
)

// fakeFleet is a fleet run: A bans an address, then its /24 in place of
// it, then a second /24; B's set holds both /24s before the turn (pulled)
// and bans a third /24 of its own after it, when its drop counters grow.
func fakeFleet() *FleetResult {
	at := time.UnixMilli(2_000_000_000)
	turn := at.Add(10 * time.Second)
	sc, _ := Find("fleet", true)
	res := &FleetResult{Scenario: sc, Defense: Defense{Name: "ctguard-fleet", LAPI: true}, Start: at.Add(-3 * time.Second),
		AttackStart: at, Turn: turn, AttackEnd: at.Add(18 * time.Second)}
	ms := func(d time.Duration) int64 { return at.Add(d).UnixMilli() }
	var a, b []wire.Record
	for d := -2 * time.Second; d <= 20*time.Second; d += 250 * time.Millisecond {
		sa := &wire.Sample{Count: 100, Max: 1000}
		sb := &wire.Sample{Count: 50, Max: 1000}
		switch d {
		case time.Second:
			sa.Bans, sa.BansChanged = []string{"198.18.0.5"}, true
		case 1500 * time.Millisecond:
			sa.Bans, sa.BansChanged = []string{"198.18.0.0/24"}, true
		case 3 * time.Second:
			sa.Bans, sa.BansChanged = []string{"198.18.0.0/24", "198.18.1.0/24"}, true
		}
		switch d {
		case 2500 * time.Millisecond:
			sb.Bans, sb.BansChanged = []string{"198.18.0.0/24"}, true
		case 4500 * time.Millisecond:
			sb.Bans, sb.BansChanged = []string{"198.18.0.0/24", "198.18.1.0/24"}, true
		case 12 * time.Second:
			sb.Bans, sb.BansChanged = []string{"198.18.0.0/24", "198.18.1.0/24", "198.18.9.0/24"}, true
		}
		if d >= 10500*time.Millisecond && d < 20*time.Second {
			sb.DefenseDrops = 40 + int64(d/time.Second)*20
		}
		// d == 20 s: the run stopping, the table read failed (0).
		if d == 11*time.Second {
			sb.HeldSampled, sb.AttackHeld = true, 12
		}
		a = append(a, wire.Record{Kind: "sample", T: ms(d), Sample: sa})
		b = append(b, wire.Record{Kind: "sample", T: ms(d), Sample: sb})
	}
	progress := map[string]*wire.Progress{"bots": {Sent: 2000, Failed: 118000}}
	res.A = &Result{Scenario: sc, Defense: res.Defense, AttackStart: at, AttackEnd: turn, Records: Records{Samples: a, Progress: progress}}
	res.B = &Result{Scenario: sc, Defense: res.Defense, AttackStart: turn, AttackEnd: res.AttackEnd, Records: Records{Samples: b, Progress: map[string]*wire.Progress{"bots": {Sent: 12}}}}
	res.A.Summary, res.B.Summary = Summarize(res.A), Summarize(res.B)
	res.BansA = []CtguardBan{
		{Prefix: "198.18.0.5/32", First: at.Add(900 * time.Millisecond), Origin: "auto"},
		{Prefix: "198.18.0.0/24", First: at.Add(1400 * time.Millisecond), Origin: "auto"},
		{Prefix: "198.18.1.0/24", First: at.Add(2900 * time.Millisecond), Origin: "auto"},
		{Prefix: "198.18.9.0/24", First: at.Add(12500 * time.Millisecond), Origin: "crowdsec"},
	}
	res.BansB = []CtguardBan{
		{Prefix: "198.18.0.0/24", First: at.Add(2400 * time.Millisecond), Origin: "crowdsec"},
		{Prefix: "198.18.1.0/24", First: at.Add(4400 * time.Millisecond), Origin: "crowdsec"},
		{Prefix: "198.18.9.0/24", First: at.Add(11900 * time.Millisecond), Origin: "auto"},
	}
	return res
}

func TestSummarizeFleet(t *testing.T) {
	f := SummarizeFleet(fakeFleet())
	if f.AOwn != 3 || f.EnforcedB != 3 || f.BeforeTurn != 3 || f.BOwn != 1 {
		t.Errorf("A's own %d, enforced in B %d (%d before the turn), B's own %d: want 3, 3 (3), 1", f.AOwn, f.EnforcedB, f.BeforeTurn, f.BOwn)
	}
	// The address: A's set from 1.0 s, B's /24 from 2.5 s; A's first /24
	// 1.5 s to 2.5 s; the second 3.0 s to 4.5 s.
	if f.LagMax != 1500*time.Millisecond || f.LagP50 != 1500*time.Millisecond {
		t.Errorf("lag max %s, median %s: want 1.5 s, 1.5 s", f.LagMax, f.LagP50)
	}
	// The records: the address at 0.9 s, B's /24 at 2.4 s; the /24s 1.4 to
	// 2.4 s and 2.9 to 4.4 s.
	if f.PulledLagMax != 1500*time.Millisecond {
		t.Errorf("pulled lag max %s from the records, want 1.5 s", f.PulledLagMax)
	}
	if f.BFirstDrop != 500*time.Millisecond || f.BDrops != 40+19*20 {
		t.Errorf("B's first drop %s after the turn, %d drops: want 0.5 s, 420", f.BFirstDrop, f.BDrops)
	}
	if f.B.PeakAttackHeld != 12 || f.AttemptsA != 120000 || f.Planned != 120000 || !f.Linked {
		t.Errorf("B's peak attack entries %d, attempts on A %d of %d, linked %v", f.B.PeakAttackHeld, f.AttemptsA, f.Planned, f.Linked)
	}
	// 400 sources, 198.18.0.1-200 and 198.18.1.1-200, both /24s in A's sets.
	if f.Sources != 400 || f.Uncovered != 0 {
		t.Errorf("%d sources, %d not covered by A's bans at the turn: want 400, 0", f.Sources, f.Uncovered)
	}
	line := f.Line()
	for _, want := range []string{"b_peak_attack_held=12", "b_held_at_turn=3/3", "lag_max=1.5s", "pulled_lag_max=1.5s", "b_own_bans=1", "false_bans=0/0", "attack_a=120000/120000", "uncovered_at_turn=0/400"} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %q", line, want)
		}
	}
	md := FleetTable([]FleetSummary{f, {Scenario: "fleet", Defense: "ctguard-fleet", A: Summary{Unavailable: "no crowdsec"}}})
	if strings.Count(md, "\n") != 4 || !strings.Contains(md, "| 1.5s / 1.5s (3 of 3) |") || !strings.Contains(md, "| fleet | ctguard-fleet | n/a |") {
		t.Errorf("table:\n%s", md)
	}
	// A's sets without the second /24 at the turn: its 200 sources are new to B.
	res := fakeFleet()
	for _, r := range res.A.Records.Samples {
		if r.Sample.BansChanged && len(r.Sample.Bans) == 2 {
			r.Sample.Bans = r.Sample.Bans[:1]
		}
	}
	if f := SummarizeFleet(res); f.Uncovered != 200 {
		t.Errorf("%d sources not covered by A's bans at the turn, want 200", f.Uncovered)
	}
	// Isolated: nothing in B's sets before the turn, no lag without B's sets.
	res = fakeFleet()
	for _, r := range res.B.Records.Samples {
		r.Sample.Bans, r.Sample.BansChanged = nil, false
	}
	res.BansB = res.BansB[2:]
	if f := SummarizeFleet(res); f.EnforcedB != 0 || f.BeforeTurn != 0 || f.LagMax >= 0 || f.PulledLagMax >= 0 || !strings.Contains(FleetTable([]FleetSummary{f}), "| never |") {
		t.Errorf("without B's bans: %+v", f)
	}
}

// The fleet runs only its own defenses, both of them unless named, and
// its victim B processes aim at B.
func TestFleetScenario(t *testing.T) {
	for _, short := range []bool{true, false} {
		sc, err := Find("fleet", short)
		if err != nil {
			t.Fatal(err)
		}
		if !sc.Fleet || sc.Turn <= 0 || sc.Turn >= sc.AttackFor {
			t.Fatalf("short=%v: fleet %v, turn %s of %s", short, sc.Fleet, sc.Turn, sc.AttackFor)
		}
		// Every /24 of the bots meets A from the attack's start.
		if n := len(botSources(sc.Attack[0])); n != fleetBots(short) || !slices.Contains(sc.Attack[0].Args, "spread24") {
			t.Errorf("short=%v: %d sources in %v", short, n, sc.Attack[0].Args)
		}
	}
	sc, _ := Find("fleet", true)
	for asked, want := range map[string]string{"": "ctguard-isolated ctguard-fleet", "ctguard-fleet": "ctguard-fleet", "ctguard,ctguard-ipset": ""} {
		var a []string
		if asked != "" {
			a = strings.Split(asked, ",")
		}
		if got := strings.Join(DefensesAsked(sc, a), " "); got != want {
			t.Errorf("asked %q: %q, want %q", asked, got, want)
		}
	}
	bots, _ := Find("bots-v4", true)
	if _, err := NewDefense(t.Context(), "ctguard-fleet", bots, "x"); err == nil || strings.Contains(err.Error(), "unavailable") {
		t.Errorf("ctguard-fleet under bots-v4: %v, want refused", err)
	}
	p := toVictimB(sc.Attack[0])
	args := strings.Join(p.Args, " ")
	if p.Name != "bots-b" || !strings.Contains(args, topo.VictimBV4.String()+":443") || strings.Contains(args, topo.VictimV4.String()) {
		t.Errorf("victim B's bots: %s %s", p.Name, args)
	}
	for _, l := range legitProcs(sc) {
		args := strings.Join(toVictimB(l).Args, " ")
		if strings.Contains(args, topo.VictimV4.String()) || strings.Contains(args, topo.VictimV6.String()+"]") {
			t.Errorf("victim B's %s still aims at A: %s", l.Name, args)
		}
	}
}
