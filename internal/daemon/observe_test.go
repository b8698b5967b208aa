package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/metrics"
)

// A cycle shows in the metrics: one scan in the histogram and the counter,
// its time, the bans, and the drop rules' counters summed per family and
// kind over full and scoped bans.
func TestMetricsStateAfterACycle(t *testing.T) {
	h := newFakeHost(t, 4096).idle("203.0.113.110", 300)
	h.write(t)
	f := newFakeDaemon(t, h, nil)

	before := f.d.MetricsState()
	if before.Scans != 0 || before.LastScanUnix != 0 || before.ScanDurations.Count() != 0 {
		t.Fatalf("before the first scan: scans %v, last %v, histogram %d", before.Scans, before.LastScanUnix, before.ScanDurations.Count())
	}

	f.fw.DropCounters = enforce.Counters{
		SetCounters: enforce.SetCounters{Ban4: enforce.Counter{Packets: 10, Bytes: 600}, Net6: enforce.Counter{Packets: 1, Bytes: 80}},
		Scoped:      enforce.SetCounters{Ban4: enforce.Counter{Packets: 5, Bytes: 300}},
	}
	start := time.Now()
	f.d.cycle(context.Background())
	s := f.d.MetricsState()
	if s.Scans != 1 || s.ScanDurations.Count() != 1 {
		t.Errorf("scans %v, histogram count %d, want 1 and 1", s.Scans, s.ScanDurations.Count())
	}
	if s.LastScanUnix < float64(start.Unix()) || s.LastScanUnix > float64(time.Now().Unix()+1) {
		t.Errorf("last scan at %v, want between %v and now", s.LastScanUnix, start.Unix())
	}
	if s.BansTotal["source-score"] != 1 || s.BansActive["address"] != 1 || s.BanErrors != 0 {
		t.Errorf("bans: total %v, active %v, errors %v", s.BansTotal, s.BansActive, s.BanErrors)
	}
	want := map[[2]string]metrics.Drops{
		{"v4", "address"}: {Family: "v4", Kind: "address", Packets: 15, Bytes: 900},
		{"v4", "prefix"}:  {Family: "v4", Kind: "prefix"},
		{"v6", "address"}: {Family: "v6", Kind: "address"},
		{"v6", "prefix"}:  {Family: "v6", Kind: "prefix", Packets: 1, Bytes: 80},
	}
	if len(s.BanDrops) != len(want) {
		t.Fatalf("drops %+v", s.BanDrops)
	}
	for _, d := range s.BanDrops {
		if want[[2]string{d.Family, d.Kind}] != d {
			t.Errorf("drops %+v, want %+v", d, want[[2]string{d.Family, d.Kind}])
		}
	}
}

// A ban the firewall refuses counts as a ban error.
func TestMetricsBanErrors(t *testing.T) {
	h := newFakeHost(t, 4096).idle("203.0.113.110", 300)
	h.write(t)
	f := newFakeDaemon(t, h, nil)
	f.fw.FailApply = errTest
	f.d.cycle(context.Background())
	if s := f.d.MetricsState(); s.BanErrors != 1 {
		t.Fatalf("ban errors %v, want 1\n%s", s.BanErrors, f.log)
	}
}

type testError string

func (e testError) Error() string { return string(e) }

const errTest = testError("nftables said no")
