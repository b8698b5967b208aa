// Package metrics exposes ctguard's state to Prometheus from its own
// registry. Label sets are bounded by construction: states, classes,
// reasons, kinds, families and pressure levels, never one value per remote
// address, so the endpoint cannot blow up under attack.
//
// Names follow the Prometheus conventions (base units, _total on counters,
// _seconds for durations, _timestamp_seconds for points in time, _info for
// build facts); TestPromtoolCheckMetrics runs `promtool check metrics` on
// a scrape.
package metrics

import (
	"fmt"
	"math"
	"net/http"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// BuildInfo is what ctguard_build_info reports about the binary.
type BuildInfo struct {
	Version string
	Commit  string
	// GoVersion defaults to the running binary's (runtime.Version()).
	GoVersion string
}

// PressureLevels are the values of ctguard_pressure_state's level label,
// in the order of the numeric ctguard_pressure gauge (0 calm .. 3 critical).
var PressureLevels = [...]string{"calm", "elevated", "high", "critical"}

// ScanBuckets are the upper bounds (seconds) of the buckets of
// ctguard_scan_duration_seconds: from 1 ms (a near-empty table) to 10 s
// (a few million entries; 262,144 take about 1 s).
var ScanBuckets = [...]float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Histogram accumulates observations in ScanBuckets. It is a plain value:
// copying it takes a snapshot; the caller guards it against concurrent use.
type Histogram struct {
	counts [len(ScanBuckets)]uint64 // per bucket, not cumulative
	count  uint64
	sum    float64
}

// Observe adds one observation (seconds).
func (h *Histogram) Observe(v float64) {
	if math.IsNaN(v) {
		return
	}
	h.count++
	h.sum += v
	for i, ub := range ScanBuckets {
		if v <= ub {
			h.counts[i]++
			return
		}
	}
}

// Count is how many observations the histogram holds.
func (h *Histogram) Count() uint64 { return h.count }

// cumulative returns the buckets as Prometheus wants them: upper bound ->
// observations at or below it.
func (h *Histogram) cumulative() map[float64]uint64 {
	out := make(map[float64]uint64, len(ScanBuckets))
	var n uint64
	for i, ub := range ScanBuckets {
		n += h.counts[i]
		out[ub] = n
	}
	return out
}

// Drops are the packets and bytes one group of ctguard's drop rules
// dropped: Family is "v4" or "v6", Kind "address" or "prefix" (as in
// ctguard_bans_active).
type Drops struct {
	Family, Kind   string
	Packets, Bytes float64
}

// State is one reading of everything exported.
type State struct {
	Count, Max      float64
	GrowthPerSec    float64 // NaN when unknown: the series is left out
	SecondsToFull   float64 // +Inf (or NaN) when not growing: the series is left out
	States          map[string]float64
	Classes         map[string]float64
	Drop, EarlyDrop float64
	InsertFailed    float64
	ScanSeconds     float64            // the last scan's duration
	ScanEntries     float64            // the last scan's entries
	ScanDurations   Histogram          // every completed scan's duration
	Scans           float64            // completed scans
	LastScanUnix    float64            // Unix time of the last completed scan, 0 before the first
	Pressure        float64            // 0 calm .. 3 critical
	BansActive      map[string]float64 // kind: address, prefix
	BansTotal       map[string]float64 // by reason
	BanErrors       float64
	// BanDrops are the drop rules' counters; nil when they could not be
	// read (the series are left out of that scrape).
	BanDrops      []Drops
	BreakerTrips  float64
	ValveRuns     float64
	ValveDeleted  float64
	PressureNoBan float64
	SocketsClosed float64
	ListenFull    float64 // listening sockets whose accept queue is full
	Orphans       float64
	TableRebuilds float64
	ScanErrors    float64
	DryRun        bool
	// CrowdSec is the link to CrowdSec's Local API; nil when it is off
	// (its series are left out).
	CrowdSec *CrowdSec
}

// CrowdSec is the state of the link to CrowdSec's Local API.
type CrowdSec struct {
	// Push and Pull say which directions are on.
	Push, Pull bool
	// Alerts counts pushed alerts by outcome: sent, rejected, dropped,
	// expired, invalid.
	Alerts map[string]float64
	Queued float64
	// Held pulled decisions; Decisions counts them by event: received,
	// applied, lifted.
	Held      float64
	Decisions map[string]float64
	// Failures in a row and the Unix time of the last success (0: none
	// yet), by direction (push, pull).
	Failures    map[string]float64
	LastSuccess map[string]float64
}

type collector struct {
	read  func() State
	build BuildInfo
	descs map[string]*prometheus.Desc
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("ctguard_"+name, help, labels, nil)
}

// New returns a registry holding the Go runtime and process collectors and
// ctguard's own, which calls read at each scrape.
func New(build BuildInfo, read func() State) (*prometheus.Registry, error) {
	if build.GoVersion == "" {
		build.GoVersion = runtime.Version()
	}
	if build.Version == "" {
		build.Version = "unknown"
	}
	if build.Commit == "" {
		build.Commit = "unknown"
	}
	c := &collector{read: read, build: build, descs: map[string]*prometheus.Desc{
		"build": desc("build_info", "Always 1; the labels say which ctguard binary runs: its version, VCS commit and Go version.",
			"version", "commit", "goversion"),
		"entries": desc("conntrack_entries", "Entries in the conntrack table of ctguard's network namespace (read every daemon.poll)."),
		"max":     desc("conntrack_max", "The table's limit, nf_conntrack_max, in ctguard's network namespace."),
		"fill":    desc("conntrack_fill_ratio", "Entries divided by the limit (0 to 1)."),
		"growth": desc("conntrack_growth_per_second",
			"Growth of the table in entries per second over the last 15 s (negative when shrinking). Absent until two count samples are known."),
		"eta": desc("conntrack_seconds_to_full",
			"Forecast seconds until the table is full at the current growth. Absent when the table is not growing (or its growth is unknown): there is no time to full, so alert on the series' value, never on its absence."),
		"state":         desc("conntrack_state_entries", "TCP entries per state at the last scan.", "state"),
		"class":         desc("conntrack_class_entries", "Entries per class at the last scan (idle, active, stalled, half_open, closing, other).", "class"),
		"drop":          desc("kernel_drop_total", "Packets the kernel dropped because the table was full (all CPUs, since boot)."),
		"early_drop":    desc("kernel_early_drop_total", "Entries the kernel evicted early to make room (all CPUs, since boot)."),
		"insert_failed": desc("kernel_insert_failed_total", "Failed inserts into the table (all CPUs, since boot)."),
		"scan_hist":     desc("scan_duration_seconds", "Duration of ctguard's full scans of the table (the reader plus the socket listing)."),
		"scans":         desc("scans_total", "Full scans that completed a cycle (scan, decision, enforcement)."),
		"last_scan":     desc("last_scan_timestamp_seconds", "Unix time of the last completed scan; 0 before the first. Alert on time() minus this for staleness."),
		"scan_seconds":  desc("last_scan_duration_seconds", "Duration of the last completed full scan."),
		"scan_entries":  desc("scan_entries", "Entries seen by the last full scan."),
		"pressure":      desc("pressure", "Pressure level as a number: 0 calm, 1 elevated, 2 high, 3 critical (see ctguard_pressure_state)."),
		"pressure_state": desc("pressure_state",
			"1 for the current pressure level, 0 for the others (calm, elevated, high, critical).", "level"),
		"bans_active": desc("bans_active", "Bans in force, by kind (address or prefix).", "kind"),
		"bans_total":  desc("bans_total", "Bans the daemon applied since start, by reason.", "reason"),
		"ban_errors": desc("ban_errors_total",
			"Bans the daemon decided but that did not take effect: the firewall, store or purge failed, or the allowlist changed after the decision and refused it."),
		"drop_packets": desc("banned_packets_dropped_total",
			"Packets dropped by ctguard's ban rules (nftables counters of table inet ctguard), by family and ban kind; restarts from 0 when the table is rebuilt.",
			"family", "kind"),
		"drop_bytes": desc("banned_bytes_dropped_total",
			"Bytes dropped by ctguard's ban rules (nftables counters of table inet ctguard), by family and ban kind; restarts from 0 when the table is rebuilt.",
			"family", "kind"),
		"breaker":       desc("breaker_trips_total", "Cycles in which the blast-radius breaker capped the bans."),
		"valve_runs":    desc("valve_runs_total", "Emergency valve activations."),
		"valve_deleted": desc("valve_deleted_entries_total", "Entries the emergency valve deleted."),
		"sockets":       desc("sockets_closed_total", "TCP sockets of banned peers that bans closed (sock_diag destroy), freeing the service's workers."),
		"no_ban":        desc("pressure_without_ban_cycles_total", "Cycles under high or critical pressure that banned nothing: the guard is losing (see the WARN log and status)."),
		"listen_full":   desc("listen_queues_full", "Listening TCP sockets whose accept queue was full at the last poll: the service is turning new clients away."),
		"orphans":       desc("orphan_entries", "Inbound ESTABLISHED entries with no socket behind them, or one whose client never sent a byte, at the last scan."),
		"rebuilds":      desc("table_rebuilds_total", "Times ctguard's nftables table had to be rebuilt."),
		"scan_errors":   desc("scan_errors_total", "Failed scans."),
		"dry_run":       desc("dry_run", "1 when running in dry-run mode (no kernel changes)."),
		"cs_alerts": desc("crowdsec_alerts_total",
			"Alerts (one per ban ctguard decided) pushed to CrowdSec's Local API, by outcome: sent, rejected (refused as malformed), dropped (queue full, or still queued at stop), expired (the ban ended before the LAPI took it), invalid.",
			"outcome"),
		"cs_queued": desc("crowdsec_alerts_queued", "Alerts waiting for CrowdSec's Local API (in memory, bounded by crowdsec.queue_size)."),
		"cs_held":   desc("crowdsec_decisions_held", "Decisions pulled from CrowdSec's Local API and enforced now."),
		"cs_decisions": desc("crowdsec_decisions_total",
			"Decisions pulled from CrowdSec's Local API, by event: received (in the stream), applied (handed to the firewall as new bans), lifted (deleted at the LAPI).",
			"event"),
		"cs_failures": desc("crowdsec_failures",
			"Failed requests to CrowdSec's Local API since the last success, by direction (push, pull): above 0 the link is down or refused.",
			"direction"),
		"cs_last_success": desc("crowdsec_last_success_timestamp_seconds",
			"Unix time of the last successful request to CrowdSec's Local API by direction (push, pull); 0 before the first.",
			"direction"),
	}}
	r := prometheus.NewRegistry()
	for _, col := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		c,
	} {
		if err := r.Register(col); err != nil {
			return nil, fmt.Errorf("register metrics collector: %w", err)
		}
	}
	return r, nil
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.read()
	emit := func(k string, t prometheus.ValueType, v float64, labels ...string) {
		m, err := prometheus.NewConstMetric(c.descs[k], t, v, labels...)
		if err != nil {
			m = prometheus.NewInvalidMetric(c.descs[k], err)
		}
		ch <- m
	}
	g := func(k string, v float64, labels ...string) { emit(k, prometheus.GaugeValue, v, labels...) }
	ctr := func(k string, v float64, labels ...string) { emit(k, prometheus.CounterValue, v, labels...) }
	g("build", 1, c.build.Version, c.build.Commit, c.build.GoVersion)
	g("entries", s.Count)
	g("max", s.Max)
	fill := 0.0
	if s.Max > 0 {
		fill = s.Count / s.Max
	}
	g("fill", fill)
	if !math.IsNaN(s.GrowthPerSec) && !math.IsInf(s.GrowthPerSec, 0) {
		g("growth", s.GrowthPerSec)
	}
	if !math.IsNaN(s.SecondsToFull) && !math.IsInf(s.SecondsToFull, 0) && s.SecondsToFull >= 0 {
		g("eta", s.SecondsToFull)
	}
	for k, v := range s.States {
		g("state", v, k)
	}
	for k, v := range s.Classes {
		g("class", v, k)
	}
	ctr("drop", s.Drop)
	ctr("early_drop", s.EarlyDrop)
	ctr("insert_failed", s.InsertFailed)
	h, err := prometheus.NewConstHistogram(c.descs["scan_hist"], s.ScanDurations.count, s.ScanDurations.sum, s.ScanDurations.cumulative())
	if err != nil {
		h = prometheus.NewInvalidMetric(c.descs["scan_hist"], err)
	}
	ch <- h
	ctr("scans", s.Scans)
	g("last_scan", s.LastScanUnix)
	g("scan_seconds", s.ScanSeconds)
	g("scan_entries", s.ScanEntries)
	g("pressure", s.Pressure)
	for i, level := range PressureLevels {
		v := 0.0
		if int(s.Pressure) == i {
			v = 1
		}
		g("pressure_state", v, level)
	}
	for k, v := range s.BansActive {
		g("bans_active", v, k)
	}
	for k, v := range s.BansTotal {
		ctr("bans_total", v, k)
	}
	ctr("ban_errors", s.BanErrors)
	for _, d := range s.BanDrops {
		ctr("drop_packets", d.Packets, d.Family, d.Kind)
		ctr("drop_bytes", d.Bytes, d.Family, d.Kind)
	}
	ctr("breaker", s.BreakerTrips)
	ctr("valve_runs", s.ValveRuns)
	ctr("valve_deleted", s.ValveDeleted)
	ctr("no_ban", s.PressureNoBan)
	ctr("sockets", s.SocketsClosed)
	g("listen_full", s.ListenFull)
	g("orphans", s.Orphans)
	ctr("rebuilds", s.TableRebuilds)
	ctr("scan_errors", s.ScanErrors)
	dr := 0.0
	if s.DryRun {
		dr = 1
	}
	g("dry_run", dr)
	if cs := s.CrowdSec; cs != nil {
		if cs.Push {
			for k, v := range cs.Alerts {
				ctr("cs_alerts", v, k)
			}
			g("cs_queued", cs.Queued)
		}
		if cs.Pull {
			g("cs_held", cs.Held)
			for k, v := range cs.Decisions {
				ctr("cs_decisions", v, k)
			}
		}
		for k, v := range cs.Failures {
			g("cs_failures", v, k)
		}
		for k, v := range cs.LastSuccess {
			g("cs_last_success", v, k)
		}
	}
}

// Handler serves the registry.
func Handler(r *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(r, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Inf is +Inf, for SecondsToFull when the table is not growing.
var Inf = math.Inf(1)
