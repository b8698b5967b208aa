package daemon

import (
	"context"
	"errors"
	"math"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/crowdsec"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/forecast"
	"github.com/ctguard/ctguard/internal/metrics"
	"github.com/ctguard/ctguard/internal/snapshot"
)

// observations are what the daemon keeps for its metrics only. The loop
// writes them under d.mu.
type observations struct {
	build metrics.BuildInfo
	// scans holds the duration of every completed scan.
	scans metrics.Histogram
}

// scanned records a completed scan.
func (o *observations) scanned(took time.Duration) { o.scans.Observe(took.Seconds()) }

// countersTimeout bounds the read of the drop rules' counters in a scrape.
const countersTimeout = 2 * time.Second

// banDrops reads the drop rules' counters (one netlink dump of ctguard's
// chain), summed over full and scoped bans, per family and kind; nil when
// they cannot be read (the table is being rebuilt, say).
func (d *Daemon) banDrops() []metrics.Drops {
	ctx, cancel := context.WithTimeout(context.Background(), countersTimeout)
	defer cancel()
	c, err := d.eng.Counters(ctx)
	if err != nil {
		d.log.Debug("metrics: read the drop rules' counters", "err", err)
		return nil
	}
	add := func(a, b enforce.Counter) enforce.Counter {
		return enforce.Counter{Packets: a.Packets + b.Packets, Bytes: a.Bytes + b.Bytes}
	}
	out := make([]metrics.Drops, 0, 4)
	for _, g := range []struct {
		family, kind string
		c            enforce.Counter
	}{
		{"v4", "address", add(c.Ban4, c.Scoped.Ban4)},
		{"v4", "prefix", add(c.Net4, c.Scoped.Net4)},
		{"v6", "address", add(c.Ban6, c.Scoped.Ban6)},
		{"v6", "prefix", add(c.Net6, c.Scoped.Net6)},
	} {
		out = append(out, metrics.Drops{Family: g.family, Kind: g.kind, Packets: float64(g.c.Packets), Bytes: float64(g.c.Bytes)})
	}
	return out
}

// MetricsState reads the daemon's state for a Prometheus scrape.
func (d *Daemon) MetricsState() metrics.State {
	active, _ := d.st.ActiveIndex(time.Now())
	drops := d.banDrops()
	d.mu.Lock()
	defer d.mu.Unlock()
	s := metrics.State{
		Count: float64(d.stats.Count), Max: float64(d.stats.Max),
		Drop: float64(d.stats.Drop), EarlyDrop: float64(d.stats.EarlyDrop), InsertFailed: float64(d.stats.InsertFailed),
		Pressure: float64(d.result.Pressure), BreakerTrips: float64(d.counters.BreakerTrips),
		ValveRuns: float64(d.counters.ValveRuns), ValveDeleted: float64(d.counters.ValveDeleted), PressureNoBan: float64(d.counters.PressureNoBan), SocketsClosed: float64(d.counters.SocketsClosed),
		TableRebuilds: float64(d.counters.Rebuilds), ScanErrors: float64(d.counters.ScanErrors), ListenFull: float64(d.svc.fullNow()),
		DryRun: d.dryRun, States: map[string]float64{}, Classes: map[string]float64{},
		BansActive: map[string]float64{"address": 0, "prefix": 0}, BansTotal: map[string]float64{},
		GrowthPerSec: math.NaN(), SecondsToFull: metrics.Inf,
		BanErrors: float64(d.counters.BanErrors), BanDrops: drops,
		Scans: float64(d.counters.Scans), ScanDurations: d.obs.scans,
	}
	if !d.cycleAt.IsZero() {
		s.LastScanUnix = float64(d.cycleAt.UnixNano()) / 1e9
	}
	if r, ok := d.rate(); ok {
		s.GrowthPerSec = r
		if eta, ok := forecast.ETA(float64(d.stats.Count), float64(d.stats.Max), r); ok {
			s.SecondsToFull = eta.Seconds()
		}
	}
	for _, a := range active {
		if a.Prefix.IsSingleIP() {
			s.BansActive["address"]++
		} else {
			s.BansActive["prefix"]++
		}
	}
	for k, v := range d.counters.BansByReason {
		s.BansTotal[k] = float64(v)
	}
	if d.snap != nil {
		for i, n := range d.snap.States {
			if n > 0 {
				s.States[conntrack.TCPState(i).String()] = float64(n)
			}
		}
		for i, n := range d.snap.Classes {
			s.Classes[snapshot.Class(i).String()] = float64(n)
		}
		s.ScanSeconds = d.snap.Duration.Seconds()
		s.ScanEntries = float64(d.snap.Total)
		s.Orphans = float64(d.snap.Orphans)
	}
	if d.fleet != nil {
		s.CrowdSec = fleetMetrics(d.fleet.Status(), d.cfg.CrowdSec.Push, d.cfg.CrowdSec.Pull)
	}
	return s
}

// fleetMetrics turns the CrowdSec link's status into its metrics.
func fleetMetrics(st crowdsec.Status, push, pull bool) *metrics.CrowdSec {
	unix := func(t time.Time) float64 {
		if t.IsZero() {
			return 0
		}
		return float64(t.UnixNano()) / 1e9
	}
	m := &metrics.CrowdSec{Push: push, Pull: pull, Failures: map[string]float64{}, LastSuccess: map[string]float64{}}
	if push {
		p := st.Push
		m.Alerts = map[string]float64{"sent": float64(p.Sent), "rejected": float64(p.Rejected), "dropped": float64(p.Dropped),
			"expired": float64(p.Expired), "invalid": float64(p.Invalid)}
		m.Queued = float64(p.Queued)
		m.Failures["push"], m.LastSuccess["push"] = float64(p.Failures), unix(p.LastSuccess)
	}
	if pull {
		p := st.Pull
		m.Held = float64(p.Held)
		m.Decisions = map[string]float64{"received": float64(p.Received), "applied": float64(p.Applied), "lifted": float64(p.Lifted)}
		m.Failures["pull"], m.LastSuccess["pull"] = float64(p.Failures), unix(p.LastSuccess)
	}
	return m
}

// ServeMetrics serves /metrics on addr until ctx ends.
func (d *Daemon) ServeMetrics(ctx context.Context, addr string) error {
	reg, err := metrics.New(d.obs.build, d.MetricsState)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics.Handler(reg))
	srv := metricsServer(mux)
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(&limitListener{Listener: ln, slots: make(chan struct{}, maxMetricsConns)}); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// maxMetricsConns bounds the metrics endpoint's open connections: a
// scraper needs one; more wait in the kernel's accept queue, costing the
// daemon nothing.
const maxMetricsConns = 16

// metricsServer bounds what a client of the metrics endpoint can hold:
// time to send a request, to read the answer, to stay idle between
// scrapes, and the size of its headers.
func metricsServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
}

// limitListener accepts at most cap(slots) connections at once; a slot
// frees when its connection closes.
type limitListener struct {
	net.Listener
	slots chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	l.slots <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &slotConn{Conn: c, free: func() { <-l.slots }}, nil
}

// slotConn gives its slot back once, on the first Close.
type slotConn struct {
	net.Conn
	once sync.Once
	free func()
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.free)
	return err
}
