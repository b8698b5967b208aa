package main

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/ctguard/ctguard/internal/human"
)

func init() {
	register(&command{
		name:    "purge",
		args:    "ADDR|CIDR",
		summary: "delete the conntrack entries of an address or prefix now (without banning it)",
		flags:   purgeFlags,
		example: "  ctguard purge 203.0.113.7",
		maxArgs: 1,
	})
}

func purgeFlags(fs *pflag.FlagSet) action {
	var ef enforceFlags
	ef.register(fs)
	return func(ctx context.Context, e *env, args []string) error {
		p, s, err := targetCommand(ctx, e, &ef, args, nil)
		if err != nil {
			return err
		}
		defer s.close()
		r, err := s.Purge(ctx, p)
		if ef.json {
			a := newAction("purge", p, s.DryRun())
			a.Result, a.Purged, a.Remaining = "purged", r.Purged, r.Remaining
			return printAction(e, a, err)
		}
		if err != nil {
			return err
		}
		if s.DryRun() {
			fmt.Fprintf(e.stdout, "would purge %d conntrack entries of %s\n(%s)\n", r.Purged, r.Prefix, dryRunNote)
			return nil
		}
		fmt.Fprintf(e.stdout, "purged %d conntrack entries of %s in %s, %d remain\n", r.Purged, r.Prefix, human.Duration(r.Took), r.Remaining)
		if r.Remaining > 0 {
			fmt.Fprintf(e.stdout, "  %s is not banned and keeps creating entries; 'ctguard ban %s' stops that\n", r.Prefix, r.Prefix)
		}
		return nil
	}
}
