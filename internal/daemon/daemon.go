// Package daemon is `ctguard run`: the loop that scans the table,
// aggregates, asks the policy, enforces and explains, plus the control
// socket the CLI talks to while it runs.
//
// It wires the other packages and owns their lifetimes; it holds no policy
// of its own. In dry-run mode nothing in the kernel changes: bans go to an
// in-memory firewall and a throw-away store, so logs and `why` say what
// would have been done.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/config"
	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/forecast"
	"github.com/ctguard/ctguard/internal/metrics"
	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/scan"
	"github.com/ctguard/ctguard/internal/snapshot"
	"github.com/ctguard/ctguard/internal/sockets"
	"github.com/ctguard/ctguard/internal/store"
)

// Daemon is one running guard.
type Daemon struct {
	log    *slog.Logger
	src    *scan.Source
	eng    *enforce.Engine
	st     *store.Store
	dryRun bool
	close  []func()
	// prunedAt: the last prune of the ban history (only the loop uses it).
	prunedAt time.Time

	mu       sync.Mutex // guards everything below (control socket and metrics read it)
	cfg      config.Config
	agg      *snapshot.Aggregator
	sys      scan.Sysctls
	stats    conntrack.Stats
	samples  []forecast.Sample
	snap     *snapshot.Snapshot
	result   policy.Result
	cycleAt  time.Time
	cycles   uint64
	events   []Event // recent decisions, newest last
	counters Counters
	allowed  *allow.List
	allowAt  time.Time
	reload   chan struct{}
	cfgPath  string
	// interfaces overrides the host's addresses (tests).
	interfaces    func() ([]netip.Prefix, error)
	socketsWarned bool
	growth        growth
	// sshPeers are the SSH sessions seen in the last scan's socket listing
	// (at sshPeersAt): bans covering them leave the SSH ports open.
	sshPeers   []netip.AddrPort
	sshPeersAt time.Time
	earlier    *policy.Held // what the last cycle compared with (for why)
	// losing is the last cycle that banned nothing under high or critical
	// pressure (zero when the last cycle was not one); lostWarn rate-limits
	// its WARN line.
	losing   *Losing
	lostWarn time.Time
	lostMute int
	// svc watches the listeners' accept queues (the service, not the table).
	svc service
	// notify reports to the service manager (only the loop uses it).
	notify notifier
	// obs is what only the metrics read: the build and the scan durations.
	obs observations
}

// Losing is a cycle under high or critical pressure that banned nothing,
// with the top holders and why each was spared.
type Losing struct {
	Time     time.Time       `json:"time"`
	Pressure policy.Pressure `json:"pressure"`
	Spared   []policy.Spare  `json:"spared"`
}

// Counters are the daemon's running totals (for metrics and status).
type Counters struct {
	BansByReason map[string]uint64 `json:"bans_by_reason"`
	BanErrors    uint64            `json:"ban_errors"`
	BreakerTrips uint64            `json:"breaker_trips"`
	ValveRuns    uint64            `json:"valve_runs"`
	ValveDeleted uint64            `json:"valve_deleted"`
	// PressureNoBan counts cycles under high or critical pressure that
	// banned nothing.
	PressureNoBan uint64 `json:"pressure_without_ban_cycles"`
	// SocketsClosed counts the banned peers' TCP sockets closed (or, in a
	// dry run, that would have been).
	SocketsClosed uint64 `json:"sockets_closed"`
	Rebuilds      uint64 `json:"table_rebuilds"`
	ScanErrors    uint64 `json:"scan_errors"`
	Scans         uint64 `json:"scans"`
	LastScanError string `json:"last_scan_error,omitempty"`
}

// Event is one decision the daemon made (or, in dry-run, would have made).
type Event struct {
	Time     time.Time       `json:"time"`
	Target   netip.Prefix    `json:"target"`
	Action   string          `json:"action"` // ban, would-ban, skip, refused, error
	Detail   string          `json:"detail,omitempty"`
	Decision policy.Decision `json:"decision"`
}

const maxEvents = 2000

// Options are the parts of a daemon that tests replace.
type Options struct {
	Log     *slog.Logger
	Config  config.Config
	CfgPath string // for SIGHUP reloads; "" when running on defaults
	// Firewall and Purger override the real ones (tests); nil: real ones,
	// or in-memory ones in dry-run mode.
	Firewall enforce.Firewall
	Purger   enforce.Purger
	// Interfaces overrides the host's addresses (tests).
	Interfaces func() ([]netip.Prefix, error)
	// Closer overrides the socket closer (tests); nil: the real one when
	// daemon.close_sockets is on.
	Closer enforce.SocketCloser
	// Listeners overrides how the listening sockets are read (tests); nil:
	// sock_diag when daemon.watch_listeners is on.
	Listeners func(context.Context) ([]sockets.Listener, error)
	// Notify is told when the daemon is ready, that it is alive (the
	// watchdog), its state and its shutdown; nil: nobody is told.
	Notify Notifier
	// Build is what ctguard_build_info reports.
	Build metrics.BuildInfo
}

// New opens everything the daemon needs: the table reader, the store (or a
// throw-away one for dry runs) and the enforcement engine.
func New(ctx context.Context, o Options) (*Daemon, error) {
	c := o.Config
	d := &Daemon{log: o.Log, cfg: c, dryRun: c.Daemon.DryRun, cfgPath: o.CfgPath, reload: make(chan struct{}, 1), prunedAt: time.Now()}
	d.counters.BansByReason = map[string]uint64{}
	if o.Notify != nil {
		d.notify = notifier{n: o.Notify, every: o.Notify.WatchdogInterval()}
	}
	d.obs.build = o.Build
	fail := func(err error) (*Daemon, error) {
		d.Close()
		return nil, err
	}
	d.interfaces = o.Interfaces
	d.svc.list = o.Listeners
	if d.svc.list == nil {
		d.svc.list = sockets.Listeners
	}
	parts, err := OpenParts(ctx, c, PartsOptions{Log: d.log, Reader: true, Kernel: true, DryRun: d.dryRun, MoveDamaged: true,
		Interfaces: d.interfaces, SSHPeers: d.sessions, Firewall: o.Firewall, Purger: o.Purger, Closer: o.Closer})
	if err != nil {
		if errors.Is(err, store.ErrLocked) {
			return fail(fmt.Errorf("%w: is another ctguard run active?", err))
		}
		if errors.Is(err, enforce.ErrTableOwned) {
			return fail(fmt.Errorf("%w: only one ctguard may run per network namespace", err))
		}
		return fail(err)
	}
	d.close = append(d.close, parts.Close)
	d.src, d.st, d.eng = parts.Source, parts.Store, parts.Engine
	if d.src.Fallback != "" {
		d.log.Warn("netlink unavailable, reading /proc/net/nf_conntrack", "why", d.src.Fallback)
	}
	if err := d.loadHost(); err != nil {
		return fail(err)
	}
	return d, nil
}

// allowConfig is where the allowlist comes from under config c.
func (d *Daemon) allowConfig(c config.Config) allow.Config {
	return AllowConfig(c, d.interfaces, d.sessions)
}

// sshPeersMaxAge is how old the scan's list of SSH sessions may be before a
// ban reads them afresh (a socket dump, seconds on a host holding 60,000
// connections under attack).
const sshPeersMaxAge = 10 * time.Second

// sessions lists the open SSH sessions for the allowlist: from the last
// scan's socket listing when it is recent (scans run every 1-2 s under
// pressure), else from a fresh socket dump. Never cached longer: a ban that
// missed the operator's session would cut it.
func (d *Daemon) sessions(ports []uint16) ([]netip.AddrPort, error) {
	d.mu.Lock()
	peers, at := d.sshPeers, d.sshPeersAt
	d.mu.Unlock()
	if !at.IsZero() && time.Since(at) < sshPeersMaxAge {
		return slices.Clone(peers), nil
	}
	return sockets.Peers(context.Background(), ports)
}

// loadHost reads the sysctls and local addresses and builds the
// aggregator. Callers hold d.mu or run before the loop.
func (d *Daemon) loadHost() error {
	sys, err := scan.ReadSysctls(d.cfg.Daemon.Procfs)
	if err != nil {
		return err
	}
	local, err := d.localAddrs()
	if err != nil {
		return err
	}
	d.sys = sys
	d.agg = snapshot.NewAggregator(sys.SnapshotConfig(snapshot.Config{
		IdleThreshold: uint32(d.cfg.Snapshot.IdleThreshold / time.Second),
		V4Bits:        d.cfg.Snapshot.V4Prefix,
		V6Bits:        d.cfg.Snapshot.V6Prefix,
		Local:         local,
		// Single-entry sources can never be banned on their own (policy
		// min_entries), yet a full table of distinct IPv6 sources has
		// 262,144 of them: count them, list only the biggest.
		KeepMin: 2,
		KeepTop: keepTop,
	}))
	return nil
}

// keepTop is how many single-entry holders a snapshot still lists (for
// top and the valve) when few hold more.
const keepTop = 1000

// pruneEvery is how often a running daemon drops ban records that ended
// more than 30 days ago (start does it too).
const pruneEvery = time.Hour

// localAddrs are the host's addresses (Options.Interfaces in tests): an
// entry counts as inbound when it ends at one of them.
func (d *Daemon) localAddrs() (*snapshot.LocalSet, error) {
	if d.interfaces == nil {
		return scan.LocalAddrs()
	}
	ps, err := d.interfaces()
	if err != nil {
		return nil, err
	}
	as := make([]netip.Addr, len(ps))
	for i, p := range ps {
		as[i] = p.Addr()
	}
	return snapshot.NewLocalSet(as...), nil
}

// Close releases everything New opened.
func (d *Daemon) Close() {
	for i := len(d.close) - 1; i >= 0; i-- {
		d.close[i]()
	}
	d.close = nil
}

// Engine is the enforcement engine (the control socket serves it).
func (d *Daemon) Engine() *enforce.Engine { return d.eng }

// Reload asks the loop to re-read the config file and the allowlist.
func (d *Daemon) Reload() {
	select {
	case d.reload <- struct{}{}:
	default:
	}
}

// Run restores the stored bans, then loops until ctx ends.
func (d *Daemon) Run(ctx context.Context) error {
	res, err := d.eng.Start(ctx)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	d.log.Info("ctguard running", "dry_run", d.dryRun, "restored_bans", res.Restored, "took", res.Took.Round(time.Millisecond),
		"reader", d.src.ReaderName(), "max", d.sys.Max, "established_timeout", d.agg.Config().EstablishedTimeout)
	defer d.stopping()
	var lastScan, lastPoll time.Time
	lastCount := -1
	for {
		d.watchdog(time.Now())
		d.mu.Lock()
		cfg := d.cfg
		pressure := d.result.Pressure
		d.mu.Unlock()
		// The accept queues are read at every tick (a quarter second when
		// watched), the count at every poll: a full queue calls for a
		// scan sooner than the table's pace would.
		full, filled := d.pollService(ctx, cfg.Daemon.WatchListeners)
		if filled || full || time.Since(lastPoll) >= cfg.Daemon.Poll {
			lastPoll = time.Now()
			st, err := d.src.Count(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				d.log.Error("read conntrack count", "err", err)
			} else {
				d.addSample(time.Now(), st)
				due := filled || time.Since(lastScan) >= scanInterval(cfg.Daemon, pressure, full) ||
					(lastCount >= 0 && int(st.Count)-lastCount >= cfg.Daemon.ScanOnGrowth)
				if due {
					lastScan, lastCount = time.Now(), int(st.Count)
					d.cycle(ctx)
					d.cycled(ctx)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-d.reload:
			d.doReload()
			lastScan = time.Time{}
		case <-time.After(d.wait(tick(cfg.Daemon))):
		}
	}
}

// tick is the loop's step: the poll, or servicePoll when the accept
// queues are watched (a listing of the listeners costs tens of
// microseconds; the count is still read once per poll).
func tick(d config.Daemon) time.Duration {
	if d.WatchListeners {
		return min(d.Poll, servicePoll)
	}
	return d.Poll
}

// pollService reads the accept queues (when daemon.watch_listeners is on)
// and reports whether an episode is on and whether a queue just filled.
func (d *Daemon) pollService(ctx context.Context, watch bool) (on, filled bool) {
	var ls []sockets.Listener
	var err error
	if watch {
		ls, err = d.svc.list(ctx)
		if err != nil && ctx.Err() != nil {
			return false, false
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.svc.update(ls, err, time.Now(), d.log)
}

func (d *Daemon) doReload() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfgPath != "" {
		c, err := config.Load(d.cfgPath)
		if err != nil {
			d.log.Error("reload: config rejected, keeping the running one", "err", err)
			return
		}
		// What the process was built from stays; say so instead of half
		// applying it.
		old := d.cfg
		c.Daemon.DryRun = d.dryRun
		var kept []string
		for _, k := range []struct {
			name    string
			changed bool
		}{
			{"daemon.state_dir", c.Daemon.StateDir != old.Daemon.StateDir},
			{"daemon.socket", c.Daemon.Socket != old.Daemon.Socket},
			{"daemon.reader", c.Daemon.Reader != old.Daemon.Reader},
			{"daemon.procfs", c.Daemon.Procfs != old.Daemon.Procfs},
			{"daemon.sockets", c.Daemon.Sockets != old.Daemon.Sockets},
			{"metrics", c.Metrics != old.Metrics},
			{"log", c.Log != old.Log},
		} {
			if k.changed {
				kept = append(kept, k.name)
			}
		}
		c.Daemon.StateDir, c.Daemon.Socket, c.Daemon.Reader = old.Daemon.StateDir, old.Daemon.Socket, old.Daemon.Reader
		c.Daemon.Procfs, c.Daemon.Sockets, c.Metrics, c.Log = old.Daemon.Procfs, old.Daemon.Sockets, old.Metrics, old.Log
		if len(kept) > 0 {
			d.log.Warn("reload: these settings need a restart; keeping the running values", "keys", kept)
		}
		d.cfg = c
		d.eng.SetAllowConfig(d.allowConfig(c))
	}
	if err := d.loadHost(); err != nil {
		d.log.Error("reload: host facts", "err", err)
	}
	d.allowAt = time.Time{} // re-read the allowlist at the next cycle
	d.log.Info("reloaded", "config", d.cfgPath)
}

const sampleWindow = time.Minute

func (d *Daemon) addSample(t time.Time, st conntrack.Stats) {
	d.mu.Lock()
	defer d.mu.Unlock()
	// Only the count and the limit: the kernel counters come with each scan.
	d.stats.Count, d.stats.Max = st.Count, st.Max
	d.samples = append(d.samples, forecast.Sample{Time: t, Count: float64(st.Count)})
	cut := 0
	for cut < len(d.samples) && t.Sub(d.samples[cut].Time) > sampleWindow {
		cut++
	}
	d.samples = d.samples[cut:]
}

// rate is the growth over the recent window (entries/s).
func (d *Daemon) rate() (float64, bool) {
	// Weigh the last 15 s: an attack's onset must not be averaged away.
	s := d.samples
	for len(s) > 2 && s[len(s)-1].Time.Sub(s[0].Time) > 15*time.Second {
		s = s[1:]
	}
	return forecast.Rate(s)
}

// cycle is one scan, decision and enforcement.
func (d *Daemon) cycle(ctx context.Context) {
	start := time.Now()
	st, err := d.src.Stats(ctx)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Error("read conntrack stats", "err", err)
		}
		return
	}
	d.mu.Lock()
	d.stats = st
	d.mu.Unlock()
	if rr, err := d.eng.Reconcile(ctx); err != nil {
		d.log.Error("reconcile", "err", err)
	} else if rr.Rebuilt {
		d.mu.Lock()
		d.counters.Rebuilds++
		d.mu.Unlock()
		d.log.Warn("ctguard table was missing or wrong: rebuilt", "problem", rr.Problem, "restored_bans", rr.Restored)
	}
	d.mu.Lock()
	cfg := d.cfg
	refreshLocal := time.Since(d.allowAt) >= cfg.Allow.Refresh || d.allowed == nil
	d.mu.Unlock()
	if refreshLocal {
		// Addresses change (DHCP, SLAAC): inbound attribution follows.
		if local, err := d.localAddrs(); err == nil {
			d.mu.Lock()
			d.agg.SetLocal(local)
			d.mu.Unlock()
		}
	}
	d.mu.Lock()
	agg := d.agg
	d.mu.Unlock()
	snap, err := d.src.Scan(ctx, agg)
	if d.src.SocketsErr != nil && !d.socketsWarned {
		d.socketsWarned = true
		d.log.Warn("cannot list TCP sockets: the orphan signal is off", "err", d.src.SocketsErr)
	}
	if err == nil {
		if peers, ok := d.src.SocketPeers(d.allowConfig(cfg).SSHPorts); ok {
			d.mu.Lock()
			d.sshPeers, d.sshPeersAt = peers, time.Now()
			d.mu.Unlock()
		}
		// The allowlist after the scan: its SSH sessions are this scan's.
		if l, err := d.eng.Allowlist(); err != nil {
			d.log.Error("allowlist", "err", err)
		} else {
			d.mu.Lock()
			d.allowed = l
			if refreshLocal {
				d.allowAt = time.Now()
			}
			d.mu.Unlock()
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			d.mu.Lock()
			d.counters.ScanErrors++
			d.counters.LastScanError = err.Error()
			d.mu.Unlock()
			d.log.Error("scan", "err", err)
		}
		return
	}
	now := time.Now()
	active, err := d.st.ActiveIndex(now)
	if err != nil {
		d.log.Error("read active bans", "err", err)
		return
	}
	bans := newBanIndex(active, snap.Config.V4Bits, snap.Config.V6Bits)
	d.mu.Lock()
	rate, rateOK := d.rate()
	list := d.allowed
	d.mu.Unlock()
	earlier := d.growth.observe(now, snap, cfg.Policy.GrowthWindow)
	in := policy.Input{
		Now: now, Snapshot: snap, Count: int(st.Count), Max: int(st.Max), RatePerSec: rate, RateOK: rateOK, Earlier: earlier,
		Banned: bans.covered, BannedIn: bans.hostsIn, BannedGroupsIn: bans.groupsIn,
		History: func(p netip.Prefix) policy.Offence {
			b, err := d.st.GetBan(p)
			if err != nil {
				return policy.Offence{}
			}
			return policy.Offence{Count: b.Count, Last: b.Last}
		},
	}
	if list != nil {
		in.Allowed = func(p netip.Prefix) (string, bool) {
			e, ok := list.Check(p)
			return e.String(), ok
		}
	}
	res := policy.Decide(in, cfg.Policy)
	decided := time.Now()
	events := d.enforce(ctx, now, res)
	enforced := time.Now()
	if res.Valve != nil {
		d.valve(ctx, res.Valve, cfg.Daemon.ValveMaxDelete)
	}
	if n, err := d.eng.RecordUnrecorded(ctx); err != nil {
		d.log.Error("bans in the kernel still lack a store record", "err", err)
	} else if n > 0 {
		d.log.Warn("recorded bans that a failed store write had left in the kernel only", "bans", n)
	}
	if time.Since(d.prunedAt) >= pruneEvery {
		d.prunedAt = time.Now()
		if err := d.eng.Prune(); err != nil {
			d.log.Error("prune ban history", "err", err)
		}
	}
	d.noteLosing(now, res)
	d.mu.Lock()
	d.snap, d.result, d.cycleAt, d.earlier = snap, res, now, earlier
	d.cycles++
	d.counters.Scans++
	d.obs.scanned(snap.Duration)
	d.events = append(d.events, events...)
	if len(d.events) > maxEvents {
		d.events = append(d.events[:0:0], d.events[len(d.events)-maxEvents:]...)
	}
	d.mu.Unlock()
	d.log.Debug("cycle", "entries", snap.Total, "count", st.Count, "max", st.Max, "pressure", res.Pressure,
		"threshold", res.Threshold, "bans", len(res.Bans), "scan", snap.Duration.Round(time.Millisecond),
		"decide", decided.Sub(now).Round(time.Millisecond), "enforce", enforced.Sub(decided).Round(time.Millisecond),
		"took", time.Since(start).Round(time.Millisecond))
}

// enforce applies the decisions (or, in dry-run, records them in the
// throw-away store only) and logs one line per decision with its evidence.
func (d *Daemon) enforce(ctx context.Context, now time.Time, res policy.Result) []Event {
	var events []Event
	if res.Breaker != nil {
		d.mu.Lock()
		d.counters.BreakerTrips++
		d.mu.Unlock()
		d.log.Warn("BLAST-RADIUS BREAKER: more bans wanted than allowed in one cycle; banning only the top ones",
			"wanted", res.Breaker.Wanted, "cap", res.Breaker.Cap, "pressure", res.Pressure)
	}
	for _, s := range res.Skips {
		events = append(events, Event{Time: now, Target: s.Target, Action: "skip", Detail: s.Why, Decision: policy.Decision{Target: s.Target, Score: s.Score}})
		d.log.Info("not banned", "target", s.Target, "score", s.Score, "why", s.Why)
	}
	return append(events, d.ban(ctx, now, res.Bans, true)...)
}

// ban applies decisions and returns their events. A prefix ban refused by
// the allowlist (which changed since the decision) falls back to the member
// bans it replaced, once (fallback false for those).
func (d *Daemon) ban(ctx context.Context, now time.Time, bans []policy.Decision, fallback bool) (events []Event) {
	if len(bans) == 0 {
		return nil
	}
	reqs := make([]enforce.BanRequest, len(bans))
	for i, b := range bans {
		reqs[i] = enforce.BanRequest{Prefix: b.Target, TTL: b.TTL, Reason: b.Reason, Evidence: evidence(b)}
	}
	results, err := d.eng.BanMany(ctx, reqs)
	if err != nil {
		d.log.Error("ban batch failed", "bans", len(reqs), "err", err)
	}
	action := "ban"
	if d.dryRun {
		action = "would-ban"
	}
	var instead []policy.Decision
	d.mu.Lock()
	defer func() {
		d.mu.Unlock()
		if len(instead) > 0 {
			events = append(events, d.ban(ctx, now, instead, false)...)
		}
	}()
	for i, b := range bans {
		ev := Event{Time: now, Target: b.Target, Action: action, Decision: b}
		var r enforce.BanResult
		if i < len(results) {
			r = results[i]
		}
		var refusal *allow.Refusal
		switch {
		case r.Err != nil:
			ev.Action, ev.Detail = "refused", r.Err.Error()
			d.counters.BanErrors++
			if fallback && errors.As(r.Err, &refusal) && len(b.Instead) > 0 {
				instead = append(instead, b.Instead...)
				ev.Detail += fmt.Sprintf("; banning its %d members instead", len(b.Instead))
			}
		case r.CoveredBy.IsValid():
			ev.Action, ev.Detail = "covered", "already covered by "+r.CoveredBy.String()
		case err != nil && i >= len(results):
			ev.Action, ev.Detail = "error", err.Error()
			d.counters.BanErrors++
		default:
			d.counters.BansByReason[b.Reason]++
			d.counters.SocketsClosed += uint64(r.Ban.SocketsClosed)
			verb := "closed"
			if d.dryRun {
				verb = "would close"
			}
			ev.Detail = fmt.Sprintf("purged %d, remaining %d, %s %d sockets", r.Ban.Purged, r.Ban.Remaining, verb, r.Ban.SocketsClosed)
			if r.Ban.CloseErr != "" {
				ev.Detail += " (" + r.Ban.CloseErr + ")"
			}
		}
		events = append(events, ev)
		var gain uint32
		if b.Growth != nil {
			gain = b.Growth.Gain
		}
		if r.Scoped {
			ev.Detail += ", SSH ports left open (covers an open SSH session)"
		}
		d.log.Info("decision", "action", ev.Action, "target", b.Target, "reason", b.Reason, "score", b.Score, "gain", gain,
			"threshold", b.Threshold, "pressure", b.Pressure, "ttl", b.TTL, "entries", b.Counts.Entries,
			"idle", b.Counts.Idle, "orphan", b.Counts.Orphan, "half_open", b.Counts.HalfOpen, "active", b.Counts.Active,
			"members", b.Members, "previous_bans", b.Offences, "outcome", ev.Detail)
	}
	return events
}

func evidence(b policy.Decision) string {
	why := fmt.Sprintf("score %.1f >= %.0f at %s pressure", b.Score, b.Threshold, b.Pressure)
	if g := b.Growth; g != nil {
		why = fmt.Sprintf("grew by %d ESTABLISHED entries in %s (%.0f%% of the %d it holds) at %s pressure, score %.1f",
			g.Gain, g.Window.Round(time.Second), 100*g.Young(), g.Held, b.Pressure, b.Score)
	}
	return fmt.Sprintf("%s: %d entries (idle %d, orphan %d, half-open %d, active %d, stalled %d, closing %d, other %d), oldest idle %ds, members %d, previous bans %d",
		why, b.Counts.Entries, b.Counts.Idle, b.Counts.Orphan, b.Counts.HalfOpen, b.Counts.Active,
		b.Counts.Stalled, b.Counts.Closing, b.Counts.Other, b.Counts.MaxIdle, b.Members, b.Offences)
}

// valve frees room through the enforcer: idle entries of the holders first
// (most idle first), then the entries of the sources that grew the most,
// then the others'.
func (d *Daemon) valve(ctx context.Context, v *policy.Valve, maxDelete int) {
	free := min(v.Free, maxDelete)
	if free <= 0 {
		return
	}
	d.mu.Lock()
	cfg := d.agg.Config()
	d.mu.Unlock()
	growers := make(map[netip.Addr]bool, len(v.Growers))
	for _, g := range v.Growers {
		growers[g.Addr()] = true
	}
	const idleTier, growerTier = 2, 1
	rank := func(e *conntrack.Entry) (uint64, bool) {
		cl, idle := snapshot.Classify(e, &cfg)
		switch cl {
		case snapshot.Idle:
			return idleTier<<32 | uint64(idle), true
		case snapshot.Active, snapshot.Stalled:
			if growers[e.Orig.Src] {
				return growerTier<<32 | uint64(idle), true
			}
			return uint64(idle), true
		}
		return 0, false
	}
	r, err := d.eng.Valve(ctx, enforce.ValveRequest{Holders: v.Holders, Free: free, Rank: rank})
	if err != nil {
		d.log.Error("valve", "err", err)
		return
	}
	swept := 0
	if r.Deleted < free {
		// The holders did not free enough (many sources holding little
		// each): the most idle ESTABLISHED entries of any other source that
		// is not allowlisted go next, never an active one.
		idleOnly := func(e *conntrack.Entry) (uint64, bool) {
			cl, idle := snapshot.Classify(e, &cfg)
			return uint64(idle), cl == snapshot.Idle && !e.Orig.Src.IsLoopback()
		}
		sr, err := d.eng.Valve(ctx, enforce.ValveRequest{Free: free - r.Deleted, Rank: idleOnly, Sweep: true})
		if err != nil {
			d.log.Error("valve sweep", "err", err)
		}
		swept = sr.Deleted
		r.Deleted += sr.Deleted
	}
	if d.dryRun {
		d.log.Warn("EMERGENCY VALVE (dry run): would delete entries of the top holders", "would_delete", r.Deleted,
			"wanted", v.Free, "holders", len(v.Holders), "growers", len(v.Growers), "would_sweep", swept)
		return
	}
	d.mu.Lock()
	d.counters.ValveRuns++
	d.counters.ValveDeleted += uint64(r.Deleted)
	d.mu.Unlock()
	d.log.Warn("EMERGENCY VALVE: deleted entries of the top holders to make room", "deleted", r.Deleted, "wanted", v.Free,
		"candidates", r.Candidates, "holders", len(v.Holders), "growers", len(v.Growers), "swept_idle", swept)
}

// lostWarnEvery rate-limits the WARN line of cycles that ban nothing under
// pressure (the loop runs every second when critical).
const lostWarnEvery = 10 * time.Second

// noteLosing records and logs a cycle under high or critical pressure that
// banned nothing: the top holders and why each was spared.
func (d *Daemon) noteLosing(now time.Time, res policy.Result) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if res.Pressure < policy.High || len(res.Bans) > 0 {
		d.losing = nil
		return
	}
	d.counters.PressureNoBan++
	d.losing = &Losing{Time: now, Pressure: res.Pressure, Spared: res.Spared}
	if now.Sub(d.lostWarn) < lostWarnEvery {
		d.lostMute++
		return
	}
	holders := make([]string, len(res.Spared))
	for i, s := range res.Spared {
		holders[i] = fmt.Sprintf("%s (%d entries, %d active, grew %d in %s): %s", s.Target, s.Counts.Entries, s.Counts.Active,
			s.Growth.Gain, s.Growth.Window.Round(time.Second), s.Why)
	}
	d.log.Warn("pressure is "+res.Pressure.String()+" and this cycle banned nothing", "top_holders", holders,
		"unevictable_fill", res.UnevictableFill, "threshold", res.Threshold, "similar_cycles_not_logged", d.lostMute)
	d.lostWarn, d.lostMute = now, 0
}

// banIndex answers the policy's questions about active bans.
type banIndex struct {
	all   map[netip.Prefix]bool
	nets  []netip.Prefix
	hosts map[netip.Prefix]int // grouping prefix -> automatic single-address bans inside
	// autoNets are the prefix bans the policy made: an operator's bans are
	// decisions about those targets only, never evidence against their
	// neighbours, so they do not count toward prefix bans.
	autoNets []netip.Prefix

	v4Bits, v6Bits int
}

// newBanIndex indexes the active bans; v4Bits and v6Bits are the lengths
// the snapshot groups sources by.
func newBanIndex(active []store.Active, v4Bits, v6Bits int) *banIndex {
	b := &banIndex{all: make(map[netip.Prefix]bool, len(active)), hosts: map[netip.Prefix]int{}, v4Bits: v4Bits, v6Bits: v6Bits}
	for _, a := range active {
		b.all[a.Prefix] = true
		if !a.Prefix.IsSingleIP() {
			b.nets = append(b.nets, a.Prefix)
			if !a.Manual {
				b.autoNets = append(b.autoNets, a.Prefix)
			}
			continue
		}
		if a.Manual {
			continue
		}
		bits := v4Bits
		if a.Prefix.Addr().Is6() {
			bits = v6Bits
		}
		if k, err := a.Prefix.Addr().Prefix(bits); err == nil {
			b.hosts[k]++
		}
	}
	return b
}

// covered reports whether an active ban is p or contains it.
func (b *banIndex) covered(p netip.Prefix) bool {
	if b.all[p] {
		return true
	}
	for _, n := range b.nets {
		if n.Bits() <= p.Bits() && n.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// hostsIn counts the active single-address bans inside p (a grouping
// prefix of the snapshot).
func (b *banIndex) hostsIn(p netip.Prefix) int { return b.hosts[p] }

// groupsIn lists the grouping prefixes inside a wider prefix w that hold
// an active ban: of an address, of the grouping prefix itself, or of a
// prefix between the two (which counts as one).
func (b *banIndex) groupsIn(w netip.Prefix) []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	for g := range b.hosts {
		if w.Contains(g.Addr()) {
			seen[g] = true
		}
	}
	for _, n := range b.autoNets {
		if n.Bits() <= w.Bits() || !w.Contains(n.Addr()) {
			continue
		}
		bits := b.v4Bits
		if n.Addr().Is6() {
			bits = b.v6Bits
		}
		if n.Bits() >= bits {
			n, _ = n.Addr().Prefix(bits)
		}
		seen[n] = true
	}
	out := make([]netip.Prefix, 0, len(seen))
	for g := range seen {
		out = append(out, g)
	}
	return out
}
