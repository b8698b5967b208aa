package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"
)

func init() {
	register(&command{
		name:    "unban",
		args:    "ADDR|CIDR | --from FILE | --all",
		summary: "lift the ban of exactly this address or prefix",
		run:     runUnban,
	})
}

func runUnban(ctx context.Context, e *env, args []string) error {
	c := commands["unban"]
	fs := newFlags(c, e)
	var ef enforceFlags
	ef.register(fs)
	from := fs.String("from", "", "lift the ban of every ADDR|CIDR listed in `FILE`, one a line (- reads stdin)")
	all := fs.Bool("all", false, "lift every active ban")
	if bulkArgs(args) {
		if err := parseFlags(fs, args, false); err != nil {
			return err
		}
		if (*from == "") == !*all {
			return usagef("give either --from FILE or --all")
		}
		if err := ef.validate(); err != nil {
			return err
		}
		if err := needRoot(c.name); err != nil {
			return err
		}
		var ps []netip.Prefix
		if *from != "" {
			var err error
			if ps, err = readTargets(e, *from); err != nil {
				return err
			}
		}
		s, err := ef.open(ctx, e, true)
		if err != nil {
			return err
		}
		defer s.close()
		return bulkUnban(ctx, e, s, ps, *all, ef.json)
	}
	p, s, err := targetCommand(ctx, e, c, fs, &ef, args, nil)
	if err != nil {
		return err
	}
	defer s.close()
	b, err := s.Unban(ctx, p)
	if ef.json {
		if jerr := writeActions(e.stdout, unbanAction(p, b, err, s.DryRun())); jerr != nil {
			return jerr
		}
		return err
	}
	if err != nil {
		return err
	}
	times := "times"
	if b.Count == 1 {
		times = "time"
	}
	verb := "unbanned"
	if s.DryRun() {
		verb = "would unban"
		defer fmt.Fprintf(e.stdout, "(%s)\n", dryRunNote)
	}
	fmt.Fprintf(e.stdout, "%s %s (banned %d %s, first %s)\n", verb, b.Prefix, b.Count, times, b.First.Local().Format(time.DateTime))
	return nil
}
