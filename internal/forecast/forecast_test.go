package forecast

import (
	"math"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/human"
)

func TestIncidentForecast(t *testing.T) {
	// The incident: 249 -> 268 entries in 60 s, nf_conntrack_max 16384.
	t0 := time.Unix(1_700_000_000, 0)
	r, ok := Rate([]Sample{{t0, 249}, {t0.Add(time.Minute), 268}})
	if !ok || math.Abs(r*60-19) > 1e-9 {
		t.Fatalf("rate %v/min ok=%v, want 19/min", r*60, ok)
	}
	eta, ok := ETA(268, 16384, r)
	mins := (16384.0 - 268) / 19 // 848.2
	want := time.Duration(mins * float64(time.Minute))
	if !ok || (eta-want).Abs() > time.Minute || eta.Round(time.Minute) != 848*time.Minute {
		t.Fatalf("eta %v, want %v (848 min)", eta, want)
	}
	if got := human.Duration(eta); got != "14h8m" {
		t.Errorf("human.Duration(%v) = %q, want %q", eta, got, "14h8m")
	}
	// From 180 at the same rate: the incident's "about 853 minutes".
	eta, _ = ETA(180, 16384, r)
	if m := eta.Minutes(); m < 852 || m > 854 {
		t.Errorf("from 180: %.1f min, want about 853", m)
	}
}

func TestRateRegression(t *testing.T) {
	t0 := time.Unix(0, 0)
	var s []Sample
	for i := range 11 {
		noise := float64(i%2*2 - 1) // +-1 around the line
		s = append(s, Sample{t0.Add(time.Duration(i) * time.Second), 100 + 5*float64(i) + noise})
	}
	r, ok := Rate(s)
	if !ok || math.Abs(r-5) > 0.2 {
		t.Fatalf("rate %v, want about 5/s", r)
	}
	if _, ok := Rate(s[:1]); ok {
		t.Error("one sample gave a rate")
	}
	if _, ok := Rate([]Sample{{t0, 1}, {t0, 2}}); ok {
		t.Error("samples at one instant gave a rate")
	}
}

func TestETAEdges(t *testing.T) {
	if _, ok := ETA(100, 1000, 0); ok {
		t.Error("flat table has a forecast")
	}
	if _, ok := ETA(100, 1000, -3); ok {
		t.Error("shrinking table has a forecast")
	}
	if d, ok := ETA(1000, 1000, 0); !ok || d != 0 {
		t.Errorf("full table: %v %v", d, ok)
	}
	if _, ok := ETA(0, 1e300, 1e-300); ok {
		t.Error("overflowing forecast accepted")
	}

}
