package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"golang.org/x/sys/unix"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/human"
	"github.com/ctguard/ctguard/internal/scan"
	"github.com/ctguard/ctguard/internal/tune"
)

func init() {
	register(&command{
		name: "tune",
		args: "[--json] [--observe DURATION] [--mem-budget PCT] [--nat-floor DURATION] [--apply | --rollback] [--yes]",
		summary: "sizing and timeout advice for this kernel, RAM and traffic; --apply writes it, --rollback undoes it\n\n" +
			"Reads the kernel version, RAM, nf_conntrack_max/buckets, the entry size and the timeouts,\n" +
			"scans the table once (or for --observe DURATION) for idle times of ESTABLISHED entries, and\n" +
			"prints current vs recommended values with reasons and memory costs. --apply writes\n" +
			"/etc/sysctl.d/" + tune.SysctlFile + ", /etc/modprobe.d/" + tune.ModprobeFile + " and\n" +
			"/etc/modules-load.d/" + tune.ModulesLoadFile + ", applies live values, and backs up what it\n" +
			"replaces under /etc/ctguard/tune-backup; it shows the diff and asks first unless --yes.\n\n" +
			"On a host that NATs (Docker, Kubernetes, MASQUERADE/DNAT rules or translated entries) the\n" +
			"established timeout is never advised below --nat-floor. Where kube-proxy runs, --apply leaves\n" +
			"nf_conntrack_max and the TCP established/close_wait timeouts alone (kube-proxy overwrites\n" +
			"them) and tune lists the kube-proxy settings to change instead.",
		flags:   tuneFlags,
		example: "  ctguard tune\n  ctguard tune --observe 10m\n  ctguard tune --apply",
	})
}

// tuneStdin returns the reader for the confirmation prompt and whether it is
// a terminal; tests replace it.
var tuneStdin = func() (io.Reader, bool) {
	return os.Stdin, isTerminal(os.Stdin)
}

// isTerminal reports whether f is a terminal (a tty answers TCGETS;
// /dev/null, also a character device, does not).
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

const maxObserve = 24 * time.Hour

func tuneFlags(fs *pflag.FlagSet) action {
	asJSON := fs.Bool("json", false, "print JSON")
	observe := fs.Duration("observe", 0, "scan the table repeatedly for this long, a `DURATION` (e.g. 10m), to see idle gaps end; 0: one scan")
	budget := fs.Float64("mem-budget", tune.DefaultBudgetPercent, "`PCT` of RAM a full conntrack table may take (0 < PCT <= 50)")
	apply := fs.Bool("apply", false, "write the recommended values (files and live), after showing the diff")
	rollback := fs.Bool("rollback", false, "restore what the last --apply replaced")
	yes := fs.Bool("yes", false, "do not ask before --apply or --rollback")
	procfs := fs.String("procfs", "/proc", "procfs root")
	sysfs := fs.String("sysfs", "/sys", "sysfs root")
	etc := fs.String("etc", "/etc", "etc root")
	natFloor := fs.Duration("nat-floor", tune.NATFloor*time.Second, "on a host that NATs, the shortest established timeout to advise, a `DURATION`: idle NAT'ed connections break when their entry expires (default: TCP keepalive's 2h + 9 x 75s probes, rounded up); 0: no floor")
	rules := fs.String("rules", "", "read saved firewall rules from `DIR` (files iptables-save, ip6tables-save, nft: their output) instead of running those commands; with a --procfs other than /proc and no --rules, no rules are read")
	reader := fs.String("reader", scan.Auto, "how to read the table: auto (netlink, else /proc), netlink, or proc; with a --procfs other than /proc always its net/nf_conntrack file")
	return func(ctx context.Context, e *env, args []string) error {
		switch {
		case *budget <= 0 || *budget > 50 || *budget != *budget:
			return usagef("--mem-budget %g: want a percentage of RAM above 0 and at most 50", *budget)
		case *observe < 0 || *observe > maxObserve:
			return usagef("--observe %s: want a duration from 0 to %s", *observe, maxObserve)
		case *apply && *rollback:
			return usagef("--apply and --rollback exclude each other")
		case *yes && !*apply && !*rollback:
			return usagef("--yes only makes sense with --apply or --rollback")
		case *reader != scan.Auto && *reader != scan.Netlink && *reader != scan.Proc:
			return usagef("--reader %q: want auto, netlink or proc", *reader)
		case *natFloor < 0 || *natFloor > 432000*time.Second || *natFloor%time.Second != 0:
			return usagef("--nat-floor %s: want whole seconds from 0 to 120h", *natFloor)
		}
		roots := tune.Roots{Procfs: *procfs, Sysfs: *sysfs, Etc: *etc, Rules: *rules}
		dirs := map[string]string{"--procfs": *procfs, "--sysfs": *sysfs, "--etc": *etc}
		switch {
		case *rules != "":
			dirs["--rules"] = *rules
		case filepath.Clean(*procfs) == "/proc":
			roots.Rules = tune.LiveRules
		}
		for flag, dir := range dirs {
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				return usagef("%s %s: not a directory", flag, dir)
			}
		}
		log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

		if *rollback {
			return tuneRollback(e, roots, *asJSON, *yes, log)
		}

		host, err := tune.ReadHost(roots)
		if err != nil {
			return fmt.Errorf("tune: %w", err)
		}
		obs, scanErr := observeTable(ctx, roots, *reader, host, *observe, e.stderr)
		if scanErr != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			fmt.Fprintf(e.stderr, "ctguard tune: no scan of the table (%v): recommending without observed idle times\n", scanErr)
			obs = nil
		}
		floor := int64(*natFloor / time.Second)
		if floor == 0 {
			floor = -1 // off
		}
		plan := tune.Recommend(host, obs, tune.Budget{MemPercent: *budget, NATFloor: floor})

		out := tuneJSON{envelope: newEnvelope("tune"), Plan: plan, Notes: host.Notes}
		if !*asJSON {
			tune.WritePlan(e.stdout, plan)
		}
		if !*apply {
			if *asJSON {
				return writeJSON(e.stdout, out)
			}
			return nil
		}

		change, err := tune.Prepare(roots, plan)
		if err != nil {
			return fmt.Errorf("tune --apply: %w", err)
		}
		out.Change = &change
		if len(change.Refused) > 0 {
			fmt.Fprintf(e.stderr, "ctguard tune: %d recommended value(s) not applied: kube-proxy sets them when it starts; change its configuration instead (see \"kube-proxy settings\")\n", len(change.Refused))
		}
		if change.Empty() {
			if len(change.Refused) > 0 {
				fmt.Fprintln(e.stderr, "ctguard tune: nothing else to apply")
				for _, r := range change.Refused {
					fmt.Fprintf(e.stderr, "  not applied: %s\n", r)
				}
				if *asJSON {
					return writeJSON(e.stdout, out)
				}
				return nil
			}
			fmt.Fprintln(e.stderr, "ctguard tune: nothing to apply: the recommended values are in place")
			if *asJSON {
				return writeJSON(e.stdout, out)
			}
			return nil
		}
		diffTo := e.stdout
		if *asJSON {
			diffTo = e.stderr
		}
		fmt.Fprintln(diffTo, "\nchanges:")
		tune.WriteDiff(diffTo, change)
		if len(plan.Warnings) > 0 {
			fmt.Fprintf(e.stderr, "ctguard tune: %d warning(s) above: other files or agents may override these values\n", len(plan.Warnings))
		}
		if err := confirm(e, *yes, "apply these changes?"); err != nil {
			return err
		}
		done, err := tune.Apply(roots, change, log)
		out.Change = &done
		if err != nil {
			return fmt.Errorf("tune --apply: %w", err)
		}
		out.Applied = true
		var failed []string
		for _, l := range done.Live {
			if l.Err != "" {
				failed = append(failed, fmt.Sprintf("%s (%s)", l.Key, l.Err))
			}
		}
		if *asJSON {
			if err := writeJSON(e.stdout, out); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(e.stdout, "\napplied: %d file(s) written, %d live value(s) set; undo with: ctguard tune --rollback\n",
				len(done.Files), len(done.Live)-len(failed))
		}
		if len(failed) > 0 {
			return fmt.Errorf("tune --apply: files written, but %d live value(s) not applied (they take effect at the next boot or module load): %s",
				len(failed), strings.Join(failed, ", "))
		}
		return nil
	}
}

func tuneRollback(e *env, roots tune.Roots, asJSON, yes bool, log *slog.Logger) error {
	change, err := tune.PrepareRollback(roots)
	if err != nil {
		if errors.Is(err, tune.ErrNoBackup) {
			return fmt.Errorf("tune --rollback: %w", err)
		}
		return fmt.Errorf("tune --rollback: %w", err)
	}
	diffTo := e.stdout
	if asJSON {
		diffTo = e.stderr
	}
	fmt.Fprintln(diffTo, "rollback:")
	tune.WriteDiff(diffTo, change)
	if err := confirm(e, yes, "roll back these changes?"); err != nil {
		return err
	}
	done, err := tune.Rollback(roots, log)
	if asJSON {
		if jerr := writeJSON(e.stdout, rollbackJSON{newEnvelope("tune"), done, err == nil}); jerr != nil {
			return jerr
		}
	}
	if err != nil {
		return fmt.Errorf("tune --rollback: %w", err)
	}
	if !asJSON {
		fmt.Fprintf(e.stdout, "rolled back: %d file(s), %d live value(s)\n", len(done.Files), len(done.Live))
	}
	return nil
}

// confirm asks on stdin unless yes; without a terminal it refuses, so that a
// script never applies by accident.
func confirm(e *env, yes bool, question string) error {
	if yes {
		return nil
	}
	in, tty := tuneStdin()
	if !tty {
		return errors.New("refusing to change the host without confirmation: stdin is not a terminal (pass --yes)")
	}
	fmt.Fprintf(e.stderr, "%s [y/N] ", question)
	line, err := bufio.NewReader(io.LimitReader(in, 1024)).ReadString('\n')
	if err != nil && line == "" {
		return errors.New("no answer: nothing changed")
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return errors.New("not confirmed: nothing changed")
}

// tuneJSON is `tune --json`.
type tuneJSON struct {
	envelope
	Plan    tune.Plan    `json:"plan"`
	Change  *tune.Change `json:"change,omitempty"`
	Applied bool         `json:"applied"`
	Notes   []string     `json:"host_notes,omitempty"`
}

// rollbackJSON is `tune --rollback --json`.
type rollbackJSON struct {
	envelope
	Change     tune.Change `json:"change"`
	RolledBack bool        `json:"rolled_back"`
}

// observeTable scans the conntrack table once, or repeatedly for d, and
// feeds TCP ESTABLISHED entries to a tune.Observer. With the real /proc it
// reads as the other commands do (ctnetlink, else /proc/net/nf_conntrack);
// with a fixture procfs only the fixture's net/nf_conntrack file is read,
// never the kernel's table.
func observeTable(ctx context.Context, roots tune.Roots, reader string, h *tune.Host, d time.Duration, stderr io.Writer) (*tune.Observation, error) {
	if filepath.Clean(roots.Procfs) != "/proc" {
		reader = scan.Proc
	}
	src, err := scan.Open(ctx, reader, roots.Procfs)
	if err != nil {
		return nil, explain(err)
	}
	defer src.Close()
	// Source has no callback dump; take its netlink connection, or read the
	// same /proc file it chose.
	var rd conntrack.Reader = &conntrack.ProcReader{Path: conntrack.ProcPath(roots.Procfs)}
	if c := src.Conn(); c != nil {
		rd = c
	}
	addrs, err := tune.LocalAddrs(roots.Procfs)
	if err != nil {
		// Without them every flow counts as inbound: the host's own pools
		// give no evidence, and the floor alone protects them.
		fmt.Fprintf(stderr, "ctguard tune: cannot tell outbound from inbound flows (%v): counting all as inbound\n", err)
	}
	local := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		local[a.Unmap()] = true
	}
	ref, ok := h.Sysctl[tune.Established]
	if !ok {
		return nil, errors.New("nf_conntrack_tcp_timeout_established unknown: idle times cannot be computed")
	}
	unack := h.Sysctl[tune.Unacked]
	if unack == 0 {
		unack = 300
	}
	o := tune.NewObserver(ref, unack)
	o.Follow = d > 0 // one scan cannot see a gap end

	// Scans are spread over d: about 12 of them, 5 s to 60 s apart.
	interval := min(max(d/12, 5*time.Second), time.Minute)
	deadline := time.Now().Add(d)
	for i := 0; i < 10000; i++ { // bounded: 24 h / 5 s = 17280 would be the most; d/interval+1 stops it first
		start := time.Now()
		o.BeginScan(start)
		n := 0
		err := rd.Dump(ctx, conntrack.DumpOptions{}, func(en *conntrack.Entry) error {
			n++
			if en.Proto != conntrack.ProtoTCP || !en.HasTCPState || en.TCPState != conntrack.TCPEstablished {
				return nil
			}
			// An untranslated entry's reply tuple is its original reversed;
			// DNAT changes the reply source, SNAT/MASQUERADE its destination.
			nat := en.Reply.Src != en.Orig.Dst || en.Reply.Dst != en.Orig.Src ||
				en.Reply.SrcPort != en.Orig.DstPort || en.Reply.DstPort != en.Orig.SrcPort
			o.Add(tune.Flow{Proto: en.Proto, Src: en.Orig.Src, Dst: en.Orig.Dst, SrcPort: en.Orig.SrcPort, DstPort: en.Orig.DstPort,
				Zone: en.Zone, Outbound: local[en.Orig.Src.Unmap()], Remaining: en.Timeout, NAT: nat})
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("scan %d (%s): %w", i+1, src.ReaderName(), explain(err))
		}
		count := n
		if c, err := roots.ReadSysctl(tune.Count); err == nil {
			count = max(count, int(c))
		}
		o.EndScan(count)
		if d == 0 || time.Now().Add(interval).After(deadline.Add(interval/2)) {
			break
		}
		fmt.Fprintf(stderr, "ctguard tune: scan %d: %d entries in %s\n", i+1, n, human.Duration(time.Since(start)))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(interval):
		}
	}
	return o.Observation(), nil
}
