package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/human"
)

// maxBulkLines bounds a --from list: one kernel batch, one store write.
const maxBulkLines = 50000

// readTargets reads one ADDR or CIDR per line from path ("-": stdin).
// Blank lines and #-comments are skipped, as is anything after the first
// field. Every bad line is reported (FILE:LINE: why); with any, nothing is
// returned, so a bulk command changes nothing on bad input.
func readTargets(e *env, path string) ([]netip.Prefix, error) {
	var r io.Reader
	name := path
	if path == "-" {
		r, name = e.in(), "stdin"
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, usagef("--from: %v", err)
		}
		defer f.Close()
		r = f
	}
	var out []netip.Prefix
	var bad []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		p, note, err := enforce.ParseTarget(fields[0])
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s:%d: %v", name, n, err))
			continue
		}
		if note != "" {
			fmt.Fprintf(e.stderr, "%s:%d: %s\n", name, n, note)
		}
		out = append(out, p)
		if len(out) > maxBulkLines {
			return nil, usagef("%s: more than %d targets: split the list", name, maxBulkLines)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, usagef("%s: %v", name, err)
	}
	if len(bad) > 0 {
		return nil, usagef("%s, nothing changed:\n%s", plural(len(bad), "bad line", "bad lines"), strings.Join(bad, "\n"))
	}
	if len(out) == 0 {
		return nil, usagef("%s: no targets", name)
	}
	return out, nil
}

// errPartly is a bulk command where some targets failed (exit status 1);
// each was named on stderr.
var errPartly = errors.New("not every target was done (see above)")

// bulkBan bans the targets of --from in one batch and reports per target.
func bulkBan(ctx context.Context, e *env, s *session, ps []netip.Prefix, asJSON bool, r enforce.BanRequest) error {
	reqs := make([]enforce.BanRequest, len(ps))
	for i, p := range ps {
		reqs[i] = r
		reqs[i].Prefix = p
	}
	res, err := s.BanMany(ctx, reqs)
	if err != nil && len(res) == 0 {
		return err
	}
	if asJSON {
		out := make([]actionJSON, len(res))
		for i, x := range res {
			out[i] = banAction(x, s.DryRun())
		}
		return bulkJSON(e, out, err)
	}
	verb := "banned"
	if s.DryRun() {
		verb = "would ban"
	}
	done, covered, failed, purged := 0, 0, 0, 0
	for _, x := range res {
		switch {
		case x.Err != nil:
			failed++
			fmt.Fprintf(e.stderr, "%s: %v\n", x.Prefix, x.Err)
		case x.CoveredBy.IsValid():
			covered++
			fmt.Fprintf(e.stdout, "%s: already covered by %s\n", x.Prefix, x.CoveredBy)
		default:
			done++
			purged += x.Ban.Purged
			fmt.Fprintf(e.stdout, "%s %s for %s\n", verb, x.Prefix, human.Duration(x.TTL))
		}
	}
	what := plural(purged, "conntrack entry purged", "conntrack entries purged")
	if s.DryRun() {
		what = plural(purged, "conntrack entry would be purged", "conntrack entries would be purged")
	}
	fmt.Fprintf(e.stdout, "%s %d of %d (%d already covered, %d refused); %s\n", verb, done, len(ps), covered, failed, what)
	return bulkEnd(e, s, err, failed)
}

// bulkJSON prints a bulk command's results and returns its error: the
// call's, or errPartly when some target failed (exit status 1 either way).
func bulkJSON(e *env, out []actionJSON, err error) error {
	if jerr := writeActions(e.stdout, out); jerr != nil {
		return jerr
	}
	for _, a := range out {
		if a.Error != "" && err == nil {
			err = errPartly
		}
	}
	return err
}

// bulkEnd closes a bulk command: the dry-run note, then its error (exit 1
// when some targets failed).
func bulkEnd(e *env, s *session, err error, failed int) error {
	if s.DryRun() {
		fmt.Fprintf(e.stdout, "(%s)\n", dryRunNote)
	}
	if err != nil {
		return err
	}
	if failed > 0 {
		return errPartly
	}
	return nil
}

// bulkUnban lifts the targets of --from, or every active ban (all).
func bulkUnban(ctx context.Context, e *env, s *session, ps []netip.Prefix, all, asJSON bool) error {
	res, err := s.UnbanMany(ctx, ps, all)
	if err != nil && len(res) == 0 {
		return err
	}
	if asJSON {
		out := make([]actionJSON, len(res))
		for i, x := range res {
			out[i] = unbanAction(x.Prefix, x.Ban, x.Err, s.DryRun())
		}
		return bulkJSON(e, out, err)
	}
	verb := "unbanned"
	if s.DryRun() {
		verb = "would unban"
	}
	done, failed := 0, 0
	for _, x := range res {
		if x.Err != nil {
			failed++
			fmt.Fprintf(e.stderr, "%s: %v\n", x.Prefix, x.Err)
			continue
		}
		done++
		fmt.Fprintf(e.stdout, "%s %s\n", verb, x.Prefix)
	}
	fmt.Fprintf(e.stdout, "%s %d of %d\n", verb, done, len(res))
	return bulkEnd(e, s, err, failed)
}

// plural is "1 thing" or "N things".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
