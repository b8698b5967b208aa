package lab

import (
	"fmt"
	"math"
	"strings"
	"text/tabwriter"

	"github.com/ctguard/ctguard/test/e2e/plot"
)

// metric rows shared by the side-by-side view and the results table.
type metric struct {
	name string
	get  func(Summary) string
}

var metrics = []metric{
	{"peak fill", func(s Summary) string { return fmt.Sprintf("%.1f%% (%d)", s.PeakPct, s.Peak) }},
	{"peak attack entries", func(s Summary) string { return held(s.PeakAttackHeld) }},
	{"time to full", func(s Summary) string { return dur(s.FullAfter) }},
	{"time full", func(s Summary) string { return fmt.Sprintf("%.1fs", s.FullFor.Seconds()) }},
	{"probes ok", func(s Summary) string { return pct(s.ProbesOK, s.Probes) }},
	{"probes ok while full", func(s Summary) string { return pct(s.ProbesFullOK, s.ProbesFull) }},
	{"probe latency p50/p95", func(s Summary) string { return fmt.Sprintf("%s/%s ms", ms(s.ProbeP50), ms(s.ProbeP95)) }},
	{"first attacker ban", func(s Summary) string { return dur(s.FirstBan) }},
	{"attack bans (addresses/prefixes)", func(s Summary) string { return fmt.Sprint(s.AttackBans) }},
	{"false bans (legit)", func(s Summary) string {
		if len(s.FalseBanList) == 0 {
			return "0"
		}
		return fmt.Sprintf("%d (%s)", s.FalseBans, strings.Join(s.FalseBanList, " "))
	}},
	{"legit client failures", func(s Summary) string {
		return fmt.Sprintf("%d of %d", s.LegitFailed, s.LegitSent+s.LegitFailed)
	}},
	{"attack conns/packets sent", func(s Summary) string { return fmt.Sprint(s.AttackSent) }},
	{"kernel drop / early_drop", func(s Summary) string { return fmt.Sprintf("%d / %d", s.Drop, s.EarlyDrop) }},
	{"scenario measures", func(s Summary) string {
		if x := s.Extras(); x != "" {
			return x
		}
		return "-"
	}},
}

func ms(v float64) string {
	if math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.0f", v)
}

// SideBySide prints summaries as columns, one per run.
func SideBySide(sums []Summary) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	fmt.Fprint(tw, "\t")
	for _, s := range sums {
		fmt.Fprintf(tw, "%s / %s\t", s.Scenario, s.Defense)
	}
	fmt.Fprintln(tw)
	for _, m := range metrics {
		fmt.Fprintf(tw, "%s\t", m.name)
		for _, s := range sums {
			if s.Unavailable != "" {
				fmt.Fprint(tw, "unavailable\t")
				continue
			}
			fmt.Fprintf(tw, "%s\t", m.get(s))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	for _, s := range sums {
		if s.Unavailable != "" {
			fmt.Fprintf(&b, "%s: %s\n", s.Defense, s.Unavailable)
		}
	}
	return b.String()
}

// MarkdownTable is the results table, one row per run.
func MarkdownTable(sums []Summary) string {
	var b strings.Builder
	b.WriteString("| scenario | defense |")
	for _, m := range metrics {
		b.WriteString(" " + m.name + " |")
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---|", len(metrics)) + "\n")
	for _, s := range sums {
		fmt.Fprintf(&b, "| %s | %s |", s.Scenario, s.Defense)
		for _, m := range metrics {
			if s.Unavailable != "" {
				b.WriteString(" n/a |")
				continue
			}
			b.WriteString(" " + m.get(s) + " |")
		}
		b.WriteString("\n")
	}
	return b.String()
}

// Series turns a run into a plot series.
func (r *Result) Series() plot.Series {
	s := plot.Series{Name: r.Defense.Name}
	for _, row := range r.Rows {
		s.T = append(s.T, row.T)
		s.Fill = append(s.Fill, row.FillPct)
		s.Probe = append(s.Probe, row.ProbeOKPct)
	}
	return s
}

// Chart draws runs of one scenario in one figure.
func Chart(runs []*Result) plot.Chart {
	c := plot.Chart{}
	if len(runs) == 0 {
		return c
	}
	first := runs[0]
	c.Title = fmt.Sprintf("ctguard lab: %s", first.Scenario.Name)
	c.Subtitle = first.Scenario.Desc
	c.AttackFrom = 0
	c.AttackTo = first.AttackEnd.Sub(first.AttackStart).Seconds()
	for _, r := range runs {
		c.Series = append(c.Series, r.Series())
		c.Notes = append(c.Notes, Note(r))
	}
	return c
}

// Note is a run's summary in words, for plot legends.
func Note(r *Result) string {
	s := r.Summary
	return fmt.Sprintf("%s (%s): peak %.0f%%, full after %s, legit probes ok %s, ok while full %s, attack bans %d, legit banned %d",
		r.Defense.Name, r.Defense.Note, s.PeakPct, dur(s.FullAfter), pct(s.ProbesOK, s.Probes), pct(s.ProbesFullOK, s.ProbesFull), s.AttackBans, s.FalseBans)
}
