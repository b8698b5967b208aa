package metrics

import (
	"io"
	"math"
	"net/http/httptest"
	"strings"
	"testing"
)

// fullState has every series present: a growing table, bans, drops,
// scans.
func fullState() State {
	s := State{Count: 1000, Max: 4000, GrowthPerSec: 2.5, SecondsToFull: 1200,
		States: map[string]float64{"ESTABLISHED": 900, "SYN_RECV": 3}, Classes: map[string]float64{"idle": 800, "active": 100},
		BansActive: map[string]float64{"address": 3, "prefix": 1},
		BansTotal:  map[string]float64{"source-score": 7, "prefix-members": 1},
		BanErrors:  2,
		BanDrops: []Drops{
			{Family: "v4", Kind: "address", Packets: 120, Bytes: 7200},
			{Family: "v4", Kind: "prefix", Packets: 40, Bytes: 2400},
			{Family: "v6", Kind: "address"},
			{Family: "v6", Kind: "prefix"},
		},
		Drop: 5, Pressure: 2, Scans: 3, LastScanUnix: 1.7e9, ScanSeconds: 0.04, ScanEntries: 1000,
		BreakerTrips: 1, ValveRuns: 1, ValveDeleted: 100, PressureNoBan: 4, SocketsClosed: 9, ListenFull: 1, Orphans: 12,
		TableRebuilds: 1, ScanErrors: 1,
		CrowdSec: &CrowdSec{Push: true, Pull: true,
			Alerts:    map[string]float64{"sent": 7, "rejected": 1, "dropped": 0, "expired": 0, "invalid": 0},
			Queued:    2,
			Held:      40,
			Decisions: map[string]float64{"received": 45, "applied": 41, "lifted": 1},
			Failures:  map[string]float64{"push": 3, "pull": 0}, LastSuccess: map[string]float64{"push": 1.7e9, "pull": 1.7e9}}}
	for _, v := range []float64{0.0008, 0.04, 0.04, 3} {
		s.ScanDurations.Observe(v)
	}
	return s
}

// scrape serves reg over HTTP and returns the body, as Prometheus sees it.
func scrape(t *testing.T, read func() State) string {
	t.Helper()
	reg, err := New(BuildInfo{Version: "1.2.3", Commit: "abc123"}, read)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(Handler(reg))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("scrape: %s\n%s", resp.Status, b)
	}
	return string(b)
}

func TestScrape(t *testing.T) {
	body := scrape(t, fullState)
	for _, want := range []string{
		`ctguard_build_info{commit="abc123",goversion="go`, `version="1.2.3"} 1`,
		"ctguard_conntrack_entries 1000", "ctguard_conntrack_fill_ratio 0.25", "ctguard_conntrack_seconds_to_full 1200",
		"ctguard_conntrack_growth_per_second 2.5",
		`ctguard_conntrack_state_entries{state="ESTABLISHED"} 900`, `ctguard_bans_active{kind="prefix"} 1`,
		`ctguard_bans_total{reason="source-score"} 7`, "ctguard_kernel_drop_total 5", "ctguard_pressure 2",
		"# TYPE ctguard_kernel_drop_total counter",
		`ctguard_pressure_state{level="calm"} 0`, `ctguard_pressure_state{level="high"} 1`, `ctguard_pressure_state{level="critical"} 0`,
		"ctguard_ban_errors_total 2",
		`ctguard_banned_packets_dropped_total{family="v4",kind="address"} 120`,
		`ctguard_banned_bytes_dropped_total{family="v4",kind="prefix"} 2400`,
		"# TYPE ctguard_scan_duration_seconds histogram",
		`ctguard_scan_duration_seconds_bucket{le="0.001"} 1`, `ctguard_scan_duration_seconds_bucket{le="0.05"} 3`,
		`ctguard_scan_duration_seconds_bucket{le="2.5"} 3`, `ctguard_scan_duration_seconds_bucket{le="5"} 4`,
		`ctguard_scan_duration_seconds_bucket{le="+Inf"} 4`, "ctguard_scan_duration_seconds_count 4",
		"ctguard_scans_total 3", "ctguard_last_scan_timestamp_seconds 1.7e+09", "ctguard_last_scan_duration_seconds 0.04",
		"go_goroutines ", "process_start_time_seconds ",
		`ctguard_crowdsec_alerts_total{outcome="sent"} 7`, "ctguard_crowdsec_alerts_queued 2", "ctguard_crowdsec_decisions_held 40",
		`ctguard_crowdsec_decisions_total{event="applied"} 41`, `ctguard_crowdsec_failures{direction="push"} 3`,
		`ctguard_crowdsec_last_success_timestamp_seconds{direction="pull"} 1.7e+09`,
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

// Unknown growth and a table that is not growing leave their series out
// instead of exporting NaN or +Inf; unreadable drop counters leave theirs
// out too.
func TestScrapeLeavesOutUnknowns(t *testing.T) {
	body := scrape(t, func() State {
		s := fullState()
		s.GrowthPerSec, s.SecondsToFull, s.BanDrops, s.CrowdSec = math.NaN(), Inf, nil, nil
		return s
	})
	for _, gone := range []string{"ctguard_conntrack_seconds_to_full ", "ctguard_conntrack_growth_per_second ", "ctguard_crowdsec_",
		"ctguard_banned_packets_dropped_total{", "NaN", "+Inf\n"} {
		if strings.Contains(body, gone) {
			t.Errorf("scrape has %q", gone)
		}
	}
}

// Exactly one pressure level is 1 at any time.
func TestPressureState(t *testing.T) {
	for p, level := range PressureLevels {
		body := scrape(t, func() State { s := fullState(); s.Pressure = float64(p); return s })
		ones := 0
		for _, l := range PressureLevels {
			if strings.Contains(body, `ctguard_pressure_state{level="`+l+`"} 1`) {
				ones++
			}
		}
		if ones != 1 || !strings.Contains(body, `ctguard_pressure_state{level="`+level+`"} 1`) {
			t.Errorf("pressure %d: want only %s at 1", p, level)
		}
	}
}

func TestHistogram(t *testing.T) {
	var h Histogram
	for _, v := range []float64{0, 0.001, 0.0011, 10, 11, math.NaN()} {
		h.Observe(v)
	}
	if h.Count() != 5 {
		t.Fatalf("count %d, want 5 (NaN ignored)", h.Count())
	}
	c := h.cumulative()
	if c[0.001] != 2 || c[0.0025] != 3 || c[10] != 4 {
		t.Fatalf("cumulative buckets %v", c)
	}
	if math.Abs(h.sum-21.0021) > 1e-9 {
		t.Fatalf("sum %v", h.sum)
	}
	// Copying is a snapshot.
	snap := h
	h.Observe(1)
	if snap.Count() != 5 {
		t.Fatal("a copy changed with the original")
	}
}
