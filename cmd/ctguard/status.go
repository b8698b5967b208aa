package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/daemon"
	"github.com/ctguard/ctguard/internal/forecast"
	"github.com/ctguard/ctguard/internal/human"
	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/snapshot"
)

func init() {
	register(&command{
		name:    "status",
		args:    "[--json] [--sample DURATION] [--reader auto|netlink|proc]",
		summary: "show how full the conntrack table is, how fast it grows and when it will be full",
		flags:   statusFlags,
		example: "  ctguard status\n  ctguard status --json --sample 0",
	})
}

// statusReport is `status --json`; field names are a contract for scripts.
type statusReport struct {
	envelope
	// Config is the configuration in use: the daemon's, or the one this
	// command read.
	Config        string         `json:"config"`
	Count         uint32         `json:"count"`
	Max           uint32         `json:"max"`
	FillRatio     float64        `json:"fill_ratio"`
	Buckets       int            `json:"buckets"`
	Kernel        string         `json:"kernel"`
	RatePerMin    *float64       `json:"rate_per_min"`
	SampleSeconds float64        `json:"sample_seconds"`
	ETASeconds    *float64       `json:"eta_seconds"`
	ETA           *string        `json:"eta"`
	States        map[string]int `json:"states"`
	Protocols     map[string]int `json:"protocols"`
	Classes       map[string]int `json:"classes"`
	Assured       int            `json:"assured"`
	Inbound       int            `json:"inbound"`
	Outbound      int            `json:"outbound"`
	Forwarded     int            `json:"forwarded"`
	Sources       int            `json:"sources"`
	Orphans       *int           `json:"orphans"` // null when sockets could not be listed
	// Services are where the inbound entries go, most first (at most 5).
	Services      []*serviceJSON  `json:"services"`
	IdleHistogram []histBucket    `json:"idle_histogram"`
	KernelStats   conntrack.Stats `json:"kernel_counters"`
	Scan          scanCost        `json:"scan"`
	Timeouts      map[string]int  `json:"timeouts"`
	Fallback      string          `json:"reader_fallback,omitempty"`
	Daemon        *daemonStatus   `json:"daemon,omitempty"`
}

type histBucket struct {
	Below   *uint32 `json:"below_seconds"` // nil: open-ended
	Entries int     `json:"entries"`
}

type scanCost struct {
	Entries    int     `json:"entries"`
	DurationMS float64 `json:"duration_ms"`
	Reader     string  `json:"reader"`
}

func statusFlags(fs *pflag.FlagSet) action {
	var sf scanFlags
	sf.register(fs)
	asJSON := fs.Bool("json", false, "print one JSON object")
	sample := fs.Duration("sample", 5*time.Second, "how long to sample the entry count for the growth rate, a `DURATION` (0: no rate)")
	direct := fs.Bool("direct", false, "read the kernel even when a daemon runs (by default its last scan is shown)")
	return func(ctx context.Context, e *env, args []string) error {
		sock, err := sf.setup()
		if err != nil {
			return err
		}
		if *sample < 0 || *sample > time.Hour {
			return usagef("--sample %v: want 0 to 1h", *sample)
		}
		if !*direct {
			if cl, err := daemon.Dial(sock); err == nil {
				return statusFromDaemon(ctx, e, cl, *asJSON)
			}
		}
		s, err := sf.open(ctx)
		if err != nil {
			return err
		}
		defer s.close()

		// Sample the count first (cheap), then scan once.
		var samples []forecast.Sample
		first, err := s.src.Stats(ctx)
		if err != nil {
			return explain(err)
		}
		samples = append(samples, forecast.Sample{Time: time.Now(), Count: float64(first.Count)})
		if *sample > 0 {
			if !*asJSON {
				fmt.Fprintf(e.stderr, "sampling the entry count for %s...\n", human.Duration(*sample))
			}
			step := min(*sample/10, time.Second)
			end := time.Now().Add(*sample)
			for time.Now().Before(end) {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(min(step, time.Until(end)+time.Millisecond)):
				}
				st, err := s.src.Stats(ctx)
				if err != nil {
					return explain(err)
				}
				samples = append(samples, forecast.Sample{Time: time.Now(), Count: float64(st.Count)})
			}
		}
		st, err := s.src.Stats(ctx)
		if err != nil {
			return explain(err)
		}
		snap, err := s.scan(ctx)
		if err != nil {
			return err
		}
		r := buildStatus(st, snap, samples, hostInfo{s.sys.Buckets, s.sys.Kernel, s.sys.Timeouts, s.src.Fallback}, len(snap.Sources))
		r.Config = sf.from
		if *asJSON {
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(r)
		}
		printStatus(e.stdout, r)
		return nil
	}
}

// hostInfo is what status shows of the host besides the table.
type hostInfo struct {
	buckets  int
	kernel   string
	timeouts map[string]int
	fallback string
}

// statusServices is how many services status lists.
const statusServices = 5

func buildStatus(st conntrack.Stats, snap *snapshot.Snapshot, samples []forecast.Sample, h hostInfo, sources int) *statusReport {
	r := &statusReport{
		envelope: newEnvelope("status"),
		Count:    st.Count, Max: st.Max, Buckets: h.buckets, Kernel: h.kernel,
		States: map[string]int{}, Protocols: map[string]int{}, Classes: map[string]int{},
		Assured: snap.Assured, Inbound: snap.Inbound, Outbound: snap.Outbound, Forwarded: snap.Forwarded,
		Sources: sources, KernelStats: st, Timeouts: h.timeouts, Fallback: h.fallback,
		Scan: scanCost{Entries: snap.Total, DurationMS: float64(snap.Duration.Microseconds()) / 1000, Reader: snap.Reader},
	}
	if snap.Sockets {
		o := snap.Orphans
		r.Orphans = &o
	}
	r.Services = []*serviceJSON{}
	for _, svc := range snap.TopServices(statusServices) {
		j := toServiceJSON(svc, false)
		j.Entries = svc.Entries
		r.Services = append(r.Services, j)
	}
	if st.Max > 0 {
		r.FillRatio = math.Round(float64(st.Count)/float64(st.Max)*1e6) / 1e6
	}
	if len(samples) > 1 {
		r.SampleSeconds = samples[len(samples)-1].Time.Sub(samples[0].Time).Seconds()
		if rate, ok := forecast.Rate(samples); ok {
			perMin := math.Round(rate*60*100) / 100
			r.RatePerMin = &perMin
			if d, ok := forecast.ETA(float64(st.Count), float64(st.Max), rate); ok {
				secs := math.Round(d.Seconds())
				txt := human.Duration(d)
				r.ETASeconds, r.ETA = &secs, &txt
			}
		}
	}
	for i, n := range snap.States {
		if n > 0 {
			r.States[conntrack.TCPState(i).String()] = n
		}
	}
	for p, n := range snap.Protos {
		if n > 0 {
			r.Protocols[conntrack.ProtoName(uint8(p))] += n
		}
	}
	for i, n := range snap.Classes {
		r.Classes[snapshot.Class(i).String()] = n
	}
	for i, n := range snap.IdleHist {
		b := histBucket{Entries: n}
		if i < len(snapshot.IdleBucketBounds) {
			v := snapshot.IdleBucketBounds[i]
			b.Below = &v
		}
		r.IdleHistogram = append(r.IdleHistogram, b)
	}
	return r
}

func printStatus(w io.Writer, r *statusReport) {
	pct := 100 * r.FillRatio
	fmt.Fprintf(w, "table      %d / %d entries (%.1f %% full), %d buckets, kernel %s\n", r.Count, r.Max, pct, r.Buckets, r.Kernel)
	defer fmt.Fprintf(w, "config     %s\n", r.Config)
	switch {
	case r.RatePerMin == nil:
		fmt.Fprintf(w, "growth     not sampled (use --sample)\n")
	case r.ETA != nil && *r.ETASeconds == 0:
		fmt.Fprintf(w, "growth     %+.1f entries/min over %.0fs: the table is FULL\n", *r.RatePerMin, r.SampleSeconds)
	case r.ETA != nil:
		fmt.Fprintf(w, "growth     %+.1f entries/min over %.0fs: full in %s\n", *r.RatePerMin, r.SampleSeconds, *r.ETA)
	default:
		fmt.Fprintf(w, "growth     %+.1f entries/min over %.0fs: not growing\n", *r.RatePerMin, r.SampleSeconds)
	}
	fmt.Fprintf(w, "states     %s\n", joinCounts(r.States, "none"))
	fmt.Fprintf(w, "protocols  %s\n", joinCounts(r.Protocols, "none"))
	var cl []string
	for i := range snapshot.NumClasses {
		n := snapshot.Class(i).String()
		cl = append(cl, fmt.Sprintf("%s %d", n, r.Classes[n]))
	}
	fmt.Fprintf(w, "classes    %s (assured %d)\n", strings.Join(cl, "  "), r.Assured)
	fmt.Fprintf(w, "sources    %s from %s; %d outbound, %d forwarded\n", plural(r.Inbound, "inbound entry", "inbound entries"),
		plural(r.Sources, "source", "sources"), r.Outbound, r.Forwarded)
	if len(r.Services) > 0 {
		parts := make([]string, len(r.Services))
		for i, svc := range r.Services {
			parts[i] = fmt.Sprintf("%s %d", svc, svc.Entries)
		}
		fmt.Fprintf(w, "services   %s\n", strings.Join(parts, ", "))
	}
	if r.Orphans != nil {
		fmt.Fprintf(w, "orphans    %d inbound ESTABLISHED entries have no socket behind them, or one whose client never sent a byte\n", *r.Orphans)
	}
	var hist []string
	lo := "0s"
	for _, b := range r.IdleHistogram {
		if b.Below == nil {
			hist = append(hist, fmt.Sprintf(">=%s %d", lo, b.Entries))
			continue
		}
		hi := human.Duration(time.Duration(*b.Below) * time.Second)
		hist = append(hist, fmt.Sprintf("<%s %d", hi, b.Entries))
		lo = hi
	}
	fmt.Fprintf(w, "idle time  %s (ESTABLISHED, not stalled)\n", strings.Join(hist, "  "))
	k := r.KernelStats
	fmt.Fprintf(w, "kernel     drop %d  early_drop %d  insert_failed %d  (all CPUs, since boot)\n", k.Drop, k.EarlyDrop, k.InsertFailed)
	fmt.Fprintf(w, "scan       %d entries in %.1f ms via %s\n", r.Scan.Entries, r.Scan.DurationMS, r.Scan.Reader)
	if r.Fallback != "" {
		fmt.Fprintf(w, "note       netlink unavailable (%s): read /proc instead\n", r.Fallback)
	}
	if d := r.Daemon; d != nil {
		mode := "enforcing"
		if d.Backend != "" {
			mode = "enforcing with " + d.Backend
		}
		if d.DryRun {
			mode = "DRY RUN (nothing enforced)"
		}
		var total uint64
		for _, n := range d.Counters.BansByReason {
			total += n
		}
		fmt.Fprintf(w, "daemon     %s, pressure %s (ban at score %.0f), %s active, %d made since start; last scan %s ago\n",
			mode, d.Pressure, d.Threshold, plural(d.ActiveBans, "ban", "bans"), total, human.Duration(time.Since(d.LastCycle)))
		fmt.Fprintf(w, "           breaker trips %d, valve runs %d (%d entries deleted), table rebuilds %d, scan errors %d, cycles under pressure without a ban %d\n",
			d.Counters.BreakerTrips, d.Counters.ValveRuns, d.Counters.ValveDeleted, d.Counters.Rebuilds, d.Counters.ScanErrors, d.Counters.PressureNoBan)
		if f := d.Fleet; f != nil {
			printFleet(w, f)
		}
		if d.BackendWhy != "" {
			fmt.Fprintf(w, "           firewall backend %s: %s\n", d.Backend, d.BackendWhy)
		}
		if sv := d.Service; sv != nil {
			now := "full now"
			if !sv.Drained.IsZero() {
				now = "drained " + human.Duration(time.Since(sv.Drained)) + " ago"
			}
			fmt.Fprintf(w, "SERVICE    accept queue full (new clients turned away), episode started %s ago, %s; scanning at the critical interval:\n",
				human.Duration(time.Since(sv.Since)), now)
			for _, l := range sv.Full {
				fmt.Fprintf(w, "           %s  %d of %d queued\n", l.Local, l.Queue, l.Backlog)
			}
		}
		if l := d.Losing; l != nil {
			fmt.Fprintf(w, "LOSING     pressure %s and the last scan banned nothing; top holders:\n", l.Pressure)
			for _, s := range l.Spared {
				fmt.Fprintf(w, "           %s  %d entries (%d active), grew %d in %s: %s\n", s.Target, s.Counts.Entries, s.Counts.Active,
					s.Growth.Gain, human.Duration(s.Growth.Window), s.Why)
			}
		}
	}
}

// joinCounts renders a map as "K n  K n" sorted by count, descending.
func joinCounts(m map[string]int, empty string) string {
	type kv struct {
		k string
		n int
	}
	var kvs []kv
	for k, n := range m {
		kvs = append(kvs, kv{k, n})
	}
	if len(kvs) == 0 {
		return empty
	}
	slices.SortFunc(kvs, func(a, b kv) int {
		if a.n != b.n {
			return b.n - a.n
		}
		return strings.Compare(a.k, b.k)
	})
	parts := make([]string, len(kvs))
	for i, x := range kvs {
		parts[i] = fmt.Sprintf("%s %d", x.k, x.n)
	}
	return strings.Join(parts, "  ")
}

// daemonStatus is what a running daemon adds to status.
type daemonStatus struct {
	DryRun     bool                `json:"dry_run"`
	Backend    string              `json:"backend,omitempty"`
	BackendWhy string              `json:"backend_why,omitempty"`
	Fleet      *daemon.FleetStatus `json:"crowdsec,omitempty"`
	Pressure   policy.Pressure     `json:"pressure"`
	Threshold  float64             `json:"threshold"`
	LastCycle  time.Time           `json:"last_cycle"`
	Cycles     uint64              `json:"cycles"`
	ActiveBans int                 `json:"active_bans"`
	Counters   daemon.Counters     `json:"counters"`
	Losing     *daemon.Losing      `json:"losing,omitempty"`
	// Service: the listening sockets whose accept queue is full, if any.
	Service *daemon.ServiceState `json:"service,omitempty"`
}

func statusFromDaemon(ctx context.Context, e *env, cl *daemon.Client, asJSON bool) error {
	var d daemon.StatusReply
	if err := cl.Call(ctx, daemon.Request{Op: "status"}, &d); err != nil {
		return err
	}
	if d.Snapshot == nil {
		return fmt.Errorf("the daemon has not finished its first scan yet: try again in a second")
	}
	r := buildStatus(d.Stats, d.Snapshot, d.Samples, hostInfo{d.Buckets, d.Kernel, d.Timeouts, ""}, d.NumSources)
	r.Config = d.Config
	r.Daemon = &daemonStatus{DryRun: d.DryRun, Backend: d.Backend, BackendWhy: d.BackendWhy, Fleet: d.Fleet, Pressure: d.Pressure, Threshold: d.Threshold, LastCycle: d.CycleAt,
		Cycles: d.Cycles, ActiveBans: d.ActiveBans, Counters: d.Counters, Losing: d.Losing, Service: d.Service}
	if asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	printStatus(e.stdout, r)
	return nil
}

// printFleet shows the CrowdSec link: what went each way, and the last
// error of a direction that is failing.
func printFleet(w io.Writer, f *daemon.FleetStatus) {
	if f.Link == nil {
		fmt.Fprintf(w, "crowdsec   link not started (local defence goes on): %s\n", f.Error)
		return
	}
	l := f.Link
	failing := func(failures int, last string) string {
		if failures == 0 {
			return ""
		}
		return fmt.Sprintf(", FAILING (%d in a row: %s)", failures, last)
	}
	fmt.Fprintf(w, "crowdsec   %s\n", l.URL)
	if l.Push.Enabled {
		fmt.Fprintf(w, "           push: %d alerts sent, %d queued, %d dropped%s\n", l.Push.Sent, l.Push.Queued, l.Push.Dropped, failing(l.Push.Failures, l.Push.LastError))
	}
	if l.Pull.Enabled {
		fmt.Fprintf(w, "           pull: %d decisions held on %d prefixes, %d applied, %d lifted%s\n", l.Pull.Held, l.Pull.Prefixes, l.Pull.Applied, l.Pull.Lifted, failing(l.Pull.Failures, l.Pull.LastError))
	}
}
