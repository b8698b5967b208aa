package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/daemon"
	"github.com/ctguard/ctguard/internal/human"
	"github.com/ctguard/ctguard/internal/snapshot"
)

func init() {
	register(&command{
		name:    "top",
		args:    "[-n N] [--by held|idle|halfopen] [--prefix] [--watch DURATION] [--json]",
		summary: "show the sources (or prefixes) holding the most conntrack entries",
		flags:   topFlags,
		example: "  ctguard top\n  ctguard top --by idle -n 50\n  ctguard top --prefix --watch 2s",
	})
}

// topJSON is `top --json` (one a line with --watch).
type topJSON struct {
	envelope
	By     string   `json:"by"`
	Prefix bool     `json:"prefix"`
	Total  int      `json:"total"` // sources (or prefixes) in the table, not only those shown
	Rows   []topRow `json:"rows"`
}

// topRow is one element of `top --json`; field names are a contract.
type topRow struct {
	Source         string  `json:"source"`
	Entries        uint32  `json:"entries"`
	Idle           uint32  `json:"idle"`
	IdleAssured    uint32  `json:"idle_assured"`
	Active         uint32  `json:"active"`
	ActiveAssured  uint32  `json:"active_assured"`
	Stalled        uint32  `json:"stalled"`
	HalfOpen       uint32  `json:"half_open"`
	Closing        uint32  `json:"closing"`
	Other          uint32  `json:"other"`
	MaxIdleSeconds uint32  `json:"max_idle_seconds"`
	Orphan         uint32  `json:"orphan"`
	Members        *uint32 `json:"members,omitempty"`
	// Service is where its entries go (absent when they are spread over
	// several with none ahead).
	Service *serviceJSON `json:"service,omitempty"`
}

// serviceJSON is a service of this host as scripts read it.
type serviceJSON struct {
	Protocol string `json:"protocol"`
	Address  string `json:"address"`
	Port     uint16 `json:"port,omitempty"`
	// DNATTarget is where the host forwards the connections (Docker's
	// published ports, a Kubernetes NodePort): address:port.
	DNATTarget string `json:"dnat_target,omitempty"`
	// Others: some of the holder's entries go to other services.
	Others bool `json:"others"`
	// Entries counts every inbound entry to it (status only).
	Entries int `json:"entries,omitempty"`
}

func toServiceJSON(svc snapshot.Service, others bool) *serviceJSON {
	j := &serviceJSON{Protocol: conntrack.ProtoName(svc.Proto), Address: svc.Addr.String(), Port: svc.Port, Others: others}
	if svc.Target.IsValid() {
		j.DNATTarget = svc.Target.String()
	}
	return j
}

// String is how text output names the service: "tcp 198.51.100.2:443",
// with " -> 10.0.0.2:80" when the host forwards it.
func (j *serviceJSON) String() string {
	d := j.Address
	if j.Port != 0 {
		d = net.JoinHostPort(j.Address, strconv.Itoa(int(j.Port)))
	}
	s := j.Protocol + " " + d
	if j.DNATTarget != "" {
		s += " -> " + j.DNATTarget
	}
	return s
}

// serviceText is a holder's service for the text output: "-" when none.
func serviceText(snap *snapshot.Snapshot, h *snapshot.Holder) string {
	svc, others, ok := snap.ServiceOf(h)
	switch {
	case !ok && others:
		return "(several)"
	case !ok:
		return "-"
	case others:
		return svc.String() + " (+others)"
	}
	return svc.String()
}

func topFlags(fs *pflag.FlagSet) action {
	var sf scanFlags
	sf.register(fs)
	n := fs.IntP("rows", "n", 20, "how many `ROWS`")
	by := fs.String("by", "held", "rank by `ORDER`: held (all entries), idle (idle ESTABLISHED entries) or halfopen")
	prefix := fs.Bool("prefix", false, "group sources by prefix (--v4-prefix, --v6-prefix)")
	watch := fs.Duration("watch", 0, "refresh every `DURATION` until interrupted (0: once)")
	asJSON := fs.Bool("json", false, "print one JSON object (one a line with --watch)")
	direct := fs.Bool("direct", false, "scan the kernel even when a daemon runs (by default its last scan is shown)")
	return func(ctx context.Context, e *env, args []string) error {
		sock, err := sf.setup()
		if err != nil {
			return err
		}
		order, ok := map[string]snapshot.Order{"held": snapshot.ByHeld, "idle": snapshot.ByIdle, "halfopen": snapshot.ByHalfOpen}[*by]
		if !ok {
			return usagef("--by %q: want held, idle or halfopen", *by)
		}
		if *n <= 0 {
			return usagef("--rows %d: want at least 1", *n)
		}
		if *watch < 0 || (*watch > 0 && *watch < 100*time.Millisecond) {
			return usagef("--watch %v: want 0 (once) or at least 100ms", *watch)
		}
		// With a daemon running, show its last scan: no second full scan of a
		// table that may be under attack.
		var next func() (*snapshot.Snapshot, int, error)
		if cl, err := daemon.Dial(sock); err == nil && !*direct {
			next = func() (*snapshot.Snapshot, int, error) {
				var r daemon.TopReply
				if err := cl.Call(ctx, daemon.Request{Op: "top", By: *by, Prefix: *prefix, N: *n}, &r); err != nil {
					return nil, 0, err
				}
				if r.Snapshot == nil {
					return nil, 0, fmt.Errorf("the daemon has not finished its first scan yet: try again in a second")
				}
				if *prefix {
					return r.Snapshot, r.NumPrefixes, nil
				}
				return r.Snapshot, r.NumSources, nil
			}
		} else {
			s, err := sf.open(ctx)
			if err != nil {
				return err
			}
			defer s.close()
			next = func() (*snapshot.Snapshot, int, error) {
				snap, err := s.scan(ctx)
				if err != nil {
					return nil, 0, err
				}
				if *prefix {
					return snap, len(snap.Prefixes), nil
				}
				return snap, len(snap.Sources), nil
			}
		}
		for {
			snap, total, err := next()
			if err != nil {
				if ctx.Err() != nil && *watch > 0 {
					return nil
				}
				return err
			}
			hs := snap.Sources
			if *prefix {
				hs = snap.Prefixes
			}
			snapshot.SortBy(hs, order)
			hs = hs[:min(*n, len(hs))]
			rows := make([]topRow, len(hs))
			for i, h := range hs {
				rows[i] = toRow(h, *prefix)
				if svc, others, ok := snap.ServiceOf(&h); ok {
					rows[i].Service = toServiceJSON(svc, others)
				}
			}
			if *asJSON {
				out := topJSON{envelope: newEnvelope("top"), By: *by, Prefix: *prefix, Total: total, Rows: rows}
				if *watch == 0 {
					if err := writeJSON(e.stdout, out); err != nil {
						return err
					}
				} else {
					// One object a line: a stream a script reads line by line.
					b, err := json.Marshal(out)
					if err != nil {
						return err
					}
					fmt.Fprintf(e.stdout, "%s\n", b)
				}
			} else {
				if *watch > 0 {
					if f, ok := e.stdout.(*os.File); ok && isTerminal(f) {
						fmt.Fprint(e.stdout, "\033[H\033[2J") // home + clear: refresh in place
					} else {
						// A pipe or a file gets plain frames, one after the other.
						fmt.Fprintf(e.stdout, "--- %s\n", time.Now().UTC().Format(time.RFC3339))
					}
				}
				printTop(e.stdout, snap, total, hs, rows, *prefix, *by)
			}
			if *watch == 0 {
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(*watch):
			}
		}
	}
}

func toRow(h snapshot.Holder, prefix bool) topRow {
	r := topRow{
		Entries: h.Entries, Idle: h.Idle, IdleAssured: h.IdleAssured, Active: h.Active,
		ActiveAssured: h.ActiveAssured, Stalled: h.Stalled, HalfOpen: h.HalfOpen,
		Closing: h.Closing, Other: h.Other, MaxIdleSeconds: h.MaxIdle, Orphan: h.Orphan,
	}
	if prefix {
		r.Source = h.Key.String()
		m := h.Members
		r.Members = &m
	} else {
		r.Source = h.Key.Addr().String()
	}
	return r
}

func printTop(w io.Writer, snap *snapshot.Snapshot, n int, hs []snapshot.Holder, rows []topRow, prefix bool, by string) {
	what := "sources"
	if prefix {
		what = "prefixes"
	}
	fmt.Fprintf(w, "%s  %d entries, %d inbound from %d %s (%d outbound); top %d by %s; scan %.1f ms via %s\n",
		human.Time(snap.Time), snap.Total, snap.Inbound, n, what, snap.Outbound, len(rows), by,
		float64(snap.Duration.Microseconds())/1000, snap.Reader)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	// The service is the last, unterminated cell: left-aligned after the
	// right-aligned numbers.
	head := "SOURCE\tENTRIES\tIDLE\tACTIVE\tSTALLED\tHALF-OPEN\tCLOSING\tOTHER\tORPHAN\tOLDEST IDLE\t  SERVICE"
	if prefix {
		head = "PREFIX\tMEMBERS\tENTRIES\tIDLE\tACTIVE\tSTALLED\tHALF-OPEN\tCLOSING\tOTHER\tORPHAN\tOLDEST IDLE\t  SERVICE"
	}
	fmt.Fprintln(tw, head)
	for i, r := range rows {
		oldest := "-"
		if r.MaxIdleSeconds > 0 {
			oldest = human.Duration(time.Duration(r.MaxIdleSeconds) * time.Second)
		}
		lead := r.Source + "\t"
		if prefix {
			lead += fmt.Sprintf("%d\t", *r.Members)
		}
		orphan := "-"
		if snap.Sockets {
			orphan = fmt.Sprint(r.Orphan)
		}
		fmt.Fprintf(tw, "%s%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t  %s\n", lead, r.Entries, r.Idle, r.Active, r.Stalled, r.HalfOpen, r.Closing, r.Other, orphan, oldest,
			serviceText(snap, &hs[i]))
	}
	tw.Flush()
	if len(rows) == 0 {
		fmt.Fprintln(w, "(no inbound entries)")
	}
}
