// Package plot draws the lab's result chart as a self-contained SVG: table
// fill and legit probe success over time, one line per run, with the attack
// window shaded. Standard library only.
package plot

import (
	"bufio"
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// Series is one run.
type Series struct {
	Name  string
	Color string    // CSS colour; a default palette is used when empty
	T     []float64 // seconds since the attack started
	Fill  []float64 // table fill, % of nf_conntrack_max
	Probe []float64 // probe success, %; NaN where no probe ended
}

// Chart is the whole figure.
type Chart struct {
	Title      string
	Subtitle   string
	AttackFrom float64 // attack window, same time axis
	AttackTo   float64
	Series     []Series
	Notes      []string // lines under the legend, e.g. the summaries
}

var palette = []string{"#c0392b", "#1f6fb4", "#2a9d3f", "#8e44ad"}

const (
	width   = 960
	left    = 70
	right   = 30
	panelH  = 210
	gap     = 70
	top     = 110
	noteRow = 18
)

// WriteSVG renders the chart.
func (c Chart) WriteSVG(w io.Writer) error {
	if len(c.Series) == 0 {
		return fmt.Errorf("plot: no series")
	}
	tmin, tmax := math.Inf(1), math.Inf(-1)
	for _, s := range c.Series {
		if len(s.T) != len(s.Fill) || len(s.T) != len(s.Probe) {
			return fmt.Errorf("plot: series %q has mismatched lengths", s.Name)
		}
		for _, t := range s.T {
			tmin, tmax = math.Min(tmin, t), math.Max(tmax, t)
		}
	}
	if math.IsInf(tmin, 0) || tmax <= tmin {
		return fmt.Errorf("plot: no time range")
	}
	tmin, tmax = math.Floor(tmin), math.Ceil(tmax)
	var notes []string
	for _, n := range c.Notes {
		notes = append(notes, wrap(n, 125)...)
	}
	height := top + 2*panelH + gap + 60 + noteRow*(len(notes)+1)
	bw := bufio.NewWriter(w)
	p := func(format string, a ...any) { fmt.Fprintf(bw, format, a...) }
	plotW := float64(width - left - right)
	x := func(t float64) float64 { return left + (t-tmin)/(tmax-tmin)*plotW }

	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">`+"\n", width, height, width, height)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%d" y="30" font-size="20" font-weight="bold">%s</text>`+"\n", left, esc(c.Title))
	for i, line := range wrap(c.Subtitle, 120) {
		p(`<text x="%d" y="%d" font-size="13" fill="#444">%s</text>`+"\n", left, 52+16*i, esc(line))
	}
	panels := []struct {
		title string
		get   func(Series) []float64
	}{
		{"Conntrack table fill (% of nf_conntrack_max): at 100% new connections are dropped", func(s Series) []float64 { return s.Fill }},
		{"Legit connections that succeed (% of probes, every 250 ms, 2 s window)", func(s Series) []float64 { return s.Probe }},
	}
	for pi, pn := range panels {
		y0 := float64(top + pi*(panelH+gap))
		y := func(v float64) float64 { return y0 + panelH - v/100*panelH }
		p(`<text x="%d" y="%.0f" font-size="14" font-weight="bold">%s</text>`+"\n", left, y0-12, esc(pn.title))
		// Attack window.
		if c.AttackTo > c.AttackFrom {
			p(`<rect x="%.1f" y="%.1f" width="%.1f" height="%d" fill="#f3e6c8" opacity="0.6"/>`+"\n",
				x(math.Max(c.AttackFrom, tmin)), y0, x(math.Min(c.AttackTo, tmax))-x(math.Max(c.AttackFrom, tmin)), panelH)
			p(`<text x="%.1f" y="%.1f" font-size="11" fill="#8a6d1f">attack running</text>`+"\n", x(math.Max(c.AttackFrom, tmin))+4, y0+13)
		}
		// Grid and y labels.
		for v := 0; v <= 100; v += 25 {
			p(`<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, width-right, y(float64(v)), y(float64(v)))
			p(`<text x="%d" y="%.1f" font-size="12" text-anchor="end" fill="#333">%d%%</text>`+"\n", left-6, y(float64(v))+4, v)
		}
		// x ticks.
		step := niceStep(tmax - tmin)
		for t := math.Ceil(tmin/step) * step; t <= tmax+1e-9; t += step {
			t := t + 0 // print 0, not -0
			p(`<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#999"/>`+"\n", x(t), x(t), y0+panelH, y0+panelH+5)
			p(`<text x="%.1f" y="%.1f" font-size="12" text-anchor="middle" fill="#333">%g</text>`+"\n", x(t), y0+panelH+18, t)
		}
		p(`<text x="%d" y="%.1f" font-size="12" text-anchor="end" fill="#333">seconds since the attack started</text>`+"\n", width-right, y0+panelH+34)
		p(`<rect x="%d" y="%.1f" width="%.0f" height="%d" fill="none" stroke="#555"/>`+"\n", left, y0, plotW, panelH)
		for si, s := range c.Series {
			col := s.Color
			if col == "" {
				col = palette[si%len(palette)]
			}
			vals := pn.get(s)
			var path strings.Builder
			pen := false
			for i, t := range s.T {
				v := vals[i]
				if math.IsNaN(v) {
					pen = false
					continue
				}
				v = math.Max(0, math.Min(100, v))
				if !pen {
					fmt.Fprintf(&path, "M%.1f,%.1f", x(t), y(v))
					pen = true
				} else {
					fmt.Fprintf(&path, "L%.1f,%.1f", x(t), y(v))
				}
			}
			dash := ""
			if si%2 == 1 {
				dash = ` stroke-dasharray="7,3"`
			}
			p(`<path d="%s" fill="none" stroke="%s" stroke-width="2.2"%s/>`+"\n", path.String(), col, dash)
		}
	}
	// Legend.
	ly := float64(top + 2*panelH + gap + 45)
	lx := float64(left)
	for si, s := range c.Series {
		col := s.Color
		if col == "" {
			col = palette[si%len(palette)]
		}
		dash := ""
		if si%2 == 1 {
			dash = ` stroke-dasharray="7,3"`
		}
		p(`<line x1="%.0f" x2="%.0f" y1="%.0f" y2="%.0f" stroke="%s" stroke-width="3"%s/>`+"\n", lx, lx+30, ly-4, ly-4, col, dash)
		p(`<text x="%.0f" y="%.0f" font-size="13">%s</text>`+"\n", lx+36, ly, esc(s.Name))
		lx += 60 + 8*float64(len(s.Name))
	}
	for i, n := range notes {
		p(`<text x="%d" y="%.0f" font-size="12" fill="#333">%s</text>`+"\n", left, ly+float64(noteRow*(i+1)), esc(n))
	}
	p("</svg>\n")
	return bw.Flush()
}

// wrap breaks s into lines of at most n bytes at spaces; continuation
// lines are indented.
func wrap(s string, n int) []string {
	if s == "" {
		return nil
	}
	var out []string
	for len(s) > n {
		i := strings.LastIndexByte(s[:n], ' ')
		if i <= 0 {
			i = n
		}
		out = append(out, s[:i])
		s = "    " + strings.TrimLeft(s[i:], " ")
	}
	return append(out, s)
}

func niceStep(span float64) float64 {
	for _, s := range []float64{1, 2, 5, 10, 15, 20, 30, 60, 120} {
		if span/s <= 12 {
			return s
		}
	}
	return 300
}

func esc(s string) string { return html.EscapeString(s) }
