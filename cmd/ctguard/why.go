package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/spf13/pflag"

	"github.com/ctguard/ctguard/internal/config"
	"github.com/ctguard/ctguard/internal/daemon"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/human"
	"github.com/ctguard/ctguard/internal/store"
)

func init() {
	register(&command{
		name: "why",
		args: "ADDR|CIDR [--json] [--socket PATH] [--config FILE]",
		summary: "explain what ctguard knows and decided about an address or prefix: evidence, thresholds, allowlist hits, bans, verdict\n" +
			"With a daemon running, the answer comes from its last cycle. Without one, why scans the table once, reads the\n" +
			"ban store and the allowlist, and says what a cycle of the daemon on that scan would do (with the settings of\n" +
			"--config, else " + defaultConfigPath + " when it exists, else the built-in defaults).",
		flags:   whyFlags,
		example: "  ctguard why 203.0.113.7\n  ctguard why 198.51.100.0/24 --json",
		maxArgs: 1,
	})
}

func whyFlags(fs *pflag.FlagSet) action {
	var ef enforceFlags
	ef.register(fs)
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) != 1 {
			return usagef("want exactly one ADDR or CIDR")
		}
		target, note, err := enforce.ParseTarget(args[0])
		if err != nil {
			return usagef("%v", err)
		}
		if err := ef.validate(); err != nil {
			return err
		}
		if note != "" {
			fmt.Fprintln(e.stderr, note)
		}
		cfg, err := ef.config()
		if err != nil {
			return err
		}
		var r daemon.WhyReply
		sock := ef.socketPath(cfg)
		cl, err := daemon.Dial(sock)
		switch {
		case err == nil:
			if err := cl.Call(ctx, daemon.Request{Op: "why", Target: target.String()}, &r); err != nil {
				return err
			}
		case errors.Is(err, daemon.ErrNoDaemon):
			if r, err = whyOffline(ctx, e, &ef, cfg, target); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w on %s", err, sock)
		}
		if ef.json {
			return writeJSON(e.stdout, whyJSON{newEnvelope("why"), r})
		}
		printWhy(e.stdout, &r)
		return nil
	}
}

// whyOffline answers without a daemon: one scan, the store, the allowlist
// and the policy of the configuration, as a cycle would see them.
func whyOffline(ctx context.Context, e *env, ef *enforceFlags, cfg config.Config, target netip.Prefix) (daemon.WhyReply, error) {
	if err := needRoot(); err != nil {
		return daemon.WhyReply{}, err
	}
	sf := scanFlags{reader: cfg.Daemon.Reader, procfs: cfg.Daemon.Procfs, v4Bits: cfg.Snapshot.V4Prefix, v6Bits: cfg.Snapshot.V6Prefix,
		idleSecs: uint(cfg.Snapshot.IdleThreshold / time.Second), sockets: cfg.Daemon.Sockets}
	s, err := sf.open(ctx)
	if err != nil {
		return daemon.WhyReply{}, err
	}
	defer s.close()
	st, err := s.src.Stats(ctx)
	if err != nil {
		return daemon.WhyReply{}, explain(err)
	}
	snap, err := s.scan(ctx)
	if err != nil {
		return daemon.WhyReply{}, err
	}
	sess, err := ef.open(ctx, e, false)
	if err != nil {
		return daemon.WhyReply{}, err
	}
	defer sess.close()
	bans, err := sess.List(true)
	if err != nil {
		return daemon.WhyReply{}, err
	}
	list, err := sess.Allowlist()
	if err != nil {
		return daemon.WhyReply{}, err
	}
	return daemon.ExplainOffline(daemon.Offline{Snapshot: snap, Count: int(st.Count), Max: int(st.Max), Policy: cfg.Policy,
		Bans: bans, Allowed: list}, target), nil
}

// whyJSON is `why --json`.
type whyJSON struct {
	envelope
	daemon.WhyReply
}

func printWhy(w io.Writer, r *daemon.WhyReply) {
	mode := ""
	if r.DryRun {
		mode = " (dry run: nothing is enforced)"
	}
	what := r.Addr.String()
	if r.Target.IsValid() && !r.Target.IsSingleIP() {
		what = r.Target.String()
	}
	fmt.Fprintf(w, "%s%s\n", what, mode)
	if r.Offline {
		fmt.Fprintf(w, "no daemon    this answer comes from one scan made now, without a growth history or a rate\n")
	}
	ago := "never"
	if !r.CycleAt.IsZero() {
		ago = human.Duration(time.Since(r.CycleAt)) + " ago"
	}
	fmt.Fprintf(w, "pressure     %s: a source is banned at score %.0f (last scan %s)\n", r.Pressure, r.Threshold, ago)
	wt := r.Policy.Weights
	fmt.Fprintf(w, "score        = %.2g x idle + %.2g x orphan + %.2g x half-open + %.2g x stalled + %.2g x active + %.2g x closing + %.2g x other; at least %d entries\n",
		wt.Idle, wt.Orphan, wt.HalfOpen, wt.Stalled, wt.Active, wt.Closing, wt.Other, r.Policy.MinEntries)
	hold := func(label string, h *daemon.Holding) {
		if h == nil {
			fmt.Fprintf(w, "%-12s holds nothing at the last scan\n", label)
			return
		}
		c := h.Counts
		fmt.Fprintf(w, "%-12s %s: %d entries (idle %d, active %d [orphan %d], stalled %d, half-open %d, closing %d, other %d), oldest idle %s, score %.1f",
			label, h.Key, c.Entries, c.Idle, c.Active, c.OrphanActive, c.Stalled, c.HalfOpen, c.Closing, c.Other,
			human.Duration(time.Duration(c.MaxIdle)*time.Second), h.Score)
		if h.Members > 0 {
			fmt.Fprintf(w, ", %s", plural(int(h.Members), "source", "sources"))
		}
		fmt.Fprintln(w)
		if h.Service != nil {
			others := ""
			if h.ServiceOthers {
				others = " (and others)"
			}
			fmt.Fprintf(w, "%-12s its entries go to %s%s\n", "", h.Service, others)
		}
		if g := h.Growth; g.Window > 0 {
			fmt.Fprintf(w, "%-12s gained %d ESTABLISHED entries in %s, %.0f%% of the %d it holds\n", "",
				g.Gain, human.Duration(g.Window), 100*g.Young(), g.Held)
		}
	}
	p := r.Policy
	fmt.Fprintf(w, "growth rule  from %s pressure: banned when it gained >= %d ESTABLISHED entries within %s and that is >= %.0f%% of what it holds\n",
		p.GrowthPressure, p.GrowthMinGain, human.Duration(p.GrowthWindow), 100*p.GrowthYoung)
	hold("source", r.Source)
	hold("prefix", r.Prefix)
	if len(r.Allowlisted) == 0 {
		fmt.Fprintf(w, "allowlist    no entry covers it\n")
	}
	for _, a := range r.Allowlisted {
		fmt.Fprintf(w, "allowlist    %s: never banned\n", a)
	}
	for _, a := range r.Sessions {
		fmt.Fprintf(w, "ssh session  %s: not exempt, but a ban leaves the SSH ports open\n", a)
	}
	if r.Spared != "" {
		fmt.Fprintf(w, "spared       at the last scan (%s pressure, nothing banned): %s\n", r.Pressure, r.Spared)
	}
	if len(r.Bans) == 0 {
		fmt.Fprintf(w, "bans         none on record\n")
	}
	now := time.Now()
	for _, b := range r.Bans {
		state := "expired " + human.Duration(now.Sub(b.Expires)) + " ago"
		switch {
		case !b.Ended.IsZero():
			state = "lifted (" + b.EndReason + ")"
		case b.Expires.After(now):
			state = "ACTIVE, expires in " + human.Duration(b.Expires.Sub(now))
		}
		scope := ""
		if b.Scoped {
			scope = " (SSH ports left open)"
		}
		fmt.Fprintf(w, "ban          %s %s%s: %s, banned %s, last %s; purged %d, %d remained; closed %s\n", b.Prefix, state, scope, b.Reason, plural(b.Count, "time", "times"),
			human.Time(b.Last), b.Purged, b.Remaining, plural(b.SocketsClosed, "socket", "sockets"))
		if b.Evidence != "" {
			fmt.Fprintf(w, "             evidence: %s\n", b.Evidence)
		}
		switch b.Origin {
		case store.OriginManual:
			fmt.Fprintf(w, "             an operator's ban: it never counts toward an automatic ban of its prefix\n")
		case store.OriginAdopted:
			fmt.Fprintf(w, "             adopted: found in the kernel at start without a store record\n")
		case store.OriginCrowdSec:
			fmt.Fprintf(w, "             pulled from CrowdSec's Local API: lifted when the LAPI deletes it; it never counts toward an automatic ban of its prefix\n")
		}
	}
	for _, ev := range r.Events {
		fmt.Fprintf(w, "decision     %s %s %s", human.Time(ev.Time), ev.Action, ev.Target)
		switch g := ev.Decision.Growth; {
		case g != nil:
			fmt.Fprintf(w, " (%s: gained %d in %s, %.0f%% of the %d it holds, at %s; score %.1f)", ev.Decision.Reason, g.Gain,
				human.Duration(g.Window), 100*g.Young(), g.Held, ev.Decision.Pressure, ev.Decision.Score)
		case ev.Decision.Reason != "":
			fmt.Fprintf(w, " (%s, score %.1f >= %.0f at %s)", ev.Decision.Reason, ev.Decision.Score, ev.Decision.Threshold, ev.Decision.Pressure)
		}
		if ev.Detail != "" {
			fmt.Fprintf(w, ": %s", ev.Detail)
		}
		fmt.Fprintln(w)
	}
	if r.Verdict != "" {
		fmt.Fprintf(w, "verdict      %s\n", r.Verdict)
	}
}
