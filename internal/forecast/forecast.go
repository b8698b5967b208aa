// Package forecast turns samples of the table's entry count into a growth
// rate and a time until the table is full. Pure arithmetic, no I/O.
package forecast

import (
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
