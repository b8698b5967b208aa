package metrics

import (
	"io"
	"math"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestScrape(t *testing.T) {
	reg := New(func() State {
		return State{Count: 1000, Max: 4000, GrowthPerSec: math.NaN(), SecondsToFull: Inf,
			States: map[string]float64{"ESTABLISHED": 900}, Classes: map[string]float64{"idle": 800},
			BansActive: map[string]float64{"address": 3, "prefix": 1}, BansTotal: map[string]float64{"source-score": 7},
			Drop: 5, Pressure: 1}
	})
	srv := httptest.NewServer(Handler(reg))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	body := string(b)
	for _, want := range []string{
		"ctguard_conntrack_entries 1000", "ctguard_conntrack_fill_ratio 0.25", "ctguard_conntrack_seconds_to_full +Inf",
		`ctguard_conntrack_state_entries{state="ESTABLISHED"} 900`, `ctguard_bans_active{kind="prefix"} 1`,
		`ctguard_bans_total{reason="source-score"} 7`, "ctguard_kernel_drop_total 5", "ctguard_pressure 1",
		"# TYPE ctguard_kernel_drop_total counter",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	// No label carries an address: cardinality stays bounded under attack.
	for _, l := range strings.Split(body, "\n") {
		if strings.Contains(l, "source=") || strings.Contains(l, "addr=") {
			t.Errorf("per-address label: %s", l)
		}
	}
}
