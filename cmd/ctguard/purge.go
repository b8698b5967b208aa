package main

import (
	"context"
	"fmt"
)

func init() {
	register(&command{
		name:    "purge",
		args:    "ADDR|CIDR",
		summary: "delete the conntrack entries of an address or prefix now (without banning it)",
		run:     runPurge,
	})
}

func runPurge(ctx context.Context, e *env, args []string) error {
	c := commands["purge"]
	fs := newFlags(c, e)
	var ef enforceFlags
	ef.register(fs)
	p, s, err := targetCommand(ctx, e, c, fs, &ef, args, nil)
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
	fmt.Fprintf(e.stdout, "purged %d conntrack entries of %s in %s, %d remain\n", r.Purged, r.Prefix, r.Took.Round(100_000), r.Remaining)
	if r.Remaining > 0 {
		fmt.Fprintf(e.stdout, "  %s is not banned and keeps creating entries; 'ctguard ban %s' stops that\n", r.Prefix, r.Prefix)
	}
	return nil
}
