package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/test/e2e/topo"
	"github.com/ctguard/ctguard/test/e2e/wire"
)

// Options for Run.
type Options struct {
	LabBin   string // the ctglab binary, run inside the namespaces
	StateDir string // namespace records; default topo.DefaultStateDir
	Log      *slog.Logger
	// Hook, if set, runs after the topology is up and before any traffic
	// (tests use it to look inside the namespaces).
	Hook func(ctx context.Context, t *topo.Topology) error
	// During, if set, runs in the victim's steady state right after the
	// attack stops (tests compare ss and conntrack there).
	During func(ctx context.Context, t *topo.Topology) error
	// InAttack, if set, starts with the attack on its own goroutine (it
	// sleeps as long as it likes, then looks at the victim); the run
	// waits for it when the attack ends and fails with its error.
	InAttack func(ctx context.Context, t *topo.Topology) error
	// DefenseLog, if set, receives the whole log of a native defense
	// (ctguard's decisions), not just the tail kept for errors.
	DefenseLog io.Writer
	// DefenseLogB is DefenseLog for victim B's ctguard (RunFleet).
	DefenseLogB io.Writer
}

// Records is everything the processes reported.
type Records struct {
	Samples  []wire.Record
	Probes   []wire.Record
	Bans     []wire.Record
	Scans    []wire.Record
	Ops      []wire.Record             // the SSH operator's commands and logins
	Progress map[string]*wire.Progress // last progress per process
}

// Result of one run.
type Result struct {
	Scenario    Scenario
	Defense     Defense
	Start       time.Time // run start (warmup begins)
	AttackStart time.Time
	AttackEnd   time.Time
	Records     Records
	Summary     Summary
	Rows        []Row
	// ApacheLog is the Apache variants' error log (Scenario.Apache).
	ApacheLog string
}

type proc struct {
	p      Proc
	cmd    *exec.Cmd
	done   chan error
	stderr *tail
}

// tail keeps the last few KiB of a process's stderr for error messages.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > 4096 {
		t.buf = t.buf[len(t.buf)-4096:]
	}
	return len(b), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

type run struct {
	opt   Options
	topo  *topo.Topology
	mu    sync.Mutex
	rec   Records
	ready map[string]bool
	procs []*proc
	dirs  []string // private directories to remove at the end
	trees []int    // pids whose descendants are killed at the end (sshd)
	// apacheLog is the path of Apache's error log, if it runs.
	apacheLog string
	// sinks route the records of the named processes elsewhere than rec
	// (the fleet's victim B has its own monitor and probes).
	sinks map[string]*Records
}

// Run runs one scenario under one defense in a fresh topology and always
// tears the topology down. Cancelling ctx (Ctrl-C) stops it early.
func Run(ctx context.Context, sc Scenario, def Defense, opt Options) (*Result, error) {
	if opt.LabBin == "" {
		return nil, errors.New("lab: no lab binary")
	}
	if sc.Fleet {
		return nil, fmt.Errorf("lab: %s has two victims: run it with RunFleet", sc.Name)
	}
	if opt.StateDir == "" {
		opt.StateDir = topo.DefaultStateDir
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	t := topo.New(opt.StateDir, opt.Log, topo.Options{Firewall: def.Firewall, Container: sc.Container})
	r := &run{opt: opt, topo: t, ready: map[string]bool{}, rec: Records{Progress: map[string]*wire.Progress{}}}
	res := &Result{Scenario: sc, Defense: def}
	defer func() {
		if err := t.Close(); err != nil {
			opt.Log.Warn("teardown", "err", err)
		}
	}()
	runCtx, cancel := context.WithCancel(ctx)
	defer func() {
		r.killTrees()
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
	if def.Ruleset != "" {
		if err := t.Run(runCtx, topo.Victim, strings.NewReader(def.Ruleset), "nft", "-f", "-"); err != nil {
			return nil, fmt.Errorf("%s ruleset: %w", def.Name, err)
		}
	}
	total := sc.Total()
	sshDir := ""
	if sc.SSHD {
		dir, err := os.MkdirTemp("", "ctglab-sshd-")
		if err != nil {
			return nil, err
		}
		r.dirs = append(r.dirs, dir)
		cfg, err := prepareSSHD(runCtx, dir)
		if err != nil {
			return nil, err
		}
		if err := r.startSSHD(runCtx, cfg); err != nil {
			return nil, err
		}
		sshDir = dir
	}
	expand := func(p Proc) Proc {
		args := make([]string, len(p.Args))
		for i, a := range p.Args {
			args[i] = strings.ReplaceAll(a, "{sshdir}", sshDir)
		}
		p.Args = args
		return p
	}
	if sc.Apache {
		dir, err := os.MkdirTemp("", "ctglab-apache-")
		if err != nil {
			return nil, err
		}
		r.dirs = append(r.dirs, dir)
		cfg, err := prepareApache(runCtx, dir)
		if err != nil {
			return nil, err
		}
		if err := r.startApache(runCtx, cfg); err != nil {
			return nil, err
		}
		r.apacheLog = filepath.Join(dir, "error.log")
	}
	srvArgs := append([]string{"server"}, sc.ServerArgs...)
	// With a container, the service runs there, behind the victim's DNAT.
	if _, err := r.start(runCtx, Proc{Name: "server", Role: t.ServerRole(), Args: srvArgs}, "", total+30*time.Second); err != nil {
		return nil, err
	}
	if err := r.waitReady(runCtx, "server", 10*time.Second); err != nil {
		return nil, err
	}
	statesEvery := sc.StatesEvery
	if statesEvery <= 0 {
		statesEvery = 5 * time.Second
	}
	monArgs := []string{"monitor", "--interval", "250ms", "--states-every", statesEvery.String()}
	for _, s := range def.IPSets {
		monArgs = append(monArgs, "--ipset", s)
	}
	if def.NFTTable != "" {
		monArgs = append(monArgs, "--nft-table", def.NFTTable)
	}
	for _, w := range sc.Watch {
		monArgs = append(monArgs, "--watch", w)
	}
	// The monitor runs until the runner stops it: its own bound covers the
	// prefill (at most prefillMax), the settling time and the run.
	if _, err := r.start(runCtx, Proc{Name: "monitor", Role: topo.Victim, Args: monArgs}, "", prefillMax+sc.Settle+total+5*time.Second); err != nil {
		return nil, err
	}
	if sc.Prefill != nil {
		h, err := r.start(runCtx, *sc.Prefill, "", prefillMax)
		if err != nil {
			return nil, err
		}
		if err := <-h.done; err != nil {
			return nil, fmt.Errorf("prefill: %w", err)
		}
		h.done <- nil
	}
	background := sc.Background
	if sc.Settle > 0 && len(background) > 0 {
		// The background was there long before the defense (a carrier
		// NAT's users do not all arrive with the guard).
		for _, p := range background {
			if _, err := r.start(runCtx, expand(p), "", total+sc.Settle); err != nil {
				return nil, err
			}
		}
		background = nil
		if err := sleep(runCtx, sc.Settle); err != nil {
			return nil, err
		}
	}
	if def.Proc != nil {
		if err := r.startDefense(runCtx, def, total); err != nil {
			return nil, err
		}
	}
	res.Start = time.Now()
	for _, p := range append(legitProcs(sc), background...) {
		if _, err := r.start(runCtx, expand(p), "", total); err != nil {
			return nil, err
		}
	}
	if err := sleep(runCtx, sc.Warmup); err != nil {
		return nil, err
	}
	res.AttackStart = time.Now()
	var attack []*proc
	for _, p := range sc.Attack {
		h, err := r.start(runCtx, expand(p), "", sc.AttackFor)
		if err != nil {
			return nil, err
		}
		attack = append(attack, h)
	}
	var inAttack chan error
	if opt.InAttack != nil {
		inAttack = make(chan error, 1)
		go func() { inAttack <- opt.InAttack(runCtx, t) }()
	}
	if err := sleep(runCtx, sc.AttackFor); err != nil {
		return nil, err
	}
	if err := waitStopped(runCtx, attack, sc.AttackFor); err != nil {
		return nil, err
	}
	res.AttackEnd = time.Now()
	if inAttack != nil {
		if err := <-inAttack; err != nil {
			return nil, fmt.Errorf("in attack: %w", err)
		}
	}
	if opt.During != nil {
		if err := opt.During(runCtx, t); err != nil {
			return nil, fmt.Errorf("during: %w", err)
		}
	}
	if err := sleep(runCtx, time.Until(res.Start.Add(total))); err != nil {
		return nil, err
	}
	// Let the last probes finish (they have a 2 s timeout) and the monitor
	// take its last samples.
	_ = sleep(runCtx, 2500*time.Millisecond)
	r.killTrees()
	cancel()
	errs := r.waitAll()
	for name, err := range errs {
		opt.Log.Debug("process exit", "proc", name, "err", err)
	}
	r.mu.Lock()
	res.Records = r.rec
	r.mu.Unlock()
	if len(res.Records.Samples) == 0 {
		return nil, errors.New("monitor reported no samples")
	}
	// A monitor that stopped early would make a late ban or a late fill
	// look like none: the samples must cover the whole attack.
	if last := time.UnixMilli(res.Records.Samples[len(res.Records.Samples)-1].T); last.Before(res.AttackEnd) {
		return nil, fmt.Errorf("the monitor's last sample (%s) is %s before the attack's end", last.Format(time.TimeOnly), res.AttackEnd.Sub(last).Round(time.Millisecond))
	}
	if r.apacheLog != "" {
		b, err := os.ReadFile(r.apacheLog)
		if err != nil {
			return nil, fmt.Errorf("apache error log: %w", err)
		}
		res.ApacheLog = string(b)
	}
	res.Rows = Rows(res)
	res.Summary = Summarize(res)
	return res, nil
}

// waitStopped waits for processes bounded to run for d, which the caller
// has just waited out, to end: 5 s of grace each.
func waitStopped(ctx context.Context, hs []*proc, d time.Duration) error {
	for _, h := range hs {
		select {
		case err := <-h.done:
			h.done <- err
		case <-time.After(5 * time.Second):
			return fmt.Errorf("%s did not stop after its %s", h.p.Name, d)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// prefillMax bounds a scenario's prefill.
const prefillMax = 60 * time.Second

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// startDefense starts the defense and waits until it is ready.
func (r *run) startDefense(ctx context.Context, def Defense, total time.Duration) error {
	p := *def.Proc
	var env []string
	if def.Prepare != nil {
		dir, err := os.MkdirTemp("", "ctglab-"+def.Name+"-")
		if err != nil {
			return err
		}
		r.dirs = append(r.dirs, dir)
		extra, err := def.Prepare(dir)
		if err != nil {
			return err
		}
		p.Args = append(append([]string(nil), p.Args...), extra...)
		if def.Env != nil {
			env = def.Env(dir)
		}
	}
	if !def.Native {
		if _, err := r.start(ctx, p, def.Bin, total+2*time.Second); err != nil {
			return err
		}
		return r.waitReady(ctx, p.Name, 10*time.Second)
	}
	h, err := r.startNative(ctx, p, def.Bin, env, r.opt.DefenseLog)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := r.defenseReady(ctx, def)
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

// defenseReady says whether a native defense has its firewall objects in
// the victim: its nftables table, or (ipset backend) its ipsets and the
// CTGUARD chain in the raw table of iptables and ip6tables.
func (r *run) defenseReady(ctx context.Context, def Defense) error {
	if def.NFTTable != "" {
		return r.tableReady(ctx, def, topo.Victim)
	}
	names, err := r.topo.Output(ctx, topo.Victim, "ipset", "list", "-n")
	if err != nil {
		return err
	}
	have := strings.Fields(names)
	for _, s := range def.IPSets {
		if !slices.Contains(have, s) {
			return fmt.Errorf("ipset %s missing", s)
		}
	}
	if def.Firewall != topo.FirewallIPTablesLegacy {
		return nil
	}
	for _, save := range []string{"iptables-legacy-save", "ip6tables-legacy-save"} {
		out, err := r.topo.Output(ctx, topo.Victim, save, "-t", "raw")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "\n:"+enforce.IPTablesChain+" ") {
			return fmt.Errorf("%s: no chain %s in the raw table", save, enforce.IPTablesChain)
		}
	}
	return nil
}

// tableReady says whether the defense's nftables table is in role's
// namespace.
func (r *run) tableReady(ctx context.Context, def Defense, role string) error {
	args := append([]string{"nft", "list", "table"}, strings.Fields(def.NFTTable)...)
	_, err := r.topo.Output(ctx, role, args...)
	return err
}

// startNative runs a program that is not a lab role (ctguard, sshd): no
// --duration, its output is kept as a log tail (and copied to log if set);
// the runner stops it.
func (r *run) startNative(ctx context.Context, p Proc, bin string, env []string, log io.Writer) (*proc, error) {
	cmd := r.topo.Command(ctx, p.Role, append([]string{bin}, p.Args...)...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...) // later entries win
	}
	h := &proc{p: p, cmd: cmd, done: make(chan error, 1), stderr: &tail{}}
	var w io.Writer = h.stderr
	if log != nil {
		w = io.MultiWriter(h.stderr, log)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", p.Name, err)
	}
	r.mu.Lock()
	r.procs = append(r.procs, h)
	r.mu.Unlock()
	r.opt.Log.Debug("started", "proc", p.Name, "pid", cmd.Process.Pid, "args", strings.Join(p.Args, " "))
	go func() {
		err := cmd.Wait()
		if err != nil && ctx.Err() == nil {
			err = fmt.Errorf("%s: %w: %s", p.Name, err, h.stderr.String())
			r.opt.Log.Warn("process failed", "proc", p.Name, "err", err)
		}
		h.done <- err
	}()
	return h, nil
}

// start runs p in its namespace, bounded by dur (the process's own
// --duration, and the runner kills it if it overstays).
func (r *run) start(ctx context.Context, p Proc, bin string, dur time.Duration) (*proc, error) {
	if bin == "" {
		bin = r.opt.LabBin
	}
	args := append([]string{bin}, p.Args...)
	args = append(args, "--duration", dur.String())
	cmd := r.topo.Command(ctx, p.Role, args...)
	h := &proc{p: p, cmd: cmd, done: make(chan error, 1), stderr: &tail{}}
	cmd.Stderr = h.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", p.Name, err)
	}
	r.mu.Lock()
	r.procs = append(r.procs, h)
	r.mu.Unlock()
	r.opt.Log.Debug("started", "proc", p.Name, "pid", cmd.Process.Pid, "args", strings.Join(p.Args, " "))
	go func() {
		r.read(p.Name, out)
		err := cmd.Wait()
		if err != nil && ctx.Err() == nil {
			err = fmt.Errorf("%s: %w: %s", p.Name, err, h.stderr.String())
			r.opt.Log.Warn("process failed", "proc", p.Name, "err", err)
		}
		h.done <- err
	}()
	return h, nil
}

func (r *run) read(name string, out io.Reader) {
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 16<<20) // ban lists can be long
	for sc.Scan() {
		var rec wire.Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			r.opt.Log.Warn("bad record", "proc", name, "err", err)
			continue
		}
		r.mu.Lock()
		dst := &r.rec
		if s := r.sinks[name]; s != nil {
			dst = s
		}
		switch rec.Kind {
		case "ready":
			r.ready[name] = true
		case "sample":
			dst.Samples = append(dst.Samples, rec)
		case "probe":
			dst.Probes = append(dst.Probes, rec)
		case "ban":
			dst.Bans = append(dst.Bans, rec)
		case "scan":
			dst.Scans = append(dst.Scans, rec)
		case "op":
			dst.Ops = append(dst.Ops, rec)
		case "progress":
			if rec.Progress != nil {
				r.rec.Progress[name] = rec.Progress
			}
		}
		r.mu.Unlock()
	}
}

func (r *run) waitReady(ctx context.Context, name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		ok := r.ready[name]
		var h *proc
		for _, p := range r.procs {
			if p.p.Name == name {
				h = p
			}
		}
		r.mu.Unlock()
		if ok {
			return nil
		}
		if h != nil {
			select {
			case err := <-h.done:
				h.done <- err
				return fmt.Errorf("%s exited before it was ready: %v: %s", name, err, h.stderr.String())
			default:
			}
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s not ready after %s", name, timeout)
}

// waitAll waits for every process (the context's cancel has signalled them).
func (r *run) waitAll() map[string]error {
	r.mu.Lock()
	procs := r.procs
	r.procs = nil
	r.mu.Unlock()
	errs := map[string]error{}
	for _, h := range procs {
		err := <-h.done
		if err != nil {
			errs[h.p.Name] = err
		}
	}
	return errs
}
