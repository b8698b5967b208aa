package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/ctguard/ctguard/test/e2e/lab"
	"github.com/ctguard/ctguard/test/e2e/topo"
	"github.com/ctguard/ctguard/test/e2e/wire"
)

func init() {
	register(&command{"run", "run one scenario under one defense; print the summary, write a CSV", runRun})
	register(&command{"cleanup", "delete namespaces left behind by lab runs that died", runCleanup})
	register(&command{"list", "list the scenarios", runList})
}

func selfBin() (string, error) {
	p, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own binary: %w", err)
	}
	return p, nil
}

func runList(ctx context.Context, e *env, args []string) error {
	fs := newFlags("list", e)
	short := fs.Bool("short", false, "the short (CI) versions")
	if err := parse(fs, args); err != nil {
		return err
	}
	for _, s := range lab.All(*short) {
		fmt.Fprintf(e.stdout, "%-20s %5.0fs  %s\n", s.Name, s.Total().Seconds(), s.Desc)
	}
	return nil
}

// runOne runs a scenario and writes its CSV; an unavailable defense is not
// an error, it is reported in the summary.
func runOne(ctx context.Context, e *env, name, defense, ctguardBin, outDir string, short bool, csvStep int) (lab.Summary, *lab.Result, error) {
	sc, err := lab.Find(name, short)
	if err != nil {
		return lab.Summary{}, nil, usagef("%v", err)
	}
	if sc.Fleet {
		return lab.Summary{}, nil, usagef("%s has two victims (runFleetOne)", sc.Name)
	}
	def, err := lab.NewDefense(ctx, defense, sc, ctguardBin)
	if errors.Is(err, lab.ErrUnavailable) {
		return lab.Summary{Scenario: sc.Name, Defense: defense, Unavailable: err.Error()}, nil, nil
	}
	if err != nil {
		return lab.Summary{}, nil, usagef("%v", err)
	}
	bin, err := selfBin()
	if err != nil {
		return lab.Summary{}, nil, err
	}
	e.log.Info("running", "scenario", sc.Name, "defense", def.Name, "seconds", sc.Total().Seconds())
	opt := lab.Options{LabBin: bin, Log: e.log}
	if outDir != "" && def.Native {
		// Keep the defense's own log beside the CSV: every decision it made.
		if err := os.MkdirAll(outDir, 0o755); err != nil {
			return lab.Summary{}, nil, err
		}
		f, err := os.Create(filepath.Join(outDir, fmt.Sprintf("%s-%s.log", sc.Name, def.Name)))
		if err != nil {
			return lab.Summary{}, nil, err
		}
		defer f.Close()
		opt.DefenseLog = f
	}
	res, err := lab.Run(ctx, sc, def, opt)
	if errors.Is(err, lab.ErrUnavailable) {
		// The scenario needs something this machine lacks (sshd).
		return lab.Summary{Scenario: sc.Name, Defense: defense, Unavailable: err.Error()}, nil, nil
	}
	if err != nil {
		return lab.Summary{}, nil, fmt.Errorf("%s/%s: %w", sc.Name, def.Name, err)
	}
	if outDir != "" {
		if err := os.MkdirAll(outDir, 0o755); err != nil {
			return res.Summary, res, err
		}
		path := filepath.Join(outDir, fmt.Sprintf("%s-%s.csv", sc.Name, def.Name))
		f, err := os.Create(path)
		if err != nil {
			return res.Summary, res, err
		}
		err = lab.WriteCSV(f, res.Rows, csvStep)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return res.Summary, res, fmt.Errorf("write %s: %w", path, err)
		}
		sumPath := filepath.Join(outDir, fmt.Sprintf("%s-%s.summary", sc.Name, def.Name))
		// First line: the legend note for `ctglab plot`; second: the summary.
		note := lab.Note(res) + "\n" + res.Summary.Line() + "\n"
		if err := os.WriteFile(sumPath, []byte(note), 0o644); err != nil {
			return res.Summary, res, err
		}
		if os.Getenv("CTGLAB_RECORDS") != "" {
			if err := writeRecords(filepath.Join(outDir, fmt.Sprintf("%s-%s.jsonl", sc.Name, def.Name)), res); err != nil {
				return res.Summary, res, err
			}
		}
	}
	return res.Summary, res, nil
}

// runFleetOne runs the fleet scenario under one defense and writes, per
// victim (-a, -b), its CSV and its ctguard's log, plus the LAPI's log and
// the summary; an unavailable defense is reported in the summary.
func runFleetOne(ctx context.Context, e *env, sc lab.Scenario, defense, ctguardBin, outDir string, csvStep int) (lab.FleetSummary, *lab.FleetResult, error) {
	def, err := lab.NewDefense(ctx, defense, sc, ctguardBin)
	if errors.Is(err, lab.ErrUnavailable) {
		return lab.FleetSummary{Scenario: sc.Name, Defense: defense, A: lab.Summary{Unavailable: err.Error()}}, nil, nil
	}
	if err != nil {
		return lab.FleetSummary{}, nil, usagef("%v", err)
	}
	bin, err := selfBin()
	if err != nil {
		return lab.FleetSummary{}, nil, err
	}
	e.log.Info("running", "scenario", sc.Name, "defense", def.Name, "seconds", sc.Total().Seconds())
	opt := lab.Options{LabBin: bin, Log: e.log}
	base := filepath.Join(outDir, fmt.Sprintf("%s-%s", sc.Name, def.Name))
	if outDir != "" {
		if err := os.MkdirAll(outDir, 0o755); err != nil {
			return lab.FleetSummary{}, nil, err
		}
		for _, v := range []struct {
			suffix string
			w      *io.Writer
		}{{"-a.log", &opt.DefenseLog}, {"-b.log", &opt.DefenseLogB}} {
			f, err := os.Create(base + v.suffix)
			if err != nil {
				return lab.FleetSummary{}, nil, err
			}
			defer f.Close()
			*v.w = f
		}
	}
	res, err := lab.RunFleet(ctx, sc, def, opt)
	if err != nil {
		return lab.FleetSummary{}, nil, fmt.Errorf("%s/%s: %w", sc.Name, def.Name, err)
	}
	if outDir == "" {
		return res.Summary, res, nil
	}
	for suffix, v := range map[string]*lab.Result{"-a.csv": res.A, "-b.csv": res.B} {
		f, err := os.Create(base + suffix)
		if err != nil {
			return res.Summary, res, err
		}
		err = lab.WriteCSV(f, v.Rows, csvStep)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return res.Summary, res, fmt.Errorf("write %s%s: %w", base, suffix, err)
		}
	}
	if res.LAPILog != "" {
		if err := os.WriteFile(base+"-lapi.log", []byte(res.LAPILog), 0o644); err != nil {
			return res.Summary, res, err
		}
	}
	note := lab.FleetNote(res.Summary, def.Note) + "\n" + res.Summary.Line() + "\n"
	return res.Summary, res, os.WriteFile(base+".summary", []byte(note), 0o644)
}

func runRun(ctx context.Context, e *env, args []string) error {
	fs := newFlags("run", e)
	name := fs.String("scenario", "bots-v4", "scenario (see ctglab list)")
	defense := fs.String("defense", "none", "none, baseline, meter, ctguard, ctguard-noclose, ctguard-nowatch or ctguard-ipset; for the fleet scenario ctguard-isolated or ctguard-fleet")
	short := fs.Bool("short", false, "short (CI) version")
	out := fs.String("out", "out/lab", "directory for the CSV")
	step := fs.Int("csv-step", 1, "keep every n-th sample in the CSV")
	ctg := fs.String("ctguard", "bin/ctguard", "ctguard binary (defense ctguard)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if sc, err := lab.Find(*name, *short); err == nil && sc.Fleet {
		f, _, err := runFleetOne(ctx, e, sc, *defense, *ctg, *out, *step)
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, f.Line())
		return nil
	}
	s, _, err := runOne(ctx, e, *name, *defense, *ctg, *out, *short, *step)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, s.Line())
	return nil
}

func runCleanup(ctx context.Context, e *env, args []string) error {
	fs := newFlags("cleanup", e)
	all := fs.Bool("all", false, "also runs that are still alive")
	dir := fs.String("state", topo.DefaultStateDir, "state directory")
	if err := parse(fs, args); err != nil {
		return err
	}
	removed, err := topo.Cleanup(*dir, *all)
	for _, n := range removed {
		fmt.Fprintln(e.stdout, "removed", n)
	}
	return err
}

// writeRecords dumps every record of a run (CTGLAB_RECORDS=1), for digging
// into a surprising result.
func writeRecords(path string, res *lab.Result) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := wire.NewWriter(f)
	for _, group := range [][]wire.Record{res.Records.Samples, res.Records.Probes, res.Records.Bans, res.Records.Scans, res.Records.Ops} {
		for _, r := range group {
			if err := w.Write(r); err != nil {
				f.Close()
				return err
			}
		}
	}
	names := make([]string, 0, len(res.Records.Progress))
	for n := range res.Records.Progress {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := w.Write(wire.Record{Kind: "progress", Msg: n, Progress: res.Records.Progress[n]}); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}
