package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ctguard/ctguard/test/e2e/lab"
	"github.com/ctguard/ctguard/test/e2e/plot"
)

func init() {
	register(&command{"demo", "the incident's attack unprotected, then defended; summaries side by side and a plot", runDemo})
	register(&command{"results", "run every scenario under every defense and write RESULTS.md", runResults})
}

func runDemo(ctx context.Context, e *env, args []string) error {
	fs := newFlags("demo", e)
	name := fs.String("scenario", "bots-v4", "scenario")
	out := fs.String("out", "out/demo", "output directory (CSV, SVG)")
	short := fs.Bool("short", false, "short version")
	ctg := fs.String("ctguard", "bin/ctguard", "ctguard binary")
	defs := fs.String("defenses", "none,baseline,ctguard", "defenses to run, in order")
	if err := parse(fs, args); err != nil {
		return err
	}
	if sc, err := lab.Find(*name, *short); err == nil && sc.Fleet {
		return usagef("%s has two victims: run it with ctglab run or ctglab results", sc.Name)
	}
	var sums []lab.Summary
	var runs []*lab.Result
	for _, d := range strings.Split(*defs, ",") {
		s, res, err := runOne(ctx, e, *name, d, *ctg, *out, *short, 1)
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, s.Line())
		sums = append(sums, s)
		if res != nil {
			runs = append(runs, res)
		}
	}
	fmt.Fprintln(e.stdout)
	fmt.Fprint(e.stdout, lab.SideBySide(sums))
	if len(runs) == 0 {
		return fmt.Errorf("no run completed")
	}
	svg := filepath.Join(*out, *name+".svg")
	if err := writeChart(svg, runs); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "\nplot: %s\ncsv:  %s/%s-*.csv\n", svg, *out, *name)
	return nil
}

func writeChart(path string, runs []*lab.Result) error {
	return writeSVG(path, lab.Chart(runs))
}

func writeSVG(path string, c plot.Chart) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	err = c.WriteSVG(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func runResults(ctx context.Context, e *env, args []string) error {
	fs := newFlags("results", e)
	out := fs.String("out", "test/e2e/results", "directory for the downsampled CSVs and plots")
	md := fs.String("md", "test/e2e/RESULTS.md", "results table to write")
	short := fs.Bool("short", false, "short (CI) versions")
	only := fs.String("scenarios", "", "comma-separated subset (default: all)")
	defs := fs.String("defenses", "", "comma-separated subset of "+strings.Join(lab.DefenseNames, ", ")+
		" (Apache variants: "+strings.Join(lab.ApacheDefenses[1:3], ", ")+"; fleet: "+strings.Join(lab.FleetDefenses, ", ")+"), or "+strings.Join(lab.OptionalDefenses, ", ")+
		", which runs only when named (default: every scenario's own set)")
	ctg := fs.String("ctguard", "bin/ctguard", "ctguard binary")
	step := fs.Int("csv-step", 4, "keep every n-th 250 ms sample in the CSVs (4: one per second)")
	if err := parse(fs, args); err != nil {
		return err
	}
	for _, d := range strings.Split(*defs, ",") {
		known := slices.Contains(lab.DefenseNames, d) || slices.Contains(lab.ApacheDefenses, d) || slices.Contains(lab.OptionalDefenses, d) ||
			slices.Contains(lab.FleetDefenses, d)
		if d != "" && !known {
			return usagef("--defenses: unknown defense %q", d)
		}
	}
	want := map[string]bool{}
	for _, s := range strings.Split(*only, ",") {
		if s != "" {
			want[s] = true
		}
	}
	started := time.Now()
	var sums []lab.Summary
	var fleet []lab.FleetSummary
	for _, sc := range lab.All(*short) {
		if len(want) > 0 && !want[sc.Name] {
			continue
		}
		var runs []*lab.Result
		var asked []string
		if *defs != "" {
			asked = strings.Split(*defs, ",")
		}
		if sc.Fleet {
			var fruns []*lab.FleetResult
			for _, d := range lab.DefensesAsked(sc, asked) {
				f, res, err := runFleetOne(ctx, e, sc, d, *ctg, *out, *step)
				if err != nil {
					return err
				}
				fmt.Fprintln(e.stdout, f.Line())
				fleet = append(fleet, f)
				if res != nil {
					fruns = append(fruns, res)
				}
			}
			if len(fruns) > 0 {
				if err := writeSVG(filepath.Join(*out, sc.Name+".svg"), lab.FleetChart(fruns)); err != nil {
					return err
				}
			}
			continue
		}
		for _, d := range lab.DefensesAsked(sc, asked) {
			s, res, err := runOne(ctx, e, sc.Name, d, *ctg, *out, *short, *step)
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, s.Line())
			sums = append(sums, s)
			if res != nil {
				runs = append(runs, res)
			}
		}
		if len(runs) > 0 {
			if err := writeChart(filepath.Join(*out, sc.Name+".svg"), runs); err != nil {
				return err
			}
		}
	}
	var b strings.Builder
	cmd := "make lab"
	if *short {
		cmd = "bin/ctglab results --short"
	}
	fmt.Fprintf(&b, "# Lab results\n\nRegenerate with `%s` (as root; about %.0f minutes). Written by `ctglab results` on %s, kernel %s, %s.\n\n",
		cmd, time.Since(started).Minutes()+0.5, time.Now().UTC().Format("2006-01-02 15:04 UTC"), kernel(), ctguardVersion(ctx, *ctg))
	b.WriteString("Probes: a fresh TCP connection to the victim's :443 every 250 ms from addresses outside every attack range, 2 s timeout. ")
	fmt.Fprintf(&b, "\"Full\" means count >= %.1f%% of nf_conntrack_max (262,144). Times are from the attack's start. ", 100*lab.FullFraction)
	b.WriteString("Every scenario also runs a benign crowd (30 conn/s) and two NAT gateways with 60 live users each. ")
	b.WriteString("The baseline is the cron-script method (threshold 30, ipset + `conntrack -D --src`, iptables INPUT drop) at the interval the scenario lists. ")
	b.WriteString("Attacker, victim and defense share one 2-core machine: a defense that burns CPU also slows the attack.\n\n")
	var plain, apache []lab.Summary
	for _, s := range sums {
		if s.Apache {
			apache = append(apache, s)
		} else {
			plain = append(plain, s)
		}
	}
	if len(plain) > 0 {
		b.WriteString(lab.MarkdownTable(plain))
	}
	if len(apache) > 0 {
		b.WriteString("\n## Against Apache\n\n")
		b.WriteString(apacheIntro)
		b.WriteString(lab.MarkdownTable(apache))
	}
	if len(fleet) > 0 {
		b.WriteString("\n## Two victims, one Local API (fleet)\n\n")
		b.WriteString(fleetIntro)
		b.WriteString(lab.FleetTable(fleet))
	}
	b.WriteString("\nScenarios:\n\n")
	for _, sc := range lab.All(*short) {
		if len(want) > 0 && !want[sc.Name] {
			continue
		}
		fmt.Fprintf(&b, "- `%s`: %s; attack %s, baseline every %s.\n", sc.Name, sc.Desc, sc.AttackFor, sc.BaselineEvery)
	}
	for _, s := range sums {
		if s.Unavailable != "" {
			fmt.Fprintf(&b, "\n`ctguard` rows: %s.\n", s.Unavailable)
			break
		}
	}
	for _, f := range fleet {
		if f.A.Unavailable != "" {
			fmt.Fprintf(&b, "\n`%s` row: %s.\n", f.Defense, f.A.Unavailable)
		}
	}
	if err := os.WriteFile(*md, []byte(b.String()), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "wrote %s\n", *md)
	return nil
}

// fleetIntro explains the fleet table.
const fleetIntro = "A second victim (B: 198.51.100.14, 2001:db8:ff:5::2) sits behind the same router with the same firewall, its own lab server, " +
	"probes, crowd and NAT gateways. The silent bots attack victim A; at the turn the same sources attack victim B. " +
	"ctguard runs on both victims with its defaults: `ctguard-isolated` has nothing between them; under `ctguard-fleet` a CrowdSec 1.4 Local API " +
	"runs in the router (its own database, from a copy of /etc/crowdsec/config.yaml) with a machine and a bouncer for each ctguard, " +
	"and each ctguard pushes its bans there and pulls the other's every second (`[crowdsec]` push and pull, each with its own scenario). " +
	"\"B peak attack entries\" is the most entries of the attack's sources in B's table at once (a table walk every second, from the turn); " +
	"\"B first drop\" when B's ctguard's drop counters first grew after the turn; \"A's ban to B's set\" from A's set first holding " +
	"one of A's own bans (or a prefix around it) to B's set first holding it, as the two monitors saw them (every 250 ms).\n\n"

// apacheIntro explains the Apache table.
const apacheIntro = "The victim also runs Apache (Debian's apache2 package, its default event MPM limits: 150 request workers; " +
	"mod_reqtimeout gives a client 20-40 s to send its request header), started in the victim's namespace with a generated config. " +
	"The attack goes to Apache's port 80 instead of the lab server; the probes are HTTP/1.1 GETs of / that must answer 200 within 2 s. " +
	"`ctguard-noclose` is ctguard with `daemon.close_sockets = false`: its bans drop the banned peers' packets and purge their entries, " +
	"but leave their established connections to Apache open. `ctguard-nowatch` is ctguard with `daemon.watch_listeners = false`: " +
	"it closes the banned peers' sockets but scans at the table's pace (up to 30 s apart while the table is calm), not at once when Apache's accept queue fills. " +
	"`apache_workers_full` counts Apache's \"server reached MaxRequestWorkers\" log lines.\n\n"

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

func init() {
	register(&command{"plot", "redraw a scenario's SVG from the CSVs (and summaries) in a results directory", runPlot})
}

func runPlot(ctx context.Context, e *env, args []string) error {
	fs := newFlags("plot", e)
	name := fs.String("scenario", "bots-v4", "scenario")
	dir := fs.String("dir", "out/demo", "directory with <scenario>-<defense>.csv files")
	if err := parse(fs, args); err != nil {
		return err
	}
	sc, err := lab.Find(*name, false)
	if err != nil {
		return usagef("%v", err)
	}
	c := lab.Chart(nil)
	c.Title, c.Subtitle, c.AttackTo = "ctguard lab: "+sc.Name, sc.Desc, sc.AttackFor.Seconds()
	// Every defense that may have run it: the scenario's own and the
	// optional ones (ctguard-ipset). The fleet's runs have a CSV per victim.
	var names []string
	for _, d := range append(slices.Clone(lab.DefensesFor(sc)), lab.OptionalDefenses...) {
		if sc.Fleet {
			names = append(names, d+"-a", d+"-b")
			continue
		}
		names = append(names, d)
	}
	for _, d := range names {
		f, err := os.Open(filepath.Join(*dir, fmt.Sprintf("%s-%s.csv", sc.Name, d)))
		if err != nil {
			continue
		}
		s, err := lab.ReadSeries(f, d)
		f.Close()
		if err != nil {
			return err
		}
		c.Series = append(c.Series, s)
		if b, err := os.ReadFile(filepath.Join(*dir, fmt.Sprintf("%s-%s.summary", sc.Name, d))); err == nil {
			first, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
			c.Notes = append(c.Notes, first)
		}
	}
	if len(c.Series) == 0 {
		return fmt.Errorf("no %s-*.csv in %s", sc.Name, *dir)
	}
	path := filepath.Join(*dir, sc.Name+".svg")
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	err = c.WriteSVG(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		fmt.Fprintln(e.stdout, "wrote", path)
	}
	return err
}

func ctguardVersion(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return "ctguard unavailable"
	}
	return strings.TrimSpace(string(out))
}
