package main

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/spf13/pflag"

	"github.com/ctguard/ctguard/internal/human"
	"github.com/ctguard/ctguard/internal/store"
)

func init() {
	register(&command{
		name:    "unban",
		args:    "ADDR|CIDR | --from FILE | --all",
		summary: "lift the ban of exactly this address or prefix",
		flags:   unbanFlags,
		example: "  ctguard unban 203.0.113.7\n  ctguard unban --from lifted.txt\n  ctguard unban --all",
		maxArgs: 1,
	})
}

func unbanFlags(fs *pflag.FlagSet) action {
	var ef enforceFlags
	ef.register(fs)
	from := fs.String("from", "", "lift the ban of every ADDR|CIDR listed in `FILE`, one a line (- reads stdin)")
	all := fs.Bool("all", false, "lift every active ban")
	return func(ctx context.Context, e *env, args []string) error {
		if fs.Changed("from") || fs.Changed("all") {
			if len(args) > 0 {
				return usagef("unexpected argument %q: --from and --all take no ADDR|CIDR", args[0])
			}
			if (*from == "") == !*all {
				return usagef("give either --from FILE or --all")
			}
			if err := ef.validate(); err != nil {
				return err
			}
			if err := needRoot(); err != nil {
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
		p, s, err := targetCommand(ctx, e, &ef, args, nil)
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
		fmt.Fprintf(e.stdout, "%s %s (banned %d %s, first %s)\n", verb, b.Prefix, b.Count, times, human.Time(b.First))
		if b.Origin == store.OriginCrowdSec {
			fmt.Fprintf(e.stdout, "  it came from CrowdSec's Local API: lifted here only; it returns if the LAPI sends it again\n")
		}
		return nil
	}
}
