package lab

import (
	"encoding/csv"
	"fmt"
	"io"
	"math"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ctguard/ctguard/test/e2e/topo"
	"github.com/ctguard/ctguard/test/e2e/wire"
)

// FullFraction is the fill at which the table counts as full (99.5%): with
// held entries the count hovers a few entries under max, as the gc worker
// evicts closing entries that legit traffic keeps creating.
const FullFraction = 0.995

// Summary is what a user asks of a run.
type Summary struct {
	Scenario, Defense  string
	Max, Peak          int64
	PeakPct            float64
	PeakAttackHeld     int64         // most entries from attack ranges in one state walk during the attack; -1: never sampled
	FullAfter          time.Duration // from attack start; <0: never full
	FullFor            time.Duration // total time the table was full
	Probes, ProbesOK   int
	ProbesFull         int // probes started while the table was full
	ProbesFullOK       int
	ProbeP50, ProbeP95 float64       // ms, successful probes
	FirstBan           time.Duration // first ban of an attack address, from attack start; <0: never
	AttackBans         int           // attack addresses banned
	FalseBans          int           // legit addresses banned
	OtherBans          int           // anything else
	FalseBanList       []string
	AttackSent         int64 // connections/packets the attack generators made
	Prefilled          int64 // entries injected before the run (short scenarios)
	AttackFailed       int64
	// LegitSent and LegitFailed are the legit clients' (crowd, NAT users)
	// requests and failed attempts; probes are counted on their own.
	LegitSent, LegitFailed int64
	Drop, EarlyDrop        int64 // kernel counters over the run
	InsertFailed           int64
	Tracked                bool // conntrack held entries (the ruleset was live)
	Unavailable            string

	// Bans is every address or prefix banned during the run, sorted;
	// ScopedBans those of them banned on every port but SSH (ctguard's
	// scoped bans of targets that cover an open SSH session's peer).
	Bans, ScopedBans []string
	// Apache: the run's victim service was Apache; ApacheWorkersFull is
	// how often its error log says it reached MaxRequestWorkers.
	Apache            bool
	ApacheWorkersFull int
	// FirstBanAny is the first ban of anything, from attack start (<0: never).
	FirstBanAny time.Duration
	// PressureAt is when the table first held PressureFill of its maximum,
	// from attack start (negative: before it, a prefill); Pressured says it
	// ever did.
	PressureAt time.Duration
	Pressured  bool
	// AttackPeakLive is the most connections the attack generators held
	// open at once (keep-alive bots), as they counted them.
	AttackPeakLive int64
	// CGNATPeakLive, CGNATSent and CGNATFailed are the carrier-grade NAT's
	// (process "cgnat") most live connections and its requests.
	CGNATPeakLive, CGNATSent, CGNATFailed int64
	// The SSH operator: logins, commands, and the commands sent at or
	// after the first ban of anything.
	OpLogins, OpLoginsOK     int
	OpCmds, OpOK             int
	OpAfterBan, OpAfterBanOK int
	OpFailures               []string // the first few failed commands: "seq@t: why"
	// ProbeFailures are the first few failed probes: "t: why", t from
	// the attack's start.
	ProbeFailures []string
	// Watch is one entry per Scenario.Watch target.
	Watch []WatchStat
}

// PressureFill is the fill at which the lab says pressure is reached:
// ctguard's default elevated_fill (policy.Default().ElevatedFill).
const PressureFill = 0.50

// WatchStat is what the monitor saw of one watched target (entries from an
// address to a port). Times are from attack start.
type WatchStat struct {
	Target string
	Walks  int
	Peak   int64
	// PeakAt and FirstAt (the first walk that saw an entry) are set when
	// Peak > 0; they are negative before the attack.
	PeakAt, FirstAt time.Duration
	// Cleared says the last walks saw none after some were seen (the
	// entries were purged and did not come back); ClearedAt is the first of
	// those walks.
	Cleared   bool
	ClearedAt time.Duration
	End       int64 // the last walk's count
}

// ProbeRate is ok/total as a percentage; NaN without probes.
func ProbeRate(ok, n int) float64 {
	if n == 0 {
		return math.NaN()
	}
	return 100 * float64(ok) / float64(n)
}

func pct(ok, n int) string {
	if n == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f%% (%d/%d)", ProbeRate(ok, n), ok, n)
}

func held(n int64) string {
	if n < 0 {
		return "n/a"
	}
	return strconv.FormatInt(n, 10)
}

func dur(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return fmt.Sprintf("%.1fs", d.Seconds())
}

// Line is the one-line summary.
func (s Summary) Line() string {
	if s.Unavailable != "" {
		return fmt.Sprintf("scenario=%s defense=%s unavailable: %s", s.Scenario, s.Defense, s.Unavailable)
	}
	fb := ""
	if len(s.FalseBanList) > 0 {
		fb = " [" + strings.Join(s.FalseBanList, " ") + "]"
	}
	line := fmt.Sprintf("scenario=%s defense=%s peak=%.1f%% (%d/%d) peak_attack_held=%s full_after=%s full_for=%s probes_ok=%s probes_ok_while_full=%s first_ban=%s attacker_bans=%d false_bans=%d%s legit_failed=%d/%d attack_sent=%d drop=%d early_drop=%d",
		s.Scenario, s.Defense, s.PeakPct, s.Peak, s.Max, held(s.PeakAttackHeld), dur(s.FullAfter), dur(s.FullFor), pct(s.ProbesOK, s.Probes),
		pct(s.ProbesFullOK, s.ProbesFull), dur(s.FirstBan), s.AttackBans, s.FalseBans, fb, s.LegitFailed, s.LegitSent+s.LegitFailed, s.AttackSent, s.Drop, s.EarlyDrop)
	if x := s.Extras(); x != "" {
		line += " " + x
	}
	return line
}

// Extras are the scenario-specific measures (keep-alive connections held,
// the CGNAT, the SSH operator, watched entries), empty when a run has none.
func (s Summary) Extras() string {
	var parts []string
	if s.Apache {
		parts = append(parts, fmt.Sprintf("apache_workers_full=%d", s.ApacheWorkersFull))
	}
	if s.AttackPeakLive > 0 {
		parts = append(parts, fmt.Sprintf("attack_peak_live=%d", s.AttackPeakLive))
	}
	if s.CGNATPeakLive > 0 || s.CGNATSent > 0 || s.CGNATFailed > 0 {
		parts = append(parts, fmt.Sprintf("cgnat_peak_live=%d cgnat_failed=%d/%d", s.CGNATPeakLive, s.CGNATFailed, s.CGNATSent+s.CGNATFailed))
	}
	if s.OpLogins > 0 {
		parts = append(parts, fmt.Sprintf("operator_logins=%d/%d operator_ok=%d/%d operator_ok_after_ban=%d/%d",
			s.OpLoginsOK, s.OpLogins, s.OpOK, s.OpCmds, s.OpAfterBanOK, s.OpAfterBan))
	}
	if len(s.Watch) > 0 {
		pa := "never"
		if s.Pressured {
			pa = fmt.Sprintf("%.1fs", s.PressureAt.Seconds())
		}
		parts = append(parts, "pressure_at="+pa, "first_ban_any="+dur(s.FirstBanAny))
		if len(s.ScopedBans) > 0 {
			parts = append(parts, "scoped_bans=["+strings.Join(s.ScopedBans, " ")+"]")
		}
	}
	for _, w := range s.Watch {
		cleared := "no"
		if w.Cleared {
			cleared = fmt.Sprintf("at %.1fs", w.ClearedAt.Seconds())
		}
		if w.Peak == 0 {
			parts = append(parts, fmt.Sprintf("watch[%s]=none in %d walks", w.Target, w.Walks))
			continue
		}
		parts = append(parts, fmt.Sprintf("watch[%s]=first at %.1fs, peak %d at %.1fs, cleared %s, end %d",
			w.Target, w.FirstAt.Seconds(), w.Peak, w.PeakAt.Seconds(), cleared, w.End))
	}
	return strings.Join(parts, " ")
}

// Classify says whether a banned address is in an attack range, a legit
// range, or neither.
func Classify(a string) string {
	p, err := netip.ParsePrefix(a)
	if err != nil {
		addr, err := netip.ParseAddr(a)
		if err != nil {
			return "other"
		}
		p = netip.PrefixFrom(addr.Unmap(), addr.Unmap().BitLen())
	}
	for _, r := range topo.LegitRanges {
		if r.Overlaps(p) {
			return "legit" // a prefix ban that touches legit space is a false ban
		}
	}
	for _, r := range topo.AttackRanges {
		if r.Overlaps(p) {
			return "attack"
		}
	}
	return "other"
}

func isFull(s *wire.Sample) bool {
	return s.Max > 0 && float64(s.Count) >= FullFraction*float64(s.Max)
}

// Summarize computes the summary from a run's records.
func Summarize(res *Result) Summary {
	s := Summary{Scenario: res.Scenario.Name, Defense: res.Defense.Name, FullAfter: -1, FirstBan: -1, PeakAttackHeld: -1, FirstBanAny: -1,
		Apache: res.Scenario.Apache, ApacheWorkersFull: apacheFull(res.ApacheLog)}
	samples := res.Records.Samples
	var firstBanT time.Time
	for _, target := range res.Scenario.Watch {
		s.Watch = append(s.Watch, WatchStat{Target: target})
	}
	var base *wire.Sample
	everBanned, everScoped := map[string]bool{}, map[string]bool{}
	var fullSince time.Time
	var lastT time.Time
	for i := range samples {
		r := samples[i]
		sm := r.Sample
		t := time.UnixMilli(r.T)
		if base == nil {
			base = sm
		}
		s.Max = max(s.Max, sm.Max)
		if !t.Before(res.AttackStart) {
			// Peak during the attack: a short run's prefill (and the defense's
			// reaction to it in the warmup) happens before.
			s.Peak = max(s.Peak, sm.Count)
			if sm.HeldSampled {
				s.PeakAttackHeld = max(s.PeakAttackHeld, sm.AttackHeld)
			}
		}
		if sm.Count > 0 {
			s.Tracked = true
		}
		full := isFull(sm)
		if full && s.FullAfter < 0 && !t.Before(res.AttackStart) {
			s.FullAfter = t.Sub(res.AttackStart)
		}
		if full && fullSince.IsZero() {
			fullSince = t
		}
		if !full && !fullSince.IsZero() {
			s.FullFor += t.Sub(fullSince)
			fullSince = time.Time{}
		}
		lastT = t
		if !s.Pressured && sm.Max > 0 && float64(sm.Count) >= PressureFill*float64(sm.Max) {
			s.Pressured, s.PressureAt = true, t.Sub(res.AttackStart)
		}
		if sm.WatchSampled {
			for i := range s.Watch {
				if i >= len(sm.Watch) {
					break
				}
				w, n, at := &s.Watch[i], sm.Watch[i], t.Sub(res.AttackStart)
				w.Walks++
				w.End = n
				if n > 0 && w.Peak == 0 {
					w.FirstAt = at
				}
				if n > w.Peak {
					w.Peak, w.PeakAt = n, at
				}
				switch {
				case n > 0:
					w.Cleared = false // (back) in the table
				case w.Peak > 0 && !w.Cleared:
					w.Cleared, w.ClearedAt = true, at
				}
			}
		}
		s.Drop, s.EarlyDrop, s.InsertFailed = sm.Drop-base.Drop, sm.EarlyDrop-base.EarlyDrop, sm.InsertFailed-base.InsertFailed
		for _, b := range sm.ScopedBans {
			if !everScoped[b] {
				everScoped[b] = true
				s.ScopedBans = append(s.ScopedBans, b)
			}
		}
		for _, b := range sm.Bans {
			if everBanned[b] {
				continue
			}
			everBanned[b] = true
			if Classify(b) == "attack" && s.FirstBan < 0 {
				s.FirstBan = max(t.Sub(res.AttackStart), 0)
			}
			if firstBanT.IsZero() {
				firstBanT = t
				s.FirstBanAny = t.Sub(res.AttackStart)
			}
		}
	}
	if !fullSince.IsZero() {
		s.FullFor += lastT.Sub(fullSince)
	}
	if s.Max > 0 {
		s.PeakPct = 100 * float64(s.Peak) / float64(s.Max)
	}
	for b := range everBanned {
		s.Bans = append(s.Bans, b)
		switch Classify(b) {
		case "attack":
			s.AttackBans++
		case "legit":
			s.FalseBans++
			s.FalseBanList = append(s.FalseBanList, b)
		default:
			s.OtherBans++
		}
	}
	sort.Strings(s.FalseBanList)
	sort.Strings(s.Bans)
	sort.Strings(s.ScopedBans)
	var lat []float64
	for _, p := range res.Records.Probes {
		s.Probes++
		full := fullAt(samples, p.T)
		if full {
			s.ProbesFull++
		}
		if p.Probe.OK {
			s.ProbesOK++
			lat = append(lat, p.Probe.LatencyMS)
			if full {
				s.ProbesFullOK++
			}
		} else if len(s.ProbeFailures) < 8 {
			s.ProbeFailures = append(s.ProbeFailures, fmt.Sprintf("%.1fs: %s", time.UnixMilli(p.T).Sub(res.AttackStart).Seconds(), p.Probe.Err))
		}
	}
	sort.Float64s(lat)
	s.ProbeP50, s.ProbeP95 = quantile(lat, 0.5), quantile(lat, 0.95)
	if pr := res.Records.Progress["prefill"]; pr != nil {
		s.Prefilled = pr.Sent
	}
	for _, p := range res.Scenario.Attack {
		if pr := res.Records.Progress[p.Name]; pr != nil {
			if p.Role == topo.Legit {
				s.LegitSent += pr.Sent
				s.LegitFailed += pr.Failed
				continue
			}
			s.AttackSent += pr.Sent
			s.AttackFailed += pr.Failed
			s.AttackPeakLive += pr.PeakLive
		}
	}
	for _, p := range legitProcs(res.Scenario) {
		if pr := res.Records.Progress[p.Name]; pr != nil && p.Name != "probes" {
			s.LegitSent += pr.Sent
			s.LegitFailed += pr.Failed
		}
	}
	for _, p := range res.Scenario.Background {
		pr := res.Records.Progress[p.Name]
		if pr == nil || p.Role != topo.Legit {
			continue
		}
		s.LegitSent += pr.Sent
		s.LegitFailed += pr.Failed
		if p.Name == "cgnat" {
			s.CGNATPeakLive, s.CGNATSent, s.CGNATFailed = pr.PeakLive, pr.Sent, pr.Failed
		}
	}
	ops := append([]wire.Record(nil), res.Records.Ops...)
	sort.SliceStable(ops, func(i, j int) bool { return ops[i].T < ops[j].T })
	for _, r := range ops {
		op := r.Op
		if op.Login {
			s.OpLogins++
			if op.OK {
				s.OpLoginsOK++
			}
			continue
		}
		s.OpCmds++
		if op.OK {
			s.OpOK++
		} else if len(s.OpFailures) < 5 {
			s.OpFailures = append(s.OpFailures, fmt.Sprintf("%d@%.1fs: %s", op.Seq, time.UnixMilli(r.T).Sub(res.AttackStart).Seconds(), op.Err))
		}
		if !firstBanT.IsZero() && r.T >= firstBanT.UnixMilli() {
			s.OpAfterBan++
			if op.OK {
				s.OpAfterBanOK++
			}
		}
	}
	return s
}

// fullAt says whether the table was full at time t (Unix ms): the last
// sample at or before t decides.
func fullAt(samples []wire.Record, t int64) bool {
	i := sort.Search(len(samples), func(i int) bool { return samples[i].T > t })
	if i == 0 {
		return false
	}
	return isFull(samples[i-1].Sample)
}

func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	return sorted[int(q*float64(len(sorted)-1))]
}

// Row is one monitor sample joined with the probes and bans around it.
type Row struct {
	T            float64 // seconds since attack start (negative in warmup)
	Count, Max   int64
	FillPct      float64
	States       map[string]int64 // nil unless sampled at this tick
	AttackHeld   int64            // entries from attack ranges; -1 unless sampled at this tick
	Drop         int64            // since run start
	EarlyDrop    int64
	InsertFailed int64
	Probes       int // probes started since the previous row
	ProbesOK     int
	ProbeOKPct   float64 // over the last 2 s of probes (NaN if none)
	LatencyMS    float64 // mean latency of this row's successful probes
	Bans         int     // addresses banned at this tick
	BansAttack   int
	BansLegit    int
}

// Rows joins samples with probes.
func Rows(res *Result) []Row {
	samples := res.Records.Samples
	probes := append([]wire.Record(nil), res.Records.Probes...)
	sort.Slice(probes, func(i, j int) bool { return probes[i].T < probes[j].T })
	var rows []Row
	var base *wire.Sample
	pi := 0
	var bans []string
	at := res.AttackStart.UnixMilli()
	for i, r := range samples {
		sm := r.Sample
		if base == nil {
			base = sm
		}
		if sm.BansChanged {
			bans = sm.Bans
		}
		row := Row{T: float64(r.T-at) / 1000, Count: sm.Count, Max: sm.Max, States: sm.States, AttackHeld: -1,
			Drop: sm.Drop - base.Drop, EarlyDrop: sm.EarlyDrop - base.EarlyDrop, InsertFailed: sm.InsertFailed - base.InsertFailed}
		if sm.HeldSampled {
			row.AttackHeld = sm.AttackHeld
		}
		if sm.Max > 0 {
			row.FillPct = 100 * float64(sm.Count) / float64(sm.Max)
		}
		var latSum float64
		for pi < len(probes) && (probes[pi].T <= r.T || i == len(samples)-1) {
			row.Probes++
			if probes[pi].Probe.OK {
				row.ProbesOK++
				latSum += probes[pi].Probe.LatencyMS
			}
			pi++
		}
		if row.ProbesOK > 0 {
			row.LatencyMS = latSum / float64(row.ProbesOK)
		}
		row.Bans = len(bans)
		for _, b := range bans {
			switch Classify(b) {
			case "attack":
				row.BansAttack++
			case "legit":
				row.BansLegit++
			}
		}
		rows = append(rows, row)
	}
	// Probe success over a trailing 2 s window, for plots.
	for i := range rows {
		n, ok := 0, 0
		for j := i; j >= 0 && rows[i].T-rows[j].T < 2; j-- {
			n += rows[j].Probes
			ok += rows[j].ProbesOK
		}
		rows[i].ProbeOKPct = ProbeRate(ok, n)
	}
	return rows
}

// CSVStates are the state columns written to CSV.
var CSVStates = []string{"ESTABLISHED", "SYN_RECV", "SYN_SENT", "TIME_WAIT", "UDP_UNREPLIED", "UDP", "OTHER"}

// WriteCSV writes rows, keeping every step-th row (step >= 1) so committed
// files stay small; rows with state samples are always kept. Probe counts
// of dropped rows are added to the next kept row, so none are lost.
func WriteCSV(w io.Writer, rows []Row, step int) error {
	if step < 1 {
		step = 1
	}
	cw := csv.NewWriter(w)
	head := []string{"t_s", "count", "max", "fill_pct"}
	for _, st := range CSVStates {
		head = append(head, strings.ToLower(st))
	}
	head = append(head, "attack_held", "drop", "early_drop", "insert_failed", "probes", "probes_ok", "probe_ok_pct_2s", "latency_ms", "bans", "bans_attack", "bans_legit")
	if err := cw.Write(head); err != nil {
		return err
	}
	f := func(v float64) string {
		if math.IsNaN(v) {
			return ""
		}
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	pending, pendingOK := 0, 0
	for i, r := range rows {
		pending += r.Probes
		pendingOK += r.ProbesOK
		if i%step != 0 && r.States == nil && r.AttackHeld < 0 && i != len(rows)-1 {
			continue
		}
		rec := []string{f(r.T), strconv.FormatInt(r.Count, 10), strconv.FormatInt(r.Max, 10), f(r.FillPct)}
		for _, st := range CSVStates {
			if r.States == nil {
				rec = append(rec, "")
			} else {
				rec = append(rec, strconv.FormatInt(r.States[st], 10))
			}
		}
		held := ""
		if r.AttackHeld >= 0 {
			held = strconv.FormatInt(r.AttackHeld, 10)
		}
		rec = append(rec, held, strconv.FormatInt(r.Drop, 10), strconv.FormatInt(r.EarlyDrop, 10), strconv.FormatInt(r.InsertFailed, 10),
			strconv.Itoa(pending), strconv.Itoa(pendingOK), f(r.ProbeOKPct), f(r.LatencyMS),
			strconv.Itoa(r.Bans), strconv.Itoa(r.BansAttack), strconv.Itoa(r.BansLegit))
		pending, pendingOK = 0, 0
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}
