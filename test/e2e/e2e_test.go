// Package e2e_test runs the attack lab's scenarios as tests: each builds a
// fresh namespace topology, attacks the victim and asserts on the summary,
// including that the undefended run fails the way the kernel makes it fail
// (a table full of ESTABLISHED+ASSURED entries drops new connections, while
// flood entries are early-dropped). They need root, nft, conntrack, ipset and iptables (and
// openssh-server for the SSH scenario); under CI=true they fail instead of
// skipping. `go test -short` skips them.
// CTGLAB_FULL=1 runs the full-length scenarios (make lab-test).
package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/config"
	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/testutil"
	"github.com/ctguard/ctguard/test/e2e/lab"
	"github.com/ctguard/ctguard/test/e2e/topo"
)

var tools = []string{"ip", "nft", "conntrack", "ipset", "iptables", "ip6tables", "ss"}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// build builds the lab binary and ctguard once per test process (without
// -race: the lab binary is the traffic generator and must be fast).
func build(t *testing.T) (lab, ctguard string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "ctglab-bin-")
		if buildErr != nil {
			return
		}
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(gobin); err != nil {
			gobin = "go"
		}
		for name, pkg := range map[string]string{"ctglab": "./cmd/ctglab", "ctguard": "../../cmd/ctguard"} {
			cmd := exec.Command(gobin, "build", "-o", filepath.Join(binDir, name), pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %v: %s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "ctglab"), filepath.Join(binDir, "ctguard")
}

func labBin(t *testing.T) string {
	l, _ := build(t)
	return l
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func full() bool { return os.Getenv("CTGLAB_FULL") == "1" }

func needLab(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("attack scenarios take minutes; run without -short")
	}
	testutil.RequireRoot(t, tools...)
}

// needFullLab is needLab for the checks of the lab itself rather than of
// ctguard: how the kernel fails undefended, and what the cron-script
// method does. They run with full-length scenarios in `make lab-test`
// (CTGLAB_FULL=1) and are skipped in `make test`, which keeps one
// undefended run and the cron-script checks that ctguard's tests compare
// with, so that CI stays within its time budget.
func needFullLab(t *testing.T) {
	t.Helper()
	needLab(t)
	if !full() {
		t.Skip("a check of the lab, not of ctguard: runs with full-length scenarios in make lab-test (CTGLAB_FULL=1)")
	}
}

func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// lockedBuffer collects a defense's log from the runner's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// Tail is the last n bytes of the log.
func (l *lockedBuffer) Tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.b.Bytes()
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func runScenario(t *testing.T, name, defense string) lab.Summary {
	t.Helper()
	return runScenarioWith(t, name, defense, nil)
}

// runScenarioWith runs a scenario changed by mod (nil: as defined).
func runScenarioWith(t *testing.T, name, defense string, mod func(*lab.Scenario)) lab.Summary {
	t.Helper()
	s, _ := runSpec(t, name, defense, spec{mod: mod})
	return s
}

// spec changes a run: the scenario (mod), and what to look at in the
// victim right after the attack stops (during; dir is the defense's
// private directory, "" without one).
type spec struct {
	mod    func(*lab.Scenario)
	during func(ctx context.Context, tp *topo.Topology, dir string) error
	// inAttack starts with the attack (lab.Options.InAttack).
	inAttack func(ctx context.Context, tp *topo.Topology) error
}

// runSpec runs a scenario under a defense and returns its summary and the
// defense's whole log.
func runSpec(t *testing.T, name, defense string, sp spec) (lab.Summary, string) {
	t.Helper()
	sc, err := lab.Find(name, !full())
	if err != nil {
		t.Fatal(err)
	}
	if sp.mod != nil {
		sp.mod(&sc)
	}
	_, ctguardBin := build(t)
	def, err := lab.NewDefense(context.Background(), defense, sc, ctguardBin)
	if errors.Is(err, lab.ErrUnavailable) && !testutil.InCI() && defense == "ctguard-ipset" {
		t.Skip(err) // no legacy iptables tools here
	}
	if err != nil {
		t.Fatal(err)
	}
	dir := ""
	if prep := def.Prepare; prep != nil {
		// The runner calls Prepare before the attack and During after it,
		// on the same goroutine.
		def.Prepare = func(d string) ([]string, error) { dir = d; return prep(d) }
	}
	opt := lab.Options{LabBin: labBin(t), Log: logger(t)}
	if sp.during != nil {
		opt.During = func(ctx context.Context, tp *topo.Topology) error { return sp.during(ctx, tp, dir) }
	}
	opt.InAttack = sp.inAttack
	ctx, cancel := context.WithTimeout(context.Background(), sc.Total()+90*time.Second)
	defer cancel()
	// ctguard's own log is shown when the test fails: its decisions (or
	// their absence) are what a failure is about.
	var defLog lockedBuffer
	t.Cleanup(func() {
		if (t.Failed() || os.Getenv("CTGLAB_DEFENSE_LOG") != "") && defLog.Len() > 0 {
			t.Logf("%s's log (last 20,000 bytes):\n%s", defense, defLog.Tail(20000))
		}
	})
	opt.DefenseLog = &defLog
	started := time.Now()
	res, err := lab.Run(ctx, sc, def, opt)
	if err != nil {
		t.Fatal(err)
	}
	s := res.Summary
	t.Logf("%s (run %.0fs)", s.Line(), time.Since(started).Seconds())
	if !s.Tracked {
		t.Fatal("conntrack held no entries: the victim's stateful ruleset did not switch tracking on")
	}
	if s.Probes < int(sc.Total()/(250*time.Millisecond))/2 {
		t.Fatalf("only %d probes in %s: the probe generator did not run", s.Probes, sc.Total())
	}
	return s, defLog.Tail(1 << 30)
}

func rate(ok, n int) float64 { return lab.ProbeRate(ok, n) }

// needFull fails a run whose table never filled, and says whether that is
// because the generator could not make enough connections (a machine too
// loaded to run the attack: inconclusive, not a pass) or despite them.
func needFull(t *testing.T, s lab.Summary) {
	t.Helper()
	if s.FullAfter >= 0 {
		return
	}
	if s.AttackSent+s.Prefilled < s.Max {
		t.Fatalf("table never full (peak %.1f%%), but the generator made only %d connections (+%d prefilled) for a %d-entry table: the machine was too loaded to run this attack, result inconclusive",
			s.PeakPct, s.AttackSent, s.Prefilled, s.Max)
	}
	t.Fatalf("table never full (peak %.1f%%) although %d connections (+%d prefilled) were made: the attack should fill it", s.PeakPct, s.AttackSent, s.Prefilled)
}

// The incident's attack without a defense: the table fills with unevictable
// ESTABLISHED entries and new connections fail while it is full.
func TestSilentBotsV4Undefended(t *testing.T) {
	needLab(t)
	s := runScenario(t, "bots-v4", "none")
	needFull(t, s)
	if s.ProbesFull < 8 {
		t.Fatalf("only %d probes while full", s.ProbesFull)
	}
	if r := rate(s.ProbesFullOK, s.ProbesFull); r > 20 {
		t.Fatalf("%.0f%% of probes succeeded while full, want <= 20%%: ESTABLISHED+ASSURED entries cannot be early-dropped", r)
	}
	if s.Drop == 0 {
		t.Fatal("kernel counted no drops while the table was full")
	}
}

func TestSilentBotsV6Undefended(t *testing.T) {
	needFullLab(t)
	s := runScenario(t, "bots-v6", "none")
	needFull(t, s)
	if r := rate(s.ProbesFullOK, s.ProbesFull); s.ProbesFull < 8 || r > 20 {
		t.Fatalf("probes while full: %d/%d ok, want many probes and <= 20%% ok", s.ProbesFullOK, s.ProbesFull)
	}
}

// Floods fill the table too, but their entries are not ASSURED: early_drop
// makes room and legit connections keep working.
func TestFloodsUndefended(t *testing.T) {
	needFullLab(t)
	for _, name := range []string{"syn-flood", "udp-flood"} {
		t.Run(name, func(t *testing.T) {
			s := runScenario(t, name, "none")
			if s.FullAfter < 0 {
				t.Fatalf("table never full (peak %.1f%%): the flood should fill it", s.PeakPct)
			}
			if s.EarlyDrop == 0 {
				t.Fatal("no early drops while full")
			}
			if r := rate(s.ProbesFullOK, s.ProbesFull); s.ProbesFull < 8 || r < 90 {
				t.Fatalf("probes while full: %d/%d ok, want >= 90%%: flood entries are evictable", s.ProbesFullOK, s.ProbesFull)
			}
		})
	}
}

// The cron-script method against the incident's attack: it bans attackers, but one
// source at a time with a conntrack -D each, so it falls behind rotating bots.
func TestSilentBotsV4Baseline(t *testing.T) {
	needLab(t)
	s := runScenario(t, "bots-v4", "baseline")
	if s.AttackBans == 0 || s.FirstBan < 0 || s.FirstBan > 15*time.Second {
		t.Fatalf("baseline banned %d attackers, first after %s: want bans within 15 s", s.AttackBans, s.FirstBan)
	}
	// 1500 sources rotate through; one scan cannot ban them all in time.
	if s.AttackBans >= 1500 {
		t.Fatalf("baseline banned all %d sources: the rotating attack should outrun it", s.AttackBans)
	}
}

// The cron-script method bans NAT gateways: 60 live users behind one address
// are more than 30 entries. Undefended, the bots' entries never go away.
func TestNATFalsePositives(t *testing.T) {
	needFullLab(t)
	t.Run("none", func(t *testing.T) {
		s := runScenario(t, "nat-false-positive", "none")
		if s.Peak < 15000 {
			t.Fatalf("peak %d entries, want the bots' 15000 to stay", s.Peak)
		}
	})
	t.Run("baseline", func(t *testing.T) {
		s := runScenario(t, "nat-false-positive", "baseline")
		if s.AttackBans < 40 {
			t.Fatalf("baseline banned %d of 50 bots, want most", s.AttackBans)
		}
		if s.FalseBans < 2 {
			t.Fatalf("false bans %v: the cron-script method's threshold of 30 should ban both NAT gateways", s.FalseBanList)
		}
	})
}

// ctguard with its defaults against the incident's attack and next to
// the NAT gateways: it must keep the table from filling and legit
// connections working, and must not ban the gateways.
func TestCtguardDefaults(t *testing.T) {
	needLab(t)
	// bots-v4 is the incident's attack at the lab's fastest rate; bots-spread
	// the same dealt over 256 /24s, so no single prefix ban ends it.
	for _, sc := range []string{"bots-v4", "bots-spread"} {
		t.Run(sc, func(t *testing.T) {
			s := runScenario(t, sc, "ctguard")
			// The user's question is whether the server stays up. The short
			// versions start from a prefilled table (76 %); full-length runs
			// peak at 11-29 %. A full table for a moment on a loaded CI
			// machine is tolerated, a lasting one is not.
			if s.FullFor > 3*time.Second {
				t.Errorf("table full for %s under ctguard (first full after %s)", s.FullFor, s.FullAfter)
			}
			if r := rate(s.ProbesOK, s.Probes); r < 95 {
				t.Errorf("%.1f%% of probes ok under ctguard, want >= 95%%", r)
			}
			if s.AttackBans == 0 || s.FalseBans != 0 {
				t.Errorf("ctguard banned %d attack ranges and %d legit ones %v", s.AttackBans, s.FalseBans, s.FalseBanList)
			}
		})
	}
	t.Run("nat-false-positive", func(t *testing.T) {
		s := runScenario(t, "nat-false-positive", "ctguard")
		if s.FalseBans != 0 {
			t.Errorf("ctguard banned legit sources %v", s.FalseBanList)
		}
		if s.AttackBans == 0 {
			t.Error("ctguard banned none of the bots")
		}
	})
}

// Distributed low-and-slow: every source stays under the threshold, so the
// cron-script method bans nobody and the table fills as if undefended.
func TestLowAndSlowBaseline(t *testing.T) {
	needFullLab(t)
	s := runScenario(t, "low-and-slow", "baseline")
	if s.AttackBans != 0 {
		t.Fatalf("baseline banned %d low-and-slow sources; each holds only 28 entries", s.AttackBans)
	}
	needFull(t, s)
	// Looser than for the concentrated bots: the baseline's bans of the NAT
	// gateways and its deletes free a few slots that probes sometimes win.
	if r := rate(s.ProbesFullOK, s.ProbesFull); s.ProbesFull < 8 || r > 50 {
		t.Fatalf("probes while full: %d/%d ok, want <= 50%%", s.ProbesFullOK, s.ProbesFull)
	}
}

// TCP_DEFER_ACCEPT: a silent bot's connection stays SYN_RECV on the server
// (it never reaches accept) while conntrack already says ESTABLISHED.
func TestDeferAcceptMismatch(t *testing.T) {
	needLab(t)
	sc := lab.Scenario{
		Name: "mismatch", Family: 4, Warmup: time.Second, AttackFor: 3 * time.Second, Tail: time.Second,
		Attack: []lab.Proc{{Name: "bots", Role: topo.Attacker, Args: []string{"bots", "--src", topo.BotV4.String(),
			"--n", "20", "--per-source", "10", "--active", "4", "--rate", "500", "--dst", topo.VictimV4.String() + ":443"}}},
	}
	var synRecv, ssEstab, ctEstab int
	during := func(ctx context.Context, tp *topo.Topology) error {
		ss, err := tp.Output(ctx, topo.Victim, "ss", "-Htn", "state", "syn-recv", "( sport = :443 )")
		if err != nil {
			return err
		}
		synRecv = countLines(ss, "198.18.")
		ss, err = tp.Output(ctx, topo.Victim, "ss", "-Htn", "state", "established", "( sport = :443 )")
		if err != nil {
			return err
		}
		ssEstab = countLines(ss, "198.18.")
		ct, err := tp.Output(ctx, topo.Victim, "conntrack", "-L", "-p", "tcp", "--dport", "443", "--state", "ESTABLISHED")
		if err != nil {
			return err
		}
		ctEstab = countLines(ct, "src=198.18.")
		return nil
	}
	res, err := lab.Run(context.Background(), sc, lab.Defense{Name: "none"},
		lab.Options{LabBin: labBin(t), Log: logger(t), During: during})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("bots: server SYN_RECV %d, server ESTABLISHED %d, conntrack ESTABLISHED %d; %s", synRecv, ssEstab, ctEstab, res.Summary.Line())
	if ctEstab < 190 {
		t.Fatalf("conntrack holds %d ESTABLISHED bot flows, want ~200", ctEstab)
	}
	if synRecv < 190 {
		t.Fatalf("server holds %d bot sockets in SYN_RECV, want ~200 (TCP_DEFER_ACCEPT)", synRecv)
	}
	if ssEstab != 0 {
		t.Fatalf("server has %d ESTABLISHED bot sockets, want 0", ssEstab)
	}
}

func countLines(out, substr string) int {
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// The cleanup command removes only recorded lab namespaces of dead runs.
func TestCleanupRemovesOnlyRecorded(t *testing.T) {
	needLab(t)
	dir := t.TempDir()
	name := topo.NamePrefix + "cleanup-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	foreign := testutil.NewNS(t) // not recorded: must survive
	// A record of a dead run (pid 1 is alive, so use an impossible pid).
	rec := filepath.Join(dir, "999999999-1.ns")
	if err := os.WriteFile(rec, []byte(name+"\n"+foreign.Name+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	removed, err := topo.Cleanup(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != name {
		t.Fatalf("removed %v, want only %s", removed, name)
	}
	if _, err := os.Stat("/run/netns/" + foreign.Name); err != nil {
		t.Fatalf("foreign namespace %s was removed", foreign.Name)
	}
	if _, err := os.Stat(rec); err == nil {
		t.Fatal("record file kept")
	}
}

// The incident's attack at the incident's rate (200 new connections/s, bots of 300
// silent connections, 4 active at a time): undefended the bots' entries
// pile up; ctguard bans each bot early, so the bots never hold 1,500 entries
// at once and every probe works. The same over IPv6 (one /64 per bot).
func TestIncidentRate(t *testing.T) {
	needLab(t)
	none := runScenario(t, "bots-incident", "none")
	// 30 s at 200/s is 6,000 silent entries, all still held.
	if none.PeakAttackHeld < 4000 {
		t.Errorf("undefended, the bots held at most %d entries: want the ~6,000 they made", none.PeakAttackHeld)
	}
	for _, sc := range []string{"bots-incident", "bots-incident-v6"} {
		guarded := runScenario(t, sc, "ctguard")
		if guarded.PeakAttackHeld < 0 || guarded.PeakAttackHeld >= 1500 {
			t.Errorf("%s: under ctguard the bots held up to %d entries, want < 1,500", sc, guarded.PeakAttackHeld)
		}
		if guarded.FirstBan < 0 || guarded.FirstBan > 10*time.Second {
			t.Errorf("%s: first ban after %s, want within 10 s", sc, guarded.FirstBan)
		}
		if r := rate(guarded.ProbesOK, guarded.Probes); r < 99.9 {
			t.Errorf("%s: %.1f%% of probes ok under ctguard, want >= 99.9%%", sc, r)
		}
		if guarded.FalseBans != 0 {
			t.Errorf("%s: false bans %v", sc, guarded.FalseBanList)
		}
	}
}

// No attack at all, only a crowd of thousands of clients and two NAT
// gateways with 60 live users each: ctguard must ban nobody, while the
// cron-script method bans the gateways.
func TestCrowdAndNATNoBans(t *testing.T) {
	needLab(t)
	base := runScenario(t, "crowd-nat", "baseline")
	if base.FalseBans < 2 {
		t.Errorf("the cron-script method banned %v: expected both NAT gateways", base.FalseBanList)
	}
	guarded := runScenario(t, "crowd-nat", "ctguard")
	if guarded.FalseBans != 0 || guarded.AttackBans != 0 || guarded.OtherBans != 0 {
		t.Errorf("ctguard banned %d legit (%v) and %d others with no attack running", guarded.FalseBans, guarded.FalseBanList, guarded.OtherBans)
	}
	if guarded.LegitSent == 0 || guarded.LegitFailed*100 > guarded.LegitSent {
		t.Errorf("under ctguard %d of %d legit client requests failed, want under 1%%", guarded.LegitFailed, guarded.LegitSent+guarded.LegitFailed)
	}
	// The in-kernel ct count meter bans nobody, but drops the new
	// connections of the NAT gateways' users beyond its limit of 30.
	meter := runScenario(t, "crowd-nat", "meter")
	if meter.LegitFailed*50 < meter.LegitSent {
		t.Errorf("under the ct count meter only %d of %d legit requests failed: expected the NAT users over 30 to fail", meter.LegitFailed, meter.LegitSent+meter.LegitFailed)
	}
}

// banned says whether any ban covers a.
func banned(bans []string, a netip.Addr) bool {
	for _, b := range bans {
		p, err := netip.ParsePrefix(b)
		if err != nil {
			if x, err := netip.ParseAddr(b); err == nil {
				p = netip.PrefixFrom(x.Unmap(), x.Unmap().BitLen())
			} else {
				continue
			}
		}
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Keep-alive bots: every connection stays open, sends a line every 20 s and
// is answered by the server, so each entry is ESTABLISHED, active and has a
// served socket behind it. Undefended they fill the table like the silent
// bots, while a carrier-grade NAT (one address, 400 users growing to 1,100)
// keeps more live connections than any bot.
func TestKeepAliveUndefended(t *testing.T) {
	needLab(t)
	// The short run's generator makes 44,000-60,000 connections on a loaded
	// machine; undefended, a larger head start of forwarded entries lets it
	// show the fill every time (the ctguard test keeps the scenario's).
	s := runScenarioWith(t, "keepalive", "none", func(sc *lab.Scenario) {
		if sc.Prefill != nil && lab.IsForwardedPrefill(sc.Prefill) {
			sc.Prefill = lab.ForwardedPrefill(235000)
		}
	})
	needFull(t, s)
	// Looser than for the silent bots (0-7% in most runs here, 28% once):
	// the legit clients' own closing connections and the end of the attack
	// free a few slots now and then, and probes win some of them.
	if r := rate(s.ProbesFullOK, s.ProbesFull); s.ProbesFull < 8 || r > 50 {
		t.Errorf("probes while full: %d/%d ok, want many probes and <= 50%% ok", s.ProbesFullOK, s.ProbesFull)
	}
	// The bots' entries are their open connections, not leftovers.
	if s.AttackPeakLive < s.AttackSent*9/10 || (s.PeakAttackHeld > 0 && s.AttackPeakLive < s.PeakAttackHeld*9/10) {
		t.Errorf("the bots held at most %d connections open of %d made (%d entries held): want nearly all kept alive",
			s.AttackPeakLive, s.AttackSent, s.PeakAttackHeld)
	}
	if s.CGNATPeakLive < 400 {
		t.Errorf("the CGNAT held at most %d live connections, want at least its 400 starting users", s.CGNATPeakLive)
	}
}

// ctguard against keep-alive bots next to a carrier-grade NAT: the table
// never fills, every probe works, and no legit address is banned (the CGNAT
// above all: it holds more live connections than any bot).
func TestKeepAliveCtguard(t *testing.T) {
	needLab(t)
	s := runScenario(t, "keepalive", "ctguard")
	if s.FullAfter >= 0 {
		t.Errorf("table full after %s under ctguard (full for %s)", s.FullAfter, s.FullFor)
	}
	if s.ProbesOK != s.Probes {
		t.Errorf("%d of %d probes failed under ctguard, want none", s.Probes-s.ProbesOK, s.Probes)
	}
	if s.FalseBans != 0 {
		t.Errorf("ctguard banned legit sources %v", s.FalseBanList)
	}
	if banned(s.Bans, topo.CGNATV4) {
		t.Errorf("ctguard banned the carrier-grade NAT %s (%d live connections at most, %d of %d requests failed)",
			topo.CGNATV4, s.CGNATPeakLive, s.CGNATFailed, s.CGNATSent+s.CGNATFailed)
	}
	if s.AttackBans == 0 {
		t.Error("ctguard banned none of the keep-alive bots")
	}
}

// scanInterval is ctguard's default scan interval at the pressure level of
// a fill (the unevictable part of the table; here the peak fill).
func scanInterval(fill float64) time.Duration {
	pc, iv := policy.Default(), config.Default().Daemon.Interval
	switch {
	case fill >= pc.CriticalFill:
		return iv[policy.Critical]
	case fill >= pc.HighFill:
		return iv[policy.High]
	case fill >= pc.ElevatedFill:
		return iv[policy.Elevated]
	}
	return iv[policy.Calm]
}

// The SSH trick: X holds a pre-auth connection to a real sshd (so it is an
// SSH peer) while it and nine neighbours of its /24 run silent bots, and the
// operator keeps a real SSH session from the same /24. Undefended, the
// operator's commands all work and X's entries stay.
func TestSSHTrickUndefended(t *testing.T) {
	needLab(t)
	needSSHD(t)
	s := runScenario(t, "ssh-trick", "none")
	checkOperator(t, s, false)
	x := s.Watch[0]
	if x.Peak < 250 || x.Cleared {
		t.Errorf("X's :443 entries: peak %d, cleared %v: want its ~300 silent connections held", x.Peak, x.Cleared)
	}
	if pre := s.Watch[1]; pre.End < 1 {
		t.Errorf("X holds %d connections to sshd at the end, want its pre-auth one", pre.End)
	}
}

// needSSHD skips (fails under CI=true) without Debian's openssh-server,
// which .ci/run installs.
func needSSHD(t *testing.T) {
	t.Helper()
	if err := lab.SSHDAvailable(); err != nil {
		if testutil.InCI() {
			t.Fatalf("%v (CI=true: refusing to skip)", err)
		}
		t.Skip(err)
	}
}

// checkOperator: the operator logged in once, ran a command a second and
// every one was answered within 2 s (after the bans too, if afterBans).
func checkOperator(t *testing.T, s lab.Summary, afterBans bool) {
	t.Helper()
	if s.OpLogins != 1 || s.OpLoginsOK != 1 {
		t.Errorf("operator logged in %d of %d times, want once for the whole run", s.OpLoginsOK, s.OpLogins)
	}
	if s.OpCmds < 15 || s.OpOK != s.OpCmds {
		t.Errorf("operator commands ok %d of %d, want all (and one a second); first failures %v", s.OpOK, s.OpCmds, s.OpFailures)
	}
	if afterBans && (s.OpAfterBan < 5 || s.OpAfterBanOK != s.OpAfterBan) {
		t.Errorf("operator commands after the first ban: ok %d of %d, want all of at least 5", s.OpAfterBanOK, s.OpAfterBan)
	}
}

// ctguard against the SSH trick: X's :443 entries are purged within two
// scan intervals of pressure, the /24 gets a ban scoped to everything but
// SSH, and the operator's session from that /24 works throughout.
func TestSSHTrickCtguard(t *testing.T) {
	needLab(t)
	needSSHD(t)
	s := runScenario(t, "ssh-trick", "ctguard")
	checkOperator(t, s, true)
	x := s.Watch[0]
	if x.Peak == 0 {
		t.Fatalf("the monitor never saw X's :443 entries")
	}
	if !s.Pressured {
		t.Fatalf("the table never reached %.0f%% (peak %.1f%%): no pressure", 100*lab.PressureFill, s.PeakPct)
	}
	ref := max(s.PressureAt, x.FirstAt)
	// Two of ctguard's scan intervals at the run's pressure, counted from
	// when X's entries can first be judged (a silent connection is an
	// orphan once it has been quiet snapshot.DefaultOrphanMinAge, 2 s), plus
	// 1 s for the monitor's resolution (a table read every 500 ms) and the
	// purge itself on a loaded CI machine. Measured 2.3 s at full length,
	// 3.5-5.7 s in the short version under the whole test suite.
	bound := 2*time.Second + 2*scanInterval(s.PeakPct/100) + time.Second
	switch {
	case !x.Cleared:
		t.Errorf("X's :443 entries were never purged (peak %d at %.1fs, %d at the end)", x.Peak, x.PeakAt.Seconds(), x.End)
	case x.ClearedAt-ref > bound:
		t.Errorf("X's :443 entries purged %.1fs after pressure and their arrival (%.1fs), want within %s", (x.ClearedAt - ref).Seconds(), ref.Seconds(), bound)
	}
	scoped := false
	for _, b := range s.ScopedBans {
		if p, err := netip.ParsePrefix(b); err == nil && p.Bits() <= 24 && p.Contains(topo.SSHTrickX) && p.Contains(topo.OperatorV4) {
			scoped = true
		}
	}
	if !scoped {
		t.Errorf("no scoped ban of X's /24 (%s): scoped bans %v, all bans %v", topo.SSHNetV4, s.ScopedBans, s.Bans)
	}
	if s.FalseBans != 0 {
		t.Errorf("false bans %v", s.FalseBanList)
	}
}

// needApache fails under CI and skips elsewhere when Apache is missing
// (Debian: apache2, which .ci/run installs).
func needApache(t *testing.T) {
	t.Helper()
	if err := lab.ApacheAvailable(); err != nil {
		if testutil.InCI() {
			t.Fatalf("%v (CI=true: refusing to skip)", err)
		}
		t.Skip(err)
	}
}

// The fastest silent bots against a real Apache with Debian's default
// limits: each bot connection Apache accepted holds one of its 150
// workers until its request timeout (20-40 s), whatever the firewall does
// afterwards. ctguard's ban closes those connections, so Apache answers
// nearly every probe over the run, v4 and v6.
func TestApacheBotsCtguard(t *testing.T) {
	needLab(t)
	needApache(t)
	for _, name := range []string{"apache-bots-v4", "apache-bots-v6"} {
		t.Run(name, func(t *testing.T) {
			s := runScenario(t, name, "ctguard")
			if !s.Apache {
				t.Fatal("the run had no Apache")
			}
			// Without socket closing Apache answered 10-31 % (RESULTS.md);
			// with it 100 % here, and 97 % once on a noisy CI machine.
			if s.Probes == 0 || s.ProbesOK*100 < s.Probes*93 {
				t.Errorf("Apache answered %d of %d probes under ctguard, want at least 93%% (Apache reached MaxRequestWorkers %d times); failed probes: %v",
					s.ProbesOK, s.Probes, s.ApacheWorkersFull, s.ProbeFailures)
			}
			if s.AttackBans == 0 {
				t.Error("ctguard banned none of the bots")
			}
			if s.FalseBans != 0 {
				t.Errorf("ctguard banned legit sources %v", s.FalseBanList)
			}
		})
	}
}

// ctguard on its ipset + iptables backend, on a victim whose firewall is
// iptables-legacy (no nftables ruleset at all), with the legacy tools
// first on ctguard's PATH as on such a host: the same guarantees as on
// nftables (TestCtguardDefaults), and status says which backend is in use.
// bots-v4 exercises hash:ip, bots-v6 the IPv6 sets and ip6tables.
func TestSilentBotsIPSetBackend(t *testing.T) {
	needLab(t)
	_, ctguardBin := build(t)
	for _, name := range []string{"bots-v4", "bots-v6"} {
		t.Run(name, func(t *testing.T) {
			var status, ruleset, raw4, raw6 string
			during := func(ctx context.Context, tp *topo.Topology, dir string) error {
				var err error
				status, err = tp.Output(ctx, topo.Victim, append([]string{"env"}, append(lab.LegacyPATH(dir),
					ctguardBin, "status", "--socket", filepath.Join(dir, "ctguard.sock"), "--sample", "0")...)...)
				if err != nil {
					return err
				}
				if ruleset, err = tp.Output(ctx, topo.Victim, "nft", "list", "ruleset"); err != nil {
					return err
				}
				if raw4, err = tp.Output(ctx, topo.Victim, "iptables-legacy-save", "-c", "-t", "raw"); err != nil {
					return err
				}
				raw6, err = tp.Output(ctx, topo.Victim, "ip6tables-legacy-save", "-c", "-t", "raw")
				return err
			}
			s, log := runSpec(t, name, "ctguard-ipset", spec{during: during})
			if s.FullFor > 3*time.Second {
				t.Errorf("table full for %s under ctguard on ipset (first full after %s)", s.FullFor, s.FullAfter)
			}
			if r := rate(s.ProbesOK, s.Probes); r < 95 {
				t.Errorf("%.1f%% of probes ok under ctguard on ipset, want >= 95%%", r)
			}
			if s.AttackBans == 0 || s.FalseBans != 0 {
				t.Errorf("ctguard on ipset banned %d attack ranges and %d legit ones %v", s.AttackBans, s.FalseBans, s.FalseBanList)
			}
			if !strings.Contains(status, "enforcing with ipset") || !strings.Contains(status, "firewall backend ipset: ") {
				t.Errorf("ctguard status does not say the ipset backend is in use:\n%s", status)
			}
			if !strings.Contains(log, "backend=ipset") {
				t.Errorf("ctguard's log does not name the ipset backend")
			}
			if strings.TrimSpace(ruleset) != "" {
				t.Errorf("the victim has an nftables ruleset, want none:\n%s", ruleset)
			}
			for fam, raw := range map[string]string{"iptables": raw4, "ip6tables": raw6} {
				if !strings.Contains(raw, "-A PREROUTING -m comment --comment ctguard -j CTGUARD") {
					t.Errorf("%s-legacy raw table has no jump to ctguard's chain:\n%s", fam, raw)
				}
			}
			// The bans drop the live bots' packets in the legacy raw table.
			raw := map[string]string{"bots-v4": raw4, "bots-v6": raw6}[name]
			if n := setDrops(raw); n == 0 {
				t.Errorf("ctguard's set rules dropped no packet of the live bots:\n%s", raw)
			} else {
				t.Logf("ctguard's set rules in the legacy raw table dropped %d packets", n)
			}
			t.Logf("ctguard status:\n%s", status)
		})
	}
}

// A service published from a container: the victim DNATs its :443 to a
// namespace behind it (like Docker's -p 443:443), so the bots' entries are
// in the victim's table with the victim's :443 as original destination and
// the container's :443 as reply source, and no socket of the victim's own
// behind them. Undefended the bots fill the table; under ctguard, run in
// the victim, they are stopped, the crowd and the NAT gateways are never
// banned and every probe answers. ctguard top, run in the victim during
// the attack, names the published service.
func TestContainerPublishedPort(t *testing.T) {
	needLab(t)
	_, ctguardBin := build(t)
	t.Run("none", func(t *testing.T) {
		var top string
		var dnated int
		sp := spec{
			inAttack: topDuringAttack(ctguardBin, &top),
			during: func(ctx context.Context, tp *topo.Topology, _ string) error {
				// The bots' ESTABLISHED entries: to the victim, answered by the container.
				out, err := tp.Output(ctx, topo.Victim, "conntrack", "-L", "-p", "tcp", "--state", "ESTABLISHED",
					"--orig-dst", topo.VictimV4.String(), "--dport", "443", "--reply-src", topo.ContainerV4.String())
				dnated = countLines(out, "src=198.18.")
				return err
			},
		}
		s, _ := runSpec(t, "container", "none", sp)
		t.Logf("ctguard top -n 5 during the attack:\n%s", top)
		t.Logf("%d bot entries to %s:443 answered by the container's %s:443", dnated, topo.VictimV4, topo.ContainerV4)
		needFull(t, s)
		if r := rate(s.ProbesFullOK, s.ProbesFull); s.ProbesFull < 8 || r > 20 {
			t.Errorf("probes while full: %d/%d ok, want many probes and <= 20%% ok", s.ProbesFullOK, s.ProbesFull)
		}
		if dnated < 100000 {
			t.Errorf("%d bot entries DNAT'ed to the container, want the full table's", dnated)
		}
		checkTop(t, top, true)
	})
	t.Run("ctguard", func(t *testing.T) {
		var top string
		s, _ := runSpec(t, "container", "ctguard", spec{inAttack: topDuringAttack(ctguardBin, &top)})
		t.Logf("ctguard top -n 5 during the attack:\n%s", top)
		// As TestCtguardDefaults: a moment full on a loaded CI machine is
		// tolerated, a lasting one is not.
		if s.FullFor > 3*time.Second {
			t.Errorf("table full for %s under ctguard (first full after %s)", s.FullFor, s.FullAfter)
		}
		if s.ProbesOK != s.Probes {
			t.Errorf("%d of %d probes failed under ctguard, want none; first failures %v", s.Probes-s.ProbesOK, s.Probes, s.ProbeFailures)
		}
		if s.AttackBans == 0 {
			t.Error("ctguard banned none of the bots")
		}
		if s.FalseBans != 0 {
			t.Errorf("ctguard banned legit sources %v", s.FalseBanList)
		}
		checkTop(t, top, false)
	})
}

// topDuringAttack runs `ctguard top -n 5 --json --direct` in the victim 3 s
// into the attack (--direct: it scans the victim's table itself, whether
// or not a daemon runs) and keeps its output in out.
func topDuringAttack(ctguardBin string, out *string) func(ctx context.Context, tp *topo.Topology) error {
	return func(ctx context.Context, tp *topo.Topology) error {
		if err := sleepCtx(ctx, 3*time.Second); err != nil {
			return err
		}
		var err error
		*out, err = tp.Output(ctx, topo.Victim, ctguardBin, "top", "-n", "5", "--json", "--direct")
		return err
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// checkTop checks ctguard top's rows: there are some, the first is a bot
// when botsFirst, and every row names the service its entries go to
// (`service` in top --json): tcp to the victim's published :443, DNAT'ed to
// the container's :443 (IPv4 or IPv6 as the source).
func checkTop(t *testing.T, out string, botsFirst bool) {
	t.Helper()
	type service struct {
		Protocol   string `json:"protocol"`
		Address    string `json:"address"`
		Port       uint16 `json:"port"`
		DNATTarget string `json:"dnat_target"`
	}
	var top struct {
		Rows []struct {
			Source  string   `json:"source"`
			Entries int      `json:"entries"`
			Service *service `json:"service"`
		} `json:"rows"`
	}
	if err := json.Unmarshal([]byte(out), &top); err != nil {
		t.Errorf("ctguard top --json: %v", err)
		return
	}
	if len(top.Rows) == 0 {
		t.Error("ctguard top showed no rows during the attack")
		return
	}
	if a, err := netip.ParseAddr(top.Rows[0].Source); botsFirst && (err != nil || !topo.BotV4.Contains(a)) {
		t.Errorf("ctguard top's first row is %q, want a bot of %s", top.Rows[0].Source, topo.BotV4)
	}
	for _, r := range top.Rows {
		want := service{Protocol: "tcp", Address: topo.VictimV4.String(), Port: topo.PublishedPort,
			DNATTarget: netip.AddrPortFrom(topo.ContainerV4, topo.PublishedPort).String()}
		if a, err := netip.ParseAddr(r.Source); err == nil && a.Is6() {
			want.Address, want.DNATTarget = topo.VictimV6.String(), netip.AddrPortFrom(topo.ContainerV6, topo.PublishedPort).String()
		}
		if r.Service == nil || *r.Service != want {
			t.Errorf("ctguard top row %s (%d entries): service %+v, want %+v", r.Source, r.Entries, r.Service, want)
		}
	}
}

// setDrops sums the packet counters of the rules that drop members of
// ctguard's ipsets, in `iptables-save -c` output.
func setDrops(save string) uint64 {
	var n uint64
	for _, l := range strings.Split(save, "\n") {
		if !strings.HasPrefix(l, "[") || !strings.Contains(l, "--match-set ctguard-") || !strings.HasSuffix(l, "-j DROP") {
			continue
		}
		pk, _, _ := strings.Cut(strings.TrimPrefix(l, "["), ":")
		v, _ := strconv.ParseUint(pk, 10, 64)
		n += v
	}
	return n
}

// needLAPI fails under CI and skips elsewhere when CrowdSec's Local API
// cannot run (Debian: crowdsec, which .ci/run installs).
func needLAPI(t *testing.T) {
	t.Helper()
	if err := lab.LAPIAvailable(); err != nil {
		if testutil.InCI() {
			t.Fatalf("%v (CI=true: refusing to skip)", err)
		}
		t.Skip(err)
	}
}

// runFleet runs the fleet scenario under one of its defenses; both
// ctguards' logs are shown when the test fails.
func runFleet(t *testing.T, defense string) lab.FleetSummary {
	t.Helper()
	sc, err := lab.Find("fleet", !full())
	if err != nil {
		t.Fatal(err)
	}
	_, ctguardBin := build(t)
	def, err := lab.NewDefense(context.Background(), defense, sc, ctguardBin)
	if err != nil {
		t.Fatal(err)
	}
	var logA, logB lockedBuffer
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("CTGLAB_DEFENSE_LOG") != "" {
			t.Logf("victim A's ctguard's log (last 12,000 bytes):\n%s", logA.Tail(12000))
			t.Logf("victim B's ctguard's log (last 12,000 bytes):\n%s", logB.Tail(12000))
		}
	})
	opt := lab.Options{LabBin: labBin(t), Log: logger(t), DefenseLog: &logA, DefenseLogB: &logB}
	ctx, cancel := context.WithTimeout(context.Background(), sc.Total()+120*time.Second)
	defer cancel()
	started := time.Now()
	res, err := lab.RunFleet(ctx, sc, def, opt)
	if err != nil {
		t.Fatal(err)
	}
	f := res.Summary
	t.Logf("%s (run %.0fs)", f.Line(), time.Since(started).Seconds())
	if t.Failed() || os.Getenv("CTGLAB_DEFENSE_LOG") != "" {
		t.Logf("LAPI log:\n%s", res.LAPILog)
	}
	if !f.A.Tracked || !f.B.Tracked {
		t.Fatal("conntrack held no entries in a victim: its stateful ruleset did not switch tracking on")
	}
	if f.Sources == 0 || f.Uncovered > 0 {
		t.Fatalf("%d of the attack's %d sources were not in A's bans at the turn (the bots tried %d of their %d connections on A): the machine was too loaded to run this attack in time, so B met sources A never saw; result inconclusive",
			f.Uncovered, f.Sources, f.AttemptsA, f.Planned)
	}
	return f
}

// Two victims behind one router, each with ctguard on its defaults, share
// one CrowdSec Local API (Debian's crowdsec 1.4, run in the router):
// silent bots attack victim A, which bans them and pushes its bans; then
// the same sources turn to victim B, whose ctguard pulled A's bans every
// second and so drops the bots before they hold a single bot's worth of
// entries (300). Every one of A's bans is in B's sets within the pull
// interval plus a second, before the attack reaches B; nobody legit is
// banned on either victim and every probe to either is answered. Without
// the LAPI (ctguard-isolated) B meets the attack as A did: it holds
// thousands of the bots' entries before its own bans.
func TestFleet(t *testing.T) {
	needLab(t)
	t.Run("fleet", func(t *testing.T) {
		needLAPI(t)
		f := runFleet(t, "ctguard-fleet")
		if f.AOwn == 0 {
			t.Fatalf("victim A's ctguard banned none of the bots itself (%d attack bans)", f.A.AttackBans)
		}
		if f.B.PeakAttackHeld < 0 || f.B.PeakAttackHeld > 300 {
			t.Errorf("victim B held up to %d entries of the attack's sources, want at most one bot's 300", f.B.PeakAttackHeld)
		}
		if f.BeforeTurn != f.AOwn || f.EnforcedB != f.AOwn {
			t.Errorf("of A's %d own bans, B's sets held %d at the turn and %d at all, want every one", f.AOwn, f.BeforeTurn, f.EnforcedB)
		}
		if bound := lab.FleetPullInterval + time.Second; f.LagMax < 0 || f.LagMax > bound || f.PulledLagMax < 0 || f.PulledLagMax > bound {
			t.Errorf("from A's ban to B's set: at most %s (median %s) as the monitors saw it, %s in the ctguards' records; want within %s (the pull interval plus a second)",
				f.LagMax, f.LagP50, f.PulledLagMax, bound)
		}
		if f.B.AttackSent+f.B.AttackFailed == 0 {
			t.Error("the bots never turned to victim B")
		}
		if f.BDrops == 0 || f.BFirstDrop < 0 || f.BFirstDrop > 2*time.Second {
			t.Errorf("B's ctguard dropped %d packets after the turn, the first %s after it: want drops from the turn on", f.BDrops, f.BFirstDrop)
		}
		checkFleetLegit(t, f)
	})
	t.Run("isolated", func(t *testing.T) {
		f := runFleet(t, "ctguard-isolated")
		if f.B.PeakAttackHeld <= 300 || f.BeforeTurn != 0 || f.BOwn == 0 {
			t.Errorf("without the LAPI B held up to %d of the bots' entries, had %d of A's bans at the turn and banned %d itself: want more than 300, none and some",
				f.B.PeakAttackHeld, f.BeforeTurn, f.BOwn)
		}
		checkFleetLegit(t, f)
	})
}

// checkFleetLegit: no false ban and (nearly) every probe answered, on
// both victims.
func checkFleetLegit(t *testing.T, f lab.FleetSummary) {
	t.Helper()
	if f.A.FalseBans != 0 || f.B.FalseBans != 0 {
		t.Errorf("false bans: A %v, B %v", f.A.FalseBanList, f.B.FalseBanList)
	}
	for name, s := range map[string]lab.Summary{"A": f.A, "B": f.B} {
		if s.Probes == 0 || s.ProbesOK*100 < s.Probes*98 {
			t.Errorf("victim %s answered %d of %d probes, want at least 98%%; failed: %v", name, s.ProbesOK, s.Probes, s.ProbeFailures)
		}
	}
}
