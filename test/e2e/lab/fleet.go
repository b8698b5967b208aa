package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ctguard/ctguard/test/e2e/gen"
	"github.com/ctguard/ctguard/test/e2e/plot"
	"github.com/ctguard/ctguard/test/e2e/topo"
	"github.com/ctguard/ctguard/test/e2e/wire"
)

// FleetDefenses are the defenses the fleet scenario runs under: ctguard
// on both victims with nothing between them, and the same two sharing
// their bans through one CrowdSec Local API.
var FleetDefenses = []string{"ctguard-isolated", "ctguard-fleet"}

// FleetPullInterval is the fleet's ctguards' crowdsec.pull_interval.
const FleetPullInterval = time.Second

// fleetBots and fleetNets are the fleet scenario's bot sources and the
// /24s they are dealt over: 400 over two /24s in the short version, 1,500
// over six (as many as bots-v4's in order) in the full one. Dealt, not in
// order: every /24 meets A in the attack's first second, so A's bans
// cover every source well before the turn. In order they did not always:
// once A bans the first /24, each of its sources' connects waits out its
// 500 ms timeout, the generator tried only 7,000-14,000 a second on this
// 2-core machine, and under load it reached the second /24 just before
// the turn, so B met sources A had not banned yet.
func fleetBots(short bool) int {
	if short {
		return 400
	}
	return 1500
}

func fleetNets(short bool) int {
	if short {
		return 2
	}
	return 6
}

// fleetDefense is ctguard on both victims of the fleet scenario, linked
// through the LAPI (ctguard-fleet) or not (ctguard-isolated).
func fleetDefense(ctx context.Context, name, ctguardBin string) (Defense, error) {
	if err := ctguardAvailable(ctx, ctguardBin); err != nil {
		return Defense{Name: name}, err
	}
	bin, err := filepath.Abs(ctguardBin)
	if err != nil {
		return Defense{Name: name}, err
	}
	d := Defense{Name: name, Proc: &Proc{Name: "ctguard", Role: topo.Victim, Args: []string{"run"}}, Bin: bin,
		NFTTable: "inet ctguard", Native: true,
		Note: "ctguard run on each victim, built-in defaults, nothing shared between them"}
	if name == "ctguard-fleet" {
		if err := LAPIAvailable(); err != nil {
			return Defense{Name: name}, err
		}
		d.LAPI = true
		d.Note = fmt.Sprintf("ctguard run on each victim, built-in defaults plus [crowdsec] push and pull (pull_interval %s) on one CrowdSec Local API run in the router", FleetPullInterval)
	}
	return d, nil
}

// lapiConfig is the installed CrowdSec configuration the lab copies.
const lapiConfig = "/etc/crowdsec/config.yaml"

// LAPIAvailable says whether CrowdSec's Local API can run here (Debian:
// package crowdsec; its service need not run).
func LAPIAvailable() error {
	for _, p := range []string{"crowdsec", "cscli"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%w: %s: %v (install crowdsec)", ErrUnavailable, p, err)
		}
	}
	if _, err := os.Stat(lapiConfig); err != nil {
		return fmt.Errorf("%w: %v (install crowdsec)", ErrUnavailable, err)
	}
	return nil
}

// CtguardBan is one ban of a ctguard's record (`ctguard list --all
// --json`): when it was first made and who decided it ("auto": its own
// policy, "crowdsec": pulled from the LAPI).
type CtguardBan struct {
	Prefix string    `json:"prefix"`
	First  time.Time `json:"first"`
	Origin string    `json:"origin"`
	Reason string    `json:"reason"`
}

// FleetResult is one run of the fleet scenario.
type FleetResult struct {
	Scenario Scenario
	Defense  Defense
	// Start is when the legit traffic began, AttackStart when the attack
	// hit victim A, Turn when it turned to victim B, AttackEnd when it
	// stopped.
	Start, AttackStart, Turn, AttackEnd time.Time
	// A and B are each victim's records as a one-victim Result (Rows and
	// Summary filled in): A's attack starts at AttackStart, B's at Turn;
	// the Rows of both are timed from AttackStart.
	A, B *Result
	// BansA and BansB are each ctguard's bans at the end of the run.
	BansA, BansB []CtguardBan
	Summary      FleetSummary
	// LAPILog is the Local API's log (ctguard-fleet).
	LAPILog string
}

// FleetSummary is what the fleet scenario asks.
type FleetSummary struct {
	Scenario, Defense string
	// A and B summarize each victim: A from the attack's start, B from
	// the turn (B.PeakAttackHeld: the most entries of the attack's
	// sources B held at once, walked every StatesEvery).
	A, B Summary
	// Linked: the two ctguards shared the LAPI.
	Linked bool
	// AOwn is the attack prefixes A's own policy banned; EnforcedB how many
	// of them B's sets held at some time in the run, BeforeTurn at the
	// turn (before the attack reached B). LagMax and LagP50 are from A's
	// set first holding such a prefix to B's set first holding it, as the
	// two monitors saw them (250 ms apart); negative without any.
	AOwn, EnforcedB, BeforeTurn int
	LagMax, LagP50              time.Duration
	// PulledLagMax is the same from the two ctguards' own records: from
	// A's ban to B's ban of the same prefix, or one around it, pulled from
	// the LAPI (origin crowdsec), to the millisecond; negative without any.
	PulledLagMax time.Duration
	// BOwn is the attack prefixes B's own policy banned.
	BOwn int
	// BDrops is the packets B's ctguard dropped from the turn to the end;
	// BFirstDrop when its counters first grew after the turn, from the
	// turn (negative: never).
	BDrops     int64
	BFirstDrop time.Duration
	// AttemptsA is the connections the attack tried against A (made and
	// failed), Planned what it would make with every source used up.
	AttemptsA, Planned int64
	// Sources is the attack's sources; Uncovered how many of them no ban
	// in A's sets covered at the turn. The question is what B gains from
	// A's bans: with sources A never banned, B meets an attack A never saw
	// (the generator did not reach them before the turn), and the run
	// does not answer it.
	Sources, Uncovered int
}

// Line is the one-line summary.
func (f FleetSummary) Line() string {
	if f.A.Unavailable != "" {
		return fmt.Sprintf("scenario=%s defense=%s unavailable: %s", f.Scenario, f.Defense, f.A.Unavailable)
	}
	return fmt.Sprintf("scenario=%s defense=%s a_peak=%.1f%% (%d/%d) a_peak_attack_held=%s a_first_ban=%s a_bans=%d a_own_bans=%d "+
		"b_peak_attack_held=%s b_first_drop=%s b_drops=%d b_held_at_turn=%d/%d b_enforced=%d/%d lag_max=%s lag_p50=%s pulled_lag_max=%s b_own_bans=%d b_peak=%.1f%% "+
		"false_bans=%d/%d%s probes_ok_a=%s probes_ok_b=%s legit_failed_a=%d/%d legit_failed_b=%d/%d attack_a=%d/%d attack_b_sent=%d uncovered_at_turn=%d/%d",
		f.Scenario, f.Defense, f.A.PeakPct, f.A.Peak, f.A.Max, held(f.A.PeakAttackHeld), dur(f.A.FirstBan), f.A.AttackBans, f.AOwn,
		held(f.B.PeakAttackHeld), dur(f.BFirstDrop), f.BDrops, f.BeforeTurn, f.AOwn, f.EnforcedB, f.AOwn, dur(f.LagMax), dur(f.LagP50), msDur(f.PulledLagMax), f.BOwn, f.B.PeakPct,
		f.A.FalseBans, f.B.FalseBans, falseList(f), pct(f.A.ProbesOK, f.A.Probes), pct(f.B.ProbesOK, f.B.Probes),
		f.A.LegitFailed, f.A.LegitSent+f.A.LegitFailed, f.B.LegitFailed, f.B.LegitSent+f.B.LegitFailed, f.AttemptsA, f.Planned, f.B.AttackSent,
		f.Uncovered, f.Sources)
}

func msDur(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return d.Round(time.Millisecond).String()
}

func falseList(f FleetSummary) string {
	l := append(slices.Clone(f.A.FalseBanList), f.B.FalseBanList...)
	if len(l) == 0 {
		return ""
	}
	return " [" + strings.Join(l, " ") + "]"
}

// fleetMetrics are the columns of the fleet's results table.
var fleetMetrics = []struct {
	name string
	get  func(FleetSummary) string
}{
	{"A peak fill", func(f FleetSummary) string { return fmt.Sprintf("%.1f%% (%d)", f.A.PeakPct, f.A.Peak) }},
	{"A peak attack entries", func(f FleetSummary) string { return held(f.A.PeakAttackHeld) }},
	{"A first ban", func(f FleetSummary) string { return dur(f.A.FirstBan) }},
	{"A attack bans (own)", func(f FleetSummary) string { return fmt.Sprintf("%d (%d)", f.A.AttackBans, f.AOwn) }},
	{"B peak attack entries", func(f FleetSummary) string { return held(f.B.PeakAttackHeld) }},
	{"B peak fill", func(f FleetSummary) string { return fmt.Sprintf("%.1f%% (%d)", f.B.PeakPct, f.B.Peak) }},
	{"B first drop (from the turn)", func(f FleetSummary) string { return dur(f.BFirstDrop) }},
	{"B drops", func(f FleetSummary) string { return fmt.Sprint(f.BDrops) }},
	{"A's bans in B's sets at the turn", func(f FleetSummary) string { return fmt.Sprintf("%d of %d", f.BeforeTurn, f.AOwn) }},
	{"A's ban to B's set (max / median)", func(f FleetSummary) string {
		if f.EnforcedB == 0 {
			return "never"
		}
		return fmt.Sprintf("%s / %s (%d of %d)", dur(f.LagMax), dur(f.LagP50), f.EnforcedB, f.AOwn)
	}},
	{"A's ban to B's pulled ban, records (max)", func(f FleetSummary) string { return msDur(f.PulledLagMax) }},
	{"B's own attack bans", func(f FleetSummary) string { return fmt.Sprint(f.BOwn) }},
	{"false bans A / B", func(f FleetSummary) string {
		return fmt.Sprintf("%d / %d%s", f.A.FalseBans, f.B.FalseBans, falseList(f))
	}},
	{"probes ok A / B", func(f FleetSummary) string {
		return pct(f.A.ProbesOK, f.A.Probes) + " / " + pct(f.B.ProbesOK, f.B.Probes)
	}},
	{"legit client failures A / B", func(f FleetSummary) string {
		return fmt.Sprintf("%d of %d / %d of %d", f.A.LegitFailed, f.A.LegitSent+f.A.LegitFailed, f.B.LegitFailed, f.B.LegitSent+f.B.LegitFailed)
	}},
	{"attack conns A (tried) / B (made)", func(f FleetSummary) string {
		return fmt.Sprintf("%d of %d / %d", f.AttemptsA, f.Planned, f.B.AttackSent)
	}},
}

// FleetTable is the fleet's results table, one row per run.
func FleetTable(sums []FleetSummary) string {
	var b strings.Builder
	b.WriteString("| scenario | defense |")
	for _, m := range fleetMetrics {
		b.WriteString(" " + m.name + " |")
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---|", len(fleetMetrics)) + "\n")
	for _, s := range sums {
		fmt.Fprintf(&b, "| %s | %s |", s.Scenario, s.Defense)
		for _, m := range fleetMetrics {
			if s.A.Unavailable != "" {
				b.WriteString(" n/a |")
				continue
			}
			b.WriteString(" " + m.get(s) + " |")
		}
		b.WriteString("\n")
	}
	return b.String()
}

// FleetChart draws fleet runs: each victim of each run is a series.
func FleetChart(runs []*FleetResult) plot.Chart {
	c := Chart(nil)
	if len(runs) == 0 {
		return c
	}
	first := runs[0]
	c.Title = "ctguard lab: " + first.Scenario.Name
	c.Subtitle = first.Scenario.Desc
	c.AttackTo = first.AttackEnd.Sub(first.AttackStart).Seconds()
	for _, r := range runs {
		for _, v := range []struct {
			name string
			res  *Result
		}{{"A", r.A}, {"B", r.B}} {
			s := v.res.Series()
			s.Name = r.Defense.Name + " " + v.name
			c.Series = append(c.Series, s)
		}
		c.Notes = append(c.Notes, FleetNote(r.Summary, r.Defense.Note))
	}
	return c
}

// FleetNote is a fleet run's summary in words, for plot legends.
func FleetNote(f FleetSummary, note string) string {
	return fmt.Sprintf("%s (%s): A peak %.0f%%, B held at most %s attack entries, A's bans in B's sets at the turn %d of %d, lag max %s, false bans %d/%d, probes ok A %s, B %s",
		f.Defense, note, f.A.PeakPct, held(f.B.PeakAttackHeld), f.BeforeTurn, f.AOwn, dur(f.LagMax), f.A.FalseBans, f.B.FalseBans,
		pct(f.A.ProbesOK, f.A.Probes), pct(f.B.ProbesOK, f.B.Probes))
}

// bSuffix names victim B's processes.
const bSuffix = "-b"

var victimB443v4 = topo.VictimBV4.String() + ":443"
var victimB443v6 = "[" + topo.VictimBV6.String() + "]:443"

// toVictimB is p aimed at victim B: named with bSuffix, its victim A
// destinations replaced by B's.
func toVictimB(p Proc) Proc {
	args := make([]string, len(p.Args))
	for i, a := range p.Args {
		switch a {
		case victim443v4:
			a = victimB443v4
		case victim443v6:
			a = victimB443v6
		}
		args[i] = a
	}
	p.Args, p.Name = args, p.Name+bSuffix
	return p
}

// fleetRun is the state RunFleet adds to a run.
type fleetRun struct {
	*run
	lapiLog *logBuf
}

// logBuf collects a process's whole output.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// RunFleet runs the fleet scenario under one of FleetDefenses in a fresh
// topology with two victims, and always tears it down. Options.DefenseLog
// gets victim A's ctguard's log, Options.DefenseLogB victim B's.
func RunFleet(ctx context.Context, sc Scenario, def Defense, opt Options) (*FleetResult, error) {
	if !sc.Fleet {
		return nil, fmt.Errorf("lab: %s is not a fleet scenario", sc.Name)
	}
	if !slices.Contains(FleetDefenses, def.Name) {
		return nil, fmt.Errorf("lab: the fleet scenario runs under %v, not %s", FleetDefenses, def.Name)
	}
	if opt.LabBin == "" {
		return nil, errors.New("lab: no lab binary")
	}
	if sc.Turn <= 0 || sc.Turn >= sc.AttackFor {
		return nil, fmt.Errorf("lab: %s: the turn (%s) must fall inside the attack (%s)", sc.Name, sc.Turn, sc.AttackFor)
	}
	if opt.StateDir == "" {
		opt.StateDir = topo.DefaultStateDir
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	t := topo.New(opt.StateDir, opt.Log, topo.Options{Fleet: true})
	recB := &Records{}
	r := &fleetRun{run: &run{opt: opt, topo: t, ready: map[string]bool{}, rec: Records{Progress: map[string]*wire.Progress{}},
		sinks: map[string]*Records{"monitor" + bSuffix: recB, "probes" + bSuffix: recB}}, lapiLog: &logBuf{}}
	res := &FleetResult{Scenario: sc, Defense: def}
	defer func() {
		if err := t.Close(); err != nil {
			opt.Log.Warn("teardown", "err", err)
		}
	}()
	runCtx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		r.waitAll()
		for _, d := range r.dirs {
			_ = os.RemoveAll(d)
		}
	}()
	if err := t.Setup(runCtx); err != nil {
		return nil, fmt.Errorf("topology: %w", err)
	}
	if opt.Hook != nil {
		if err := opt.Hook(runCtx, t); err != nil {
			return nil, fmt.Errorf("hook: %w", err)
		}
	}
	// Each ctguard's private directory: state, socket, config, credentials.
	dirs := map[string]string{}
	for _, role := range []string{topo.Victim, topo.VictimB} {
		dir, err := os.MkdirTemp("", "ctglab-"+def.Name+"-")
		if err != nil {
			return nil, err
		}
		r.dirs = append(r.dirs, dir)
		dirs[role] = dir
	}
	sections := map[string]string{}
	if def.LAPI {
		var err error
		if sections, err = r.startLAPI(runCtx, dirs); err != nil {
			res.LAPILog = r.lapiLog.String()
			return nil, fmt.Errorf("LAPI: %w", err)
		}
	}
	total := sc.Total()
	for _, role := range []string{topo.Victim, topo.VictimB} {
		name := "server" + map[string]string{topo.VictimB: bSuffix}[role]
		if _, err := r.start(runCtx, Proc{Name: name, Role: role, Args: append([]string{"server"}, sc.ServerArgs...)}, "", total+30*time.Second); err != nil {
			return nil, err
		}
		if err := r.waitReady(runCtx, name, 10*time.Second); err != nil {
			return nil, err
		}
	}
	statesEvery := sc.StatesEvery
	if statesEvery <= 0 {
		statesEvery = 5 * time.Second
	}
	for _, role := range []string{topo.Victim, topo.VictimB} {
		name := "monitor" + map[string]string{topo.VictimB: bSuffix}[role]
		args := []string{"monitor", "--interval", "250ms", "--states-every", statesEvery.String(), "--nft-table", def.NFTTable}
		// Its bound covers both ctguards' start (15 s each at most) and the run.
		if _, err := r.start(runCtx, Proc{Name: name, Role: role, Args: args}, "", total+40*time.Second); err != nil {
			return nil, err
		}
	}
	cfgs := map[string]string{}
	for _, role := range []string{topo.Victim, topo.VictimB} {
		extra, err := ctguardConfig(dirs[role], "", sections[role])
		if err != nil {
			return nil, err
		}
		cfgs[role] = extra[1]
		name, log := "ctguard", opt.DefenseLog
		if role == topo.VictimB {
			name, log = "ctguard"+bSuffix, opt.DefenseLogB
		}
		if err := r.startCtguard(runCtx, def, Proc{Name: name, Role: role, Args: append([]string{"run"}, extra...)}, log); err != nil {
			return nil, err
		}
	}
	res.Start = time.Now()
	for _, p := range legitProcs(sc) {
		for _, q := range []Proc{p, toVictimB(p)} {
			if _, err := r.start(runCtx, q, "", total); err != nil {
				return nil, err
			}
		}
	}
	if err := sleep(runCtx, sc.Warmup); err != nil {
		return nil, err
	}
	// The attack on A, then the same sources on B.
	phases := []struct {
		procs []Proc
		dur   time.Duration
		at    *time.Time
	}{{sc.Attack, sc.Turn, &res.AttackStart}, {nil, sc.AttackFor - sc.Turn, &res.Turn}}
	for _, p := range sc.Attack {
		phases[1].procs = append(phases[1].procs, toVictimB(p))
	}
	for _, ph := range phases {
		*ph.at = time.Now()
		var hs []*proc
		for _, p := range ph.procs {
			h, err := r.start(runCtx, p, "", ph.dur)
			if err != nil {
				return nil, err
			}
			hs = append(hs, h)
		}
		if err := sleep(runCtx, ph.dur); err != nil {
			return nil, err
		}
		if err := waitStopped(runCtx, hs, ph.dur); err != nil {
			return nil, err
		}
	}
	res.AttackEnd = time.Now()
	if err := sleep(runCtx, time.Until(res.Start.Add(total))); err != nil {
		return nil, err
	}
	_ = sleep(runCtx, 2500*time.Millisecond)
	if opt.During != nil {
		if err := opt.During(runCtx, t); err != nil {
			return nil, fmt.Errorf("during: %w", err)
		}
	}
	// Each ctguard's record of its bans: who decided each, and when.
	for role, dst := range map[string]*[]CtguardBan{topo.Victim: &res.BansA, topo.VictimB: &res.BansB} {
		bans, err := r.ctguardBans(runCtx, def.Bin, role, cfgs[role])
		if err != nil {
			return nil, err
		}
		*dst = bans
	}
	cancel()
	errs := r.waitAll()
	for name, err := range errs {
		opt.Log.Debug("process exit", "proc", name, "err", err)
	}
	res.LAPILog = r.lapiLog.String()
	r.mu.Lock()
	recA := r.rec
	r.mu.Unlock()
	// B's processes report under their own names; its Result sees them
	// under victim A's, as Summarize knows them.
	recB.Progress = map[string]*wire.Progress{}
	for name, p := range recA.Progress {
		if base, ok := strings.CutSuffix(name, bSuffix); ok {
			recB.Progress[base] = p
		}
	}
	res.A = &Result{Scenario: sc, Defense: def, Start: res.Start, AttackStart: res.AttackStart, AttackEnd: res.Turn, Records: recA}
	res.B = &Result{Scenario: sc, Defense: def, Start: res.Start, AttackStart: res.Turn, AttackEnd: res.AttackEnd, Records: *recB}
	for _, v := range []*Result{res.A, res.B} {
		s := v.Records.Samples
		if len(s) == 0 {
			return nil, errors.New("a monitor reported no samples")
		}
		if last := time.UnixMilli(s[len(s)-1].T); last.Before(res.AttackEnd) {
			return nil, fmt.Errorf("a monitor's last sample (%s) is %s before the attack's end", last.Format(time.TimeOnly), res.AttackEnd.Sub(last).Round(time.Millisecond))
		}
		// Both victims' rows are timed from the attack's start (on A).
		rows := *v
		rows.AttackStart = res.AttackStart
		v.Rows = Rows(&rows)
		v.Summary = Summarize(v)
	}
	res.Summary = SummarizeFleet(res)
	return res, nil
}

// startCtguard starts one victim's ctguard and waits until its table is
// in the victim.
func (r *fleetRun) startCtguard(ctx context.Context, def Defense, p Proc, log io.Writer) error {
	h, err := r.startNative(ctx, p, def.Bin, nil, log)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := r.tableReady(ctx, def, p.Role)
		if err == nil {
			return nil
		}
		select {
		case err := <-h.done:
			h.done <- err
			return fmt.Errorf("%s exited before it was ready: %v: %s", p.Name, err, h.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after 15 s: %v: %s", p.Name, err, h.stderr.String())
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// ctguardBans reads a running ctguard's bans, history included.
func (r *fleetRun) ctguardBans(ctx context.Context, bin, role, cfg string) ([]CtguardBan, error) {
	out, err := r.topo.Output(ctx, role, bin, "list", "--all", "--json", "--config", cfg)
	if err != nil {
		return nil, fmt.Errorf("ctguard list in %s: %w", role, err)
	}
	var doc struct {
		Bans []CtguardBan `json:"bans"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return nil, fmt.Errorf("ctguard list in %s: %w", role, err)
	}
	return doc.Bans, nil
}

// startLAPI runs CrowdSec's Local API in the router, from a copy of the
// installed configuration with its own database, data directory and
// credentials in a private directory, listening on topo.LAPIV4. It
// registers a machine (watcher) and a bouncer for each victim's ctguard,
// writes their secrets into the ctguard's directory (root-only) and
// returns each ctguard's [crowdsec] section. Each ctguard has its own
// scenario, so that each applies the other's bans and skips its own.
func (r *fleetRun) startLAPI(ctx context.Context, dirs map[string]string) (map[string]string, error) {
	if err := LAPIAvailable(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "ctglab-lapi-")
	if err != nil {
		return nil, err
	}
	r.dirs = append(r.dirs, dir)
	b, err := os.ReadFile(lapiConfig)
	if err != nil {
		return nil, err
	}
	listen := netip.AddrPortFrom(topo.LAPIV4, topo.LAPIPort)
	text := string(b)
	for _, x := range []struct{ re, to string }{
		{`(?m)^(\s*db_path:).*$`, "$1 " + filepath.Join(dir, "crowdsec.db")},
		{`(?m)^(\s*data_dir:).*$`, "$1 " + dir + "/"},
		{`(?m)^(\s*credentials_path:) /etc/crowdsec/local_api_credentials.yaml$`, "$1 " + filepath.Join(dir, "admin.yaml")},
		{`(?m)^(\s*log_media:).*$`, "$1 stdout"},
		{`(?m)^(\s*daemonize:).*$`, "$1 false"},
		{`(?m)^(\s*listen_uri:).*$`, "$1 " + listen.String()},
	} {
		text = regexp.MustCompile(x.re).ReplaceAllString(text, x.to)
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		return nil, err
	}
	cscli := func(args ...string) error {
		_, err := r.topo.Output(ctx, topo.Router, append([]string{"cscli", "-c", cfg}, args...)...)
		return err
	}
	if err := cscli("machines", "add", "admin", "--auto", "-f", filepath.Join(dir, "admin.yaml")); err != nil {
		return nil, err
	}
	sections := map[string]string{}
	for role, id := range map[string]string{topo.Victim: "a", topo.VictimB: "b"} {
		name := "ctguard-" + id
		password, key := randomSecret(), randomSecret()
		machine, keyFile := filepath.Join(dirs[role], "machine.yaml"), filepath.Join(dirs[role], "bouncer.key")
		if err := cscli("machines", "add", name, "--password", password, "-f", machine); err != nil {
			return nil, err
		}
		if err := os.Chmod(machine, 0o600); err != nil {
			return nil, err
		}
		if err := cscli("bouncers", "add", name, "--key", key); err != nil {
			return nil, err
		}
		if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
			return nil, err
		}
		sections[role] = fmt.Sprintf("[crowdsec]\nurl = \"http://%s/\"\npush = true\nmachine_id = %q\npassword_file = %q\n"+
			"scenario = \"ctguard/conntrack-holder-%s\"\nown_scenarios = [\"ctguard/*-%s\"]\npull = true\napi_key_file = %q\npull_interval = %q\n",
			listen, name, machine, id, id, keyFile, FleetPullInterval.String())
	}
	bin, err := exec.LookPath("crowdsec")
	if err != nil {
		return nil, err
	}
	h, err := r.startNative(ctx, Proc{Name: "lapi", Role: topo.Router, Args: []string{"-c", cfg, "-no-cs", "-no-capi"}}, bin, nil, r.lapiLog)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(r.lapiLog.String(), "Local API listening") {
		select {
		case err := <-h.done:
			h.done <- err
			return nil, fmt.Errorf("the LAPI exited before it listened: %v: %s", err, h.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the LAPI does not listen after 20 s: %s", h.stderr.String())
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
	return sections, nil
}

func randomSecret() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// banPrefix parses a ban as the monitor or ctguard's record writes it: an
// address or a prefix.
func banPrefix(s string) (netip.Prefix, bool) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), true
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), true
}

// covers says whether one of bans holds p: p itself or a prefix around it.
func covers(bans []string, p netip.Prefix) bool {
	for _, b := range bans {
		if q, ok := banPrefix(b); ok && q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// firstCover is the first sample whose ban list covers p.
func firstCover(samples []wire.Record, p netip.Prefix) (time.Time, bool) {
	for _, r := range samples {
		if r.Sample.BansChanged && covers(r.Sample.Bans, p) {
			return time.UnixMilli(r.T), true
		}
	}
	return time.Time{}, false
}

// bansAt is the ban list of the last sample at or before t.
func bansAt(samples []wire.Record, t time.Time) []string {
	var bans []string
	for _, r := range samples {
		if r.T > t.UnixMilli() {
			break
		}
		if r.Sample.BansChanged {
			bans = r.Sample.Bans
		}
	}
	return bans
}

// pulledAt is when a ctguard first banned p, or a prefix around it, from
// the LAPI.
func pulledAt(bans []CtguardBan, p netip.Prefix) (time.Time, bool) {
	var at time.Time
	for _, b := range bans {
		q, ok := banPrefix(b.Prefix)
		if !ok || b.Origin != "crowdsec" || q.Bits() > p.Bits() || !q.Contains(p.Addr()) {
			continue
		}
		if at.IsZero() || b.First.Before(at) {
			at = b.First
		}
	}
	return at, !at.IsZero()
}

// ownAttackBans is the attack prefixes a ctguard's own policy banned, with
// when it first banned each.
func ownAttackBans(bans []CtguardBan) []CtguardBan {
	var out []CtguardBan
	for _, b := range bans {
		if b.Origin == "auto" && Classify(b.Prefix) == "attack" {
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].First.Before(out[j].First) })
	return out
}

// SummarizeFleet computes the fleet's measures from a run (A and B
// summarized).
func SummarizeFleet(res *FleetResult) FleetSummary {
	f := FleetSummary{Scenario: res.Scenario.Name, Defense: res.Defense.Name, A: res.A.Summary, B: res.B.Summary,
		Linked: res.Defense.LAPI, LagMax: -1, LagP50: -1, BFirstDrop: -1, PulledLagMax: -1}
	atTurn := bansAt(res.B.Records.Samples, res.Turn)
	own := ownAttackBans(res.BansA)
	f.AOwn, f.BOwn = len(own), len(ownAttackBans(res.BansB))
	var lags []time.Duration
	for _, b := range own {
		p, ok := banPrefix(b.Prefix)
		if !ok {
			continue
		}
		// B enforces A's ban when its sets hold the prefix or one around
		// it (A's /24 replacing its addresses, pulled in the same stream).
		if covers(atTurn, p) {
			f.BeforeTurn++
		}
		tb, okB := firstCover(res.B.Records.Samples, p)
		if !okB {
			continue
		}
		f.EnforcedB++
		// A ban replaced before A's monitor saw it (an address folded into
		// its /24 within 250 ms) has no sample of its own: the record's time.
		ta, okA := firstCover(res.A.Records.Samples, p)
		if !okA {
			ta = b.First
		}
		lags = append(lags, max(tb.Sub(ta), 0))
		if at, ok := pulledAt(res.BansB, p); ok {
			f.PulledLagMax = max(f.PulledLagMax, at.Sub(b.First))
		}
	}
	if len(lags) > 0 {
		slices.Sort(lags)
		f.LagMax, f.LagP50 = lags[len(lags)-1], lags[(len(lags)-1)/2]
	}
	// The counters only grow; a sample whose table read failed (the last
	// ones, as the run stops) says 0.
	var base, top int64
	for _, r := range res.B.Records.Samples {
		t, d := time.UnixMilli(r.T), r.Sample.DefenseDrops
		if !t.After(res.Turn) {
			base = max(base, d)
			continue
		}
		top = max(top, d)
		if f.BFirstDrop < 0 && d > base {
			f.BFirstDrop = t.Sub(res.Turn)
		}
	}
	f.BDrops = max(top-base, 0)
	atTurnA := bansAt(res.A.Records.Samples, res.Turn)
	for _, p := range res.Scenario.Attack {
		if pr := res.A.Records.Progress[p.Name]; pr != nil {
			f.AttemptsA += pr.Sent + pr.Failed
		}
		f.Planned += plannedConns(p)
		for _, a := range botSources(p) {
			f.Sources++
			if !covers(atTurnA, netip.PrefixFrom(a, a.BitLen())) {
				f.Uncovered++
			}
		}
	}
	return f
}

// botSources is the source addresses of a bots process (--src, --layout,
// --nets, --n); none for anything else.
func botSources(p Proc) []netip.Addr {
	if len(p.Args) == 0 || p.Args[0] != "bots" {
		return nil
	}
	var src gen.Sources
	n := 0
	for i := 0; i+1 < len(p.Args); i++ {
		v := p.Args[i+1]
		switch p.Args[i] {
		case "--src":
			src.Prefix, _ = netip.ParsePrefix(v)
		case "--layout":
			src.Layout = gen.Layout(v)
		case "--nets":
			fmt.Sscan(v, &src.Nets)
		case "--n":
			fmt.Sscan(v, &n)
		}
	}
	var out []netip.Addr
	for i := range n {
		a, err := src.Addr(i)
		if err != nil {
			break
		}
		out = append(out, a)
	}
	return out
}

// plannedConns is the connections a bots process makes with every source
// used up (--n x --per-source); 0 for anything else.
func plannedConns(p Proc) int64 {
	if len(p.Args) == 0 || p.Args[0] != "bots" {
		return 0
	}
	var n, per int64
	for i := 0; i+1 < len(p.Args); i++ {
		switch p.Args[i] {
		case "--n":
			fmt.Sscan(p.Args[i+1], &n)
		case "--per-source":
			fmt.Sscan(p.Args[i+1], &per)
		}
	}
	return n * per
}
