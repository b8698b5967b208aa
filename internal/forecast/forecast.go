// Package forecast turns samples of the table's entry count into a growth
// rate and a time until the table is full. Pure arithmetic, no I/O.
package forecast

import (
	"fmt"
	"math"
	"time"
)

// Sample is the entry count at one moment.
type Sample struct {
	Time  time.Time
	Count float64
}

// Rate is the least-squares slope of the samples, in entries per second.
// With fewer than two samples, or all at one instant, it is 0 and ok false.
func Rate(samples []Sample) (perSec float64, ok bool) {
	if len(samples) < 2 {
		return 0, false
	}
	t0 := samples[0].Time
	var n, sx, sy, sxx, sxy float64
	for _, s := range samples {
		x := s.Time.Sub(t0).Seconds()
		n++
		sx += x
		sy += s.Count
		sxx += x * x
		sxy += x * s.Count
	}
	den := n*sxx - sx*sx
	if den <= 0 || math.Abs(den) < 1e-12 {
		return 0, false
	}
	return (n*sxy - sx*sy) / den, true
}

// ETA is the time until count reaches max at perSec. ok is false when the
// table is not growing (then there is no forecast); 0 when already full.
func ETA(count, max, perSec float64) (time.Duration, bool) {
	if count >= max && max > 0 {
		return 0, true
	}
	if perSec <= 0 || max <= 0 {
		return 0, false
	}
	secs := (max - count) / perSec
	if secs > float64(math.MaxInt64/int64(time.Second)) {
		return 0, false
	}
	return time.Duration(secs * float64(time.Second)), true
}

// Format renders a duration the way an operator reads it, to two units:
// "14h 8m", "3m 20s", "45s", "2d 4h", "1h".
func Format(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d.Round(time.Second) / time.Second)
	days, s := s/86400, s%86400
	h, s := s/3600, s%3600
	m, s := s/60, s%60
	two := func(a int64, ua string, b int64, ub string) string {
		if b == 0 {
			return fmt.Sprintf("%d%s", a, ua)
		}
		return fmt.Sprintf("%d%s %d%s", a, ua, b, ub)
	}
	switch {
	case days > 0:
		return two(days, "d", h, "h")
	case h > 0:
		return two(h, "h", m, "m")
	case m > 0:
		return two(m, "m", s, "s")
	}
	return fmt.Sprintf("%ds", s)
}
