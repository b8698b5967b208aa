package lab

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/config"
	"github.com/ctguard/ctguard/test/e2e/topo"
	"github.com/ctguard/ctguard/test/e2e/wire"
)

func TestClassify(t *testing.T) {
	for in, want := range map[string]string{
		"198.18.0.5":        "attack",
		"198.18.200.1":      "attack",
		"198.19.3.7":        "attack",
		"2001:db8:bad:5::1": "attack",
		"203.0.113.10":      "legit",
		"203.0.113.200":     "legit",
		"192.0.2.77":        "legit",
		"2001:db8:1::9":     "legit",
		"198.51.100.1":      "other",
		"203.0.113.0/24":    "legit", // a prefix ban over legit space is a false ban
		"198.18.0.0/24":     "attack",
		"::ffff:192.0.2.1":  "legit",
		"junk":              "other",
	} {
		if got := Classify(in); got != want {
			t.Errorf("Classify(%s) = %s, want %s", in, got, want)
		}
	}
}

// fakeResult builds a run: 1 sample per second from -2 s to 9 s; the table
// is full from 3 s to 6 s; one probe per second that fails while full; one
// attacker banned at 4 s and a NAT gateway at 5 s.
func fakeResult() *Result {
	at := time.UnixMilli(1_000_000_000)
	res := &Result{Scenario: Scenario{Name: "s", Attack: []Proc{{Name: "bots"}}}, Defense: Defense{Name: "d"}, AttackStart: at}
	res.Records.Progress = map[string]*wire.Progress{"bots": {Sent: 1234, Failed: 5}, "prefill": {Sent: 77}}
	for sec := -2; sec <= 9; sec++ {
		t := at.Add(time.Duration(sec) * time.Second).UnixMilli()
		count := int64(1000)
		if sec >= 3 && sec <= 6 {
			count = 1000
		} else {
			count = 500
		}
		sm := &wire.Sample{Count: count, Max: 1000, Drop: int64(10 * max(sec, 0)), EarlyDrop: 3}
		switch sec {
		case 4:
			sm.Bans, sm.BansChanged = []string{"198.18.0.1"}, true
		case 5:
			sm.Bans, sm.BansChanged = []string{"198.18.0.1", "203.0.113.10"}, true
		}
		switch sec {
		case -1:
			// Before the attack (a prefill): not the attack's peak.
			sm.HeldSampled, sm.AttackHeld = true, 900
		case 0:
			sm.States = map[string]int64{"ESTABLISHED": 400}
			sm.HeldSampled, sm.AttackHeld = true, 300
		case 1:
			sm.HeldSampled, sm.AttackHeld = true, 0
		}
		res.Records.Samples = append(res.Records.Samples, wire.Record{Kind: "sample", T: t, Sample: sm})
		full := sec >= 3 && sec <= 6
		res.Records.Probes = append(res.Records.Probes, wire.Record{Kind: "probe", T: t + 100,
			Probe: &wire.Probe{OK: !full, LatencyMS: float64(sec + 3)}})
	}
	res.AttackEnd = at.Add(8 * time.Second)
	return res
}

func TestSummarize(t *testing.T) {
	s := Summarize(fakeResult())
	if s.Peak != 1000 || s.PeakPct != 100 || s.FullAfter != 3*time.Second || s.FullFor != 4*time.Second {
		t.Fatalf("fill: %+v", s)
	}
	if s.Probes != 12 || s.ProbesOK != 8 || s.ProbesFull != 4 || s.ProbesFullOK != 0 {
		t.Fatalf("probes: %d/%d ok, %d/%d while full", s.ProbesOK, s.Probes, s.ProbesFullOK, s.ProbesFull)
	}
	if s.FirstBan != 4*time.Second || s.AttackBans != 1 || s.FalseBans != 1 || s.FalseBanList[0] != "203.0.113.10" {
		t.Fatalf("bans: %+v", s)
	}
	if s.PeakAttackHeld != 300 {
		t.Fatalf("peak attack held %d, want 300 (the attack's, not the prefill's)", s.PeakAttackHeld)
	}
	if s.Drop != 90 || s.EarlyDrop != 0 || s.AttackSent != 1234 || s.Prefilled != 77 || !s.Tracked {
		t.Fatalf("counters: %+v", s)
	}
	line := s.Line()
	for _, want := range []string{"full_after=3.0s", "peak_attack_held=300", "probes_ok_while_full=0.0% (0/4)", "false_bans=1 [203.0.113.10]"} {
		if !strings.Contains(line, want) {
			t.Errorf("summary line %q lacks %q", line, want)
		}
	}
}

func TestSummarizeNeverFull(t *testing.T) {
	res := fakeResult()
	for _, r := range res.Records.Samples {
		r.Sample.Count = 10
		r.Sample.Bans = nil
	}
	s := Summarize(res)
	if s.FullAfter >= 0 || s.ProbesFull != 0 || s.FirstBan >= 0 || !strings.Contains(s.Line(), "full_after=never") {
		t.Fatalf("%s", s.Line())
	}
}

func TestRowsAndCSV(t *testing.T) {
	res := fakeResult()
	rows := Rows(res)
	if len(rows) != 12 || rows[0].T != -2 || rows[5].FillPct != 100 {
		t.Fatalf("rows: %+v", rows[:6])
	}
	// Every probe lands in exactly one row.
	n := 0
	for _, r := range rows {
		n += r.Probes
	}
	if n != 12 {
		t.Fatalf("rows hold %d probes, want 12", n)
	}
	if rows[7].BansLegit != 1 || rows[7].BansAttack != 1 {
		t.Fatalf("row at 5 s: %+v", rows[7])
	}
	var b bytes.Buffer
	if err := WriteCSV(&b, rows, 4); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&b).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	// header + rows 0,4,8 + rows 1-3 (state or held samples) + last row 11
	if len(recs) != 8 || recs[0][0] != "t_s" {
		t.Fatalf("csv: %v", recs)
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	probes := 0
	for _, r := range recs[1:] {
		n, _ := strconv.Atoi(r[col["probes"]])
		probes += n
	}
	if probes != 12 {
		t.Fatalf("downsampled CSV holds %d probes, want all 12", probes)
	}
	// Held counts only where the monitor walked the table.
	var held []string
	for _, r := range recs[1:] {
		held = append(held, r[col["attack_held"]])
	}
	if got := strings.Join(held, ","); got != ",900,300,0,,," {
		t.Fatalf("attack_held column %q", got)
	}
}

func TestMarkdownTable(t *testing.T) {
	s := Summarize(fakeResult())
	u := Summary{Scenario: "s", Defense: "ctguard", Unavailable: "not yet"}
	md := MarkdownTable([]Summary{s, u})
	if strings.Count(md, "\n") != 4 || !strings.Contains(md, "| s | ctguard | n/a |") {
		t.Fatalf("table:\n%s", md)
	}
	if side := SideBySide([]Summary{s, u}); !strings.Contains(side, "unavailable") || !strings.Contains(side, "ctguard: not yet") {
		t.Fatalf("side by side:\n%s", side)
	}
}

func TestScenariosBounded(t *testing.T) {
	for _, short := range []bool{true, false} {
		for _, sc := range All(short) {
			if sc.Total() <= 0 || sc.Total() > 3*time.Minute || len(sc.Attack) == 0 || (sc.Family != 4 && sc.Family != 6) {
				t.Errorf("%s (short=%v): total %s, %d attack procs, family %d", sc.Name, short, sc.Total(), len(sc.Attack), sc.Family)
			}
			// Forwarded entries are pressure no guard can act on, not attack
			// entries: full-length runs may start from them.
			if !short && sc.Prefill != nil && !IsForwardedPrefill(sc.Prefill) {
				t.Errorf("%s: full-length runs must use live attack traffic only", sc.Name)
			}
		}
	}
	if _, err := Find("nope", true); err == nil {
		t.Fatal("Find accepted an unknown scenario")
	}
}

func TestReadSeriesRoundTrip(t *testing.T) {
	rows := Rows(fakeResult())
	var b bytes.Buffer
	if err := WriteCSV(&b, rows, 1); err != nil {
		t.Fatal(err)
	}
	s, err := ReadSeries(&b, "x")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.T) != len(rows) || s.T[0] != -2 || s.Fill[5] != 100 {
		t.Fatalf("series %+v", s)
	}
	if _, err := ReadSeries(strings.NewReader("a,b\n1,2\n"), "bad"); err == nil {
		t.Fatal("no error for a CSV without the columns")
	}
}

// The keep-alive and SSH measures: watched entries, operator commands
// around the first ban, scoped bans, the CGNAT's and the attack's live
// connections, pressure.
func TestSummarizeExtras(t *testing.T) {
	res := fakeResult()
	res.Scenario.Watch = []string{"198.18.7.10:443", "198.18.7.10:22"}
	res.Scenario.Background = []Proc{{Name: "cgnat", Role: "legit"}, {Name: "operator", Role: "attacker"}}
	res.Records.Progress["cgnat"] = &wire.Progress{Sent: 900, Failed: 3, PeakLive: 1100}
	res.Records.Progress["operator"] = &wire.Progress{Sent: 50}
	res.Records.Progress["bots"].PeakLive = 1200
	at := res.AttackStart
	// X's :443 entries: seen at 0 s, 300 at 1 s, purged from 3 s; its :22
	// entry throughout.
	watch := map[int][]int64{-1: {0, 1}, 0: {10, 1}, 1: {300, 1}, 2: {120, 1}, 3: {0, 1}, 4: {0, 1}}
	for i, r := range res.Records.Samples {
		sec := i - 2
		if w, ok := watch[sec]; ok {
			r.Sample.Watch, r.Sample.WatchSampled = w, true
		}
		if sec == 4 {
			r.Sample.ScopedBans = []string{"198.18.0.1"}
		}
	}
	// One command a second from -2 s; the one at 6 s failed. The first ban
	// is at 4 s: commands at 4..9 s count after it.
	res.Records.Ops = append(res.Records.Ops, wire.Record{Kind: "op", T: at.Add(-3 * time.Second).UnixMilli(), Op: &wire.Op{Login: true, OK: true}})
	for sec := -2; sec <= 9; sec++ {
		op := &wire.Op{Seq: sec + 3, OK: sec != 6}
		if !op.OK {
			op.Err = "no answer within 2s"
		}
		res.Records.Ops = append(res.Records.Ops, wire.Record{Kind: "op", T: at.Add(time.Duration(sec) * time.Second).UnixMilli(), Op: op})
	}
	s := Summarize(res)
	if s.OpLogins != 1 || s.OpLoginsOK != 1 || s.OpCmds != 12 || s.OpOK != 11 || s.OpAfterBan != 6 || s.OpAfterBanOK != 5 || len(s.OpFailures) != 1 {
		t.Fatalf("operator: %+v", s)
	}
	x := s.Watch[0]
	if x.Peak != 300 || x.FirstAt != 0 || x.PeakAt != time.Second || !x.Cleared || x.ClearedAt != 3*time.Second || x.End != 0 || x.Walks != 6 {
		t.Fatalf("watch X:443: %+v", x)
	}
	if ssh := s.Watch[1]; ssh.Peak != 1 || ssh.FirstAt != -time.Second || ssh.Cleared || ssh.End != 1 {
		t.Fatalf("watch X:22: %+v", ssh)
	}
	if strings.Join(s.ScopedBans, ",") != "198.18.0.1" || strings.Join(s.Bans, ",") != "198.18.0.1,203.0.113.10" || s.FirstBanAny != 4*time.Second {
		t.Fatalf("bans: %v scoped %v first %s", s.Bans, s.ScopedBans, s.FirstBanAny)
	}
	if s.CGNATPeakLive != 1100 || s.CGNATSent != 900 || s.CGNATFailed != 3 || s.LegitSent != 900 || s.LegitFailed != 3 || s.AttackPeakLive != 1200 {
		t.Fatalf("live connections: %+v", s)
	}
	// Half of max from -2 s on (500 of 1000).
	if !s.Pressured || s.PressureAt != -2*time.Second {
		t.Fatalf("pressure at %s (%v)", s.PressureAt, s.Pressured)
	}
	line := s.Line()
	for _, want := range []string{"operator_ok=11/12", "operator_ok_after_ban=5/6", "cgnat_peak_live=1100", "scoped_bans=[198.18.0.1]",
		"watch[198.18.7.10:443]=first at 0.0s, peak 300 at 1.0s, cleared at 3.0s, end 0"} {
		if !strings.Contains(line, want) {
			t.Errorf("summary line %q lacks %q", line, want)
		}
	}
	if plain := Summarize(fakeResult()); plain.Extras() != "" {
		t.Errorf("a plain run has extras %q", plain.Extras())
	}
}

func TestForwardedPrefillOnly(t *testing.T) {
	for _, short := range []bool{true, false} {
		for _, name := range []string{"keepalive", "ssh-trick"} {
			sc, err := Find(name, short)
			if err != nil {
				t.Fatal(err)
			}
			if sc.Prefill != nil && !IsForwardedPrefill(sc.Prefill) {
				t.Errorf("%s (short=%v): its prefill must be forwarded entries, which no guard attributes", name, short)
			}
		}
	}
	if Classify(topo.FwdSrcV4.Addr().Next().String()) != "other" || Classify(topo.FwdDstV4.Addr().String()) != "other" {
		t.Error("the forwarded range must be neither attack nor legit")
	}
	if Classify(topo.CGNATV4.String()) != "legit" || Classify(topo.SSHTrickX.String()) != "attack" {
		t.Error("the CGNAT must be legit, X an attacker")
	}
}

// TestApacheVariant: the Apache variant of a scenario sends the attack and
// HTTP probes to Apache's port, never to the lab server's, and keeps the
// rest of the scenario.
func TestApacheVariant(t *testing.T) {
	names := map[string]bool{}
	for _, sc := range All(true) {
		if names[sc.Name] {
			t.Errorf("two scenarios named %s", sc.Name)
		}
		names[sc.Name] = true
	}
	for _, n := range ApacheScenarios {
		if !names["apache-"+n] {
			t.Errorf("no Apache variant of %s", n)
		}
	}
	base, err := Find("crowd-nat", true)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := Find("apache-crowd-nat", true)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(sc.ServerArgs, " "); got != "--tcp-ports 22,443" {
		t.Errorf("lab server flags %q, want it off Apache's port", got)
	}
	if got := strings.Join(withoutPort([]string{"--max-conns", "9", "--tcp-ports", "80,443"}, ApachePort), " "); got != "--max-conns 9 --tcp-ports 443" {
		t.Errorf("withoutPort: %q", got)
	}
	if !sc.Apache || sc.AttackFor != max(base.AttackFor, 25*time.Second) || len(sc.Attack) != len(base.Attack) {
		t.Fatalf("variant %+v of %+v", sc, base)
	}
	apache4, apache6 := fmt.Sprintf("%s:%d", topo.VictimV4, ApachePort), fmt.Sprintf("[%s]:%d", topo.VictimV6, ApachePort)
	for _, p := range sc.Attack {
		args := strings.Join(p.Args, " ")
		if strings.Contains(args, ":443") || !(strings.Contains(args, apache4) || strings.Contains(args, apache6)) {
			t.Errorf("%s: %s, want Apache's port", p.Name, args)
		}
		if !strings.Contains(args, "--http") {
			t.Errorf("%s: the crowd must speak HTTP to Apache: %s", p.Name, args)
		}
	}
	v6, err := Find("apache-bots-v6", true)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range legitProcs(v6) {
		args := strings.Join(p.Args, " ")
		if p.Name == "probes" && (!strings.Contains(args, "--http") || !strings.Contains(args, apache6)) {
			t.Errorf("probes: %s, want HTTP to %s", args, apache6)
		}
		if p.Name != "probes" && strings.Contains(args, "--http") {
			t.Errorf("%s: %s, the rest of the background stays on the lab server", p.Name, args)
		}
	}
	if v6.Prefill != nil {
		t.Errorf("prefill %+v: the live bots must meet Apache", v6.Prefill)
	}
}

// TestCtguardVariantConfigs: each ctguard defense's config loads, keeps
// the defaults, and turns off exactly the feature its name says.
func TestCtguardVariantConfigs(t *testing.T) {
	for name, v := range ctguardVariants {
		args, err := ctguardConfig(t.TempDir(), v.extra)
		if err != nil || len(args) != 2 {
			t.Fatalf("%s: %v %v", name, args, err)
		}
		c, err := config.Load(args[1])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := config.Default().Daemon
		want.CloseSockets = name != "ctguard-noclose"
		want.WatchListeners = name != "ctguard-nowatch"
		if c.Daemon.CloseSockets != want.CloseSockets || c.Daemon.WatchListeners != want.WatchListeners || c.Daemon.Interval != want.Interval {
			t.Errorf("%s: close_sockets %v, watch_listeners %v, intervals %v", name, c.Daemon.CloseSockets, c.Daemon.WatchListeners, c.Daemon.Interval)
		}
	}
}

// TestDefensesAsked: ctguard-ipset runs only when named, and never under
// the Apache variants; naming nothing keeps every scenario's own set.
func TestDefensesAsked(t *testing.T) {
	bots, err := Find("bots-v4", true)
	if err != nil {
		t.Fatal(err)
	}
	apache, err := Find("apache-bots-v4", true)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		sc    Scenario
		asked []string
		want  string
	}{
		{bots, nil, "none baseline meter ctguard"},
		{bots, []string{"ctguard-ipset"}, "ctguard-ipset"},
		{bots, []string{"ctguard-ipset", "none"}, "none ctguard-ipset"},
		{apache, []string{"ctguard-ipset"}, ""},
		{apache, nil, "none ctguard-noclose ctguard-nowatch ctguard"},
	} {
		if got := strings.Join(DefensesAsked(c.sc, c.asked), " "); got != c.want {
			t.Errorf("%s asked %v: got %q, want %q", c.sc.Name, c.asked, got, c.want)
		}
	}
}

// TestCtguardIPSetPrepare: the ipset defense's config asks for the ipset
// backend and keeps the defaults, and its PATH finds the legacy iptables
// tools under the names ctguard calls.
func TestCtguardIPSetPrepare(t *testing.T) {
	tools := map[string]string{}
	for plain, legacy := range legacyToolNames {
		tools[plain] = "/usr/sbin/" + legacy
	}
	dir := t.TempDir()
	if err := linkTools(filepath.Join(dir, "bin"), tools); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"iptables-restore", "ip6tables-save"} {
		got, err := os.Readlink(filepath.Join(dir, "bin", name))
		if want := "/usr/sbin/" + legacyToolNames[name]; err != nil || got != want {
			t.Errorf("%s -> %q (%v), want %s", name, got, err, want)
		}
	}
	env := LegacyPATH(dir)
	if len(env) != 1 || !strings.HasPrefix(env[0], "PATH="+filepath.Join(dir, "bin")+":") {
		t.Errorf("env %v: want the tools' directory first on PATH", env)
	}
	args, err := ctguardConfig(dir, "", "[enforce]\nbackend = \"ipset\"\n")
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(args[1])
	if err != nil {
		t.Fatal(err)
	}
	if c.Enforce.Backend != "ipset" || c.Daemon.Interval != config.Default().Daemon.Interval || !c.Daemon.CloseSockets {
		t.Errorf("backend %q, intervals %v, close_sockets %v: want ipset and the defaults", c.Enforce.Backend, c.Daemon.Interval, c.Daemon.CloseSockets)
	}
	want := "ctguard-ban4 ctguard-net4 ctguard-ban6 ctguard-net6 ctguard-ban4-but-ssh ctguard-net4-but-ssh ctguard-ban6-but-ssh ctguard-net6-but-ssh"
	if got := strings.Join(CtguardIPSets(), " "); got != want {
		t.Errorf("ctguard's ipsets %s, want %s", got, want)
	}
}

// TestContainerScenario: the container scenario publishes the server from
// the container, and its short version's prefilled entries are DNAT'ed
// there as the live bots' are, and already silent for a while.
func TestContainerScenario(t *testing.T) {
	sc, err := Find("container", true)
	if err != nil {
		t.Fatal(err)
	}
	if !sc.Container || sc.Prefill == nil {
		t.Fatalf("container %v, prefill %v", sc.Container, sc.Prefill)
	}
	args := strings.Join(sc.Prefill.Args, " ")
	if !strings.Contains(args, "--reply-src 198.51.100.18:443") || !strings.Contains(args, "--dst 198.51.100.2:443") || !strings.Contains(args, "--idle 5m") {
		t.Errorf("prefill %s: want entries to the victim's :443 answered by the container's, silent for a while", args)
	}
	if full, _ := Find("container", false); full.Prefill != nil || !full.Container {
		t.Errorf("full-length container scenario: prefill %v, container %v", full.Prefill, full.Container)
	}
}
