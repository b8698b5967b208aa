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
	"github.com/ctguard/ctguard/internal/crowdsec"
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
	// fleet is the link to CrowdSec's Local API (nil when off or not
	// started; fleetErr says why not).
	fleet    *crowdsec.Client
	fleetErr string
	// fleetDone is closed when the link has stopped (and flushed).
	fleetDone chan struct{}
	// backend is the firewall in use and why it was chosen.
	backend    enforce.Backend
	backendWhy string
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
	d.backend, d.backendWhy = parts.Backend, parts.Why
	if parts.Backend != "" {
		d.log.Info("firewall backend", "backend", parts.Backend, "why", parts.Why)
	}
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
