// Package metrics exposes ctguard's state to Prometheus from its own
// registry. Label sets are bounded by construction: states, classes,
// reasons and pressure levels, never one value per remote address, so the
// endpoint cannot blow up under attack.
package metrics

import (
	"math"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// State is one reading of everything exported.
type State struct {
	Count, Max      float64
	GrowthPerSec    float64 // NaN when unknown
	SecondsToFull   float64 // +Inf when not growing
	States          map[string]float64
	Classes         map[string]float64
	Drop, EarlyDrop float64
	InsertFailed    float64
	ScanSeconds     float64
	ScanEntries     float64
	Pressure        float64            // 0 calm .. 3 critical
	BansActive      map[string]float64 // kind: address, prefix
	BansTotal       map[string]float64 // by reason
	BreakerTrips    float64
	ValveRuns       float64
	ValveDeleted    float64
	PressureNoBan   float64
	SocketsClosed   float64
	ListenFull      float64 // listening sockets whose accept queue is full
	Orphans         float64
	TableRebuilds   float64
	ScanErrors      float64
	DryRun          bool
}

type collector struct {
	read  func() State
	descs map[string]*prometheus.Desc
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("ctguard_"+name, help, labels, nil)
}

// New returns a registry whose collector calls read at each scrape.
func New(read func() State) *prometheus.Registry {
	c := &collector{read: read, descs: map[string]*prometheus.Desc{
		"entries":       desc("conntrack_entries", "Entries in the conntrack table (this namespace)."),
		"max":           desc("conntrack_max", "nf_conntrack_max."),
		"fill":          desc("conntrack_fill_ratio", "Entries divided by the maximum."),
		"growth":        desc("conntrack_growth_per_second", "Growth of the table over the recent window."),
		"eta":           desc("conntrack_seconds_to_full", "Forecast time until the table is full at the current growth (+Inf when not growing)."),
		"state":         desc("conntrack_state_entries", "TCP entries per state at the last scan.", "state"),
		"class":         desc("conntrack_class_entries", "Entries per class at the last scan.", "class"),
		"drop":          desc("kernel_drop_total", "Packets the kernel dropped because the table was full (all CPUs)."),
		"early_drop":    desc("kernel_early_drop_total", "Entries the kernel evicted early to make room (all CPUs)."),
		"insert_failed": desc("kernel_insert_failed_total", "Failed inserts into the table (all CPUs)."),
		"scan_seconds":  desc("scan_duration_seconds", "Duration of the last full scan."),
		"scan_entries":  desc("scan_entries", "Entries seen by the last full scan."),
		"pressure":      desc("pressure", "Pressure level: 0 calm, 1 elevated, 2 high, 3 critical."),
		"bans_active":   desc("bans_active", "Bans in force.", "kind"),
		"bans_total":    desc("bans_total", "Bans applied since start, by reason.", "reason"),
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
	}}
	r := prometheus.NewRegistry()
	r.MustRegister(c)
	return r
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.read()
	g := func(k string, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(c.descs[k], prometheus.GaugeValue, v, labels...)
	}
	ctr := func(k string, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(c.descs[k], prometheus.CounterValue, v, labels...)
	}
	g("entries", s.Count)
	g("max", s.Max)
	fill := 0.0
	if s.Max > 0 {
		fill = s.Count / s.Max
	}
	g("fill", fill)
	g("growth", s.GrowthPerSec)
	g("eta", s.SecondsToFull)
	for k, v := range s.States {
		g("state", v, k)
	}
	for k, v := range s.Classes {
		g("class", v, k)
	}
	ctr("drop", s.Drop)
	ctr("early_drop", s.EarlyDrop)
	ctr("insert_failed", s.InsertFailed)
	g("scan_seconds", s.ScanSeconds)
	g("scan_entries", s.ScanEntries)
	g("pressure", s.Pressure)
	for k, v := range s.BansActive {
		g("bans_active", v, k)
	}
	for k, v := range s.BansTotal {
		ctr("bans_total", v, k)
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
}

// Handler serves the registry.
func Handler(r *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(r, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Inf is +Inf, for SecondsToFull when the table is not growing.
var Inf = math.Inf(1)
