package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/ctguard/ctguard/internal/human"
	"github.com/ctguard/ctguard/internal/store"
)

func init() {
	register(&command{
		name:    "list",
		args:    "[--json] [--all] [--allowlist]",
		summary: "list active bans (or the whole ban history, or the effective allowlist)",
		flags:   listFlags,
		example: "  ctguard list\n  ctguard list --all --json\n  ctguard list --allowlist",
	})
}

// listBan is one row of `list --json`; field names are a contract.
type listBan struct {
	store.Ban
	Active           bool    `json:"active"`
	ExpiresInSeconds float64 `json:"expires_in_seconds"`
}

// listJSON is `list --json`; allowlistJSON is `list --allowlist --json`.
type listJSON struct {
	envelope
	Bans []listBan `json:"bans"`
}

type allowlistJSON struct {
	envelope
	Allowlist []listAllow `json:"allowlist"`
}

type listAllow struct {
	Prefix  string     `json:"prefix"`
	Source  string     `json:"source"`
	Detail  string     `json:"detail,omitempty"`
	Expires *time.Time `json:"expires,omitempty"`
}

func listFlags(fs *pflag.FlagSet) action {
	var ef enforceFlags
	ef.register(fs)
	asJSON := &ef.json // --json comes with the shared flags
	all := fs.Bool("all", false, "include expired and lifted bans (history)")
	allowlist := fs.Bool("allowlist", false, "print the effective allowlist instead")
	return func(ctx context.Context, e *env, args []string) error {
		if err := ef.validate(); err != nil {
			return err
		}
		if err := needRoot(); err != nil {
			return err
		}
		s, err := ef.open(ctx, e, false)
		if err != nil {
			return err
		}
		defer s.close()
		if *allowlist {
			return printAllowlist(e, s, *asJSON)
		}
		bans, err := s.List(*all)
		if err != nil {
			return err
		}
		now := time.Now()
		rows := make([]listBan, 0, len(bans))
		for _, b := range bans {
			r := listBan{Ban: b, Active: b.Active(now)}
			if r.Active {
				r.ExpiresInSeconds = b.Expires.Sub(now).Seconds() // lifted and expired bans count down nothing
			}
			rows = append(rows, r)
		}
		if *asJSON {
			return writeJSON(e.stdout, listJSON{newEnvelope("list"), rows})
		}
		if len(rows) == 0 {
			fmt.Fprintln(e.stdout, "no active bans")
			return nil
		}
		defer printCounters(ctx, e, s)
		tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PREFIX\tSTATE\tEXPIRES IN\tCOUNT\tPURGED\tREMAINING\tREASON")
		for _, r := range rows {
			state := "active"
			if r.Scoped {
				state = "active, SSH open"
			}
			if !r.Active {
				state = "expired"
				if !r.Ended.IsZero() {
					state = "lifted: " + r.EndReason
				}
			}
			expires := "-"
			if r.Active {
				expires = human.Duration(time.Duration(r.ExpiresInSeconds * float64(time.Second)))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\n", r.Prefix, state, expires, r.Count, r.Purged, r.Remaining, r.Reason)
		}
		return tw.Flush()
	}
}

func printAllowlist(e *env, s *session, asJSON bool) error {
	l, err := s.Allowlist()
	if err != nil {
		return err
	}
	var rows []listAllow
	seen := map[netip.Prefix]int{}
	for _, en := range l.Entries() {
		if en.Prefix.Addr().Is4In6() {
			continue // the IPv4-mapped twin of an IPv4 entry: matching detail, not a second entry
		}
		if i, ok := seen[en.Prefix]; ok {
			also := "also " + string(en.Source)
			if en.Detail != "" {
				also += " " + en.Detail
			}
			rows[i].Detail = strings.TrimPrefix(rows[i].Detail+"; "+also, "; ")
			continue
		}
		seen[en.Prefix] = len(rows)
		r := listAllow{Prefix: en.Prefix.String(), Source: string(en.Source), Detail: en.Detail}
		if !en.Expires.IsZero() {
			exp := en.Expires
			r.Expires = &exp
		}
		rows = append(rows, r)
	}
	if asJSON {
		return writeJSON(e.stdout, allowlistJSON{newEnvelope("list"), rows})
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PREFIX\tSOURCE\tDETAIL")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Prefix, r.Source, r.Detail)
	}
	for _, w := range l.Warnings {
		fmt.Fprintf(e.stderr, "warning: %s\n", w)
	}
	return tw.Flush()
}

// printCounters adds the kernel's drop counters under the table (reading
// them changes nothing); a missing table is worth saying.
func printCounters(ctx context.Context, e *env, s *session) {
	c, err := s.Counters(ctx)
	if err != nil {
		fmt.Fprintf(e.stderr, "drop counters unavailable: %v\n", err)
		return
	}
	t := c.Total()
	sc := c.Scoped
	fmt.Fprintf(e.stdout, "\ndropped before conntrack: %d packets, %d bytes (addresses v4 %d / v6 %d, prefixes v4 %d / v6 %d, bans leaving SSH open %d packets)\n",
		t.Packets, t.Bytes, c.Ban4.Packets, c.Ban6.Packets, c.Net4.Packets, c.Net6.Packets,
		sc.Ban4.Packets+sc.Ban6.Packets+sc.Net4.Packets+sc.Net6.Packets)
}
