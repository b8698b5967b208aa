package main

import (
	"context"
	"fmt"
	"time"
)

func init() {
	register(&command{
		name:    "unban",
		args:    "ADDR|CIDR",
		summary: "lift the ban of exactly this address or prefix",
		run:     runUnban,
	})
}

func runUnban(ctx context.Context, e *env, args []string) error {
	c := commands["unban"]
	fs := newFlags(c, e)
	var ef enforceFlags
	ef.register(fs)
	p, s, err := targetCommand(ctx, e, c, fs, &ef, args, nil)
	if err != nil {
		return err
	}
	defer s.close()
	b, err := s.Unban(ctx, p)
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
