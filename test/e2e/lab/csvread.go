package lab

import (
	"encoding/csv"
	"fmt"
	"io"
	"math"
	"strconv"

	"github.com/ctguard/ctguard/test/e2e/plot"
)

// ReadSeries reads the time, fill and probe columns of a CSV written by
// WriteCSV, so plots can be redrawn from committed results.
func ReadSeries(r io.Reader, name string) (plot.Series, error) {
	recs, err := csv.NewReader(r).ReadAll()
	if err != nil {
		return plot.Series{}, err
	}
	if len(recs) < 2 {
		return plot.Series{}, fmt.Errorf("csv %s: no rows", name)
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	for _, c := range []string{"t_s", "fill_pct", "probe_ok_pct_2s"} {
		if _, ok := col[c]; !ok {
			return plot.Series{}, fmt.Errorf("csv %s: no column %s", name, c)
		}
	}
	s := plot.Series{Name: name}
	num := func(v string) float64 {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return math.NaN()
		}
		return f
	}
	for _, rec := range recs[1:] {
		t := num(rec[col["t_s"]])
		if math.IsNaN(t) {
			return plot.Series{}, fmt.Errorf("csv %s: bad time %q", name, rec[col["t_s"]])
		}
		s.T = append(s.T, t)
		s.Fill = append(s.Fill, num(rec[col["fill_pct"]]))
		s.Probe = append(s.Probe, num(rec[col["probe_ok_pct_2s"]]))
	}
	return s, nil
}
