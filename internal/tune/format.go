package tune

import (
	"fmt"
	"io"
	"strings"
)

// WritePlan prints the plan for a human: current vs recommended, each with
// its reason and memory cost, then warnings, notes and the ct timeout policy.
func WritePlan(w io.Writer, p Plan) {
	fmt.Fprintf(w, "kernel %s, RAM %s, entry %d B (%s)\n", p.Kernel.Release, humanBytes(p.MemTotal), p.EntryBytes, p.EntrySource)
	fmt.Fprintf(w, "kernel default for this RAM: max %d, buckets %d; memory budget for a full table: %g %% of RAM\n",
		p.DefaultMax, p.DefaultBuckets, p.BudgetPercent)
	if o := p.Observation; o != nil && o.Scans > 0 {
		fmt.Fprintf(w, "observed: %d scan(s) over %s, peak count %d; ESTABLISHED idle (s) inbound n=%d p50=%.0f p90=%.0f p99=%.0f max=%.0f, outbound n=%d max=%.0f (max over scans %.0f); %d completed gaps, longest %.0f s; %d skipped (stalled or unknown reference)\n",
			o.Scans, o.Window.Round(1e9), o.PeakCount, o.Inbound.N, o.Inbound.P50, o.Inbound.P90, o.Inbound.P99, o.Inbound.Max,
			o.Outbound.N, o.Outbound.Max, o.OutboundMax, o.CompletedGaps, o.CompletedGapMax, o.Skipped)
	} else {
		fmt.Fprintln(w, "observed: no scan of the table (legit idle gaps unknown)")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-52s %10s %12s\n", "key", "current", "recommended")
	for _, it := range p.Items {
		rec := fmt.Sprint(it.Recommended)
		if !it.Change {
			rec = "(keep)"
		}
		owner := ""
		if it.Owner != "" {
			owner = " (set by " + it.Owner + ")"
		}
		fmt.Fprintf(w, "%-52s %10d %12s %s%s\n", it.Key, it.Current, rec, it.Unit, owner)
	}
	for _, it := range p.Items {
		fmt.Fprintf(w, "\n%s:\n", it.Key)
		if it.Memory != "" {
			fmt.Fprintf(w, "  now:         %s\n  recommended: %s\n", it.MemoryNow, it.Memory)
		}
		fmt.Fprintf(w, "  %s\n", it.Reason)
	}
	if p.NAT != "" {
		if p.NATFloor > 0 {
			fmt.Fprintf(w, "\nNAT: %s; established timeout floor %d s (idle NAT'ed connections break when their entry expires)\n", p.NAT, p.NATFloor)
		} else {
			fmt.Fprintf(w, "\nNAT: %s; NAT floor off (--nat-floor 0): idle NAT'ed connections break when their entry expires\n", p.NAT)
		}
	}
	if len(p.KubeProxy) > 0 {
		fmt.Fprintln(w, "\nkube-proxy settings (kube-proxy overwrites these sysctls when it starts; tune --apply leaves them to it):")
		for _, k := range p.KubeProxy {
			fmt.Fprintf(w, "  %-33s %-12s (flag %s=%s)", k.Field+":", k.Value, k.Flag, k.Value)
			if k.Note != "" {
				fmt.Fprintf(w, "  # %s", k.Note)
			}
			fmt.Fprintln(w)
		}
	}
	if len(p.Warnings) > 0 {
		fmt.Fprintln(w, "\nwarnings:")
		for _, wn := range p.Warnings {
			fmt.Fprintf(w, "  WARNING %s: %s\n", wn.Source, wn.Message)
		}
	}
	if len(p.Notes) > 0 {
		fmt.Fprintln(w, "\nnotes:")
		for _, n := range p.Notes {
			fmt.Fprintf(w, "  %s\n", n)
		}
	}
	if pol := p.Policy; pol != nil {
		fmt.Fprintf(w, "\npreferred alternative to a short global timeout: an nftables ct timeout policy (%s):\n\n%s", pol.Reason, indent(pol.Nft, "    "))
	}
}

func indent(s, pre string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(s, "\n") {
		if l != "" {
			b.WriteString(pre + l)
		}
	}
	return b.String()
}

// WriteDiff prints what a Change will do: a line diff per file and the live
// values.
func WriteDiff(w io.Writer, c Change) {
	for _, f := range c.Files {
		from := f.Path
		if !f.Existed {
			from = "/dev/null"
		}
		to := f.Path
		if f.Remove {
			to = "/dev/null"
		}
		fmt.Fprintf(w, "--- %s\n+++ %s\n", from, to)
		for _, l := range diffLines(splitLines(f.Old), splitLines(f.New)) {
			fmt.Fprintln(w, l)
		}
	}
	for _, l := range c.Live {
		fmt.Fprintf(w, "live %s: %s -> %s", l.Path, l.Old, l.New)
		if l.Err != "" {
			fmt.Fprintf(w, " (NOT applied: %s)", l.Err)
		}
		fmt.Fprintln(w)
	}
	for _, n := range c.NotLive {
		fmt.Fprintf(w, "not live (files only): %s\n", n)
	}
	for _, n := range c.Refused {
		fmt.Fprintf(w, "not applied: %s\n", n)
	}
}

func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// diffLines is a longest-common-subsequence line diff; the files are a few
// lines long, so the quadratic table is fine (bounded anyway by host.ReadSmall).
func diffLines(a, b []string) []string {
	if len(a)*len(b) > 1<<22 { // not a config file: show it all
		var out []string
		for _, l := range a {
			out = append(out, "-"+l)
		}
		for _, l := range b {
			out = append(out, "+"+l)
		}
		return out
	}
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []string
	i, j := 0, 0
	for i < n && j < m {
		switch {
		case a[i] == b[j]:
			out = append(out, " "+a[i])
			i++
			j++
		case lcs[i+1][j] >= lcs[i][j+1]:
			out = append(out, "-"+a[i])
			i++
		default:
			out = append(out, "+"+b[j])
			j++
		}
	}
	for ; i < n; i++ {
		out = append(out, "-"+a[i])
	}
	for ; j < m; j++ {
		out = append(out, "+"+b[j])
	}
	return out
}
