package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/ctguard/ctguard/internal/human"
)

func init() {
	register(&command{
		name:    "allow",
		args:    "ADDR|CIDR [--ttl D] [--note TEXT] [--remove]",
		summary: "add an address or prefix to the runtime allowlist (never banned; lifts overlapping bans)",
		flags:   allowFlags,
		example: "  ctguard allow 198.51.100.20 --note \"monitoring\"\n  ctguard allow 192.0.2.0/24 --ttl 2h\n  ctguard allow 198.51.100.20 --remove",
		maxArgs: 1,
	})
}

func allowFlags(fs *pflag.FlagSet) action {
	var ef enforceFlags
	ef.register(fs)
	ttlS := fs.String("ttl", "", "how long the entry lasts, a `DURATION` (default: until removed)")
	note := fs.String("note", "", "why, as `TEXT` shown when a ban is refused")
	remove := fs.Bool("remove", false, "remove the runtime entry instead")
	return func(ctx context.Context, e *env, args []string) error {
		p, pnote, err := targetArg(args)
		if err != nil {
			return err
		}
		var ttl time.Duration
		if *ttlS != "" {
			if *remove {
				return usagef("--ttl and --remove exclude each other")
			}
			if ttl, err = parseAllowTTL(*ttlS); err != nil {
				return err
			}
		}
		if err := ef.validate(); err != nil {
			return err
		}
		if err := needRoot(); err != nil {
			return err
		}
		if pnote != "" {
			fmt.Fprintln(e.stderr, pnote)
		}
		s, err := ef.open(ctx, e, true)
		if err != nil {
			return err
		}
		defer s.close()
		if *remove {
			err := s.RemoveAllow(p)
			if ef.json {
				a := newAction("allow", p, s.DryRun())
				a.Result = "removed"
				return printAction(e, a, err)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "removed %s from the runtime allowlist\n", p)
			return nil
		}
		r, err := s.Allow(ctx, p, ttl, *note)
		if ef.json {
			a := newAction("allow", p, s.DryRun())
			a.Result = "allowlisted"
			if !r.Entry.Expires.IsZero() {
				exp := r.Entry.Expires.UTC()
				a.Expires = &exp
			}
			a.Lifted, a.KeptBanned = prefixStrings(r.Lifted), prefixStrings(r.Kept)
			return printAction(e, a, err)
		}
		if err != nil {
			return err
		}
		until := "until removed"
		if !r.Entry.Expires.IsZero() {
			until = "until " + human.Time(r.Entry.Expires)
		}
		fmt.Fprintf(e.stdout, "allowlisted %s %s\n", r.Entry.Prefix, until)
		lifted := "lifted"
		if s.DryRun() {
			lifted = "would lift"
			defer fmt.Fprintf(e.stdout, "(%s; the entry lives in its throw-away state)\n", dryRunNote)
		}
		for _, q := range r.Lifted {
			fmt.Fprintf(e.stdout, "  %s the ban of %s (it overlapped)\n", lifted, q)
		}
		if len(r.Kept) > 0 {
			fmt.Fprintf(e.stdout, "  the rest stays banned for its remaining time: %s\n", joinPrefixes(r.Kept))
		}
		return nil
	}
}

func joinPrefixes(ps []netip.Prefix) string {
	return strings.Join(prefixStrings(ps), " ")
}

func prefixStrings(ps []netip.Prefix) []string {
	if len(ps) == 0 {
		return nil
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return s
}
